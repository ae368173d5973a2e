//! The registry's state: what the `_schemas` log says, applied in order.
//! Pure: no Kafka, no HTTP, so it is unit-tested directly.
//!
//! Two instances may write at once. Every instance applies the log in the
//! same order with the same rule — the first record to claim an id, or a
//! subject's version, wins; a later record claiming it for something else
//! is ignored — so they all agree, and the writer that lost finds out when
//! it reads its own record back, repairs the log and plans again
//! (see [`State::outcome`]).

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
    /// it references.
    fn referenced_texts(
        &self,
        refs: &[Reference],
        out: &mut Vec<String>,
        depth: usize,
    ) -> Result<(), ApiError> {
        if depth > 32 {
            return Err(ApiError::InvalidSchema("references nest too deep".into()));
        }
        for r in refs {
            let entry = self
                .subjects
                .get(&r.subject)
                .and_then(|vs| vs.get(&r.version))
                .ok_or_else(|| {
                    ApiError::InvalidSchema(format!(
                        "reference {} to subject {} version {} does not exist",
                        r.name, r.subject, r.version
                    ))
                })?;
            let stored = &self.schemas[&entry.id];
            self.referenced_texts(&stored.references, out, depth + 1)?;
            if !out.contains(&stored.text) {
                out.push(stored.text.clone());
            }
        }
        Ok(())
    }

    fn resolve(&self, text: &str, refs: &[Reference]) -> Result<(String, Schema), ApiError> {
        let mut texts = Vec::new();
        self.referenced_texts(refs, &mut texts, 0)?;
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
                let (v, e) = versions.last().copied().expect("versions is non-empty");
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
                self.schemas[id]
                    .references
                    .iter()
                    .any(|r| r.subject == subject && r.version == version)
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

    /// What registering `reg` under `subject` takes.
    pub fn plan_register(&self, subject: &str, reg: &Registration) -> Result<Plan, ApiError> {
        check_subject(subject)?;
        let mode = self.mode_for(subject);
        if mode == Mode::ReadOnly {
            return Err(ApiError::NotPermitted(format!(
                "Subject {subject} is in read-only mode"
            )));
        }
        let (text, parsed) = self.resolve(&reg.schema, &reg.references)?;
        let refs = reg.references.clone();
        // As Confluent's: a registration without metadata and rule set
        // inherits those of the subject's latest version.
        let contract = if reg.contract.is_empty() {
            self.version(subject, "latest")
                .ok()
                .and_then(|(_, id)| self.schemas.get(&id))
                .map(|s| s.contract.clone())
                .unwrap_or_default()
        } else {
            reg.contract.clone()
        };
        if let Some(live) = self.subjects.get(subject) {
            for e in live.values().filter(|e| !e.deleted) {
                if self
                    .schemas
                    .get(&e.id)
                    .is_some_and(|s| s.is(&text, &refs, &contract))
                    && reg.id.is_none_or(|id| id == e.id)
                {
                    return Ok(Plan::Existing(e.id));
                }
            }
        }
        let next_version = self
            .subjects
            .get(subject)
            .and_then(|m| m.keys().next_back())
            .map_or(1, |v| v + 1);
        if mode == Mode::Import {
            let id = reg.id.ok_or_else(|| {
                ApiError::NotPermitted(format!(
                    "Subject {subject} is in import mode: a registration must give its id"
                ))
            })?;
            if let Some(s) = self.schemas.get(&id) {
                if !s.is(&text, &refs, &contract) {
                    return Err(ApiError::IdMismatch(format!(
                        "Overwrite new schema with id {id} is not permitted: the id holds another schema"
                    )));
                }
            }
            let version = reg.version.unwrap_or(next_version);
            if self
                .subjects
                .get(subject)
                .is_some_and(|vs| vs.contains_key(&version))
            {
                return Err(ApiError::NotPermitted(format!(
                    "Subject {subject} already has a version {version}"
                )));
            }
            return Ok(Plan::Write(LogRecord::Schema {
                subject: subject.to_string(),
                version,
                id,
                schema: text,
                references: refs,
                contract,
                deleted: false,
            }));
        }
        if reg.id.is_some() || reg.version.is_some() {
            return Err(ApiError::NotPermitted(format!(
                "Subject {subject} is not in import mode: a registration cannot choose its id or version"
            )));
        }
        let reasons = self.compatibility(subject, None, &parsed)?;
        if !reasons.is_empty() {
            return Err(ApiError::Incompatible {
                subject: subject.to_string(),
                reasons,
            });
        }
        let id = match self
            .by_text
            .get(&(text.clone(), refs.clone(), contract_key(&contract)))
        {
            Some(id) => *id,
            None => self.max_id + 1,
        };
        Ok(Plan::Write(LogRecord::Schema {
            subject: subject.to_string(),
            version: next_version,
            id,
            schema: text,
            references: refs,
            contract,
            deleted: false,
        }))
    }

    /// What `guard` says of `reg` as the next version of `subject` (nothing
    /// for a subject's first version).
    pub fn guard_reasons(
        &self,
        subject: &str,
        reg: &Registration,
        guard: &dyn crate::Guard,
    ) -> Result<Vec<String>, ApiError> {
        let Ok((_, latest)) = self.version(subject, "latest") else {
            return Ok(vec![]);
        };
        let new = self.parse_request(&reg.schema, &reg.references)?;
        Ok(guard.check(subject, &self.schemas[&latest].parsed, &new))
    }

    /// Whether a record this instance wrote is in force, once applied.
    pub fn outcome(&self, written: &LogRecord) -> Outcome {
        let LogRecord::Schema {
            subject,
            version,
            id,
            schema,
            references,
            contract,
            deleted,
        } = written
        else {
            return Outcome::Applied;
        };
        let held = self.subjects.get(subject).and_then(|vs| vs.get(version));
        let ours = self
            .schemas
            .get(id)
            .is_some_and(|s| s.is(schema, references, contract));
        if ours
            && held
                == Some(&VersionEntry {
                    id: *id,
                    deleted: *deleted,
                })
        {
            return Outcome::Applied;
        }
        match held {
            // Same key, another id: write the winner again so that
            // compaction (which keeps the last record of a key) keeps it.
            Some(e) => {
                let s = &self.schemas[&e.id];
                Outcome::Lost {
                    repair: Some(LogRecord::Schema {
                        subject: subject.clone(),
                        version: *version,
                        id: e.id,
                        schema: s.text.clone(),
                        references: s.references.clone(),
                        contract: s.contract.clone(),
                        deleted: e.deleted,
                    }),
                }
            }
            // The id was another schema's: remove our record of this key.
            None => Outcome::Lost {
                repair: Some(LogRecord::SchemaTombstone {
                    subject: subject.clone(),
                    version: *version,
                }),
            },
        }
    }

    fn writable(&self, subject: &str) -> Result<(), ApiError> {
        if self.mode_for(subject) == Mode::ReadOnly {
            return Err(ApiError::NotPermitted(format!(
                "Subject {subject} is in read-only mode"
            )));
        }
        Ok(())
    }

    /// What deleting `subject` takes: the records, and the versions deleted.
    pub fn plan_delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<(Vec<LogRecord>, Vec<u32>), ApiError> {
        self.writable(subject)?;
        let all = self.versions_with(subject, true)?;
        let live: Vec<u32> = all
            .iter()
            .filter(|(_, e)| !e.deleted)
            .map(|(v, _)| *v)
            .collect();
        for (v, _) in &all {
            if !self.referenced_by(subject, *v).is_empty() {
                return Err(ApiError::ReferenceExists(subject.to_string(), *v));
            }
        }
        if permanent {
            if !live.is_empty() {
                return Err(ApiError::SubjectNotSoftDeleted(subject.to_string()));
            }
            let versions: Vec<u32> = all.iter().map(|(v, _)| *v).collect();
            let recs = versions
                .iter()
                .map(|v| LogRecord::SchemaTombstone {
                    subject: subject.to_string(),
                    version: *v,
                })
                .collect();
            return Ok((recs, versions));
        }
        let Some(&last) = live.last() else {
            return Err(ApiError::SubjectSoftDeleted(subject.to_string()));
        };
        Ok((
            vec![LogRecord::DeleteSubject {
                subject: subject.to_string(),
                version: last,
            }],
            live,
        ))
    }

    /// What deleting one version takes.
    pub fn plan_delete_version(
        &self,
        subject: &str,
        version: &str,
        permanent: bool,
    ) -> Result<(LogRecord, u32), ApiError> {
        self.writable(subject)?;
        let (v, id) = self.version_with(subject, version, true)?;
        let entry = self.subjects[subject][&v];
        if !self.referenced_by(subject, v).is_empty() {
            return Err(ApiError::ReferenceExists(subject.to_string(), v));
        }
        if permanent {
            if !entry.deleted {
                return Err(ApiError::VersionNotSoftDeleted(subject.to_string(), v));
            }
            return Ok((
                LogRecord::SchemaTombstone {
                    subject: subject.to_string(),
                    version: v,
                },
                v,
            ));
        }
        if entry.deleted {
            return Err(ApiError::VersionSoftDeleted(subject.to_string(), v));
        }
        let s = &self.schemas[&id];
        Ok((
            LogRecord::Schema {
                subject: subject.to_string(),
                version: v,
                id,
                schema: s.text.clone(),
                references: s.references.clone(),
                contract: s.contract.clone(),
                deleted: true,
            },
            v,
        ))
    }

    /// Whether the registry holds any subject (IMPORT needs an empty one).
    pub fn is_empty(&self) -> bool {
        self.subjects.is_empty()
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

    fn reg(schema: &str) -> Registration {
        Registration {
            schema: schema.into(),
            ..Default::default()
        }
    }

    /// Applies `rec` through its encoded form, as the log would.
    fn apply(s: &mut State, rec: &LogRecord) {
        let (k, v) = rec.encode();
        let back = LogRecord::decode(&k, v.as_deref()).unwrap().unwrap();
        assert_eq!(&back, rec);
        s.apply(back);
    }

    fn register_with(s: &mut State, subject: &str, r: &Registration) -> Result<u32, ApiError> {
        match s.plan_register(subject, r)? {
            Plan::Existing(id) => Ok(id),
            Plan::Write(rec) => {
                apply(s, &rec);
                assert_eq!(s.outcome(&rec), Outcome::Applied);
                let LogRecord::Schema { id, .. } = rec else {
                    unreachable!()
                };
                Ok(id)
            }
        }
    }

    fn register(s: &mut State, subject: &str, schema: &str) -> Result<u32, ApiError> {
        register_with(s, subject, &reg(schema))
    }

    fn code(e: ApiError) -> u32 {
        e.codes().1
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
        assert_eq!(
            s.id_versions(a, false),
            vec![("x-value".to_string(), 1), ("y-value".to_string(), 1)]
        );
    }

    #[test]
    fn incompatible_schema_is_refused_with_409() {
        let mut s = State::default();
        register(&mut s, "x-value", V1).unwrap();
        let e = register(&mut s, "x-value", V2_REQ).unwrap_err();
        assert_eq!(code(e), 409);
        // With NONE it goes in.
        apply(
            &mut s,
            &LogRecord::Config {
                subject: Some("x-value".into()),
                level: Some(Compatibility::None),
            },
        );
        register(&mut s, "x-value", V2_REQ).unwrap();
    }

    #[test]
    fn errors_carry_confluent_codes() {
        let s = State::default();
        assert_eq!(code(s.versions("nope").unwrap_err()), 40401);
        assert_eq!(
            code(s.plan_register("x", &reg("{not json")).unwrap_err()),
            42201
        );
        for bad in [
            r#"{"type":"nosuch"}"#,
            // a default that does not match its type
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","default":"one"}]}"#,
            // a duplicate field
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"a","type":"long"}]}"#,
        ] {
            assert_eq!(
                code(s.plan_register("x", &reg(bad)).unwrap_err()),
                42201,
                "{bad}"
            );
        }
        for subject in ["", "a\u{0}b", "line\nbreak", &"x".repeat(300)] {
            assert_eq!(code(s.plan_register(subject, &reg(V1)).unwrap_err()), 42208);
        }
        let huge = format!(
            r#"{{"type":"record","name":"R","doc":"{}","fields":[]}}"#,
            "x".repeat(MAX_SCHEMA_BYTES)
        );
        assert_eq!(code(s.plan_register("x", &reg(&huge)).unwrap_err()), 42209);
        let mut s = State::default();
        register(&mut s, "x", V1).unwrap();
        assert_eq!(code(s.version("x", "7").unwrap_err()), 40402);
        assert_eq!(code(s.version("x", "zero").unwrap_err()), 42202);
        assert_eq!(code(s.lookup("x", V2_OPT, &[], false).unwrap_err()), 40403);
    }

    #[test]
    fn soft_then_permanent_deletes_follow_confluent() {
        let mut s = State::default();
        let a = register(&mut s, "x", V1).unwrap();
        let b = register(&mut s, "x", V2_OPT).unwrap();
        // A version: soft first, then permanent.
        assert_eq!(
            code(s.plan_delete_version("x", "1", true).unwrap_err()),
            40407
        );
        let (rec, v) = s.plan_delete_version("x", "1", false).unwrap();
        assert_eq!(v, 1);
        apply(&mut s, &rec);
        assert_eq!(s.versions("x").unwrap().len(), 1);
        assert_eq!(s.versions_with("x", true).unwrap().len(), 2);
        assert_eq!(
            code(s.plan_delete_version("x", "1", false).unwrap_err()),
            40406
        );
        assert_eq!(s.version_with("x", "1", true).unwrap(), (1, a));
        let (rec, _) = s.plan_delete_version("x", "1", true).unwrap();
        apply(&mut s, &rec);
        assert_eq!(code(s.version_with("x", "1", true).unwrap_err()), 40402);
        assert!(s.schema(a).is_none(), "no version holds it any more");
        // The subject: soft, then permanent.
        assert_eq!(code(s.plan_delete_subject("x", true).unwrap_err()), 40405);
        let (recs, versions) = s.plan_delete_subject("x", false).unwrap();
        assert_eq!(versions, vec![2]);
        for r in &recs {
            apply(&mut s, r);
        }
        assert!(s.subjects(false, "").is_empty());
        assert_eq!(s.subjects(true, ""), vec!["x".to_string()]);
        assert_eq!(code(s.plan_delete_subject("x", false).unwrap_err()), 40404);
        assert!(
            s.schema(b).is_some(),
            "a soft-deleted version still serves its id"
        );
        let (recs, _) = s.plan_delete_subject("x", true).unwrap();
        for r in &recs {
            apply(&mut s, r);
        }
        assert!(s.subjects(true, "").is_empty());
        // Registering again after a permanent delete starts at version 1
        // and keeps the schema's id.
        assert_eq!(register(&mut s, "x", V2_OPT).unwrap(), b);
        assert_eq!(s.version("x", "latest").unwrap(), (1, b));
    }

    #[test]
    fn modes_guard_writes() {
        let mut s = State::default();
        register(&mut s, "x", V1).unwrap();
        apply(
            &mut s,
            &LogRecord::Mode {
                subject: Some("x".into()),
                mode: Some(Mode::ReadOnly),
            },
        );
        assert_eq!(code(s.plan_register("x", &reg(V2_OPT)).unwrap_err()), 42205);
        assert_eq!(code(s.plan_delete_subject("x", false).unwrap_err()), 42205);
        register(&mut s, "y", V1).unwrap();
        // IMPORT: ids and versions come with the request.
        apply(
            &mut s,
            &LogRecord::Mode {
                subject: Some("z".into()),
                mode: Some(Mode::Import),
            },
        );
        assert_eq!(code(s.plan_register("z", &reg(V2_REQ)).unwrap_err()), 42205);
        let imported = Registration {
            schema: V2_REQ.into(),
            id: Some(100_001),
            version: Some(7),
            ..Default::default()
        };
        assert_eq!(register_with(&mut s, "z", &imported).unwrap(), 100_001);
        assert_eq!(s.version("z", "latest").unwrap(), (7, 100_001));
        let clash = Registration {
            schema: V1.into(),
            id: Some(100_001),
            version: Some(8),
            ..Default::default()
        };
        assert_eq!(code(s.plan_register("z", &clash).unwrap_err()), 42207);
        // Outside IMPORT, a request cannot choose its id.
        assert_eq!(code(s.plan_register("y", &imported).unwrap_err()), 42205);
        // New ids continue after the imported one.
        assert_eq!(register(&mut s, "w", V2_OPT).unwrap(), 100_002);
    }

    #[test]
    fn references_resolve_and_protect_what_they_reference() {
        let mut s = State::default();
        let addr = r#"{"type":"record","name":"Address","namespace":"gov","fields":[{"name":"province","type":"string"}]}"#;
        register(&mut s, "gov.Address", addr).unwrap();
        let person = Registration {
            schema: r#"{"type":"record","name":"Person","namespace":"gov","fields":[{"name":"home","type":"gov.Address"}]}"#.into(),
            references: vec![Reference {
                name: "gov.Address".into(),
                subject: "gov.Address".into(),
                version: 1,
            }],
            ..Default::default()
        };
        let id = register_with(&mut s, "people-value", &person).unwrap();
        assert_eq!(register_with(&mut s, "people-value", &person).unwrap(), id);
        assert_eq!(s.referenced_by("gov.Address", 1), vec![id]);
        assert_eq!(
            code(
                s.plan_delete_version("gov.Address", "1", false)
                    .unwrap_err()
            ),
            42206
        );
        // A union of referenced types (several event types in one topic).
        let union = Registration {
            schema: r#"["gov.Address"]"#.into(),
            references: person.references.clone(),
            ..Default::default()
        };
        register_with(&mut s, "events-value", &union).unwrap();
        // Without the reference, or with a missing one: 42201.
        assert_eq!(
            code(s.plan_register("p2", &reg(&person.schema)).unwrap_err()),
            42201
        );
        let missing = Registration {
            references: vec![Reference {
                name: "gov.Address".into(),
                subject: "nope".into(),
                version: 1,
            }],
            ..person.clone()
        };
        let e = s.plan_register("p3", &missing).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    /// Two instances plan from the same state and both write: every
    /// instance applies the log in order and keeps the first claim; the
    /// loser sees it lost, repairs, plans again and gets a fresh id.
    #[test]
    fn concurrent_writers_never_share_an_id() {
        let mut s = State::default();
        register(&mut s, "base", V1).unwrap();
        let other = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"c","type":["null","long"],"default":null}]}"#;
        // Same key (subject x, version 1), both with the next id.
        let Plan::Write(a) = s.plan_register("x", &reg(V2_OPT)).unwrap() else {
            panic!()
        };
        let Plan::Write(b) = s.plan_register("x", &reg(other)).unwrap() else {
            panic!()
        };
        // Different keys claiming one id.
        let Plan::Write(c) = s.plan_register("y", &reg(V2_REQ)).unwrap() else {
            panic!()
        };
        apply(&mut s, &a);
        apply(&mut s, &b);
        apply(&mut s, &c);
        assert_eq!(s.conflicts(), 2);
        assert_eq!(s.outcome(&a), Outcome::Applied);
        let Outcome::Lost { repair: Some(rb) } = s.outcome(&b) else {
            panic!()
        };
        assert!(matches!(&rb, LogRecord::Schema { subject, version: 1, .. } if subject == "x"));
        apply(&mut s, &rb);
        let Outcome::Lost { repair: Some(rc) } = s.outcome(&c) else {
            panic!()
        };
        assert!(matches!(rc, LogRecord::SchemaTombstone { .. }));
        apply(&mut s, &rc);
        let ib = register(&mut s, "x", other).unwrap();
        let ic = register(&mut s, "y", V2_REQ).unwrap();
        let ia = s.version("x", "1").unwrap().1;
        let mut ids = vec![ia, ib, ic];
        ids.dedup();
        assert_eq!(ids.len(), 3, "{ids:?}");
        assert!(s.schema(ia).unwrap().text.contains("\"b\""));
    }

    /// A loser's repair tombstone that lands after another writer's valid
    /// record of the same key leaves that record in force, and the loser
    /// writes it again so that compaction keeps it.
    #[test]
    fn a_repair_tombstone_never_removes_a_raced_in_version() {
        let mut s = State::default();
        let Plan::Write(a) = s.plan_register("x", &reg(V1)).unwrap() else {
            panic!()
        };
        // Instance B: the same id for subject y, version 1; it loses the id.
        let Plan::Write(b) = s.plan_register("y", &reg(V2_REQ)).unwrap() else {
            panic!()
        };
        apply(&mut s, &a);
        apply(&mut s, &b);
        let Outcome::Lost {
            repair: Some(tomb @ LogRecord::SchemaTombstone { .. }),
        } = s.outcome(&b)
        else {
            panic!()
        };
        // Instance C registers y version 1 validly before B's tombstone.
        let Plan::Write(c) = s.plan_register("y", &reg(V2_OPT)).unwrap() else {
            panic!()
        };
        apply(&mut s, &c);
        assert_eq!(s.outcome(&c), Outcome::Applied);
        apply(&mut s, &tomb);
        let (_, id) = s.version("y", "1").unwrap();
        assert!(matches!(&c, LogRecord::Schema { id: cid, .. } if *cid == id));
        assert!(s.schema(id).unwrap().text.contains("null"));
        let again = s.rewrite_after_tombstone("y", 1).unwrap();
        assert_eq!(again, c);
        // A tombstone after a soft delete still removes the version.
        let (del, _) = s.plan_delete_version("y", "1", false).unwrap();
        apply(&mut s, &del);
        let (perm, _) = s.plan_delete_version("y", "1", true).unwrap();
        apply(&mut s, &perm);
        assert!(s.version("y", "1").is_err());
        assert!(s.rewrite_after_tombstone("y", 1).is_none());
    }

    #[test]
    fn config_and_mode_records_apply() {
        let mut s = State::default();
        apply(
            &mut s,
            &LogRecord::Config {
                subject: None,
                level: Some(Compatibility::Full),
            },
        );
        assert_eq!(s.level_for("any"), Compatibility::Full);
        apply(
            &mut s,
            &LogRecord::Mode {
                subject: None,
                mode: Some(Mode::ReadOnly),
            },
        );
        assert_eq!(s.mode_for("any"), Mode::ReadOnly);
        apply(
            &mut s,
            &LogRecord::Mode {
                subject: None,
                mode: None,
            },
        );
        assert_eq!(s.mode_for("any"), Mode::ReadWrite);
    }
}

#[cfg(test)]
mod contract_tests {
    use super::*;

    #[test]
    fn a_registration_without_a_contract_inherits_the_latest() {
        let mut s = State::default();
        let schema = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}"#;
        let with = Registration {
            schema: schema.into(),
            contract: Contract {
                metadata: Some(serde_json::json!({"properties": {"owner": "bca"}})),
                rule_set: Some(serde_json::json!({"domainRules": [{"name": "r"}]})),
            },
            ..Default::default()
        };
        let Plan::Write(rec) = s.plan_register("x", &with).unwrap() else {
            panic!()
        };
        s.apply(rec);
        let plain = Registration {
            schema: schema.into(),
            ..Default::default()
        };
        assert_eq!(s.plan_register("x", &plain).unwrap(), Plan::Existing(1));
        // A changed rule set is a new version of the same schema.
        let changed = Registration {
            contract: Contract {
                metadata: None,
                rule_set: Some(serde_json::json!({"domainRules": []})),
            },
            ..with
        };
        let Plan::Write(LogRecord::Schema { version, id, .. }) =
            s.plan_register("x", &changed).unwrap()
        else {
            panic!()
        };
        assert_eq!((version, id), (2, 2));
    }
}
