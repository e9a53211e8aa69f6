//! Files attached to simulated objects: their names, storage keys and bytes.
//!
//! A key is `import/<Entity-Type>/<internal id>/<name>`, the way OpenCTI names
//! uploaded files. The internal id of a pool object is reversible (see
//! [`crate::hash::permute62`]), so a key can be checked against the model
//! without keeping a table of every file: that keeps memory flat for any
//! history length. File bytes are a pure function of `(seed, key)`.

use crate::hash::{h, h2, mix, SplitMix};
use crate::model::{Model, Obj};

/// Content-type of each file extension the simulator uses.
const KINDS: [(&str, &str); 4] = [
    (".txt", "text/plain"),
    (".json", "application/json"),
    (".pdf", "application/pdf"),
    (".png", "image/png"),
];
const STEMS: [&str; 5] = [
    "analysis",
    "report",
    "sample-notes",
    "ioc-list",
    "screenshot",
];

const T_NFILES: u64 = 0xf11e_0001;
const T_FANCY: u64 = 0xf11e_0002;
const T_STEM: u64 = 0xf11e_0003;
const T_KIND: u64 = 0xf11e_0004;
const T_INLINE: u64 = 0xf11e_0005;
const T_BYTES: u64 = 0xf11e_0006;

const T_LARGE: u64 = 0xf11e_0007;

/// Entries `--hostile-uris` adds to every file list: `(name, uri)`. The first
/// four leave `/storage/get/` once decoded (`..`, `%2e%2e`, `%2f`, `\`) and
/// must never be requested; the fifth names no file (404); the sixth answers
/// a redirect to `/evil/redirected`, which must not be followed.
pub const HOSTILE_URIS: [(&str, &str); 6] = [
    ("dot-dot.pdf", "/storage/get/../../../evil/collect"),
    (
        "encoded-dots.pdf",
        "/storage/get/import/%2e%2e/%2E%2E/%2e%2e/evil/encoded",
    ),
    ("encoded-slash.pdf", "/storage/get/..%2f..%2fevil%2fslash"),
    (
        "backslash.pdf",
        "/storage/get/import\\..\\..\\evil\\backslash",
    ),
    ("gone.pdf", "/storage/get/import/Report/missing/gone.pdf"),
    ("moved.pdf", "/storage/get/redirect/moved.pdf"),
];

/// Where a file request for a `redirect/` key is sent.
pub const REDIRECT_TARGET: &str = "/evil/redirected";

/// Smallest and largest file size, bytes.
pub const MIN_FILE: usize = 1024;
pub const MAX_FILE: usize = 20 * 1024;

/// One entry of an object's file list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub name: String,
    pub mime: &'static str,
    /// The entry already carries its content as base64 (`uri: "unknown"`), as
    /// newer servers send it; it has no storage key to fetch.
    pub inline: bool,
}

/// The files of a pool object that carries files (empty otherwise).
pub fn entries(m: &Model, obj: &Obj) -> Vec<FileEntry> {
    if !obj.files {
        return Vec::new();
    }
    let seed = m.params().seed;
    let n = 1 + h(seed, T_NFILES, obj.key) % 2;
    // About 1 in 50 objects with files has a name with a space and non-ASCII
    // letters, which a client must percent-encode in the request path.
    let fancy = h(seed, T_FANCY, obj.key).is_multiple_of(50);
    (0..n)
        .map(|f| {
            let (name, mime) = if fancy && f == 0 {
                (format!("rapport été-{}.pdf", f + 1), "application/pdf")
            } else {
                let stem = STEMS[(h2(seed, T_STEM, obj.key, f) % STEMS.len() as u64) as usize];
                let (ext, mime) =
                    KINDS[(h2(seed, T_KIND, obj.key, f) % KINDS.len() as u64) as usize];
                (format!("{stem}-{}{ext}", f + 1), mime)
            };
            FileEntry {
                name,
                mime,
                inline: h2(seed, T_INLINE, obj.key, f).is_multiple_of(20),
            }
        })
        .collect()
}

/// The storage key of a file of `obj`.
pub fn key(obj: &Obj, name: &str) -> String {
    let mut id = Vec::with_capacity(36);
    crate::jsonw::uuid(&mut id, obj.iid.0, obj.iid.1);
    format!(
        "import/{}/{}/{}",
        obj.ty.entity,
        String::from_utf8(id).expect("ascii"),
        name
    )
}

fn key_hash(seed: u64, key: &str) -> u64 {
    let mut k = mix(seed ^ 0x6669_6c65);
    for &b in key.as_bytes() {
        k = mix(k ^ u64::from(b));
    }
    k
}

