//! The commit protocol against an in-memory destination: every crash point,
//! lost states, restored old copies and resets, in many seeded random
//! histories, with an importer that moves files to its done location as it
//! reads them. The invariant: the numbers the importer sees are 1, 2, 3, …
//! in key order, each number's content is stored once, and no event is
//! skipped.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::core::{self, ResetRequest};
use super::*;
use crate::batch::{Batcher, Item};
use crate::config::BatchLimits;
use crate::dest::memory::{CrashSwitch, Memory, MemoryState};
use crate::dest::naming::file_number;
use crate::marker::Marker;

/// A small deterministic generator (xorshift64*): the seed names the case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The stream: groups of 1-3 events sharing an id.
fn stream(rng: &mut Rng, groups: u64) -> Vec<(EventId, Vec<u8>)> {
    let mut out = Vec::new();
    for g in 1..=groups {
        let id = EventId::at_ms(g * 10);
        for k in 0..1 + rng.below(3) {
            out.push((id, format!("{{\"id\":\"{id}\",\"k\":{k}}}\n").into_bytes()));
        }
    }
    out
}

/// The importer: reads file count + 1 from the folder, moves it to done.
#[derive(Default)]
struct Importer {
    count: u64,
    read: Vec<Vec<u8>>,
}

impl Importer {
    fn run(&mut self, files: &Memory, done: &Memory) -> Result<(), String> {
        let keys: Vec<String> = files
            .objects
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with("f/"))
            .cloned()
            .collect();
        for key in keys {
            let n = file_number(&key).ok_or(format!("`{key}` has no number"))?;
            if n <= self.count {
                return Err(format!(
                    "the importer, at {}, is given `{key}` (number {n} again)",
                    self.count
                ));
            }
            if n > self.count + 1 {
                return Ok(()); // waits for the missing number
            }
            let (body, meta) = files.remove(&key).unwrap();
            done.insert(&key, body.clone(), meta);
            self.read.push(body);
            self.count = n;
        }
        Ok(())
    }
}

struct World {
    crash: CrashSwitch,
    files: Memory,
    dead: Memory,
    done: Memory,
    state: MemoryState,
    copies: Vec<State>,
    importer: Importer,
    events: Vec<(EventId, Vec<u8>)>,
    log: Vec<String>,
}

impl World {
    fn new(rng: &mut Rng) -> World {
        let crash = CrashSwitch::default();
        let groups = 5 + rng.below(25);
        World {
            files: Memory::new("files", crash.clone()),
            dead: Memory::new("dead", crash.clone()),
            done: Memory::new("done", crash.clone()),
            state: MemoryState {
                saved: Default::default(),
                crash: crash.clone(),
            },
            crash,
            copies: Vec::new(),
            importer: Importer::default(),
            events: stream(rng, groups),
            log: Vec::new(),
        }
    }

    fn committer(&self) -> Committer {
        let fresh = State {
            stream_id: Some("live".into()),
            export_id: Some(crate::clock::unique_name("export")),
            ..State::default()
        };
        let mut c = Committer::new(
            Box::new(self.state.clone()),
            self.state.saved.lock().unwrap().clone(),
            fresh,
            "f".into(),
            Destinations {
                files: Box::new(self.files.clone()),
                dead: Box::new(self.dead.clone()),
                done: Some(Box::new(self.done.clone())),
            },
            Arc::new(AtomicBool::new(false)),
        );
        c.settle_grace = Duration::ZERO;
        c
    }

