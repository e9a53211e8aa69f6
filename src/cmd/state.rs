//! `state show`, `state reset` and `state import`.
//!
//! A reset changes the stream position, never the numbering: the count,
//! the key stamp and the export's identity are kept (from the old state or,
//! when it is lost, from the destination). Going back in numbers needs
//! `--importer-was-reset`, and is refused while the destination holds
//! higher numbers.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Result};

use crate::cli::{ImportArgs, ResetArgs, ShowArgs};
use crate::commit::core::{self, ResetRequest};
use crate::commit::Committer;
use crate::config::{Config, ConfigError};
use crate::dest::naming;
use crate::exit;
use crate::id::{self, EventId};
use crate::state::{self, State};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Prints the saved state.
pub(crate) fn show(cfg: &Config, args: &ShowArgs) -> Result<i32> {
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
pub(crate) fn reset(cfg: &Config, args: &ResetArgs) -> Result<i32> {
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
    let stream = cfg.stream().ok();
    let recover_until = match (start, stream) {
        (None, Some(stream)) => stream
            .recover
            .until_ms(crate::clock::now_ms())
            .map(id::ms_to_iso),
        _ => None,
    };
    let req = ResetRequest {
        start_from: start.or(stream.and_then(|s| s.start)),
        recover_until,
        file_count: args.file_count,
        importer_was_reset: args.importer_was_reset,
        stream_id: stream.map(|s| s.live_stream_id.clone()),
        new_export_id: crate::clock::unique_name("export"),
    };
    // The numbering is the export's: read what the destination records.
    let mut committer = Committer::new(
        Box::new(state::StateFile(cfg.state_path.clone())),
        old.clone(),
        State::default(),
        cfg.folder.clone(),
        super::destinations(cfg)?,
        Arc::new(AtomicBool::new(false)),
    );
    let src = committer.survey()?;
    let stamp = [&src.folder, &src.done]
        .iter()
        .filter_map(|t| t.as_ref().and_then(|t| naming::key_ms(&t.key)))
        .max()
        .unwrap_or(0);
    let new = core::reset(
        old.as_ref(),
        src.marker.as_ref(),
        src.stored_high(),
        stamp,
        &req,
    )
    .map_err(|message| ConfigError {
        key: "--file-count".into(),
        origin: "command line".into(),
        message,
    })?;
    if args.importer_was_reset {
        // A new export: the old one's record would contradict it.
        committer.forget_marker()?;
    }
    state::save(&cfg.state_path, &new)?;
    println!(
        "state reset at `{}`: the next run starts after `{}`{}; its first file is number {}{}",
        cfg.state_path.display(),
        new.start_from.as_deref().unwrap_or("0-0"),
        new.recover_until
            .as_deref()
            .map(|d| format!(" with a snapshot up to {d}"))
            .unwrap_or_default(),
        new.file_count + 1,
        if args.importer_was_reset {
            " (the numbering starts anew, as the importer's did)"
        } else {
            " (kept: the file numbering, the key stamps and the export's identity)"
        }
    );
    Ok(exit::OK)
}

/// Imports the reference connector's state from OpenCTI.
pub(crate) fn import(cfg: &Config, args: &ImportArgs) -> Result<i32> {
    use crate::opencti::graphql::{self, GraphQl};
    let opencti = cfg.opencti()?;
    let connector_id = args
        .connector_id
        .clone()
        .or_else(|| cfg.connector.as_ref().map(|c| c.id.clone()))
        .ok_or_else(|| ConfigError {
            key: "--connector-id".into(),
            origin: "command line".into(),
            message: "the reference connector's id is needed: give `--connector-id` or set `connector.id` (CONNECTOR_ID) to the reference's".into(),
        })?;
    let _lock = state::lock(&cfg.state_path)?;
    let old = state::load(&cfg.state_path)?;
    if old.is_some() && !args.replace {
        bail!(ConfigError {
            key: "--replace".into(),
            origin: "command line".into(),
            message: format!(
                "a state already exists at `{}`: importing would replace it; give `--replace` to do so, or another `--state`",
                cfg.state_path.display()
            ),
        });
    }
    let client = GraphQl::new(opencti, std::time::Duration::from_secs(30))?;
    let data = client.call(
        graphql::CONNECTOR,
        serde_json::json!({ "id": connector_id }),
    )?;
    let node = data
        .get("connector")
        .filter(|n| !n.is_null())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "OpenCTI at `{}` knows no connector `{connector_id}`: give the reference's `CONNECTOR_ID` with `--connector-id`",
                opencti.url
            )
        })?;
    let remote = graphql::connector_state(node)
        .map_err(|e| anyhow::anyhow!("connector `{connector_id}`: {e}"))?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "connector `{connector_id}` has no state on OpenCTI (it never ran, or its state was reset): there is nothing to import"
            )
        })?;
    let stream_id = cfg.stream().ok().map(|s| s.live_stream_id.as_str());
    let mut new = crate::opencti::migrate::state_from_reference(
        &remote,
        &connector_id,
        stream_id,
        &id::ms_to_iso(crate::clock::now_ms()),
    )
    .map_err(|e| anyhow::anyhow!("connector `{connector_id}`: {e}"))?;
    if let Some(old) = &old {
        if new.file_count < old.file_count {
            bail!(
                "connector `{connector_id}` stored {} files, fewer than the {} of the state at `{}`: numbers never go back (the importer would refuse file {}); nothing was changed",
                new.file_count,
                old.file_count,
                cfg.state_path.display(),
                new.file_count + 1
            );
        }
        // Keys never go back, even across an import.
        new.last_key_ms = old.last_key_ms;
    }
    state::save(&cfg.state_path, &new)?;
    let cursor = new.start_from.clone().unwrap_or_default();
    let date = cursor
        .parse::<EventId>()
        .map(|c| c.date())
        .unwrap_or_default();
    println!(
        "imported the state of connector `{connector_id}` ({}) from OpenCTI into `{}`:\n  file_count:          {} (the next file is number {})\n  last_written_msg_id: {cursor} ({date})\n  recover_until:       {}\nthe next run resumes after `{cursor}`, the last id the reference stored{}",
        node.get("name").and_then(|n| n.as_str()).unwrap_or("?"),
        cfg.state_path.display(),
        new.file_count,
        new.file_count + 1,
        new.recover_until.as_deref().unwrap_or("false"),
        match remote.get("start_from").and_then(|s| s.as_str()) {
            Some(sf) if sf != cursor => format!(
                " (its `start_from` `{sf}` is the last id it received, ahead of what it stored, and is not used)"
            ),
            _ => String::new(),
        }
    );
    Ok(exit::OK)
}
