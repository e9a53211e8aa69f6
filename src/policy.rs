//! Export policy: which objects may leave, by STIX type, label and TLP level.
//!
//! A cross-domain export must never let data above a classification out.
//! [`Policy::judge`] reads the `data` object of one event (a STIX 2.1 object
//! as OpenCTI's stream sends it) and answers [`Verdict::Export`] or
//! [`Verdict::Hold`] with a [`Reason`]. This module owns the rules and their
//! validation; it does no I/O, and what happens to a held event (skipped,
//! counted, logged) is the caller's business.
//!
//! # Rules, in the order they are checked (the first that fails names the reason)
//! 1. TLP ceiling (`policy.tlp_ceiling`): the object's TLP level must not be
//!    above the ceiling, else [`Reason::AboveCeiling`]. If its TLP cannot be
//!    determined (below) and `policy.unknown_marking` is `deny` (the default),
//!    [`Reason::UnknownMarking`].
//! 2. Types: `data.type` (compared without regard to ASCII case) must be in
//!    `policy.allow_types` when that list is not empty
//!    ([`Reason::TypeNotAllowed`]) and must not be in `policy.deny_types`
//!    ([`Reason::TypeDenied`]). An object without a string `type` fails
//!    whichever of the two lists is set.
//! 3. Labels: no label may be in `policy.forbid_labels`
//!    ([`Reason::ForbiddenLabel`]), and at least one must be in
//!    `policy.require_labels` when that list is not empty
//!    ([`Reason::MissingLabel`]). Labels compare without regard to case, as
//!    OpenCTI treats them. An object whose labels cannot be read fails
//!    `forbid_labels` (their absence cannot be shown).
//!
//! # Where labels and markings are read
//! Labels: `data.labels` (SDOs and relationships), and `labels` of the
//! extensions `extension-definition--f93e2c80-…` (where OpenCTI puts the
//! labels of observables) and `extension-definition--ea279b3e-…`.
//!
//! Markings: the object's own markings are `data.object_marking_refs`, the
//! `marking_ref` of each entry of `data.granular_markings`, and
//! `object_marking_refs` of either OpenCTI extension. Each attached file (the
//! `files` lists of both extensions and `data.files`) carries its own
//! `object_marking_refs`: its content is exported with the object, so its
//! level counts too.
//!
//! Relationships and sightings also carry, in `extension-definition--ea279b3e-…`,
//! the markings of their two ends (`source_ref_object_marking_refs`,
//! `target_ref_object_marking_refs`, `sighting_of_ref_object_marking_refs`,
//! `where_sighted_refs_object_marking_refs`), next to the ends' names
//! (`source_value`, `target_value`…) that the line exports. OpenCTI hides a
//! relationship from whoever cannot see an end, so a known TLP id there
//! raises the level too. Current OpenCTI versions fill these lists with
//! *internal* ids of marking definitions, which cannot be classified without
//! asking the platform: entries that are not known TLP ids are ignored there
//! (neither raising the level nor making it undetermined).
//!
//! The object's level is the maximum over the object, its files and its ends.
//!
//! # TLP levels of marking ids
//! `object_marking_refs` holds marking-definition *standard ids*. Known TLP
//! ids (matched without regard to ASCII case):
//! - OpenCTI's built-in TLP markings (`STATIC_STANDARD_IDS` in
//!   `opencti-graphql/src/schema/identifier.js`): the STIX 2.1 specification's
//!   TLP 1.0 ids for CLEAR/WHITE, GREEN, AMBER, RED, and OpenCTI's own fixed
//!   id `826578e1-40ad-459f-bc73-ede076f81f37` for AMBER+STRICT (the
//!   specification has none);
//! - the TLP 2.0 ids of the OASIS TLP 2.0 extension, which objects imported
//!   from other tools may carry.
//!
//! Any other well-formed `marking-definition--` id (PAP, a statement, an
//! organisation's own marking) is *not a TLP marking*: it never raises the
//! level.
//!
//! # When the TLP level cannot be determined
//! For the object and for each attached file separately:
//! - no marking at all (field absent or an empty list) → TLP:CLEAR. This is
//!   OpenCTI's own model: `isMarkingAllowed` (`src/utils/access.ts`) lets
//!   every user read an element without markings, so it is less restricted
//!   than one marked TLP:CLEAR;
//! - at least one known TLP id → the highest of them;
//! - markings, but none a known TLP id → **cannot be determined**: a marking
//!   we do not know may be an organisation's own TLP-type marking (OpenCTI
//!   lets administrators create them, with computed ids) as easily as a PAP.
//!
//! The level also **cannot be determined** when something that holds
//! markings is not in the expected form: `data` is not a JSON object (or not
//! JSON, or repeats a key this module reads); `object_marking_refs` (of the
//! object, an extension or a file) is not a list of strings, `null`
//! included; an entry of it is not a `marking-definition--` id; one of the
//! four lists of the ends' markings is not a list of strings;
//! `granular_markings` is not a list of objects whose `marking_ref` (when
//! present) is a string; `extensions`, one of the two OpenCTI extensions, a
//! `files` list or one of its entries is not of the JSON type expected.
//!
//! With `unknown_marking: deny` such an object is held back
//! ([`Reason::UnknownMarking`]) unless its known markings already put it
//! above the ceiling ([`Reason::AboveCeiling`]). With `allow`, only the
//! known TLP markings count. Without a ceiling, markings are not read at all.
//!
//! # What `judge` does not see
//! Only `data`. The objects of a merge's `context.sources` leave in the same
//! line: judge them with `data` through [`Policy::judge_all`]. An update's
//! `context.patch` / `reverse_patch` may hold earlier values of the object
//! (written while it was marked differently); they are not judged here.
//!
//! # Cost
//! An inactive policy returns at once without looking at the text. An
//! active one deserialises only the fields above, borrowing from the input;
//! the rest of the object is skipped by the parser.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// The export policy as configured (`policy.*` keys), before validation.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct PolicySettings {
    /// STIX types to export; empty = every type (`policy.allow_types`,
    /// `POLICY_ALLOW_TYPES`, comma-separated).
    pub(crate) allow_types: Vec<String>,
    /// STIX types never exported (`policy.deny_types`).
    pub(crate) deny_types: Vec<String>,
    /// An object must carry at least one of these labels; empty = no
    /// requirement (`policy.require_labels`).
    pub(crate) require_labels: Vec<String>,
    /// An object carrying any of these labels is held back
    /// (`policy.forbid_labels`).
    pub(crate) forbid_labels: Vec<String>,
    /// Highest TLP level exported, e.g. `TLP:AMBER` (`policy.tlp_ceiling`);
    /// `None` = markings are not checked.
    pub(crate) tlp_ceiling: Option<String>,
    /// What to do with an object whose TLP level cannot be determined
    /// (`policy.unknown_marking`).
    pub(crate) unknown_marking: UnknownMarking,
}

/// What to do with an object whose TLP level cannot be determined.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum UnknownMarking {
    /// Hold it back (the default: fail closed).
    #[default]
    Deny,
    /// Export it if its known TLP markings are within the ceiling.
    Allow,
}

