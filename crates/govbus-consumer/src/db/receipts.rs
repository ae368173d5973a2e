//! Delivery receipts beside the rows: `_govbus_receipts` (one chained
//! receipt per applied batch, written in its transaction by [`Writer`], a
//! [`Hook`]) and `_govbus_receipts_published` (the last one known to be on
//! the subscriber's receipts topic).

use std::sync::Arc;

use super::{Batch, Db, DbError, Hook};
use crate::receipt::{Applied, Receipt};

pub(super) const DDL: &str = "CREATE TABLE IF NOT EXISTS {p}_govbus_receipts (
    subscriber TEXT NOT NULL, seq {bigint} NOT NULL, applied_at_ms {bigint} NOT NULL,
    prev TEXT NOT NULL, hash TEXT NOT NULL, events TEXT NOT NULL, PRIMARY KEY (subscriber, seq));
CREATE TABLE IF NOT EXISTS {p}_govbus_receipts_published (
    subscriber TEXT PRIMARY KEY, seq {bigint} NOT NULL);";

/// Writes a receipt of each applied batch for a subscriber, chained to
/// the last one written (read from the store on first use).
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) subscriber: Option<String>,
    last: Option<Option<(i64, String)>>,
    pending: Option<Receipt>,
    out: Vec<Receipt>,
}

impl Writer {
    /// Receipts for `subscriber` from now on.
    pub(crate) fn start(&mut self, subscriber: &str) {
        self.subscriber = Some(subscriber.to_string());
        self.last = None;
    }

    /// The receipts committed since the last call.
    pub(crate) fn take(&mut self) -> Vec<Receipt> {
        std::mem::take(&mut self.out)
    }
}

impl Hook for Writer {
    fn write(&mut self, db: &mut Db, batch: &Batch<'_>) -> Result<(), DbError> {
        let Some(sub) = self.subscriber.clone() else {
            return Ok(());
        };
        if batch.applied.is_empty() {
            return Ok(());
        }
        let last = match &self.last {
            Some(last) => last.clone(),
            None => {
                let sql = format!(
                    "SELECT seq, hash FROM {} WHERE subscriber = {} ORDER BY seq DESC LIMIT 1",
                    db.table("_govbus_receipts"),
                    db.p(1)
                );
                let last = db.first(&sql, &[(&sub).into()], |r| Ok((r.int(0)?, r.text(1)?)))?;
                self.last = Some(last.clone());
                last
            }
        };
        let events: Vec<Applied> = batch
            .applied
            .iter()
            .map(|r| {
                let (topic, partition, offset) =
                    r.record.clone().unwrap_or_else(|| (Arc::from(""), -1, -1));
                Applied {
                    event_id: r.event_id.clone(),
                    topic: topic.to_string(),
                    partition,
                    offset,
                }
            })
            .collect();
        let r = Receipt::next(&sub, last, events, govbus_core::now_ms());
        let sql = format!(
            "INSERT INTO {} (subscriber, seq, applied_at_ms, prev, hash, events)
             VALUES ({}, {}, {}, {}, {}, {})",
            db.table("_govbus_receipts"),
            db.p(1),
            db.p(2),
            db.p(3),
            db.p(4),
            db.p(5),
            db.p(6)
        );
        db.execute(
            &sql,
            &[
                (&r.subscriber).into(),
                r.seq.into(),
                r.applied_at_ms.into(),
                (&r.prev).into(),
                (&r.hash).into(),
                serde_json::to_string(&r.events).unwrap_or_default().into(),
            ],
        )?;
        self.pending = Some(r);
        Ok(())
    }

    fn committed(&mut self) {
        if let Some(r) = self.pending.take() {
            self.last = Some(Some((r.seq, r.hash.clone())));
            self.out.push(r);
        }
    }

    fn abandoned(&mut self) {
        self.pending = None;
        // Read again: the failure may have been the database's, after
        // all.
        self.last = None;
    }
}

/// The stored receipts numbered `from` and after, in order (at most
/// `limit`); one whose events do not read is left out.
pub(crate) fn read(db: &mut Db, from: i64, limit: i64) -> Result<Vec<Receipt>, DbError> {
    let sql = format!(
        "SELECT subscriber, seq, applied_at_ms, prev, hash, events FROM {}
         WHERE seq >= {} ORDER BY subscriber, seq LIMIT {}",
        db.table("_govbus_receipts"),
        db.p(1),
        db.p(2)
    );
    let rows = db.rows(&sql, &[from.into(), limit.into()], |r| {
        Ok((
            r.text(0)?,
            r.int(1)?,
            r.int(2)?,
            r.text(3)?,
            r.text(4)?,
            r.text(5)?,
        ))
    })?;
    Ok(rows
        .into_iter()
        .filter_map(|(subscriber, seq, applied_at_ms, prev, hash, events)| {
            Some(Receipt {
                subscriber,
                seq,
                events: serde_json::from_str(&events).ok()?,
                applied_at_ms,
                prev,
                hash,
            })
        })
        .collect())
}

/// The number of the last receipt of `subscriber` known to be published.
pub(crate) fn published(db: &mut Db, subscriber: &str) -> Result<i64, DbError> {
    let sql = format!(
        "SELECT seq FROM {} WHERE subscriber = {}",
        db.table("_govbus_receipts_published"),
        db.p(1)
    );
    Ok(db
        .first(&sql, &[subscriber.into()], |r| r.int(0))?
        .unwrap_or(0))
}

/// Records that receipts of `subscriber` up to `seq` are published (never
/// moving back).
pub(crate) fn mark_published(db: &mut Db, subscriber: &str, seq: i64) -> Result<(), DbError> {
    let sql = format!(
        "INSERT INTO {} AS p (subscriber, seq) VALUES ({}, {})
         ON CONFLICT (subscriber) DO UPDATE
         SET seq = CASE WHEN excluded.seq > p.seq THEN excluded.seq ELSE p.seq END",
        db.table("_govbus_receipts_published"),
        db.p(1),
        db.p(2)
    );
    db.execute(&sql, &[subscriber.into(), seq.into()])?;
    Ok(())
}
