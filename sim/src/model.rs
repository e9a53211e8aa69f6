//! The simulated platform: a history of events, each a pure function of
//! `(seed, index)`, and the JSON payload of each, as OpenCTI sends it.
//!
//! Ids. Event `i` belongs to a group led by `leader(i)`: it joins the previous
//! event's group with probability `group_ratio` (at most 4 events a group).
//! A group's id is `<base_ms + 2*leader>-0`; about 3 % of groups take
//! `<base_ms + 2*(leader-1)>-1` instead, so some milliseconds carry two
//! sequence numbers. Ids never decrease with `i` and every event of a group
//! shares its id, the way OpenCTI sends an event's dependencies.
//!
//! Growth. Event `i` does not depend on the history length, except that the
//! last event of a history is never a dependency. Groups never straddle a
//! multiple of 10, so a history of `10*k` events is an exact prefix of every
//! longer one: restarting with more events appends events with greater ids,
//! like a stream that grew.
//!
//! Events. Every member of a group but the last is a dependency (SSE `create`
//! with the minimal `init-dependencies` payload); other events are about 60 %
//! create, 25 % update, 10 % delete, 5 % merge, over a pool of objects that
//! grows by one every 3 events (so about `events/3` in all) and whose
//! attributes (type, ids, name, markings, labels, files) are a pure function
//! of the object number.
//!
//! This module renders payload bytes only; which events a client gets (start
//! position, recovery, filters, malformed events) is `plan.rs`'s business.

use crate::files;
use crate::hash::{h, h2, permute62, unit, unpermute62, M62};
use crate::id::EventId;
use crate::jsonw::{self, raw};

/// What the generated history looks like.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// Seed of every random choice.
    pub seed: u64,
    /// Number of data events in the history.
    pub events: u64,
    /// Milliseconds of the first event id.
    pub base_ms: u64,
    /// Share of objects (so of create/update events) that carry files, 0..=1.
    pub files_ratio: f64,
    /// Target mean size of a payload, bytes.
    pub avg_size: u64,
    /// Share of events that join the previous event's dependency group, 0..=1.
    pub group_ratio: f64,
    /// Every K-th object with files (by a hash of its first file's key) has
    /// that file served with `large_file_bytes` bytes.
    pub large_file_every: Option<u64>,
    /// Size of the large files, bytes.
    pub large_file_bytes: u64,
    /// Objects with files also list entries whose uri a client must never
    /// request as such (see [`crate::files::HOSTILE_URIS`]).
    pub hostile_uris: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            seed: 1,
            events: 1000,
            base_ms: 1_700_000_000_000,
            files_ratio: 0.05,
            avg_size: 1500,
            group_ratio: 0.1,
            large_file_every: None,
            large_file_bytes: 100 << 20,
            hostile_uris: false,
        }
    }
}

/// A STIX type the simulator produces.
#[derive(Debug, PartialEq, Eq)]
pub struct Type {
    /// STIX `type`.
    pub stix: &'static str,
    /// OpenCTI entity type (extension `type`, file keys, messages).
    pub entity: &'static str,
    weight: u64,
}

const RELATIONSHIP: usize = 7;
const IPV4: usize = 5;

static TYPES: [Type; 8] = [
    Type {
        stix: "indicator",
        entity: "Indicator",
        weight: 14,
    },
    Type {
        stix: "malware",
        entity: "Malware",
        weight: 12,
    },
    Type {
        stix: "threat-actor",
        entity: "Threat-Actor-Group",
        weight: 10,
    },
    Type {
        stix: "report",
        entity: "Report",
        weight: 8,
    },
    Type {
        stix: "identity",
        entity: "Organization",
        weight: 12,
    },
    Type {
        stix: "ipv4-addr",
        entity: "IPv4-Addr",
        weight: 16,
    },
    Type {
        stix: "vulnerability",
        entity: "Vulnerability",
        weight: 12,
    },
    Type {
        stix: "relationship",
        entity: "relationship",
        weight: 16,
    },
];

/// Standard ids of the TLP markings (TLP:CLEAR, GREEN, AMBER, AMBER+STRICT, RED).
pub const TLP: [&str; 5] = [
    "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9",
    "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da",
    "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82",
    "marking-definition--826578e1-40ad-459f-bc73-ede076f81f37",
    "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed",
];
/// Labels objects carry.
pub const LABELS: [&str; 8] = [
    "osint",
    "phishing",
    "ransomware",
    "c2",
    "loader",
    "espionage",
    "crimeware",
    "tlp-check",
];
const AUTHORS: [&str; 3] = [
    "identity--e2a8d0c4-6a2b-4a59-8b8e-2f3b9c1d4e5f",
    "identity--c017f212-546b-4f21-999e-a6c3f9ef8d7f",
    "identity--7b82b010-b1c0-4dae-981f-7756374a17df",
];
const REL_TYPES: [&str; 6] = [
    "uses",
    "indicates",
    "targets",
    "related-to",
    "attributed-to",
    "delivers",
];
const WORDS: [&str; 16] = [
    "Command",
    "Lure",
    "Phishing",
    "Beacon",
    "Sandbox",
    "Privilege",
    "Obfuscation",
    "Affiliate",
    "Telecom",
    "Finance",
    "Exfiltration",
    "Persistence",
    "Credential",
    "Sector",
    "Infrastructure",
    "Chain",
];
/// Name suffixes that exercise JSON escaping and multi-byte UTF-8.
const ODD_SUFFIXES: [&str; 5] = [
    " Café crème brûlée",
    " Ελληνικά κείμενα",
    " emoji 😀🔥🛰️",
    " \"Night Owl\"",
    " back\\slash",
];
const ADMIN: &str = "88ec0c6a-13ce-5e39-b486-354fe4a7084f";
/// The OpenCTI STIX extension that carries `files`.
pub const EXT_OCTI: &str = "extension-definition--ea279b3e-5c71-4632-ac08-831c66a786ba";
const EXT_SCO: &str = "extension-definition--f93e2c80-4231-4f9a-af8b-95c9bd566a82";
const ORIGIN: &str = r#"{"socket":"query","ip":"::ffff:127.0.0.1","user_id":"88ec0c6a-13ce-5e39-b486-354fe4a7084f","group_ids":[],"organization_ids":[],"user_metadata":{},"referer":"http://localhost:4000/dashboard"}"#;
const FILLER: &str = "Observed infrastructure overlaps with earlier campaigns; the loader beacons to rotating domains over HTTPS and drops a second stage after a sandbox check. Analysts linked the credential phishing lure to the same affiliate through reused certificates, registrant e-mail patterns and identical build paths. Telemetry from sector partners shows lateral movement with remote services, scheduled tasks for persistence and staged exfiltration through cloud storage. Indicators were confirmed by two independent sources and remain active at the time of writing. ";

