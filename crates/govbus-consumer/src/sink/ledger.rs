//! What the sinks without a database of their own share: a small SQLite
//! ledger of offsets, per-entity sequences and (for files) the committed
//! length, and the JSON document of a change.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value as Json};

use super::{Applied, Row, SinkError};
use crate::db::{self, Db};

/// Offsets, sequences, dead letters and (for files) the committed length,
/// in a SQLite file of govbus's bookkeeping tables.
#[derive(Debug)]
pub(super) struct Ledger {
    db: Db,
}

impl Ledger {
    pub(super) fn open(path: &str) -> Result<Self, SinkError> {
        Ok(Self {
            db: Db::sqlite(path)?,
        })
    }

    pub(super) fn record_dead(&mut self, dead: &[super::Dead]) -> Result<(), SinkError> {
        Ok(db::dead::record(&mut self.db, dead)?)
    }

    pub(super) fn dead(&mut self, topic: &str) -> Result<i64, SinkError> {
        Ok(db::dead::stale(&mut self.db, topic)?)
    }

    pub(super) fn offsets(&mut self, topic: &str) -> Result<HashMap<i32, i64>, SinkError> {
        Ok(db::offsets::read(&mut self.db, topic)?)
    }

    pub(super) fn meta(&mut self, name: &str) -> Result<Option<i64>, SinkError> {
        Ok(db::meta::read(&mut self.db, name)?)
    }

    /// The rows newer than what was delivered, in order (the last of each
    /// key wins within the batch), and how many were not.
    pub(super) fn fresh<'a>(&mut self, rows: &'a [Row]) -> Result<(Vec<&'a Row>, u64), SinkError> {
        let mut by_table: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for r in rows {
            by_table
                .entry(r.table.name.as_str())
                .or_default()
                .push(r.key.clone());
        }
        let mut known: HashMap<&str, HashMap<String, i64>> = HashMap::new();
        for (table, keys) in by_table {
            known.insert(table, db::seen::known(&mut self.db, table, keys)?);
        }
        let mut latest: HashMap<(&str, &str), i64> = HashMap::new();
        let mut out = Vec::new();
        let mut stale = 0;
        for r in rows {
            let k = (r.table.name.as_str(), r.key.as_str());
            let prev = latest
                .get(&k)
                .copied()
                .or_else(|| known.get(k.0).and_then(|m| m.get(k.1)).copied());
            if r.is_stale(prev) {
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
        // The last of each key, per table.
        let mut last: BTreeMap<&str, (Vec<&Row>, HashMap<&str, usize>)> = BTreeMap::new();
        for r in rows {
            let (list, at) = last.entry(r.table.name.as_str()).or_default();
            match at.get(r.key.as_str()) {
                Some(&i) => list[i] = r,
                None => {
                    at.insert(r.key.as_str(), list.len());
                    list.push(r);
                }
            }
        }
        self.db.write(|db| {
            for (table, (list, _)) in &last {
                db::seen::mark(db, table, list, None)?;
            }
            db::offsets::write(db, offsets)?;
            db::meta::write(db, meta)
        })?;
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
