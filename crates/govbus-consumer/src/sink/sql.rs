//! The SQL sink, PostgreSQL's and SQLite's alike: a batch's rows, its
//! offsets and its bookkeeping hooks (report cells, a receipt, the day's
//! count) in one database transaction, a few set-based statements per run
//! of changes that share a table.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Sink, SinkError};
use crate::change::{fresh, Applied, Dead, Row};
use crate::db::{self, rows::Before, Batch, Db, DbError, Hook};
use crate::receipt::Receipt;
use crate::report::{Cell, Report};
use crate::store::{Store, StoredSnapshot};
use crate::table::TableDef;

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
    pub fn build(&self) -> Result<SqlSink, SinkError> {
        SqlSink::postgres(&self.url, &self.schema)
    }
}

/// `[consumer.sink] type = "sqlite"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteConfig {
    /// The database file (`:memory:` for none).
    pub path: String,
}

impl SqliteConfig {
    /// Opens (or creates) the file.
    pub fn build(&self) -> Result<SqlSink, SinkError> {
        SqlSink::sqlite(&self.path)
    }
}

/// A province's copy in an SQL database.
#[derive(Debug)]
pub struct SqlSink {
    store: Store,
    counts: db::cells::Counts,
    receipts: db::receipts::Writer,
    days: db::days::Days,
    row_by_row: bool,
}

impl SqlSink {
    /// The sink over `db`.
    pub fn new(db: Db) -> Self {
        Self {
            store: Store::new(db),
            counts: Default::default(),
            receipts: Default::default(),
            days: Default::default(),
            row_by_row: false,
        }
    }

    /// PostgreSQL at `url`, tables in `schema`.
    pub fn postgres(url: &str, schema: &str) -> Result<Self, SinkError> {
        Ok(Self::new(Db::postgres(url, schema)?))
    }

    /// The SQLite file at `path`.
    pub fn sqlite(path: &str) -> Result<Self, SinkError> {
        Ok(Self::new(Db::sqlite(path)?))
    }

    /// Applies change by change (a few statements per change) instead of
    /// a few set-based statements per run. Slower; kept to measure
    /// against.
    pub fn set_row_by_row(&mut self, on: bool) {
        self.row_by_row = on;
    }

    /// Keeps `reports` beside the rows from now on, in the same
    /// transactions.
    pub fn set_reports(&mut self, reports: Vec<Arc<Report>>) {
        self.counts.reports = reports;
    }

    /// What the batches applied since the last call changed in the
    /// reports (report id, cell, change of its count).
    pub fn take_touched(&mut self) -> Vec<(String, Cell, i64)> {
        self.counts.take()
    }

    /// Writes a receipt of each applied batch for `subscriber` from now
    /// on ([`crate::receipt`]), in the batch's transaction.
    pub fn set_receipts(&mut self, subscriber: &str) {
        self.receipts.start(subscriber);
    }

    /// The receipts committed since the last call.
    pub fn take_receipts(&mut self) -> Vec<Receipt> {
        self.receipts.take()
    }

    /// The number of the last receipt known to be on the receipts topic.
    pub fn receipts_published(&mut self) -> Result<i64, SinkError> {
        let sub = self.receipts.subscriber.clone().unwrap_or_default();
        Ok(self.store.receipts_published(&sub)?)
    }

    /// Records that receipts up to `seq` are on the receipts topic.
    pub fn mark_receipts_published(&mut self, seq: i64) -> Result<(), SinkError> {
        let sub = self.receipts.subscriber.clone().unwrap_or_default();
        self.store.db.ready()?;
        Ok(db::receipts::mark_published(&mut self.store.db, &sub, seq)?)
    }

    /// Replaces a report's counts with `cells`, built for `definition`,
    /// in one transaction.
    pub fn replace_report(
        &mut self,
        report: &str,
        definition: &str,
        cells: &[(Cell, i64)],
    ) -> Result<(), SinkError> {
        Ok(db::cells::replace(
            &mut self.store.db,
            report,
            definition,
            cells,
        )?)
    }

