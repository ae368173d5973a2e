//! Reconciliation's pure core: a row's canonical text and hash, its
//! bucket, bucket digests, and the keys two sides disagree on.
//!
//! Both sides compute the same thing: the expected side in Rust from the
//! ministry's state as the subscription gives it, the actual side in the
//! province's database (PostgreSQL computes its digests itself, so only the
//! rows of differing buckets cross the network). A row's text is its
//! columns in the view's table order, each as PostgreSQL prints it (a
//! timestamp as milliseconds), `\N` for null, joined by U+001F.

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use crate::table::SqlValue;

/// How many buckets the keys fall into.
pub const BUCKETS: u32 = 1024;

/// The text of a null value in a row's text.
pub const NULL: &str = "\\N";

/// A value as it stands in a row's text.
pub fn value_text(v: &SqlValue) -> String {
    match v {
        SqlValue::Null => NULL.to_string(),
        SqlValue::Text(s) | SqlValue::Date(s) => s.clone(),
        SqlValue::Int(i) | SqlValue::Timestamp(i) => i.to_string(),
        SqlValue::Float(f) => f.to_string(),
        SqlValue::Bool(b) => b.to_string(),
    }
}

/// The SHA-256 (hex) of a row's text.
pub fn row_hash(values: &[SqlValue]) -> String {
    let text: Vec<String> = values.iter().map(value_text).collect();
    hex::encode(Sha256::digest(text.join("\u{1f}").as_bytes()))
}

/// The bucket of a key: the first four bytes of its SHA-256, modulo
/// `buckets`.
pub fn bucket_of(key: &str, buckets: u32) -> u32 {
    let h = Sha256::digest(key.as_bytes());
    u32::from_be_bytes([h[0], h[1], h[2], h[3]]) % buckets
}

/// A row's part of its bucket's digest: the first 60 bits of the SHA-256
/// of `key U+001F seq U+001F row hash`.
pub fn entry_value(key: &str, seq: i64, hash: &str) -> u64 {
    let h = Sha256::digest(format!("{key}\u{1f}{seq}\u{1f}{hash}").as_bytes());
    u64::from_str_radix(&hex::encode(&h[..8])[..15], 16).unwrap_or(0)
}

/// A bucket's digest: its rows, and the sum of their entries (order does
/// not matter, so both sides can sum in any order).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    /// Rows in the bucket.
    pub count: i64,
    /// The sum of their entries.
    pub sum: u128,
}

/// A row as reconciliation sees it: its sequence and its hash.
pub type Entry = (i64, String);

/// Bucket digests of `rows` (key → entry).
pub fn digests(rows: &BTreeMap<String, Entry>, buckets: u32) -> BTreeMap<u32, Digest> {
    let mut out: BTreeMap<u32, Digest> = BTreeMap::new();
    for (k, (seq, hash)) in rows {
        let d = out.entry(bucket_of(k, buckets)).or_default();
        d.count += 1;
        d.sum += u128::from(entry_value(k, *seq, hash));
    }
    out
}

/// The buckets whose digests differ.
pub fn differing(a: &BTreeMap<u32, Digest>, b: &BTreeMap<u32, Digest>) -> Vec<u32> {
    let mut all: Vec<u32> = a.keys().chain(b.keys()).copied().collect();
    all.sort_unstable();
    all.dedup();
    all.into_iter()
        .filter(|k| a.get(k).copied().unwrap_or_default() != b.get(k).copied().unwrap_or_default())
        .collect()
}

/// What the two sides disagree on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Findings {
    /// Keys the subscription should hold and the table does not.
    pub missing: Vec<String>,
    /// Keys the table holds and the subscription should not.
    pub extra: Vec<String>,
    /// Keys both hold, with another sequence or other values in the table.
    pub stale: Vec<String>,
}

impl Findings {
    /// Whether the sides agree.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.stale.is_empty()
    }
}

/// A row as the table holds it: its sequence, hash, and the source time
/// of the change that wrote it (ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The entity's sequence in the row.
    pub seq: i64,
    /// The row's hash.
    pub hash: String,
    /// When the change that wrote it happened at the source.
    pub source_ts: i64,
}

