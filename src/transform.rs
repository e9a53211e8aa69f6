//! Event → output line: the exporter's only change to what OpenCTI sent.
//!
//! The line is the event's `data:` JSON with `id` set to the SSE id, `type`
//! set to the SSE event name, `previous_standard` added for an `update` whose
//! `context.reverse_patch` has exactly one `/id` operation, and the content of
//! attached files filled in (PROTOCOL.md §4–5). Every other byte of the
//! payload is copied as received: the top-level object is split into raw
//! values and spliced back, so nothing is re-serialised unless files must be
//! filled in or the payload spans several lines.
//!
//! Anything that cannot become a line (not UTF-8, not JSON, no `data`
//! object, no usable id, oversized) is a [`Reject`] with a reason: the
//! pipeline keeps it aside as a dead letter. Fetching files goes through the
//! [`FileFetcher`] trait so this module does no I/O of its own; contents
//! arrive already base64-encoded and are copied once, into the line.
//!
//! No line exceeds `output.max_line_bytes`: a file whose content would take
//! it past the limit is exported without `data` and handed back in
//! [`Line::kept`], for the pipeline to keep aside; an event too long by
//! itself is a [`Reject`].

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::fetch::{FileContent, FileOutcome, Hold};
use crate::id::EventId;
use crate::policy::{Policy, Reason, Verdict};

/// OpenCTI's extension, where files are listed first.
pub(crate) const EXT_OPENCTI: &str = "extension-definition--ea279b3e-5c71-4632-ac08-831c66a786ba";
/// OpenCTI's secondary extension, read when the first has no `files`.
pub(crate) const EXT_OPENCTI_SDO: &str =
    "extension-definition--f93e2c80-4231-4f9a-af8b-95c9bd566a82";

/// SSE event names that carry data and become lines.
pub(crate) const DATA_EVENTS: [&str; 4] = ["create", "update", "delete", "merge"];

/// Gives the attached files of an event, in the order they are listed.
pub(crate) trait FileFetcher {
    /// The file at `uri`, exactly as the event writes it (the fetcher only
    /// ever asks the configured OpenCTI, see [`crate::fetch::storage_path`]).
    fn fetch(&self, uri: &str) -> FileOutcome;

    /// Charges `bytes` (a line about to be built from fetched contents) to
    /// the memory budget the contents were charged to, waiting for room;
    /// `None` when there is no budget.
    fn reserve(&self, _bytes: usize) -> Option<Hold> {
        None
    }
}

/// A fetcher for deployments and tests without files: always fails.
pub(crate) struct NoFiles;

impl FileFetcher for NoFiles {
    fn fetch(&self, uri: &str) -> FileOutcome {
        FileOutcome::Failed {
            reason: format!("file fetching is disabled (`{uri}`)"),
            kept: None,
        }
    }
}

/// An attached file exported without its content, whose received bytes are
/// kept aside (beside the dead letters) so that nothing is lost.
#[derive(Debug)]
pub(crate) struct KeptFile {
    /// The uri as the event writes it.
    pub(crate) uri: String,
    /// Why the content is not in the line.
    pub(crate) reason: String,
    /// What was received.
    pub(crate) content: FileContent,
}

/// A line ready for a batch, with what the transform noticed on the way.
#[derive(Debug)]
pub(crate) struct Line {
    /// The JSON line, ending with `\n`.
    pub(crate) bytes: Vec<u8>,
    /// Attached files that could not be fetched (their entries keep no `data`).
    pub(crate) files_failed: u32,
    /// Files left out of the line whose bytes must be kept aside.
    pub(crate) kept: Vec<KeptFile>,
    /// The fetch budget the contents in the line were charged to: held
    /// until the line has left the pipeline's queues.
    pub(crate) holds: Vec<Hold>,
}

/// Why an event could not become a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reject {
    /// One lowercase sentence, for the dead-letter record and the log.
    pub(crate) reason: String,
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

fn reject(reason: impl Into<String>) -> Reject {
    Reject {
        reason: reason.into(),
    }
}

/// What became of a data event.
#[derive(Debug)]
pub(crate) enum Transformed {
    /// A line for the file.
    Line(Line),
    /// Held back by the export policy: no line, but its id is consumed.
    Held(Reason),
}

