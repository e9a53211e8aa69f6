//! The platform's connectors page: with `connector.id` set, a background
//! thread registers this exporter as a `STREAM` connector (the reference's
//! name and scope) and pings it every 40 s, as pycti's `PingAlive` does,
//! with the state in the reference's keys (`start_from`, `recover_until`,
//! `last_written_msg_id`, `file_count`) so the platform shows the cursor and
//! the file count.
//!
//! The state sent is read from the committed state file, never from the
//! pipeline's memory: the platform only sees what is stored. The state the
//! platform answers with is never taken (pycti would adopt it, e.g. after a
//! reset from the UI); a different one is logged and ignored, because the
//! numbering must not go back behind the importer's back.
//!
//! A platform that refuses (GraphQL error, HTTP 4xx/5xx, no network) is a
//! warning, not a stop: registration is tried again at the next period.
//! Every request has a deadline; the wait between pings ends at once on
//! [`Pinger::stop`], which sends a last ping with the final state.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

use super::graphql::{self, GraphQl, GraphQlError, PingInfo};
use crate::config::{ConnectorSettings, OpenCti};
use crate::state::{self, State};

/// pycti's ping period.
pub(crate) const PING_PERIOD: Duration = Duration::from_secs(40);
/// Deadline of one registration or ping request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(20);
/// Deadline of the last ping, sent while the process stops.
const FINAL_DEADLINE: Duration = Duration::from_secs(5);
/// How long [`Pinger::stop`] waits for the thread; a request stuck past it
/// is left behind (the process is ending), so a platform that does not
/// answer never holds up a stop.
const STOP_WAIT: Duration = Duration::from_secs(8);

/// The reference's state keys, as the platform stores and shows them. Pure.
pub(crate) fn reference_state(s: &State) -> Value {
    json!({
        "start_from": s.start_from,
        "recover_until": match &s.recover_until {
            Some(d) => Value::String(d.clone()),
            None => Value::Bool(false),
        },
        "last_written_msg_id": s.last_written_msg_id,
        "file_count": s.file_count,
    })
}

/// The registration and ping thread; stop it with [`Pinger::stop`].
pub(crate) struct Pinger {
    stop: Arc<crate::clock::WakeFlag>,
    handle: Option<JoinHandle<()>>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Pinger {
    /// Starts the thread for `connector`, reading the state from
    /// `state_path` before each ping. Fails only when the HTTP client
    /// cannot be built (TLS files).
    pub(crate) fn start(
        opencti: &OpenCti,
        connector: &ConnectorSettings,
        state_path: &Path,
        period: Duration,
        info: PingInfo,
    ) -> anyhow::Result<Pinger> {
        let client = GraphQl::new(opencti, REQUEST_DEADLINE)?;
        let stop = Arc::new(crate::clock::WakeFlag::default());
        let mut link = Link {
            client,
            connector: connector.clone(),
            state_path: state_path.to_path_buf(),
            registered: false,
            minimal_input: false,
            ping_with_info: true,
            info,
            failing: false,
            last_remote: None,
        };
        let thread_stop = stop.clone();
        let (done_tx, done) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("opencti-ping".into())
            .spawn(move || {
                log::info!(
                    "registering with OpenCTI as stream connector `{}` ({}), pinged every {} s",
                    link.connector.name,
                    link.connector.id,
                    period.as_secs()
                );
                loop {
                    link.tick();
                    if thread_stop.sleep(period) {
                        break;
                    }
                }
                // The last state, so the page shows where the run ended.
                if link.registered {
                    link.client.set_deadline(FINAL_DEADLINE);
                    link.ping();
                }
                let _ = done_tx.send(());
            })?;
        Ok(Pinger {
            stop,
            handle: Some(handle),
            done,
        })
    }

    /// Wakes the thread and lets it send a last ping; waits for it at most
    /// a few seconds.
    pub(crate) fn stop(mut self) {
        self.stop.set();
        match self.done.recv_timeout(STOP_WAIT) {
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                if let Some(h) = self.handle.take() {
                    let _ = h.join();
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                log::warn!(
                    "OpenCTI did not answer within {} s; stopping without waiting for it",
                    STOP_WAIT.as_secs()
                );
            }
        }
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        self.stop.set();
    }
}

/// The thread's side: the client and what it learnt about the platform.
struct Link {
    client: GraphQl,
    connector: ConnectorSettings,
    state_path: PathBuf,
    registered: bool,
    /// The platform refused pycti's newer input fields.
    minimal_input: bool,
    /// False once the platform refused `connectorInfo`.
    ping_with_info: bool,
    /// What `connectorInfo` says.
    info: PingInfo,
    /// The last call failed (to log the recovery once).
    failing: bool,
    /// The last different state the platform answered with.
    last_remote: Option<Value>,
}

impl Link {
    fn tick(&mut self) {
        if !self.registered {
            match self.register() {
                Ok(()) => {
                    self.registered = true;
                    log::info!(
                        "registered with OpenCTI as connector `{}` ({})",
                        self.connector.name,
                        self.connector.id
                    );
                }
                Err(e) => {
                    self.warn(&format!(
                        "OpenCTI did not register connector `{}` ({e}); the export goes on, and registration is tried again in {} s. \
                         The token's user needs the capability to register connectors (a user of the Connectors group)",
                        self.connector.id,
                        PING_PERIOD.as_secs()
                    ));
                    return;
                }
            }
        }
        self.ping();
    }

