//! The SQLite store (the embedded default).

use std::sync::{Mutex, MutexGuard};

use super::{Acceptance, Entity, NewChange, OutboxStore, PendingBatch, State, StoreError};

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
                 state_avro BLOB, PRIMARY KEY (dataset, key));
             CREATE TABLE IF NOT EXISTS govbus_outbox (
                 id INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT NOT NULL, topic TEXT NOT NULL,
                 key TEXT NOT NULL, value BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS govbus_sources (name TEXT PRIMARY KEY, position INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS govbus_relay (one INTEGER PRIMARY KEY CHECK (one = 1), position INTEGER NOT NULL);
             INSERT OR IGNORE INTO govbus_relay (one, position) VALUES (1, 0);",
        )?;
        // Stores written before entity states were kept as datums.
        let has_avro: bool = conn.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('govbus_entities') WHERE name = 'state_avro'",
            [],
            |r| r.get(0),
        )?;
        if !has_avro {
            conn.execute_batch("ALTER TABLE govbus_entities ADD COLUMN state_avro BLOB")?;
        }
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

impl OutboxStore for SqliteStore {
    fn begin(&self) -> Result<Box<dyn Acceptance + '_>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        // IMMEDIATE: the write lock is taken now, so entities read in the
        // transaction cannot change under it.
        conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(Box::new(SqliteAcceptance { conn, open: true }))
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

/// An acceptance transaction on the store's connection (held until it
/// ends).
struct SqliteAcceptance<'a> {
    conn: MutexGuard<'a, rusqlite::Connection>,
    open: bool,
}

impl Acceptance for SqliteAcceptance<'_> {
    fn entity(&mut self, dataset: &str, key: &str) -> Result<Option<Entity>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT seq, state_avro, state FROM govbus_entities WHERE dataset = ?1 AND key = ?2",
        )?;
        let mut rows = st.query((dataset, key))?;
        let Some(r) = rows.next()? else {
            return Ok(None);
        };
        let avro: Option<Vec<u8>> = r.get(1)?;
        let json: Option<String> = r.get(2)?;
        Ok(Some(Entity {
            seq: r.get(0)?,
            state: avro.map(State::Avro).or(json.map(State::Json)),
        }))
    }

    fn put(&mut self, c: &NewChange<'_>) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO govbus_outbox (dataset, topic, key, value) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute((c.dataset, c.topic, c.key, c.value))?;
        self.conn
            .prepare_cached(
                "INSERT INTO govbus_entities (dataset, key, seq, state, state_avro)
                 VALUES (?1, ?2, ?3, NULL, ?4)
                 ON CONFLICT (dataset, key) DO UPDATE
                 SET seq = excluded.seq, state = NULL, state_avro = excluded.state_avro",
            )?
            .execute((c.dataset, c.key, c.seq, c.state))?;
        Ok(())
    }

    fn checkpoint(&mut self, source: &str, position: i64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO govbus_sources (name, position) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET position = excluded.position",
            )?
            .execute((source, position))?;
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        self.conn.execute_batch("COMMIT")?;
        self.open = false;
        Ok(())
    }
}

impl Drop for SqliteAcceptance<'_> {
    fn drop(&mut self) {
        if self.open {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::warn!(error = %e, "rolling back an acceptance");
            }
        }
    }
}
