//! One folder, one writer: a lease object in the destination.
//!
//! `.opencti-stream-exporter/<folder>/lease.json` names the run that
//! writes the folder and until when. It is created with a create-only write
//! (`If-None-Match: *`), renewed while the run lasts with a compare-and-swap
//! (`If-Match` on the tag it last wrote), and taken over by another run only
//! once it has expired. Whether the store honours conditional writes is
//! found out once, when the lease is created: a second create-only write
//! must be refused. Where it is not (older S3 servers), the lease is
//! advisory: it is still written, read and respected, but two runs
//! starting within the same moment are not told apart (a warning says so).
//!
//! [`decide`] is pure; [`Lease`] does the I/O through a [`Destination`].

use serde::{Deserialize, Serialize};

use crate::dest::{CondPut, DestError, Destination, Precondition};
use crate::marker::lease_key;

/// How long a lease lasts without renewal.
pub(crate) const TTL_MS: u64 = 60_000;
/// How often it is renewed.
pub(crate) const RENEW_EVERY_MS: u64 = 15_000;

/// What the lease object says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaseDoc {
    /// The run that holds it.
    pub(crate) owner: String,
    /// Where that run is, for messages: host name and process id.
    pub(crate) holder: String,
    /// The host and state file of that run: a run on the same host with
    /// the same state file holds the state's lock, so the holder is gone
    /// (killed) and the lease is taken over at once.
    #[serde(default)]
    pub(crate) state: String,
    /// Until when (epoch ms).
    pub(crate) expires_ms: u64,
}

/// What to do about the lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// None: create it.
    Create,
    /// Ours, or expired: replace it (compare-and-swap on its tag).
    Replace,
    /// Another run holds it: stop, with the reason.
    Refuse(String),
}

/// Decides, from the lease found (`None`: none; `Err`: unreadable), for
/// run `me` with state `my_state` (see [`LeaseDoc::state`]) at `now_ms`.
pub(crate) fn decide(
    found: Option<Result<&LeaseDoc, String>>,
    me: &str,
    my_state: &str,
    now_ms: u64,
) -> Decision {
    match found {
        None => Decision::Create,
        // Unreadable: treated as expired (a run cut while writing it).
        Some(Err(_)) => Decision::Replace,
        Some(Ok(d)) if d.owner == me || d.state == my_state || d.expires_ms <= now_ms => {
            Decision::Replace
        }
        Some(Ok(d)) => Decision::Refuse(format!(
            "another exporter writes to this folder: {} holds its lease until {} ({} s from now); it is taken over only once expired. Stop the other exporter, or give this one its own folder",
            d.holder,
            crate::id::ms_to_iso(d.expires_ms),
            (d.expires_ms - now_ms).div_ceil(1000)
        )),
    }
}

/// A lease this run holds.
#[derive(Debug)]
pub(crate) struct Lease {
    key: String,
    tag: String,
    conditional: bool,
    state: String,
}