const DAY_MS: u64 = 86_400_000;
const MAX_GROUP: u64 = 4;
/// Groups never cross a multiple of this index (see "Growth" above).
const GROUP_BLOCK: u64 = 10;
/// Objects that exist before the first event.
const POOL_MIN: u64 = 16;

const T_GROUP: u64 = 0x6d6f_0001;
const T_BUMP: u64 = 0x6d6f_0002;
const T_KIND: u64 = 0x6d6f_0003;
const T_OBJ: u64 = 0x6d6f_0004;
const T_TYPE: u64 = 0x6d6f_0005;
const T_STD_HI: u64 = 0x6d6f_0006;
const T_STD_LO: u64 = 0x6d6f_0007;
const T_IID_HI: u64 = 0x6d6f_0008;
const T_CREATED: u64 = 0x6d6f_0009;
const T_FILES: u64 = 0x6d6f_000a;
const T_NAME: u64 = 0x6d6f_000b;
const T_MARK: u64 = 0x6d6f_000c;
const T_LABEL: u64 = 0x6d6f_000d;
const T_AUTHOR: u64 = 0x6d6f_000e;
const T_CONF: u64 = 0x6d6f_000f;
const T_PAD: u64 = 0x6d6f_0010;
const T_PAD_LEN: u64 = 0x6d6f_0011;
const T_UPD: u64 = 0x6d6f_0012;
const T_PREV: u64 = 0x6d6f_0013;
const T_SRC: u64 = 0x6d6f_0014;
const T_NSRC: u64 = 0x6d6f_0015;
const T_REL: u64 = 0x6d6f_0016;
const T_REF: u64 = 0x6d6f_0017;
const T_SYN: u64 = 0x6d6f_0018;
const T_EXTREF: u64 = 0x6d6f_0019;
const T_DESC: u64 = 0x6d6f_001a;

/// Events rendered without padding to measure the unpadded mean size.
const SIZE_SAMPLE: u64 = 2048;
/// Share of events padded to 4..19 KB (when any padding is asked for).
const TAIL_SHARE: f64 = 0.002;
/// Mean padding of those, bytes.
const TAIL_MEAN: f64 = 11_500.0;

/// What happens to an object in one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Create,
    Update,
    Delete,
    Merge,
    /// A dependency sent before the group's main event (SSE `create`,
    /// minimal payload with `origin.referer = "init-dependencies"`).
    Dependency,
}

impl Kind {
    /// The SSE event name.
    pub fn sse_name(self) -> &'static str {
        match self {
            Kind::Create | Kind::Dependency => "create",
            Kind::Update => "update",
            Kind::Delete => "delete",
            Kind::Merge => "merge",
        }
    }
}

/// One object of the platform (a pool object, or a merged-away source).
#[derive(Debug, Clone, Copy)]
pub struct Obj {
    /// Hash key of the attributes: the pool number, or a synthetic key.
    pub key: u64,
    pub ty: &'static Type,
    /// Standard id uuid bits.
    pub std: (u64, u64),
    /// Internal id uuid bits (file keys use it).
    pub iid: (u64, u64),
    pub created_ms: u64,
    /// Carries attached files.
    pub files: bool,
}

/// One event of the history (or a live event).
#[derive(Debug, Clone, Copy)]
pub struct Event {
    pub index: u64,
    pub id: EventId,
    pub kind: Kind,
    pub obj: Obj,
}

enum Update {
    StandardId,
    Confidence,
    Label,
}

/// The generator; cheap to share (`Sync`, no interior state).
#[derive(Debug, Clone)]
pub struct Model {
    p: Params,
    weight_total: u64,
    tail_p: f64,
    exp_mean: f64,
}

fn push_num(s: &mut String, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    s.push_str(std::str::from_utf8(&buf[i..]).expect("ascii digits"));
}

fn v4(hi: u64) -> u64 {
    (hi & !0xf000) | 0x4000
}

fn variant(lo: u64) -> u64 {
    (lo & M62) | (0b10 << 62)
}

impl Model {
    pub fn new(p: Params) -> Self {
        let mut m = Model {
            weight_total: TYPES.iter().map(|t| t.weight).sum(),
            tail_p: 0.0,
            exp_mean: 0.0,
            p,
        };
        // Padding makes up the difference between the unpadded mean (measured
        // here, as it moves with the ratios) and the target: exponentially
        // distributed lengths, plus a few very large events so sizes range up
        // to ~20 KB. A target below the unpadded mean gets no padding at all.
        let budget = m.p.avg_size as f64 - m.unpadded_mean();
        if budget > 0.0 {
            m.tail_p = TAIL_SHARE;
            m.exp_mean = ((budget - TAIL_SHARE * TAIL_MEAN) / (1.0 - TAIL_SHARE)).max(0.0);
        }
        m
    }

    /// Mean payload size of a sample of events rendered without padding.
    fn unpadded_mean(&self) -> f64 {
        let mut out = Vec::with_capacity(64 * 1024);
        let mut total = 0usize;
        for i in 0..SIZE_SAMPLE {
            out.clear();
            self.write_payload(&mut out, &self.event_in_endless_history(i));
            total += out.len();
        }
        total as f64 / SIZE_SAMPLE as f64
    }

    pub fn params(&self) -> &Params {
        &self.p
    }

    /// Size of the object pool when history event `i` happens: it grows by
    /// one object every 3 events, so early events mostly create and later
    /// ones often touch existing objects, and event `i` does not depend on
    /// the history length.
    fn pool_at(i: u64) -> u64 {
        POOL_MIN + i / 3
    }

    /// Size of the object pool by the end of the history.
    #[cfg(test)]
    pub fn objects(&self) -> u64 {
        Self::pool_at(self.p.events)
    }

    fn hs(&self, tag: u64, a: u64) -> u64 {
        h(self.p.seed, tag, a)
    }

