//! What a province's database holds, read: the interface of the
//! dashboard, `govbus reconcile`, `govbus report` and `govbus receipts`
//! (and of the consumer's own reads beside its batches). It writes
//! nothing a batch writes.

use std::collections::{BTreeMap, HashMap};

use crate::db::{self, Db, DbError};
use crate::receipt::Receipt;
use crate::reconcile::{Digest, Held};
use crate::report::Cell;
use crate::table::{SqlValue, TableDef};

pub use crate::db::snapshots::Stored as StoredSnapshot;

/// A province's database, read.
#[derive(Debug)]
pub struct Store {
    pub(crate) db: Db,
}

impl Store {
    /// The store of `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The database's kind in words (`postgres`, `sqlite`).
    pub fn kind(&self) -> &'static str {
        self.db.kind()
    }

    /// The next offset to read per partition of `topic`, as stored.
    pub fn offsets(&mut self, topic: &str) -> Result<HashMap<i32, i64>, DbError> {
        self.db.ready()?;
        db::offsets::read(&mut self.db, topic)
    }

    /// How many entities of `topic` (or its replay topic) are stale: a
    /// record of theirs was dead-lettered and no newer change of them has
    /// been applied since.
    pub fn dead(&mut self, topic: &str) -> Result<i64, DbError> {
        self.db.ready()?;
        db::dead::stale(&mut self.db, topic)
    }

    /// Rows held in `table` and the source time (ms) of the newest change
    /// applied (None: no such table yet).
    pub fn table_status(&mut self, table: &str) -> Result<Option<(i64, Option<i64>)>, DbError> {
        self.db.ready()?;
        db::rows::status(&mut self.db, table)
    }

    /// The `n` rows of `table` changed last: key (read from `key_column`)
    /// and the source time of the change (ms), newest first.
    pub fn recent(
        &mut self,
        table: &str,
        key_column: &str,
        n: u32,
    ) -> Result<Vec<(String, i64)>, DbError> {
        self.db.ready()?;
        db::rows::recent(&mut self.db, table, key_column, n)
    }

    /// Changes applied per day (Vietnam's), oldest first, over the last
    /// `days` days.
    pub fn applied_days(&mut self, days: u32) -> Result<Vec<(String, i64)>, DbError> {
        self.db.ready()?;
        db::days::read(&mut self.db, days)
    }

    /// A report's stored cells and their counts.
    pub fn report_cells(&mut self, report: &str) -> Result<Vec<(Cell, i64)>, DbError> {
        self.db.ready()?;
        db::cells::read(&mut self.db, report)
    }

    /// What the report's figures were built for (its definition as text),
    /// if they were.
    pub fn report_definition(&mut self, report: &str) -> Result<Option<String>, DbError> {
        self.db.ready()?;
        db::cells::definition(&mut self.db, report)
    }

    /// Every row `table` holds, as values in `table.columns` order, and
    /// the cells of `report` (when given), read in one snapshot. None: no
    /// such table.
    pub fn scan(
        &mut self,
        table: &TableDef,
        report: Option<&str>,
        each: &mut dyn FnMut(&[SqlValue]),
    ) -> Result<Option<Vec<(Cell, i64)>>, DbError> {
        self.db.ready()?;
        if !db::rows::exists(&mut self.db, &table.name)? {
            return Ok(None);
        }
        self.db
            .read(|db| {
                let cells = match report {
                    Some(r) => db::cells::read(db, r)?,
                    None => Vec::new(),
                };
                db::rows::scan(db, table, each)?;
                Ok(cells)
            })
            .map(Some)
    }

    /// A report's stored cells and the next offsets of `topics`, read in
    /// one snapshot: what a dated snapshot freezes.
    #[allow(clippy::type_complexity)]
    pub fn figures_and_offsets(
        &mut self,
        report: &str,
        topics: &[String],
    ) -> Result<(Vec<(Cell, i64)>, BTreeMap<String, BTreeMap<i32, i64>>), DbError> {
        self.db.read(|db| {
            Ok((
                db::cells::read(db, report)?,
                db::offsets::read_many(db, topics)?,
            ))
        })
    }

    /// A report's dated snapshots, oldest first, as stored.
    pub fn snapshots(&mut self, report: &str) -> Result<Vec<StoredSnapshot>, DbError> {
        self.db.ready()?;
        db::snapshots::read(&mut self.db, report)
    }

    /// The stored receipts numbered `from` and after, in order (at most
    /// `limit`).
    pub fn receipts(&mut self, from: i64, limit: i64) -> Result<Vec<Receipt>, DbError> {
        self.db.ready()?;
        db::receipts::read(&mut self.db, from, limit)
    }

    /// The number of the last receipt of `subscriber` known to be on its
    /// receipts topic.
    pub fn receipts_published(&mut self, subscriber: &str) -> Result<i64, DbError> {
        self.db.ready()?;
        db::receipts::published(&mut self.db, subscriber)
    }

    /// Bucket digests of `table`'s rows ([`crate::reconcile`]), computed
    /// where the rows are when the database can (None: no such table).
    pub fn bucket_digests(
        &mut self,
        table: &TableDef,
        buckets: u32,
    ) -> Result<Option<BTreeMap<u32, Digest>>, DbError> {
        self.db.ready()?;
        db::digests::digests(&mut self.db, table, buckets)
    }

    /// The rows of `table` in the buckets `which`.
    pub fn bucket_rows(
        &mut self,
        table: &TableDef,
        buckets: u32,
        which: &[u32],
    ) -> Result<BTreeMap<String, Held>, DbError> {
        self.db.ready()?;
        db::digests::bucket_rows(&mut self.db, table, buckets, which)
    }

    /// The sequence last applied for each of `keys` of `table` (deleted
    /// entities included).
    pub fn seen_seqs(
        &mut self,
        table: &str,
        keys: &[String],
    ) -> Result<BTreeMap<String, i64>, DbError> {
        self.db.ready()?;
        db::seen::seqs(&mut self.db, table, keys)
    }
}
