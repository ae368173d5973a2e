//! The PostgreSQL sink: tables in one schema, rows and offsets in one
//! transaction, applied set-based per run of changes that share a table.
//!
//! Long because every bookkeeping concern of a province's database
//! (offsets, dead letters, receipts, report cells, snapshots) keeps its
//! PostgreSQL statements here, as `sqlite.rs` keeps SQLite's.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{q, report_deltas, reported, Applied, Before, Row, Sink, SinkError};
use crate::report::{cell_of, cell_text, Cell, Report};
use crate::snapshot::Snapshot;
use crate::table::{ColType, SqlValue, TableDef};

/// `[consumer.sink] type = "postgres"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/database`.
    pub url: String,
    /// The schema the tables live in.
    #[serde(default = "public")]
    pub schema: String,
}

fn public() -> String {
    "public".into()
}

impl PostgresConfig {
    /// Connects and creates the bookkeeping tables.
    pub fn build(&self) -> Result<PostgresSink, SinkError> {
        PostgresSink::open(&self.url, &self.schema)
    }
}

/// PostgreSQL sink: tables in one schema.
pub struct PostgresSink {
    client: postgres::Client,
    url: String,
    schema: String,
    upserts: HashMap<String, postgres::Statement>,
    batched: HashMap<(String, usize), postgres::Statement>,
    row_by_row: bool,
    reports: Vec<Arc<Report>>,
    touched: Vec<(String, Cell, i64)>,
    receipts: super::ReceiptState,
}

impl std::fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSink")
            .field("schema", &self.schema)
            .finish()
    }
}

