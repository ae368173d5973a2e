//! Avro for govbus: the Confluent wire format, the change envelope, JSON
//! conversion with field-level errors, view projection, compatibility, and a
//! client for any Confluent-compatible schema registry.

pub mod client;
pub mod compat;
pub mod envelope;
pub mod json;
pub mod names;
pub mod project;
pub mod wire;

pub use apache_avro::types::Value as AvroValue;
pub use apache_avro::Schema;
pub use client::{RegistryClient, RegistryError, SchemaCache, SchemaResolver};
pub use compat::Compatibility;
pub use envelope::{Change, EnvelopeCodec, EnvelopeError, Op, Source};
pub use json::FieldError;

/// A schema that could not be parsed or built.
#[derive(Debug, thiserror::Error)]
#[error("invalid schema: {0}")]
pub struct SchemaError(pub String);

/// Parses Avro schema JSON text.
pub fn parse(text: &str) -> Result<Schema, SchemaError> {
    Schema::parse_str(text).map_err(|e| SchemaError(e.to_string()))
}

/// The canonical text of a schema: parsed and printed back, so that two texts
/// that differ only in whitespace or key order are the same schema (and get
/// the same registry id), while docs and defaults still count.
pub fn canonical(schema: &Schema) -> String {
    serde_json::to_string(schema).unwrap_or_else(|_| schema.canonical_form())
}
