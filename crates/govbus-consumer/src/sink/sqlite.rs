//! The SQLite sink, the embedded default: rows and offsets in one
//! transaction in a local file.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{q, Applied, Row, Sink, SinkError};
use crate::table::{ColType, SqlValue, TableDef};

/// `[consumer.sink] type = "sqlite"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteConfig {
    /// The database file (`:memory:` for none).
    pub path: String,
}

impl SqliteConfig {
    /// Opens (or creates) the file.
    pub fn build(&self) -> Result<SqliteSink, SinkError> {
        SqliteSink::open(&self.path)
    }
}

/// SQLite sink (the embedded default).
#[derive(Debug)]
pub struct SqliteSink {
    conn: rusqlite::Connection,
}

impl SqliteSink {
    /// Opens (creating) the database file.
    pub fn open(path: &str) -> Result<Self, SinkError> {
        let conn = rusqlite::Connection::open(path)?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000; {BOOKKEEPING}"
        ))?;
        upgrade_dead(&conn)?;
        Ok(Self { conn })
    }

    fn sqlite_type(t: ColType) -> &'static str {
        match t {
            ColType::Int | ColType::Bool => "INTEGER",
            ColType::Float => "REAL",
            _ => "TEXT",
        }
    }

    fn param(v: &SqlValue) -> rusqlite::types::Value {
        use rusqlite::types::Value as V;
        match v {
            SqlValue::Null => V::Null,
            SqlValue::Text(s) | SqlValue::Date(s) => V::Text(s.clone()),
            SqlValue::Int(i) => V::Integer(*i),
            SqlValue::Float(f) => V::Real(*f),
            SqlValue::Bool(b) => V::Integer(*b as i64),
            SqlValue::Timestamp(ms) => match chrono::DateTime::from_timestamp_millis(*ms) {
                Some(t) => V::Text(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                None => V::Integer(*ms),
            },
        }
    }
}

/// The bookkeeping tables of a SQLite sink or ledger: per-entity sequences,
/// offsets, dead letters.
pub(super) const BOOKKEEPING: &str = "CREATE TABLE IF NOT EXISTS _govbus_seen (
                 tbl TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (tbl, key));
             CREATE TABLE IF NOT EXISTS _govbus_offsets (
                 topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
                 PRIMARY KEY (topic, partition));
             CREATE TABLE IF NOT EXISTS _govbus_dead (
                 topic TEXT NOT NULL, partition INTEGER NOT NULL, source_offset INTEGER NOT NULL,
                 key TEXT NOT NULL, reason TEXT NOT NULL, error TEXT NOT NULL, at_ms INTEGER NOT NULL,
                 tbl TEXT, seen_seq INTEGER,
                 PRIMARY KEY (topic, partition, source_offset));";