    // ---- ids ------------------------------------------------------------

    fn joins_prev(&self, i: u64) -> bool {
        !i.is_multiple_of(GROUP_BLOCK) && unit(self.hs(T_GROUP, i)) < self.p.group_ratio
    }

    /// First event of `i`'s group.
    fn leader(&self, i: u64) -> u64 {
        let mut j = i;
        while j > 0 && i - j < MAX_GROUP - 1 && self.joins_prev(j) {
            j -= 1;
        }
        j
    }

    /// The id of history event `i` (ids never decrease with `i`).
    pub fn id(&self, i: u64) -> EventId {
        let l = self.leader(i);
        if l > 0 && self.hs(T_BUMP, l).is_multiple_of(32) {
            EventId::new(self.p.base_ms + 2 * (l - 1), 1)
        } else {
            EventId::new(self.p.base_ms + 2 * l, 0)
        }
    }

    /// First history index whose id is strictly greater than `after`.
    pub fn first_after(&self, after: EventId) -> u64 {
        self.partition(|i| self.id(i) > after)
    }

    /// First history index whose millisecond is at least `ms`.
    pub fn first_at_ms(&self, ms: u64) -> u64 {
        self.partition(|i| self.id(i).ms >= ms)
    }

    /// First index in `0..events` where the monotone `pred` holds (or `events`).
    fn partition(&self, pred: impl Fn(u64) -> bool) -> u64 {
        let (mut lo, mut hi) = (0, self.p.events);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(mid) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        lo
    }

    // ---- events ---------------------------------------------------------

    /// History event `i` (`i < events`). The last event of the history is
    /// never a dependency (its group's main event would be missing).
    pub fn event(&self, i: u64) -> Event {
        if i + 1 == self.p.events {
            return self.make_event(i, self.id(i), self.main_kind(i));
        }
        self.event_in_endless_history(i)
    }

    /// Event `i` of a history that does not end.
    fn event_in_endless_history(&self, i: u64) -> Event {
        let kind = if self.leader(i + 1) == self.leader(i) {
            Kind::Dependency
        } else {
            self.main_kind(i)
        };
        self.make_event(i, self.id(i), kind)
    }

    /// A live event: index `i >= events`, with an id chosen by the server.
    pub fn live_event(&self, i: u64, id: EventId) -> Event {
        self.make_event(i, id, self.main_kind(i))
    }

    /// The kind of history event `i`.
    #[cfg(test)]
    pub fn kind(&self, i: u64) -> Kind {
        self.event(i).kind
    }

    fn main_kind(&self, i: u64) -> Kind {
        let u = unit(self.hs(T_KIND, i));
        if u < 0.60 {
            Kind::Create
        } else if u < 0.85 {
            Kind::Update
        } else if u < 0.95 {
            Kind::Delete
        } else {
            Kind::Merge
        }
    }

    fn make_event(&self, i: u64, id: EventId, kind: Kind) -> Event {
        let obj = self.pool_object(self.hs(T_OBJ, i) % Self::pool_at(i));
        // Relationships are not merged in OpenCTI: such an event is an update.
        let kind = if kind == Kind::Merge && std::ptr::eq(obj.ty, &TYPES[RELATIONSHIP]) {
            Kind::Update
        } else {
            kind
        };
        Event {
            index: i,
            id,
            kind,
            obj,
        }
    }

    // ---- objects --------------------------------------------------------

