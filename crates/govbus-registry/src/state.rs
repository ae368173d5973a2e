//! The registry's state: what the `_schemas` log says, applied in order.
//! Pure: no Kafka, no HTTP, so it is unit-tested directly.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use apache_avro::Schema;
use govbus_schema::Compatibility;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::error::ApiError;

/// A record of the `_schemas` topic, in Confluent's layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogRecord {
    /// keytype SCHEMA.
    Schema {
        /// Subject.
        subject: String,
        /// Version within the subject.
        version: u32,
        /// Global id.
        id: u32,
        /// Schema text.
        schema: String,
        /// Soft-deleted.
        deleted: bool,
    },
    /// keytype CONFIG (subject None = global).
    Config {
        /// Subject, or None for the global level.
        subject: Option<String>,
        /// The level (None = removed).
        level: Option<Compatibility>,
    },
    /// keytype NOOP: written to learn the end of the log.
    Noop,
}

#[derive(Serialize, Deserialize)]
struct Key {
    keytype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
    magic: u32,
}

#[derive(Serialize, Deserialize)]
struct SchemaValue {
    subject: String,
    version: u32,
    id: u32,
    schema: String,
    #[serde(
        rename = "schemaType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    schema_type: Option<String>,
    #[serde(default)]
    deleted: bool,
}

#[derive(Serialize, Deserialize)]
struct ConfigValue {
    #[serde(rename = "compatibilityLevel")]
    compatibility_level: Compatibility,
}

impl LogRecord {
    /// Key and value bytes (JSON, as Confluent writes them).
    pub fn encode(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        let to = |v: &dyn erased::Ser| v.json();
        match self {
            LogRecord::Schema {
                subject,
                version,
                id,
                schema,
                deleted,
            } => (
                to(&Key {
                    keytype: "SCHEMA".into(),
                    subject: Some(subject.clone()),
                    version: Some(*version),
                    magic: 1,
                }),
                Some(to(&SchemaValue {
                    subject: subject.clone(),
                    version: *version,
                    id: *id,
                    schema: schema.clone(),
                    schema_type: None,
                    deleted: *deleted,
                })),
            ),
            LogRecord::Config { subject, level } => (
                to(&Key {
                    keytype: "CONFIG".into(),
                    subject: subject.clone(),
                    version: None,
                    magic: 0,
                }),
                level.map(|l| {
                    to(&ConfigValue {
                        compatibility_level: l,
                    })
                }),
            ),
            LogRecord::Noop => (
                to(&Key {
                    keytype: "NOOP".into(),
                    subject: None,
                    version: None,
                    magic: 0,
                }),
                None,
            ),
        }
    }

    /// Reads a record; `Ok(None)` for key types this registry ignores.
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Option<Self>, String> {
        let k: Key = serde_json::from_slice(key).map_err(|e| format!("bad key: {e}"))?;
        match k.keytype.as_str() {
            "SCHEMA" => {
                let Some(value) = value else {
                    return Ok(None); // tombstone of a permanently deleted version
                };
                let v: SchemaValue =
                    serde_json::from_slice(value).map_err(|e| format!("bad schema value: {e}"))?;
                Ok(Some(LogRecord::Schema {
                    subject: v.subject,
                    version: v.version,
                    id: v.id,
                    schema: v.schema,
                    deleted: v.deleted,
                }))
            }
            "CONFIG" => {
                let level = match value {
                    None => None,
                    Some(v) => Some(
                        serde_json::from_slice::<ConfigValue>(v)
                            .map_err(|e| format!("bad config value: {e}"))?
                            .compatibility_level,
                    ),
                };
                Ok(Some(LogRecord::Config {
                    subject: k.subject,
                    level,
                }))
            }
            "NOOP" => Ok(Some(LogRecord::Noop)),
            _ => Ok(None),
        }
    }
}

mod erased {
    pub(super) trait Ser {
        fn json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Ser for T {
        fn json(&self) -> Vec<u8> {
            serde_json::to_vec(self).unwrap_or_default()
        }
    }
}

/// One stored schema.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Canonical text.
    pub text: String,
    /// Parsed.
    pub parsed: Arc<Schema>,
}

/// A version of a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionEntry {
    /// Global schema id.
    pub id: u32,
    /// Soft-deleted.
    pub deleted: bool,
}

/// What a registration needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Already registered under the subject: answer this id.
    Existing(u32),
    /// Write this record, then answer its id.
    Write(LogRecord),
}

/// Everything the log says.
#[derive(Debug, Default)]
pub struct State {
    schemas: BTreeMap<u32, Stored>,
    by_text: HashMap<String, u32>,
    subjects: BTreeMap<String, BTreeMap<u32, VersionEntry>>,
    global: Option<Compatibility>,
    subject_config: HashMap<String, Compatibility>,
}

