//! `state show` and `state reset`.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Result};

use crate::cli::{ResetArgs, ShowArgs};
use crate::config::{Config, ConfigError};
use crate::exit;
use crate::id::{self, EventId};
use crate::state::{self, State};

/// Prints the saved state.
pub fn show(cfg: &Config, args: &ShowArgs) -> Result<i32> {
    let saved = state::load(&cfg.state_path)?;
    let locked = state::is_locked(&cfg.state_path);
    if args.json {
        let doc = serde_json::json!({
            "path": cfg.state_path.display().to_string(),
            "exists": saved.is_some(),
            "running": locked,
            "state": saved,
            "cursor_date": saved.as_ref().and_then(|s| s.cursor().ok().flatten()).map(|c| c.date()),
            "next_file": saved.as_ref().map(|s| s.file_count + 1).unwrap_or(1),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(exit::OK);
    }
    let mut out = String::new();
    out.push_str(&format!(
        "state file:     {}{}\n",
        cfg.state_path.display(),
        if locked { " (a run holds it now)" } else { "" }
    ));
    match &saved {
        None => {
            let start = cfg
                .stream()
                .ok()
                .and_then(|s| s.start)
                .map(|s| format!("after `{s}` ({})", s.date()))
                .unwrap_or_else(|| "the beginning of the stream (`0-0`)".into());
            out.push_str(&format!("no state yet: the next run starts from {start}\n"));
        }
        Some(s) => describe(&mut out, s),
    }
    print!("{out}");
    Ok(exit::OK)
}

fn describe(out: &mut String, s: &State) {
    let cursor = s.cursor().ok().flatten();
    match cursor {
        Some(c) => {
            let lag = crate::clock::now_ms().saturating_sub(c.ms) / 1000;
            out.push_str(&format!(
                "cursor:         {c} ({}, {} behind now)\n",
                c.date(),
                crate::text::secs(lag)
            ));
        }
        None => out.push_str("cursor:         none yet (nothing committed)\n"),
    }
    out.push_str(&format!(
        "recover_until:  {}\n",
        s.recover_until
            .as_deref()
            .map(|d| format!("{d} (snapshot in progress)"))
            .unwrap_or_else(|| "false".into())
    ));
    out.push_str(&format!(
        "files stored:   {} (next file number {})\n",
        s.file_count,
        s.file_count + 1
    ));
    if let Some(p) = &s.pending {
        out.push_str(&format!(
            "pending upload: file {} `{}` ({} events), settled at the next run\n",
            p.file_number, p.key, p.events
        ));
    }
    if let Some(sid) = &s.stream_id {
        out.push_str(&format!("stream:         {sid}\n"));
    }
    out.push_str(&format!("dead letters:   {}\n", s.dead_letters));
    if !s.held_by_policy.is_empty() {
        let parts: Vec<String> = s
            .held_by_policy
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        out.push_str(&format!("held by policy: {}\n", parts.join(", ")));
    }
    if let Some(r) = &s.last_run {
        out.push_str(&format!(
            "last run:       {} .. {}: {}; {} events, {} files, {} bytes\n",
            r.started_at,
            if r.ended_at.is_empty() {
                "-"
            } else {
                &r.ended_at
            },
            r.outcome,
            r.events,
            r.files,
            r.bytes
        ));
    }
}

/// Resets the state to a first run.
pub fn reset(cfg: &Config, args: &ResetArgs) -> Result<i32> {
    let start: Option<EventId> = args
        .start_from
        .as_deref()
        .map(|s| {
            id::parse_position(s).map_err(|e| ConfigError {
                key: "--start-from".into(),
                origin: "command line".into(),
                message: e,
            })
        })
        .transpose()?;
    let _lock = state::lock(&cfg.state_path)?;
    let old = state::load(&cfg.state_path).ok().flatten();
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            bail!(ConfigError {
                key: "--yes".into(),
                origin: "command line".into(),
                message: "`state reset` needs `--yes` when not run on a terminal".into()
            });
        }
        eprint!("reset the state at `{}`? [y/N] ", cfg.state_path.display());
        std::io::stderr().flush().ok();
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            println!("state left as it was");
            return Ok(exit::FAILURE);
        }
    }
    let mut new = State {
        stream_id: cfg.stream().ok().map(|s| s.live_stream_id.clone()),
        ..State::default()
    };
    if let Some(s) = start {
        new.start_from = Some(s.to_string());
        new.last_written_msg_id = Some(s.to_string());
    } else if let Ok(stream) = cfg.stream() {
        new.recover_until = match stream.recover {
            crate::config::Recover::Off => None,
            crate::config::Recover::UntilNow => Some(id::ms_to_iso(crate::clock::now_ms())),
            crate::config::Recover::Until(ms) => Some(id::ms_to_iso(ms)),
        };
        if let Some(st) = stream.start {
            new.start_from = Some(st.to_string());
            new.last_written_msg_id = Some(st.to_string());
        }
    }
    new.file_count = args.file_count.unwrap_or(0);
    // Keys never go back, even across a reset: the importer lists by key.
    new.last_key_ms = old.as_ref().map(|o| o.last_key_ms).unwrap_or(0);
    state::save(&cfg.state_path, &new)?;
    println!(
        "state reset at `{}`: the next run starts after `{}`{}, and its first file is number {}",
        cfg.state_path.display(),
        new.start_from.as_deref().unwrap_or("0-0"),
        new.recover_until
            .as_deref()
            .map(|d| format!(" with a snapshot up to {d}"))
            .unwrap_or_default(),
        new.file_count + 1
    );
    Ok(exit::OK)
}
