//! Compatibility cases ported from Avro's and Confluent's own test suites
//! (data files under tests/compat/, each naming its source).

use std::collections::HashMap;

use apache_avro::Schema;
use govbus_schema::Compatibility;
use serde::Deserialize;

#[derive(Deserialize)]
struct ReaderWriter {
    source: String,
    schemas: HashMap<String, String>,
    compatible: Vec<(String, String)>,
    incompatible: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct Levels {
    source: String,
    schemas: HashMap<String, String>,
    cases: Vec<LevelCase>,
}

#[derive(Deserialize)]
struct LevelCase {
    test: String,
    level: String,
    new: String,
    existing: Vec<String>,
    compatible: bool,
    why: String,
}

fn parse(schemas: &HashMap<String, String>) -> HashMap<String, Schema> {
    schemas
        .iter()
        .map(|(k, v)| {
            let s = Schema::parse_str(v).unwrap_or_else(|e| panic!("schema {k}: {e}"));
            (k.clone(), s)
        })
        .collect()
}

fn load<T: for<'de> Deserialize<'de>>(name: &str) -> T {
    let path = format!("{}/tests/compat/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Reader/writer pairs: the backward check of a reader (new) against a
/// writer (existing) is exactly "the reader can read the writer's data".
#[test]
fn avro_reader_writer_pairs() {
    let f: ReaderWriter = load("avro-reader-writer.json");
    assert!(!f.source.is_empty());
    let s = parse(&f.schemas);
    let mut failures = Vec::new();
    for (expect, pairs) in [(true, &f.compatible), (false, &f.incompatible)] {
        for (reader, writer) in pairs {
            let reasons =
                Compatibility::Backward.check(&s[reader], std::slice::from_ref(&s[writer]));
            if reasons.is_empty() != expect {
                failures.push(format!(
                    "reader {reader} / writer {writer}: expected {}, got {reasons:?}",
                    if expect { "compatible" } else { "incompatible" }
                ));
            }
        }
    }
    let total = f.compatible.len() + f.incompatible.len();
    println!(
        "avro reader/writer: {} of {total} cases pass",
        total - failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {total} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn confluent_levels() {
    let f: Levels = load("confluent-levels.json");
    assert!(!f.source.is_empty());
    let s = parse(&f.schemas);
    let mut failures = Vec::new();
    for c in &f.cases {
        let level: Compatibility = c.level.parse().expect("level");
        let existing: Vec<Schema> = c.existing.iter().map(|n| s[n].clone()).collect();
        let reasons = level.check(&s[&c.new], &existing);
        if reasons.is_empty() != c.compatible {
            failures.push(format!(
                "{} {}: {} after {:?} ({}): got {reasons:?}",
                c.test, c.level, c.new, c.existing, c.why
            ));
        }
    }
    let total = f.cases.len();
    println!(
        "confluent levels: {} of {total} cases pass",
        total - failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {total} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
