//! `dump`: the oracle. Prints, one JSON object a line, every data message a
//! client gets for a request (`{"id","event","data"}`, or `"raw"` instead of
//! `"data"` when the data is not valid JSON), or with `--files` every file key
//! those messages reference with its content (`{"key","base64"}`).
//!
//! Uses the very renderer `serve` uses, so the lines are what goes on the wire.

use std::collections::HashSet;
use std::io::{self, Write};

use crate::files;
use crate::model::{Kind, Model};
use crate::plan::{self, Item, Plan, Shape};

/// Writes one line per data message of `plan`.
pub fn write_events(m: &Model, shape: &Shape, plan: &Plan, out: &mut impl Write) -> io::Result<()> {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut line = Vec::with_capacity(64 * 1024);
    for item in plan.items() {
        let Some(msg) = plan::render(m, shape, item, plan.listen_delete, &mut buf) else {
            continue;
        };
        line.clear();
        line.extend_from_slice(b"{\"id\":\"");
        msg.id.write(&mut line);
        line.extend_from_slice(b"\",\"event\":");
        crate::jsonw::str(&mut line, msg.name);
        if msg.json {
            line.extend_from_slice(b",\"data\":");
            line.extend_from_slice(&buf);
        } else {
            line.extend_from_slice(b",\"raw\":");
            crate::jsonw::str(&mut line, &String::from_utf8_lossy(&buf));
        }
        line.extend_from_slice(b"}\n");
        out.write_all(&line)?;
    }
    out.flush()
}

/// Writes one line per distinct file key the messages of `plan` reference.
pub fn write_files(m: &Model, plan: &Plan, out: &mut impl Write) -> io::Result<()> {
    let mut seen = HashSet::new();
    for item in plan.items() {
        let ev = match item {
            Item::Recovery(j) => m.event(j),
            Item::History(i) | Item::Live(i, _) => m.event(i),
        };
        if ev.kind == Kind::Delete {
            continue;
        }
        for key in m.file_keys(&ev) {
            if !seen.insert(key.clone()) {
                continue;
            }
            let bytes = files::served(m, &key);
            let line = serde_json::json!({ "key": key, "base64": files::base64(&bytes) });
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Params;
    use serde_json::Value;

    fn lines(out: &[u8]) -> Vec<Value> {
        std::str::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn every_line_is_json_with_id_event_and_data_or_raw() {
        let m = Model::new(Params {
            events: 300,
            ..Params::default()
        });
        let shape = Shape {
            malformed_every: Some(10),
            ..Shape::default()
        };
        let req = plan::Request {
            start: Some(crate::id::EventId::ZERO),
            recover_ms: None,
            listen_delete: true,
        };
        let plan = Plan::new(&m, &shape, &req).unwrap();
        let mut out = Vec::new();
        write_events(&m, &shape, &plan, &mut out).unwrap();
        let v = lines(&out);
        assert_eq!(v.len(), 300);
        let raw = v.iter().filter(|l| l.get("raw").is_some()).count();
        assert_eq!(raw, 15);
        for l in &v {
            assert!(l["id"].is_string() && l["event"].is_string());
            assert!(l.get("data").is_some() != l.get("raw").is_some());
        }
    }

    #[test]
    fn files_lines_are_deduplicated_and_match_the_content() {
        let m = Model::new(Params {
            events: 2000,
            files_ratio: 0.2,
            ..Params::default()
        });
        let req = plan::Request {
            start: Some(crate::id::EventId::ZERO),
            recover_ms: None,
            listen_delete: true,
        };
        let plan = Plan::new(&m, &Shape::default(), &req).unwrap();
        let mut out = Vec::new();
        write_files(&m, &plan, &mut out).unwrap();
        let v = lines(&out);
        assert!(v.len() > 50, "{}", v.len());
        let mut keys = HashSet::new();
        for l in &v {
            let key = l["key"].as_str().unwrap();
            assert!(keys.insert(key.to_string()), "duplicate {key}");
            let served = files::lookup(&m, key).unwrap();
            assert_eq!(l["base64"], files::base64(&served));
        }
    }
}