/// The export policy's verdict on an event's fields.
fn judge(event: &str, fields: &[(Cow<'_, str>, &RawValue)], policy: &Policy) -> Option<Reason> {
    if !policy.is_active() {
        return None;
    }
    let data_raw = fields
        .iter()
        .find(|(k, _)| k == "data")
        .map(|(_, v)| v.get())
        .unwrap_or("null");
    let sources: Vec<&RawValue> = if event == "merge" {
        fields
            .iter()
            .find(|(k, _)| k == "context")
            .and_then(|(_, v)| serde_json::from_str::<MergeContext>(v.get()).ok())
            .map(|c| c.sources)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    match policy.judge_all(std::iter::once(data_raw).chain(sources.iter().map(|s| s.get()))) {
        Verdict::Hold(reason) => Some(reason),
        _ => None,
    }
}

/// The uris of the attached files [`transform_with_policy`] will ask
/// `files` for, in the same order: what the fetch stage fetches ahead.
/// Empty for an event the policy holds back or that cannot become a line.
pub(crate) fn files_to_fetch(event: &str, data: &[u8], policy: &Policy) -> Vec<String> {
    if memchr::memmem::find(data, b"\"files\"").is_none() {
        return Vec::new();
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return Vec::new();
    };
    let Ok(fields) = parse_top_level(text) else {
        return Vec::new();
    };
    if judge(event, &fields, policy).is_some() {
        return Vec::new();
    }
    let Some((_, data_raw)) = fields.iter().find(|(k, _)| k == "data") else {
        return Vec::new();
    };
    if memchr::memmem::find(data_raw.get().as_bytes(), b"\"files\"").is_none() {
        return Vec::new();
    }
    if let Some(uris) = fetchable_uris(data_raw.get()) {
        return uris;
    }
    // Not in the usual shape (a duplicate key, a list that is not one):
    // the whole object decides, as it does for the line.
    let Ok(mut value) = serde_json::from_str::<Value>(data_raw.get()) else {
        return Vec::new();
    };
    let Some(entries) = files_list_mut(&mut value).and_then(Value::as_array_mut) else {
        return Vec::new();
    };
    entries
        .iter_mut()
        .filter_map(fetchable)
        .map(|obj| {
            obj.get("uri")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

/// The uris of the files to fetch in `data` (a STIX object), read without
/// building it: the list [`files_list_mut`] picks, and in it the objects
/// without inline content. `None` when the object is not in the usual
/// shape (a duplicate key, an extension or a list entry that is not an
/// object, a list that is not one): the caller then builds it.
fn fetchable_uris(data: &str) -> Option<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Data<'a> {
        #[serde(borrow, default, deserialize_with = "present")]
        extensions: Option<&'a RawValue>,
        #[serde(borrow, default, deserialize_with = "present")]
        files: Option<&'a RawValue>,
    }
    #[derive(serde::Deserialize)]
    struct Extension<'a> {
        #[serde(borrow, default, deserialize_with = "present")]
        files: Option<&'a RawValue>,
    }
    #[derive(serde::Deserialize)]
    struct Entry<'a> {
        #[serde(borrow, default, deserialize_with = "present")]
        data: Option<&'a RawValue>,
        #[serde(borrow, default, deserialize_with = "present")]
        uri: Option<&'a RawValue>,
    }
    let data: Data = serde_json::from_str(data).ok()?;
    let mut list = None;
    if let Some(ext) = data.extensions {
        let ext: std::collections::HashMap<String, &RawValue> =
            serde_json::from_str(ext.get()).ok()?;
        for one in [EXT_OPENCTI, EXT_OPENCTI_SDO]
            .into_iter()
            .filter_map(|k| ext.get(k))
        {
            let one: Extension = serde_json::from_str(one.get()).ok()?;
            if one.files.is_some() {
                list = one.files;
                break;
            }
        }
    }
    let Some(list) = list.or(data.files) else {
        return Some(Vec::new());
    };
    let entries: Vec<&RawValue> = serde_json::from_str(list.get()).ok()?;
    let mut uris = Vec::new();
    for entry in entries {
        let entry: Entry = serde_json::from_str(entry.get()).ok()?;
        if entry.data.is_some_and(|d| d.get() != "null") {
            continue; // newer servers send the content inline
        }
        let uri = entry
            .uri
            .and_then(|u| serde_json::from_str::<String>(u.get()).ok())
            .unwrap_or_default();
        uris.push(uri);
    }
    Some(uris)
}

/// A member that is there, whatever its value (`null` included): what
/// `Value::get` finds.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue as serde::Deserialize>::deserialize(d).map(Some)
}

/// The entry as an object whose content is to be fetched: not inline.
fn fetchable(entry: &mut Value) -> Option<&mut serde_json::Map<String, Value>> {
    let obj = entry.as_object_mut()?;
    if obj.get("data").is_some_and(|d| !d.is_null()) {
        return None; // newer servers send the content inline
    }
    Some(obj)
}

/// Turns one data event into its output line, unless `policy` holds it back
/// (judged before any attached file is fetched).
///
/// `id` is the SSE id (already checked by the caller to be `<ms>-<seq>`),
/// `event` the SSE event name (one of [`DATA_EVENTS`]), `data` the raw bytes.
/// No line is longer than `max_line` bytes (`output.max_line_bytes`, the
/// newline included): a file that would take it past that is left out (and
/// kept aside); an event over it by itself is a [`Reject`].
pub(crate) fn transform_with_policy(
    id: &EventId,
    event: &str,
    data: &[u8],
    files: &dyn FileFetcher,
    policy: &Policy,
    max_line: usize,
) -> Result<Transformed, Reject> {
    let text = std::str::from_utf8(data)
        .map_err(|e| reject(format!("event data is not valid UTF-8 ({e})")))?;
    let fields = parse_top_level(text)?;
    if let Some(reason) = judge(event, &fields, policy) {
        return Ok(Transformed::Held(reason));
    }
    // Only what is copied raw from the event can hold a line break (what
    // the line adds is escaped or base64): one look at the event will do.
    let breaks = memchr::memchr2(b'\n', b'\r', data).is_some();
    build_line(id, event, data.len(), breaks, fields, files, max_line).map(Transformed::Line)
}

#[derive(serde::Deserialize)]
struct MergeContext<'a> {
    #[serde(borrow, default)]
    sources: Vec<&'a RawValue>,
}

