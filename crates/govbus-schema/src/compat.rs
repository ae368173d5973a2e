//! Compatibility levels and checks, following Avro's schema-resolution rules.

use apache_avro::schema::RecordSchema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use serde::{Deserialize, Serialize};

/// Confluent's compatibility levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Compatibility {
    /// No check.
    None,
    /// The new schema can read data written with the latest one.
    #[default]
    Backward,
    /// ... with every earlier one.
    BackwardTransitive,
    /// The latest schema can read data written with the new one.
    Forward,
    /// Every earlier schema can read data written with the new one.
    ForwardTransitive,
    /// Backward and forward against the latest.
    Full,
    /// Backward and forward against every earlier one.
    FullTransitive,
}

impl std::str::FromStr for Compatibility {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(s.to_string()))
            .map_err(|_| format!("Invalid compatibility level: {s}"))
    }
}

impl Compatibility {
    /// The reasons `new` may not follow `existing` (oldest first); empty = compatible.
    pub fn check(self, new: &Schema, existing: &[Schema]) -> Vec<String> {
        let (against, backward, forward): (&[Schema], bool, bool) = match self {
            Compatibility::None => return vec![],
            Compatibility::Backward => (last(existing), true, false),
            Compatibility::BackwardTransitive => (existing, true, false),
            Compatibility::Forward => (last(existing), false, true),
            Compatibility::ForwardTransitive => (existing, false, true),
            Compatibility::Full => (last(existing), true, true),
            Compatibility::FullTransitive => (existing, true, true),
        };
        let mut reasons = Vec::new();
        for old in against {
            if backward {
                if let Err(e) = can_read(old, new, "") {
                    reasons.push(format!(
                        "the new schema cannot read data written with an earlier one: {e}"
                    ));
                }
            }
            if forward {
                if let Err(e) = can_read(new, old, "") {
                    reasons.push(format!(
                        "an earlier schema cannot read data written with the new one: {e}"
                    ));
                }
            }
        }
        reasons
    }
}

/// Whether data written with `writer` can be read with `reader` (Avro's
/// schema-resolution rules); the error names where (`at`, a field path).
///
/// apache_avro's checker answers "unknown type" for a union writer read by a
/// non-union reader (`["int","float"]` read as `float`), which the
/// specification allows when the reader can read every branch; so unions,
/// records, arrays and maps are walked here, and the rest is left to it.
pub fn can_read(writer: &Schema, reader: &Schema, at: &str) -> Result<(), String> {
    let here = || {
        if at.is_empty() {
            "the top level".to_string()
        } else {
            format!("field {at}")
        }
    };
    match (writer, reader) {
        // Every branch the writer may have used must be readable.
        (Schema::Union(w), _) => {
            for b in w.variants() {
                can_read(b, reader, at)?;
            }
            Ok(())
        }
        (_, Schema::Union(r)) => {
            if r.variants().iter().any(|b| can_read(writer, b, at).is_ok()) {
                Ok(())
            } else {
                Err(format!(
                    "{}: no branch of the reader's union can read the writer's {}",
                    here(),
                    kind(writer)
                ))
            }
        }
        (Schema::Record(w), Schema::Record(r)) => record(w, r, at),
        (Schema::Array(w), Schema::Array(r)) => can_read(&w.items, &r.items, &format!("{at}[]")),
        (Schema::Map(w), Schema::Map(r)) => can_read(&w.types, &r.types, &format!("{at}{{}}")),
        _ => SchemaCompatibility::can_read(writer, reader).map_err(|e| format!("{}: {e}", here())),
    }
}