impl UnknownMarking {
    /// Parses `deny` or `allow` (any case).
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "deny" => Ok(UnknownMarking::Deny),
            "allow" => Ok(UnknownMarking::Allow),
            _ => Err(format!("`{s}` is not a choice: use deny or allow")),
        }
    }
}

/// A TLP level; the order is the order of restriction (CLEAR lowest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Tlp {
    /// TLP:CLEAR (TLP 1.0: TLP:WHITE).
    Clear,
    /// TLP:GREEN.
    Green,
    /// TLP:AMBER.
    Amber,
    /// TLP:AMBER+STRICT.
    AmberStrict,
    /// TLP:RED.
    Red,
}

/// Marking-definition standard ids of the TLP levels.
const TLP_MARKINGS: [(&str, Tlp); 10] = [
    // OpenCTI's built-in markings (identifier.js STATIC_STANDARD_IDS): the
    // STIX 2.1 specification's TLP 1.0 ids...
    (
        "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9",
        Tlp::Clear,
    ),
    (
        "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da",
        Tlp::Green,
    ),
    (
        "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82",
        Tlp::Amber,
    ),
    (
        "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed",
        Tlp::Red,
    ),
    // ...and OpenCTI's fixed id for AMBER+STRICT (not computed from the data).
    (
        "marking-definition--826578e1-40ad-459f-bc73-ede076f81f37",
        Tlp::AmberStrict,
    ),
    // The OASIS TLP 2.0 extension's marking objects.
    (
        "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
        Tlp::Clear,
    ),
    (
        "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
        Tlp::Green,
    ),
    (
        "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
        Tlp::Amber,
    ),
    (
        "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
        Tlp::AmberStrict,
    ),
    (
        "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
        Tlp::Red,
    ),
];

const MARKING_PREFIX: &str = "marking-definition--";

impl Tlp {
    /// Every level, lowest first.
    #[cfg(test)]
    pub(crate) const ALL: [Tlp; 5] = [
        Tlp::Clear,
        Tlp::Green,
        Tlp::Amber,
        Tlp::AmberStrict,
        Tlp::Red,
    ];

    /// `TLP:CLEAR`, `TLP:GREEN`, `TLP:AMBER`, `TLP:AMBER+STRICT` or `TLP:RED`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Tlp::Clear => "TLP:CLEAR",
            Tlp::Green => "TLP:GREEN",
            Tlp::Amber => "TLP:AMBER",
            Tlp::AmberStrict => "TLP:AMBER+STRICT",
            Tlp::Red => "TLP:RED",
        }
    }

    /// Parses a level name in any case, with or without the `TLP:` prefix;
    /// `TLP:WHITE` is TLP:CLEAR.
    pub(crate) fn parse(s: &str) -> Result<Tlp, String> {
        let t = s.trim();
        let bare = match t.get(..4) {
            Some(p) if p.eq_ignore_ascii_case("TLP:") => &t[4..],
            _ => t,
        };
        match bare.trim().to_ascii_uppercase().as_str() {
            "CLEAR" | "WHITE" => Ok(Tlp::Clear),
            "GREEN" => Ok(Tlp::Green),
            "AMBER" => Ok(Tlp::Amber),
            "AMBER+STRICT" => Ok(Tlp::AmberStrict),
            "RED" => Ok(Tlp::Red),
            _ => Err(format!(
                "`{s}` is not a TLP level: use TLP:CLEAR, TLP:GREEN, TLP:AMBER, TLP:AMBER+STRICT or TLP:RED"
            )),
        }
    }

    /// The level of a marking-definition standard id, if it is a known TLP
    /// marking (ASCII case ignored).
    pub(crate) fn of_marking(id: &str) -> Option<Tlp> {
        TLP_MARKINGS
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(id))
            .map(|&(_, tlp)| tlp)
    }

    /// The marking-definition standard ids known for this level.
    #[cfg(test)]
    pub(crate) fn marking_ids(self) -> impl Iterator<Item = &'static str> {
        TLP_MARKINGS
            .iter()
            .filter(move |(_, t)| *t == self)
            .map(|&(id, _)| id)
    }
}

impl fmt::Display for Tlp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an object is held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Reason {
    /// `policy.allow_types` is set and does not list the object's type.
    TypeNotAllowed,
    /// `policy.deny_types` lists the object's type.
    TypeDenied,
    /// `policy.require_labels` is set and the object has none of them.
    MissingLabel,
    /// The object has a label of `policy.forbid_labels`.
    ForbiddenLabel,
    /// A TLP marking of the object or of an attached file is above the ceiling.
    AboveCeiling,
    /// The TLP level cannot be determined and `policy.unknown_marking` is `deny`.
    UnknownMarking,
}

impl Reason {
    /// Every reason, in the order of [`Reason::index`].
    pub(crate) const ALL: [Reason; 6] = [
        Reason::TypeNotAllowed,
        Reason::TypeDenied,
        Reason::MissingLabel,
        Reason::ForbiddenLabel,
        Reason::AboveCeiling,
        Reason::UnknownMarking,
    ];

    /// A stable snake_case label, e.g. for a metric label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::TypeNotAllowed => "type_not_allowed",
            Reason::TypeDenied => "type_denied",
            Reason::MissingLabel => "missing_label",
            Reason::ForbiddenLabel => "forbidden_label",
            Reason::AboveCeiling => "above_ceiling",
            Reason::UnknownMarking => "unknown_marking",
        }
    }

    /// Position in [`Reason::ALL`] (0..6), for arrays of counters.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::TypeNotAllowed => "its type is not in `policy.allow_types`",
            Reason::TypeDenied => "its type is in `policy.deny_types`",
            Reason::MissingLabel => "it has none of `policy.require_labels`",
            Reason::ForbiddenLabel => "it has a label of `policy.forbid_labels`",
            Reason::AboveCeiling => "it is marked above `policy.tlp_ceiling`",
            Reason::UnknownMarking => {
                "its TLP level cannot be determined (`policy.unknown_marking` is deny)"
            }
        })
    }
}

/// What to do with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The event may leave.
    Export,
    /// The event must not leave, for this reason.
    Hold(Reason),
}

impl Verdict {
    /// True for [`Verdict::Export`].
    pub(crate) fn is_export(self) -> bool {
        self == Verdict::Export
    }
}

/// A validated export policy. Cheap to share between threads (`&Policy`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Policy {
    /// Lowercase STIX types.
    allow_types: Vec<String>,
    deny_types: Vec<String>,
    /// Lowercase labels.
    require_labels: Vec<String>,
    forbid_labels: Vec<String>,
    ceiling: Option<Tlp>,
    unknown_marking: UnknownMarking,
    active: bool,
}

