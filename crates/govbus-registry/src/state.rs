//! The registry's state: what the `_schemas` log says, applied in order.
//! Pure: no Kafka, no HTTP, so it is unit-tested directly.
//!
//! Two instances may write at once. Every instance applies the log in the
//! same order with the same rule — the first record to claim an id, or a
//! subject's version, wins; a later record claiming it for something else
//! is ignored — so they all agree, and the writer that lost finds out when
//! it reads its own record back, repairs the log and plans again
//! (see [`State::outcome`]).
//!
//! Reading the state is here; planning writes (registrations, deletes) and
//! judging their outcome is in `plan.rs`.

mod plan;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use apache_avro::Schema;
use govbus_schema::Compatibility;
use serde_json::Value as Json;

use crate::error::ApiError;
pub use crate::log::{Contract, LogRecord, Mode, Reference};

/// One stored schema.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Normalized text.
    pub text: String,
    /// Named types it uses from other subjects.
    pub references: Vec<Reference>,
    /// Its data contract (metadata, rule set).
    pub contract: Contract,
    /// Parsed (with its references resolved).
    pub parsed: Arc<Schema>,
}

impl Stored {
    /// Whether this is the schema `text` with `references` and `contract`.
    pub fn is(&self, text: &str, references: &[Reference], contract: &Contract) -> bool {
        self.text == text && self.references == references && self.contract == *contract
    }
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

/// What became of a record this instance wrote, once read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It is in force.
    Applied,
    /// Another instance's record won; append `repair` (if any) so that
    /// compaction keeps the winner, then plan again.
    Lost {
        /// Record to append.
        repair: Option<LogRecord>,
    },
}

/// A registration request.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    /// Schema text.
    pub schema: String,
    /// References to other subjects' types.
    pub references: Vec<Reference>,
    /// Metadata and rule set registered with it.
    pub contract: Contract,
    /// In IMPORT mode: the id (and version) to keep.
    pub id: Option<u32>,
    /// In IMPORT mode: the version to keep.
    pub version: Option<u32>,
}

/// Everything the log says.
#[derive(Debug, Default)]
pub struct State {
    schemas: BTreeMap<u32, Stored>,
    by_text: HashMap<(String, Vec<Reference>, String), u32>,
    max_id: u32,
    subjects: BTreeMap<String, BTreeMap<u32, VersionEntry>>,
    global: Option<Compatibility>,
    subject_config: HashMap<String, Compatibility>,
    global_mode: Option<Mode>,
    subject_mode: HashMap<String, Mode>,
    conflicts: u64,
}

/// The contract as a map key.
fn contract_key(c: &Contract) -> String {
    if c.is_empty() {
        String::new()
    } else {
        serde_json::to_string(c).unwrap_or_default()
    }
}

/// Largest schema accepted (Confluent's error 42209 beyond).
pub const MAX_SCHEMA_BYTES: usize = 1 << 20;

/// Checks a subject name: not empty, at most 255 characters, no control characters.
pub fn check_subject(subject: &str) -> Result<(), ApiError> {
    let bad = |why| {
        Err(ApiError::InvalidSubject(
            subject.escape_default().to_string(),
            why,
        ))
    };
    if subject.trim().is_empty() {
        return bad("it is empty");
    }
    if subject.chars().count() > 255 {
        return bad("it is longer than 255 characters");
    }
    if subject.chars().any(char::is_control) {
        return bad("it contains control characters");
    }
    Ok(())
}

/// The largest schema id and version (Confluent's are 32-bit signed).
pub const MAX_ID: u32 = i32::MAX as u32;

/// The most references a schema may have, transitively.
pub const MAX_REFERENCES: usize = 256;

/// Parses a schema without references.
pub fn parse_schema(text: &str) -> Result<(String, Schema), ApiError> {
    parse_with(text, &[])
}

