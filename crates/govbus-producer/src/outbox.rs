//! Relays a transactional outbox in the agency's own PostgreSQL
//! (`deploy/sql/outbox.sql`) through the publisher.
//!
//! Exactly once: the outbox id of each row is recorded in the publisher's
//! store in the same transaction as the change, and the row is deleted
//! afterwards; a row whose id is recorded was already taken (a crash came
//! between the two) and is only deleted. Ids are recorded one by one, not as
//! a high-water mark: with concurrent writers a lower id can commit after a
//! higher one. A row that cannot become a change
//! (broken JSON, fails the schema, deletes an unknown entity) goes to the DLQ
//! with the reason, then is deleted: nothing is lost, nothing blocks the rest.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use apache_avro::Schema;
use govbus_schema::names::Names;
use govbus_schema::project::record_of;
use serde_json::{Map, Value as Json};

use crate::deadletter::DeadLetters;
use crate::publisher::{ChangeRequest, Publisher, SubmitError};
use crate::store::StoreError;

/// The outbox relay failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The source database.
    #[error("outbox database: {0}")]
    Postgres(#[from] postgres::Error),
    /// The source database could not be reached as its URL says.
    #[error("outbox database: {0}")]
    Connect(#[from] govbus_pg::PgError),
    /// The publisher's store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The dead-letter topic.
    #[error("dead-letter: {0}")]
    DeadLetter(#[from] rdkafka::error::KafkaError),
    /// Anything else the publisher refused for a reason that is not the row's fault.
    #[error(transparent)]
    Submit(#[from] SubmitError),
}

/// A dead-lettered outbox row to put back ([`PgOutbox::put_back`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRow<'a> {
    /// The dead letter (`topic:partition:offset`).
    pub letter: &'a str,
    /// The row's dataset.
    pub dataset: String,
    /// `INSERT`, `UPDATE` or `DELETE`.
    pub op: String,
    /// The entity key.
    pub key: String,
    /// The before image (JSON text).
    pub before: Option<String>,
    /// The after image (JSON text).
    pub after: Option<String>,
    /// The row's earlier dead letters (JSON).
    pub history: String,
    /// The entity's sequence when the row was refused (`govbus.entity.seq`):
    /// the relay accepts the row only while the entity is still there.
    pub expect_seq: Option<i64>,
}

impl<'a> ReplayRow<'a> {
    /// The row of a dead letter's value (the row as `row_to_json` wrote it).
    pub fn of(
        letter: &'a str,
        value: &[u8],
        history: String,
        expect_seq: Option<i64>,
    ) -> Result<Self, String> {
        let row: Map<String, Json> = serde_json::from_slice(value)
            .map_err(|e| format!("{letter} is not an outbox row ({e})"))?;
        let text = |k: &str| -> Result<String, String> {
            row.get(k)
                .and_then(Json::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("{letter} is not an outbox row (no `{k}`)"))
        };
        let image = |k: &str| row.get(k).filter(|v| !v.is_null()).map(Json::to_string);
        Ok(Self {
            letter,
            dataset: text("dataset")?,
            op: text("op")?,
            key: text("key")?,
            before: image("before"),
            after: image("after"),
            history,
            expect_seq,
        })
    }
}

/// An agency database with `govbus.outbox`.
pub struct PgOutbox {
    client: postgres::Client,
    source: String,
    table: String,
}

impl std::fmt::Debug for PgOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOutbox")
            .field("source", &self.source)
            .finish()
    }
}

/// Turns a flat row (`parent_child` columns) into the entity's shape.
pub fn unflatten(schema: &Schema, row: &Map<String, Json>) -> Json {
    let names = Names::of(schema);
    match record_of(schema, &names) {
        Some(r) => govbus_schema::flat::nest(r, &names, row, &|_, v| Some(v.clone())),
        None => Json::Object(row.clone()),
    }
}

impl PgOutbox {
    /// Connects to the agency database holding `<schema>.outbox` (`govbus`
    /// as `deploy/sql/outbox.sql` creates it).
    pub fn connect(url: &str, schema: &str) -> Result<Self, OutboxError> {
        let client = govbus_pg::connect(url)?;
        let table = format!("{}.outbox", crate::store::quote_ident(schema));
        let source = format!("outbox:{}/{schema}", redact(url));
        Ok(Self {
            client,
            source,
            table,
        })
    }

