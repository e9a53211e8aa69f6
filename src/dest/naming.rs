//! Object keys the stream-importer can read: `<folder>/stream_<ms>_<N>.json`.
//!
//! The importer lists keys in order and requires N = 1, 2, 3, ... in that
//! order, so the 13-digit millisecond part must never go backwards, whatever
//! the wall clock does: [`next_key_ms`] takes `max(now, previous + 1)`. Pure.

/// The millisecond stamp for the next key: never below or equal to the previous one.
pub(crate) fn next_key_ms(now_ms: u64, previous_ms: u64) -> u64 {
    now_ms.max(previous_ms + 1)
}

/// The key of batch file `number` stamped `ms`.
pub(crate) fn object_key(folder: &str, ms: u64, number: u64) -> String {
    format!("{folder}/stream_{ms:013}_{number}.json")
}

/// The file number in a key, by the importer's own rule
/// (`int(key.split("_")[-1].split(".")[0])`).
pub(crate) fn file_number(key: &str) -> Option<u64> {
    key.rsplit('_').next()?.split('.').next()?.parse().ok()
}

/// The millisecond stamp of a key written by [`object_key`].
pub(crate) fn key_ms(key: &str) -> Option<u64> {
    let name = key.rsplit('/').next()?;
    name.strip_prefix("stream_")?
        .split('_')
        .next()?
        .parse()
        .ok()
}

/// The key of a dead letter: sortable by stream position, unique per run.
pub(crate) fn dead_letter_key(folder: &str, id: &str, received_ms: u64, seq: u64) -> String {
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    format!("{folder}/dead-letter/{received_ms:013}_{seq:010}_{safe}.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_order_when_the_clock_goes_backwards() {
        let clock = [
            1_718_446_500_000u64,
            1_718_446_499_000,
            1_718_446_499_000,
            1_718_446_600_000,
            5,
        ];
        let mut prev = 0;
        let mut keys = Vec::new();
        for (i, now) in clock.iter().enumerate() {
            prev = next_key_ms(*now, prev);
            keys.push(object_key("opencti", prev, i as u64 + 1));
        }
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        let numbers: Vec<u64> = keys.iter().map(|k| file_number(k).unwrap()).collect();
        assert_eq!(numbers, vec![1, 2, 3, 4, 5]);
        assert_eq!(keys[1], "opencti/stream_1718446500001_2.json");
    }

    #[test]
    fn importer_rule_reads_the_number() {
        assert_eq!(file_number("a_b/stream_1718446500000_42.json"), Some(42));
        assert_eq!(
            key_ms("x/y/stream_1718446500000_42.json"),
            Some(1_718_446_500_000)
        );
        assert_eq!(file_number("opencti/dead-letter/x.json"), None);
    }
}