/// Turns one data event into its output line (no export policy, no line limit).
#[cfg(test)]
pub(crate) fn transform(
    id: &EventId,
    event: &str,
    data: &[u8],
    files: &dyn FileFetcher,
) -> Result<Line, Reject> {
    match transform_with_policy(id, event, data, files, &Policy::export_all(), usize::MAX)? {
        Transformed::Line(line) => Ok(line),
        Transformed::Held(_) => unreachable!("an inactive policy holds nothing back"),
    }
}

/// Bytes a line with files may need beyond its payload and file contents:
/// the `id`, `type` and `previous_standard` members, the second copy of the
/// file list and the newline, with room to spare.
const LINE_SLACK: usize = 1024;

/// Bytes a line without files may need beyond the event's length: the `id`
/// (up to 41 characters) and `type` members with their punctuation, and the
/// newline; `previous_standard` is counted apart.
const MEMBERS_SLACK: usize = 96;

fn build_line(
    id: &EventId,
    event: &str,
    data_len: usize,
    breaks: bool,
    fields: Vec<(Cow<'_, str>, &RawValue)>,
    files: &dyn FileFetcher,
    max_line: usize,
) -> Result<Line, Reject> {
    let mut data_raw: Option<&RawValue> = None;
    let mut context_raw: Option<&RawValue> = None;
    for (key, value) in &fields {
        match key.as_ref() {
            "data" => data_raw = Some(value),
            "context" => context_raw = Some(value),
            _ => {}
        }
    }
    let data_raw = data_raw.ok_or_else(|| reject("event has no `data` field"))?;
    if !data_raw.get().starts_with('{') {
        return Err(reject("event `data` is not a JSON object"));
    }

    let previous_standard = if event == "update" {
        previous_standard(id, context_raw)
    } else {
        None
    };

    // Files are rare: look for the word before parsing the STIX object.
    let mut filled = None;
    let mut files_failed = 0;
    let mut kept = Vec::new();
    if memchr::memmem::find(data_raw.get().as_bytes(), b"\"files\"").is_some() {
        let mut value: Value = serde_json::from_str(data_raw.get())
            .map_err(|e| reject(format!("event `data` is not valid JSON ({e})")))?;
        let f = fill_files(id, &mut value, files, data_len, max_line);
        files_failed = f.failed;
        kept = f.kept;
        if f.listed {
            filled = Some((value, f.contents));
        }
    }
    let contents_len: usize = filled
        .as_ref()
        .map(|(_, c)| c.iter().map(|c| 2 * (c.base64().len() + 2)).sum())
        .unwrap_or(0);

    // One buffer, sized once: the contents are copied into it and nowhere
    // else. With contents, it is charged to their budget first (each
    // content's own charge goes once it is copied for the last time).
    let capacity = if filled.is_some() {
        data_len + contents_len + LINE_SLACK
    } else {
        data_len + MEMBERS_SLACK + event.len() + previous_standard.as_ref().map_or(0, String::len)
    };
    let mut holds = Vec::new();
    if contents_len > 0 {
        holds.extend(files.reserve(capacity));
    }
    let mut out = Vec::with_capacity(capacity);
    out.push(b'{');
    let mut first = true;
    let mut wrote_type = false;
    for (key, value) in &fields {
        match key.as_ref() {
            "id" => continue,
            "previous_standard" if previous_standard.is_some() => continue,
            "type" => {
                if wrote_type {
                    continue;
                }
                wrote_type = true;
                push_key(&mut out, &mut first, "type");
                push_json_str(&mut out, event);
            }
            "data" => {
                push_key(&mut out, &mut first, key);
                match &mut filled {
                    Some((value, contents)) => {
                        write_with_contents(&mut out, value, std::mem::take(contents))
                    }
                    None => out.extend_from_slice(value.get().as_bytes()),
                }
            }
            _ => {
                push_key(&mut out, &mut first, key);
                out.extend_from_slice(value.get().as_bytes());
            }
        }
    }
    push_key(&mut out, &mut first, "id");
    id.write_json(&mut out);
    if !wrote_type {
        push_key(&mut out, &mut first, "type");
        push_json_str(&mut out, event);
    }
    if let Some(prev) = previous_standard {
        push_key(&mut out, &mut first, "previous_standard");
        out.extend_from_slice(prev.as_bytes());
    }
    out.push(b'}');
    if breaks && memchr::memchr2(b'\n', b'\r', &out).is_some() {
        // Raw line breaks can only be insignificant whitespace between JSON
        // tokens; they would split the line, so re-serialise compactly.
        let value: Value = serde_json::from_slice(&out).expect("spliced line is valid JSON");
        out = serde_json::to_vec(&value).expect("a JSON value serialises");
    }
    out.push(b'\n');
    if out.len() > max_line {
        return Err(reject(format!(
            "its line of {} bytes exceeds `output.max_line_bytes` ({max_line})",
            out.len()
        )));
    }
    // The line waits in the pipeline's window with many others: give back
    // the slack of a line with files (shrinking in place costs no copy);
    // the others were sized within a few bytes.
    if filled.is_some() {
        out.shrink_to_fit();
    }
    Ok(Line {
        bytes: out,
        files_failed,
        kept,
        holds,
    })
}

fn push_key(out: &mut Vec<u8>, first: &mut bool, key: &str) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    push_json_str(out, key);
    out.push(b':');
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        // Nothing to escape (the usual key): as it is, between quotes.
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
    }
}