impl PostgresSink {
    /// Connects and creates the bookkeeping tables in `schema`.
    pub fn open(url: &str, schema: &str) -> Result<Self, SinkError> {
        let mut client = govbus_pg::connect(url)?;
        let s = q(schema);
        // A receipt's events (about 100 bytes per applied change) are
        // stored uncompressed: compressing them cost PostgreSQL 1 µs of
        // CPU per change, twice the rest of the receipt (docs/BENCHMARKS.md).
        // The schema as it appears in a string literal.
        let lit = s.replace('\'', "''");
        let ddl = format!(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}._govbus_seen (
                 tbl TEXT NOT NULL, key TEXT NOT NULL, seq BIGINT NOT NULL, PRIMARY KEY (tbl, key));
             CREATE TABLE IF NOT EXISTS {s}._govbus_offsets (
                 topic TEXT NOT NULL, partition INT NOT NULL, next_offset BIGINT NOT NULL,
                 PRIMARY KEY (topic, partition));
             CREATE TABLE IF NOT EXISTS {s}._govbus_dead (
                 topic TEXT NOT NULL, partition INT NOT NULL, source_offset BIGINT NOT NULL,
                 key TEXT NOT NULL, reason TEXT NOT NULL, error TEXT NOT NULL, at_ms BIGINT NOT NULL,
                 PRIMARY KEY (topic, partition, source_offset));
             ALTER TABLE {s}._govbus_dead ADD COLUMN IF NOT EXISTS tbl TEXT;
             ALTER TABLE {s}._govbus_dead ADD COLUMN IF NOT EXISTS seen_seq BIGINT;
             CREATE TABLE IF NOT EXISTS {s}._govbus_report_cells (
                 report TEXT NOT NULL, cell TEXT NOT NULL, n BIGINT NOT NULL, PRIMARY KEY (report, cell));
             CREATE TABLE IF NOT EXISTS {s}._govbus_reports (
                 report TEXT PRIMARY KEY, definition TEXT NOT NULL, built_ms BIGINT NOT NULL);
             CREATE TABLE IF NOT EXISTS {s}._govbus_receipts (
                 subscriber TEXT NOT NULL, seq BIGINT NOT NULL, applied_at_ms BIGINT NOT NULL,
                 prev TEXT NOT NULL, hash TEXT NOT NULL, events TEXT NOT NULL, PRIMARY KEY (subscriber, seq));
             DO $$ BEGIN
                 IF (SELECT attstorage FROM pg_attribute
                     WHERE attrelid = '{lit}._govbus_receipts'::regclass AND attname = 'events') <> 'e' THEN
                     ALTER TABLE {s}._govbus_receipts ALTER COLUMN events SET STORAGE EXTERNAL;
                 END IF;
             END $$;
             CREATE TABLE IF NOT EXISTS {s}._govbus_receipts_published (
                 subscriber TEXT PRIMARY KEY, seq BIGINT NOT NULL);
             CREATE TABLE IF NOT EXISTS {s}._govbus_applied_days (
                 day DATE PRIMARY KEY, n BIGINT NOT NULL);
             CREATE TABLE IF NOT EXISTS {s}._govbus_report_snapshots (
                 report TEXT NOT NULL, at DATE NOT NULL, taken_ms BIGINT NOT NULL, total BIGINT NOT NULL,
                 digest TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (report, at));"
        );
        // `CREATE … IF NOT EXISTS` is not safe against itself: a second
        // agent creating the same schema or table at the same moment gets
        // a unique violation. The other one created it; do it again.
        let mut attempt = 0;
        while let Err(e) = client.batch_execute(&ddl) {
            let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
            attempt += 1;
            if attempt >= 5 || !(code == "23505" || code == "42P07") {
                return Err(e.into());
            }
            tracing::debug!(schema, error = %e, "created at the same moment by another agent; again");
        }
        Ok(Self {
            client,
            url: url.to_string(),
            schema: s,
            upserts: HashMap::new(),
            batched: HashMap::new(),
            row_by_row: false,
            reports: Vec::new(),
            touched: Vec::new(),
            receipts: Default::default(),
        })
    }

    /// Applies change by change (three statements per change) instead of a
    /// few set-based statements per batch. Slower; kept to measure against.
    pub fn set_row_by_row(&mut self, on: bool) {
        self.row_by_row = on;
    }

    /// A lost connection (the server restarted, the network broke) is opened
    /// again before the next attempt; the failed transaction was rolled back.
    fn reconnect_if_closed(&mut self) -> Result<(), SinkError> {
        if self.client.is_closed() {
            tracing::warn!(
                schema = self.schema,
                "PostgreSQL connection lost; reconnecting"
            );
            self.client = govbus_pg::connect(&self.url)?;
            self.upserts.clear();
            self.batched.clear();
        }
        Ok(())
    }

    fn upsert_sql(s: &str, t: &TableDef, rows: usize) -> String {
        let cols: Vec<String> = t.columns.iter().map(|c| q(&c.name)).collect();
        let per = t.columns.len() + 2;
        let values: Vec<String> = (0..rows)
            .map(|r| {
                let mut ph: Vec<String> = t
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| Self::placeholder(c.ty, r * per + i + 1))
                    .collect();
                ph.push(format!("${}::int8", r * per + per - 1));
                ph.push(format!("${}::int8", r * per + per));
                format!("({})", ph.join(", "))
            })
            .collect();
        let set: Vec<String> = cols[1..]
            .iter()
            .chain(["_govbus_seq".to_string(), "_govbus_source_ts".to_string()].iter())
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect();
        format!(
            "INSERT INTO {s}.{} ({}, _govbus_seq, _govbus_source_ts) VALUES {} ON CONFLICT ({}) DO UPDATE SET {}",
            q(&t.name),
            cols.join(", "),
            values.join(", "),
            cols[0],
            set.join(", ")
        )
    }

    /// A few set-based statements per run of changes that share a table
    /// shape (a batch can mix schema versions): the last change of each key
    /// wins, changes not newer than the stored sequence are skipped.
    fn apply_batched(
        &mut self,
        rows: &[Row],
        offsets: &[(String, i32, i64)],
    ) -> Result<Applied, SinkError> {
        let s = self.schema.clone();
        let mut done = Applied::default();
        let mut runs: Vec<(Arc<TableDef>, Vec<&Row>)> = Vec::new();
        for r in rows {
            match runs.last_mut() {
                Some((t, v)) if Arc::ptr_eq(t, &r.table) || **t == *r.table => v.push(r),
                _ => runs.push((r.table.clone(), vec![r])),
            }
        }
        self.load_last_receipt()?;
        let batched = &mut self.batched;
        let reports = &self.reports;
        let mut touched = Vec::new();
        let mut applied: Vec<&Row> = Vec::new();
        let mut tx = self.client.transaction()?;
        for (t, trs) in &runs {
            let keys: Vec<&str> = trs.iter().map(|r| r.key.as_str()).collect();
            // One index lookup per key, whatever the planner believes
            // about the table: `tbl = $1 AND key = ANY($2)` was planned,
            // while the table had no statistics (a new or fast-growing
            // one), as a scan of every row of `tbl` with `key` as a filter
            // — 43 million rows fetched for 100,000 changes, half a core
            // of PostgreSQL at 5,000 changes/s (docs/BENCHMARKS.md).
            // A report over the table also needs the rows the batch
            // replaces (the cells they are counted in), read in the same
            // statement, key by key for the same reason.
            let reading = reported(reports, &t.name);
            let rows_before = if reading {
                format!(
                    " LEFT JOIN LATERAL (SELECT true AS found, {} FROM {s}.{} WHERE {}::text = u.k LIMIT 1) AS r ON true",
                    report_select_list(t, reports),
                    q(&t.name),
                    q(&t.columns[0].name)
                )
            } else {
                String::new()
            };
            let mut known: HashMap<String, i64> = HashMap::new();
            let mut before = Before::default();
            for r in tx.query(
                &format!(
                    "SELECT u.k, x.seq{} FROM unnest($2::text[]) AS u(k) CROSS JOIN LATERAL \
                     (SELECT seq FROM {s}._govbus_seen WHERE tbl = $1 AND key = u.k LIMIT 1) AS x{rows_before}",
                    if reading { ", r.*" } else { "" }
                ),
                &[&t.name, &keys],
            )? {
                let k: String = r.get(0);
                // A key with no row (deleted) reads as NULLs.
                if reading && r.get::<_, Option<bool>>(2).is_some() {
                    before.found(t, &k, Some(Self::values(&r, t, 3)));
                }
                known.insert(k, r.get(1));
            }
            let mut seq: HashMap<&str, i64> = HashMap::new();
            let mut last: HashMap<&str, &Row> = HashMap::new();
            let mut order: Vec<&str> = Vec::new();
            for r in trs {
                let prev = seq
                    .get(r.key.as_str())
                    .copied()
                    .or_else(|| known.get(&r.key).copied());
                if r.is_stale(prev) {
                    done.stale += 1;
                    continue;
                }
                seq.insert(r.key.as_str(), r.seq);
                applied.push(r);
                if last.insert(r.key.as_str(), r).is_none() {
                    order.push(r.key.as_str());
                }
                if r.values.is_some() {
                    done.upserts += 1;
                } else {
                    done.deletes += 1;
                }
            }
            let finals: Vec<&Row> = order.iter().map(|k| last[k]).collect();
            let dels: Vec<&str> = finals
                .iter()
                .filter(|r| r.values.is_none())
                .map(|r| r.key.as_str())
                .collect();
            if !dels.is_empty() {
                tx.execute(
                    &format!(
                        "DELETE FROM {s}.{} WHERE {}::text = ANY($1)",
                        q(&t.name),
                        q(&t.columns[0].name)
                    ),
                    &[&dels],
                )?;
            }
            let per = t.columns.len() + 2;
            let chunk = (60_000 / per).max(1);
            let ups: Vec<&&Row> = finals.iter().filter(|r| r.values.is_some()).collect();
            for c in ups.chunks(chunk) {
                let k = (format!("{}/{}", t.name, t.columns.len()), c.len());
                if !batched.contains_key(&k) {
                    let st = tx.prepare(&Self::upsert_sql(&s, t, c.len()))?;
                    batched.insert(k.clone(), st);
                }
                let mut params: Vec<Box<dyn postgres::types::ToSql + Sync>> =
                    Vec::with_capacity(c.len() * per);
                for r in c {
                    for (v, col) in r.values.iter().flatten().zip(&t.columns) {
                        params.push(Self::param(v, col.ty));
                    }
                    params.push(Box::new(r.seq));
                    params.push(Box::new(r.source_ts));
                }
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    params.iter().map(|b| b.as_ref()).collect();
                tx.execute(&batched[&k], &refs)?;
            }
            write_reports(&mut tx, &s, reports, &finals, &before, &mut touched)?;
            let keys: Vec<&str> = finals.iter().map(|r| r.key.as_str()).collect();
            let seqs: Vec<i64> = finals.iter().map(|r| r.seq).collect();
            if !keys.is_empty() {
                tx.execute(
                    &format!(
                        "INSERT INTO {s}._govbus_seen (tbl, key, seq) SELECT $1, k, q FROM unnest($2::text[], $3::int8[]) AS u(k, q)
                         ON CONFLICT (tbl, key) DO UPDATE SET seq = EXCLUDED.seq"
                    ),
                    &[&t.name, &keys, &seqs],
                )?;
            }
        }
        let topics: Vec<&str> = offsets.iter().map(|o| o.0.as_str()).collect();
        let parts: Vec<i32> = offsets.iter().map(|o| o.1).collect();
        let nexts: Vec<i64> = offsets.iter().map(|o| o.2).collect();
        if !topics.is_empty() {
            tx.execute(
                &format!(
                    "INSERT INTO {s}._govbus_offsets (topic, partition, next_offset)
                     SELECT * FROM unnest($1::text[], $2::int4[], $3::int8[])
                     ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset"
                ),
                &[&topics, &parts, &nexts],
            )?;
        }
        count_day(&mut tx, &s, &done)?;
        let receipt = write_receipt(&mut tx, &s, &self.receipts, &applied)?;
        tx.commit()?;
        self.touched.extend(touched);
        self.receipts.committed(receipt);
        Ok(done)
    }

    fn load_last_receipt(&mut self) -> Result<(), SinkError> {
        if let (Some(sub), None) = (&self.receipts.subscriber, &self.receipts.last) {
            let last = self
                .client
                .query_opt(
                    &format!(
                        "SELECT seq, hash FROM {}._govbus_receipts WHERE subscriber = $1 ORDER BY seq DESC LIMIT 1",
                        self.schema
                    ),
                    &[sub],
                )?
                .map(|r| (r.get(0), r.get(1)));
            self.receipts.last = Some(last);
        }
        Ok(())
    }

    fn pg_type(t: ColType) -> &'static str {
        match t {
            ColType::Text => "TEXT",
            ColType::Int => "BIGINT",
            ColType::Float => "DOUBLE PRECISION",
            ColType::Bool => "BOOLEAN",
            ColType::Date => "DATE",
            ColType::Timestamp => "TIMESTAMPTZ",
        }
    }

    fn placeholder(t: ColType, n: usize) -> String {
        match t {
            ColType::Text => format!("${n}::text"),
            ColType::Int => format!("${n}::int8"),
            ColType::Float => format!("${n}::float8"),
            ColType::Bool => format!("${n}::bool"),
            ColType::Date => format!("${n}::text::date"),
            ColType::Timestamp => format!("to_timestamp(${n}::int8 / 1000.0)"),
        }
    }

    fn param(v: &SqlValue, t: ColType) -> Box<dyn postgres::types::ToSql + Sync> {
        match (t, v) {
            (ColType::Int | ColType::Timestamp, SqlValue::Int(i) | SqlValue::Timestamp(i)) => {
                Box::new(Some(*i))
            }
            (ColType::Int | ColType::Timestamp, _) => Box::new(None::<i64>),
            (ColType::Float, SqlValue::Float(f)) => Box::new(Some(*f)),
            (ColType::Float, _) => Box::new(None::<f64>),
            (ColType::Bool, SqlValue::Bool(b)) => Box::new(Some(*b)),
            (ColType::Bool, _) => Box::new(None::<bool>),
            (_, SqlValue::Null) => Box::new(None::<String>),
            (_, SqlValue::Text(s) | SqlValue::Date(s)) => Box::new(Some(s.clone())),
            (_, other) => Box::new(Some(format!("{other:?}"))),
        }
    }
}

