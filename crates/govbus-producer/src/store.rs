//! The producer's own durable store: entity state (for `before` and the
//! per-entity sequence) and the outbox of encoded changes not yet
//! acknowledged by the broker. SQLite by default, PostgreSQL when configured.

use std::sync::Mutex;

use serde_json::Value as Json;

use crate::SubmitError;

/// A failure of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed.
    #[error("postgres: {0}")]
    Postgres(#[from] postgres::Error),
    /// A stored state is not JSON (the store was edited by hand?).
    #[error("stored state of {key} is not JSON: {reason}")]
    Corrupt {
        /// The entity.
        key: String,
        /// Why.
        reason: String,
    },
}

/// What the caller builds from the entity's previous state and new sequence.
#[derive(Debug)]
pub struct Built {
    /// Where the change goes.
    pub topic: String,
    /// The encoded change (wire format).
    pub value: Vec<u8>,
    /// The entity's state after the change (None after a delete).
    pub state: Option<Json>,
}

/// A change waiting to be published.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Position in the outbox (commit order).
    pub id: i64,
    /// Dataset, for metrics.
    pub dataset: String,
    /// Destination topic.
    pub topic: String,
    /// Entity key.
    pub key: String,
    /// Encoded change.
    pub value: Vec<u8>,
}

/// Pending changes packed into a few buffers (the relay's hot path: no
/// allocation per change).
#[derive(Debug, Default)]
pub struct PendingBatch {
    /// (dataset, topic) pairs, indexed by `rows`.
    pub names: Vec<(String, String)>,
    /// Per change: outbox id, index into `names`, end of its key in `buf`,
    /// end of its value in `buf` (each starts where the previous ended).
    pub rows: Vec<(i64, u16, usize, usize)>,
    /// Keys and values, back to back.
    pub buf: Vec<u8>,
}

impl PendingBatch {
    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.rows.clear();
        self.buf.clear();
    }

    /// Appends one change.
    pub fn push(&mut self, id: i64, dataset: &str, topic: &str, key: &[u8], value: &[u8]) {
        let name = match self
            .names
            .iter()
            .position(|(d, t)| d == dataset && t == topic)
        {
            Some(i) => i,
            None => {
                self.names.push((dataset.to_string(), topic.to_string()));
                self.names.len() - 1
            }
        };
        self.buf.extend_from_slice(key);
        let key_end = self.buf.len();
        self.buf.extend_from_slice(value);
        self.rows.push((
            id,
            u16::try_from(name).unwrap_or(u16::MAX),
            key_end,
            self.buf.len(),
        ));
    }

    /// The changes: id, dataset, topic, key, value.
    pub fn iter(&self) -> impl Iterator<Item = (i64, u16, &str, &[u8], &[u8])> + '_ {
        let mut start = 0;
        self.rows
            .iter()
            .map(move |&(id, name, key_end, value_end)| {
                let key = &self.buf[start..key_end];
                let value = &self.buf[key_end..value_end];
                start = value_end;
                let topic = self
                    .names
                    .get(usize::from(name))
                    .map_or("", |(_, t)| t.as_str());
                (id, name, topic, key, value)
            })
    }

    /// The last id, if any.
    pub fn last_id(&self) -> Option<i64> {
        self.rows.last().map(|r| r.0)
    }
}

/// The builder's verdict: a change to store, or a refusal passed back.
pub type BuildResult = Result<Built, SubmitError>;

/// A durable store of entity states and pending changes.
pub trait OutboxStore: Send + Sync + std::fmt::Debug {
    /// In one transaction: read the entity's state and sequence, call `build`
    /// with (next sequence, previous state), store its output. Returns the
    /// sequence given to the change.
    fn accept(
        &self,
        dataset: &str,
        key: &str,
        build: &mut dyn FnMut(i64, Option<&Json>) -> BuildResult,
    ) -> Result<i64, SubmitError> {
        let keys = [key.to_string()];
        let seqs = self.accept_many(dataset, &keys, &mut |_, seq, prev| build(seq, prev), None)?;
        Ok(seqs[0])
    }

    /// The position recorded for a source (an outbox id, a file line), if any.
    fn checkpoint(&self, source: &str) -> Result<Option<i64>, StoreError>;

    /// Removes recorded positions.
    fn forget_checkpoints(&self, sources: &[String]) -> Result<(), StoreError>;

