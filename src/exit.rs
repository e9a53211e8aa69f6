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

use crate::cmd::run::GaveUp;
use crate::config::ConfigError;
use crate::state::StateError;
use crate::stream::client::StreamError;

/// Success.
pub const OK: i32 = 0;
/// Runtime failure.
pub const FAILURE: i32 = 1;
/// Usage or configuration error.
pub const USAGE: i32 = 2;
/// Authentication failed or the stream is refused/stopped.
pub const REFUSED: i32 = 3;
/// Another run holds the lock.
pub const LOCKED: i32 = 4;
/// `run --once` gave up after a bounded outage.
pub const GAVE_UP: i32 = 5;
/// Interrupted by a second signal.
pub const INTERRUPTED: i32 = 130;

/// The status for an error, from its kind.
pub fn code_for(err: &anyhow::Error) -> i32 {
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