fn record(w: &RecordSchema, r: &RecordSchema, at: &str) -> Result<(), String> {
    let aliased = r
        .aliases
        .as_ref()
        .is_some_and(|a| a.iter().any(|a| a.name() == w.name.name));
    if w.name.name != r.name.name && !aliased {
        return Err(format!(
            "{}: the reader's record {} does not match the writer's record {}",
            if at.is_empty() {
                "the top level".to_string()
            } else {
                format!("field {at}")
            },
            r.name.name,
            w.name.name
        ));
    }
    let mut problems = Vec::new();
    for rf in &r.fields {
        let path = if at.is_empty() {
            rf.name.clone()
        } else {
            format!("{at}.{}", rf.name)
        };
        let wf = w.fields.iter().find(|wf| {
            wf.name == rf.name || rf.aliases.as_ref().is_some_and(|a| a.contains(&wf.name))
        });
        match wf {
            Some(wf) => {
                if let Err(e) = can_read(&wf.schema, &rf.schema, &path) {
                    problems.push(e);
                }
            }
            None if rf.default.is_some() => {}
            None => problems.push(format!(
                "field {path}: the reader has it without a default and the writer does not have it"
            )),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn kind(s: &Schema) -> String {
    format!("{:?}", apache_avro::schema::SchemaKind::from(s)).to_lowercase()
}

fn last(s: &[Schema]) -> &[Schema] {
    s.split_last().map_or(s, |(l, _)| std::slice::from_ref(l))
}

/// A check beyond compatibility: reasons to refuse `new` as the next
/// version of `subject` after `latest` (govbus's: it would break an active
/// subscription). Empty = fine.
pub trait Guard: Send + Sync {
    /// The reasons, each naming what breaks.
    fn check(
        &self,
        subject: &str,
        latest: &apache_avro::Schema,
        new: &apache_avro::Schema,
    ) -> Vec<String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(fields: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type":"record","name":"R","fields":[{fields}]}}"#
        ))
        .unwrap()
    }

    #[test]
    fn adding_an_optional_field_is_backward_compatible() {
        let v1 = rec(r#"{"name":"a","type":"string"}"#);
        let v2 = rec(
            r#"{"name":"a","type":"string"},{"name":"b","type":["null","string"],"default":null}"#,
        );
        assert!(Compatibility::Backward
            .check(&v2, std::slice::from_ref(&v1))
            .is_empty());
        assert!(Compatibility::Full.check(&v2, &[v1]).is_empty());
    }

    #[test]
    fn admin_units_v2_reads_every_v1_unit() {
        let v1 =
            Schema::parse_str(include_str!("../../../schemas/moha/admin_units.v1.avsc")).unwrap();
        let v2 =
            Schema::parse_str(include_str!("../../../schemas/moha/admin_units.v2.avsc")).unwrap();
        let r = Compatibility::Backward.check(&v2, std::slice::from_ref(&v1));
        assert!(r.is_empty(), "{r:?}");
        // A v1 reader meets DISTRICT, which it cannot read: not FORWARD.
        assert!(!Compatibility::Forward.check(&v2, &[v1]).is_empty());
    }

    #[test]
    fn adding_a_required_field_is_not() {
        let v1 = rec(r#"{"name":"a","type":"string"}"#);
        let v2 = rec(r#"{"name":"a","type":"string"},{"name":"b","type":"string"}"#);
        let r = Compatibility::Backward.check(&v2, std::slice::from_ref(&v1));
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(Compatibility::Forward.check(&v2, &[v1]).is_empty());
    }

    #[test]
    fn narrowing_a_union_the_reader_can_read_is_compatible_in_a_field() {
        let v1 = rec(r#"{"name":"a","type":["int","float"]}"#);
        let v2 = rec(r#"{"name":"a","type":"double"}"#);
        assert!(Compatibility::Backward
            .check(&v2, std::slice::from_ref(&v1))
            .is_empty());
        let v3 = rec(r#"{"name":"a","type":"int"}"#);
        let r = Compatibility::Backward.check(&v3, &[v1]);
        assert!(r[0].contains("field a"), "{r:?}");
    }

    #[test]
    fn levels_parse() {
        assert_eq!("FULL_TRANSITIVE".parse(), Ok(Compatibility::FullTransitive));
        assert!("SIDEWAYS".parse::<Compatibility>().is_err());
    }
}
