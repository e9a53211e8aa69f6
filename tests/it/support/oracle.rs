//! The oracle: what the exporter must have written for what the simulator
//! sent, and the no-loss check every export test ends with.

use serde_json::Value;

use super::export::assert_importer_sequence;

const EXT: &str = "extension-definition--ea279b3e-5c71-4632-ac08-831c66a786ba";

/// What the exporter must write for one dumped event, file contents aside.
pub fn expected_line(dumped: &Value) -> Value {
    let mut line = dumped["data"].clone();
    line["id"] = dumped["id"].clone();
    line["type"] = dumped["event"].clone();
    if dumped["event"] == "update" {
        let ops: Vec<&Value> = line["context"]["reverse_patch"]
            .as_array()
            .map(|a| a.iter().filter(|op| op["path"] == "/id").collect())
            .unwrap_or_default();
        if ops.len() == 1 {
            line["previous_standard"] = ops[0]["value"].clone();
        }
    }
    normalise(line)
}

/// Drops attached-file contents (checked apart) so lines compare by the rest.
pub fn normalise(mut line: Value) -> Value {
    if let Some(data) = line.get_mut("data").and_then(Value::as_object_mut) {
        data.remove("files");
        if let Some(files) = data
            .get_mut("extensions")
            .and_then(|e| e.get_mut(EXT))
            .and_then(|x| x.get_mut("files"))
            .and_then(Value::as_array_mut)
        {
            for f in files {
                if let Some(f) = f.as_object_mut() {
                    f.remove("data");
                }
            }
        }
    }
    line
}

/// Checks that `got` holds every event of `dumped` (the simulator's own
/// record, `opencti-stream-sim dump`) in order, allowing replays of lines
/// already exported (a restart or a reconnect repeats at most the open id
/// group). Returns the number of replayed lines. Panics on any loss or
/// reordering.
pub fn assert_no_loss(got: &[Value], dumped: &[Value]) -> usize {
    let want: Vec<Value> = dumped.iter().map(expected_line).collect();
    let mut p = 0;
    let mut replayed = 0;
    for (i, line) in got.iter().enumerate() {
        let line = normalise(line.clone());
        if p < want.len() && line == want[p] {
            p += 1;
            continue;
        }
        let back = want[p.saturating_sub(64)..p]
            .iter()
            .rposition(|w| *w == line);
        assert!(
            back.is_some(),
            "exported line {i} (id {}) is neither the next expected event (id {}) nor a replay of a recent one",
            line["id"],
            want.get(p).map(|w| w["id"].to_string()).unwrap_or_else(|| "none: all were seen".into())
        );
        replayed += 1;
    }
    assert_eq!(
        p,
        want.len(),
        "events lost: only {p} of {} expected events were exported; next missing id {}",
        want.len(),
        want[p.min(want.len() - 1)]["id"]
    );
    replayed
}

/// The lines of an export, in the importer's order, after checking that
/// its files are numbered 1..N in key order.
pub fn all_lines(files: &[(String, Vec<Value>)]) -> Vec<Value> {
    let keys: Vec<&String> = files.iter().map(|(k, _)| k).collect();
    assert_importer_sequence(&keys);
    files.iter().flat_map(|(_, l)| l.iter().cloned()).collect()
}
