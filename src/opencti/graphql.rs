//! A small synchronous GraphQL client for OpenCTI's `/graphql`, and the
//! documents this tool sends: `registerConnector`, `pingConnector` and
//! `connector(id)`, written after pycti's (`api/opencti_api_connector.py`).
//!
//! The agent is the OpenCTI agent of [`crate::http`] (TLS, proxy, custom
//! headers); every request has an overall deadline. Errors never carry the
//! token: answers echoed into an error go through
//! [`crate::secret::clean_external`] (cut, flattened, credentials masked). The
//! request builders and the answer parser are pure and tested here; the
//! registration thread lives in [`super::connector`].

use std::time::Duration;

use serde_json::{json, Value};

use crate::config::{ConnectorSettings, OpenCti};
use crate::secret::Secret;

/// Longest part of an answer body quoted in an error, in characters.
const BODY_QUOTE: usize = 300;

/// Why a GraphQL call did not give data.
#[derive(Debug, thiserror::Error)]
pub enum GraphQlError {
    /// The server answered with a status other than 200.
    #[error("`{url}` answered HTTP {status}: {body}")]
    Status {
        /// The GraphQL URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the body, scrubbed.
        body: String,
    },
    /// The server answered 200 with GraphQL errors.
    #[error("`{url}` refused the request: {message}")]
    Refused {
        /// The GraphQL URL.
        url: String,
        /// The first error's name and message, scrubbed.
        message: String,
    },
    /// No answer (connection, TLS, deadline).
    #[error("`{url}`: {reason}")]
    Transport {
        /// The GraphQL URL.
        url: String,
        /// What failed, scrubbed.
        reason: String,
    },
    /// An answer that is not a GraphQL response.
    #[error("`{url}` did not answer GraphQL JSON: {body}")]
    Invalid {
        /// The GraphQL URL.
        url: String,
        /// The start of the body, scrubbed.
        body: String,
    },
}

impl GraphQlError {
    /// True when the platform rejected a field or an argument of the
    /// document (an older platform): worth one try with an older document.
    pub fn is_schema_mismatch(&self) -> bool {
        match self {
            GraphQlError::Refused { message, .. } => {
                message.contains("Unknown argument")
                    || message.contains("is not defined by type")
                    || message.contains("Cannot query field")
                    || message.contains("Unknown type")
            }
            // Apollo answers 400 to a document that fails validation.
            GraphQlError::Status { status, body, .. } => {
                *status == 400
                    && (body.contains("Unknown argument")
                        || body.contains("is not defined by type")
                        || body.contains("Cannot query field")
                        || body.contains("Unknown type"))
            }
            _ => false,
        }
    }
}

/// A GraphQL endpoint: `<opencti.url>/graphql` with the bearer token.
pub struct GraphQl {
    agent: ureq::Agent,
    url: String,
    auth: String,
    token: Secret,
    deadline: Duration,
}

impl GraphQl {
    /// A client for `opencti`; each call gives up after `deadline`.
    pub fn new(opencti: &OpenCti, deadline: Duration) -> anyhow::Result<Self> {
        Ok(GraphQl {
            agent: crate::http::agent(opencti, deadline)?,
            url: format!("{}/graphql", opencti.url),
            auth: format!("Bearer {}", opencti.token.expose()),
            token: opencti.token.clone(),
            deadline,
        })
    }

    /// Changes the deadline of the next calls.
    pub fn set_deadline(&mut self, deadline: Duration) {
        self.deadline = deadline;
    }

    /// The GraphQL URL (no secret in it).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends `query` with `variables`; the `data` object of the answer.
    pub fn call(&self, query: &str, variables: Value) -> Result<Value, GraphQlError> {
        let body = json!({ "query": query, "variables": variables });
        let answer = self
            .agent
            .post(&self.url)
            .timeout(self.deadline)
            .set("Authorization", &self.auth)
            .set("Accept", "application/json")
            .set("Content-Type", "application/json")
            .send_string(&body.to_string());
        let (status, text) = match answer {
            Ok(resp) => (resp.status(), resp.into_string()),
            Err(ureq::Error::Status(status, resp)) => (status, resp.into_string()),
            Err(ureq::Error::Transport(t)) => {
                return Err(GraphQlError::Transport {
                    url: self.url.clone(),
                    reason: self
                        .token
                        .scrub(&crate::secret::clean_external(&t.to_string(), BODY_QUOTE)),
                })
            }
        };
        let text = text.map_err(|e| GraphQlError::Transport {
            url: self.url.clone(),
            reason: format!("reading the answer: {}", self.token.scrub(&e.to_string())),
        })?;
        parse_answer(&self.url, status, &text, &self.token)
    }
}