/// The raw JSON of the single `/id` op's value in `context.reverse_patch`.
fn previous_standard(id: &EventId, context: Option<&RawValue>) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Context<'a> {
        #[serde(borrow, default)]
        reverse_patch: Option<IdOps<'a>>,
    }
    let context = context?;
    let parsed: Context = match serde_json::from_str(context.get()) {
        Ok(c) => c,
        Err(e) => {
            log::warn!(
                "event `{id}`: `context` is not in the expected form ({e}); no `previous_standard`"
            );
            return None;
        }
    };
    let ops = parsed.reverse_patch.unwrap_or_default();
    match ops.count {
        0 => None,
        1 => ops.first.map(|v| v.get().to_string()),
        n => {
            log::warn!(
                "event `{id}`: {n} reverse-patch operations on `/id`; no `previous_standard` set"
            );
            None
        }
    }
}

/// The operations on `/id` of a reverse patch, counted as they are read
/// (no list is built): how many, and the value of the first.
#[derive(Default)]
struct IdOps<'a> {
    count: usize,
    first: Option<&'a RawValue>,
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for IdOps<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        struct Op<'a> {
            #[serde(borrow, default)]
            path: Option<Cow<'a, str>>,
            #[serde(borrow, default)]
            value: Option<&'a RawValue>,
        }
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = IdOps<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of patch operations")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<IdOps<'a>, A::Error> {
                let mut ops = IdOps::default();
                while let Some(op) = seq.next_element::<Op<'de>>()? {
                    if op.path.as_deref() == Some("/id") {
                        ops.count += 1;
                        if ops.count == 1 {
                            ops.first = op.value;
                        }
                    }
                }
                Ok(ops)
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

/// Marks the place of the `n`-th file content in a serialised value. The
/// control character is escaped by the serialiser as `\u0001`, which no
/// STIX producer writes, and the count of each mark is checked.
fn content_mark(n: usize) -> String {
    format!("\u{1}opencti-stream-exporter-file-{n}")
}