    /// Like [`OutboxStore::accept`] for several changes of one dataset, in
    /// order, in one transaction: all are stored or none. `build` gets the
    /// change's index. A key may appear more than once; each change sees the
    /// state the previous one left. With `checkpoint = (source, position)`
    /// the source's position is recorded in the same transaction, so a
    /// source that resumes from it never submits a change twice.
    fn accept_many(
        &self,
        dataset: &str,
        keys: &[String],
        build: &mut dyn FnMut(usize, i64, Option<&Json>) -> BuildResult,
        checkpoint: Option<(&str, i64)>,
    ) -> Result<Vec<i64>, SubmitError>;

    /// Up to `limit` pending changes, oldest first.
    fn pending(&self, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        self.pending_after(0, limit)
    }

    /// Up to `limit` pending changes with an id above `after`, oldest first.
    fn pending_after(&self, after: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError>;

    /// [`Self::pending_after`] into `batch` (cleared first); how many.
    fn pending_into(
        &self,
        after: i64,
        limit: usize,
        batch: &mut PendingBatch,
    ) -> Result<usize, StoreError> {
        batch.clear();
        let rows = self.pending_after(after, limit)?;
        for r in &rows {
            batch.push(r.id, &r.dataset, &r.topic, r.key.as_bytes(), &r.value);
        }
        Ok(rows.len())
    }

    /// Forgets changes the broker has acknowledged.
    fn mark_sent(&self, ids: &[i64]) -> Result<(), StoreError>;

    /// How many changes wait.
    fn backlog(&self) -> Result<i64, StoreError>;

    /// Whether outbox ids always commit in increasing order (one writer at a
    /// time); otherwise the relay must now and then re-read from the lowest
    /// pending id to find a change that committed late.
    fn commits_in_id_order(&self) -> bool {
        false
    }

    /// Removes up to `limit` rows already marked as sent (stores that mark
    /// rather than delete on the hot path); returns how many it removed.
    fn housekeep(&self, _limit: usize) -> Result<usize, StoreError> {
        Ok(0)
    }

    /// Records several named positions in one transaction (the relay's id
    /// and the broker offsets it has acknowledged; read back with
    /// [`OutboxStore::checkpoint`]).
    fn set_positions(&self, positions: &[(String, i64)]) -> Result<(), StoreError>;

    /// The topics of the pending changes.
    fn pending_topics(&self) -> Result<Vec<String>, StoreError>;
}

/// SQLite store (the embedded default).
#[derive(Debug)]
pub struct SqliteStore {
    conn: Mutex<rusqlite::Connection>,
    /// The relay's own connection: reads the outbox and trims it with
    /// `synchronous=NORMAL` (a trim lost to a power cut only means a change
    /// is published again, which consumers skip by sequence); acceptance
    /// keeps `synchronous=FULL` on `conn`.
    /// (None for `:memory:`, where a second connection would be another database.)
    relay: Option<Mutex<rusqlite::Connection>>,
}

impl SqliteStore {
    /// Opens (creating) the database at `path` (`:memory:` for a throwaway one).
    pub fn open(path: &str) -> Result<Self, StoreError> {
        let conn = rusqlite::Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS govbus_entities (
                 dataset TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL, state TEXT,
                 PRIMARY KEY (dataset, key));
             CREATE TABLE IF NOT EXISTS govbus_outbox (
                 id INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT NOT NULL, topic TEXT NOT NULL,
                 key TEXT NOT NULL, value BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS govbus_sources (name TEXT PRIMARY KEY, position INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS govbus_relay (one INTEGER PRIMARY KEY CHECK (one = 1), position INTEGER NOT NULL);
             INSERT OR IGNORE INTO govbus_relay (one, position) VALUES (1, 0);",
        )?;
        let relay = if path == ":memory:" {
            None
        } else {
            let relay = rusqlite::Connection::open(path)?;
            relay.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;")?;
            Some(Mutex::new(relay))
        };
        Ok(Self {
            conn: Mutex::new(conn),
            relay,
        })
    }

    fn relay_conn(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        self.relay
            .as_ref()
            .unwrap_or(&self.conn)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

fn parse_state(key: &str, s: Option<String>) -> Result<Option<Json>, StoreError> {
    s.map(|t| {
        serde_json::from_str(&t).map_err(|e| StoreError::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        })
    })
    .transpose()
}

impl OutboxStore for SqliteStore {
    fn accept_many(
        &self,
        dataset: &str,
        keys: &[String],
        build: &mut dyn FnMut(usize, i64, Option<&Json>) -> BuildResult,
        checkpoint: Option<(&str, i64)>,
    ) -> Result<Vec<i64>, SubmitError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let mut seqs = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            let prev: Option<(i64, Option<String>)> = tx
                .prepare_cached(
                    "SELECT seq, state FROM govbus_entities WHERE dataset = ?1 AND key = ?2",
                )
                .and_then(|mut st| {
                    let mut rows = st.query((dataset, key))?;
                    match rows.next()? {
                        Some(r) => Ok(Some((r.get(0)?, r.get(1)?))),
                        None => Ok(None),
                    }
                })
                .map_err(StoreError::from)?;
            let seq = prev.as_ref().map_or(1, |(s, _)| s + 1);
            let state = parse_state(key, prev.and_then(|(_, s)| s))?;
            let built = build(i, seq, state.as_ref())?;
            tx.prepare_cached(
                "INSERT INTO govbus_outbox (dataset, topic, key, value) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut st| st.execute((dataset, &built.topic, key, &built.value)))
            .map_err(StoreError::from)?;
            tx.prepare_cached(
                "INSERT INTO govbus_entities (dataset, key, seq, state) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (dataset, key) DO UPDATE SET seq = excluded.seq, state = excluded.state",
            )
            .and_then(|mut st| {
                st.execute((dataset, key, seq, built.state.as_ref().map(|s| s.to_string())))
            })
            .map_err(StoreError::from)?;
            seqs.push(seq);
        }
        if let Some((source, position)) = checkpoint {
            tx.prepare_cached(
                "INSERT INTO govbus_sources (name, position) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET position = excluded.position",
            )
            .and_then(|mut st| st.execute((source, position)))
            .map_err(StoreError::from)?;
        }
        tx.commit().map_err(StoreError::from)?;
        Ok(seqs)
    }

    fn checkpoint(&self, source: &str) -> Result<Option<i64>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = conn.prepare_cached("SELECT position FROM govbus_sources WHERE name = ?1")?;
        let mut rows = st.query([source])?;
        Ok(match rows.next()? {
            Some(r) => Some(r.get(0)?),
            None => None,
        })
    }