    /// Stores a dated snapshot unless one of that report and date is
    /// stored already (true: stored now).
    pub fn save_snapshot(&mut self, s: &StoredSnapshot) -> Result<bool, SinkError> {
        self.store.db.ready()?;
        Ok(db::snapshots::save(&mut self.store.db, s)?)
    }

    /// What the database holds, read.
    pub fn store(&mut self) -> &mut Store {
        &mut self.store
    }

    /// The batch's statements, inside its transaction.
    fn apply_in(
        db: &mut Db,
        hooks: &mut [&mut dyn Hook],
        row_by_row: bool,
        rows: &[Row],
        offsets: &[(String, i32, i64)],
    ) -> Result<Applied, DbError> {
        let mut done = Applied::default();
        let mut applied: Vec<&Row> = Vec::new();
        let mut before = Before::default();
        for run in runs(rows, row_by_row) {
            let t = &run[0].table;
            let keys: Vec<&str> = run.iter().map(|r| r.key.as_str()).collect();
            let known = db::seen::known(db, &t.name, keys.iter().map(|k| k.to_string()).collect())?;
            if let Some(read) = hooks.iter().find_map(|h| h.reads_before(t)) {
                db::rows::read_before(db, t, &keys, &known, &read, &mut before)?;
            }
            let (now, finals) = fresh(&run, &known, &mut done);
            applied.extend(now);
            let dels: Vec<String> = finals
                .iter()
                .filter(|r| r.values.is_none())
                .map(|r| r.key.clone())
                .collect();
            db::rows::delete(db, t, dels)?;
            let ups: Vec<&Row> = finals
                .iter()
                .copied()
                .filter(|r| r.values.is_some())
                .collect();
            db::rows::upsert(db, t, &ups, &known)?;
            db::seen::mark(db, &t.name, &finals, Some(&known))?;
        }
        db::offsets::write(db, offsets)?;
        let batch = Batch {
            applied: &applied,
            before: &before,
            done,
        };
        for h in hooks.iter_mut() {
            h.write(db, &batch)?;
        }
        Ok(done)
    }
}

/// Runs of changes that share a table shape (a batch can mix schema
/// versions), or one change per run.
fn runs(rows: &[Row], row_by_row: bool) -> Vec<Vec<&Row>> {
    let mut out: Vec<Vec<&Row>> = Vec::new();
    for r in rows {
        match out.last_mut() {
            Some(run)
                if !row_by_row
                    && (Arc::ptr_eq(&run[0].table, &r.table) || *run[0].table == *r.table) =>
            {
                run.push(r)
            }
            _ => out.push(vec![r]),
        }
    }
    out
}