impl Policy {
    /// Validates the settings. An error names the key, the value and the fix.
    pub(crate) fn new(s: &PolicySettings) -> Result<Policy, String> {
        let allow_types = types("policy.allow_types", &s.allow_types)?;
        let deny_types = types("policy.deny_types", &s.deny_types)?;
        if let Some(t) = allow_types.iter().find(|t| deny_types.contains(t)) {
            return Err(format!(
                "`{t}` is in both `policy.allow_types` and `policy.deny_types`: keep it in one"
            ));
        }
        let require_labels = labels("policy.require_labels", &s.require_labels)?;
        let forbid_labels = labels("policy.forbid_labels", &s.forbid_labels)?;
        if let Some(l) = require_labels.iter().find(|l| forbid_labels.contains(l)) {
            return Err(format!(
                "`{l}` is in both `policy.require_labels` and `policy.forbid_labels`: keep it in one"
            ));
        }
        let ceiling = match &s.tlp_ceiling {
            None => None,
            Some(v) => Some(Tlp::parse(v).map_err(|e| format!("`policy.tlp_ceiling`: {e}"))?),
        };
        let active = !allow_types.is_empty()
            || !deny_types.is_empty()
            || !require_labels.is_empty()
            || !forbid_labels.is_empty()
            || ceiling.is_some();
        Ok(Policy {
            allow_types,
            deny_types,
            require_labels,
            forbid_labels,
            ceiling,
            unknown_marking: s.unknown_marking,
            active,
        })
    }

    /// A policy that exports everything.
    #[cfg(test)]
    pub(crate) fn export_all() -> Policy {
        Policy::new(&PolicySettings::default()).expect("the default settings are valid")
    }

    /// True when at least one rule is set; an inactive policy exports all.
    pub(crate) fn is_active(&self) -> bool {
        self.active
    }

    /// The TLP ceiling, if set.
    #[cfg(test)]
    pub(crate) fn ceiling(&self) -> Option<Tlp> {
        self.ceiling
    }

    /// The rules, one line each (no trailing newline), for `check-stream`
    /// and the start-up log.
    pub(crate) fn describe(&self) -> String {
        if !self.active {
            return "no export policy: every event is exported".to_string();
        }
        let list = |v: &[String]| {
            v.iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut lines = Vec::new();
        if let Some(c) = self.ceiling {
            lines.push(format!(
                "TLP ceiling: {c}; objects marked above it (themselves, attached files or relationship ends) are held back"
            ));
            lines.push(match self.unknown_marking {
                UnknownMarking::Deny => {
                    "unknown marking: deny; objects whose TLP level cannot be determined are held back"
                        .to_string()
                }
                UnknownMarking::Allow => {
                    "unknown marking: allow; only known TLP markings are checked".to_string()
                }
            });
        }
        if !self.allow_types.is_empty() {
            lines.push(format!("types exported: only {}", list(&self.allow_types)));
        }
        if !self.deny_types.is_empty() {
            lines.push(format!("types held back: {}", list(&self.deny_types)));
        }
        if !self.forbid_labels.is_empty() {
            lines.push(format!(
                "labels held back: any of {}",
                list(&self.forbid_labels)
            ));
        }
        if !self.require_labels.is_empty() {
            lines.push(format!(
                "labels required: at least one of {}",
                list(&self.require_labels)
            ));
        }
        lines.join("\n")
    }

    /// Judges one event by the raw JSON of its `data` object. Free when the
    /// policy is inactive.
    #[inline]
    #[cfg(test)]
    pub(crate) fn judge(&self, data_json: &str) -> Verdict {
        if !self.active {
            return Verdict::Export;
        }
        self.judge_active(data_json)
    }

    /// Judges several objects that leave together (a merge's `data` and the
    /// objects of its `context.sources`): the first hold wins.
    pub(crate) fn judge_all<'a>(&self, objects: impl IntoIterator<Item = &'a str>) -> Verdict {
        if !self.active {
            return Verdict::Export;
        }
        objects
            .into_iter()
            .map(|o| self.judge_active(o))
            .find(|v| !v.is_export())
            .unwrap_or(Verdict::Export)
    }

    fn judge_active(&self, data: &str) -> Verdict {
        let top: Option<Top> = object(data);
        let wants_labels = !self.require_labels.is_empty() || !self.forbid_labels.is_empty();
        let exts = match &top {
            Some(t) if self.ceiling.is_some() || wants_labels => Exts::read(t.extensions),
            _ => Exts::default(),
        };

        if let Some(ceiling) = self.ceiling {
            let marks = match &top {
                Some(t) => marks(t, &exts),
                None => Marks {
                    level: Tlp::Clear,
                    undetermined: true,
                },
            };
            if marks.level > ceiling {
                return Verdict::Hold(Reason::AboveCeiling);
            }
            if marks.undetermined && self.unknown_marking == UnknownMarking::Deny {
                return Verdict::Hold(Reason::UnknownMarking);
            }
        }

        if !self.allow_types.is_empty() || !self.deny_types.is_empty() {
            let kind = top.as_ref().and_then(|t| t.kind.0).and_then(string);
            match kind {
                None if !self.allow_types.is_empty() => {
                    return Verdict::Hold(Reason::TypeNotAllowed)
                }
                None => return Verdict::Hold(Reason::TypeDenied),
                Some(k) => {
                    if !self.allow_types.is_empty()
                        && !self.allow_types.iter().any(|a| a.eq_ignore_ascii_case(&k))
                    {
                        return Verdict::Hold(Reason::TypeNotAllowed);
                    }
                    if self.deny_types.iter().any(|d| d.eq_ignore_ascii_case(&k)) {
                        return Verdict::Hold(Reason::TypeDenied);
                    }
                }
            }
        }

        if wants_labels {
            let mut forbidden = false;
            let mut required = false;
            let readable = match &top {
                Some(t) => each_label(t, &exts, |label| {
                    forbidden |= self.forbid_labels.iter().any(|f| same_label(label, f));
                    required |= self.require_labels.iter().any(|r| same_label(label, r));
                }),
                None => false,
            };
            if !self.forbid_labels.is_empty() && (forbidden || !readable) {
                return Verdict::Hold(Reason::ForbiddenLabel);
            }
            if !self.require_labels.is_empty() && !required {
                return Verdict::Hold(Reason::MissingLabel);
            }
        }
        Verdict::Export
    }
}

/// Validates a list of STIX types into lowercase, without duplicates.
fn types(key: &str, raw: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for v in raw {
        let t = v.trim();
        if t.is_empty() {
            return Err(format!(
                "`{key}` has an empty entry: remove it (or the extra comma)"
            ));
        }
        if !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(format!(
                "`{key}`: `{t}` is not a STIX type (letters, digits and `-` only), e.g. `indicator` or `threat-actor`"
            ));
        }
        let t = t.to_ascii_lowercase();
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

/// Validates a list of labels into lowercase, without duplicates.
fn labels(key: &str, raw: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for v in raw {
        let l = v.trim();
        if l.is_empty() {
            return Err(format!(
                "`{key}` has an empty entry: remove it (or the extra comma)"
            ));
        }
        let l = l.to_lowercase();
        if !out.contains(&l) {
            out.push(l);
        }
    }
    Ok(out)
}

/// `label` equals the lowercase `wanted`, ignoring case.
fn same_label(label: &str, wanted: &str) -> bool {
    if label.is_ascii() {
        label.eq_ignore_ascii_case(wanted)
    } else {
        label.to_lowercase() == wanted
    }
}

// ---------------------------------------------------------------------------
// Reading the object: only the fields the rules use, borrowed from the input.

/// A field that is present (`null` included) or absent.
#[derive(Debug, Clone, Copy, Default)]
struct Field<'a>(Option<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Not `Option<&RawValue>`: that would read `null` as absent, and a
        // `null` marking list must count as malformed, not as "no markings".
        <&'a RawValue>::deserialize(d).map(|r| Field(Some(r)))
    }
}

