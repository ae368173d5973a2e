//! The producer's own durable store: entity state (for `before` and the
//! per-entity sequence) and the outbox of encoded changes not yet
//! acknowledged by the broker. SQLite by default ([`SqliteStore`]),
//! PostgreSQL when configured ([`PostgresStore`]).
//!
//! Accepting changes is one transaction ([`OutboxStore::begin`]): the
//! publisher reads each entity's sequence and state ([`Acceptance::entity`]),
//! builds the change, and stores it ([`Acceptance::put`]); nothing is
//! stored unless it commits. An entity's state is kept as the Avro datum it
//! was accepted as, so the next change's `before` is those bytes.

mod postgres;
mod sqlite;

pub use postgres::{quote_ident, PostgresStore};
pub use sqlite::SqliteStore;

/// A failure of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed.
    #[error("postgres: {0}")]
    Postgres(#[from] ::postgres::Error),
    /// PostgreSQL could not be reached as the URL says (TLS, sslmode).
    #[error("postgres: {0}")]
    Connect(#[from] govbus_pg::PgError),
}

/// An entity as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entity {
    /// The sequence of its last change.
    pub seq: i64,
    /// Its state after that change (None after a delete).
    pub state: Option<State>,
}

/// A stored entity state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// The Avro datum of the entity schema, as accepted.
    Avro(Vec<u8>),
    /// JSON text, as stores written before govbus kept datums hold it;
    /// read once, replaced by a datum with the entity's next change.
    Json(String),
}

/// One accepted change to store.
#[derive(Debug, Clone, Copy)]
pub struct NewChange<'a> {
    /// The dataset.
    pub dataset: &'a str,
    /// The entity key.
    pub key: &'a str,
    /// The sequence given to the change.
    pub seq: i64,
    /// The entity's state after it, as a datum (None after a delete).
    pub state: Option<&'a [u8]>,
    /// Where the change goes.
    pub topic: &'a str,
    /// The encoded change (wire format).
    pub value: &'a [u8],
}

/// One acceptance transaction. Dropped without [`Acceptance::commit`], it
/// rolls back: nothing is stored and no sequence is used.
pub trait Acceptance {
    /// The entity's sequence and state, as this transaction sees them
    /// (including what it stored already); None if never seen. Locks the
    /// entity until the transaction ends, where the database can.
    fn entity(&mut self, dataset: &str, key: &str) -> Result<Option<Entity>, StoreError>;

    /// Stores a change in the outbox and the entity's new sequence and
    /// state.
    fn put(&mut self, change: &NewChange<'_>) -> Result<(), StoreError>;

    /// Records a source's position (an outbox id, a file line): a source
    /// that resumes from it never submits a change twice.
    fn checkpoint(&mut self, source: &str, position: i64) -> Result<(), StoreError>;

    /// Makes everything stored in this transaction durable.
    fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// One pending change of a [`PendingBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending<'a> {
    /// Position in the outbox (commit order).
    pub id: i64,
    /// Index of its (dataset, topic) in [`PendingBatch::names`].
    pub name: u16,
    /// Destination topic.
    pub topic: &'a str,
    /// Entity key.
    pub key: &'a [u8],
    /// Encoded change.
    pub value: &'a [u8],
}

/// Pending changes packed into a few buffers (the relay's hot path: no
/// allocation per change).
#[derive(Debug, Default)]
pub struct PendingBatch {
    /// (dataset, topic) pairs, indexed by `rows`.
    pub names: Vec<(String, String)>,
    /// Per change: outbox id, index into `names`, end of its key in `buf`,
    /// end of its value in `buf` (each starts where the previous ended).
    rows: Vec<(i64, u16, usize, usize)>,
    /// Keys and values, back to back.
    buf: Vec<u8>,
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

    /// The changes, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = Pending<'_>> + '_ {
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
                Pending {
                    id,
                    name,
                    topic,
                    key,
                    value,
                }
            })
    }

    /// How many changes it holds.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The last id, if any.
    pub fn last_id(&self) -> Option<i64> {
        self.rows.last().map(|r| r.0)
    }
}

/// A durable store of entity states and pending changes.
pub trait OutboxStore: Send + Sync + std::fmt::Debug {
    /// Begins an acceptance transaction.
    fn begin(&self) -> Result<Box<dyn Acceptance + '_>, StoreError>;

    /// The position recorded for a source (an outbox id, a file line), if any.
    fn checkpoint(&self, source: &str) -> Result<Option<i64>, StoreError>;

    /// Removes recorded positions.
    fn forget_checkpoints(&self, sources: &[String]) -> Result<(), StoreError>;

    /// Up to `limit` pending changes with an id above `after`, oldest
    /// first, into `batch` (cleared first); how many.
    fn pending_into(
        &self,
        after: i64,
        limit: usize,
        batch: &mut PendingBatch,
    ) -> Result<usize, StoreError>;

    /// Up to `limit` pending changes, oldest first.
    fn pending(&self, limit: usize) -> Result<PendingBatch, StoreError> {
        let mut batch = PendingBatch::default();
        self.pending_into(0, limit, &mut batch)?;
        Ok(batch)
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
