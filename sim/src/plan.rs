//! Which messages a client gets, and their bytes: the pure core shared by
//! `serve` and `dump`, so the oracle `dump` prints is exactly what a client
//! receives.
//!
//! A [`Plan`] is decided once per request from the start position, the
//! recovery date and `listen-delete`: first the recovery snapshot (the current
//! version of every object touched in the window, as `create` events), then
//! the retained history after the resume point. Live events and heartbeats are
//! the server's business; this module only renders them like history events.

use std::collections::HashMap;
use std::ops::Range;

use crate::id::EventId;
use crate::model::{Kind, Model};

/// Stream-wide options that shape what every client gets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shape {
    /// Events before this index are no longer retained (trimmed stream).
    pub retention_first: u64,
    /// Every K-th data event is replaced by a broken one (K = this).
    pub malformed_every: Option<u64>,
}

/// What one client asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Send messages strictly after this id; `None` = live only.
    pub start: Option<EventId>,
    /// Recovery date, ms since the epoch.
    pub recover_ms: Option<u64>,
    /// `false` drops delete events.
    pub listen_delete: bool,
}

/// Why a request cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// `recover` without a start position (OpenCTI answers 500).
    RecoverWithoutStart,
}

/// What a connection sends before going live.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// History indexes whose object is sent as a recovery `create`, in order.
    pub recovery: Vec<u64>,
    /// History indexes sent after recovery.
    pub history: Range<u64>,
    /// Live events after this id are wanted (`None`: live from now only).
    pub live_after: Option<EventId>,
    /// `false` drops delete events.
    pub listen_delete: bool,
}

/// One data message to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// Recovery `create` for the object as history event `j` left it.
    Recovery(u64),
    /// History event `i`.
    History(u64),
    /// Live event `i` (`i >= events`) with its id.
    Live(u64, EventId),
}

/// The SSE fields of a rendered message; its `data:` bytes are in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msg {
    pub id: EventId,
    pub name: &'static str,
    /// The data is valid UTF-8 JSON (false for some malformed events).
    pub json: bool,
}

/// The ways a data event is broken by `--malformed-every`, in cycling order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    InvalidJson,
    NoDataKey,
    InvalidUtf8,
    UnknownEventName,
}

impl Shape {
    /// Index of the first retained history event.
    pub fn first_retained(&self, m: &Model) -> u64 {
        self.retention_first.min(m.params().events)
    }

    /// How event `i` (history or live index) is broken, if it is.
    pub fn malformed(&self, i: u64) -> Option<Malformed> {
        let k = self.malformed_every.filter(|k| *k > 0)?;
        if !(i + 1).is_multiple_of(k) {
            return None;
        }
        Some(match ((i + 1) / k - 1) % 4 {
            0 => Malformed::InvalidJson,
            1 => Malformed::NoDataKey,
            2 => Malformed::InvalidUtf8,
            _ => Malformed::UnknownEventName,
        })
    }
}

impl Plan {
    pub fn new(m: &Model, shape: &Shape, req: &Request) -> Result<Plan, PlanError> {
        let first = shape.first_retained(m);
        let events = m.params().events;
        let Some(start) = req.start else {
            if req.recover_ms.is_some() {
                return Err(PlanError::RecoverWithoutStart);
            }
            return Ok(Plan {
                recovery: Vec::new(),
                history: events..events,
                live_after: None,
                listen_delete: req.listen_delete,
            });
        };
        // OpenCTI recovers only when the recovery date is after the start.
        let (recovery, resume) = match req.recover_ms {
            Some(r) if r > start.ms => (recovery_set(m, start.ms, r), EventId::new(r, 0)),
            _ => (Vec::new(), start),
        };
        let from = m.first_after(resume).max(first);
        Ok(Plan {
            recovery,
            history: from..events,
            live_after: Some(resume),
            listen_delete: req.listen_delete,
        })
    }