/// Serialises `data` into `out`, writing each file's base64 content where
/// its mark stands: base64 needs no escaping, so the contents (the bulk of
/// such an event) are copied once, straight into the line, instead of being
/// scanned by the serialiser. Each content is dropped (and its memory given
/// back to the fetch budget) as soon as it is written for the last time.
fn write_with_contents(out: &mut Vec<u8>, data: &Value, contents: Vec<FileContent>) {
    let text = serde_json::to_string(data).expect("a JSON value serialises");
    if contents.is_empty() {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    let marks: Vec<String> = (0..contents.len())
        .map(|n| serde_json::to_string(&content_mark(n)).expect("a string serialises"))
        .collect();
    // Each mark stands twice (the extension's list and `data.files`): the
    // content goes out of memory after its last place.
    let mut left: Vec<usize> = marks
        .iter()
        .map(|m| text.matches(m.as_str()).count())
        .collect();
    let mut contents: Vec<Option<FileContent>> = contents.into_iter().map(Some).collect();
    let mut rest = text.as_str();
    loop {
        let next = marks
            .iter()
            .enumerate()
            .filter_map(|(n, m)| rest.find(m.as_str()).map(|pos| (pos, n, m.len())))
            .min();
        let Some((pos, n, len)) = next else { break };
        out.extend_from_slice(&rest.as_bytes()[..pos]);
        out.push(b'"');
        if let Some(c) = &contents[n] {
            out.extend_from_slice(c.base64());
        }
        out.push(b'"');
        left[n] -= 1;
        if left[n] == 0 {
            contents[n] = None;
        }
        rest = &rest[pos + len..];
    }
    out.extend_from_slice(rest.as_bytes());
}

/// What [`fill_files`] did.
struct Filled {
    /// A files list was found (the line carries `data.files`).
    listed: bool,
    fetched: u32,
    failed: u32,
    /// Contents in mark order.
    contents: Vec<FileContent>,
    kept: Vec<KeptFile>,
}

/// Fills `data` of each attached file with a mark (see [`content_mark`])
/// and collects the contents; a content that would take the line past
/// `max_line` is left out and kept aside.
fn fill_files(
    id: &EventId,
    data: &mut Value,
    files: &dyn FileFetcher,
    data_len: usize,
    max_line: usize,
) -> Filled {
    let mut out = Filled {
        listed: false,
        fetched: 0,
        failed: 0,
        contents: Vec::new(),
        kept: Vec::new(),
    };
    let Some(list) = files_list_mut(data) else {
        return out;
    };
    let Some(entries) = list.as_array_mut() else {
        return out;
    };
    if entries.is_empty() {
        return out;
    }
    // The line holds the payload, a second copy of the list (without the
    // contents), and each content twice.
    let list_len = serde_json::to_string(&*entries)
        .map(|s| s.len())
        .unwrap_or(0);
    let mut line_len = data_len.saturating_add(list_len).saturating_add(LINE_SLACK);
    // An event (nearly) over the limit by itself: its files are not waited
    // for; it most likely becomes a dead letter as a whole.
    let no_room = line_len > max_line;
    for entry in entries.iter_mut() {
        let Some(obj) = fetchable(entry) else {
            continue;
        };
        let uri = obj
            .get("uri")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let outcome = if no_room {
            FileOutcome::Failed {
                reason: format!(
                    "the event alone is about as long as `output.max_line_bytes` ({max_line})"
                ),
                kept: None,
            }
        } else {
            files.fetch(&uri)
        };
        match outcome {
            FileOutcome::Fetched(content) => {
                let need = 2 * (content.base64().len() + 2);
                if line_len.saturating_add(need) > max_line {
                    let reason = format!(
                        "its {} bytes would take the line past `output.max_line_bytes` ({max_line})",
                        content.size()
                    );
                    log::warn!("event `{id}`: attached file `{uri}` exported without content: {reason}; its bytes are kept aside");
                    out.failed += 1;
                    out.kept.push(KeptFile {
                        uri,
                        reason,
                        content,
                    });
                    continue;
                }
                line_len += need;
                obj.insert(
                    "data".to_string(),
                    Value::String(content_mark(out.contents.len())),
                );
                out.contents.push(content);
                out.fetched += 1;
            }
            FileOutcome::Failed { reason, kept } => {
                out.failed += 1;
                match kept {
                    Some(content) => {
                        log::warn!("event `{id}`: attached file `{uri}` exported without content: {reason}; the {} bytes received are kept aside", content.size());
                        out.kept.push(KeptFile {
                            uri,
                            reason,
                            content,
                        });
                    }
                    None => log::warn!(
                        "event `{id}`: attached file `{uri}` could not be fetched ({reason}); exported without content"
                    ),
                }
            }
        }
    }
    out.listed = true;
    let copy = list.clone();
    data.as_object_mut()
        .expect("data is an object")
        .insert("files".to_string(), copy);
    out
}

/// The files list the way pycti's `get_attribute_in_extension` finds it.
fn files_list_mut(data: &mut Value) -> Option<&mut Value> {
    let has = |data: &Value, ext: &str| {
        data.get("extensions")
            .and_then(|e| e.get(ext))
            .and_then(|x| x.get("files"))
            .is_some()
    };
    if has(data, EXT_OPENCTI) {
        return data
            .get_mut("extensions")?
            .get_mut(EXT_OPENCTI)?
            .get_mut("files");
    }
    if has(data, EXT_OPENCTI_SDO) {
        return data
            .get_mut("extensions")?
            .get_mut(EXT_OPENCTI_SDO)?
            .get_mut("files");
    }
    data.get_mut("files")
}

/// A JSON object key that borrows from the input when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The top-level object as (key, raw value) pairs, in order.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut fields = Vec::with_capacity(8);
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    fields.push((key.0, value));
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(V)
    }
}