impl Sink for PostgresSink {
    fn record_dead(&mut self, dead: &[super::Dead]) -> Result<(), SinkError> {
        let s = &self.schema;
        let mut tx = self.client.transaction()?;
        for d in dead {
            tx.execute(
                &format!(
                    "INSERT INTO {s}._govbus_dead (topic, partition, source_offset, key, reason, error, at_ms, tbl, seen_seq)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8,
                             (SELECT seq FROM {s}._govbus_seen WHERE tbl = $8 AND key = $4))
                     ON CONFLICT DO NOTHING"
                ),
                &[
                    &d.topic,
                    &d.partition,
                    &d.offset,
                    &d.key,
                    &d.reason,
                    &d.error,
                    &govbus_core::now_ms(),
                    &d.table,
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn dead(&mut self, topic: &str) -> Result<i64, SinkError> {
        let s = &self.schema;
        Ok(self
            .client
            .query_one(
                &format!(
                    "SELECT count(DISTINCT coalesce(d.tbl, '') || '/' || d.key) FROM {s}._govbus_dead d
                     WHERE (d.topic = $1 OR d.topic = $1 || '.replay')
                       AND NOT EXISTS (SELECT 1 FROM {s}._govbus_seen x
                                       WHERE x.tbl = d.tbl AND x.key = d.key AND x.seq > coalesce(d.seen_seq, -1))"
                ),
                &[&topic],
            )?
            .get(0))
    }

    fn table_status(&mut self, table: &str) -> Result<Option<(i64, Option<i64>)>, SinkError> {
        let exists: bool = self
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = $2)",
                &[&self.schema.trim_matches('"'), &table],
            )?
            .get(0);
        if !exists {
            return Ok(None);
        }
        let r = self.client.query_one(
            &format!(
                "SELECT count(*), max(_govbus_source_ts) FROM {}.{}",
                self.schema,
                q(table)
            ),
            &[],
        )?;
        Ok(Some((r.get(0), r.get(1))))
    }

    fn ensure_table(&mut self, t: &TableDef) -> Result<(), SinkError> {
        let s = &self.schema;
        let name = q(&t.name);
        let key = &t.columns[0];
        let mut sql = format!(
            "CREATE TABLE IF NOT EXISTS {s}.{name} ({} {} PRIMARY KEY, _govbus_seq BIGINT NOT NULL, _govbus_source_ts BIGINT NOT NULL);",
            q(&key.name),
            Self::pg_type(key.ty)
        );
        for c in &t.columns[1..] {
            sql.push_str(&format!(
                "ALTER TABLE {s}.{name} ADD COLUMN IF NOT EXISTS {} {};",
                q(&c.name),
                Self::pg_type(c.ty)
            ));
        }
        self.client.batch_execute(&sql)?;
        self.upserts.remove(&t.name);
        Ok(())
    }

    fn offsets(&mut self, topic: &str) -> Result<HashMap<i32, i64>, SinkError> {
        let rows = self.client.query(
            &format!(
                "SELECT partition, next_offset FROM {}._govbus_offsets WHERE topic = $1",
                self.schema
            ),
            &[&topic],
        )?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn apply(
        &mut self,
        rows: &[Row],
        offsets: &[(String, i32, i64)],
    ) -> Result<Applied, SinkError> {
        self.reconnect_if_closed()?;
        if !self.row_by_row {
            return self.apply_batched(rows, offsets);
        }
        let s = self.schema.clone();
        self.load_last_receipt()?;
        for r in rows {
            if !self.upserts.contains_key(&r.table.name) {
                let t = &r.table;
                let cols: Vec<String> = t.columns.iter().map(|c| q(&c.name)).collect();
                let ph: Vec<String> = t
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| Self::placeholder(c.ty, i + 1))
                    .collect();
                let n = t.columns.len();
                let set: Vec<String> = cols[1..]
                    .iter()
                    .chain(["_govbus_seq".to_string(), "_govbus_source_ts".to_string()].iter())
                    .map(|c| format!("{c} = EXCLUDED.{c}"))
                    .collect();
                let sql = format!(
                    "INSERT INTO {s}.{} ({}, _govbus_seq, _govbus_source_ts) VALUES ({}, ${}, ${}) ON CONFLICT ({}) DO UPDATE SET {}",
                    q(&t.name),
                    cols.join(", "),
                    ph.join(", "),
                    n + 1,
                    n + 2,
                    cols[0],
                    set.join(", ")
                );
                let st = self.client.prepare(&sql)?;
                self.upserts.insert(t.name.clone(), st);
            }
        }
        let mut tx = self.client.transaction()?;
        let seen = tx.prepare(&format!(
            "SELECT seq FROM {s}._govbus_seen WHERE tbl = $1 AND key = $2"
        ))?;
        let mark = tx.prepare(&format!(
            "INSERT INTO {s}._govbus_seen (tbl, key, seq) VALUES ($1, $2, $3)
             ON CONFLICT (tbl, key) DO UPDATE SET seq = EXCLUDED.seq"
        ))?;
        let mut done = Applied::default();
        let mut deletes: HashMap<String, postgres::Statement> = HashMap::new();
        let mut applied: Vec<&Row> = Vec::new();
        let mut before = Before::default();
        let mut reads: HashMap<String, postgres::Statement> = HashMap::new();
        for r in rows {
            let prev: Option<i64> = tx
                .query_opt(&seen, &[&r.table.name, &r.key])?
                .map(|row| row.get(0));
            if r.is_stale(prev) {
                done.stale += 1;
                continue;
            }
            let t = &r.table;
            if reported(&self.reports, &t.name) && !before.has(&t.name, &r.key) {
                let st = match reads.get(&t.name) {
                    Some(st) => st.clone(),
                    None => {
                        let st = tx.prepare(&format!(
                            "SELECT {} FROM {s}.{} WHERE {}::text = $1",
                            report_select_list(t, &self.reports),
                            q(&t.name),
                            q(&t.columns[0].name)
                        ))?;
                        reads.insert(t.name.clone(), st.clone());
                        st
                    }
                };
                let found = tx.query_opt(&st, &[&r.key])?;
                before.found(t, &r.key, found.map(|row| Self::values(&row, t, 0)));
            }
            match &r.values {
                Some(values) => {
                    let mut params: Vec<Box<dyn postgres::types::ToSql + Sync>> = values
                        .iter()
                        .zip(&r.table.columns)
                        .map(|(v, c)| Self::param(v, c.ty))
                        .collect();
                    params.push(Box::new(r.seq));
                    params.push(Box::new(r.source_ts));
                    let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                        params.iter().map(|b| b.as_ref()).collect();
                    tx.execute(&self.upserts[&r.table.name], &refs)?;
                    done.upserts += 1;
                }
                None => {
                    let st = match deletes.get(&r.table.name) {
                        Some(st) => st.clone(),
                        None => {
                            let st = tx.prepare(&format!(
                                "DELETE FROM {s}.{} WHERE {}::text = $1",
                                q(&r.table.name),
                                q(&r.table.columns[0].name)
                            ))?;
                            deletes.insert(r.table.name.clone(), st.clone());
                            st
                        }
                    };
                    tx.execute(&st, &[&r.key])?;
                    done.deletes += 1;
                }
            }
            tx.execute(&mark, &[&r.table.name, &r.key, &r.seq])?;
            applied.push(r);
        }
        let mut touched = Vec::new();
        write_reports(&mut tx, &s, &self.reports, &applied, &before, &mut touched)?;
        for (topic, partition, next) in offsets {
            tx.execute(
                &format!(
                    "INSERT INTO {s}._govbus_offsets (topic, partition, next_offset) VALUES ($1, $2, $3)
                     ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset"
                ),
                &[topic, partition, next],
            )?;
        }
        count_day(&mut tx, &s, &done)?;
        let receipt = write_receipt(&mut tx, &s, &self.receipts, &applied)?;
        tx.commit()?;
        self.touched.extend(touched);
        self.receipts.committed(receipt);
        Ok(done)
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
        self.reconnect_if_closed()?;
        Ok(self
            .client
            .query(
                &format!(
                    "SELECT subscriber, seq, applied_at_ms, prev, hash, events FROM {}._govbus_receipts \
                     WHERE seq >= $1 ORDER BY subscriber, seq LIMIT $2",
                    self.schema
                ),
                &[&from, &limit],
            )?
            .iter()
            .filter_map(|r| {
                super::stored_receipt(r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))
            })
            .collect())
    }