#[derive(Deserialize)]
struct Top<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Field<'a>,
    #[serde(borrow, default)]
    labels: Field<'a>,
    #[serde(borrow, default)]
    object_marking_refs: Field<'a>,
    #[serde(borrow, default)]
    granular_markings: Field<'a>,
    #[serde(borrow, default)]
    extensions: Field<'a>,
    #[serde(borrow, default)]
    files: Field<'a>,
}

#[derive(Deserialize)]
struct Extensions<'a> {
    #[serde(
        borrow,
        default,
        rename = "extension-definition--ea279b3e-5c71-4632-ac08-831c66a786ba"
    )]
    octi: Field<'a>,
    #[serde(
        borrow,
        default,
        rename = "extension-definition--f93e2c80-4231-4f9a-af8b-95c9bd566a82"
    )]
    octi_sco: Field<'a>,
}

#[derive(Deserialize)]
struct Ext<'a> {
    #[serde(borrow, default)]
    labels: Field<'a>,
    #[serde(borrow, default)]
    object_marking_refs: Field<'a>,
    #[serde(borrow, default)]
    files: Field<'a>,
    #[serde(borrow, default)]
    source_ref_object_marking_refs: Field<'a>,
    #[serde(borrow, default)]
    target_ref_object_marking_refs: Field<'a>,
    #[serde(borrow, default)]
    sighting_of_ref_object_marking_refs: Field<'a>,
    #[serde(borrow, default)]
    where_sighted_refs_object_marking_refs: Field<'a>,
}

impl<'a> Ext<'a> {
    /// The marking lists of a relationship's or a sighting's two ends.
    fn ends(&self) -> [Field<'a>; 4] {
        [
            self.source_ref_object_marking_refs,
            self.target_ref_object_marking_refs,
            self.sighting_of_ref_object_marking_refs,
            self.where_sighted_refs_object_marking_refs,
        ]
    }
}

#[derive(Deserialize)]
struct FileEntry<'a> {
    #[serde(borrow, default)]
    object_marking_refs: Field<'a>,
}

#[derive(Deserialize)]
struct Granular<'a> {
    #[serde(borrow, default)]
    marking_ref: Field<'a>,
}

/// A JSON string, borrowed when it has no escapes.
#[derive(Deserialize)]
#[serde(transparent)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

/// Parses `text` as a JSON object into `T`; `None` for anything else.
fn object<'a, T: Deserialize<'a>>(text: &'a str) -> Option<T> {
    // serde would also fill a struct from a JSON array, positionally.
    if !text.trim_start().starts_with('{') {
        return None;
    }
    serde_json::from_str(text).ok()
}

/// The value of a JSON string; `None` for anything else.
fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    if !raw.get().starts_with('"') {
        return None;
    }
    serde_json::from_str::<Str>(raw.get()).ok().map(|s| s.0)
}

/// The elements of a JSON array; `None` for anything else (`null` included).
fn array(raw: &RawValue) -> Option<Vec<&RawValue>> {
    if !raw.get().starts_with('[') {
        return None;
    }
    serde_json::from_str(raw.get()).ok()
}

/// Calls `f` with each string of a list of strings; false when the value is
/// not a list or holds something else than strings (the strings still count).
fn each_string(raw: &RawValue, mut f: impl FnMut(&str)) -> bool {
    let Some(items) = array(raw) else {
        return false;
    };
    let mut ok = true;
    for item in items {
        match string(item) {
            Some(s) => f(&s),
            None => ok = false,
        }
    }
    ok
}

/// The two OpenCTI extensions, read once for markings and labels.
#[derive(Default)]
struct Exts<'a> {
    list: Vec<Ext<'a>>,
    /// `extensions` or one of the two is not an object.
    bad: bool,
}

impl<'a> Exts<'a> {
    fn read(field: Field<'a>) -> Exts<'a> {
        let mut out = Exts::default();
        let Some(raw) = field.0 else {
            return out;
        };
        let Some(exts) = object::<Extensions>(raw.get()) else {
            out.bad = true;
            return out;
        };
        for ext in [exts.octi, exts.octi_sco] {
            if let Some(raw) = ext.0 {
                match object::<Ext>(raw.get()) {
                    Some(e) => out.list.push(e),
                    None => out.bad = true,
                }
            }
        }
        out
    }
}

/// The TLP markings of one marked thing (the object, or one file).
#[derive(Default)]
struct Marked {
    /// At least one marking reference.
    any: bool,
    /// Highest known TLP level.
    max: Option<Tlp>,
    /// Something is malformed.
    bad: bool,
}

impl Marked {
    fn add_ref(&mut self, id: &str) {
        self.any = true;
        match Tlp::of_marking(id) {
            Some(t) => self.max = self.max.max(Some(t)),
            None => {
                let b = id.as_bytes();
                let is_marking = b.len() > MARKING_PREFIX.len()
                    && b[..MARKING_PREFIX.len()].eq_ignore_ascii_case(MARKING_PREFIX.as_bytes());
                if !is_marking {
                    self.bad = true;
                }
            }
        }
    }

