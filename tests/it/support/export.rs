//! Reading back what the exporter wrote, and checking it the way the
//! stream-importer will: files in key order, numbered 1, 2, 3… with no gap,
//! every line one JSON value ending with a newline.

use std::fs;
use std::path::Path;

use super::seaweed::Seaweed;

/// The prefix the export files of `folder` live under (`folder/`, or nothing).
fn folder_prefix(folder: &str) -> String {
    let folder = folder.trim_matches('/');
    if folder.is_empty() {
        String::new()
    } else {
        format!("{folder}/")
    }
}

/// Parses one export file: every non-empty line must be JSON and end with a
/// newline. Panics naming `key` and the line otherwise.
pub fn parse_export_file(key: &str, content: &[u8]) -> Vec<serde_json::Value> {
    let text = std::str::from_utf8(content)
        .unwrap_or_else(|e| panic!("export file `{key}` is not UTF-8: {e}"));
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "export file `{key}` does not end with a newline; it ends with: {:?}",
        &text[text.len().saturating_sub(200)..]
    );
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).unwrap_or_else(|e| {
                panic!("export file `{key}` line {}: not JSON ({e}): {line}", i + 1)
            })
        })
        .collect()
}

/// Every object under `<folder>/` in `bucket`, in key order, with its parsed
/// lines.
pub fn read_export_lines_s3(
    weed: &Seaweed,
    bucket: &str,
    folder: &str,
) -> Vec<(String, Vec<serde_json::Value>)> {
    let s3 = weed.s3();
    let keys = s3
        .list_keys(bucket, &folder_prefix(folder))
        .unwrap_or_else(|e| panic!("{e:#}"));
    keys.into_iter()
        .map(|key| {
            let content = s3
                .get_object(bucket, &key)
                .unwrap_or_else(|e| panic!("{e:#}"));
            let lines = parse_export_file(&key, &content);
            (key, lines)
        })
        .collect()
}

/// Every `*.json` file under `<dir>/<folder>/`, recursively, in key order
/// (keys are paths relative to `dir` with `/`), with its parsed lines. Hidden
/// files (a name starting with `.`) are skipped: they are writes in progress.
pub fn read_export_lines_dir(dir: &Path, folder: &str) -> Vec<(String, Vec<serde_json::Value>)> {
    let prefix = folder_prefix(folder);
    let root = dir.join(&prefix);
    let mut keys = Vec::new();
    if root.exists() {
        collect_json_files(&root, &prefix, &mut keys);
    }
    keys.sort();
    keys.into_iter()
        .map(|key| {
            let content =
                fs::read(dir.join(&key)).unwrap_or_else(|e| panic!("cannot read `{key}`: {e}"));
            let lines = parse_export_file(&key, &content);
            (key, lines)
        })
        .collect()
}

fn collect_json_files(path: &Path, key_prefix: &str, keys: &mut Vec<String>) {
    let entries =
        fs::read_dir(path).unwrap_or_else(|e| panic!("cannot list `{}`: {e}", path.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("cannot list `{}`: {e}", path.display()));
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let file_type = entry.file_type().expect("file type");
        if file_type.is_dir() {
            collect_json_files(&entry.path(), &format!("{key_prefix}{name}/"), keys);
        } else if name.ends_with(".json") {
            keys.push(format!("{key_prefix}{name}"));
        }
    }
}

/// The file number the stream-importer reads from a key:
/// `int(key.split("_")[-1].split(".")[0])`. Panics if it is not a number.
pub fn file_number(key: &str) -> u64 {
    let last = key.rsplit('_').next().unwrap_or(key);
    let digits = last.split('.').next().unwrap_or(last);
    digits
        .parse()
        .unwrap_or_else(|e| panic!("key `{key}` has no file number (`{digits}`: {e})"))
}

/// Asserts what the stream-importer requires of a listing: in key (byte)
/// order, the file numbers are exactly 1, 2, …, N.
pub fn assert_importer_sequence<S: AsRef<str>>(keys: &[S]) {
    let mut sorted: Vec<&str> = keys.iter().map(|k| k.as_ref()).collect();
    sorted.sort_unstable();
    for (i, key) in sorted.iter().enumerate() {
        let expected = i as u64 + 1;
        let number = file_number(key);
        assert_eq!(
            number,
            expected,
            "the importer would stop at `{key}`: file number {number}, expected {expected}\n\
             keys in order:\n  {}",
            sorted.join("\n  ")
        );
    }
}