impl Sink for SqlSink {
    fn kind(&self) -> &'static str {
        self.store.kind()
    }

    fn ensure_table(&mut self, t: &TableDef) -> Result<(), SinkError> {
        self.store.db.ready()?;
        Ok(db::rows::ensure(&mut self.store.db, t)?)
    }

    fn offsets(&mut self, topic: &str) -> Result<HashMap<i32, i64>, SinkError> {
        Ok(self.store.offsets(topic)?)
    }

    fn apply(
        &mut self,
        rows: &[Row],
        offsets: &[(String, i32, i64)],
    ) -> Result<Applied, SinkError> {
        let Self {
            store,
            counts,
            receipts,
            days,
            row_by_row,
        } = self;
        let mut hooks: [&mut dyn Hook; 3] = [counts, receipts, days];
        let result = store
            .db
            .write(|db| Self::apply_in(db, &mut hooks, *row_by_row, rows, offsets));
        for h in hooks.iter_mut() {
            if result.is_ok() {
                h.committed();
            } else {
                h.abandoned();
            }
        }
        Ok(result?)
    }

    fn record_dead(&mut self, dead: &[Dead]) -> Result<(), SinkError> {
        Ok(db::dead::record(&mut self.store.db, dead)?)
    }

    fn dead(&mut self, topic: &str) -> Result<i64, SinkError> {
        Ok(self.store.dead(topic)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{ColType, Column, SqlValue};

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

    fn held(s: &mut SqlSink) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        s.store()
            .scan(&table(), None, &mut |v| {
                if let [SqlValue::Text(k), SqlValue::Int(n)] = v {
                    out.push((k.clone(), *n));
                }
            })
            .unwrap();
        out
    }

    #[test]
    fn a_snapshot_or_delete_of_the_same_sequence_applies_again() {
        let t = table();
        let mut s = SqlSink::sqlite(":memory:").unwrap();
        s.ensure_table(&t).unwrap();
        s.apply(&[row(&t, "a", 5, Some(1))], &[]).unwrap();
        let mut again = row(&t, "a", 5, Some(2));
        again.op = govbus_schema::Op::Snapshot;
        s.apply(&[again], &[]).unwrap();
        assert_eq!(held(&mut s), [("a".to_string(), 2)]);
        s.apply(&[row(&t, "a", 5, None)], &[]).unwrap();
        assert_eq!(held(&mut s), []);
    }

    #[test]
    fn sqlite_applies_in_sequence_and_skips_stale() {
        for row_by_row in [false, true] {
            let mut s = SqlSink::sqlite(":memory:").unwrap();
            s.set_row_by_row(row_by_row);
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
            assert_eq!(held(&mut s), [("a".to_string(), 3)]);
            // A delete, then a stale upsert: the row stays gone.
            s.apply(&[row(&t, "a", 4, None), row(&t, "a", 3, Some(9))], &[])
                .unwrap();
            assert_eq!(held(&mut s), []);
            assert_eq!(s.offsets("x").unwrap()[&0], 3);
        }
    }

    #[test]
    fn a_new_column_is_added_to_the_table() {
        let mut s = SqlSink::sqlite(":memory:").unwrap();
        let t = table();
        s.ensure_table(&t).unwrap();
        let mut wider = (*t).clone();
        wider.columns.push(Column {
            name: "born".into(),
            path: vec!["born".into()],
            ty: ColType::Date,
        });
        let wider = Arc::new(wider);
        s.ensure_table(&wider).unwrap();
        let mut r = row(&wider, "a", 1, Some(1));
        r.values = Some(vec![
            SqlValue::Text("a".into()),
            SqlValue::Int(1),
            SqlValue::Date("1990-05-01".into()),
        ]);
        s.apply(&[r], &[]).unwrap();
        let mut got = Vec::new();
        s.store()
            .scan(&wider, None, &mut |v| got.push(v.to_vec()))
            .unwrap();
        assert_eq!(got[0][2], SqlValue::Date("1990-05-01".into()));
    }

    #[test]
    fn sqlite_writes_a_chained_receipt_per_applied_batch() {
        let t = table();
        let mut s = SqlSink::sqlite(":memory:").unwrap();
        s.ensure_table(&t).unwrap();
        s.set_receipts("p52");
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
        let stored = s.store().receipts(1, 10).unwrap();
        assert_eq!(stored, out);
        assert_eq!(crate::receipt::verify(&stored), Ok((2, 3)));
        assert_eq!(s.receipts_published().unwrap(), 0);
        s.mark_receipts_published(2).unwrap();
        s.mark_receipts_published(1).unwrap();
        assert_eq!(s.receipts_published().unwrap(), 2);
    }

    #[test]
    fn a_failed_batch_leaves_no_receipt_and_no_row() {
        let t = table();
        let mut s = SqlSink::sqlite(":memory:").unwrap();
        s.ensure_table(&t).unwrap();
        s.set_receipts("p52");
        // A table the database does not hold: the batch fails whole.
        let mut missing = (*t).clone();
        missing.name = "absent".into();
        let missing = Arc::new(missing);
        let e = s
            .apply(
                &[row(&t, "a", 1, Some(1)), row(&missing, "b", 1, Some(1))],
                &[("x".into(), 0, 2)],
            )
            .unwrap_err();
        assert!(e.to_string().contains("absent"), "{e}");
        assert!(s.take_receipts().is_empty());
        assert_eq!(held(&mut s), []);
        assert!(s.offsets("x").unwrap().is_empty());
        s.apply(&[row(&t, "a", 1, Some(1))], &[]).unwrap();
        assert_eq!(s.take_receipts()[0].seq, 1, "the chain starts where it was");
    }
}