    fn forget_checkpoints(&self, sources: &[String]) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare_cached("DELETE FROM govbus_sources WHERE name = ?1")?;
            for s in sources {
                st.execute([s])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn pending_after(&self, after: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        let mut batch = PendingBatch::default();
        self.pending_into(after, limit, &mut batch)?;
        Ok(batch
            .iter()
            .map(|(id, name, topic, key, value)| OutboxRow {
                id,
                dataset: batch
                    .names
                    .get(usize::from(name))
                    .map(|(d, _)| d.clone())
                    .unwrap_or_default(),
                topic: topic.to_string(),
                key: String::from_utf8_lossy(key).into_owned(),
                value: value.to_vec(),
            })
            .collect())
    }

    fn pending_into(
        &self,
        after: i64,
        limit: usize,
        batch: &mut PendingBatch,
    ) -> Result<usize, StoreError> {
        batch.clear();
        let conn = self.relay_conn();
        let mut st = conn.prepare_cached(
            "SELECT id, dataset, topic, key, value FROM govbus_outbox
             WHERE id > max(?1, (SELECT position FROM govbus_relay)) ORDER BY id LIMIT ?2",
        )?;
        let mut rows = st.query([after, limit as i64])?;
        let mut n = 0;
        while let Some(r) = rows.next()? {
            let text = |i| {
                r.get_ref(i)
                    .and_then(|v| v.as_str().map_err(rusqlite::Error::from))
            };
            batch.push(
                r.get(0)?,
                text(1)?,
                text(2)?,
                text(3)?.as_bytes(),
                r.get_ref(4)?.as_blob().map_err(rusqlite::Error::from)?,
            );
            n += 1;
        }
        Ok(n)
    }

    fn mark_sent(&self, ids: &[i64]) -> Result<(), StoreError> {
        let (Some(first), Some(last)) = (ids.first(), ids.last()) else {
            return Ok(());
        };
        let mut conn = self.relay_conn();
        // IMMEDIATE: take the write lock before reading, so that a concurrent
        // acceptance makes this wait (busy_timeout) instead of failing with
        // SQLITE_BUSY when a read snapshot is upgraded.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // The usual case: `ids` are all the pending rows up to `last` (the
        // relay's acknowledged prefix). SQLite commits outbox ids in order
        // (one writer at a time), so moving the sent mark is exact and costs
        // one row; the rows are removed later by `housekeep`.
        let position: i64 = tx.query_row("SELECT position FROM govbus_relay", [], |r| r.get(0))?;
        let pending_to_last: i64 = tx.query_row(
            "SELECT count(*) FROM govbus_outbox WHERE id > ?1 AND id <= ?2",
            [position, *last],
            |r| r.get(0),
        )?;
        if *first > position && pending_to_last == ids.len() as i64 {
            tx.prepare_cached("UPDATE govbus_relay SET position = ?1")?
                .execute([last])?;
        } else {
            let mut st = tx.prepare_cached("DELETE FROM govbus_outbox WHERE id = ?1")?;
            for id in ids {
                st.execute([id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn commits_in_id_order(&self) -> bool {
        true
    }

    fn housekeep(&self, limit: usize) -> Result<usize, StoreError> {
        let conn = self.relay_conn();
        Ok(conn.execute(
            "DELETE FROM govbus_outbox WHERE id IN (
                 SELECT id FROM govbus_outbox WHERE id <= (SELECT position FROM govbus_relay) ORDER BY id LIMIT ?1)",
            [limit as i64],
        )?)
    }

    fn set_positions(&self, positions: &[(String, i64)]) -> Result<(), StoreError> {
        let mut conn = self.relay_conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO govbus_sources (name, position) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET position = excluded.position",
            )?;
            for (name, pos) in positions {
                st.execute(rusqlite::params![name, pos])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn pending_topics(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.relay_conn();
        let mut st = conn.prepare(
            "SELECT DISTINCT topic FROM govbus_outbox WHERE id > (SELECT position FROM govbus_relay)",
        )?;
        let topics = st
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(topics)
    }

    fn backlog(&self) -> Result<i64, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        Ok(conn.query_row(
            "SELECT count(*) FROM govbus_outbox WHERE id > (SELECT position FROM govbus_relay)",
            [],
            |r| r.get(0),
        )?)
    }
}

/// PostgreSQL store (tables in the given schema).
pub struct PostgresStore {
    client: Mutex<postgres::Client>,
    schema: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .finish()
    }
}

impl PostgresStore {
    /// Connects to `url` and creates the tables in `schema` if missing.
    pub fn open(url: &str, schema: &str) -> Result<Self, StoreError> {
        let mut client = postgres::Client::connect(url, postgres::NoTls)?;
        let s = quote_ident(schema);
        client.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.govbus_entities (
                 dataset TEXT NOT NULL, key TEXT NOT NULL, seq BIGINT NOT NULL, state TEXT,
                 PRIMARY KEY (dataset, key));
             CREATE TABLE IF NOT EXISTS {s}.govbus_outbox (
                 id BIGSERIAL PRIMARY KEY, dataset TEXT NOT NULL, topic TEXT NOT NULL,
                 key TEXT NOT NULL, value BYTEA NOT NULL);
             CREATE TABLE IF NOT EXISTS {s}.govbus_sources (name TEXT PRIMARY KEY, position BIGINT NOT NULL);"
        ))?;
        Ok(Self {
            client: Mutex::new(client),
            schema: s,
        })
    }
}

/// `"name"` with inner quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl OutboxStore for PostgresStore {
    fn accept_many(
        &self,
        dataset: &str,
        keys: &[String],
        build: &mut dyn FnMut(usize, i64, Option<&Json>) -> BuildResult,
        checkpoint: Option<(&str, i64)>,
    ) -> Result<Vec<i64>, SubmitError> {
        let s = &self.schema;
        let mut client = self.client.lock().unwrap_or_else(|p| p.into_inner());
        let mut tx = client.transaction().map_err(StoreError::from)?;
        let select = tx
            .prepare(&format!(
                "SELECT seq, state FROM {s}.govbus_entities WHERE dataset = $1 AND key = $2 FOR UPDATE"
            ))
            .map_err(StoreError::from)?;
        let insert = tx
            .prepare(&format!(
                "INSERT INTO {s}.govbus_outbox (dataset, topic, key, value) VALUES ($1, $2, $3, $4)"
            ))
            .map_err(StoreError::from)?;
        let upsert = tx
            .prepare(&format!(
                "INSERT INTO {s}.govbus_entities (dataset, key, seq, state) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (dataset, key) DO UPDATE SET seq = excluded.seq, state = excluded.state"
            ))
            .map_err(StoreError::from)?;
        let mut seqs = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            // FOR UPDATE serialises concurrent changes of one entity.
            let row = tx
                .query_opt(&select, &[&dataset, key])
                .map_err(StoreError::from)?;
            let (seq, state) = match row {
                Some(r) => (r.get::<_, i64>(0) + 1, r.get::<_, Option<String>>(1)),
                None => (1, None),
            };
            let state = parse_state(key, state)?;
            let built = build(i, seq, state.as_ref())?;
            tx.execute(&insert, &[&dataset, &built.topic, key, &built.value])
                .map_err(StoreError::from)?;
            tx.execute(
                &upsert,
                &[
                    &dataset,
                    key,
                    &seq,
                    &built.state.as_ref().map(|s| s.to_string()),
                ],
            )
            .map_err(StoreError::from)?;
            seqs.push(seq);
        }
        if let Some((source, position)) = checkpoint {
            tx.execute(
                &format!(
                    "INSERT INTO {s}.govbus_sources (name, position) VALUES ($1, $2)
                     ON CONFLICT (name) DO UPDATE SET position = excluded.position"
                ),
                &[&source, &position],
            )
            .map_err(StoreError::from)?;
        }
        tx.commit().map_err(StoreError::from)?;
        Ok(seqs)
    }

