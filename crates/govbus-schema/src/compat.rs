//! Compatibility levels and checks, following Avro's schema-resolution rules.

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
                if let Err(e) = SchemaCompatibility::can_read(old, new) {
                    reasons.push(format!(
                        "the new schema cannot read data written with an earlier one: {e}"
                    ));
                }
            }
            if forward {
                if let Err(e) = SchemaCompatibility::can_read(new, old) {
                    reasons.push(format!(
                        "an earlier schema cannot read data written with the new one: {e}"
                    ));
                }
            }
        }
        reasons
    }
}

fn last(s: &[Schema]) -> &[Schema] {
    match s.len() {
        0 => s,
        n => &s[n - 1..],
    }
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
    fn adding_a_required_field_is_not() {
        let v1 = rec(r#"{"name":"a","type":"string"}"#);
        let v2 = rec(r#"{"name":"a","type":"string"},{"name":"b","type":"string"}"#);
        let r = Compatibility::Backward.check(&v2, std::slice::from_ref(&v1));
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(Compatibility::Forward.check(&v2, &[v1]).is_empty());
    }

    #[test]
    fn levels_parse() {
        assert_eq!("FULL_TRANSITIVE".parse(), Ok(Compatibility::FullTransitive));
        assert!("SIDEWAYS".parse::<Compatibility>().is_err());
    }
}
