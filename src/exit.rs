//! Exit statuses, decided here and nowhere else.
//!
//! | status | meaning |
//! |---|---|
//! | 0 | success (a run stopped by one signal after committing counts as success) |
//! | 1 | runtime failure (storage refused, state unusable, a check failed) |
//! | 2 | usage or configuration error |
//! | 3 | OpenCTI refused the token or the stream (HTTP 401 or 410) |
//! | 4 | another run holds the state lock |
//! | 5 | `run --once` gave up: OpenCTI or the storage failed for longer than `run.once_max_outage_sec` (cursor and files intact) |
//! | 130 | interrupted by a second signal |

use crate::config::ConfigError;
use crate::state::StateError;
use crate::stream::client::StreamError;

/// `run --once` ended because OpenCTI or the storage kept failing.
#[derive(Debug, thiserror::Error)]
#[error("gave up after {} of failures with nothing getting through ({what}): `run --once` ends after `run.once_max_outage_sec`; nothing was lost, the cursor and the files are as the last commit left them, and the next run resumes there", crate::text::secs(*.limit_secs))]
pub(crate) struct GaveUp {
    /// How long it failed.
    pub(crate) limit_secs: u64,
    /// What failed: `OpenCTI`, `the storage` or both.
    pub(crate) what: String,
}

/// Success.
pub(crate) const OK: i32 = 0;
/// Runtime failure.
pub(crate) const FAILURE: i32 = 1;
/// Usage or configuration error.
pub(crate) const USAGE: i32 = 2;
/// Authentication failed or the stream is refused/stopped.
pub(crate) const REFUSED: i32 = 3;
/// Another run holds the lock.
pub(crate) const LOCKED: i32 = 4;
/// `run --once` gave up after a bounded outage.
pub(crate) const GAVE_UP: i32 = 5;
/// Interrupted by a second signal.
pub(crate) const INTERRUPTED: i32 = 130;

/// The status for an error, from its kind.
pub(crate) fn code_for(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if cause.downcast_ref::<ConfigError>().is_some() {
            return USAGE;
        }
        if cause.downcast_ref::<GaveUp>().is_some() {
            return GAVE_UP;
        }
        if let Some(e) = cause.downcast_ref::<StateError>() {
            return match e {
                StateError::Locked { .. } => LOCKED,
                _ => FAILURE,
            };
        }
        if let Some(e) = cause.downcast_ref::<StreamError>() {
            return match e {
                StreamError::Unauthorized { .. } | StreamError::Gone { .. } => REFUSED,
                StreamError::Refused { .. } => USAGE,
                _ => FAILURE,
            };
        }
    }
    FAILURE
}