    fn checkpoint(&self, source: &str) -> Result<Option<i64>, StoreError> {
        let s = &self.schema;
        let mut client = self.client.lock().unwrap_or_else(|p| p.into_inner());
        Ok(client
            .query_opt(
                &format!("SELECT position FROM {s}.govbus_sources WHERE name = $1"),
                &[&source],
            )?
            .map(|r| r.get(0)))
    }

    fn forget_checkpoints(&self, sources: &[String]) -> Result<(), StoreError> {
        let s = &self.schema;
        let mut client = self.client.lock().unwrap_or_else(|p| p.into_inner());
        client.execute(
            &format!("DELETE FROM {s}.govbus_sources WHERE name = ANY($1)"),
            &[&sources],
        )?;
        Ok(())
    }

    fn pending_after(&self, after: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        let s = &self.schema;
        let mut client = self.client.lock().unwrap_or_else(|p| p.into_inner());
        let rows = client.query(
            &format!(
                "SELECT id, dataset, topic, key, value FROM {s}.govbus_outbox WHERE id > $1 ORDER BY id LIMIT $2"
            ),
            &[&after, &(limit as i64)],
        )?;
        Ok(rows
            .into_iter()
            .map(|r| OutboxRow {
                id: r.get(0),
                dataset: r.get(1),
                topic: r.get(2),
                key: r.get(3),
                value: r.get(4),
            })
            .collect())
    }