/// Parses `text` with the texts of the schemas it references (in an order
/// where each comes after what it references); returns the normalized
/// text and the schema.
fn parse_with(text: &str, referenced: &[String]) -> Result<(String, Schema), ApiError> {
    if text.len() > MAX_SCHEMA_BYTES {
        return Err(ApiError::TooLarge(text.len(), MAX_SCHEMA_BYTES));
    }
    let json: Json = serde_json::from_str(text)
        .map_err(|e| ApiError::InvalidSchema(format!("not JSON: {e}")))?;
    check_fields(&json)?;
    let parsed = if referenced.is_empty() {
        govbus_schema::parse(text).map_err(|e| ApiError::InvalidSchema(e.0))?
    } else {
        // Parse inside a wrapper record so that any schema (a union of
        // referenced types, say) can use the referenced names.
        let wrapper = serde_json::json!({
            "type": "record", "name": "govbus_reference_wrapper",
            "fields": [{"name": "value", "type": json}],
        })
        .to_string();
        let mut all: Vec<&str> = referenced.iter().map(String::as_str).collect();
        all.push(&wrapper);
        let mut list = govbus_schema::parse_list(&all).map_err(|e| ApiError::InvalidSchema(e.0))?;
        match list.pop() {
            Some(Schema::Record(mut r)) if r.fields.len() == 1 => r.fields.remove(0).schema,
            _ => return Err(ApiError::InvalidSchema("cannot resolve references".into())),
        }
    };
    Ok((govbus_schema::canonical(&parsed), parsed))
}