/// Reads an answer: `data` on success, else a scrubbed error. Pure.
pub fn parse_answer(
    url: &str,
    status: u16,
    body: &str,
    token: &Secret,
) -> Result<Value, GraphQlError> {
    let quote = || token.scrub(&crate::secret::clean_external(body, BODY_QUOTE));
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    if let Some(errors) = parsed
        .as_ref()
        .and_then(|v| v.get("errors"))
        .and_then(Value::as_array)
        .filter(|e| !e.is_empty())
    {
        let first = &errors[0];
        let message = first.get("message").and_then(Value::as_str).unwrap_or("");
        let name = first
            .get("name")
            .or_else(|| first.pointer("/extensions/code"))
            .and_then(Value::as_str);
        let text = match name {
            Some(n) if n != message => format!("{n}: {message}"),
            _ => message.to_string(),
        };
        let text = token.scrub(&crate::secret::clean_external(&text, BODY_QUOTE));
        return Err(if status == 200 {
            GraphQlError::Refused {
                url: url.to_string(),
                message: text,
            }
        } else {
            GraphQlError::Status {
                url: url.to_string(),
                status,
                body: text,
            }
        });
    }
    if status != 200 {
        return Err(GraphQlError::Status {
            url: url.to_string(),
            status,
            body: quote(),
        });
    }
    match parsed.and_then(|mut v| v.get_mut("data").map(Value::take)) {
        Some(data) if data.is_object() => Ok(data),
        _ => Err(GraphQlError::Invalid {
            url: url.to_string(),
            body: quote(),
        }),
    }
}

/// pycti's registration document (the fields this tool reads back).
pub const REGISTER: &str = "mutation RegisterConnector($input: RegisterConnectorInput) {
  registerConnector(input: $input) {
    id
    connector_state
  }
}";

/// pycti's ping document, with the connector's details (OpenCTI 6.3 on).
pub const PING: &str =
    "mutation PingConnector($id: ID!, $state: String, $connectorInfo: ConnectorInfoInput) {
  pingConnector(id: $id, state: $state, connectorInfo: $connectorInfo) {
    id
    connector_state
  }
}";

/// The ping document of older platforms, without `connectorInfo`.
pub const PING_WITHOUT_INFO: &str = "mutation PingConnector($id: ID!, $state: String) {
  pingConnector(id: $id, state: $state) {
    id
    connector_state
  }
}";

/// Reads one connector and its state (`connector(id)`).
pub const CONNECTOR: &str = "query GetConnector($id: String!) {
  connector(id: $id) {
    id
    name
    connector_type
    connector_state
  }
}";

/// The variables of [`REGISTER`], as pycti's `OpenCTIConnector.to_input()`
/// sends them for a stream connector; `minimal` leaves out the fields that
/// older platforms do not know (`auto_update`, `enrichment_resolution`,
/// `playbook_compatible`, `listen_callback_uri`).
pub fn register_variables(c: &ConnectorSettings, minimal: bool) -> Value {
    let mut input = json!({
        "id": c.id,
        "name": c.name,
        "type": "STREAM",
        "scope": c.scope,
        "auto": false,
        "only_contextual": false,
    });
    if !minimal {
        let obj = input.as_object_mut().expect("an object");
        obj.insert("auto_update".into(), json!(false));
        obj.insert("enrichment_resolution".into(), json!("none"));
        obj.insert("playbook_compatible".into(), json!(false));
        obj.insert("listen_callback_uri".into(), Value::Null);
    }
    json!({ "input": input })
}

/// What `connectorInfo` says about this run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PingInfo {
    /// The run ends by itself (`--once`, `--until`), as pycti's
    /// `CONNECTOR_RUN_AND_TERMINATE`.
    pub run_and_terminate: bool,
}

/// The variables of [`PING`]: the state as a JSON string (pycti sends
/// `json.dumps(state)`) and, when `info` is given, the connector details
/// pycti sends (`run_and_terminate`: a run that ends by itself, `--once`
/// or `--until`).
pub fn ping_variables(id: &str, state: &Value, info: Option<PingInfo>) -> Value {
    let mut v = json!({
        "id": id,
        "state": state.to_string(),
    });
    if let Some(info) = info {
        v["connectorInfo"] = json!({
            "run_and_terminate": info.run_and_terminate,
            "buffering": false,
            "queue_threshold": 500.0,
            "queue_messages_size": 0.0,
            "next_run_datetime": null,
            "last_run_datetime": null,
        });
    }
    v
}