/// Parses a schema as the API receives it.
pub fn parse_schema(text: &str) -> Result<(String, Schema), ApiError> {
    let _: Json = serde_json::from_str(text)
        .map_err(|e| ApiError::InvalidSchema(format!("not JSON: {e}")))?;
    let parsed = Schema::parse_str(text).map_err(|e| ApiError::InvalidSchema(e.to_string()))?;
    Ok((govbus_schema::canonical(&parsed), parsed))
}

impl State {
    /// Applies one record of the log.
    pub fn apply(&mut self, rec: LogRecord) {
        match rec {
            LogRecord::Schema {
                subject,
                version,
                id,
                schema,
                deleted,
            } => {
                if !self.schemas.contains_key(&id) {
                    match parse_schema(&schema) {
                        Ok((text, parsed)) => {
                            self.by_text.entry(text.clone()).or_insert(id);
                            self.schemas.insert(
                                id,
                                Stored {
                                    text,
                                    parsed: Arc::new(parsed),
                                },
                            );
                        }
                        Err(e) => {
                            tracing::warn!(id, subject, error = %e, "skipping unparsable schema in the log");
                            return;
                        }
                    }
                }
                self.subjects
                    .entry(subject)
                    .or_default()
                    .insert(version, VersionEntry { id, deleted });
            }
            LogRecord::Config {
                subject: None,
                level,
            } => self.global = level,
            LogRecord::Config {
                subject: Some(s),
                level,
            } => match level {
                Some(l) => {
                    self.subject_config.insert(s, l);
                }
                None => {
                    self.subject_config.remove(&s);
                }
            },
            LogRecord::Noop => {}
        }
    }

    /// The global compatibility level.
    pub fn global_level(&self) -> Compatibility {
        self.global.unwrap_or_default()
    }

    /// The subject's own level, if set.
    pub fn subject_level(&self, subject: &str) -> Option<Compatibility> {
        self.subject_config.get(subject).copied()
    }

    /// The level in force for `subject`.
    pub fn level_for(&self, subject: &str) -> Compatibility {
        self.subject_level(subject)
            .unwrap_or_else(|| self.global_level())
    }

    /// A schema by id.
    pub fn schema(&self, id: u32) -> Option<&Stored> {
        self.schemas.get(&id)
    }