    fn register(&mut self) -> Result<(), GraphQlError> {
        let answer = self.client.call(
            graphql::REGISTER,
            graphql::register_variables(&self.connector, self.minimal_input),
        );
        match answer {
            Err(e) if !self.minimal_input && e.is_schema_mismatch() => {
                log::debug!(
                    "registration with pycti's newer input refused ({e}); trying the older one"
                );
                self.minimal_input = true;
                self.register()
            }
            Err(e) => Err(e),
            Ok(data) => {
                if let Some(node) = data.get("registerConnector") {
                    self.compare_remote(node);
                }
                Ok(())
            }
        }
    }

    fn ping(&mut self) {
        let state = match state::load(&self.state_path) {
            Ok(Some(s)) => reference_state(&s),
            Ok(None) => Value::Null,
            Err(e) => {
                log::debug!("no state to ping with: {e}");
                Value::Null
            }
        };
        let mut answer = self.call_ping(&state);
        if let Err(e) = &answer {
            if self.ping_with_info && e.is_schema_mismatch() {
                log::debug!("ping with `connectorInfo` refused ({e}); pinging without it");
                self.ping_with_info = false;
                answer = self.call_ping(&state);
            }
        }
        match answer {
            Ok(data) => {
                if self.failing {
                    self.failing = false;
                    log::info!("OpenCTI ping back to normal");
                }
                match data.get("pingConnector") {
                    Some(node) if !node.is_null() => self.compare_remote_with(node, &state),
                    // An unknown id (the connector was deleted on the
                    // platform): register again at the next period.
                    _ => {
                        self.registered = false;
                        self.warn(&format!(
                            "OpenCTI does not know connector `{}` any more; registering again in {} s",
                            self.connector.id,
                            PING_PERIOD.as_secs()
                        ));
                    }
                }
            }
            Err(e) => self.warn(&format!("cannot ping OpenCTI: {e}")),
        }
    }

    fn call_ping(&self, state: &Value) -> Result<Value, GraphQlError> {
        let document = if self.ping_with_info {
            graphql::PING
        } else {
            graphql::PING_WITHOUT_INFO
        };
        self.client.call(
            document,
            graphql::ping_variables(
                &self.connector.id,
                state,
                self.ping_with_info.then_some(self.info),
            ),
        )
    }

    fn compare_remote(&mut self, node: &Value) {
        let local = match state::load(&self.state_path) {
            Ok(Some(s)) => reference_state(&s),
            _ => Value::Null,
        };
        self.compare_remote_with(node, &local);
    }

    /// Logs a platform state that differs from ours; never adopts it.
    fn compare_remote_with(&mut self, node: &Value, local: &Value) {
        let remote = match graphql::connector_state(node) {
            Ok(r) => r.unwrap_or(Value::Null),
            Err(e) => {
                log::debug!("the platform's state for the connector is unreadable: {e}");
                return;
            }
        };
        if remote.is_null() || &remote == local {
            return;
        }
        if self.last_remote.as_ref() != Some(&remote) {
            log::info!(
                "OpenCTI holds another state for connector `{}` ({remote}); ignored: the state file `{}` is the only source of the cursor and the file numbers (use `state reset` or `state import` to change them)",
                self.connector.id,
                self.state_path.display()
            );
            self.last_remote = Some(remote);
        }
    }

    /// A warning the first time, debug while the failure lasts.
    fn warn(&mut self, message: &str) {
        if self.failing {
            log::debug!("{message}");
        } else {
            log::warn!("{message}");
            self.failing = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ping_state_has_the_reference_keys() {
        let s = State {
            start_from: Some("1700000000000-2".into()),
            last_written_msg_id: Some("1700000000000-2".into()),
            file_count: 7,
            recover_until: None,
            ..State::default()
        };
        assert_eq!(
            reference_state(&s),
            json!({
                "start_from": "1700000000000-2",
                "recover_until": false,
                "last_written_msg_id": "1700000000000-2",
                "file_count": 7,
            })
        );
        let first = State {
            recover_until: Some("2024-06-15T10:00:00.000Z".into()),
            ..State::default()
        };
        let v = reference_state(&first);
        assert_eq!(v["recover_until"], "2024-06-15T10:00:00.000Z");
        assert_eq!(v["start_from"], Value::Null);
        assert_eq!(v["file_count"], 0);
    }
}
