//! Records of the `_schemas` topic, in Confluent Schema Registry's layout:
//! JSON keys `{"keytype": SCHEMA|CONFIG|MODE|DELETE_SUBJECT|NOOP, "subject",
//! "version", "magic"}` and JSON values, so a cluster can move between
//! govbus's registry and Confluent's without migrating.

use govbus_schema::Compatibility;
use serde::{Deserialize, Serialize};

/// A schema's reference to a named type registered under another subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// The referenced type's full name, as the schema uses it.
    pub name: String,
    /// Subject it is registered under.
    pub subject: String,
    /// Version of that subject.
    pub version: u32,
}

/// A data contract registered with a schema (Confluent's `metadata` and
/// `ruleSet`): part of what a version is.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Contract {
    /// Confluent's `metadata` (`properties`, `tags`, `sensitive`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// Confluent's `ruleSet` (`domainRules`, `migrationRules`).
    #[serde(rename = "ruleSet", default, skip_serializing_if = "Option::is_none")]
    pub rule_set: Option<serde_json::Value>,
}

impl Contract {
    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.metadata.is_none() && self.rule_set.is_none()
    }
}

/// Confluent's registry modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Mode {
    /// Normal operation.
    #[default]
    #[serde(rename = "READWRITE")]
    ReadWrite,
    /// No registrations or deletions.
    #[serde(rename = "READONLY")]
    ReadOnly,
    /// Registrations carry their id (and version), copied from another registry.
    #[serde(rename = "IMPORT")]
    Import,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(s.to_ascii_uppercase()))
            .map_err(|_| format!("Invalid mode. Valid values are READWRITE, READONLY, IMPORT: {s}"))
    }
}

/// A record of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogRecord {
    /// keytype SCHEMA: a version of a subject (or its soft deletion).
    Schema {
        /// Subject.
        subject: String,
        /// Version within the subject.
        version: u32,
        /// Global id.
        id: u32,
        /// Schema text.
        schema: String,
        /// Named types it uses from other subjects.
        references: Vec<Reference>,
        /// Its data contract.
        contract: Contract,
        /// Soft-deleted.
        deleted: bool,
    },
    /// keytype SCHEMA with no value: a version permanently deleted.
    SchemaTombstone {
        /// Subject.
        subject: String,
        /// Version.
        version: u32,
    },
    /// keytype DELETE_SUBJECT: every version up to `version` soft-deleted.
    DeleteSubject {
        /// Subject.
        subject: String,
        /// The highest version deleted.
        version: u32,
    },
    /// keytype CONFIG (subject None = global; level None = removed).
    Config {
        /// Subject, or None for the global level.
        subject: Option<String>,
        /// The level (None = removed).
        level: Option<Compatibility>,
    },
    /// keytype MODE (subject None = global; mode None = removed).
    Mode {
        /// Subject, or None for the global mode.
        subject: Option<String>,
        /// The mode (None = removed).
        mode: Option<Mode>,
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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    references: Vec<Reference>,
    #[serde(flatten)]
    contract: Contract,
    #[serde(default)]
    deleted: bool,
}

#[derive(Serialize, Deserialize)]
struct ConfigValue {
    #[serde(rename = "compatibilityLevel")]
    compatibility_level: Compatibility,
}

#[derive(Serialize, Deserialize)]
struct ModeValue {
    mode: Mode,
}

#[derive(Serialize, Deserialize)]
struct DeleteSubjectValue {
    subject: String,
    version: u32,
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn key(keytype: &str, subject: Option<&str>, version: Option<u32>, magic: u32) -> Vec<u8> {
    json(&Key {
        keytype: keytype.into(),
        subject: subject.map(str::to_string),
        version,
        magic,
    })
}

impl LogRecord {
    /// Key and value bytes (JSON, as Confluent writes them).
    pub fn encode(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        match self {
            LogRecord::Schema {
                subject,
                version,
                id,
                schema,
                references,
                contract,
                deleted,
            } => (
                key("SCHEMA", Some(subject), Some(*version), 1),
                Some(json(&SchemaValue {
                    subject: subject.clone(),
                    version: *version,
                    id: *id,
                    schema: schema.clone(),
                    schema_type: None,
                    references: references.clone(),
                    contract: contract.clone(),
                    deleted: *deleted,
                })),
            ),
            LogRecord::SchemaTombstone { subject, version } => {
                (key("SCHEMA", Some(subject), Some(*version), 1), None)
            }
            LogRecord::DeleteSubject { subject, version } => (
                key("DELETE_SUBJECT", Some(subject), None, 0),
                Some(json(&DeleteSubjectValue {
                    subject: subject.clone(),
                    version: *version,
                })),
            ),
            LogRecord::Config { subject, level } => (
                key("CONFIG", subject.as_deref(), None, 0),
                level.map(|l| {
                    json(&ConfigValue {
                        compatibility_level: l,
                    })
                }),
            ),
            LogRecord::Mode { subject, mode } => (
                key("MODE", subject.as_deref(), None, 0),
                mode.map(|m| json(&ModeValue { mode: m })),
            ),
            LogRecord::Noop => (key("NOOP", None, None, 0), None),
        }
    }

