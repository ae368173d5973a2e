//! Planning writes: what a registration or a delete would append to the
//! log, checked against compatibility, modes and the guard; and, once it
//! is read back, whether it won ([`State::outcome`]).

use super::*;

impl State {
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
            .map_or(Some(1), |v| v.checked_add(1))
            .filter(|v| *v <= super::MAX_ID)
            .ok_or_else(|| {
                ApiError::NotPermitted(format!("Subject {subject} has no version number left"))
            })?;
        if mode == Mode::Import {
            let id = reg.id.ok_or_else(|| {
                ApiError::NotPermitted(format!(
                    "Subject {subject} is in import mode: a registration must give its id"
                ))
            })?;
            if !(1..=super::MAX_ID).contains(&id) {
                return Err(ApiError::InvalidSchema(format!(
                    "id {id} is out of range: ids run from 1 to {}",
                    super::MAX_ID
                )));
            }
            if let Some(s) = self.schemas.get(&id) {
                if !s.is(&text, &refs, &contract) {
                    return Err(ApiError::IdMismatch(format!(
                        "Overwrite new schema with id {id} is not permitted: the id holds another schema"
                    )));
                }
            }
            let version = reg.version.unwrap_or(next_version);
            if !(1..=super::MAX_ID).contains(&version) {
                return Err(ApiError::InvalidVersion(format!(
                    "version {version} is out of range: versions run from 1 to {}",
                    super::MAX_ID
                )));
            }
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
            None => self
                .max_id
                .checked_add(1)
                .filter(|id| *id <= super::MAX_ID)
                .ok_or_else(|| {
                    ApiError::NotPermitted("the registry has no schema id left".into())
                })?,
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
        Ok(guard.check(subject, &self.stored(latest)?.parsed, &new))
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
                let Some(s) = self.schemas.get(&e.id) else {
                    return Outcome::Lost { repair: None };
                };
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
        let entry = *self
            .subjects
            .get(subject)
            .and_then(|vs| vs.get(&v))
            .ok_or_else(|| ApiError::VersionNotFound(v.to_string()))?;
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
        let s = self.stored(id)?;
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
}