/// Why a lease could not be taken or kept.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LeaseError {
    /// Another run holds it, or took it over.
    #[error("{0}")]
    Held(String),
    /// The store failed.
    #[error(transparent)]
    Dest(#[from] DestError),
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The [`LeaseDoc::state`] of a run with this state file on this host.
pub(crate) fn state_identity(state_path: &std::path::Path) -> String {
    let path = std::fs::canonicalize(state_path).unwrap_or_else(|_| state_path.to_path_buf());
    format!("{}:{}", host(), path.display())
}

fn doc(me: &str, my_state: &str, now_ms: u64) -> Vec<u8> {
    let d = LeaseDoc {
        owner: me.to_string(),
        holder: format!("run `{me}` (host `{}`, pid {})", host(), std::process::id()),
        state: my_state.to_string(),
        expires_ms: now_ms + TTL_MS,
    };
    serde_json::to_vec(&d).expect("serialises")
}

impl Lease {
    /// Takes the lease of `folder` for run `me`.
    pub(crate) fn acquire(
        d: &mut dyn Destination,
        folder: &str,
        me: &str,
        my_state: &str,
    ) -> Result<Lease, LeaseError> {
        let key = lease_key(folder);
        for _ in 0..3 {
            let now = crate::clock::now_ms();
            let found = d.get_tagged(&key)?;
            let parsed = found
                .as_ref()
                .map(|(b, _)| serde_json::from_slice::<LeaseDoc>(b).map_err(|e| e.to_string()));
            let cond = match decide(
                parsed.as_ref().map(|r| r.as_ref().map_err(Clone::clone)),
                me,
                my_state,
                now,
            ) {
                Decision::Refuse(why) => return Err(LeaseError::Held(why)),
                Decision::Create => Precondition::Absent,
                Decision::Replace => Precondition::Matches(found.expect("found").1),
            };
            let body = doc(me, my_state, now);
            match d.put_if(&key, &body, &cond)? {
                CondPut::Stored(tag) => {
                    let conditional = match cond {
                        // Found out once: a second create must be refused.
                        Precondition::Absent => {
                            d.put_if(&key, &body, &Precondition::Absent)?
                                == CondPut::PreconditionFailed
                        }
                        Precondition::Matches(_) => true,
                    };
                    if !conditional {
                        log::warn!("{} does not refuse a create-only write: the folder's lease is advisory, and two exporters started at the same moment are not told apart", d.describe());
                    }
                    let tag = d.get_tagged(&key)?.map(|(_, t)| t).unwrap_or(tag);
                    return Ok(Lease {
                        key,
                        tag,
                        conditional,
                        state: my_state.to_string(),
                    });
                }
                // Someone was faster: look again.
                CondPut::PreconditionFailed => continue,
                CondPut::Unsupported => {
                    d.put(&key, &body, &plain_meta(&body))?;
                    log::warn!(
                        "{} cannot write conditionally: the folder's lease is advisory",
                        d.describe()
                    );
                    let tag = d.get_tagged(&key)?.map(|(_, t)| t).unwrap_or_default();
                    return Ok(Lease {
                        key,
                        tag,
                        conditional: false,
                        state: my_state.to_string(),
                    });
                }
            }
        }
        Err(LeaseError::Held(
            "the folder's lease changed hands three times while this run tried to take it: another exporter is starting on the same folder".into(),
        ))
    }

    /// Extends the lease; fails when another run took it over.
    pub(crate) fn renew(&mut self, d: &mut dyn Destination, me: &str) -> Result<(), LeaseError> {
        let body = doc(me, &self.state, crate::clock::now_ms());
        if !self.conditional {
            let still_ours = d
                .get_tagged(&self.key)?
                .and_then(|(b, _)| serde_json::from_slice::<LeaseDoc>(&b).ok())
                .is_some_and(|l| l.owner == me);
            if !still_ours {
                return Err(LeaseError::Held(
                    "another exporter took over this folder's lease".into(),
                ));
            }
            d.put(&self.key, &body, &plain_meta(&body))?;
            return Ok(());
        }
        match d.put_if(&self.key, &body, &Precondition::Matches(self.tag.clone()))? {
            CondPut::Stored(tag) => {
                self.tag = d.get_tagged(&self.key)?.map(|(_, t)| t).unwrap_or(tag);
                Ok(())
            }
            _ => Err(LeaseError::Held(
                "another exporter took over this folder's lease (this run could not renew it in time)".into(),
            )),
        }
    }

    /// Gives the lease up at the end of the run.
    pub(crate) fn release(self, d: &mut dyn Destination) {
        let _ = d.delete(&self.key);
    }
}

/// Renews a lease in its own thread until dropped, then gives it up.
pub(crate) struct Keeper {
    done: std::sync::Arc<crate::clock::WakeFlag>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.done.set();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Keeps `lease` (through `d`, a destination of its own) for run `me`.
/// When another run takes it over, `lost` and `stop` are set: the
/// committer stores nothing more, and the run ends.
pub(crate) fn keep(
    mut d: Box<dyn Destination>,
    mut lease: Lease,
    me: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    lost: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Keeper {
    use std::sync::atomic::Ordering;
    let done = std::sync::Arc::new(crate::clock::WakeFlag::default());
    let flag = done.clone();
    let handle = std::thread::Builder::new()
        .name("lease".into())
        .spawn(move || loop {
            if flag.sleep(std::time::Duration::from_millis(RENEW_EVERY_MS)) {
                lease.release(d.as_mut());
                return;
            }
            match lease.renew(d.as_mut(), &me) {
                Ok(()) => {}
                Err(LeaseError::Held(why)) => {
                    log::error!("{why}: this run stops and stores nothing more");
                    lost.store(true, Ordering::Relaxed);
                    stop.store(true, Ordering::Relaxed);
                    return;
                }
                Err(LeaseError::Dest(e)) => {
                    log::warn!("cannot renew the folder's lease: {e}; trying again")
                }
            }
        })
        .expect("spawn lease thread");
    Keeper {
        done,
        handle: Some(handle),
    }
}

fn plain_meta(body: &[u8]) -> crate::dest::ObjectMeta {
    use sha2::Digest;
    crate::dest::ObjectMeta {
        events: 0,
        first_id: String::new(),
        last_id: String::new(),
        sha256_hex: crate::text::hex(&sha2::Sha256::digest(body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dest::dir::DirDestination;

    #[test]
    fn a_live_lease_is_refused_an_expired_one_taken_over() {
        let l = LeaseDoc {
            owner: "a".into(),
            holder: "run `a`".into(),
            state: "h:/s.json".into(),
            expires_ms: 100,
        };
        assert_eq!(decide(None, "b", "h:/t.json", 50), Decision::Create);
        assert!(
            matches!(decide(Some(Ok(&l)), "b", "h:/t.json", 50), Decision::Refuse(m) if m.contains("run `a`") && m.contains("1 s from now"))
        );
        assert_eq!(
            decide(Some(Ok(&l)), "a", "h:/t.json", 50),
            Decision::Replace
        );
        assert_eq!(
            decide(Some(Ok(&l)), "b", "h:/t.json", 100),
            Decision::Replace
        );
        // The same state on the same host: its holder was killed.
        assert_eq!(
            decide(Some(Ok(&l)), "b", "h:/s.json", 50),
            Decision::Replace
        );
        assert_eq!(
            decide(Some(Err("bad".into())), "b", "h:/t.json", 0),
            Decision::Replace
        );
    }

    #[test]
    fn one_folder_one_writer_in_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DirDestination::new(dir.path());
        let mut first = Lease::acquire(&mut d, "f", "run-1", "h:/1").unwrap();
        assert!(first.conditional);
        let e = Lease::acquire(&mut d, "f", "run-2", "h:/2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("run `run-1`"), "{e}");
        first.renew(&mut d, "run-1").unwrap();
        first.renew(&mut d, "run-1").unwrap();
        // Expired: taken over; the first run can no longer renew.
        let expired = LeaseDoc {
            owner: "run-1".into(),
            holder: "x".into(),
            state: "h:/1".into(),
            expires_ms: 1,
        };
        std::fs::write(
            dir.path().join(lease_key("f")),
            serde_json::to_vec(&expired).unwrap(),
        )
        .unwrap();
        let second = Lease::acquire(&mut d, "f", "run-2", "h:/2").unwrap();
        assert!(first.renew(&mut d, "run-1").is_err());
        second.release(&mut d);
        assert!(!dir.path().join(lease_key("f")).exists());
    }
}