    fn mark_sent(&self, ids: &[i64]) -> Result<(), StoreError> {
        let s = &self.schema;
        let mut client = self.client.lock().unwrap_or_else(|p| p.into_inner());
        client.execute(
            &format!("DELETE FROM {s}.govbus_outbox WHERE id = ANY($1)"),
            &[&ids],
        )?;
        Ok(())
    }

    fn set_positions(&self, positions: &[(String, i64)]) -> Result<(), StoreError> {
        let s = &self.schema;
        let mut client = self.client.lock().unwrap_or_else(|p| p.into_inner());
        let mut tx = client.transaction()?;
        for (name, pos) in positions {
            tx.execute(
                &format!(
                    "INSERT INTO {s}.govbus_sources (name, position) VALUES ($1, $2)
                     ON CONFLICT (name) DO UPDATE SET position = excluded.position"
                ),
                &[name, pos],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn pending_topics(&self) -> Result<Vec<String>, StoreError> {
        let s = &self.schema;
        let mut client = self.client.lock().unwrap_or_else(|p| p.into_inner());
        Ok(client
            .query(
                &format!("SELECT DISTINCT topic FROM {s}.govbus_outbox"),
                &[],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn backlog(&self) -> Result<i64, StoreError> {
        let s = &self.schema;
        let mut client = self.client.lock().unwrap_or_else(|p| p.into_inner());
        Ok(client
            .query_one(&format!("SELECT count(*) FROM {s}.govbus_outbox"), &[])?
            .get(0))
    }
}