/// Checks apache_avro lets through: duplicate field names in a record.
fn check_fields(j: &Json) -> Result<(), ApiError> {
    match j {
        Json::Object(o) => {
            if let Some(Json::Array(fields)) = o.get("fields") {
                let mut seen = BTreeSet::new();
                for f in fields {
                    if let Some(n) = f.get("name").and_then(Json::as_str) {
                        if !seen.insert(n) {
                            return Err(ApiError::InvalidSchema(format!(
                                "duplicate field name \"{n}\" in record {}",
                                o.get("name").and_then(Json::as_str).unwrap_or("?")
                            )));
                        }
                    }
                }
            }
            o.values().try_for_each(check_fields)
        }
        Json::Array(a) => a.iter().try_for_each(check_fields),
        _ => Ok(()),
    }
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
                references,
                contract,
                deleted,
            } => self.apply_schema(
                subject,
                version,
                id,
                &schema,
                (references, contract),
                deleted,
            ),
            LogRecord::SchemaTombstone { subject, version } => {
                if let Some(vs) = self.subjects.get_mut(&subject) {
                    // A permanent delete always follows a soft delete (here
                    // and in Confluent's registry), so a tombstone over a
                    // live version is a losing writer's repair that raced
                    // with another writer's valid record: the record stays.
                    if vs.get(&version).is_some_and(|e| !e.deleted) {
                        self.conflicts += 1;
                        tracing::warn!(
                            subject,
                            version,
                            "ignoring a tombstone over a live version (concurrent writers)"
                        );
                        return;
                    }
                    vs.remove(&version);
                    if vs.is_empty() {
                        self.subjects.remove(&subject);
                    }
                }
            }
            LogRecord::DeleteSubject { subject, version } => {
                if let Some(vs) = self.subjects.get_mut(&subject) {
                    for (_, e) in vs.range_mut(..=version) {
                        e.deleted = true;
                    }
                }
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
            LogRecord::Mode {
                subject: None,
                mode,
            } => self.global_mode = mode,
            LogRecord::Mode {
                subject: Some(s),
                mode,
            } => match mode {
                Some(m) => {
                    self.subject_mode.insert(s, m);
                }
                None => {
                    self.subject_mode.remove(&s);
                }
            },
            LogRecord::Noop => {}
        }
    }

    fn apply_schema(
        &mut self,
        subject: String,
        version: u32,
        id: u32,
        schema: &str,
        (references, contract): (Vec<Reference>, Contract),
        deleted: bool,
    ) {
        // A log written before ids were checked may hold one out of range
        // (one past it would wrap to 0): it is left out, never followed.
        if !(1..=MAX_ID).contains(&id) || !(1..=MAX_ID).contains(&version) {
            tracing::warn!(
                id,
                version,
                subject,
                "skipping a schema whose id or version is out of range in the log"
            );
            return;
        }
        self.max_id = self.max_id.max(id);
        let (text, parsed) = match self.resolve(schema, &references) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(id, subject, error = %e, "skipping unparsable schema in the log");
                return;
            }
        };
        // First claim wins: an id already holding another schema, or a
        // version already holding another id, keeps what it holds.
        let other_schema = self
            .schemas
            .get(&id)
            .is_some_and(|s| !s.is(&text, &references, &contract));
        let versions = self.subjects.entry(subject.clone()).or_default();
        let taken = versions.get(&version).is_some_and(|e| e.id != id);
        if other_schema || taken {
            if versions.is_empty() {
                self.subjects.remove(&subject);
            }
            self.conflicts += 1;
            tracing::warn!(
                subject,
                version,
                id,
                "ignoring a schema record that conflicts with an earlier one (concurrent writers)"
            );
            return;
        }
        versions.insert(version, VersionEntry { id, deleted });
        if !self.schemas.contains_key(&id) {
            self.by_text
                .entry((text.clone(), references.clone(), contract_key(&contract)))
                .or_insert(id);
            self.schemas.insert(
                id,
                Stored {
                    text,
                    references,
                    contract,
                    parsed: Arc::new(parsed),
                },
            );
        }
    }

    /// After a repair tombstone of `subject` `version` was read back: the
    /// version's record to write again if another writer's valid record
    /// raced in before the tombstone (so compaction, which keeps a key's
    /// last record, keeps it and not the tombstone).
    pub fn rewrite_after_tombstone(&self, subject: &str, version: u32) -> Option<LogRecord> {
        let e = self.subjects.get(subject)?.get(&version)?;
        let s = self.schemas.get(&e.id)?;
        Some(LogRecord::Schema {
            subject: subject.to_string(),
            version,
            id: e.id,
            schema: s.text.clone(),
            references: s.references.clone(),
            contract: s.contract.clone(),
            deleted: e.deleted,
        })
    }

    /// Records ignored because an earlier one had claimed their id or version.
    pub fn conflicts(&self) -> u64 {
        self.conflicts
    }

    /// Texts of everything `refs` reference, transitively, each after what
    /// it references: each (subject, version) visited once, at most
    /// [`MAX_REFERENCES`] of them, nested at most 32 deep.
    fn referenced_texts(
        &self,
        refs: &[Reference],
        out: &mut Vec<String>,
        seen: &mut std::collections::HashSet<(String, u32)>,
        depth: usize,
    ) -> Result<(), ApiError> {
        if depth > 32 {
            return Err(ApiError::InvalidSchema("references nest too deep".into()));
        }
        for r in refs {
            if !seen.insert((r.subject.clone(), r.version)) {
                continue;
            }
            if seen.len() > MAX_REFERENCES {
                return Err(ApiError::InvalidSchema(format!(
                    "more than {MAX_REFERENCES} schemas referenced"
                )));
            }
            let stored = self
                .subjects
                .get(&r.subject)
                .and_then(|vs| vs.get(&r.version))
                .and_then(|entry| self.schemas.get(&entry.id))
                .ok_or_else(|| {
                    ApiError::InvalidSchema(format!(
                        "reference {} to subject {} version {} does not exist",
                        r.name, r.subject, r.version
                    ))
                })?;
            self.referenced_texts(&stored.references, out, seen, depth + 1)?;
            if !out.contains(&stored.text) {
                out.push(stored.text.clone());
            }
        }
        Ok(())
    }

    fn resolve(&self, text: &str, refs: &[Reference]) -> Result<(String, Schema), ApiError> {
        let mut texts = Vec::new();
        self.referenced_texts(refs, &mut texts, &mut Default::default(), 0)?;
        parse_with(text, &texts)
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

    /// The global mode.
    pub fn global_mode(&self) -> Mode {
        self.global_mode.unwrap_or_default()
    }

    /// The subject's own mode, if set.
    pub fn subject_mode(&self, subject: &str) -> Option<Mode> {
        self.subject_mode.get(subject).copied()
    }

    /// The mode in force for `subject`.
    pub fn mode_for(&self, subject: &str) -> Mode {
        self.subject_mode(subject)
            .unwrap_or_else(|| self.global_mode())
    }

    /// A schema by id, while some version (live or soft-deleted) holds it.
    pub fn schema(&self, id: u32) -> Option<&Stored> {
        self.schemas.get(&id).filter(|_| {
            self.subjects
                .values()
                .any(|vs| vs.values().any(|e| e.id == id))
        })
    }

    /// (subject, version) pairs holding schema `id`.
    pub fn id_versions(&self, id: u32, deleted: bool) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        for (s, vs) in &self.subjects {
            for (v, e) in vs {
                if e.id == id && (deleted || !e.deleted) {
                    out.push((s.clone(), *v));
                }
            }
        }
        out
    }

    /// Subjects with at least one live version (or any, with `deleted`),
    /// starting with `prefix`.
    pub fn subjects(&self, deleted: bool, prefix: &str) -> Vec<String> {
        self.subjects
            .iter()
            .filter(|(s, v)| s.starts_with(prefix) && v.values().any(|e| deleted || !e.deleted))
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// Versions of a subject: live ones, or all with `deleted`.
    pub fn versions_with(
        &self,
        subject: &str,
        deleted: bool,
    ) -> Result<Vec<(u32, VersionEntry)>, ApiError> {
        let v: Vec<(u32, VersionEntry)> = self
            .subjects
            .get(subject)
            .map(|m| {
                m.iter()
                    .filter(|(_, e)| deleted || !e.deleted)
                    .map(|(v, e)| (*v, *e))
                    .collect()
            })
            .unwrap_or_default();
        if v.is_empty() {
            return Err(ApiError::SubjectNotFound(subject.to_string()));
        }
        Ok(v)
    }

    /// Live versions of a subject.
    pub fn versions(&self, subject: &str) -> Result<Vec<(u32, VersionEntry)>, ApiError> {
        self.versions_with(subject, false)
    }

    fn parse_version(version: &str) -> Result<Option<u32>, ApiError> {
        if version == "latest" || version == "-1" {
            return Ok(None);
        }
        version
            .parse()
            .ok()
            .filter(|n| *n >= 1 && *n <= i32::MAX as u32)
            .map(Some)
            .ok_or_else(|| ApiError::InvalidVersion(version.to_string()))
    }

    /// One version (`latest`, `-1` or a number); soft-deleted ones too with `deleted`.
    pub fn version_with(
        &self,
        subject: &str,
        version: &str,
        deleted: bool,
    ) -> Result<(u32, u32), ApiError> {
        let n = Self::parse_version(version)?;
        let versions = self.versions_with(subject, deleted)?;
        match n {
            None => {
                let (v, e) = versions
                    .last()
                    .copied()
                    .ok_or_else(|| ApiError::SubjectNotFound(subject.to_string()))?;
                Ok((v, e.id))
            }
            Some(n) => versions
                .iter()
                .find(|(v, _)| *v == n)
                .map(|(v, e)| (*v, e.id))
                .ok_or_else(|| ApiError::VersionNotFound(version.to_string())),
        }
    }

    /// One live version (`latest`, `-1` or a number).
    pub fn version(&self, subject: &str, version: &str) -> Result<(u32, u32), ApiError> {
        self.version_with(subject, version, false)
    }

    /// Ids of schemas whose references include `subject` version `version`.
    pub fn referenced_by(&self, subject: &str, version: u32) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .subjects
            .values()
            .flat_map(|vs| vs.values())
            .filter(|e| !e.deleted)
            .map(|e| e.id)
            .filter(|id| {
                self.schemas.get(id).is_some_and(|s| {
                    s.references
                        .iter()
                        .any(|r| r.subject == subject && r.version == version)
                })
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The version of `subject` holding exactly this schema.
    pub fn lookup(
        &self,
        subject: &str,
        schema: &str,
        references: &[Reference],
        deleted: bool,
    ) -> Result<(u32, u32), ApiError> {
        let versions = self.versions_with(subject, deleted)?;
        let (text, _) = self.resolve(schema, references)?;
        versions
            .iter()
            .find(|(_, e)| {
                self.schemas
                    .get(&e.id)
                    .is_some_and(|s| s.text == text && s.references == references)
            })
            .map(|(v, e)| (*v, e.id))
            .ok_or_else(|| ApiError::SchemaNotFound("not found under this subject".into()))
    }

    /// Parses a schema a request carries.
    pub fn parse_request(
        &self,
        schema: &str,
        references: &[Reference],
    ) -> Result<Schema, ApiError> {
        Ok(self.resolve(schema, references)?.1)
    }

    /// Reasons `schema` is incompatible with `subject` at `version`
    /// (or, with None, with what the subject's level checks against).
    pub fn compatibility(
        &self,
        subject: &str,
        version: Option<&str>,
        schema: &Schema,
    ) -> Result<Vec<String>, ApiError> {
        let existing: Vec<Schema> = match version {
            Some(v) => {
                let (_, id) = self.version(subject, v)?;
                vec![self.stored(id)?.parsed.as_ref().clone()]
            }
            None => match self.versions(subject) {
                Ok(vs) => vs
                    .iter()
                    .filter_map(|(_, e)| self.schemas.get(&e.id))
                    .map(|s| s.parsed.as_ref().clone())
                    .collect(),
                Err(_) => vec![],
            },
        };
        Ok(self.level_for(subject).check(schema, &existing))
    }

    /// Whether the registry holds any subject (IMPORT needs an empty one).
    /// The schema stored as `id`, which the state refers to (a 404 if the
    /// state were ever inconsistent, never a panic).
    pub(crate) fn stored(&self, id: u32) -> Result<&Stored, ApiError> {
        self.schemas
            .get(&id)
            .ok_or_else(|| ApiError::SchemaNotFound(id.to_string()))
    }

    pub fn is_empty(&self) -> bool {
        self.subjects.is_empty()
    }
}

#[cfg(test)]
mod tests;