    fn receipts_published(&mut self) -> Result<i64, SinkError> {
        let sub = self.receipts.subscriber.clone().unwrap_or_default();
        Ok(self
            .client
            .query_opt(
                &format!(
                    "SELECT seq FROM {}._govbus_receipts_published WHERE subscriber = $1",
                    self.schema
                ),
                &[&sub],
            )?
            .map_or(0, |r| r.get(0)))
    }

    fn mark_receipts_published(&mut self, seq: i64) -> Result<(), SinkError> {
        let sub = self.receipts.subscriber.clone().unwrap_or_default();
        self.client.execute(
            &format!(
                "INSERT INTO {s}._govbus_receipts_published AS p (subscriber, seq) VALUES ($1, $2) \
                 ON CONFLICT (subscriber) DO UPDATE SET seq = greatest(EXCLUDED.seq, p.seq)",
                s = self.schema
            ),
            &[&sub, &seq],
        )?;
        Ok(())
    }

    fn bucket_digests(
        &mut self,
        t: &TableDef,
        buckets: u32,
    ) -> Result<Option<BTreeMap<u32, crate::reconcile::Digest>>, SinkError> {
        self.reconnect_if_closed()?;
        if self.table_status(&t.name)?.is_none() {
            return Ok(None);
        }
        let sql = format!(
            "{} SELECT b, count(*), coalesce(sum(e), 0)::text FROM r GROUP BY b",
            self.reconcile_rows(t)
        );
        let mut out = BTreeMap::new();
        for r in self.client.query(&sql, &[&i64::from(buckets)])? {
            let b: i64 = r.get(0);
            let sum: String = r.get(2);
            out.insert(
                b as u32,
                crate::reconcile::Digest {
                    count: r.get(1),
                    sum: sum.parse().unwrap_or(0),
                },
            );
        }
        Ok(Some(out))
    }