    fn pick_type(&self, x: u64) -> &'static Type {
        let mut r = x % self.weight_total;
        for t in &TYPES {
            if r < t.weight {
                return t;
            }
            r -= t.weight;
        }
        unreachable!("weights sum to weight_total")
    }

    /// Pool object `k` (any `k`; events use the first `pool_at(i)`).
    pub fn pool_object(&self, k: u64) -> Obj {
        let ty = self.pick_type(self.hs(T_TYPE, k));
        let files = !std::ptr::eq(ty, &TYPES[RELATIONSHIP])
            && unit(self.hs(T_FILES, k)) < self.p.files_ratio;
        Obj {
            key: k,
            ty,
            std: (v4(self.hs(T_STD_HI, k)), variant(self.hs(T_STD_LO, k))),
            iid: (v4(self.hs(T_IID_HI, k)), variant(permute62(self.p.seed, k))),
            created_ms: self
                .p
                .base_ms
                .saturating_sub(self.hs(T_CREATED, k) % (90 * DAY_MS)),
            files,
        }
    }

    /// The pool object whose internal id is `uuid`, if any.
    pub fn object_by_internal_id(&self, uuid: &str) -> Option<Obj> {
        let (hi, lo) = jsonw::parse_uuid(uuid)?;
        if lo >> 62 != 0b10 {
            return None;
        }
        // The high half is a hash of the object number: a forged or foreign
        // uuid matches it only by chance (1 in 2^60).
        let k = unpermute62(self.p.seed, lo & M62);
        let obj = self.pool_object(k);
        (obj.iid == (hi, lo)).then_some(obj)
    }

    /// An object that exists only as a merge source of event `i`.
    fn synthetic(&self, ty: &'static Type, i: u64, n: u64) -> Obj {
        let key = h2(self.p.seed, T_SYN, i, n) | (1 << 63);
        Obj {
            key,
            ty,
            std: (v4(self.hs(T_STD_HI, key)), variant(self.hs(T_STD_LO, key))),
            iid: (v4(self.hs(T_IID_HI, key)), variant(self.hs(T_SRC, key))),
            created_ms: self
                .p
                .base_ms
                .saturating_sub(self.hs(T_CREATED, key) % (90 * DAY_MS)),
            files: false,
        }
    }

    fn is_relationship(obj: &Obj) -> bool {
        std::ptr::eq(obj.ty, &TYPES[RELATIONSHIP])
    }

    fn rel_type(&self, obj: &Obj) -> &'static str {
        REL_TYPES[(self.hs(T_REL, obj.key) % REL_TYPES.len() as u64) as usize]
    }

    /// The display name (`name`, or `value` for an observable).
    pub fn name(&self, obj: &Obj) -> String {
        // Built by hand: `format!` shows in the profile at full speed.
        let x = self.hs(T_NAME, obj.key);
        let mut s = String::with_capacity(48);
        if std::ptr::eq(obj.ty, &TYPES[IPV4]) {
            for (n, part) in [
                1 + x % 223,
                (x >> 8) & 255,
                (x >> 16) & 255,
                1 + ((x >> 24) % 254),
            ]
            .into_iter()
            .enumerate()
            {
                if n > 0 {
                    s.push('.');
                }
                push_num(&mut s, part);
            }
        } else if obj.ty.stix == "vulnerability" {
            s.push_str("CVE-");
            push_num(&mut s, 2015 + (x >> 8) % 10);
            s.push('-');
            push_num(&mut s, 1000 + (x >> 16) % 50_000);
        } else if Self::is_relationship(obj) {
            s.push_str(self.rel_type(obj));
        } else {
            s.push_str(WORDS[(x % 16) as usize]);
            s.push_str(WORDS[((x >> 4) % 16) as usize]);
            if (x >> 8).is_multiple_of(25) {
                s.push_str(ODD_SUFFIXES[((x >> 16) % ODD_SUFFIXES.len() as u64) as usize]);
            }
            s.push('-');
            push_num(&mut s, obj.key % 1000);
        }
        s
    }

    fn write_std_id(&self, out: &mut Vec<u8>, obj: &Obj) {
        raw(out, obj.ty.stix);
        raw(out, "--");
        jsonw::uuid(out, obj.std.0, obj.std.1);
    }

    fn write_markings(&self, out: &mut Vec<u8>, obj: &Obj) {
        out.push(b'[');
        let x = self.hs(T_MARK, obj.key) % 100;
        // 12 % none, then CLEAR 25, GREEN 30, AMBER 18, AMBER+STRICT 8, RED 7.
        let tlp = match x {
            0..=11 => None,
            12..=36 => Some(0),
            37..=66 => Some(1),
            67..=84 => Some(2),
            85..=92 => Some(3),
            _ => Some(4),
        };
        if let Some(t) = tlp {
            out.push(b'"');
            raw(out, TLP[t]);
            out.push(b'"');
        }
        out.push(b']');
    }

    /// Label indexes of `obj` (0 to 3 distinct labels), as a bit set.
    fn label_bits(&self, obj: &Obj) -> u8 {
        let x = self.hs(T_LABEL, obj.key);
        let count = x % 4;
        let mut bits = 0u8;
        let mut r = x >> 2;
        for _ in 0..count {
            bits |= 1 << (r % 8);
            r >>= 3;
        }
        bits
    }

    fn write_labels(&self, out: &mut Vec<u8>, bits: u8, extra: Option<&str>) {
        out.push(b'[');
        let mut first = true;
        for (n, l) in LABELS.iter().enumerate() {
            if bits & (1 << n) != 0 {
                if !first {
                    out.push(b',');
                }
                first = false;
                out.push(b'"');
                raw(out, l);
                out.push(b'"');
            }
        }
        if let Some(l) = extra {
            if !first {
                out.push(b',');
            }
            jsonw::str(out, l);
        }
        out.push(b']');
    }

    fn label_count(bits: u8) -> u64 {
        u64::from(bits.count_ones())
    }

    fn confidence(&self, i: u64, tag: u64) -> u64 {
        5 * (1 + h2(self.p.seed, T_CONF, i, tag) % 20)
    }

    /// Description padding of event `i`, bytes.
    fn pad_len(&self, i: u64) -> usize {
        let u = unit(self.hs(T_PAD, i));
        let len = if u < self.tail_p {
            4000 + self.hs(T_PAD_LEN, i) % 15_000
        } else {
            let v = unit(self.hs(T_PAD_LEN, i));
            (-self.exp_mean * (1.0 - v).ln()).min(18_000.0) as u64
        };
        len as usize
    }

    fn write_description(&self, out: &mut Vec<u8>, key: u64, pad: usize) {
        out.push(b'"');
        let x = self.hs(T_DESC, key);
        raw(out, WORDS[(x % 16) as usize]);
        out.push(b' ');
        raw(out, &WORDS[((x >> 4) % 16) as usize].to_ascii_lowercase());
        out.push(b'.');
        if x.is_multiple_of(30) {
            raw(out, " Ελληνικά κείμενα, été.");
        }
        if pad > 0 {
            out.push(b' ');
            let f = FILLER.as_bytes();
            let mut at = ((x >> 8) % f.len() as u64) as usize;
            let mut left = pad;
            while left > 0 {
                let n = left.min(f.len() - at);
                out.extend_from_slice(&f[at..at + n]);
                left -= n;
                at = 0;
            }
        }
        out.push(b'"');
    }

    fn write_files(&self, out: &mut Vec<u8>, obj: &Obj) {
        raw(out, ",\"files\":[");
        for (n, e) in files::entries(self, obj).iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            let key = files::key(obj, &e.name);
            raw(out, "{\"name\":");
            jsonw::str(out, &e.name);
            if e.inline {
                raw(out, ",\"data\":\"");
                raw(
                    out,
                    &files::base64(&files::inline_content(self.p.seed, &key)),
                );
                raw(out, "\",\"uri\":\"unknown\"");
            } else {
                raw(out, ",\"uri\":");
                jsonw::str(out, &format!("/storage/get/{key}"));
            }
            raw(out, ",\"version\":");
            jsonw::iso(out, obj.created_ms);
            raw(out, ",\"mime_type\":");
            jsonw::str(out, e.mime);
            raw(out, ",\"object_marking_refs\":[]}");
        }
        if self.p.hostile_uris {
            for (name, uri) in files::HOSTILE_URIS {
                raw(out, ",{\"name\":");
                jsonw::str(out, name);
                raw(out, ",\"uri\":");
                jsonw::str(out, uri);
                raw(out, ",\"version\":");
                jsonw::iso(out, obj.created_ms);
                raw(
                    out,
                    ",\"mime_type\":\"application/pdf\",\"object_marking_refs\":[]}",
                );
            }
        }
        out.push(b']');
    }

    // ---- payloads -------------------------------------------------------

    /// Writes the STIX object of `obj` as of `ms`.
    #[allow(clippy::too_many_arguments)]
    fn write_stix(
        &self,
        out: &mut Vec<u8>,
        obj: &Obj,
        ms: u64,
        pad: usize,
        files: bool,
        stix_ids: &[Obj],
        extra_label: Option<&str>,
        confidence: u64,
    ) {
        // Each date appears several times: format it once.
        let (mut created, mut modified) = (Vec::with_capacity(26), Vec::with_capacity(26));
        jsonw::iso(&mut created, obj.created_ms);
        jsonw::iso(&mut modified, ms);
        raw(out, "{\"id\":\"");
        self.write_std_id(out, obj);
        raw(out, "\",\"spec_version\":\"2.1\",\"type\":\"");
        raw(out, obj.ty.stix);
        raw(out, "\",");
        let sco = std::ptr::eq(obj.ty, &TYPES[IPV4]);
        let name = self.name(obj);
        if sco {
            raw(out, "\"value\":");
            jsonw::str(out, &name);
            out.push(b',');
        }
        let rel = Self::is_relationship(obj);
        // What a relationship links, or what a report contains: objects that
        // exist by the time this one does.
        let refs =
            |n| self.pool_object(h2(self.p.seed, T_REF, obj.key, n) % Self::pool_at(obj.key));
        let (src, tgt) = if rel || obj.ty.stix == "report" {
            (refs(0), refs(1))
        } else {
            (*obj, *obj)
        };
        // The OpenCTI extension.
        raw(out, "\"extensions\":{\"");
        raw(out, EXT_OCTI);
        raw(
            out,
            "\":{\"extension_type\":\"property-extension\",\"id\":\"",
        );
        jsonw::uuid(out, obj.iid.0, obj.iid.1);
        raw(out, "\",\"type\":\"");
        raw(
            out,
            if rel {
                self.rel_type(obj)
            } else {
                obj.ty.entity
            },
        );
        raw(out, "\",\"created_at\":");
        out.extend_from_slice(&created);
        raw(out, ",\"updated_at\":");
        out.extend_from_slice(&modified);
        raw(out, ",\"is_inferred\":false,\"creator_ids\":[\"");
        raw(out, ADMIN);
        raw(out, "\"]");
        if rel {
            for (which, o) in [("source", &src), ("target", &tgt)] {
                raw(out, ",\"");
                raw(out, which);
                raw(out, "_ref\":\"");
                jsonw::uuid(out, o.iid.0, o.iid.1);
                raw(out, "\",\"");
                raw(out, which);
                raw(out, "_type\":\"");
                raw(out, o.ty.entity);
                out.push(b'"');
            }
        }
        if !stix_ids.is_empty() {
            raw(out, ",\"stix_ids\":[");
            for (n, s) in stix_ids.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                out.push(b'"');
                self.write_std_id(out, s);
                out.push(b'"');
            }
            out.push(b']');
        }
        if files {
            self.write_files(out, obj);
        }
        out.push(b'}');
        let author = AUTHORS[(self.hs(T_AUTHOR, obj.key) % 3) as usize];
        let labels = self.label_bits(obj);
        if sco {
            raw(out, ",\"");
            raw(out, EXT_SCO);
            raw(
                out,
                "\":{\"extension_type\":\"property-extension\",\"labels\":",
            );
            self.write_labels(out, labels, extra_label);
            raw(out, ",\"score\":");
            jsonw::push_u64(out, confidence);
            raw(out, ",\"created_by_ref\":\"");
            raw(out, author);
            raw(out, "\",\"description\":");
            self.write_description(out, obj.key, pad);
            raw(out, "}},\"object_marking_refs\":");
            self.write_markings(out, obj);
            out.push(b'}');
            return;
        }
        raw(out, "},\"created\":");
        out.extend_from_slice(&created);
        raw(out, ",\"modified\":");
        out.extend_from_slice(&modified);
        if rel {
            raw(out, ",\"relationship_type\":\"");
            raw(out, self.rel_type(obj));
            raw(out, "\",\"source_ref\":\"");
            self.write_std_id(out, &src);
            raw(out, "\",\"target_ref\":\"");
            self.write_std_id(out, &tgt);
            out.push(b'"');
        }
        raw(out, ",\"revoked\":false,\"confidence\":");
        jsonw::push_u64(out, confidence);
        raw(out, ",\"lang\":\"en\",\"labels\":");
        self.write_labels(out, labels, extra_label);
        raw(out, ",\"object_marking_refs\":");
        self.write_markings(out, obj);
        raw(out, ",\"created_by_ref\":\"");
        raw(out, author);
        raw(out, "\",\"external_references\":[");
        let x = self.hs(T_EXTREF, obj.key);
        if x % 10 < 3 {
            raw(
                out,
                "{\"source_name\":\"sim-source\",\"url\":\"https://example.org/ref/",
            );
            jsonw::push_u64(out, x >> 40);
            raw(out, "\",\"external_id\":\"SIM-");
            jsonw::push_u64(out, (x >> 8) % 100_000);
            raw(out, "\"}");
        }
        out.push(b']');
        if !rel {
            raw(out, ",\"name\":");
            jsonw::str(out, &name);
        }
        match obj.ty.stix {
            "indicator" => {
                raw(out, ",\"pattern\":\"[domain-name:value = 'c2-");
                jsonw::push_u64(out, obj.key % 100_000);
                raw(
                    out,
                    ".example.net']\",\"pattern_type\":\"stix\",\"valid_from\":",
                );
                out.extend_from_slice(&created);
            }
            "malware" => raw(
                out,
                ",\"is_family\":false,\"malware_types\":[\"ransomware\"]",
            ),
            "threat-actor" => raw(
                out,
                ",\"threat_actor_types\":[\"crime-syndicate\"],\"aliases\":[]",
            ),
            "report" => {
                raw(out, ",\"report_types\":[\"threat-report\"],\"published\":");
                out.extend_from_slice(&created);
                raw(out, ",\"object_refs\":[\"");
                self.write_std_id(out, &src);
                raw(out, "\"]");
            }
            "identity" => raw(out, ",\"identity_class\":\"organization\""),
            "vulnerability" => raw(out, ",\"x_opencti_cvss_base_severity\":\"MEDIUM\""),
            _ => {}
        }
        raw(out, ",\"description\":");
        self.write_description(out, obj.key, pad);
        out.push(b'}');
    }

    fn update_variant(&self, i: u64) -> Update {
        match self.hs(T_UPD, i) % 10 {
            0 | 1 => Update::StandardId,
            2..=5 => Update::Confidence,
            _ => Update::Label,
        }
    }

    /// The merged-away sources of merge event `ev`.
    fn merge_sources(&self, ev: &Event) -> Vec<Obj> {
        let n = 1 + self.hs(T_NSRC, ev.index) % 2;
        (0..n)
            .map(|s| self.synthetic(ev.obj.ty, ev.index, s))
            .collect()
    }

    /// The previous standard id of `ev`'s object (updates that change it).
    fn previous_id(&self, ev: &Event) -> Obj {
        self.synthetic(ev.obj.ty, ev.index, T_PREV)
    }

    /// The label an update of kind `Label` adds.
    fn added_label(&self, ev: &Event) -> &'static str {
        let bits = self.label_bits(&ev.obj);
        let start = self.hs(T_LABEL, ev.index) % 8;
        (0..8)
            .map(|d| ((start + d) % 8) as usize)
            .find(|&n| bits & (1 << n) == 0)
            .map_or(LABELS[0], |n| LABELS[n])
    }

    /// Writes the `data` object of `ev` (also what recovery sends for it).
    fn write_event_data(&self, out: &mut Vec<u8>, ev: &Event) {
        let pad = self.pad_len(ev.index);
        let files = ev.obj.files && ev.kind != Kind::Delete;
        let conf = self.confidence(ev.index, 0);
        match ev.kind {
            Kind::Update => match self.update_variant(ev.index) {
                Update::StandardId => {
                    let prev = [self.previous_id(ev)];
                    self.write_stix(out, &ev.obj, ev.id.ms, pad, files, &prev, None, conf)
                }
                Update::Confidence => {
                    self.write_stix(out, &ev.obj, ev.id.ms, pad, files, &[], None, conf)
                }
                Update::Label => {
                    let l = self.added_label(ev);
                    self.write_stix(out, &ev.obj, ev.id.ms, pad, files, &[], Some(l), conf)
                }
            },
            Kind::Merge => {
                let sources = self.merge_sources(ev);
                self.write_stix(out, &ev.obj, ev.id.ms, pad, files, &sources, None, conf)
            }
            _ => self.write_stix(out, &ev.obj, ev.id.ms, pad, files, &[], None, conf),
        }
    }

    fn write_message(&self, out: &mut Vec<u8>, ev: &Event) {
        let name = self.name(&ev.obj);
        let entity = if Self::is_relationship(&ev.obj) {
            self.rel_type(&ev.obj)
        } else {
            ev.obj.ty.entity
        };
        let mut msg = String::with_capacity(96);
        let quoted = |msg: &mut String, text: &str| {
            msg.push('`');
            msg.push_str(text);
            msg.push('`');
        };
        match ev.kind {
            Kind::Create | Kind::Dependency | Kind::Delete => {
                msg.push_str(if ev.kind == Kind::Delete {
                    "deletes a "
                } else {
                    "creates a "
                });
                msg.push_str(entity);
                msg.push(' ');
                quoted(&mut msg, &name);
            }
            Kind::Update => match self.update_variant(ev.index) {
                Update::StandardId => {
                    msg.push_str("replaces ");
                    quoted(&mut msg, &name);
                    msg.push_str(" in `Name`");
                }
                Update::Confidence => {
                    msg.push_str("replaces `");
                    push_num(&mut msg, self.confidence(ev.index, 0));
                    msg.push_str("` in `Confidence`");
                }
                Update::Label => {
                    msg.push_str("adds ");
                    quoted(&mut msg, self.added_label(ev));
                    msg.push_str(" in `Label`");
                }
            },
            Kind::Merge => {
                msg.push_str("merges ");
                msg.push_str(entity);
                for (n, src) in self.merge_sources(ev).iter().enumerate() {
                    msg.push_str(if n == 0 { " " } else { ", " });
                    quoted(&mut msg, &self.name(src));
                }
                msg.push_str(" in ");
                quoted(&mut msg, &name);
            }
        }
        jsonw::str(out, &msg);
    }

    fn write_op(&self, out: &mut Vec<u8>, op: &str, path: &str, value: Option<&[u8]>) {
        raw(out, "{\"op\":\"");
        raw(out, op);
        raw(out, "\",\"path\":\"");
        raw(out, path);
        out.push(b'"');
        if let Some(v) = value {
            raw(out, ",\"value\":");
            out.extend_from_slice(v);
        }
        out.push(b'}');
    }

    /// The `/modified` op closing every patch.
    fn write_time_ops(&self, out: &mut Vec<u8>, ms: u64) {
        let mut v = Vec::with_capacity(26);
        jsonw::iso(&mut v, ms);
        self.write_op(out, "replace", "/modified", Some(&v));
    }

    fn std_id_json(&self, obj: &Obj) -> Vec<u8> {
        let mut v = vec![b'"'];
        self.write_std_id(&mut v, obj);
        v.push(b'"');
        v
    }

    /// The ops of update `ev` to `patch`, and their inverses to `reverse`.
    fn write_update_ops(&self, patch: &mut Vec<u8>, reverse: &mut Vec<u8>, ev: &Event) {
        let sco = std::ptr::eq(ev.obj.ty, &TYPES[IPV4]);
        match self.update_variant(ev.index) {
            Update::StandardId => {
                let stix_ids = format!("/extensions/{EXT_OCTI}/stix_ids/0");
                let prev = self.std_id_json(&self.previous_id(ev));
                let cur = self.std_id_json(&ev.obj);
                self.write_op(patch, "replace", "/id", Some(&cur));
                patch.push(b',');
                self.write_op(patch, "add", &stix_ids, Some(&prev));
                self.write_op(reverse, "replace", "/id", Some(&prev));
                reverse.push(b',');
                self.write_op(reverse, "remove", &stix_ids, None);
            }
            Update::Confidence => {
                let path = if sco {
                    format!("/extensions/{EXT_SCO}/score")
                } else {
                    "/confidence".to_string()
                };
                let (cur, old) = (self.confidence(ev.index, 0), self.confidence(ev.index, 1));
                self.write_op(patch, "replace", &path, Some(cur.to_string().as_bytes()));
                self.write_op(reverse, "replace", &path, Some(old.to_string().as_bytes()));
            }
            Update::Label => {
                let n = Self::label_count(self.label_bits(&ev.obj));
                let path = if sco {
                    format!("/extensions/{EXT_SCO}/labels/{n}")
                } else {
                    format!("/labels/{n}")
                };
                let mut label = Vec::new();
                jsonw::str(&mut label, self.added_label(ev));
                self.write_op(patch, "add", &path, Some(&label));
                self.write_op(reverse, "remove", &path, None);
            }
        }
    }

    fn write_context(&self, out: &mut Vec<u8>, ev: &Event) {
        let stix_ids = format!("/extensions/{EXT_OCTI}/stix_ids");
        let prev_ms = ev.obj.created_ms;
        match ev.kind {
            Kind::Create | Kind::Dependency => {}
            Kind::Delete => raw(out, ",\"context\":{\"deletions\":[]}"),
            Kind::Update => {
                let mut reverse = Vec::with_capacity(256);
                raw(out, ",\"context\":{\"patch\":[");
                self.write_update_ops(out, &mut reverse, ev);
                out.push(b',');
                self.write_time_ops(out, ev.id.ms);
                raw(out, "],\"reverse_patch\":[");
                out.extend_from_slice(&reverse);
                out.push(b',');
                self.write_time_ops(out, prev_ms);
                raw(out, "]}");
            }
            Kind::Merge => {
                let sources = self.merge_sources(ev);
                raw(out, ",\"context\":{\"patch\":[");
                for (n, s) in sources.iter().enumerate() {
                    let v = self.std_id_json(s);
                    self.write_op(out, "add", &format!("{stix_ids}/{n}"), Some(&v));
                    out.push(b',');
                }
                self.write_time_ops(out, ev.id.ms);
                raw(out, "],\"reverse_patch\":[");
                for n in (0..sources.len()).rev() {
                    self.write_op(out, "remove", &format!("{stix_ids}/{n}"), None);
                    out.push(b',');
                }
                self.write_time_ops(out, prev_ms);
                raw(out, "],\"sources\":[");
                for (n, s) in sources.iter().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    let conf = self.confidence(s.key, 2);
                    self.write_stix(out, s, s.created_ms, 0, false, &[], None, conf);
                }
                raw(out, "]}");
            }
        }
    }

    /// Appends the payload (the SSE `data:` JSON) of `ev`, one line.
    pub fn write_payload(&self, out: &mut Vec<u8>, ev: &Event) {
        if ev.kind == Kind::Dependency {
            self.write_minimal(out, ev, "init-dependencies");
            return;
        }
        raw(out, "{\"version\":\"4\",\"type\":\"");
        raw(out, ev.kind.sse_name());
        raw(out, "\",\"scope\":\"external\",\"message\":");
        self.write_message(out, ev);
        raw(out, ",\"origin\":");
        raw(out, ORIGIN);
        raw(out, ",\"data\":");
        self.write_event_data(out, ev);
        self.write_context(out, ev);
        raw(out, ",\"event_id\":\"");
        ev.id.write(out);
        raw(out, "\"}");
    }

    /// Appends the recovery payload of `ev`'s object as `ev` left it: the
    /// minimal `init-create` form.
    pub fn write_recovery_payload(&self, out: &mut Vec<u8>, ev: &Event) {
        self.write_minimal(out, ev, "init-create");
    }

    fn write_minimal(&self, out: &mut Vec<u8>, ev: &Event, referer: &str) {
        raw(out, "{\"data\":");
        self.write_event_data(out, ev);
        raw(out, ",\"message\":");
        let create = Event {
            kind: Kind::Create,
            ..*ev
        };
        self.write_message(out, &create);
        raw(out, ",\"origin\":{\"referer\":\"");
        raw(out, referer);
        raw(out, "\"},\"version\":\"4\"}");
    }

    /// The storage keys `ev`'s payload references (not inline entries).
    pub fn file_keys(&self, ev: &Event) -> Vec<String> {
        if !ev.obj.files || ev.kind == Kind::Delete {
            return Vec::new();
        }
        files::entries(self, &ev.obj)
            .iter()
            .filter(|e| !e.inline)
            .map(|e| files::key(&ev.obj, &e.name))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn model(events: u64) -> Model {
        Model::new(Params {
            events,
            ..Params::default()
        })
    }

    fn payload(m: &Model, i: u64) -> Value {
        let mut out = Vec::new();
        m.write_payload(&mut out, &m.event(i));
        assert!(!out.contains(&b'\n'));
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("event {i}: {e}: {}", String::from_utf8_lossy(&out)))
    }

    #[test]
    fn same_seed_gives_the_same_bytes_and_another_seed_does_not() {
        let (a, b) = (model(500), model(500));
        let c = Model::new(Params {
            seed: 2,
            events: 500,
            ..Params::default()
        });
        let render = |m: &Model| {
            let mut out = Vec::new();
            for i in 0..500 {
                m.write_payload(&mut out, &m.event(i));
            }
            out
        };
        assert_eq!(render(&a), render(&b));
        assert_ne!(render(&a), render(&c));
    }

    #[test]
    fn an_event_does_not_depend_on_the_history_length() {
        let (short, long) = (model(100), model(100_000));
        for i in 0..99 {
            let mut a = Vec::new();
            let mut b = Vec::new();
            short.write_payload(&mut a, &short.event(i));
            long.write_payload(&mut b, &long.event(i));
            if short.event(i).kind == long.event(i).kind {
                assert_eq!(a, b, "event {i}");
            }
        }
    }

    #[test]
    fn a_round_history_is_a_prefix_of_every_longer_one() {
        let m = |events| {
            Model::new(Params {
                events,
                group_ratio: 0.5,
                ..Params::default()
            })
        };
        let render = |m: &Model, i| {
            let mut out = Vec::new();
            m.write_payload(&mut out, &m.event(i));
            out
        };
        for (short, long) in [(10, 20), (60, 100), (6000, 10_000)] {
            let (a, b) = (m(short), m(long));
            for i in (0..short).rev().take(30) {
                assert_eq!(render(&a, i), render(&b, i), "{short} vs {long}: event {i}");
                assert_eq!(a.id(i), b.id(i));
            }
            assert!(b.id(short) > b.id(short - 1), "{short} vs {long}");
        }
    }

    #[test]
    fn ids_never_decrease_and_groups_share_ids() {
        let m = Model::new(Params {
            events: 20_000,
            group_ratio: 0.3,
            ..Params::default()
        });
        let mut run = 1;
        let mut max_run = 1;
        let mut shared = 0;
        let mut seq1 = 0;
        for i in 1..20_000 {
            let (prev, cur) = (m.id(i - 1), m.id(i));
            assert!(prev <= cur, "{i}: {prev} > {cur}");
            if cur.seq == 1 {
                seq1 += 1;
            }
            if prev == cur {
                shared += 1;
                run += 1;
                max_run = max_run.max(run);
                assert_eq!(m.event(i - 1).kind, Kind::Dependency, "{i}");
            } else {
                run = 1;
            }
        }
        assert!(max_run <= 4, "{max_run}");
        assert!(max_run >= 3, "{max_run}");
        // joins_prev happens ~30 % of the time; capped groups lose a little.
        assert!((4_500..6_500).contains(&shared), "{shared}");
        assert!(seq1 > 100, "{seq1}");
        // The last event of the history is never a dependency.
        assert_ne!(m.event(19_999).kind, Kind::Dependency);
    }

    #[test]
    fn first_after_is_strictly_after() {
        let m = model(5000);
        for i in [0, 1, 17, 2500, 4999] {
            let id = m.id(i);
            let j = m.first_after(id);
            assert!(j == 5000 || m.id(j) > id);
            assert!(j > i);
            assert!(m.id(j - 1) <= id);
        }
        assert_eq!(m.first_after(EventId::ZERO), 0);
        assert_eq!(m.first_after(EventId::new(u64::MAX, 0)), 5000);
        let ms = m.id(300).ms;
        let j = m.first_at_ms(ms);
        assert_eq!(m.id(j).ms, ms);
        assert!(j == 0 || m.id(j - 1).ms < ms);
    }

    #[test]
    fn payloads_have_the_opencti_shape() {
        let m = Model::new(Params {
            events: 3000,
            files_ratio: 0.3,
            ..Params::default()
        });
        let mut kinds = std::collections::HashMap::new();
        let mut id_ops = 0;
        let mut updates = 0;
        let mut with_files = 0;
        let mut inline = 0;
        for i in 0..3000 {
            let ev = m.event(i);
            *kinds.entry(ev.kind).or_insert(0) += 1;
            let v = payload(&m, i);
            let data = &v["data"];
            assert!(data["id"].as_str().unwrap().contains("--"));
            assert_eq!(data["spec_version"], "2.1");
            let ext = &data["extensions"][EXT_OCTI];
            assert!(ext["id"].is_string() && ext["updated_at"].is_string());
            assert_eq!(ext["updated_at"], crate::iso::iso(ev.id.ms));
            if ev.kind == Kind::Dependency {
                assert_eq!(v["origin"]["referer"], "init-dependencies");
                assert!(v.get("type").is_none() && v.get("context").is_none());
                continue;
            }
            assert_eq!(v["version"], "4");
            assert_eq!(v["type"], ev.kind.sse_name());
            assert_eq!(v["event_id"], ev.id.to_string());
            if let Some(files) = ext.get("files") {
                with_files += 1;
                for f in files.as_array().unwrap() {
                    let uri = f["uri"].as_str().unwrap();
                    if uri == "unknown" {
                        inline += 1;
                        assert!(f["data"].is_string());
                    } else {
                        assert!(uri.starts_with("/storage/get/import/"), "{uri}");
                    }
                }
            }
            match ev.kind {
                Kind::Update => {
                    updates += 1;
                    let rp = v["context"]["reverse_patch"].as_array().unwrap();
                    assert!(v["context"]["patch"].is_array());
                    let ops: Vec<_> = rp.iter().filter(|o| o["path"] == "/id").collect();
                    if let Some(op) = ops.first() {
                        id_ops += 1;
                        assert_eq!(ops.len(), 1);
                        let prev = op["value"].as_str().unwrap();
                        assert_ne!(prev, data["id"].as_str().unwrap());
                        assert_eq!(ext["stix_ids"][0], prev);
                    }
                }
                Kind::Merge => {
                    let n = v["context"]["sources"].as_array().unwrap().len();
                    assert!((1..=2).contains(&n));
                }
                _ => {}
            }
        }
        let share = |k| f64::from(kinds[&k]) / 3000.0;
        assert!((0.45..0.62).contains(&share(Kind::Create)), "{kinds:?}");
        assert!((0.18..0.32).contains(&share(Kind::Update)), "{kinds:?}");
        assert!((0.06..0.13).contains(&share(Kind::Delete)), "{kinds:?}");
        assert!((0.02..0.07).contains(&share(Kind::Merge)), "{kinds:?}");
        assert!((0.06..0.14).contains(&share(Kind::Dependency)), "{kinds:?}");
        let id_share = f64::from(id_ops) / f64::from(updates);
        assert!((0.12..0.28).contains(&id_share), "{id_share}");
        assert!(with_files > 200, "{with_files}");
        assert!(inline > 0);
    }

    #[test]
    fn sizes_average_to_the_target_over_a_wide_range() {
        for avg in [1500u64, 4000] {
            let n = 40_000;
            let m = Model::new(Params {
                events: n,
                avg_size: avg,
                ..Params::default()
            });
            let (mut sum, mut min, mut max) = (0usize, usize::MAX, 0);
            let mut out = Vec::with_capacity(32 * 1024);
            for i in 0..n {
                out.clear();
                m.write_payload(&mut out, &m.event(i));
                sum += out.len();
                min = min.min(out.len());
                max = max.max(out.len());
            }
            let mean = sum as f64 / n as f64;
            assert!(
                (mean - avg as f64).abs() < avg as f64 * 0.1,
                "avg {avg}: mean {mean}"
            );
            assert!(min < 1000, "min {min}");
            assert!(max > 12_000, "max {max}");
        }
    }

    #[test]
    fn internal_ids_map_back_to_their_object() {
        let m = model(30_000);
        for k in (0..m.objects()).step_by(97) {
            let obj = m.pool_object(k);
            let mut s = Vec::new();
            jsonw::uuid(&mut s, obj.iid.0, obj.iid.1);
            let s = String::from_utf8(s).unwrap();
            assert_eq!(s.as_bytes()[14], b'4', "{s}");
            assert_eq!(m.object_by_internal_id(&s).unwrap().key, k);
        }
        assert!(m
            .object_by_internal_id("00000000-0000-4000-8000-000000000000")
            .is_none());
    }
}