    /// Relays up to `limit` rows; returns how many rows were taken.
    pub fn step(
        &mut self,
        publisher: &Publisher,
        dead: &DeadLetters,
        limit: i64,
    ) -> Result<usize, OutboxError> {
        let rows = self.client.query(
            &format!(
                "SELECT id, dataset, op, key, after::text,
                        (to_jsonb(o) ->> 'replay_expect_seq')::bigint
                 FROM {} o ORDER BY id LIMIT $1",
                self.table
            ),
            &[&limit],
        )?;
        let mut taken = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: i64 = r.get(0);
            taken.push(id);
            let mark = format!("{}#{id}", self.source);
            if publisher.checkpoint(&mark)?.is_some() {
                continue; // stored before a crash; only its deletion was lost
            }
            let dataset: String = r.get(1);
            let op: String = r.get(2);
            let key: String = r.get(3);
            let after: Option<String> = r.get(4);
            // Set on a row `govbus dlq replay` put back: the entity's
            // sequence when the row was refused.
            let expect_seq: Option<i64> = r.get(5);
            let req = match (op.as_str(), after) {
                ("DELETE", _) => Ok(ChangeRequest::Delete { key: key.clone() }),
                (_, Some(text)) => match serde_json::from_str::<Json>(&text) {
                    Ok(Json::Object(row)) => match publisher.entity_schema(&dataset) {
                        Some(s) => Ok(ChangeRequest::Upsert(unflatten(s, &row))),
                        None => Err((
                            "unknown_dataset",
                            format!("dataset `{dataset}` is not published by this agency"),
                        )),
                    },
                    Ok(other) => Err((
                        "malformed",
                        format!("after image is not an object: {other}"),
                    )),
                    Err(e) => Err(("malformed", format!("after image is not JSON: {e}"))),
                },
                (_, None) => Err(("malformed", format!("{op} without an after image"))),
            };
            let mut rules: Option<String> = None;
            let res: Result<(), (&'static str, String)> = match req {
                Err(reject) => Err(reject),
                Ok(req) => match match expect_seq {
                    Some(then) => publisher.submit_replayed(&dataset, req, &mark, id, then),
                    None => publisher.submit_from(&dataset, vec![req], &mark, id),
                } {
                    Ok(_) => Ok(()),
                    Err(SubmitError::Invalid(errs)) => {
                        let named: Vec<&str> =
                            errs.iter().filter_map(crate::publisher::rule_of).collect();
                        let reason = if named.len() == errs.len() {
                            "contract"
                        } else {
                            "schema"
                        };
                        if !named.is_empty() {
                            rules = Some(named.join(","));
                        }
                        Err((
                            reason,
                            errs.iter()
                                .map(|e| e.to_string())
                                .collect::<Vec<_>>()
                                .join("; "),
                        ))
                    }
                    Err(e @ SubmitError::UnknownEntity { .. }) => {
                        Err(("unknown_entity", e.to_string()))
                    }
                    Err(e @ SubmitError::UnknownDataset(_)) => {
                        Err(("unknown_dataset", e.to_string()))
                    }
                    Err(e @ SubmitError::Superseded { .. }) => Err(("superseded", e.to_string())),
                    // The store is down (or a bug): stop; the row is retried later.
                    Err(e) => return Err(e.into()),
                },
            };
            match res {
                Ok(()) => {}
                Err((reason, error)) => {
                    let original: Option<String> = self
                        .client
                        .query_one(
                            &format!(
                                "SELECT row_to_json(o)::text FROM {} o WHERE id = $1",
                                self.table
                            ),
                            &[&id],
                        )?
                        .get(0);
                    govbus_core::InternalEvent::emit(crate::events::OutboxRejected {
                        id,
                        dataset: &dataset,
                        reason,
                        error: &error,
                    });
                    // What a replay must find the entity at (unknown when
                    // the dataset is not this producer's).
                    let entity_seq = publisher.entity_seq(&dataset, &key).ok();
                    dead.send_rejected(
                        &key,
                        original.unwrap_or_default().as_bytes(),
                        reason,
                        &error,
                        &format!("{}#{id}", self.source),
                        rules.as_deref(),
                        entity_seq,
                    )?;
                    // Recorded so that a crash before the delete does not send it twice.
                    publisher.record_checkpoint(&mark, id)?;
                }
            }
        }
        if !taken.is_empty() {
            self.client.execute(
                &format!("DELETE FROM {} WHERE id = ANY($1)", self.table),
                &[&taken],
            )?;
            let marks: Vec<String> = taken
                .iter()
                .map(|id| format!("{}#{id}", self.source))
                .collect();
            publisher.forget_checkpoints(&marks)?;
        }
        Ok(taken.len())
    }

    /// Puts rows back that `govbus dlq replay` takes from the DLQ, each
    /// with its history (`replay_history`), so that the relay takes them
    /// through the rules and schema again. Exactly once: each letter is
    /// recorded in `<schema>.outbox_replayed` in the same transaction, and a
    /// letter recorded before is not put back twice. Returns, per letter,
    /// whether it was put back now (false: it was before).
    pub fn put_back(&mut self, rows: &[ReplayRow<'_>]) -> Result<Vec<bool>, OutboxError> {
        let replayed = self.table.replace(".outbox", ".outbox_replayed");
        self.client.batch_execute(&format!(
            "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS replay_history TEXT;
             ALTER TABLE {t} ADD COLUMN IF NOT EXISTS replay_expect_seq BIGINT;
             CREATE TABLE IF NOT EXISTS {replayed} (
                 letter TEXT PRIMARY KEY, at TIMESTAMPTZ NOT NULL DEFAULT now());",
            t = self.table
        ))?;
        let mut tx = self.client.transaction()?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let fresh = tx.execute(
                &format!("INSERT INTO {replayed} (letter) VALUES ($1) ON CONFLICT DO NOTHING"),
                &[&r.letter],
            )? == 1;
            if fresh {
                tx.execute(
                    &format!(
                        "INSERT INTO {} (dataset, op, key, before, after, replay_history, replay_expect_seq)
                         VALUES ($1, $2, $3, $4::text::jsonb, $5::text::jsonb, $6, $7)",
                        self.table
                    ),
                    &[&r.dataset, &r.op, &r.key, &r.before, &r.after, &r.history, &r.expect_seq],
                )?;
            }
            out.push(fresh);
        }
        tx.commit()?;
        Ok(out)
    }

    /// Relays until `stop`.
    pub fn run(
        &mut self,
        publisher: &Publisher,
        dead: &DeadLetters,
        stop: &AtomicBool,
    ) -> Result<(), OutboxError> {
        while !stop.load(Ordering::Relaxed) {
            if self.step(publisher, dead, 500)? == 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }
}

fn redact(url: &str) -> String {
    govbus_core::secret::redact(url)
}