/// The bytes of the file stored under `key` (1 to 20 KiB).
pub fn content(seed: u64, key: &str) -> Vec<u8> {
    let k = key_hash(seed, key);
    let len = MIN_FILE + (h(seed, T_BYTES, k) % (MAX_FILE - MIN_FILE + 1) as u64) as usize;
    let mut out = Vec::with_capacity(len + 8);
    let mut rng = SplitMix::new(k);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Whether `key` is served as a large file (`--large-file-every`).
pub fn is_large(m: &Model, key: &str) -> bool {
    let p = m.params();
    p.large_file_every
        .is_some_and(|every| h(p.seed, T_LARGE, key_hash(p.seed, key)).is_multiple_of(every))
}

/// The size of the file served for `key`.
pub fn served_len(m: &Model, key: &str) -> u64 {
    if is_large(m, key) {
        m.params().large_file_bytes
    } else {
        content(m.params().seed, key).len() as u64
    }
}

/// Writes the bytes served for `key` to `w` as they are produced, `chunk`
/// bytes at a time (a large file is never held in memory); the first bytes
/// of a large file are those of [`content`].
pub fn write_served(
    m: &Model,
    key: &str,
    chunk: usize,
    w: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let len = served_len(m, key);
    let mut rng = SplitMix::new(key_hash(m.params().seed, key));
    // Produced 8 bytes at a time as in `content`, handed out `chunk` at a time.
    let block = (chunk.max(1).div_ceil(8) * 8).max(4096);
    let mut buf: Vec<u8> = Vec::with_capacity(block);
    let mut sent = 0u64;
    while sent < len {
        buf.clear();
        let want = (block as u64).min(len - sent) as usize;
        while buf.len() < want {
            buf.extend_from_slice(&rng.next_u64().to_le_bytes());
        }
        buf.truncate(want);
        for piece in buf.chunks(chunk.max(1)) {
            w(piece)?;
        }
        sent += want as u64;
    }
    Ok(())
}

/// Every byte served for `key` (for `dump --files` and tests).
pub fn served(m: &Model, key: &str) -> Vec<u8> {
    let mut out = Vec::new();
    write_served(m, key, 1 << 16, &mut |b| {
        out.extend_from_slice(b);
        Ok(())
    })
    .expect("writing to a Vec cannot fail");
    out
}

/// The bytes an inline entry (`uri: "unknown"`) carries for `key`: a prefix
/// of [`content`] of 256 B to 2 KiB, so such payloads stay moderate.
pub fn inline_content(seed: u64, key: &str) -> Vec<u8> {
    let mut bytes = content(seed, key);
    bytes.truncate(256 + (h(seed, T_BYTES ^ 1, bytes.len() as u64) % 1793) as usize);
    bytes
}

/// The bytes served for a storage key, or `None` if no object of the model
/// references that key (inline entries have no key).
#[cfg(test)]
pub fn lookup(m: &Model, key: &str) -> Option<Vec<u8>> {
    exists(m, key).then(|| served(m, key))
}

/// Whether some object of the model references `key` (not inline).
pub fn exists(m: &Model, key: &str) -> bool {
    exists_inner(m, key).is_some()
}

fn exists_inner(m: &Model, key: &str) -> Option<()> {
    let mut parts = key.splitn(4, '/');
    let (root, entity, id, name) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if root != "import" {
        return None;
    }
    let obj = m.object_by_internal_id(id)?;
    if obj.ty.entity != entity {
        return None;
    }
    entries(m, &obj)
        .iter()
        .find(|e| e.name == name && !e.inline)
        .map(|_| ())
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard padded base64, no line breaks.
pub fn base64(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(B64[(n >> 18) as usize & 63]);
        out.push(B64[(n >> 12) as usize & 63]);
        out.push(if chunk.len() > 1 {
            B64[(n >> 6) as usize & 63]
        } else {
            b'='
        });
        out.push(if chunk.len() > 2 {
            B64[n as usize & 63]
        } else {
            b'='
        });
    }
    String::from_utf8(out).expect("ascii")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Params;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, enc) in cases {
            assert_eq!(base64(plain.as_bytes()), enc);
        }
    }

    #[test]
    fn served_bytes_do_not_depend_on_the_chunk_size() {
        let m = Model::new(Params {
            files_ratio: 1.0,
            events: 50,
            large_file_every: Some(1),
            large_file_bytes: 100_003,
            ..Params::default()
        });
        let key = "import/Report/x/a.pdf";
        let whole = served(&m, key);
        assert_eq!(whole.len(), 100_003);
        assert_eq!(whole[..MIN_FILE], content(1, key)[..MIN_FILE]);
        let mut trickled = Vec::new();
        write_served(&m, key, 1, &mut |b| {
            trickled.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        assert!(trickled == whole);
    }

    #[test]
    fn content_is_deterministic_and_sized() {
        let a = content(1, "import/Report/x/a.pdf");
        assert_eq!(a, content(1, "import/Report/x/a.pdf"));
        assert_ne!(a, content(2, "import/Report/x/a.pdf"));
        assert_ne!(a, content(1, "import/Report/x/b.pdf"));
        for i in 0..200 {
            let len = content(7, &format!("k{i}")).len();
            assert!((MIN_FILE..=MAX_FILE).contains(&len), "{len}");
        }
    }

    #[test]
    fn every_referenced_key_is_served_and_others_are_not() {
        let m = Model::new(Params {
            files_ratio: 0.5,
            events: 3000,
            ..Params::default()
        });
        let mut served = 0;
        let mut fancy = 0;
        for k in 0..m.objects() {
            let obj = m.pool_object(k);
            for e in entries(&m, &obj) {
                let key = key(&obj, &e.name);
                let got = lookup(&m, &key);
                assert_eq!(got.is_some(), !e.inline, "{key}");
                if got.is_some() {
                    served += 1;
                }
                if e.name.contains(' ') {
                    fancy += 1;
                }
                let wrong_type = key.replacen("import/", "import/X", 1);
                assert!(lookup(&m, &wrong_type).is_none());
                let wrong_name = format!("{key}.bak");
                assert!(lookup(&m, &wrong_name).is_none());
            }
        }
        assert!(served > 300, "{served}");
        assert!(fancy > 0);
        assert!(lookup(&m, "import/Report/not-a-uuid/a.pdf").is_none());
        assert!(lookup(&m, "").is_none());
    }
}
