//! `_govbus_report_snapshots`: a report's figures frozen at the end of a
//! period, stored as their JSON content and digest.

use super::{Db, DbError};

pub(super) const DDL: &str = "CREATE TABLE IF NOT EXISTS {p}_govbus_report_snapshots (
    report TEXT NOT NULL, at {date} NOT NULL, taken_ms {bigint} NOT NULL, total {bigint} NOT NULL,
    digest TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (report, at));";

/// A stored snapshot, as its columns hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// `subscriber.name`.
    pub report: String,
    /// Its date, `YYYY-MM-DD`.
    pub at: String,
    /// When it was frozen (ms).
    pub taken_ms: i64,
    /// The figures' sum.
    pub total: i64,
    /// The digest as stored.
    pub digest: String,
    /// The content as JSON.
    pub body: String,
}

/// Stores `s` unless one of that report and date is stored already
/// (true: stored now).
pub(crate) fn save(db: &mut Db, s: &Stored) -> Result<bool, DbError> {
    let sql = format!(
        "INSERT INTO {} (report, at, taken_ms, total, digest, body)
         VALUES ({}, {}, {}, {}, {}, {}) ON CONFLICT (report, at) DO NOTHING",
        db.table("_govbus_report_snapshots"),
        db.p(1),
        db.d.date_param(2),
        db.p(3),
        db.p(4),
        db.p(5),
        db.p(6)
    );
    let n = db.execute(
        &sql,
        &[
            (&s.report).into(),
            (&s.at).into(),
            s.taken_ms.into(),
            s.total.into(),
            (&s.digest).into(),
            (&s.body).into(),
        ],
    )?;
    Ok(n == 1)
}

/// A report's stored snapshots, oldest first.
pub(crate) fn read(db: &mut Db, report: &str) -> Result<Vec<Stored>, DbError> {
    let sql = format!(
        "SELECT report, {}, taken_ms, total, digest, body FROM {} WHERE report = {} ORDER BY at",
        db.d.as_text("at"),
        db.table("_govbus_report_snapshots"),
        db.p(1)
    );
    db.rows(&sql, &[report.into()], |r| {
        Ok(Stored {
            report: r.text(0)?,
            at: r.text(1)?,
            taken_ms: r.int(2)?,
            total: r.int(3)?,
            digest: r.text(4)?,
            body: r.text(5)?,
        })
    })
}