/// The `connector_state` of an answer (`registerConnector`, `pingConnector`
/// or `connector`), parsed: `None` when absent, null or empty.
pub fn connector_state(node: &Value) -> Result<Option<Value>, String> {
    match node.get("connector_state") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => serde_json::from_str(s)
            .map(Some)
            .map_err(|e| format!("`connector_state` is not JSON ({e})")),
        Some(other) => Ok(Some(other.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ConnectorSettings {
        ConnectorSettings {
            id: "c0ffee00-0000-4000-8000-000000000001".into(),
            name: "StreamExporter".into(),
            scope: vec!["stream-exporter".into()],
        }
    }

    #[test]
    fn registration_sends_pycti_input_for_a_stream_connector() {
        let v = register_variables(&settings(), false);
        let input = &v["input"];
        assert_eq!(input["type"], "STREAM");
        assert_eq!(input["id"], "c0ffee00-0000-4000-8000-000000000001");
        assert_eq!(input["scope"], json!(["stream-exporter"]));
        assert_eq!(input["auto"], false);
        assert_eq!(input["only_contextual"], false);
        assert_eq!(input["playbook_compatible"], false);
        assert_eq!(input["enrichment_resolution"], "none");
        let minimal = register_variables(&settings(), true);
        assert!(minimal["input"].get("auto_update").is_none());
        assert_eq!(minimal["input"]["name"], "StreamExporter");
    }

    #[test]
    fn ping_sends_the_state_as_a_json_string() {
        let state = json!({"start_from": "5-0", "file_count": 3});
        let v = ping_variables("id1", &state, Some(PingInfo::default()));
        let sent: Value = serde_json::from_str(v["state"].as_str().unwrap()).unwrap();
        assert_eq!(sent, state);
        assert_eq!(v["connectorInfo"]["run_and_terminate"], false);
        let once = ping_variables(
            "id1",
            &state,
            Some(PingInfo {
                run_and_terminate: true,
            }),
        );
        assert_eq!(once["connectorInfo"]["run_and_terminate"], true);
        assert!(ping_variables("id1", &state, None)
            .get("connectorInfo")
            .is_none());
    }

    #[test]
    fn answers_become_data_or_scrubbed_errors() {
        let tok = Secret::new("tok-abcdef");
        let url = "http://o/graphql";
        let ok = parse_answer(url, 200, r#"{"data":{"pingConnector":{"id":"x"}}}"#, &tok).unwrap();
        assert_eq!(ok["pingConnector"]["id"], "x");
        let cases: &[(u16, &str, &str)] = &[
            (
                200,
                r#"{"errors":[{"message":"You are not allowed to do this.","name":"FORBIDDEN_ACCESS"}],"data":null}"#,
                "FORBIDDEN_ACCESS: You are not allowed",
            ),
            (
                200,
                r#"{"errors":[{"message":"bad token tok-abcdef","extensions":{"code":"AUTH_REQUIRED"}}]}"#,
                "AUTH_REQUIRED: bad token ***",
            ),
            (
                401,
                "Unauthorized: Bearer tok-abcdef",
                "HTTP 401: Unauthorized: Bearer ***",
            ),
            (502, "<html>bad gateway</html>", "HTTP 502"),
            (200, "<html>login</html>", "did not answer GraphQL JSON"),
            (200, r#"{"data":null}"#, "did not answer GraphQL JSON"),
        ];
        for (status, body, want) in cases {
            let e = parse_answer(url, *status, body, &tok)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{status} {body}: {e}");
            assert!(!e.contains("tok-abcdef"), "{e}");
        }
        // A body cannot forge log lines nor show an echoed credential.
        let e = parse_answer(
            url,
            500,
            "bad\nFAKE [ERROR] line Authorization: Bearer other-secret",
            &tok,
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains('\n') && !e.contains("other-secret"), "{e}");
        let long = "x".repeat(5000);
        let e = parse_answer(url, 500, &long, &tok).unwrap_err().to_string();
        assert!(e.len() < 600, "{}", e.len());
    }

    #[test]
    fn older_platforms_are_recognised_by_their_validation_errors() {
        let tok = Secret::new("t");
        let e = parse_answer(
            "u",
            400,
            r#"{"errors":[{"message":"Unknown argument \"connectorInfo\" on field \"Mutation.pingConnector\"."}]}"#,
            &tok,
        )
        .unwrap_err();
        assert!(e.is_schema_mismatch(), "{e}");
        let e =
            parse_answer("u", 200, r#"{"errors":[{"message":"FORBIDDEN"}]}"#, &tok).unwrap_err();
        assert!(!e.is_schema_mismatch());
    }

    #[test]
    fn connector_state_is_read_from_its_json_string() {
        let node = json!({"connector_state": "{\"file_count\":4}"});
        assert_eq!(
            connector_state(&node).unwrap(),
            Some(json!({"file_count": 4}))
        );
        assert_eq!(
            connector_state(&json!({"connector_state": null})).unwrap(),
            None
        );
        assert_eq!(
            connector_state(&json!({"connector_state": ""})).unwrap(),
            None
        );
        assert!(connector_state(&json!({"connector_state": "{bad"})).is_err());
    }
}
