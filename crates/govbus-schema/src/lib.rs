//! Avro for govbus: the Confluent wire format, the change envelope, JSON
//! conversion with field-level errors, view projection, compatibility, and a
//! client for any Confluent-compatible schema registry.
//!
//! Bytes from outside reach most of this crate (records, schemas, registry
//! answers, ingest JSON): outside its tests it has no `unwrap`, `expect`,
//! `panic` or unchecked indexing, and the compiler holds it to that.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod bytes;
pub mod cel;
pub mod client;
pub mod compat;
pub mod contained;
pub mod envelope;
pub mod flat;
pub mod fuzz;
pub mod json;
pub mod limits;
pub mod names;
pub mod project;
pub mod wire;

pub use apache_avro::types::Value as AvroValue;
pub use apache_avro::Schema;
pub use client::{RegistryClient, RegistryError, SchemaCache, SchemaResolver};
pub use compat::{Compatibility, Guard};
pub use envelope::{Change, EncodedChange, EnvelopeCodec, EnvelopeError, Op, Source};
pub use json::FieldError;

/// A schema that could not be parsed or built.
#[derive(Debug, thiserror::Error)]
#[error("invalid schema: {0}")]
pub struct SchemaError(pub String);

/// Parses Avro schema JSON text. Never panics: apache_avro 0.17 panics on
/// some invalid names (`unwrap` in `Name::parse`, found by the fuzz test),
/// so names are checked first and the parser runs under `catch_unwind`.
pub fn parse(text: &str) -> Result<Schema, SchemaError> {
    parse_list(&[text])?
        .pop()
        .ok_or_else(|| SchemaError("empty schema list".into()))
}

/// Parses schemas that may reference each other's named types; with one
/// text it parses any schema, with several each must be a named type (as
/// `Schema::parse_list`). Never panics (see [`parse`]).
pub fn parse_list(texts: &[&str]) -> Result<Vec<Schema>, SchemaError> {
    for t in texts {
        if let Ok(j) = serde_json::from_str::<serde_json::Value>(t) {
            check_names(&j)?;
        }
    }
    let run = || {
        if let [one] = texts {
            Schema::parse_str(one).map(|s| vec![s])
        } else {
            Schema::parse_list(texts)
        }
        .map_err(|e| SchemaError(e.to_string()))
    };
    crate::contained::run(run)
        .unwrap_or_else(|_| Err(SchemaError("the Avro parser failed on this schema".into())))
}

/// Names and namespaces must follow Avro's rules (`[A-Za-z_][A-Za-z0-9_]*`,
/// dot-separated for full names).
fn check_names(j: &serde_json::Value) -> Result<(), SchemaError> {
    use serde_json::Value as J;
    fn ok_part(p: &str) -> bool {
        let mut c = p.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
    }
    match j {
        J::Object(o) => {
            for key in ["name", "namespace"] {
                if let Some(v) = o.get(key) {
                    let Some(s) = v.as_str() else {
                        return Err(SchemaError(format!("{key} must be a string, got {v}")));
                    };
                    let valid = if key == "namespace" {
                        s.is_empty() || s.split('.').all(ok_part)
                    } else {
                        s.split('.').all(ok_part)
                    };
                    if !valid {
                        return Err(SchemaError(format!(
                            "invalid {key} {s:?}: Avro names are [A-Za-z_][A-Za-z0-9_]*, dot-separated"
                        )));
                    }
                }
            }
            // Only where schemas nest (not into defaults or custom attributes).
            ["type", "fields", "items", "values"]
                .iter()
                .filter_map(|k| o.get(*k))
                .try_for_each(check_names)
        }
        J::Array(a) => a.iter().try_for_each(check_names),
        _ => Ok(()),
    }
}

/// The canonical text of a schema: parsed and printed back, so that two texts
/// that differ only in whitespace or key order are the same schema (and get
/// the same registry id), while docs and defaults still count.
pub fn canonical(schema: &Schema) -> String {
    serde_json::to_string(schema).unwrap_or_else(|_| schema.canonical_form())
}

#[cfg(test)]
mod tests {
    #[test]
    fn invalid_names_are_errors_not_panics() {
        for bad in [
            r#"{"type":"record","name":"1abc","fields":[]}"#,
            r#"{"type":"record","name":"a b","fields":[]}"#,
            r#"{"type":"enum","name":"E","namespace":"x..y","symbols":["A"]}"#,
            r#"{"type":"record","name":"R","fields":[{"name":"x-y","type":"int"}]}"#,
        ] {
            let e = super::parse(bad).unwrap_err();
            assert!(e.0.contains("invalid"), "{bad}: {e}");
        }
        // A record default holding a "name" key is data, not a name.
        super::parse(
            r#"{"type":"record","name":"R","fields":[{"name":"p","type":{"type":"record","name":"P","fields":[{"name":"name","type":"string"}]},"default":{"name":"not a name!"}}]}"#,
        )
        .unwrap();
    }
}