fn parse_top_level(text: &str) -> Result<Vec<(Cow<'_, str>, &RawValue)>, Reject> {
    serde_json::from_str::<Fields>(text)
        .map(|f| f.0)
        .map_err(|e| reject(format!("event data is not a JSON object ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct MapFetcher(HashMap<String, Vec<u8>>);

    impl FileFetcher for MapFetcher {
        fn fetch(&self, uri: &str) -> FileOutcome {
            let got = crate::fetch::storage_path(uri).and_then(|p| {
                self.0
                    .get(&p)
                    .map(|b| FileContent::from_bytes(b))
                    .ok_or_else(|| "404".to_string())
            });
            match got {
                Ok(c) => FileOutcome::Fetched(c),
                Err(reason) => FileOutcome::Failed { reason, kept: None },
            }
        }
    }

    /// The uris the whole object gives (what the line is built from).
    fn uris_from_value(data: &str) -> Vec<String> {
        let mut value: Value = serde_json::from_str(data).unwrap();
        files_list_mut(&mut value)
            .and_then(Value::as_array_mut)
            .map(|entries| {
                entries
                    .iter_mut()
                    .filter_map(fetchable)
                    .map(|o| {
                        o.get("uri")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn strings_and_ids_are_written_as_the_serialiser_writes_them() {
        for s in [
            "type",
            "",
            "x_opencti_id",
            "caf\u{e9}",
            "a\"b",
            "back\\slash",
            "tab\there",
            "\u{7f}\u{1f}",
        ] {
            let mut out = Vec::new();
            push_json_str(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
        for i in [
            id("0-0"),
            id("1700000000000-42"),
            id("18446744073709551615-18446744073709551615"),
        ] {
            let mut out = Vec::new();
            i.write_json(&mut out);
            assert_eq!(out, serde_json::to_vec(&i.to_string()).unwrap());
        }
    }

    #[test]
    fn the_file_uris_read_ahead_are_the_ones_the_line_asks_for() {
        let ext = EXT_OPENCTI;
        let sdo = EXT_OPENCTI_SDO;
        let usual = [
            format!(r#"{{"extensions":{{"{ext}":{{"files":[{{"uri":"/storage/get/a"}},{{"uri":"/storage/get/b","data":null}}]}}}}}}"#),
            format!(r#"{{"extensions":{{"{sdo}":{{"files":[{{"uri":"/storage/get/c"}}]}}}},"files":[{{"uri":"x"}}]}}"#),
            format!(r#"{{"extensions":{{"{ext}":{{"id":"e"}},"{sdo}":{{"files":[{{"uri":"/storage/get/d"}}]}}}}}}"#),
            r#"{"name":"r","files":[{"uri":"/storage/get/e","data":"aW5saW5l"},{"uri":7},{"name":"no uri"}]}"#.to_string(),
            r#"{"files":[{"uri":"/storage/get/café"}],"other":{"files":[{"uri":"nested"}]}}"#.to_string(),
            r#"{"name":"no files here"}"#.to_string(),
            // The same extension twice: the last one counts, as in a map.
            format!(r#"{{"extensions":{{"{ext}":{{"files":[{{"uri":"first"}}]}},"{ext}":{{"files":[{{"uri":"last"}}]}}}}}}"#),
        ];
        for data in &usual {
            let fast = fetchable_uris(data).unwrap_or_else(|| panic!("usual shape: {data}"));
            assert_eq!(fast, uris_from_value(data), "{data}");
        }
        assert_eq!(
            fetchable_uris(&usual[0]).unwrap(),
            ["/storage/get/a", "/storage/get/b"]
        );
        // Unusual shapes are left to the whole object.
        for data in [
            r#"{"files":[{"uri":"a"}],"files":[{"uri":"b"}]}"#.to_string(),
            r#"{"files":["not an object",{"uri":"a"}]}"#.to_string(),
            r#"{"extensions":null,"files":[{"uri":"a"}]}"#.to_string(),
            format!(r#"{{"extensions":{{"{ext}":"text"}},"files":[{{"uri":"a"}}]}}"#),
            r#"{"files":{"uri":"a"}}"#.to_string(),
            format!(
                r#"{{"extensions":{{"{ext}":{{"files":null}},"{sdo}":{{"files":[{{"uri":"s"}}]}}}}}}"#
            ),
        ] {
            assert_eq!(fetchable_uris(&data), None, "{data}");
            let policy = Policy::export_all();
            let event = format!(r#"{{"data":{data}}}"#);
            assert_eq!(
                files_to_fetch("create", event.as_bytes(), &policy),
                uris_from_value(&data),
                "{data}"
            );
        }
    }

    fn id(s: &str) -> EventId {
        s.parse().unwrap()
    }

    fn line(event: &str, data: &str) -> Value {
        let l = transform(&id("5-1"), event, data.as_bytes(), &NoFiles).unwrap();
        assert_eq!(*l.bytes.last().unwrap(), b'\n');
        assert_eq!(memchr::memchr(b'\n', &l.bytes), Some(l.bytes.len() - 1));
        serde_json::from_slice(&l.bytes).unwrap()
    }

    #[test]
    fn table_of_events() {
        let cases: &[(&str, &str, Value)] = &[
            (
                "create",
                r#"{"version":"4","type":"create","data":{"id":"x--1","type":"malware"}}"#,
                serde_json::json!({"version":"4","type":"create","data":{"id":"x--1","type":"malware"},"id":"5-1"}),
            ),
            (
                "update",
                r#"{"type":"update","data":{"id":"x--2"},"context":{"patch":[],"reverse_patch":[{"op":"replace","path":"/id","value":"x--old"}]}}"#,
                serde_json::json!({"type":"update","data":{"id":"x--2"},"context":{"patch":[],"reverse_patch":[{"op":"replace","path":"/id","value":"x--old"}]},"id":"5-1","previous_standard":"x--old"}),
            ),
            (
                "update",
                r#"{"type":"update","data":{"id":"x--2"},"context":{"reverse_patch":[{"op":"replace","path":"/name","value":"n"}]}}"#,
                serde_json::json!({"type":"update","data":{"id":"x--2"},"context":{"reverse_patch":[{"op":"replace","path":"/name","value":"n"}]},"id":"5-1"}),
            ),
            (
                "update",
                r#"{"type":"update","data":{},"context":{"reverse_patch":[{"path":"/id","value":"a"},{"path":"/id","value":"b"}]}}"#,
                serde_json::json!({"type":"update","data":{},"context":{"reverse_patch":[{"path":"/id","value":"a"},{"path":"/id","value":"b"}]},"id":"5-1"}),
            ),
            (
                "delete",
                r#"{"type":"update","data":{"id":"x--3"}}"#,
                serde_json::json!({"type":"delete","data":{"id":"x--3"},"id":"5-1"}),
            ),
            (
                "merge",
                r#"{"type":"merge","data":{"id":"x--4"},"context":{"sources":[{"id":"x--5"}]}}"#,
                serde_json::json!({"type":"merge","data":{"id":"x--4"},"context":{"sources":[{"id":"x--5"}]},"id":"5-1"}),
            ),
            (
                // Recovery payloads have no type: the SSE name is added.
                "create",
                r#"{"data":{"id":"x--6"},"message":"m","origin":{"referer":"init-create"},"version":"4"}"#,
                serde_json::json!({"data":{"id":"x--6"},"message":"m","origin":{"referer":"init-create"},"version":"4","id":"5-1","type":"create"}),
            ),
            (
                // A payload spread over several data lines.
                "create",
                "{\"type\":\"create\",\n\"data\":{\"id\":\"x--7\"}}",
                serde_json::json!({"type":"create","data":{"id":"x--7"},"id":"5-1"}),
            ),
            (
                // An `/id` reverse patch on a create is not looked at.
                "create",
                r#"{"data":{},"context":{"reverse_patch":[{"path":"/id","value":"a"}]}}"#,
                serde_json::json!({"data":{},"context":{"reverse_patch":[{"path":"/id","value":"a"}]},"id":"5-1","type":"create"}),
            ),
        ];
        for (event, data, want) in cases {
            assert_eq!(&line(event, data), want, "{event} {data}");
        }
    }

    #[test]
    fn keeps_payload_bytes_untouched_when_nothing_changes() {
        let data =
            r#"{"version":"4","type":"create","data":{"n":1.50,"s":"\u00e9"},"event_id":"x"}"#;
        let l = transform(&id("7-0"), "create", data.as_bytes(), &NoFiles).unwrap();
        assert_eq!(
            String::from_utf8(l.bytes).unwrap(),
            "{\"version\":\"4\",\"type\":\"create\",\"data\":{\"n\":1.50,\"s\":\"\\u00e9\"},\"event_id\":\"x\",\"id\":\"7-0\"}\n"
        );
    }

    #[test]
    fn fills_files_from_the_extension_and_copies_the_list() {
        let data = format!(
            r#"{{"data":{{"extensions":{{"{EXT_OPENCTI}":{{"files":[{{"name":"a b.txt","uri":"/storage/get/import/X/1/a b.txt"}},{{"name":"gone","uri":"/storage/get/import/X/1/gone"}},{{"name":"inline","uri":"unknown","data":"QQ=="}}]}}}}}}}}"#
        );
        let fetcher = MapFetcher(HashMap::from([(
            "storage/get/import/X/1/a b.txt".to_string(),
            b"hello".to_vec(),
        )]));
        let l = transform(&id("1-0"), "create", data.as_bytes(), &fetcher).unwrap();
        assert_eq!(l.files_failed, 1);
        let v: Value = serde_json::from_slice(&l.bytes).unwrap();
        let ext = &v["data"]["extensions"][EXT_OPENCTI]["files"];
        assert_eq!(ext[0]["data"], "aGVsbG8=");
        assert!(ext[1].get("data").is_none());
        assert_eq!(ext[2]["data"], "QQ==");
        assert_eq!(&v["data"]["files"], ext);
    }

    #[test]
    fn reads_files_from_the_sdo_extension_then_data() {
        let fetcher = MapFetcher(HashMap::from([(
            "storage/get/k".to_string(),
            b"z".to_vec(),
        )]));
        let sdo = format!(
            r#"{{"data":{{"extensions":{{"{EXT_OPENCTI_SDO}":{{"files":[{{"uri":"/storage/get/k"}}]}}}}}}}}"#
        );
        let v: Value = serde_json::from_slice(
            &transform(&id("1-0"), "create", sdo.as_bytes(), &fetcher)
                .unwrap()
                .bytes,
        )
        .unwrap();
        assert_eq!(
            v["data"]["extensions"][EXT_OPENCTI_SDO]["files"][0]["data"],
            "eg=="
        );
        assert_eq!(v["data"]["files"][0]["data"], "eg==");
        let plain = r#"{"data":{"files":[{"uri":"http://elsewhere/storage/get/k"}]}}"#;
        let v: Value = serde_json::from_slice(
            &transform(&id("1-0"), "create", plain.as_bytes(), &fetcher)
                .unwrap()
                .bytes,
        )
        .unwrap();
        assert_eq!(v["data"]["files"][0]["data"], "eg==");
    }

    #[test]
    fn empty_files_list_is_left_alone() {
        let data = r#"{"data":{"files":[]}}"#;
        let v = line("create", data);
        assert_eq!(v["data"]["files"], serde_json::json!([]));
    }

    #[test]
    fn rejects_what_cannot_become_a_line() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "not a JSON object"),
            (b"[1,2]", "not a JSON object"),
            (b"{\"data\":1}", "not a JSON object"),
            (b"{\"message\":\"no data\"}", "no `data` field"),
            (b"{\"data\":{}} trailing", "not a JSON object"),
            (b"{\"data\":{\"a\":\"\xff\"}}", "not valid UTF-8"),
            (b"{\"data\":{\"files\":[}}", "not a JSON object"),
        ];
        for (data, want) in cases {
            let err = transform(&id("1-0"), "create", data, &NoFiles).unwrap_err();
            assert!(
                err.reason.contains(want),
                "{:?}: {}",
                String::from_utf8_lossy(data),
                err.reason
            );
        }
    }

    /// Reads the golden files directory the way OpenCTI serves `/storage/get/`.
    struct GoldenFiles(std::path::PathBuf);

    impl FileFetcher for GoldenFiles {
        fn fetch(&self, uri: &str) -> FileOutcome {
            let path = crate::fetch::storage_path(uri).unwrap();
            let key = path.strip_prefix("storage/get/").unwrap();
            match std::fs::read(self.0.join(key)) {
                Ok(b) => FileOutcome::Fetched(FileContent::from_bytes(&b)),
                Err(e) => FileOutcome::Failed {
                    reason: e.to_string(),
                    kept: None,
                },
            }
        }
    }

    #[test]
    fn golden_transcript_gives_the_reference_lines() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/reference-golden");
        let transcript = std::fs::read(dir.join("stream.sse")).unwrap();
        let expected: Vec<Value> = std::fs::read_to_string(dir.join("expected.ndjson"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let files = GoldenFiles(dir.join("files"));
        let mut parser = crate::stream::sse::SseParser::new(1 << 24);
        let mut got = Vec::new();
        parser.feed(&transcript, &mut |m| {
            if DATA_EVENTS.contains(&m.event.as_str()) {
                let id: EventId = m.id.as_deref().unwrap().parse().unwrap();
                let line = transform(&id, &m.event, &m.data, &files).unwrap();
                assert_eq!(line.files_failed, 0);
                got.push(serde_json::from_slice::<Value>(&line.bytes).unwrap());
            }
        });
        assert_eq!(got.len(), expected.len());
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(g, e, "line {i} differs from the reference exporter's");
        }
    }
}