    /// Reads a record; `Ok(None)` for key types this registry ignores.
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Option<Self>, String> {
        let k: Key = serde_json::from_slice(key).map_err(|e| format!("bad key: {e}"))?;
        let need_subject = || k.subject.clone().ok_or("key without a subject".to_string());
        match k.keytype.as_str() {
            "SCHEMA" => {
                let Some(value) = value else {
                    return Ok(Some(LogRecord::SchemaTombstone {
                        subject: need_subject()?,
                        version: k.version.ok_or("SCHEMA key without a version")?,
                    }));
                };
                let v: SchemaValue =
                    serde_json::from_slice(value).map_err(|e| format!("bad schema value: {e}"))?;
                if v.schema_type.as_deref().is_some_and(|t| t != "AVRO") {
                    return Ok(None); // PROTOBUF / JSON schemas: not served here
                }
                Ok(Some(LogRecord::Schema {
                    subject: v.subject,
                    version: v.version,
                    id: v.id,
                    schema: v.schema,
                    references: v.references,
                    contract: v.contract,
                    deleted: v.deleted,
                }))
            }
            "DELETE_SUBJECT" => {
                let v: DeleteSubjectValue = serde_json::from_slice(value.unwrap_or(b"null"))
                    .map_err(|e| format!("bad delete-subject value: {e}"))?;
                Ok(Some(LogRecord::DeleteSubject {
                    subject: v.subject,
                    version: v.version,
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
            "MODE" => {
                let mode = match value {
                    None => None,
                    Some(v) => Some(
                        serde_json::from_slice::<ModeValue>(v)
                            .map_err(|e| format!("bad mode value: {e}"))?
                            .mode,
                    ),
                };
                Ok(Some(LogRecord::Mode {
                    subject: k.subject,
                    mode,
                }))
            }
            "NOOP" => Ok(Some(LogRecord::Noop)),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_round_trips() {
        for rec in [
            LogRecord::Schema {
                subject: "s".into(),
                version: 2,
                id: 7,
                schema: "\"string\"".into(),
                references: vec![Reference {
                    name: "a.B".into(),
                    subject: "b".into(),
                    version: 1,
                }],
                contract: Contract {
                    metadata: Some(serde_json::json!({"properties": {"owner": "bca"}})),
                    rule_set: Some(serde_json::json!({"domainRules": []})),
                },
                deleted: true,
            },
            LogRecord::SchemaTombstone {
                subject: "s".into(),
                version: 2,
            },
            LogRecord::DeleteSubject {
                subject: "s".into(),
                version: 3,
            },
            LogRecord::Config {
                subject: None,
                level: Some(Compatibility::Full),
            },
            LogRecord::Config {
                subject: Some("s".into()),
                level: None,
            },
            LogRecord::Mode {
                subject: Some("s".into()),
                mode: Some(Mode::ReadOnly),
            },
            LogRecord::Mode {
                subject: None,
                mode: None,
            },
            LogRecord::Noop,
        ] {
            let (k, v) = rec.encode();
            assert_eq!(LogRecord::decode(&k, v.as_deref()).unwrap(), Some(rec));
        }
    }

    #[test]
    fn confluent_written_records_are_read() {
        // As Confluent's registry writes them.
        let k = br#"{"keytype":"SCHEMA","subject":"orders-value","version":1,"magic":1}"#;
        let v = br#"{"subject":"orders-value","version":1,"id":100001,"schema":"\"string\"","deleted":false}"#;
        assert!(matches!(
            LogRecord::decode(k, Some(v)).unwrap(),
            Some(LogRecord::Schema { id: 100001, .. })
        ));
        let k = br#"{"keytype":"DELETE_SUBJECT","subject":"orders-value","magic":0}"#;
        let v = br#"{"subject":"orders-value","version":4}"#;
        assert_eq!(
            LogRecord::decode(k, Some(v)).unwrap(),
            Some(LogRecord::DeleteSubject {
                subject: "orders-value".into(),
                version: 4
            })
        );
        let k = br#"{"keytype":"SCHEMA","subject":"p","version":1,"magic":1}"#;
        let v = br#"{"subject":"p","version":1,"id":3,"schema":"syntax = \"proto3\";","schemaType":"PROTOBUF","deleted":false}"#;
        assert_eq!(LogRecord::decode(k, Some(v)).unwrap(), None);
        assert_eq!(
            LogRecord::decode(
                br#"{"keytype":"CLEAR_SUBJECT","subject":"x","magic":0}"#,
                None
            )
            .unwrap(),
            None
        );
        assert!(LogRecord::decode(b"not json", None).is_err());
    }
}
