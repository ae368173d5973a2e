//! The PostgreSQL store (tables in the given schema).

use std::sync::{Mutex, MutexGuard};

use super::{Acceptance, Entity, NewChange, OutboxStore, PendingBatch, State, StoreError};

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
        let mut client = govbus_pg::connect(url)?;
        let s = quote_ident(schema);
        client.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.govbus_entities (
                 dataset TEXT NOT NULL, key TEXT NOT NULL, seq BIGINT NOT NULL, state TEXT,
                 state_avro BYTEA, PRIMARY KEY (dataset, key));
             ALTER TABLE {s}.govbus_entities ADD COLUMN IF NOT EXISTS state_avro BYTEA;
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
    fn begin(&self) -> Result<Box<dyn Acceptance + '_>, StoreError> {
        let mut client = self.client.lock().unwrap_or_else(|p| p.into_inner());
        client.batch_execute("BEGIN")?;
        Ok(Box::new(PgAcceptance {
            client,
            schema: &self.schema,
            open: true,
        }))
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

    fn pending_into(
        &self,
        after: i64,
        limit: usize,
        batch: &mut PendingBatch,
    ) -> Result<usize, StoreError> {
        batch.clear();
        let s = &self.schema;
        let mut client = self.client.lock().unwrap_or_else(|p| p.into_inner());
        let rows = client.query(
            &format!(
                "SELECT id, dataset, topic, key, value FROM {s}.govbus_outbox WHERE id > $1 ORDER BY id LIMIT $2"
            ),
            &[&after, &(limit as i64)],
        )?;
        for r in &rows {
            batch.push(
                r.get(0),
                r.get(1),
                r.get(2),
                r.get::<_, &str>(3).as_bytes(),
                r.get(4),
            );
        }
        Ok(rows.len())
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

/// An acceptance transaction on the store's connection (held until it
/// ends).
struct PgAcceptance<'a> {
    client: MutexGuard<'a, postgres::Client>,
    schema: &'a str,
    open: bool,
}

impl Acceptance for PgAcceptance<'_> {
    fn entity(&mut self, dataset: &str, key: &str) -> Result<Option<Entity>, StoreError> {
        let s = self.schema;
        // FOR UPDATE serialises concurrent changes of one entity.
        let row = self.client.query_opt(
            &format!(
                "SELECT seq, state_avro, state FROM {s}.govbus_entities
                 WHERE dataset = $1 AND key = $2 FOR UPDATE"
            ),
            &[&dataset, &key],
        )?;
        Ok(row.map(|r| Entity {
            seq: r.get(0),
            state: r
                .get::<_, Option<Vec<u8>>>(1)
                .map(State::Avro)
                .or(r.get::<_, Option<String>>(2).map(State::Json)),
        }))
    }

    fn put(&mut self, c: &NewChange<'_>) -> Result<(), StoreError> {
        let s = self.schema;
        self.client.execute(
            &format!(
                "INSERT INTO {s}.govbus_outbox (dataset, topic, key, value) VALUES ($1, $2, $3, $4)"
            ),
            &[&c.dataset, &c.topic, &c.key, &c.value],
        )?;
        self.client.execute(
            &format!(
                "INSERT INTO {s}.govbus_entities (dataset, key, seq, state, state_avro)
                 VALUES ($1, $2, $3, NULL, $4)
                 ON CONFLICT (dataset, key) DO UPDATE
                 SET seq = excluded.seq, state = NULL, state_avro = excluded.state_avro"
            ),
            &[&c.dataset, &c.key, &c.seq, &c.state],
        )?;
        Ok(())
    }

    fn checkpoint(&mut self, source: &str, position: i64) -> Result<(), StoreError> {
        let s = self.schema;
        self.client.execute(
            &format!(
                "INSERT INTO {s}.govbus_sources (name, position) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET position = excluded.position"
            ),
            &[&source, &position],
        )?;
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        self.client.batch_execute("COMMIT")?;
        self.open = false;
        Ok(())
    }
}

impl Drop for PgAcceptance<'_> {
    fn drop(&mut self) {
        if self.open {
            if let Err(e) = self.client.batch_execute("ROLLBACK") {
                tracing::warn!(error = %e, "rolling back an acceptance");
            }
        }
    }
}