/// Adds the columns a `_govbus_dead` of an earlier build lacks.
pub(super) fn upgrade_dead(conn: &rusqlite::Connection) -> Result<(), SinkError> {
    for col in ["tbl TEXT", "seen_seq INTEGER"] {
        match conn.execute_batch(&format!("ALTER TABLE _govbus_dead ADD COLUMN {col}")) {
            Ok(()) => {}
            Err(e) if e.to_string().contains("duplicate column") => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Stale entities of `topic`: dead-lettered, and nothing newer of them
/// applied since (rows of an earlier build, without a table, count).
const STALE: &str = "SELECT count(DISTINCT coalesce(d.tbl, '') || '/' || d.key) FROM _govbus_dead d
     WHERE (d.topic = ?1 OR d.topic = ?1 || '.replay')
       AND NOT EXISTS (SELECT 1 FROM _govbus_seen s
                       WHERE s.tbl = d.tbl AND s.key = d.key AND s.seq > coalesce(d.seen_seq, -1))";

/// Records `dead` in `_govbus_dead` (SQLite sinks and ledgers).
pub(super) fn record_dead(
    conn: &mut rusqlite::Connection,
    dead: &[super::Dead],
) -> Result<(), SinkError> {
    let tx = conn.transaction()?;
    {
        let mut st = tx.prepare_cached(
            "INSERT OR IGNORE INTO _govbus_dead (topic, partition, source_offset, key, reason, error, at_ms, tbl, seen_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8,
                     (SELECT seq FROM _govbus_seen WHERE tbl = ?8 AND key = ?4))",
        )?;
        for d in dead {
            st.execute(rusqlite::params![
                d.topic,
                d.partition,
                d.offset,
                d.key,
                d.reason,
                d.error,
                govbus_core::now_ms(),
                d.table
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// How many records of `topic` are in `_govbus_dead`.
pub(super) fn dead(conn: &rusqlite::Connection, topic: &str) -> Result<i64, SinkError> {
    Ok(conn.query_row(STALE, [topic], |r| r.get(0))?)
}

impl Sink for SqliteSink {
    fn record_dead(&mut self, dead: &[super::Dead]) -> Result<(), SinkError> {
        record_dead(&mut self.conn, dead)
    }

    fn dead(&mut self, topic: &str) -> Result<i64, SinkError> {
        dead(&self.conn, topic)
    }

    fn table_status(&mut self, table: &str) -> Result<Option<(i64, Option<i64>)>, SinkError> {
        let exists: i64 = self.conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )?;
        if exists == 0 {
            return Ok(None);
        }
        Ok(Some(self.conn.query_row(
            &format!("SELECT count(*), max(_govbus_source_ts) FROM {}", q(table)),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?))
    }

    fn ensure_table(&mut self, t: &TableDef) -> Result<(), SinkError> {
        let name = q(&t.name);
        let key = &t.columns[0];
        self.conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {name} ({} {} PRIMARY KEY, _govbus_seq INTEGER NOT NULL, _govbus_source_ts INTEGER NOT NULL);",
            q(&key.name),
            Self::sqlite_type(key.ty)
        ))?;
        let existing: Vec<String> = {
            let mut st = self.conn.prepare(&format!("PRAGMA table_info({name})"))?;
            let rows = st.query_map([], |r| r.get::<_, String>(1))?;
            rows.collect::<Result<_, _>>()?
        };
        for c in &t.columns[1..] {
            if !existing.contains(&c.name) {
                self.conn.execute_batch(&format!(
                    "ALTER TABLE {name} ADD COLUMN {} {};",
                    q(&c.name),
                    Self::sqlite_type(c.ty)
                ))?;
            }
        }
        Ok(())
    }

    fn offsets(&mut self, topic: &str) -> Result<HashMap<i32, i64>, SinkError> {
        let mut st = self
            .conn
            .prepare("SELECT partition, next_offset FROM _govbus_offsets WHERE topic = ?1")?;
        let rows = st.query_map([topic], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn apply(
        &mut self,
        rows: &[Row],
        offsets: &[(String, i32, i64)],
    ) -> Result<Applied, SinkError> {
        let tx = self.conn.transaction()?;
        let mut done = Applied::default();
        for r in rows {
            let prev: Option<i64> = tx
                .prepare_cached("SELECT seq FROM _govbus_seen WHERE tbl = ?1 AND key = ?2")?
                .query_row((&r.table.name, &r.key), |row| row.get(0))
                .map(Some)
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(e),
                })?;
            if r.is_stale(prev) {
                done.stale += 1;
                continue;
            }
            let t = &r.table;
            match &r.values {
                Some(values) => {
                    let cols: Vec<String> = t.columns.iter().map(|c| q(&c.name)).collect();
                    let ph: Vec<String> = (1..=cols.len() + 2).map(|i| format!("?{i}")).collect();
                    let set: Vec<String> = cols[1..]
                        .iter()
                        .chain(["_govbus_seq".to_string(), "_govbus_source_ts".to_string()].iter())
                        .map(|c| format!("{c} = excluded.{c}"))
                        .collect();
                    let sql = format!(
                        "INSERT INTO {} ({}, _govbus_seq, _govbus_source_ts) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}",
                        q(&t.name),
                        cols.join(", "),
                        ph.join(", "),
                        cols[0],
                        set.join(", ")
                    );
                    let mut params: Vec<rusqlite::types::Value> =
                        values.iter().map(Self::param).collect();
                    params.push(rusqlite::types::Value::Integer(r.seq));
                    params.push(rusqlite::types::Value::Integer(r.source_ts));
                    tx.prepare_cached(&sql)?
                        .execute(rusqlite::params_from_iter(params))?;
                    done.upserts += 1;
                }
                None => {
                    tx.prepare_cached(&format!(
                        "DELETE FROM {} WHERE {} = ?1",
                        q(&t.name),
                        q(&t.columns[0].name)
                    ))?
                    .execute([&r.key])?;
                    done.deletes += 1;
                }
            }
            tx.prepare_cached(
                "INSERT INTO _govbus_seen (tbl, key, seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tbl, key) DO UPDATE SET seq = excluded.seq",
            )?
            .execute((&t.name, &r.key, r.seq))?;
        }
        for (topic, partition, next) in offsets {
            tx.prepare_cached(
                "INSERT INTO _govbus_offsets (topic, partition, next_offset) VALUES (?1, ?2, ?3)
                 ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
            )?
            .execute((topic, partition, next))?;
        }
        tx.commit()?;
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Column;
    use std::sync::Arc;

    fn table() -> Arc<TableDef> {
        Arc::new(TableDef {
            name: "t".into(),
            key: "id".into(),
            columns: vec![
                Column {
                    name: "id".into(),
                    path: vec!["id".into()],
                    ty: ColType::Text,
                },
                Column {
                    name: "n".into(),
                    path: vec!["n".into()],
                    ty: ColType::Int,
                },
            ],
        })
    }

    fn row(t: &Arc<TableDef>, key: &str, seq: i64, n: Option<i64>) -> Row {
        Row {
            table: t.clone(),
            key: key.into(),
            seq,
            source_ts: 0,
            values: n.map(|n| vec![SqlValue::Text(key.into()), SqlValue::Int(n)]),
            event_id: format!("{key}-{seq}"),
            op: if n.is_some() {
                govbus_schema::Op::Update
            } else {
                govbus_schema::Op::Delete
            },
            after: None,
        }
    }

    #[test]
    fn a_snapshot_or_delete_of_the_same_sequence_applies_again() {
        let t = table();
        let mut r = row(&t, "a", 5, Some(1));
        assert!(!r.is_stale(None) && !r.is_stale(Some(4)));
        assert!(r.is_stale(Some(5)), "a live change seen twice");
        assert!(r.is_stale(Some(6)));
        r.op = govbus_schema::Op::Snapshot;
        assert!(!r.is_stale(Some(5)), "re-sent by a subscription change");
        assert!(r.is_stale(Some(6)));
        let d = row(&t, "a", 5, None);
        assert!(!d.is_stale(Some(5)), "left by a subscription change");
        assert!(d.is_stale(Some(6)));
        // SQLite: the row re-sent with the same sequence is applied, then
        // deleted by a leave of the same sequence.
        let mut s = SqliteSink::open(":memory:").unwrap();
        s.ensure_table(&t).unwrap();
        s.apply(&[row(&t, "a", 5, Some(1))], &[]).unwrap();
        let mut again = row(&t, "a", 5, Some(2));
        again.op = govbus_schema::Op::Snapshot;
        s.apply(&[again], &[]).unwrap();
        let n: i64 = s
            .conn
            .query_row("SELECT n FROM t WHERE id = 'a'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
        s.apply(&[row(&t, "a", 5, None)], &[]).unwrap();
        let rows: i64 = s
            .conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0);
    }

    #[test]
    fn sqlite_applies_in_sequence_and_skips_stale() {
        let mut s = SqliteSink::open(":memory:").unwrap();
        let t = table();
        s.ensure_table(&t).unwrap();
        let a = s
            .apply(
                &[
                    row(&t, "a", 1, Some(1)),
                    row(&t, "a", 3, Some(3)),
                    row(&t, "a", 2, Some(2)),
                ],
                &[("x".into(), 0, 3)],
            )
            .unwrap();
        assert_eq!(
            a,
            Applied {
                upserts: 2,
                deletes: 0,
                stale: 1
            }
        );
        let n: i64 = s
            .conn
            .query_row("SELECT n FROM t WHERE id = 'a'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3);
        // A delete, then a stale upsert: the row stays gone.
        s.apply(&[row(&t, "a", 4, None), row(&t, "a", 3, Some(9))], &[])
            .unwrap();
        let c: i64 = s
            .conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(c, 0);
        assert_eq!(s.offsets("x").unwrap()[&0], 3);
    }
}