/// Compares the rows of the differing buckets on a live bus: `expected`
/// was read up to changes made at `horizon_ms`, while the table kept
/// applying. A key the table holds at a later sequence, or holds from a
/// change made after the horizon, or whose entity the table has applied
/// past (`seen`: the sequence the sink last applied per key), is newer
/// than what was read, not a difference. Returns the findings and how many
/// keys were newer.
pub fn compare_live(
    expected: &BTreeMap<String, Entry>,
    actual: &BTreeMap<String, Held>,
    seen: &BTreeMap<String, i64>,
    horizon_ms: i64,
) -> (Findings, usize) {
    let mut f = Findings::default();
    let mut newer = 0;
    for (k, (seq, hash)) in expected {
        match actual.get(k) {
            None if seen.get(k).is_some_and(|s| s > seq) => newer += 1,
            None => f.missing.push(k.clone()),
            Some(a) if a.seq > *seq => newer += 1,
            Some(a) if (a.seq, &a.hash) != (*seq, hash) => f.stale.push(k.clone()),
            Some(_) => {}
        }
    }
    for (k, a) in actual {
        if expected.contains_key(k) {
            continue;
        }
        if a.source_ts > horizon_ms || seen.get(k).is_some_and(|s| *s > a.seq) {
            newer += 1;
        } else {
            f.extra.push(k.clone());
        }
    }
    (f, newer)
}

/// Compares the rows of the differing buckets.
pub fn compare(expected: &BTreeMap<String, Entry>, actual: &BTreeMap<String, Entry>) -> Findings {
    let mut f = Findings::default();
    for (k, e) in expected {
        match actual.get(k) {
            None => f.missing.push(k.clone()),
            Some(a) if a != e => f.stale.push(k.clone()),
            Some(_) => {}
        }
    }
    f.extra = actual
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .cloned()
        .collect();
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rows_text_is_what_postgresql_prints() {
        let v = [
            SqlValue::Text("052090000001".into()),
            SqlValue::Date("1988-02-29".into()),
            SqlValue::Null,
            SqlValue::Int(-4),
            SqlValue::Bool(true),
            SqlValue::Timestamp(1_764_230_400_000),
        ];
        let text: Vec<String> = v.iter().map(value_text).collect();
        assert_eq!(
            text.join("|"),
            "052090000001|1988-02-29|\\N|-4|true|1764230400000"
        );
        assert_eq!(row_hash(&v).len(), 64);
    }

    #[test]
    fn digests_find_the_buckets_and_then_the_keys_that_differ() {
        let row = |s: i64, h: &str| (s, h.to_string());
        let expected: BTreeMap<String, Entry> =
            (0..2000).map(|i| (format!("k{i}"), row(i, "h"))).collect();
        let mut actual = expected.clone();
        actual.remove("k5");
        actual.insert("k7".into(), row(7, "changed"));
        actual.insert("stranger".into(), row(1, "h"));
        let (a, b) = (digests(&expected, BUCKETS), digests(&actual, BUCKETS));
        let diff = differing(&a, &b);
        assert!((1..=3).contains(&diff.len()), "{diff:?}");
        let pick = |m: &BTreeMap<String, Entry>| -> BTreeMap<String, Entry> {
            m.iter()
                .filter(|(k, _)| diff.contains(&bucket_of(k, BUCKETS)))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let f = compare(&pick(&expected), &pick(&actual));
        assert_eq!(f.missing, ["k5"]);
        assert_eq!(f.stale, ["k7"]);
        assert_eq!(f.extra, ["stranger"]);
        assert!(differing(&a, &a).is_empty());
    }

    #[test]
    fn on_a_live_bus_what_the_table_applied_after_the_read_is_no_difference() {
        let e: BTreeMap<String, Entry> = [
            ("a".to_string(), (3, "h3".to_string())),
            ("b".to_string(), (1, "h".to_string())),
            ("c".to_string(), (2, "h".to_string())),
        ]
        .into_iter()
        .collect();
        let held = |seq, hash: &str, ts| Held {
            seq,
            hash: hash.into(),
            source_ts: ts,
        };
        let actual: BTreeMap<String, Held> = [
            ("a".to_string(), held(4, "h4", 50)), // updated after the read
            ("n".to_string(), held(1, "h", 200)), // created after the read
            ("x".to_string(), held(7, "h", 10)),  // a stranger
            ("c".to_string(), held(2, "changed", 10)), // changed in the table
        ]
        .into_iter()
        .collect();
        // b left the view after the read: the sink applied its sequence 2.
        let seen: BTreeMap<String, i64> = [("b".to_string(), 2)].into_iter().collect();
        let (f, newer) = compare_live(&e, &actual, &seen, 100);
        assert_eq!(newer, 3);
        assert_eq!(f.extra, ["x"]);
        assert_eq!(f.stale, ["c"]);
        assert!(f.missing.is_empty());
        let (f, _) = compare_live(&e, &actual, &BTreeMap::new(), 100);
        assert_eq!(f.missing, ["b"]);
    }

    #[test]
    fn an_entry_is_sixty_bits() {
        assert!(entry_value("k", 1, "h") < 1 << 60);
        assert_ne!(entry_value("k", 1, "h"), entry_value("k", 2, "h"));
    }
}
