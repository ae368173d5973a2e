//! What the sinks without a database of their own share: a small SQLite
//! ledger of offsets, per-entity sequences and (for files) the committed
//! length, and the JSON document of a change.

use std::collections::HashMap;

use rusqlite::OptionalExtension;
use serde_json::{json, Value as Json};

use super::{Applied, Row, SinkError};

/// Offsets, sequences and (for files) the committed length, in SQLite.
#[derive(Debug)]
pub(super) struct Ledger {
    conn: rusqlite::Connection,
}

impl Ledger {
    pub(super) fn open(path: &str) -> Result<Self, SinkError> {
        let conn = rusqlite::Connection::open(path)?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; {}
             CREATE TABLE IF NOT EXISTS _govbus_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);",
            super::sqlite::BOOKKEEPING
        ))?;
        super::sqlite::upgrade_dead(&conn)?;
        Ok(Self { conn })
    }

    pub(super) fn record_dead(&mut self, dead: &[super::Dead]) -> Result<(), SinkError> {
        super::sqlite::record_dead(&mut self.conn, dead)
    }

    pub(super) fn dead(&self, topic: &str) -> Result<i64, SinkError> {
        super::sqlite::dead(&self.conn, topic)
    }

    pub(super) fn offsets(&self, topic: &str) -> Result<HashMap<i32, i64>, SinkError> {
        let mut st = self
            .conn
            .prepare("SELECT partition, next_offset FROM _govbus_offsets WHERE topic = ?1")?;
        let rows = st.query_map([topic], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(super) fn meta(&self, name: &str) -> Result<Option<i64>, SinkError> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM _govbus_meta WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The rows newer than what was delivered (the last of each key wins
    /// within the batch), in order.
    pub(super) fn fresh<'a>(&self, rows: &'a [Row]) -> Result<(Vec<&'a Row>, u64), SinkError> {
        let mut latest: HashMap<(&str, &str), i64> = HashMap::new();
        let mut out = Vec::new();
        let mut stale = 0;
        for r in rows {
            let k = (r.table.name.as_str(), r.key.as_str());
            let known = match latest.get(&k) {
                Some(s) => Some(*s),
                None => self
                    .conn
                    .prepare_cached("SELECT seq FROM _govbus_seen WHERE tbl = ?1 AND key = ?2")?
                    .query_row(k, |row| row.get(0))
                    .optional()?,
            };
            if r.is_stale(known) {
                stale += 1;
                continue;
            }
            latest.insert(k, r.seq);
            out.push(r);
        }
        Ok((out, stale))
    }

    /// Records delivered rows, offsets and meta values in one transaction.
    pub(super) fn commit(
        &mut self,
        rows: &[&Row],
        offsets: &[(String, i32, i64)],
        meta: &[(&str, i64)],
    ) -> Result<(), SinkError> {
        let tx = self.conn.transaction()?;
        for r in rows {
            tx.prepare_cached(
                "INSERT INTO _govbus_seen (tbl, key, seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tbl, key) DO UPDATE SET seq = excluded.seq",
            )?
            .execute((&r.table.name, &r.key, r.seq))?;
        }
        for (topic, partition, next) in offsets {
            tx.prepare_cached(
                "INSERT INTO _govbus_offsets (topic, partition, next_offset) VALUES (?1, ?2, ?3)
                 ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
            )?
            .execute((topic, partition, next))?;
        }
        for (name, value) in meta {
            tx.prepare_cached(
                "INSERT INTO _govbus_meta (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )?
            .execute((name, value))?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// The JSON document of one change, as files and webhooks receive it.
pub(super) fn change_doc(r: &Row) -> Json {
    json!({
        "event_id": r.event_id,
        "table": r.table.name,
        "op": r.op.as_str(),
        "key": r.key,
        "seq": r.seq,
        "source_ts_ms": r.source_ts,
        "data": r.after.as_ref().map(govbus_schema::json::to_json),
    })
}

pub(super) fn counts(rows: &[&Row], stale: u64) -> Applied {
    let deletes = rows.iter().filter(|r| r.after.is_none()).count() as u64;
    Applied {
        upserts: rows.len() as u64 - deletes,
        deletes,
        stale,
    }
}
