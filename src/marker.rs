//! The export's own record of where it stands, kept with the export.
//!
//! After each commit the committer writes a small JSON object beside the
//! data files: the next file number, the last key's millisecond, the cursor
//! of the last stored file and the export's identity. It lives at
//! `.opencti-stream-exporter/<folder>/marker.json` in the files' bucket (or
//! under the output root of the directory destination): outside the folder,
//! and not sharing the folder's name as a string prefix, so an importer that
//! lists the folder's prefix, recursively or not, never reads it. At
//! start-up it is one of the sources reconciled with the local state, so a
//! lost, reset or restored state never makes the numbering go back.
//!
//! Pure: (de)serialisation and key names only.

use serde::{Deserialize, Serialize};

/// The directory of the exporter's own objects in a bucket or output root.
pub const OWN_PREFIX: &str = ".opencti-stream-exporter";

/// What the marker records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// The export's identity: the same across restarts, restores and
    /// `state reset`, new for another state (a backfill) or a renumbering.
    pub export_id: String,
    /// The live stream exported.
    #[serde(default)]
    pub stream_id: Option<String>,
    /// The number the next file gets.
    pub next_file: u64,
    /// Millisecond stamp of the last key used.
    #[serde(default)]
    pub last_key_ms: u64,
    /// The cursor saved with the last stored file.
    #[serde(default)]
    pub cursor: Option<String>,
    /// The snapshot's end date while one is in progress.
    #[serde(default)]
    pub recover_until: Option<String>,
    /// When it was written (RFC 3339).
    #[serde(default)]
    pub updated_at: String,
}

impl Marker {
    /// The number of files the export has stored.
    pub fn file_count(&self) -> u64 {
        self.next_file.saturating_sub(1)
    }

    /// The JSON body of the marker object.
    pub fn to_body(&self) -> Vec<u8> {
        let mut body = serde_json::to_vec_pretty(self).expect("marker serialises");
        body.push(b'\n');
        body
    }

    /// Reads a marker body; the error says what is wrong.
    pub fn from_body(body: &[u8]) -> Result<Marker, String> {
        let m: Marker = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        if m.next_file == 0 {
            return Err("`next_file` is 0".into());
        }
        if let Some(c) = &m.cursor {
            c.parse::<crate::id::EventId>()
                .map_err(|e| format!("`cursor`: {e}"))?;
        }
        Ok(m)
    }
}

/// The key of the marker of `folder`.
pub fn marker_key(folder: &str) -> String {
    format!("{OWN_PREFIX}/{folder}/marker.json")
}

/// The key of the lease of `folder`.
pub fn lease_key(folder: &str) -> String {
    format!("{OWN_PREFIX}/{folder}/lease.json")
}

/// Whether the exporter's own keys for `folder` could be read by an
/// importer: one that lists `folder` as a string prefix, or every key that
/// sorts after it. They must sort before the folder's name.
pub fn collides_with_folder(folder: &str) -> bool {
    marker_key(folder).as_str() >= folder || lease_key(folder).as_str() >= folder
}

/// What keeps `folder` from being read alone by its importer: keys that
/// start with its name but lie outside it (an importer listing the string
/// prefix, recursively, reads them), and other exports' folders (from their
/// markers, `marker_keys`) that start with its name or whose name it starts
/// with. `prefixed_keys` are the keys that start with `folder`. Pure.
pub fn folder_clashes(
    folder: &str,
    prefixed_keys: &[String],
    marker_keys: &[String],
) -> Vec<String> {
    let inside = format!("{folder}/");
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for k in prefixed_keys {
        if k.starts_with(folder) && !k.starts_with(&inside) {
            let other = k.split('/').next().unwrap_or(k).to_string();
            if seen.insert(other.clone()) {
                out.push(format!(
                    "`{other}` (e.g. `{k}`) starts with this folder's name: an importer listing `{folder}` reads it too"
                ));
            }
        }
    }
    let own = format!("{OWN_PREFIX}/");
    for m in marker_keys {
        let Some(other) = m
            .strip_prefix(&own)
            .and_then(|r| r.strip_suffix("/marker.json"))
        else {
            continue;
        };
        if other == folder || seen.contains(other) {
            continue;
        }
        if other.starts_with(folder) {
            seen.insert(other.to_string());
            out.push(format!(
                "the export folder `{other}` starts with this folder's name: an importer listing `{folder}` reads its files too"
            ));
        } else if folder.starts_with(other) {
            seen.insert(other.to_string());
            out.push(format!(
                "this folder's name starts with the export folder `{other}`: that export's importer reads this folder's files too"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_out_of_the_folder_prefix() {
        for folder in ["opencti", "a/b", "opencti-backfill", "x"] {
            assert!(!marker_key(folder).starts_with(folder), "{folder}");
            assert!(!lease_key(folder).starts_with(folder), "{folder}");
            assert!(!collides_with_folder(folder));
        }
        assert!(collides_with_folder(".open"));
        assert!(collides_with_folder("-x"));
    }

    #[test]
    fn folders_that_share_a_name_prefix_are_found_both_ways() {
        let keys = vec![
            "opencti/stream_1_1.json".to_string(),
            "opencti-backfill/stream_1_1.json".to_string(),
            "opencti-backfill/stream_2_2.json".to_string(),
        ];
        let markers = vec![
            marker_key("opencti"),
            marker_key("opencti-backfill"),
            marker_key("open"),
            marker_key("other"),
        ];
        let c = folder_clashes("opencti", &keys, &markers);
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(c[0].contains("`opencti-backfill`"), "{c:?}");
        assert!(c[1].contains("`open`"), "{c:?}");
        assert!(folder_clashes("other", &[], &markers).is_empty());
        let c = folder_clashes("opencti-backfill", &keys[1..], &markers);
        assert!(
            c.iter()
                .any(|m| m.contains("starts with the export folder `opencti`")),
            "{c:?}"
        );
    }

    #[test]
    fn round_trips_and_refuses_nonsense() {
        let m = Marker {
            export_id: "e1".into(),
            stream_id: Some("live".into()),
            next_file: 8,
            last_key_ms: 1_700_000_000_000,
            cursor: Some("1700000000000-3".into()),
            recover_until: None,
            updated_at: String::new(),
        };
        assert_eq!(Marker::from_body(&m.to_body()).unwrap(), m);
        assert_eq!(m.file_count(), 7);
        assert!(Marker::from_body(b"{\"export_id\":\"e\",\"next_file\":0}").is_err());
        assert!(
            Marker::from_body(b"{\"export_id\":\"e\",\"next_file\":2,\"cursor\":\"x\"}").is_err()
        );
        assert!(Marker::from_body(b"[").is_err());
    }
}
