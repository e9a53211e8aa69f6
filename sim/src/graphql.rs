//! The little of OpenCTI's GraphQL API a connector uses: `registerConnector`,
//! `pingConnector` and `connector(id) { connector_state }`, on
//! `POST /graphql` with the bearer token; and what the simulator saw, for
//! tests, on `GET /_sim/connectors`.
//!
//! Documents are recognised by the field they call, not parsed. A connector
//! keeps the last state a ping sent, as the platform does, except when its
//! state was reset from the UI (`--connector-state-reset`): the next ping
//! then answers with the platform's state, which a connector is expected to
//! adopt (pycti does; the exporter must not). Pure except for the lock:
//! request in, status and body out.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::http::Request;

/// A connector as the platform holds it.
#[derive(Debug, Clone, Default)]
struct Connector {
    name: String,
    kind: String,
    scope: Value,
    /// The last `registerConnector` input.
    input: Value,
    registrations: u64,
    pings: u64,
    /// The state the platform holds (a JSON string), if any.
    state: Option<String>,
    /// The next ping answers with `state` instead of storing the one sent.
    state_reset: bool,
    /// The state the last ping sent, as sent (a JSON string).
    last_ping_state: Option<String>,
    /// The last ping's `connectorInfo`.
    last_info: Value,
}

/// The platform's connectors and what was asked of them.
#[derive(Debug, Default)]
pub struct Platform {
    connectors: Mutex<BTreeMap<String, Connector>>,
    /// Every GraphQL request answers this status instead (`--graphql-status`).
    status: Option<u16>,
    /// Headers of the last request of each kind (`stream`, `file`,
    /// `graphql`), without `authorization`.
    seen: Mutex<BTreeMap<String, Vec<(String, String)>>>,
}

/// A connector that exists before any registration (`--connector-id`).
#[derive(Debug, Clone)]
pub struct Existing {
    pub id: String,
    /// Its state, a JSON text (`--connector-state`).
    pub state: Option<String>,
    /// The state was reset from the UI (`--connector-state-reset`).
    pub reset: bool,
}

fn error(message: &str, code: &str) -> String {
    json!({"errors": [{"message": message, "extensions": {"code": code}}], "data": null})
        .to_string()
}