    /// Subjects with at least one live version.
    pub fn subjects(&self) -> Vec<String> {
        self.subjects
            .iter()
            .filter(|(_, v)| v.values().any(|e| !e.deleted))
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// Live versions of a subject.
    pub fn versions(&self, subject: &str) -> Result<Vec<(u32, VersionEntry)>, ApiError> {
        let v: Vec<(u32, VersionEntry)> = self
            .subjects
            .get(subject)
            .map(|m| {
                m.iter()
                    .filter(|(_, e)| !e.deleted)
                    .map(|(v, e)| (*v, *e))
                    .collect()
            })
            .unwrap_or_default();
        if v.is_empty() {
            return Err(ApiError::SubjectNotFound(subject.to_string()));
        }
        Ok(v)
    }

    /// One version (`latest`, `-1` or a number).
    pub fn version(&self, subject: &str, version: &str) -> Result<(u32, u32), ApiError> {
        let versions = self.versions(subject)?;
        if version == "latest" || version == "-1" {
            let (v, e) = versions.last().copied().expect("versions is non-empty");
            return Ok((v, e.id));
        }
        let n: u32 = version
            .parse()
            .ok()
            .filter(|n| *n >= 1 && *n <= i32::MAX as u32)
            .ok_or_else(|| ApiError::InvalidVersion(version.to_string()))?;
        versions
            .iter()
            .find(|(v, _)| *v == n)
            .map(|(v, e)| (*v, e.id))
            .ok_or_else(|| ApiError::VersionNotFound(version.to_string()))
    }

    /// The live version of `subject` holding exactly this schema.
    pub fn lookup(&self, subject: &str, schema: &str) -> Result<(u32, u32), ApiError> {
        let versions = self.versions(subject)?;
        let (text, _) = parse_schema(schema)?;
        versions
            .iter()
            .find(|(_, e)| self.schemas.get(&e.id).is_some_and(|s| s.text == text))
            .map(|(v, e)| (*v, e.id))
            .ok_or_else(|| ApiError::SchemaNotFound("not found under this subject".into()))
    }

    /// Reasons `schema` is incompatible with `subject` at `version`
    /// (`latest`, or all live versions when the level is transitive).
    pub fn compatibility(
        &self,
        subject: &str,
        version: Option<&str>,
        schema: &Schema,
    ) -> Result<Vec<String>, ApiError> {
        let existing: Vec<Schema> = match version {
            Some(v) => {
                let (_, id) = self.version(subject, v)?;
                vec![self.schemas[&id].parsed.as_ref().clone()]
            }
            None => match self.versions(subject) {
                Ok(vs) => vs
                    .iter()
                    .map(|(_, e)| self.schemas[&e.id].parsed.as_ref().clone())
                    .collect(),
                Err(_) => vec![],
            },
        };
        Ok(self.level_for(subject).check(schema, &existing))
    }

    /// What registering `schema` under `subject` takes.
    pub fn plan_register(&self, subject: &str, schema: &str) -> Result<Plan, ApiError> {
        let (text, parsed) = parse_schema(schema)?;
        if let Some(live) = self.subjects.get(subject) {
            for e in live.values().filter(|e| !e.deleted) {
                if self.schemas.get(&e.id).is_some_and(|s| s.text == text) {
                    return Ok(Plan::Existing(e.id));
                }
            }
        }
        let reasons = self.compatibility(subject, None, &parsed)?;
        if !reasons.is_empty() {
            return Err(ApiError::Incompatible {
                subject: subject.to_string(),
                reasons,
            });
        }
        let id = match self.by_text.get(&text) {
            Some(id) => *id,
            None => self.schemas.keys().next_back().map_or(1, |m| m + 1),
        };
        let version = self
            .subjects
            .get(subject)
            .and_then(|m| m.keys().next_back())
            .map_or(1, |v| v + 1);
        Ok(Plan::Write(LogRecord::Schema {
            subject: subject.to_string(),
            version,
            id,
            schema: text,
            deleted: false,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}"#;
    const V1_SPACED: &str =
        r#"{ "type": "record", "fields": [ {"type":"string", "name":"a"} ], "name": "R" }"#;
    const V2_OPT: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":["null","long"],"default":null}]}"#;
    const V2_REQ: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":"long"}]}"#;

    fn register(s: &mut State, subject: &str, schema: &str) -> Result<u32, ApiError> {
        match s.plan_register(subject, schema)? {
            Plan::Existing(id) => Ok(id),
            Plan::Write(rec) => {
                let (k, v) = rec.encode();
                let back = LogRecord::decode(&k, v.as_deref()).unwrap().unwrap();
                assert_eq!(back, rec);
                let LogRecord::Schema { id, .. } = rec else {
                    unreachable!()
                };
                s.apply(back);
                Ok(id)
            }
        }
    }

    #[test]
    fn same_schema_same_id_across_spelling_and_subjects() {
        let mut s = State::default();
        let a = register(&mut s, "x-value", V1).unwrap();
        assert_eq!(register(&mut s, "x-value", V1_SPACED).unwrap(), a);
        assert_eq!(register(&mut s, "y-value", V1).unwrap(), a);
        assert_eq!(s.versions("x-value").unwrap().len(), 1);
        let b = register(&mut s, "x-value", V2_OPT).unwrap();
        assert_ne!(a, b);
        assert_eq!(s.version("x-value", "latest").unwrap(), (2, b));
    }

    #[test]
    fn incompatible_schema_is_refused_with_409() {
        let mut s = State::default();
        register(&mut s, "x-value", V1).unwrap();
        let e = register(&mut s, "x-value", V2_REQ).unwrap_err();
        assert_eq!(e.codes().1, 409);
        // With NONE it goes in.
        s.apply(LogRecord::Config {
            subject: Some("x-value".into()),
            level: Some(Compatibility::None),
        });
        register(&mut s, "x-value", V2_REQ).unwrap();
    }

    #[test]
    fn errors_carry_confluent_codes() {
        let s = State::default();
        assert_eq!(s.versions("nope").unwrap_err().codes().1, 40401);
        assert_eq!(
            s.plan_register("x", "{not json").unwrap_err().codes().1,
            42201
        );
        assert_eq!(
            s.plan_register("x", r#"{"type":"nosuch"}"#)
                .unwrap_err()
                .codes()
                .1,
            42201
        );
        let mut s = State::default();
        register(&mut s, "x", V1).unwrap();
        assert_eq!(s.version("x", "7").unwrap_err().codes().1, 40402);
        assert_eq!(s.version("x", "zero").unwrap_err().codes().1, 42202);
        assert_eq!(s.lookup("x", V2_OPT).unwrap_err().codes().1, 40403);
    }

    #[test]
    fn config_records_round_trip() {
        for rec in [
            LogRecord::Config {
                subject: None,
                level: Some(Compatibility::Full),
            },
            LogRecord::Config {
                subject: Some("s".into()),
                level: None,
            },
            LogRecord::Noop,
        ] {
            let (k, v) = rec.encode();
            assert_eq!(LogRecord::decode(&k, v.as_deref()).unwrap(), Some(rec));
        }
    }
}