    fn add_refs(&mut self, field: Field) {
        if let Some(raw) = field.0 {
            if !each_string(raw, |id| self.add_ref(id)) {
                self.bad = true;
            }
        }
    }
}

/// The TLP verdict of an object and its files.
struct Marks {
    /// Highest known level (TLP:CLEAR when nothing is marked).
    level: Tlp,
    /// Some marked thing's level cannot be determined.
    undetermined: bool,
}

impl Marks {
    fn add(&mut self, m: &Marked) {
        if let Some(t) = m.max {
            self.level = self.level.max(t);
        }
        if m.bad || (m.any && m.max.is_none()) {
            self.undetermined = true;
        }
    }
}

fn marks(top: &Top, exts: &Exts) -> Marks {
    let mut out = Marks {
        level: Tlp::Clear,
        undetermined: exts.bad,
    };

    let mut own = Marked::default();
    own.add_refs(top.object_marking_refs);
    if let Some(raw) = top.granular_markings.0 {
        match array(raw) {
            Some(items) => {
                for item in items {
                    match object::<Granular>(item.get()) {
                        // A granular marking may be a `lang` one, without `marking_ref`.
                        Some(g) => match g.marking_ref.0 {
                            None => {}
                            Some(r) => match string(r) {
                                Some(id) => own.add_ref(&id),
                                None => own.bad = true,
                            },
                        },
                        None => own.bad = true,
                    }
                }
            }
            None => own.bad = true,
        }
    }
    for ext in &exts.list {
        own.add_refs(ext.object_marking_refs);
    }
    out.add(&own);

    // The ends of a relationship or sighting: known TLP ids only (see the
    // module comment: OpenCTI puts internal ids there).
    for field in exts.list.iter().flat_map(Ext::ends) {
        if let Some(raw) = field.0 {
            let readable = each_string(raw, |id| {
                if let Some(t) = Tlp::of_marking(id) {
                    out.level = out.level.max(t);
                }
            });
            if !readable {
                out.undetermined = true;
            }
        }
    }

    let lists = exts
        .list
        .iter()
        .map(|e| e.files)
        .chain(std::iter::once(top.files));
    for list in lists {
        let Some(raw) = list.0 else {
            continue;
        };
        let Some(entries) = array(raw) else {
            out.undetermined = true;
            continue;
        };
        for entry in entries {
            let mut file = Marked::default();
            match object::<FileEntry>(entry.get()) {
                Some(f) => file.add_refs(f.object_marking_refs),
                None => file.bad = true,
            }
            out.add(&file);
        }
    }
    out
}

/// Calls `f` with every label; false when some label list cannot be read.
fn each_label(top: &Top, exts: &Exts, mut f: impl FnMut(&str)) -> bool {
    let mut ok = !exts.bad;
    let fields = std::iter::once(top.labels).chain(exts.list.iter().map(|e| e.labels));
    for field in fields {
        if let Some(raw) = field.0 {
            // `"labels": null` carries no label; anything else must be a list.
            if raw.get() != "null" && !each_string(raw, &mut f) {
                ok = false;
            }
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLEAR: &str = "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9";
    const GREEN: &str = "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da";
    const AMBER: &str = "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82";
    const AMBER_STRICT: &str = "marking-definition--826578e1-40ad-459f-bc73-ede076f81f37";
    const RED: &str = "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed";
    /// A PAP:RED-like marking: well-formed, not TLP.
    const PAP: &str = "marking-definition--c4ba8e2a-8f4e-5b1a-9d4c-0e9f2d1a7b3c";
    const EXT: &str = "extension-definition--ea279b3e-5c71-4632-ac08-831c66a786ba";
    const EXT_SCO: &str = "extension-definition--f93e2c80-4231-4f9a-af8b-95c9bd566a82";

    fn policy(f: impl FnOnce(&mut PolicySettings)) -> Policy {
        let mut s = PolicySettings::default();
        f(&mut s);
        Policy::new(&s).unwrap()
    }

    fn ceiling(c: &str, unknown: UnknownMarking) -> Policy {
        policy(|s| {
            s.tlp_ceiling = Some(c.to_string());
            s.unknown_marking = unknown;
        })
    }

    fn marked(refs: &[&str]) -> String {
        serde_json::json!({"type": "indicator", "id": "indicator--1", "object_marking_refs": refs})
            .to_string()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_extension_ids_are_the_ones_the_transform_reads() {
        assert_eq!(EXT, crate::transform::EXT_OPENCTI);
        assert_eq!(EXT_SCO, crate::transform::EXT_OPENCTI_SDO);
    }

    #[test]
    fn every_tlp_level_against_every_ceiling() {
        for level in Tlp::ALL {
            let ids: Vec<&str> = level.marking_ids().collect();
            assert_eq!(ids.len(), 2, "{level}: one OpenCTI id and one TLP 2.0 id");
            for c in Tlp::ALL {
                for unknown in [UnknownMarking::Deny, UnknownMarking::Allow] {
                    let p = ceiling(c.as_str(), unknown);
                    for id in &ids {
                        let want = if level <= c {
                            Verdict::Export
                        } else {
                            Verdict::Hold(Reason::AboveCeiling)
                        };
                        assert_eq!(p.judge(&marked(&[id])), want, "{level} ({id}) under {c}");
                        // Upper-case ids are the same marking.
                        let upper = id.to_ascii_uppercase();
                        assert_eq!(p.judge(&marked(&[&upper])), want, "{upper} under {c}");
                    }
                }
            }
        }
    }

    #[test]
    fn known_ids_map_to_their_levels() {
        let table = [
            (CLEAR, Tlp::Clear),
            (
                "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
                Tlp::Clear,
            ),
            (GREEN, Tlp::Green),
            (
                "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
                Tlp::Green,
            ),
            (AMBER, Tlp::Amber),
            (
                "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
                Tlp::Amber,
            ),
            (AMBER_STRICT, Tlp::AmberStrict),
            (
                "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
                Tlp::AmberStrict,
            ),
            (RED, Tlp::Red),
            (
                "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
                Tlp::Red,
            ),
        ];
        for (id, tlp) in table {
            assert_eq!(Tlp::of_marking(id), Some(tlp), "{id}");
        }
        assert_eq!(Tlp::of_marking(PAP), None);
        assert_eq!(Tlp::of_marking(""), None);
    }

    #[test]
    fn the_level_is_the_highest_marking() {
        let p = ceiling("TLP:AMBER", UnknownMarking::Deny);
        assert_eq!(p.judge(&marked(&[GREEN, AMBER])), Verdict::Export);
        assert_eq!(
            p.judge(&marked(&[GREEN, RED])),
            Verdict::Hold(Reason::AboveCeiling)
        );
        assert_eq!(
            p.judge(&marked(&[CLEAR, AMBER_STRICT, GREEN])),
            Verdict::Hold(Reason::AboveCeiling)
        );
    }

    #[test]
    fn ceilings_parse_in_any_case_and_white_is_clear() {
        let ok = [
            ("TLP:CLEAR", Tlp::Clear),
            ("tlp:white", Tlp::Clear),
            ("TLP:WHITE", Tlp::Clear),
            ("clear", Tlp::Clear),
            (" TLP:Green ", Tlp::Green),
            ("tlp:amber", Tlp::Amber),
            ("TLP:AMBER+STRICT", Tlp::AmberStrict),
            ("amber+strict", Tlp::AmberStrict),
            ("TLP:RED", Tlp::Red),
        ];
        for (s, t) in ok {
            assert_eq!(Tlp::parse(s), Ok(t), "{s}");
        }
        assert_eq!(
            Tlp::parse("TLP:PURPLE").unwrap_err(),
            "`TLP:PURPLE` is not a TLP level: use TLP:CLEAR, TLP:GREEN, TLP:AMBER, TLP:AMBER+STRICT or TLP:RED"
        );
        for bad in ["", "TLP:", "AMBER STRICT", "TLP:AMBER+", "4"] {
            assert!(Tlp::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unmarked_objects_are_clear() {
        for c in Tlp::ALL {
            let p = ceiling(c.as_str(), UnknownMarking::Deny);
            assert_eq!(p.judge(r#"{"type":"malware"}"#), Verdict::Export);
            assert_eq!(
                p.judge(r#"{"type":"malware","object_marking_refs":[]}"#),
                Verdict::Export
            );
        }
    }

    #[test]
    fn unknown_markings_both_ways() {
        let deny = ceiling("TLP:GREEN", UnknownMarking::Deny);
        let allow = ceiling("TLP:GREEN", UnknownMarking::Allow);
        // Only a marking that is not TLP: the level cannot be determined.
        let pap_only = marked(&[PAP]);
        assert_eq!(deny.judge(&pap_only), Verdict::Hold(Reason::UnknownMarking));
        assert_eq!(allow.judge(&pap_only), Verdict::Export);
        // Next to a TLP marking it neither raises the level nor makes it unknown.
        assert_eq!(deny.judge(&marked(&[GREEN, PAP])), Verdict::Export);
        assert_eq!(
            deny.judge(&marked(&[AMBER, PAP])),
            Verdict::Hold(Reason::AboveCeiling)
        );
        assert_eq!(
            allow.judge(&marked(&[RED, PAP])),
            Verdict::Hold(Reason::AboveCeiling)
        );
    }

    #[test]
    fn malformed_markings_cannot_be_determined() {
        let cases = [
            format!(r#"{{"type":"x","object_marking_refs":"{GREEN}"}}"#),
            r#"{"type":"x","object_marking_refs":null}"#.to_string(),
            r#"{"type":"x","object_marking_refs":{}}"#.to_string(),
            format!(r#"{{"type":"x","object_marking_refs":["{GREEN}",1]}}"#),
            format!(r#"{{"type":"x","object_marking_refs":["{GREEN}","identity--1"]}}"#),
            format!(r#"{{"type":"x","object_marking_refs":["{GREEN}","marking-definition--"]}}"#),
            format!(r#"{{"type":"x","object_marking_refs":["{GREEN}"],"object_marking_refs":[]}}"#),
            r#"{"type":"x","granular_markings":{}}"#.to_string(),
            r#"{"type":"x","granular_markings":[{"marking_ref":3,"selectors":["name"]}]}"#
                .to_string(),
            r#"{"type":"x","granular_markings":["a"]}"#.to_string(),
            r#"{"type":"x","extensions":[]}"#.to_string(),
            format!(r#"{{"type":"x","extensions":{{"{EXT}":"x"}}}}"#),
            format!(r#"{{"type":"x","extensions":{{"{EXT}":{{"files":{{}}}}}}}}"#),
            format!(r#"{{"type":"x","extensions":{{"{EXT}":{{"files":[1]}}}}}}"#),
            format!(
                r#"{{"type":"x","extensions":{{"{EXT}":{{"files":[{{"name":"a","object_marking_refs":"{GREEN}"}}]}}}}}}"#
            ),
            r#"{"type":"x","files":"a"}"#.to_string(),
        ];
        let deny = ceiling("TLP:RED", UnknownMarking::Deny);
        let allow = ceiling("TLP:RED", UnknownMarking::Allow);
        for data in &cases {
            assert_eq!(
                deny.judge(data),
                Verdict::Hold(Reason::UnknownMarking),
                "{data}"
            );
            assert_eq!(allow.judge(data), Verdict::Export, "{data}");
        }
        // Known markings still count when the rest is malformed.
        let p = ceiling("TLP:GREEN", UnknownMarking::Allow);
        let data = format!(r#"{{"type":"x","object_marking_refs":["{RED}",7]}}"#);
        assert_eq!(p.judge(&data), Verdict::Hold(Reason::AboveCeiling));
    }

    #[test]
    fn data_that_is_not_an_object() {
        let with_ceiling = ceiling("TLP:RED", UnknownMarking::Deny);
        let only_types = policy(|s| s.allow_types = strings(&["indicator"]));
        let deny_types = policy(|s| s.deny_types = strings(&["note"]));
        let forbid = policy(|s| s.forbid_labels = strings(&["internal"]));
        let require = policy(|s| s.require_labels = strings(&["share"]));
        let allow_unknown = ceiling("TLP:RED", UnknownMarking::Allow);
        for data in [
            "",
            "null",
            "[]",
            r#"["indicator"]"#,
            r#""x""#,
            "{",
            "not json",
            "42",
        ] {
            assert_eq!(
                with_ceiling.judge(data),
                Verdict::Hold(Reason::UnknownMarking),
                "{data:?}"
            );
            assert_eq!(
                only_types.judge(data),
                Verdict::Hold(Reason::TypeNotAllowed),
                "{data:?}"
            );
            assert_eq!(
                deny_types.judge(data),
                Verdict::Hold(Reason::TypeDenied),
                "{data:?}"
            );
            assert_eq!(
                forbid.judge(data),
                Verdict::Hold(Reason::ForbiddenLabel),
                "{data:?}"
            );
            assert_eq!(
                require.judge(data),
                Verdict::Hold(Reason::MissingLabel),
                "{data:?}"
            );
            assert_eq!(allow_unknown.judge(data), Verdict::Export, "{data:?}");
        }
    }

    #[test]
    fn attached_files_carry_their_own_level() {
        let p = ceiling("TLP:GREEN", UnknownMarking::Deny);
        let file = |refs: &str| {
            format!(
                r#"{{"type":"malware","object_marking_refs":["{GREEN}"],"extensions":{{"{EXT}":{{"files":[{{"name":"a.txt","uri":"/storage/get/a","object_marking_refs":{refs}}}]}}}}}}"#
            )
        };
        assert_eq!(p.judge(&file("[]")), Verdict::Export);
        assert_eq!(p.judge(&file(&format!(r#"["{CLEAR}"]"#))), Verdict::Export);
        assert_eq!(
            p.judge(&file(&format!(r#"["{RED}"]"#))),
            Verdict::Hold(Reason::AboveCeiling)
        );
        assert_eq!(
            p.judge(&file(&format!(r#"["{PAP}"]"#))),
            Verdict::Hold(Reason::UnknownMarking)
        );
        // A file without markings, and the other two lists.
        let no_refs = format!(
            r#"{{"type":"malware","extensions":{{"{EXT}":{{"files":[{{"name":"a"}}]}}}}}}"#
        );
        assert_eq!(p.judge(&no_refs), Verdict::Export);
        let sco = format!(
            r#"{{"type":"file","extensions":{{"{EXT_SCO}":{{"files":[{{"object_marking_refs":["{AMBER}"]}}]}}}}}}"#
        );
        assert_eq!(p.judge(&sco), Verdict::Hold(Reason::AboveCeiling));
        let top = format!(r#"{{"type":"report","files":[{{"object_marking_refs":["{RED}"]}}]}}"#);
        assert_eq!(p.judge(&top), Verdict::Hold(Reason::AboveCeiling));
    }

    #[test]
    fn granular_and_extension_markings_count() {
        let p = ceiling("TLP:AMBER", UnknownMarking::Deny);
        let granular = format!(
            r#"{{"type":"report","object_marking_refs":["{GREEN}"],"granular_markings":[{{"marking_ref":"{RED}","selectors":["description"]}}]}}"#
        );
        assert_eq!(p.judge(&granular), Verdict::Hold(Reason::AboveCeiling));
        let lang = format!(
            r#"{{"type":"report","object_marking_refs":["{GREEN}"],"granular_markings":[{{"lang":"fr","selectors":["name"]}}]}}"#
        );
        assert_eq!(p.judge(&lang), Verdict::Export);
        let in_ext = format!(
            r#"{{"type":"ipv4-addr","object_marking_refs":["{GREEN}"],"extensions":{{"{EXT}":{{"object_marking_refs":["{RED}"]}}}}}}"#
        );
        assert_eq!(p.judge(&in_ext), Verdict::Hold(Reason::AboveCeiling));
    }

    #[test]
    fn the_ends_of_a_relationship_raise_the_level() {
        let p = ceiling("TLP:GREEN", UnknownMarking::Deny);
        let rel = |key: &str, refs: &str| {
            format!(
                r#"{{"type":"relationship","object_marking_refs":["{CLEAR}"],"extensions":{{"{EXT}":{{"source_value":"n","{key}":{refs}}}}}}}"#
            )
        };
        for key in [
            "source_ref_object_marking_refs",
            "target_ref_object_marking_refs",
            "sighting_of_ref_object_marking_refs",
            "where_sighted_refs_object_marking_refs",
        ] {
            assert_eq!(
                p.judge(&rel(key, &format!(r#"["{AMBER}"]"#))),
                Verdict::Hold(Reason::AboveCeiling),
                "{key}"
            );
            assert_eq!(
                p.judge(&rel(key, &format!(r#"["{GREEN}"]"#))),
                Verdict::Export
            );
            assert_eq!(p.judge(&rel(key, "[]")), Verdict::Export);
            // OpenCTI's internal ids: not classifiable, not held for it.
            assert_eq!(
                p.judge(&rel(key, r#"["7bd5cb74-0ea5-4d1c-8a0b-2f4f0b8a1c11",""]"#)),
                Verdict::Export,
                "{key}"
            );
            assert_eq!(
                p.judge(&rel(key, r#""x""#)),
                Verdict::Hold(Reason::UnknownMarking),
                "{key}"
            );
        }
    }

    #[test]
    fn types_allow_and_deny() {
        let allow =
            policy(|s| s.allow_types = strings(&["Indicator", "IPv4-Addr", "relationship"]));
        let deny = policy(|s| s.deny_types = strings(&["note", "SIGHTING"]));
        let both = policy(|s| {
            s.allow_types = strings(&["indicator", "note"]);
            s.deny_types = strings(&["opinion"]);
        });
        let cases: &[(&Policy, &str, Verdict)] = &[
            (&allow, "indicator", Verdict::Export),
            (&allow, "INDICATOR", Verdict::Export),
            (&allow, "ipv4-addr", Verdict::Export),
            (&allow, "relationship", Verdict::Export),
            (&allow, "sighting", Verdict::Hold(Reason::TypeNotAllowed)),
            (&allow, "malware", Verdict::Hold(Reason::TypeNotAllowed)),
            (&deny, "note", Verdict::Hold(Reason::TypeDenied)),
            (&deny, "sighting", Verdict::Hold(Reason::TypeDenied)),
            (&deny, "relationship", Verdict::Export),
            (&deny, "malware", Verdict::Export),
            (&both, "note", Verdict::Export),
            (&both, "opinion", Verdict::Hold(Reason::TypeNotAllowed)),
        ];
        for (p, t, want) in cases {
            let data = format!(r#"{{"id":"{t}--1","type":"{t}"}}"#);
            assert_eq!(p.judge(&data), *want, "{t}");
        }
        // No type, or not a string: fails whichever list is set.
        for data in [r#"{"id":"x"}"#, r#"{"type":3}"#, r#"{"type":null}"#] {
            assert_eq!(
                allow.judge(data),
                Verdict::Hold(Reason::TypeNotAllowed),
                "{data}"
            );
            assert_eq!(
                deny.judge(data),
                Verdict::Hold(Reason::TypeDenied),
                "{data}"
            );
        }
        // An escaped type is read as its value.
        assert_eq!(
            deny.judge(r#"{"type":"n\u006fte"}"#),
            Verdict::Hold(Reason::TypeDenied)
        );
    }

    #[test]
    fn labels_require_and_forbid() {
        let require = policy(|s| s.require_labels = strings(&["Share", "été"]));
        let forbid = policy(|s| s.forbid_labels = strings(&["internal"]));
        let sdo = |labels: &str| format!(r#"{{"type":"malware","labels":{labels}}}"#);
        let sco = |ext: &str, labels: &str| {
            format!(r#"{{"type":"ipv4-addr","extensions":{{"{ext}":{{"labels":{labels}}}}}}}"#)
        };
        let cases: &[(&Policy, String, Verdict)] = &[
            (&require, sdo(r#"["share"]"#), Verdict::Export),
            (&require, sdo(r#"["osint","SHARE"]"#), Verdict::Export),
            (&require, sdo(r#"["\u00e9t\u00e9"]"#), Verdict::Export),
            (&require, sdo(r#"["ÉTÉ"]"#), Verdict::Export),
            (
                &require,
                sdo(r#"["osint"]"#),
                Verdict::Hold(Reason::MissingLabel),
            ),
            (&require, sdo("[]"), Verdict::Hold(Reason::MissingLabel)),
            (&require, sdo("null"), Verdict::Hold(Reason::MissingLabel)),
            (
                &require,
                r#"{"type":"malware"}"#.to_string(),
                Verdict::Hold(Reason::MissingLabel),
            ),
            (&require, sco(EXT_SCO, r#"["share"]"#), Verdict::Export),
            (&require, sco(EXT, r#"["share"]"#), Verdict::Export),
            (
                &require,
                sco(EXT_SCO, r#"[]"#),
                Verdict::Hold(Reason::MissingLabel),
            ),
            (&require, sdo(r#"[1,"share"]"#), Verdict::Export),
            (&forbid, sdo(r#"["osint"]"#), Verdict::Export),
            (&forbid, sdo("[]"), Verdict::Export),
            (&forbid, sdo("null"), Verdict::Export),
            (
                &forbid,
                sdo(r#"["osint","Internal"]"#),
                Verdict::Hold(Reason::ForbiddenLabel),
            ),
            (
                &forbid,
                sco(EXT_SCO, r#"["internal"]"#),
                Verdict::Hold(Reason::ForbiddenLabel),
            ),
            (
                &forbid,
                sco(EXT, r#"["internal"]"#),
                Verdict::Hold(Reason::ForbiddenLabel),
            ),
            // Labels that cannot be read cannot be shown to be clean.
            (
                &forbid,
                sdo(r#"["osint",1]"#),
                Verdict::Hold(Reason::ForbiddenLabel),
            ),
            (
                &forbid,
                sdo(r#""internal""#),
                Verdict::Hold(Reason::ForbiddenLabel),
            ),
            (
                &forbid,
                sco(EXT_SCO, r#"{}"#),
                Verdict::Hold(Reason::ForbiddenLabel),
            ),
            (
                &forbid,
                format!(r#"{{"type":"malware","extensions":{{"{EXT_SCO}":[]}}}}"#),
                Verdict::Hold(Reason::ForbiddenLabel),
            ),
        ];
        for (p, data, want) in cases {
            assert_eq!(p.judge(data), *want, "{data}");
        }
    }

    #[test]
    fn rules_are_checked_in_order() {
        let p = policy(|s| {
            s.tlp_ceiling = Some("TLP:GREEN".into());
            s.allow_types = strings(&["indicator"]);
            s.forbid_labels = strings(&["internal"]);
        });
        let data = format!(
            r#"{{"type":"malware","labels":["internal"],"object_marking_refs":["{RED}"]}}"#
        );
        assert_eq!(p.judge(&data), Verdict::Hold(Reason::AboveCeiling));
        let data = format!(
            r#"{{"type":"malware","labels":["internal"],"object_marking_refs":["{GREEN}"]}}"#
        );
        assert_eq!(p.judge(&data), Verdict::Hold(Reason::TypeNotAllowed));
        let data = format!(
            r#"{{"type":"indicator","labels":["internal"],"object_marking_refs":["{GREEN}"]}}"#
        );
        assert_eq!(p.judge(&data), Verdict::Hold(Reason::ForbiddenLabel));
        let data = format!(
            r#"{{"type":"indicator","labels":["osint"],"object_marking_refs":["{GREEN}"]}}"#
        );
        assert_eq!(p.judge(&data), Verdict::Export);
    }

    #[test]
    fn an_inactive_policy_exports_everything_unread() {
        let p = Policy::new(&PolicySettings::default()).unwrap();
        assert!(!p.is_active());
        assert_eq!(p, Policy::export_all());
        for data in ["", "garbage", "[]", &marked(&[RED])] {
            assert_eq!(p.judge(data), Verdict::Export);
        }
        assert_eq!(p.judge_all(["garbage", "x"]), Verdict::Export);
        assert_eq!(p.describe(), "no export policy: every event is exported");
        // `unknown_marking` alone is no rule.
        let p = policy(|s| s.unknown_marking = UnknownMarking::Allow);
        assert!(!p.is_active());
    }

    #[test]
    fn judge_all_holds_when_one_object_is_held() {
        let p = ceiling("TLP:AMBER", UnknownMarking::Deny);
        let ok = marked(&[GREEN]);
        let red = marked(&[RED]);
        assert_eq!(p.judge_all([ok.as_str(), ok.as_str()]), Verdict::Export);
        assert_eq!(
            p.judge_all([ok.as_str(), red.as_str()]),
            Verdict::Hold(Reason::AboveCeiling)
        );
        assert_eq!(p.judge_all([]), Verdict::Export);
    }

    #[test]
    fn settings_errors_name_the_key_and_the_fix() {
        let err = |f: fn(&mut PolicySettings)| {
            let mut s = PolicySettings::default();
            f(&mut s);
            Policy::new(&s).unwrap_err()
        };
        assert_eq!(
            err(|s| s.tlp_ceiling = Some("TLP:PURPLE".into())),
            "`policy.tlp_ceiling`: `TLP:PURPLE` is not a TLP level: use TLP:CLEAR, TLP:GREEN, TLP:AMBER, TLP:AMBER+STRICT or TLP:RED"
        );
        assert_eq!(
            err(|s| {
                s.allow_types = vec!["Indicator".into()];
                s.deny_types = vec!["indicator".into()];
            }),
            "`indicator` is in both `policy.allow_types` and `policy.deny_types`: keep it in one"
        );
        assert_eq!(
            err(|s| {
                s.require_labels = vec!["Share".into()];
                s.forbid_labels = vec!["share".into()];
            }),
            "`share` is in both `policy.require_labels` and `policy.forbid_labels`: keep it in one"
        );
        assert!(
            err(|s| s.allow_types = vec!["indicator".into(), " ".into()])
                .contains("`policy.allow_types` has an empty entry")
        );
        assert!(err(|s| s.deny_types = vec!["threat actor".into()])
            .contains("`threat actor` is not a STIX type"));
        assert!(err(|s| s.forbid_labels = vec!["".into()])
            .contains("`policy.forbid_labels` has an empty entry"));
        assert_eq!(UnknownMarking::parse(" Allow "), Ok(UnknownMarking::Allow));
        assert_eq!(UnknownMarking::parse("DENY"), Ok(UnknownMarking::Deny));
        assert_eq!(
            UnknownMarking::parse("maybe").unwrap_err(),
            "`maybe` is not a choice: use deny or allow"
        );
    }

    #[test]
    fn describe_gives_one_line_per_rule() {
        let p = policy(|s| {
            s.allow_types = strings(&["Indicator", "indicator", "malware"]);
            s.deny_types = strings(&["note"]);
            s.require_labels = strings(&["share"]);
            s.forbid_labels = strings(&["internal", "pii"]);
            s.tlp_ceiling = Some("amber".into());
        });
        assert!(p.is_active());
        assert_eq!(p.ceiling(), Some(Tlp::Amber));
        assert_eq!(
            p.describe(),
            "TLP ceiling: TLP:AMBER; objects marked above it (themselves, attached files or relationship ends) are held back\n\
             unknown marking: deny; objects whose TLP level cannot be determined are held back\n\
             types exported: only `indicator`, `malware`\n\
             types held back: `note`\n\
             labels held back: any of `internal`, `pii`\n\
             labels required: at least one of `share`"
        );
        let p = ceiling("TLP:RED", UnknownMarking::Allow);
        assert_eq!(p.describe().lines().count(), 2);
        assert!(p.describe().contains("unknown marking: allow"));
    }

    #[test]
    fn reasons_have_stable_labels() {
        let labels: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "type_not_allowed",
                "type_denied",
                "missing_label",
                "forbidden_label",
                "above_ceiling",
                "unknown_marking"
            ]
        );
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert!(!r.to_string().is_empty());
        }
    }

    /// The `data` object of each data event of the golden transcript.
    fn golden_data() -> Vec<String> {
        #[derive(Deserialize)]
        struct Event<'a> {
            #[serde(borrow)]
            data: &'a RawValue,
        }
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/reference-golden/stream.sse"
        );
        let text = std::fs::read_to_string(path).expect("golden transcript");
        let mut out = Vec::new();
        let mut event = "";
        for line in text.lines() {
            if let Some(e) = line.strip_prefix("event: ") {
                event = e;
            } else if let Some(d) = line.strip_prefix("data: ") {
                if crate::transform::DATA_EVENTS.contains(&event) {
                    let e: Event = serde_json::from_str(d).unwrap();
                    out.push(e.data.get().to_string());
                }
            }
        }
        out
    }

    #[test]
    fn golden_transcript_under_a_green_ceiling() {
        let data = golden_data();
        assert_eq!(data.len(), 120);
        let p = ceiling("TLP:GREEN", UnknownMarking::Deny);
        let held: Vec<Verdict> = data
            .iter()
            .map(|d| p.judge(d))
            .filter(|v| !v.is_export())
            .collect();
        // 30 objects marked AMBER, and one relationship whose source is.
        let amber = data.iter().filter(|d| d.contains(AMBER)).count();
        assert_eq!(amber, 31);
        assert_eq!(held.len(), amber);
        assert!(held
            .iter()
            .all(|v| *v == Verdict::Hold(Reason::AboveCeiling)));
        // Every object there is marked with a built-in TLP: a CLEAR ceiling
        // keeps those that mention no other level, object or ends.
        let p = ceiling("TLP:CLEAR", UnknownMarking::Deny);
        let higher = |d: &str| {
            [GREEN, AMBER, AMBER_STRICT, RED]
                .iter()
                .any(|m| d.contains(m))
        };
        for d in &data {
            let want = if higher(d) {
                Verdict::Hold(Reason::AboveCeiling)
            } else {
                Verdict::Export
            };
            assert_eq!(p.judge(d), want, "{d}");
        }
        // Labels: observables carry theirs in the extension.
        let p = policy(|s| s.require_labels = strings(&["espionage"]));
        let kept = data.iter().filter(|d| p.judge(d).is_export()).count();
        assert!(kept > 0 && kept < data.len());
    }
}