    /// The recovery and history items, in sending order.
    pub fn items(&self) -> impl Iterator<Item = Item> + '_ {
        self.recovery
            .iter()
            .map(|&j| Item::Recovery(j))
            .chain(self.history.clone().map(Item::History))
    }
}

/// The history events whose object a recovery from `start_ms` to
/// `recover_ms` (both inclusive) sends: for every object touched in that
/// window, its last event there, unless that event deletes it; in order.
///
/// Recovery reads the database, not the stream, so retention does not apply.
pub fn recovery_set(m: &Model, start_ms: u64, recover_ms: u64) -> Vec<u64> {
    let lo = m.first_at_ms(start_ms);
    let hi = m.first_at_ms(recover_ms.saturating_add(1));
    let mut last: HashMap<u64, (u64, bool)> = HashMap::new();
    for j in lo..hi {
        let ev = m.event(j);
        last.insert(ev.obj.key, (j, ev.kind == Kind::Delete));
    }
    let mut out: Vec<u64> = last
        .into_values()
        .filter(|(_, deleted)| !deleted)
        .map(|(j, _)| j)
        .collect();
    out.sort_unstable();
    out
}

/// Renders `item` into `buf` (cleared first). Returns `None` when the client
/// does not get it (a delete with `listen_delete` off).
pub fn render(
    m: &Model,
    shape: &Shape,
    item: Item,
    listen_delete: bool,
    buf: &mut Vec<u8>,
) -> Option<Msg> {
    buf.clear();
    let (ev, recovery) = match item {
        Item::Recovery(j) => (m.event(j), true),
        Item::History(i) => (m.event(i), false),
        Item::Live(i, id) => (m.live_event(i, id), false),
    };
    if recovery {
        m.write_recovery_payload(buf, &ev);
        return Some(Msg {
            id: EventId::new(ev.id.ms, 0),
            name: "create",
            json: true,
        });
    }
    // The server filters on the event as stored, before anything breaks it.
    if ev.kind == Kind::Delete && !listen_delete {
        return None;
    }
    let mut msg = Msg {
        id: ev.id,
        name: ev.kind.sse_name(),
        json: true,
    };
    match shape.malformed(ev.index) {
        None => m.write_payload(buf, &ev),
        Some(Malformed::InvalidJson) => {
            m.write_payload(buf, &ev);
            let mut cut = buf.len() / 2;
            while std::str::from_utf8(&buf[..cut]).is_err() {
                cut -= 1;
            }
            buf.truncate(cut);
            msg.json = false;
        }
        Some(Malformed::NoDataKey) => {
            buf.extend_from_slice(b"{\"version\":\"4\",\"type\":\"");
            buf.extend_from_slice(msg.name.as_bytes());
            buf.extend_from_slice(
                b"\",\"scope\":\"external\",\"message\":\"event without data\",\"origin\":{},\"event_id\":\"",
            );
            ev.id.write(buf);
            buf.extend_from_slice(b"\"}");
        }
        Some(Malformed::InvalidUtf8) => {
            m.write_payload(buf, &ev);
            let marker = b"\"message\":\"";
            let at = buf
                .windows(marker.len())
                .position(|w| w == marker)
                .map_or(buf.len() / 2, |p| p + marker.len());
            buf.splice(at..at, [0xff, 0xfe, 0xc3, 0x28]);
            msg.json = false;
        }
        Some(Malformed::UnknownEventName) => {
            m.write_payload(buf, &ev);
            msg.name = "weird";
        }
    }
    Some(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Params;

    fn model(events: u64) -> Model {
        Model::new(Params {
            events,
            group_ratio: 0.3,
            ..Params::default()
        })
    }

    fn ids(m: &Model, shape: &Shape, plan: &Plan) -> Vec<(EventId, &'static str)> {
        let mut buf = Vec::new();
        plan.items()
            .filter_map(|it| render(m, shape, it, plan.listen_delete, &mut buf))
            .map(|msg| (msg.id, msg.name))
            .collect()
    }

    fn req(start: Option<&str>, recover: Option<&str>) -> Request {
        Request {
            start: start.and_then(crate::id::parse_start),
            recover_ms: recover.and_then(crate::id::parse_date),
            listen_delete: true,
        }
    }

    #[test]
    fn start_zero_sends_the_whole_retained_history() {
        let m = model(400);
        let shape = Shape::default();
        let plan = Plan::new(&m, &shape, &req(Some("0-0"), None)).unwrap();
        assert_eq!(plan.history, 0..400);
        assert!(plan.recovery.is_empty());
        let trimmed = Shape {
            retention_first: 150,
            ..Shape::default()
        };
        let plan = Plan::new(&m, &trimmed, &req(Some("0-0"), None)).unwrap();
        assert_eq!(plan.history, 150..400);
        // A position inside the trimmed part silently starts at the first kept.
        let inside = m.id(20).to_string();
        let plan = Plan::new(&m, &trimmed, &req(Some(&inside), None)).unwrap();
        assert_eq!(plan.history.start, 150);
    }

    #[test]
    fn no_start_is_live_only() {
        let m = model(100);
        let plan = Plan::new(&m, &Shape::default(), &req(None, None)).unwrap();
        assert!(plan.items().next().is_none());
        assert_eq!(plan.live_after, None);
        assert_eq!(
            Plan::new(
                &m,
                &Shape::default(),
                &req(None, Some("2030-01-01T00:00:00Z"))
            ),
            Err(PlanError::RecoverWithoutStart)
        );
    }

    #[test]
    fn resume_after_an_id_is_strictly_after_even_inside_a_group() {
        let m = model(3000);
        let shape = Shape::default();
        let all = ids(
            &m,
            &shape,
            &Plan::new(&m, &shape, &req(Some("0-0"), None)).unwrap(),
        );
        for cut in [0usize, 1, 2, 10, 1234, 2999] {
            let after = all[cut].0;
            let plan = Plan::new(&m, &shape, &req(Some(&after.to_string()), None)).unwrap();
            let got = ids(&m, &shape, &plan);
            let want: Vec<_> = all.iter().filter(|(id, _)| *id > after).cloned().collect();
            assert_eq!(got, want, "after {after}");
        }
    }

    #[test]
    fn an_iso_start_sends_ids_after_its_millisecond_dash_zero() {
        let m = model(3000);
        let shape = Shape::default();
        let target = m.id(1500);
        let date = crate::iso::iso(target.ms);
        let plan = Plan::new(&m, &shape, &req(Some(&date), None)).unwrap();
        let got = ids(&m, &shape, &plan);
        assert!(got.iter().all(|(id, _)| *id > EventId::new(target.ms, 0)));
        let first = got[0].0;
        assert!(first.ms > target.ms || first.seq > 0);
        assert_eq!(
            plan.history.start,
            m.first_after(EventId::new(target.ms, 0))
        );
    }

    #[test]
    fn listen_delete_false_drops_only_deletes() {
        let m = model(2000);
        let shape = Shape {
            malformed_every: Some(7),
            ..Shape::default()
        };
        let mut keep = req(Some("0-0"), None);
        let with = ids(&m, &shape, &Plan::new(&m, &shape, &keep).unwrap());
        keep.listen_delete = false;
        let without = ids(&m, &shape, &Plan::new(&m, &shape, &keep).unwrap());
        let deletes = (0..2000).filter(|&i| m.kind(i) == Kind::Delete).count();
        assert!(deletes > 100);
        assert_eq!(with.len() - without.len(), deletes);
        assert!(without.iter().all(|(_, name)| *name != "delete"));
    }

    /// The rules, restated the slow way.
    fn recovery_by_brute_force(m: &Model, start_ms: u64, recover_ms: u64) -> Vec<u64> {
        let mut state: std::collections::BTreeMap<u64, Option<u64>> = Default::default();
        for j in 0..m.params().events {
            let ev = m.event(j);
            if ev.id.ms < start_ms || ev.id.ms > recover_ms {
                continue;
            }
            let alive = ev.kind != Kind::Delete;
            state.insert(ev.obj.key, alive.then_some(j));
        }
        let mut v: Vec<u64> = state.into_values().flatten().collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn recovery_sends_each_living_object_once_then_resumes_after_the_date() {
        let m = model(3000);
        let shape = Shape::default();
        let start = m.id(500);
        let recover_ms = m.id(2200).ms;
        let r = req(Some(&start.to_string()), Some(&crate::iso::iso(recover_ms)));
        let plan = Plan::new(&m, &shape, &r).unwrap();
        assert_eq!(
            plan.recovery,
            recovery_by_brute_force(&m, start.ms, recover_ms)
        );
        assert!(!plan.recovery.is_empty());
        // Inclusive at millisecond precision: an event at the start's ms counts,
        // even one sorting before the start id itself.
        assert_eq!(plan.recovery, recovery_set(&m, start.ms, recover_ms));
        assert_eq!(
            plan.history.start,
            m.first_after(EventId::new(recover_ms, 0))
        );
        assert_eq!(plan.live_after, Some(EventId::new(recover_ms, 0)));
        let mut buf = Vec::new();
        let mut last = EventId::ZERO;
        let mut seen = std::collections::HashSet::new();
        for &j in &plan.recovery {
            let msg = render(&m, &shape, Item::Recovery(j), true, &mut buf).unwrap();
            assert_eq!(msg.name, "create");
            assert_eq!(msg.id, EventId::new(m.id(j).ms, 0));
            assert!(msg.id >= last);
            last = msg.id;
            let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
            assert_eq!(v["origin"]["referer"], "init-create");
            assert!(v.get("type").is_none() && v.get("context").is_none());
            assert!(seen.insert(v["data"]["id"].as_str().unwrap().to_string()));
        }
    }

    #[test]
    fn recovery_not_after_the_start_is_ignored() {
        let m = model(1000);
        let start = m.id(600);
        let r = req(Some(&start.to_string()), Some(&crate::iso::iso(start.ms)));
        let plan = Plan::new(&m, &Shape::default(), &r).unwrap();
        assert!(plan.recovery.is_empty());
        assert_eq!(plan.history.start, m.first_after(start));
    }

    #[test]
    fn malformed_events_cycle_through_every_kind() {
        let m = model(100);
        let shape = Shape {
            malformed_every: Some(5),
            ..Shape::default()
        };
        let mut buf = Vec::new();
        let mut kinds = Vec::new();
        for i in 0..100 {
            let msg = render(&m, &shape, Item::History(i), true, &mut buf).unwrap();
            let parsed: Option<serde_json::Value> = std::str::from_utf8(&buf)
                .ok()
                .and_then(|s| serde_json::from_str(s).ok());
            match shape.malformed(i) {
                None => {
                    assert!(msg.json && parsed.is_some());
                    assert_ne!(msg.name, "weird");
                }
                Some(k) => {
                    kinds.push(k);
                    match k {
                        Malformed::InvalidJson => assert!(!msg.json && parsed.is_none()),
                        Malformed::InvalidUtf8 => {
                            assert!(!msg.json && std::str::from_utf8(&buf).is_err())
                        }
                        Malformed::NoDataKey => {
                            assert!(parsed.unwrap().get("data").is_none())
                        }
                        Malformed::UnknownEventName => {
                            assert_eq!(msg.name, "weird");
                            assert!(parsed.is_some());
                        }
                    }
                }
            }
            assert!(!buf.contains(&b'\n'));
        }
        assert_eq!(kinds.len(), 20);
        assert_eq!(
            &kinds[..4],
            &[
                Malformed::InvalidJson,
                Malformed::NoDataKey,
                Malformed::InvalidUtf8,
                Malformed::UnknownEventName
            ]
        );
    }
}
