//! The SQLite sink, the embedded default: rows and offsets in one
//! transaction in a local file.
//!
//! Long because every bookkeeping concern of a province's database
//! (offsets, dead letters, receipts, report cells, snapshots) keeps its
//! SQLite statements here, as `postgres.rs` keeps PostgreSQL's.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::{q, report_deltas, reported, Applied, Before, Row, Sink, SinkError};
use crate::report::{cell_of, cell_text, Cell, Report};
use crate::snapshot::Snapshot;
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
    reports: Vec<Arc<Report>>,
    touched: Vec<(String, Cell, i64)>,
    receipts: super::ReceiptState,
}

impl SqliteSink {
    /// Opens (creating) the database file.
    pub fn open(path: &str) -> Result<Self, SinkError> {
        let conn = rusqlite::Connection::open(path)?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000; {BOOKKEEPING}"
        ))?;
        upgrade_dead(&conn)?;
        conn.execute_batch(REPORTS)?;
        Ok(Self {
            conn,
            reports: Vec::new(),
            touched: Vec::new(),
            receipts: Default::default(),
        })
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

/// The tables that keep reports (the counts, definitions and snapshots)
/// and receipts.
const REPORTS: &str = "CREATE TABLE IF NOT EXISTS _govbus_report_cells (
                 report TEXT NOT NULL, cell TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (report, cell));
             CREATE TABLE IF NOT EXISTS _govbus_reports (
                 report TEXT PRIMARY KEY, definition TEXT NOT NULL, built_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS _govbus_receipts (
                 subscriber TEXT NOT NULL, seq INTEGER NOT NULL, applied_at_ms INTEGER NOT NULL,
                 prev TEXT NOT NULL, hash TEXT NOT NULL, events TEXT NOT NULL, PRIMARY KEY (subscriber, seq));
             CREATE TABLE IF NOT EXISTS _govbus_receipts_published (
                 subscriber TEXT PRIMARY KEY, seq INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS _govbus_applied_days (
                 day TEXT PRIMARY KEY, n INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS _govbus_report_snapshots (
                 report TEXT NOT NULL, at TEXT NOT NULL, taken_ms INTEGER NOT NULL, total INTEGER NOT NULL,
                 digest TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (report, at));";

/// Moves each report's counts over the tables of `applied`, from the
/// cells of the rows `before` them to their new ones, in `tx`; the cells
/// changed go to `touched`.
fn write_reports(
    tx: &rusqlite::Transaction<'_>,
    reports: &[Arc<Report>],
    applied: &[&Row],
    before: &Before,
    touched: &mut Vec<(String, Cell, i64)>,
) -> Result<(), SinkError> {
    for (rep, deltas) in report_deltas(reports, applied, before) {
        let id = rep.id();
        let mut count = tx.prepare_cached(
            "INSERT INTO _govbus_report_cells (report, cell, n) VALUES (?1, ?2, ?3)
             ON CONFLICT (report, cell) DO UPDATE SET n = n + excluded.n",
        )?;
        let mut empty = tx.prepare_cached(
            "DELETE FROM _govbus_report_cells WHERE report = ?1 AND cell = ?2 AND n = 0",
        )?;
        for (c, d) in &deltas {
            let text = cell_text(c);
            count.execute((&id, &text, d))?;
            empty.execute((&id, &text))?;
        }
        touched.extend(deltas.into_iter().map(|(c, d)| (id.clone(), c, d)));
    }
    Ok(())
}

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
        if self.receipts.subscriber.is_some() && self.receipts.last.is_none() {
            let last = self.last_receipt()?;
            self.receipts.last = Some(last);
        }
        let tx = self.conn.transaction()?;
        let mut done = Applied::default();
        let mut applied: Vec<&Row> = Vec::new();
        let mut before = Before::default();
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
            if reported(&self.reports, &t.name) && !before.has(&t.name, &r.key) {
                let cols: Vec<String> = t.columns.iter().map(|c| q(&c.name)).collect();
                let mut st = tx.prepare_cached(&format!(
                    "SELECT {} FROM {} WHERE {} = ?1",
                    cols.join(", "),
                    q(&t.name),
                    cols[0]
                ))?;
                let mut found = st.query([&r.key])?;
                let values = match found.next()? {
                    Some(row) => Some(Self::values(row, t)?),
                    None => None,
                };
                before.found(t, &r.key, values);
            }
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
            applied.push(r);
        }
        let mut touched = Vec::new();
        write_reports(&tx, &self.reports, &applied, &before, &mut touched)?;
        let receipt = self
            .receipts
            .next(self.receipts.last.clone().flatten(), &applied);
        if let Some(r) = &receipt {
            tx.prepare_cached(
                "INSERT INTO _govbus_receipts (subscriber, seq, applied_at_ms, prev, hash, events)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute((
                &r.subscriber,
                r.seq,
                r.applied_at_ms,
                &r.prev,
                &r.hash,
                serde_json::to_string(&r.events).unwrap_or_default(),
            ))?;
        }
        let n = (done.upserts + done.deletes) as i64;
        if n > 0 {
            tx.prepare_cached(
                "INSERT INTO _govbus_applied_days (day, n) VALUES (?1, ?2)
                 ON CONFLICT (day) DO UPDATE SET n = n + excluded.n",
            )?
            .execute((super::applied_day(), n))?;
        }
        for (topic, partition, next) in offsets {
            tx.prepare_cached(
                "INSERT INTO _govbus_offsets (topic, partition, next_offset) VALUES (?1, ?2, ?3)
                 ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
            )?
            .execute((topic, partition, next))?;
        }
        tx.commit()?;
        self.touched.extend(touched);
        self.receipts.committed(receipt);
        Ok(done)
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn receipts_published(&mut self) -> Result<i64, SinkError> {
        let sub = self.receipts.subscriber.clone().unwrap_or_default();
        Ok(self
            .conn
            .query_row(
                "SELECT seq FROM _govbus_receipts_published WHERE subscriber = ?1",
                [sub],
                |r| r.get(0),
            )
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(0),
                e => Err(e),
            })?)
    }

    fn mark_receipts_published(&mut self, seq: i64) -> Result<(), SinkError> {
        let sub = self.receipts.subscriber.clone().unwrap_or_default();
        self.conn.execute(
            "INSERT INTO _govbus_receipts_published (subscriber, seq) VALUES (?1, ?2)
             ON CONFLICT (subscriber) DO UPDATE SET seq = max(excluded.seq, seq)",
            (sub, seq),
        )?;
        Ok(())
    }

    fn set_receipts(&mut self, subscriber: &str) -> Result<(), SinkError> {
        self.receipts.subscriber = Some(subscriber.to_string());
        self.receipts.last = None;
        Ok(())
    }

    fn take_receipts(&mut self) -> Vec<crate::receipt::Receipt> {
        std::mem::take(&mut self.receipts.out)
    }

    fn receipts(
        &mut self,
        from: i64,
        limit: i64,
    ) -> Result<Vec<crate::receipt::Receipt>, SinkError> {
        let mut st = self.conn.prepare(
            "SELECT subscriber, seq, applied_at_ms, prev, hash, events FROM _govbus_receipts
             WHERE seq >= ?1 ORDER BY subscriber, seq LIMIT ?2",
        )?;
        let rows = st.query_map((from, limit), |r| {
            Ok(super::stored_receipt(
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                &r.get::<_, String>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for r in rows {
            out.extend(r?);
        }
        Ok(out)
    }

    fn set_reports(&mut self, reports: Vec<Arc<Report>>) -> Result<(), SinkError> {
        self.reports = reports;
        Ok(())
    }

    fn take_touched(&mut self) -> Vec<(String, Cell, i64)> {
        std::mem::take(&mut self.touched)
    }

    fn report_cells(&mut self, report: &str) -> Result<Vec<(Cell, i64)>, SinkError> {
        let mut st = self
            .conn
            .prepare("SELECT cell, n FROM _govbus_report_cells WHERE report = ?1 ORDER BY cell")?;
        let rows = st.query_map([report], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))?;
        let mut out = Vec::new();
        for r in rows {
            let (c, n) = r?;
            if let Some(c) = cell_of(&c) {
                out.push((c, n));
            }
        }
        Ok(out)
    }

    fn scan(
        &mut self,
        t: &TableDef,
        report: Option<&str>,
        each: &mut dyn FnMut(&[SqlValue]),
    ) -> Result<Option<Vec<(Cell, i64)>>, SinkError> {
        if self.table_status(&t.name)?.is_none() {
            return Ok(None);
        }
        // One snapshot (a read transaction) for the rows and the figures.
        let tx = self.conn.transaction()?;
        let mut cells = Vec::new();
        if let Some(r) = report {
            let mut st =
                tx.prepare("SELECT cell, n FROM _govbus_report_cells WHERE report = ?1")?;
            let rows = st.query_map([r], |x| Ok((x.get::<_, String>(0)?, x.get(1)?)))?;
            for x in rows {
                let (c, n) = x?;
                if let Some(c) = cell_of(&c) {
                    cells.push((c, n));
                }
            }
        }
        {
            let cols: Vec<String> = t.columns.iter().map(|c| q(&c.name)).collect();
            let mut st = tx.prepare(&format!("SELECT {} FROM {}", cols.join(", "), q(&t.name)))?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                each(&Self::values(r, t)?);
            }
        }
        tx.commit()?;
        Ok(Some(cells))
    }

    fn bucket_digests(
        &mut self,
        t: &TableDef,
        buckets: u32,
    ) -> Result<Option<BTreeMap<u32, crate::reconcile::Digest>>, SinkError> {
        if self.table_status(&t.name)?.is_none() {
            return Ok(None);
        }
        let rows: BTreeMap<String, crate::reconcile::Entry> = self
            .reconcile_rows(t, buckets, None)?
            .into_iter()
            .map(|(k, h)| (k, (h.seq, h.hash)))
            .collect();
        Ok(Some(crate::reconcile::digests(&rows, buckets)))
    }

    fn bucket_rows(
        &mut self,
        t: &TableDef,
        buckets: u32,
        which: &[u32],
    ) -> Result<BTreeMap<String, crate::reconcile::Held>, SinkError> {
        self.reconcile_rows(t, buckets, Some(which))
    }

    fn seen_seqs(
        &mut self,
        table: &str,
        keys: &[String],
    ) -> Result<BTreeMap<String, i64>, SinkError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT seq FROM _govbus_seen WHERE tbl = ?1 AND key = ?2")?;
        let mut out = BTreeMap::new();
        for k in keys {
            if let Some(s) = st
                .query_row((table, k), |r| r.get::<_, i64>(0))
                .map(Some)
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(e),
                })?
            {
                out.insert(k.clone(), s);
            }
        }
        Ok(out)
    }

    fn applied_days(&mut self, days: u32) -> Result<Vec<(String, i64)>, SinkError> {
        let mut st = self
            .conn
            .prepare("SELECT day, n FROM _govbus_applied_days WHERE day >= ?1 ORDER BY day")?;
        let rows = st.query_map([super::first_day(days)], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn recent(
        &mut self,
        table: &str,
        key_column: &str,
        n: u32,
    ) -> Result<Vec<(String, i64)>, SinkError> {
        if self.table_status(table)?.is_none() {
            return Ok(Vec::new());
        }
        let mut st = self.conn.prepare(&format!(
            "SELECT CAST({} AS TEXT), _govbus_source_ts FROM {} ORDER BY _govbus_source_ts DESC LIMIT ?1",
            q(key_column),
            q(table)
        ))?;
        let rows = st.query_map([n], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn figures_and_offsets(
        &mut self,
        report: &str,
        topics: &[String],
    ) -> Result<Option<(Vec<(Cell, i64)>, BTreeMap<String, BTreeMap<i32, i64>>)>, SinkError> {
        let tx = self.conn.transaction()?;
        let mut cells = Vec::new();
        let mut offsets: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
        {
            let mut st =
                tx.prepare("SELECT cell, n FROM _govbus_report_cells WHERE report = ?1")?;
            let rows = st.query_map([report], |x| Ok((x.get::<_, String>(0)?, x.get(1)?)))?;
            for x in rows {
                let (c, n) = x?;
                if let Some(c) = cell_of(&c) {
                    cells.push((c, n));
                }
            }
            let mut st =
                tx.prepare("SELECT partition, next_offset FROM _govbus_offsets WHERE topic = ?1")?;
            for t in topics {
                let rows = st.query_map([t], |x| Ok((x.get::<_, i32>(0)?, x.get::<_, i64>(1)?)))?;
                for x in rows {
                    let (p, o) = x?;
                    offsets.entry(t.clone()).or_default().insert(p, o);
                }
            }
        }
        tx.commit()?;
        Ok(Some((cells, offsets)))
    }

    fn save_snapshot(&mut self, snap: &Snapshot) -> Result<bool, SinkError> {
        let body = serde_json::to_string(snap).unwrap_or_default();
        let n = self.conn.execute(
            "INSERT INTO _govbus_report_snapshots (report, at, taken_ms, total, digest, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (report, at) DO NOTHING",
            (
                &snap.report,
                snap.at.to_string(),
                snap.taken_ms,
                snap.total,
                &snap.digest,
                &body,
            ),
        )?;
        Ok(n == 1)
    }

    fn snapshots(&mut self, report: &str) -> Result<Vec<Snapshot>, SinkError> {
        let mut st = self.conn.prepare(
            "SELECT body, digest FROM _govbus_report_snapshots WHERE report = ?1 ORDER BY at",
        )?;
        let rows = st.query_map([report], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (body, digest) = r?;
            if let Some(s) = super::stored_snapshot(&body, digest) {
                out.push(s);
            }
        }
        Ok(out)
    }

    fn report_definition(&mut self, report: &str) -> Result<Option<String>, SinkError> {
        Ok(self
            .conn
            .query_row(
                "SELECT definition FROM _govbus_reports WHERE report = ?1",
                [report],
                |r| r.get(0),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?)
    }

    fn replace_report(
        &mut self,
        report: &str,
        definition: &str,
        cells: &[(Cell, i64)],
    ) -> Result<(), SinkError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "DELETE FROM _govbus_report_cells WHERE report = ?1",
            [report],
        )?;
        {
            let mut st = tx.prepare(
                "INSERT INTO _govbus_report_cells (report, cell, n) VALUES (?1, ?2, ?3)",
            )?;
            for (c, n) in cells {
                st.execute((report, cell_text(c), n))?;
            }
        }
        tx.execute(
            "INSERT INTO _govbus_reports (report, definition, built_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (report) DO UPDATE SET definition = excluded.definition, built_ms = excluded.built_ms",
            (report, definition, govbus_core::now_ms()),
        )?;
        tx.commit()?;
        Ok(())
    }
}

impl SqliteSink {
    fn last_receipt(&self) -> Result<Option<(i64, String)>, SinkError> {
        let sub = self.receipts.subscriber.clone().unwrap_or_default();
        Ok(self
            .conn
            .query_row(
                "SELECT seq, hash FROM _govbus_receipts WHERE subscriber = ?1 ORDER BY seq DESC LIMIT 1",
                [sub],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?)
    }

    /// Every row of `t` (of the buckets `which`, when given). A local
    /// file: read here, no network to spare.
    fn reconcile_rows(
        &mut self,
        t: &TableDef,
        buckets: u32,
        which: Option<&[u32]>,
    ) -> Result<BTreeMap<String, crate::reconcile::Held>, SinkError> {
        let cols: Vec<String> = t.columns.iter().map(|c| q(&c.name)).collect();
        let mut st = self.conn.prepare(&format!(
            "SELECT _govbus_seq, _govbus_source_ts, {} FROM {}",
            cols.join(", "),
            q(&t.name)
        ))?;
        let mut rows = st.query([])?;
        let mut out = BTreeMap::new();
        while let Some(r) = rows.next()? {
            let seq: i64 = r.get(0)?;
            let source_ts: i64 = r.get(1)?;
            let mut values = Vec::with_capacity(t.columns.len());
            for (i, c) in t.columns.iter().enumerate() {
                values.push(Self::value(r.get_ref(i + 2)?, c.ty));
            }
            let key = crate::reconcile::value_text(&values[0]);
            if which.is_some_and(|w| !w.contains(&crate::reconcile::bucket_of(&key, buckets))) {
                continue;
            }
            out.insert(
                key,
                crate::reconcile::Held {
                    seq,
                    hash: crate::reconcile::row_hash(&values),
                    source_ts,
                },
            );
        }
        Ok(out)
    }

    /// A stored value as the column's type says (the reverse of `param`).
    /// A row of `t` selected column by column, in `t.columns` order.
    fn values(r: &rusqlite::Row<'_>, t: &TableDef) -> Result<Vec<SqlValue>, SinkError> {
        let mut values = Vec::with_capacity(t.columns.len());
        for (i, c) in t.columns.iter().enumerate() {
            values.push(Self::value(r.get_ref(i)?, c.ty));
        }
        Ok(values)
    }

    fn value(v: rusqlite::types::ValueRef<'_>, t: ColType) -> SqlValue {
        use rusqlite::types::ValueRef as V;
        match (v, t) {
            (V::Null, _) => SqlValue::Null,
            (V::Integer(i), ColType::Bool) => SqlValue::Bool(i != 0),
            (V::Integer(i), ColType::Timestamp) => SqlValue::Timestamp(i),
            (V::Text(s), ColType::Timestamp) => {
                chrono::DateTime::parse_from_rfc3339(&String::from_utf8_lossy(s))
                    .map_or(SqlValue::Null, |d| {
                        SqlValue::Timestamp(d.timestamp_millis())
                    })
            }
            (V::Integer(i), _) => SqlValue::Int(i),
            (V::Real(f), _) => SqlValue::Float(f),
            (V::Text(s), ColType::Date) => SqlValue::Date(String::from_utf8_lossy(s).into_owned()),
            (V::Text(s), _) => SqlValue::Text(String::from_utf8_lossy(s).into_owned()),
            (V::Blob(b), _) => SqlValue::Text(String::from_utf8_lossy(b).into_owned()),
        }
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
            record: None,
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

    /// The residents' table of p52's view, and p52's population report.
    #[test]
    fn sqlite_writes_a_chained_receipt_per_applied_batch() {
        let t = table();
        let mut s = SqliteSink::open(":memory:").unwrap();
        s.ensure_table(&t).unwrap();
        s.set_receipts("p52").unwrap();
        let mut a = row(&t, "a", 1, Some(1));
        a.record = Some((Arc::from("v"), 0, 10));
        s.apply(&[a.clone(), row(&t, "b", 1, Some(2))], &[])
            .unwrap();
        // All stale: nothing applied, no receipt.
        s.apply(&[a], &[]).unwrap();
        s.apply(&[row(&t, "a", 2, None)], &[]).unwrap();
        let out = s.take_receipts();
        assert_eq!(out.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(out[0].events.len(), 2);
        assert_eq!(
            (out[0].events[0].topic.as_str(), out[0].events[0].offset),
            ("v", 10)
        );
        let stored = s.receipts(1, 10).unwrap();
        assert_eq!(stored, out);
        assert_eq!(crate::receipt::verify(&stored), Ok((2, 3)));
        assert_eq!(s.receipts_published().unwrap(), 0);
        s.mark_receipts_published(2).unwrap();
        s.mark_receipts_published(1).unwrap();
        assert_eq!(s.receipts_published().unwrap(), 2);
    }
}