    /// One run: crashes at write `crash_at` (if any); `Ok(true)` once the
    /// whole stream is stored.
    fn run(&mut self, rng: &mut Rng, crash_at: Option<u64>) -> Result<bool, String> {
        {
            let mut c = self.crash.lock().unwrap();
            c.ticks = 0;
            c.at = crash_at;
            c.after_store = rng.chance(50);
            c.dead = false;
        }
        let dead = || self.crash.lock().unwrap().dead;
        let mut c = self.committer();
        let cut = match c.start() {
            Ok(cut) => cut,
            Err(_) if dead() => return Ok(false),
            Err(e) => return Err(format!("start refused: {e:#}")),
        };
        let after = c.state().cursor().unwrap();
        self.log.push(format!(
            "run from {after:?} next file {} cut {cut:?} crash {crash_at:?}",
            c.state().file_count + 1
        ));
        let mut batcher = Batcher::new(BatchLimits {
            max_age: Duration::from_secs(3600),
            max_events: 1 + rng.below(5) as usize,
            max_bytes: 1 << 20,
        });
        if let Some(cut) = cut {
            batcher.cut_after(cut);
        }
        let now = Instant::now();
        let todo: Vec<(EventId, Vec<u8>)> = self
            .events
            .iter()
            .filter(|(id, _)| after.is_none_or(|a| *id > a))
            .cloned()
            .collect();
        let mut batches = Vec::new();
        let mut prev = None;
        for (id, line) in todo {
            if prev.is_some_and(|p| p != id) && rng.chance(30) {
                batches.extend(batcher.push(
                    Item::Mark {
                        id: EventId {
                            ms: id.ms - 5,
                            seq: 0,
                        },
                    },
                    now,
                ));
            }
            prev = Some(id);
            batches.extend(batcher.push(Item::Line { id, bytes: line }, now));
        }
        batches.extend(batcher.finish());
        for b in batches {
            match c.store(&b) {
                Ok(_) => {}
                Err(_) if dead() => return Ok(false),
                Err(e) => return Err(format!("store failed: {e:#}")),
            }
            if let Some(s) = self.state.saved.lock().unwrap().clone() {
                self.copies.push(s);
            }
            if rng.chance(40) {
                self.importer.run(&self.files, &self.done)?;
            }
        }
        Ok(true)
    }

    /// Between runs: the state is kept, lost, restored from an old copy,
    /// or reset to an earlier position (the numbering kept).
    fn disturb(&mut self, rng: &mut Rng) -> Result<(), String> {
        match rng.below(100) {
            0..=54 => {}
            55..=69 => {
                self.log.push("state lost".into());
                *self.state.saved.lock().unwrap() = None;
            }
            70..=84 if !self.copies.is_empty() => {
                let i = rng.below(self.copies.len() as u64) as usize;
                self.log.push(format!("old copy {i} restored"));
                *self.state.saved.lock().unwrap() = Some(self.copies[i].clone());
            }
            _ => {
                let old = self.state.saved.lock().unwrap().clone();
                let back = old
                    .as_ref()
                    .and_then(|s| s.cursor().unwrap())
                    .filter(|_| rng.chance(70))
                    .map(|c| EventId::at_ms(c.ms.saturating_sub(10 * rng.below(4))));
                let marker = self
                    .files
                    .objects
                    .lock()
                    .unwrap()
                    .get(&marker_key("f"))
                    .map(|(b, _)| Marker::from_body(b).unwrap());
                let stored = [&self.files, &self.done]
                    .iter()
                    .flat_map(|m| {
                        m.objects
                            .lock()
                            .unwrap()
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                    })
                    .filter(|k| k.starts_with("f/"))
                    .filter_map(|k| file_number(&k))
                    .max()
                    .unwrap_or(0);
                let req = ResetRequest {
                    start_from: back,
                    stream_id: Some("live".into()),
                    new_export_id: crate::clock::unique_name("export"),
                    ..ResetRequest::default()
                };
                // Stamps are checked by the run's reconcile; none here.
                let new = core::reset(old.as_ref(), marker.as_ref(), stored, 0, &req)?;
                self.log.push(format!("reset to {back:?}"));
                *self.state.saved.lock().unwrap() = Some(new);
            }
        }
        Ok(())
    }