    fn bucket_rows(
        &mut self,
        t: &TableDef,
        buckets: u32,
        which: &[u32],
    ) -> Result<BTreeMap<String, crate::reconcile::Held>, SinkError> {
        self.reconnect_if_closed()?;
        let which: Vec<i64> = which.iter().map(|b| i64::from(*b)).collect();
        let sql = format!(
            "{} SELECT k, s, h, ts FROM r WHERE b = ANY($2)",
            self.reconcile_rows(t)
        );
        Ok(self
            .client
            .query(&sql, &[&i64::from(buckets), &which])?
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    crate::reconcile::Held {
                        seq: r.get(1),
                        hash: r.get(2),
                        source_ts: r.get(3),
                    },
                )
            })
            .collect())
    }

    fn seen_seqs(
        &mut self,
        table: &str,
        keys: &[String],
    ) -> Result<BTreeMap<String, i64>, SinkError> {
        self.reconnect_if_closed()?;
        Ok(self
            .client
            .query(
                &format!(
                    "SELECT key, seq FROM {}._govbus_seen WHERE tbl = $1 AND key = ANY($2)",
                    self.schema
                ),
                &[&table, &keys],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    fn applied_days(&mut self, days: u32) -> Result<Vec<(String, i64)>, SinkError> {
        self.reconnect_if_closed()?;
        Ok(self
            .client
            .query(
                &format!(
                    "SELECT day::text, n FROM {}._govbus_applied_days WHERE day >= $1::text::date ORDER BY day",
                    self.schema
                ),
                &[&super::first_day(days)],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    fn recent(
        &mut self,
        table: &str,
        key_column: &str,
        n: u32,
    ) -> Result<Vec<(String, i64)>, SinkError> {
        self.reconnect_if_closed()?;
        if self.table_status(table)?.is_none() {
            return Ok(Vec::new());
        }
        Ok(self
            .client
            .query(
                &format!(
                    "SELECT {}::text, _govbus_source_ts FROM {}.{} ORDER BY _govbus_source_ts DESC LIMIT $1",
                    q(key_column),
                    self.schema,
                    q(table)
                ),
                &[&i64::from(n)],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn set_reports(&mut self, reports: Vec<Arc<Report>>) -> Result<(), SinkError> {
        self.reports = reports;
        Ok(())
    }

    fn take_touched(&mut self) -> Vec<(String, Cell, i64)> {
        std::mem::take(&mut self.touched)
    }

    fn report_cells(&mut self, report: &str) -> Result<Vec<(Cell, i64)>, SinkError> {
        self.reconnect_if_closed()?;
        Ok(self
            .client
            .query(
                &format!(
                    "SELECT cell, n FROM {}._govbus_report_cells WHERE report = $1 ORDER BY cell",
                    self.schema
                ),
                &[&report],
            )?
            .iter()
            .filter_map(|r| Some((cell_of(r.get(0))?, r.get(1))))
            .collect())
    }

    fn scan(
        &mut self,
        t: &TableDef,
        report: Option<&str>,
        each: &mut dyn FnMut(&[SqlValue]),
    ) -> Result<Option<Vec<(Cell, i64)>>, SinkError> {
        self.reconnect_if_closed()?;
        let exists: bool = self
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = $2)",
                &[&self.schema.trim_matches('"'), &t.name],
            )?
            .get(0);
        if !exists {
            return Ok(None);
        }
        let sql = format!(
            "SELECT {} FROM {}.{}",
            select_list(t),
            self.schema,
            q(&t.name)
        );
        // One snapshot for the rows and the figures.
        let mut tx = self
            .client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        let cells = match report {
            None => Vec::new(),
            Some(r) => tx
                .query(
                    &format!(
                        "SELECT cell, n FROM {}._govbus_report_cells WHERE report = $1",
                        self.schema
                    ),
                    &[&r],
                )?
                .iter()
                .filter_map(|x| Some((cell_of(x.get(0))?, x.get(1))))
                .collect(),
        };
        let portal = tx.bind(&sql, &[])?;
        loop {
            let rows = tx.query_portal(&portal, 10_000)?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                each(&Self::values(r, t, 0));
            }
        }
        tx.commit()?;
        Ok(Some(cells))
    }

    fn figures_and_offsets(
        &mut self,
        report: &str,
        topics: &[String],
    ) -> Result<Option<(Vec<(Cell, i64)>, BTreeMap<String, BTreeMap<i32, i64>>)>, SinkError> {
        self.reconnect_if_closed()?;
        let s = self.schema.clone();
        let mut tx = self
            .client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        let cells = tx
            .query(
                &format!("SELECT cell, n FROM {s}._govbus_report_cells WHERE report = $1"),
                &[&report],
            )?
            .iter()
            .filter_map(|x| Some((cell_of(x.get(0))?, x.get(1))))
            .collect();
        let mut offsets: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
        for r in tx.query(
            &format!("SELECT topic, partition, next_offset FROM {s}._govbus_offsets WHERE topic = ANY($1)"),
            &[&topics],
        )? {
            offsets
                .entry(r.get(0))
                .or_default()
                .insert(r.get(1), r.get(2));
        }
        tx.commit()?;
        Ok(Some((cells, offsets)))
    }

    fn save_snapshot(&mut self, snap: &Snapshot) -> Result<bool, SinkError> {
        self.reconnect_if_closed()?;
        let body = serde_json::to_string(snap).unwrap_or_default();
        let n = self.client.execute(
            &format!(
                "INSERT INTO {}._govbus_report_snapshots (report, at, taken_ms, total, digest, body) \
                 VALUES ($1, $2::text::date, $3, $4, $5, $6) ON CONFLICT (report, at) DO NOTHING",
                self.schema
            ),
            &[
                &snap.report,
                &snap.at.to_string(),
                &snap.taken_ms,
                &snap.total,
                &snap.digest,
                &body,
            ],
        )?;
        Ok(n == 1)
    }

    fn snapshots(&mut self, report: &str) -> Result<Vec<Snapshot>, SinkError> {
        self.reconnect_if_closed()?;
        Ok(self
            .client
            .query(
                &format!(
                    "SELECT body, digest FROM {}._govbus_report_snapshots WHERE report = $1 ORDER BY at",
                    self.schema
                ),
                &[&report],
            )?
            .iter()
            .filter_map(|r| super::stored_snapshot(r.get(0), r.get(1)))
            .collect())
    }

    fn report_definition(&mut self, report: &str) -> Result<Option<String>, SinkError> {
        self.reconnect_if_closed()?;
        Ok(self
            .client
            .query_opt(
                &format!(
                    "SELECT definition FROM {}._govbus_reports WHERE report = $1",
                    self.schema
                ),
                &[&report],
            )?
            .map(|r| r.get(0)))
    }

    fn replace_report(
        &mut self,
        report: &str,
        definition: &str,
        cells: &[(Cell, i64)],
    ) -> Result<(), SinkError> {
        self.reconnect_if_closed()?;
        let s = self.schema.clone();
        let mut tx = self.client.transaction()?;
        tx.execute(
            &format!("DELETE FROM {s}._govbus_report_cells WHERE report = $1"),
            &[&report],
        )?;
        let cs: Vec<String> = cells.iter().map(|c| cell_text(&c.0)).collect();
        let ns: Vec<i64> = cells.iter().map(|c| c.1).collect();
        tx.execute(
            &format!(
                "INSERT INTO {s}._govbus_report_cells (report, cell, n) \
                 SELECT $1, c, n FROM unnest($2::text[], $3::int8[]) AS u(c, n)"
            ),
            &[&report, &cs, &ns],
        )?;
        tx.execute(
            &format!(
                "INSERT INTO {s}._govbus_reports (report, definition, built_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (report) DO UPDATE SET definition = EXCLUDED.definition, built_ms = EXCLUDED.built_ms"
            ),
            &[&report, &definition, &govbus_core::now_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }
}

impl PostgresSink {
    /// `WITH r AS (…)`: per row of `t`, its key `k`, sequence `s`, hash
    /// `h`, bucket `b` (modulo `$1`) and digest entry `e`, computed by
    /// PostgreSQL as [`crate::reconcile`] does in Rust.
    fn reconcile_rows(&self, t: &TableDef) -> String {
        let cols: Vec<String> = t
            .columns
            .iter()
            .map(|c| {
                let n = q(&c.name);
                let text = match c.ty {
                    ColType::Timestamp => format!("((extract(epoch FROM {n}) * 1000)::int8)::text"),
                    _ => format!("{n}::text"),
                };
                format!("coalesce({text}, '\\N')")
            })
            .collect();
        let sha = |x: &str| format!("encode(sha256(convert_to({x}, 'UTF8')), 'hex')");
        format!(
            "WITH t AS (SELECT {key}::text AS k, _govbus_seq AS s, _govbus_source_ts AS ts, {h} AS h FROM {schema}.{table}), \
             r AS (SELECT k, s, h, ts, \
                   (('x' || substr({kb}, 1, 8))::bit(32)::bigint % $1) AS b, \
                   ('x' || substr({eb}, 1, 15))::bit(60)::bigint AS e FROM t)",
            key = q(&t.columns[0].name),
            h = sha(&format!("concat_ws(chr(31), {})", cols.join(", "))),
            schema = self.schema,
            table = q(&t.name),
            kb = sha("k"),
            eb = sha("k || chr(31) || s::text || chr(31) || h"),
        )
    }

    /// A row read with [`select_list`] from column `from` on, in
    /// `t.columns` order.
    fn values(r: &postgres::Row, t: &TableDef, from: usize) -> Vec<SqlValue> {
        t.columns
            .iter()
            .enumerate()
            .map(|(i, c)| Self::value(r, from + i, c.ty))
            .collect()
    }

    fn value(r: &postgres::Row, i: usize, t: ColType) -> SqlValue {
        let v = match t {
            ColType::Text => r.get::<_, Option<String>>(i).map(SqlValue::Text),
            ColType::Date => r.get::<_, Option<String>>(i).map(SqlValue::Date),
            ColType::Int => r.get::<_, Option<i64>>(i).map(SqlValue::Int),
            ColType::Timestamp => r.get::<_, Option<i64>>(i).map(SqlValue::Timestamp),
            ColType::Float => r.get::<_, Option<f64>>(i).map(SqlValue::Float),
            ColType::Bool => r.get::<_, Option<bool>>(i).map(SqlValue::Bool),
        };
        v.unwrap_or(SqlValue::Null)
    }
}

/// Writes the receipt of `applied` in the transaction (None: receipts are
/// off or nothing was applied).
fn write_receipt(
    tx: &mut postgres::Transaction<'_>,
    s: &str,
    state: &super::ReceiptState,
    applied: &[&Row],
) -> Result<Option<crate::receipt::Receipt>, SinkError> {
    let receipt = state.next(state.last.clone().flatten(), applied);
    if let Some(r) = &receipt {
        tx.execute(
            &format!(
                "INSERT INTO {s}._govbus_receipts (subscriber, seq, applied_at_ms, prev, hash, events) \
                 VALUES ($1, $2, $3, $4, $5, $6)"
            ),
            &[
                &r.subscriber,
                &r.seq,
                &r.applied_at_ms,
                &r.prev,
                &r.hash,
                &serde_json::to_string(&r.events).unwrap_or_default(),
            ],
        )?;
    }
    Ok(receipt)
}

/// Counts the changes a batch applied in the day's total, in its
/// transaction.
fn count_day(tx: &mut postgres::Transaction<'_>, s: &str, done: &Applied) -> Result<(), SinkError> {
    let n = (done.upserts + done.deletes) as i64;
    if n > 0 {
        tx.execute(
            &format!(
                "INSERT INTO {s}._govbus_applied_days AS d (day, n) VALUES ($1::text::date, $2) \
                 ON CONFLICT (day) DO UPDATE SET n = d.n + EXCLUDED.n"
            ),
            &[&super::applied_day(), &n],
        )?;
    }
    Ok(())
}

/// The columns of `t` as [`PostgresSink::values`] reads them.
fn select_list(t: &TableDef) -> String {
    select_only(t, |_| true)
}

/// [`select_list`] with only the columns a report over `t` reads (a NULL
/// of the column's type for the others).
fn report_select_list(t: &TableDef, reports: &[Arc<Report>]) -> String {
    select_only(t, |c| {
        reports.iter().any(|r| r.table == t.name && r.reads(c))
    })
}

fn select_only(t: &TableDef, read: impl Fn(&str) -> bool) -> String {
    t.columns
        .iter()
        .map(|c| {
            let n = q(&c.name);
            match (read(&c.name), c.ty) {
                (true, ColType::Date) => format!("{n}::text"),
                (true, ColType::Timestamp) => format!("(extract(epoch FROM {n}) * 1000)::int8"),
                (true, _) => n,
                (false, ColType::Text | ColType::Date) => "NULL::text".into(),
                (false, ColType::Int | ColType::Timestamp) => "NULL::int8".into(),
                (false, ColType::Float) => "NULL::float8".into(),
                (false, ColType::Bool) => "NULL::bool".into(),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Moves each report's counts over the tables of `applied` (changes
/// applied in this transaction), from the cells of the rows `before` them
/// to their new ones, in the same transaction as the rows; the cells
/// changed go to `touched`.
fn write_reports(
    tx: &mut postgres::Transaction<'_>,
    s: &str,
    reports: &[Arc<Report>],
    applied: &[&Row],
    before: &Before,
    touched: &mut Vec<(String, Cell, i64)>,
) -> Result<(), SinkError> {
    for (rep, deltas) in report_deltas(reports, applied, before) {
        let id = rep.id();
        if !deltas.is_empty() {
            let cs: Vec<String> = deltas.keys().map(cell_text).collect();
            let ds: Vec<i64> = deltas.values().copied().collect();
            // Cells that empty are removed (a second statement only then).
            let empty: Vec<String> = tx
                .query(
                    &format!(
                        "INSERT INTO {s}._govbus_report_cells AS c (report, cell, n) \
                         SELECT $1, x, d FROM unnest($2::text[], $3::int8[]) AS u(x, d) \
                         ON CONFLICT (report, cell) DO UPDATE SET n = c.n + EXCLUDED.n \
                         RETURNING cell, n"
                    ),
                    &[&id, &cs, &ds],
                )?
                .iter()
                .filter(|r| r.get::<_, i64>(1) == 0)
                .map(|r| r.get(0))
                .collect();
            if !empty.is_empty() {
                tx.execute(
                    &format!(
                        "DELETE FROM {s}._govbus_report_cells WHERE report = $1 AND n = 0 AND cell = ANY($2)"
                    ),
                    &[&id, &empty],
                )?;
            }
            touched.extend(deltas.into_iter().map(|(c, d)| (id.clone(), c, d)));
        }
    }
    Ok(())
}