impl Platform {
    /// A platform with `existing` connectors; `status` makes every GraphQL
    /// request fail with that HTTP status.
    pub fn new(existing: Option<Existing>, status: Option<u16>) -> Self {
        let mut map = BTreeMap::new();
        if let Some(e) = existing {
            map.insert(
                e.id.clone(),
                Connector {
                    name: "StreamExporterConnector".into(),
                    kind: "STREAM".into(),
                    scope: json!(["stream-exporter"]),
                    state: e.state,
                    state_reset: e.reset,
                    ..Connector::default()
                },
            );
        }
        Platform {
            connectors: Mutex::new(map),
            status,
            seen: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records the headers of a request of `kind`.
    pub fn saw(&self, kind: &str, req: &Request) {
        let headers = req
            .headers
            .iter()
            .filter(|(n, _)| n != "authorization")
            .cloned()
            .collect();
        self.seen
            .lock()
            .expect("lock")
            .insert(kind.to_string(), headers);
    }

    /// `GET /_sim/connectors`: every connector and the last headers seen.
    pub fn record(&self) -> String {
        let connectors: Vec<Value> = self
            .connectors
            .lock()
            .expect("lock")
            .iter()
            .map(|(id, c)| {
                let parse = |s: &Option<String>| {
                    s.as_deref()
                        .map(|t| serde_json::from_str(t).unwrap_or(Value::String(t.into())))
                        .unwrap_or(Value::Null)
                };
                json!({
                    "id": id,
                    "name": c.name,
                    "type": c.kind,
                    "scope": c.scope,
                    "input": c.input,
                    "registrations": c.registrations,
                    "pings": c.pings,
                    "connector_state": parse(&c.state),
                    "last_ping_state": parse(&c.last_ping_state),
                    "last_connector_info": c.last_info,
                })
            })
            .collect();
        let seen: BTreeMap<String, BTreeMap<String, String>> = self
            .seen
            .lock()
            .expect("lock")
            .iter()
            .map(|(k, h)| (k.clone(), h.iter().cloned().collect()))
            .collect();
        json!({"connectors": connectors, "headers": seen}).to_string()
    }

    /// Answers `POST /graphql`: status and JSON body.
    pub fn answer(&self, req: &Request, body: &[u8], token: &str) -> (u16, String) {
        self.saw("graphql", req);
        if let Some(status) = self.status {
            return (status, error("injected failure", "SIM_FAILURE"));
        }
        if req.bearer() != Some(token) {
            return (
                200,
                error("You must be logged in to do this.", "AUTH_REQUIRED"),
            );
        }
        let Ok(doc) = serde_json::from_slice::<Value>(body) else {
            return (400, error("POST body sent invalid JSON.", "BAD_USER_INPUT"));
        };
        let query = doc.get("query").and_then(Value::as_str).unwrap_or("");
        let vars = doc.get("variables").cloned().unwrap_or(Value::Null);
        let mut map = self.connectors.lock().expect("lock");
        if query.contains("registerConnector(") {
            let input = vars.get("input").cloned().unwrap_or(Value::Null);
            let Some(id) = input.get("id").and_then(Value::as_str).map(String::from) else {
                return (200, error("Connector id is missing", "VALIDATION_ERROR"));
            };
            let c = map.entry(id.clone()).or_default();
            c.name = input["name"].as_str().unwrap_or("").to_string();
            c.kind = input["type"].as_str().unwrap_or("").to_string();
            c.scope = input["scope"].clone();
            c.input = input;
            c.registrations += 1;
            let data = json!({"registerConnector": {"id": id, "connector_state": c.state}});
            return (200, json!({ "data": data }).to_string());
        }
        if query.contains("pingConnector(") {
            let id = vars["id"].as_str().unwrap_or("").to_string();
            let Some(c) = map.get_mut(&id) else {
                return (200, json!({"data": {"pingConnector": null}}).to_string());
            };
            c.pings += 1;
            c.last_ping_state = vars["state"].as_str().map(String::from);
            c.last_info = vars.get("connectorInfo").cloned().unwrap_or(Value::Null);
            if c.state_reset {
                c.state_reset = false;
            } else {
                c.state = c.last_ping_state.clone();
            }
            let data = json!({"pingConnector": {"id": id, "connector_state": c.state}});
            return (200, json!({ "data": data }).to_string());
        }
        if query.contains("connector(") {
            let id = vars["id"].as_str().unwrap_or("");
            let node = map.get(id).map(|c| {
                json!({
                    "id": id,
                    "name": c.name,
                    "connector_type": c.kind,
                    "connector_state": c.state,
                })
            });
            return (200, json!({"data": {"connector": node}}).to_string());
        }
        (
            400,
            error(
                "Cannot query field: the simulator only knows registerConnector, pingConnector and connector",
                "GRAPHQL_VALIDATION_FAILED",
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_head;

    fn post() -> Request {
        parse_head(b"POST /graphql HTTP/1.1\r\nAuthorization: Bearer t\r\nX-Custom: v\r\n").unwrap()
    }

    #[test]
    fn registers_pings_and_reads_a_connector() {
        let p = Platform::new(None, None);
        let reg = json!({"query": "mutation R($input: RegisterConnectorInput) { registerConnector(input: $input) { id } }",
            "variables": {"input": {"id": "c1", "name": "N", "type": "STREAM", "scope": ["s"]}}});
        let (st, body) = p.answer(&post(), reg.to_string().as_bytes(), "t");
        assert_eq!(st, 200, "{body}");
        let ping = json!({"query": "mutation P { pingConnector(id: $id, state: $state) { id } }",
            "variables": {"id": "c1", "state": "{\"file_count\":2}"}});
        let (_, body) = p.answer(&post(), ping.to_string().as_bytes(), "t");
        assert!(body.contains("file_count"), "{body}");
        let read = json!({"query": "query G($id: String!) { connector(id: $id) { connector_state } }",
            "variables": {"id": "c1"}});
        let (_, body) = p.answer(&post(), read.to_string().as_bytes(), "t");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["data"]["connector"]["connector_state"],
            "{\"file_count\":2}"
        );
        let rec: Value = serde_json::from_str(&p.record()).unwrap();
        assert_eq!(rec["connectors"][0]["pings"], 1);
        assert_eq!(rec["connectors"][0]["type"], "STREAM");
        assert_eq!(rec["connectors"][0]["last_ping_state"]["file_count"], 2);
        assert_eq!(rec["headers"]["graphql"]["x-custom"], "v");
        assert!(rec["headers"]["graphql"].get("authorization").is_none());
        let (_, body) = p.answer(&post(), read.to_string().as_bytes(), "wrong");
        assert!(body.contains("AUTH_REQUIRED"));
    }

    #[test]
    fn a_reset_state_is_answered_once_instead_of_stored() {
        let p = Platform::new(
            Some(Existing {
                id: "c1".into(),
                state: Some("{\"file_count\":1}".into()),
                reset: true,
            }),
            None,
        );
        let ping = |n: u64| {
            json!({"query": "pingConnector(", "variables": {"id": "c1", "state": format!("{{\"file_count\":{n}}}")}})
                .to_string()
        };
        let (_, first) = p.answer(&post(), ping(9).as_bytes(), "t");
        assert!(first.contains("file_count\\\":1"), "{first}");
        let (_, second) = p.answer(&post(), ping(9).as_bytes(), "t");
        assert!(second.contains("file_count\\\":9"), "{second}");
    }

    #[test]
    fn an_injected_status_fails_every_request() {
        let p = Platform::new(None, Some(403));
        assert_eq!(p.answer(&post(), b"{}", "t").0, 403);
    }
}
