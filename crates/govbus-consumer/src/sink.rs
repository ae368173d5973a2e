//! Sinks: apply a batch of view changes and the consumed offsets in one
//! database transaction, skipping any change whose entity sequence is not
//! newer than the one already applied.

use std::collections::HashMap;
use std::sync::Arc;

use crate::table::{ColType, SqlValue, TableDef};

/// A sink failure. The consumer stops (or retries); it never skips.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// PostgreSQL failed.
    #[error("postgres: {0}")]
    Postgres(#[from] postgres::Error),
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A file could not be written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The webhook did not accept the delivery.
    #[error("webhook {url}: {reason}")]
    Webhook {
        /// The endpoint.
        url: String,
        /// Status or transport error.
        reason: String,
    },
}

/// One change to apply.
#[derive(Debug, Clone)]
pub struct Row {
    /// The table.
    pub table: Arc<TableDef>,
    /// The entity key.
    pub key: String,
    /// The entity's sequence.
    pub seq: i64,
    /// When the source changed (ms).
    pub source_ts: i64,
    /// Column values (in `table.columns` order), or None for a delete.
    pub values: Option<Vec<SqlValue>>,
    /// The change's id (idempotency key for webhook receivers).
    pub event_id: String,
    /// The view's op.
    pub op: govbus_schema::Op,
    /// The entity after the change, as the view holds it (None for a delete).
    pub after: Option<govbus_schema::AvroValue>,
}

impl Row {
    /// Whether the change is already applied, given the entity's last
    /// applied sequence: a change not newer is, except a snapshot or a
    /// delete of the same sequence — what a router sends when a
    /// subscription changes (the entity re-sent with a new projection,
    /// entering again, or leaving), which applies again harmlessly.
    pub fn is_stale(&self, prev: Option<i64>) -> bool {
        use govbus_schema::Op;
        prev.is_some_and(|p| {
            p > self.seq || (p == self.seq && !matches!(self.op, Op::Snapshot | Op::Delete))
        })
    }
}

/// What one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Rows upserted.
    pub upserts: u64,
    /// Rows deleted.
    pub deletes: u64,
    /// Changes skipped as not newer than what the table holds.
    pub stale: u64,
}

/// A database that holds a province's copy.
pub trait Sink: Send {
    /// Creates the table (and govbus's bookkeeping tables) or adds missing columns.
    fn ensure_table(&mut self, t: &TableDef) -> Result<(), SinkError>;
    /// The next offset to read per partition of `topic`, as stored.
    fn offsets(&mut self, topic: &str) -> Result<HashMap<i32, i64>, SinkError>;
    /// Applies `rows` and stores `offsets` (topic, partition, next offset) atomically.
    fn apply(&mut self, rows: &[Row], offsets: &[(String, i32, i64)])
        -> Result<Applied, SinkError>;

    /// Rows held in `table` and the source time (ms) of the newest change
    /// applied, when the sink can tell (None: no such table yet, or a sink
    /// that holds no rows, like a webhook).
    fn table_status(&mut self, _table: &str) -> Result<Option<(i64, Option<i64>)>, SinkError> {
        Ok(None)
    }
}

fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// PostgreSQL sink: tables in one schema.
pub struct PostgresSink {
    client: postgres::Client,
    url: String,
    schema: String,
    upserts: HashMap<String, postgres::Statement>,
    batched: HashMap<(String, usize), postgres::Statement>,
    row_by_row: bool,
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
        let mut client = postgres::Client::connect(url, postgres::NoTls)?;
        let s = q(schema);
        client.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}._govbus_seen (
                 tbl TEXT NOT NULL, key TEXT NOT NULL, seq BIGINT NOT NULL, PRIMARY KEY (tbl, key));
             CREATE TABLE IF NOT EXISTS {s}._govbus_offsets (
                 topic TEXT NOT NULL, partition INT NOT NULL, next_offset BIGINT NOT NULL,
                 PRIMARY KEY (topic, partition));"
        ))?;
        Ok(Self {
            client,
            url: url.to_string(),
            schema: s,
            upserts: HashMap::new(),
            batched: HashMap::new(),
            row_by_row: false,
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
            self.client = postgres::Client::connect(&self.url, postgres::NoTls)?;
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
        let batched = &mut self.batched;
        let mut tx = self.client.transaction()?;
        for (t, trs) in &runs {
            let keys: Vec<&str> = trs.iter().map(|r| r.key.as_str()).collect();
            // One index lookup per key, whatever the planner believes
            // about the table: `tbl = $1 AND key = ANY($2)` was planned,
            // while the table had no statistics (a new or fast-growing
            // one), as a scan of every row of `tbl` with `key` as a filter
            // — 43 million rows fetched for 100,000 changes, half a core
            // of PostgreSQL at 5,000 changes/s (docs/BENCHMARKS.md).
            let known: HashMap<String, i64> = tx
                .query(
                    &format!(
                        "SELECT u.k, x.seq FROM unnest($2::text[]) AS u(k) CROSS JOIN LATERAL \
                         (SELECT seq FROM {s}._govbus_seen WHERE tbl = $1 AND key = u.k LIMIT 1) AS x"
                    ),
                    &[&t.name, &keys],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
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
        tx.commit()?;
        Ok(done)
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
        for r in rows {
            let prev: Option<i64> = tx
                .query_opt(&seen, &[&r.table.name, &r.key])?
                .map(|row| row.get(0));
            if r.is_stale(prev) {
                done.stale += 1;
                continue;
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
        }
        for (topic, partition, next) in offsets {
            tx.execute(
                &format!(
                    "INSERT INTO {s}._govbus_offsets (topic, partition, next_offset) VALUES ($1, $2, $3)
                     ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset"
                ),
                &[topic, partition, next],
            )?;
        }
        tx.commit()?;
        Ok(done)
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
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS _govbus_seen (
                 tbl TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (tbl, key));
             CREATE TABLE IF NOT EXISTS _govbus_offsets (
                 topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
                 PRIMARY KEY (topic, partition));",
        )?;
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

impl Sink for SqliteSink {
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

/// How the consumer reaches its sink.
#[derive(Debug, Clone, Default)]
pub struct SinkOptions {
    /// PostgreSQL schema for the tables.
    pub pg_schema: String,
    /// Where JSON-lines and webhook sinks keep offsets and sequences (SQLite).
    pub state: Option<String>,
    /// HMAC-SHA256 key for the webhook signature header.
    pub webhook_secret: Option<String>,
    /// One POST per batch (default) or per change.
    pub webhook_per_change: bool,
    /// Webhook request timeout.
    pub webhook_timeout: std::time::Duration,
}

/// Opens the sink named by `url`: `postgres://...` (tables in
/// `opts.pg_schema`), `sqlite://<path>` or a bare path, `jsonl://<path>`, or an
/// `http(s)://` webhook.
pub fn open(url: &str, opts: &SinkOptions) -> Result<Box<dyn Sink>, SinkError> {
    use crate::sink_json::{JsonLinesSink, WebhookSink};
    let state = |default: &str| opts.state.clone().unwrap_or_else(|| default.to_string());
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Box::new(PostgresSink::open(url, &opts.pg_schema)?))
    } else if let Some(path) = url.strip_prefix("jsonl://") {
        Ok(Box::new(JsonLinesSink::open(
            path,
            &state(&format!("{path}.state.db")),
        )?))
    } else if url.starts_with("http://") || url.starts_with("https://") {
        Ok(Box::new(WebhookSink::open(
            url,
            &state("webhook.state.db"),
            opts,
        )?))
    } else {
        Ok(Box::new(SqliteSink::open(
            url.strip_prefix("sqlite://").unwrap_or(url),
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Column;

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