    fn check(&mut self) -> Result<(), String> {
        self.importer.run(&self.files, &self.done)?;
        let left: Vec<String> = self
            .files
            .objects
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with("f/"))
            .cloned()
            .collect();
        if !left.is_empty() {
            return Err(format!(
                "the importer is stuck before {left:?} at {}",
                self.importer.count
            ));
        }
        let keys: Vec<String> = self.done.objects.lock().unwrap().keys().cloned().collect();
        let numbers: Vec<u64> = keys.iter().filter_map(|k| file_number(k)).collect();
        let want: Vec<u64> = (1..=keys.len() as u64).collect();
        if numbers != want {
            return Err(format!("numbers in key order: {numbers:?}"));
        }
        for (key, bodies) in self.files.history.lock().unwrap().iter() {
            if key.starts_with("f/") && bodies.windows(2).any(|w| w[0] != w[1]) {
                return Err(format!("`{key}` was stored with two different contents"));
            }
        }
        let lines: BTreeSet<Vec<u8>> = self
            .importer
            .read
            .iter()
            .flat_map(|b| b.split_inclusive(|c| *c == b'\n').map(<[u8]>::to_vec))
            .collect();
        for (id, line) in &self.events {
            if !lines.contains(line) {
                return Err(format!(
                    "event {id} `{}` was skipped",
                    String::from_utf8_lossy(line).trim()
                ));
            }
        }
        Ok(())
    }
}

fn one_case(seed: u64) -> Result<(), String> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut w = World::new(&mut rng);
    let runs = 1 + rng.below(6);
    for _ in 0..runs {
        let crash_at = Some(1 + rng.below(3 + 3 * w.events.len() as u64));
        w.run(&mut rng, crash_at)?;
        w.disturb(&mut rng)?;
    }
    // The last run is not disturbed: it goes to the end of the stream.
    let mut finished = false;
    for _ in 0..3 {
        if w.run(&mut rng, None)? {
            finished = true;
            break;
        }
    }
    if !finished {
        return Err("the last run did not finish".into());
    }
    w.check()
        .map_err(|e| format!("{e}\nhistory:\n  {}", w.log.join("\n  ")))
}

#[test]
fn crashes_lost_states_old_copies_and_resets_never_wedge_the_importer() {
    let cases: u64 = std::env::var("COMMIT_PROPERTY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    for seed in 0..cases {
        if let Err(e) = one_case(seed) {
            panic!("seed {seed}: {e}");
        }
    }
}

#[test]
fn a_crash_after_the_upload_commits_the_file_at_the_next_start() {
    let mut rng = Rng(7);
    let mut w = World::new(&mut rng);
    // Writes: start state save (1); file 1: pending (2), put (3).
    {
        let mut c = w.crash.lock().unwrap();
        c.at = Some(3);
        c.after_store = true;
    }
    let mut c = w.committer();
    c.start().unwrap();
    let batch = Batch {
        body: b"{\"id\":\"10-0\"}\n".to_vec(),
        events: 1,
        first_id: Some(EventId::at_ms(10)),
        last_id: Some(EventId::at_ms(10)),
        cursor: Some(EventId::at_ms(10)),
        ..Batch::default()
    };
    assert!(c.store(&batch).is_err());
    let saved = w.state.saved.lock().unwrap().clone().unwrap();
    assert_eq!(saved.pending.as_ref().map(|p| p.file_number), Some(1));
    w.crash.lock().unwrap().dead = false;
    w.crash.lock().unwrap().at = None;
    let mut c = w.committer();
    assert_eq!(c.start().unwrap(), None);
    assert_eq!(c.state().file_count, 1);
    assert_eq!(c.state().cursor().unwrap(), Some(EventId::at_ms(10)));
    let m = Marker::from_body(&w.files.get(&marker_key("f")).unwrap()).unwrap();
    assert_eq!((m.next_file, m.cursor.as_deref()), (2, Some("10-0")));
    let _ = &mut rng;
}
