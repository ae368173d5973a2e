//! `_govbus_dead`: records of a view that were dead-lettered, so that
//! their entities show as stale until a newer change of them is applied.

use super::{Db, DbError, Param};
use crate::change::Dead;

pub(super) const DDL: &str = "CREATE TABLE IF NOT EXISTS {p}_govbus_dead (
    topic TEXT NOT NULL, partition {int} NOT NULL, source_offset {bigint} NOT NULL,
    key TEXT NOT NULL, reason TEXT NOT NULL, error TEXT NOT NULL, at_ms {bigint} NOT NULL,
    tbl TEXT, seen_seq {bigint},
    PRIMARY KEY (topic, partition, source_offset));";

/// Adds the columns a `_govbus_dead` of an earlier build lacks.
pub(super) fn upgrade(db: &mut Db) -> Result<(), DbError> {
    let have = db.rows(
        db.d.columns_of(),
        &[db.schema.clone().into(), "_govbus_dead".into()],
        |r| r.text(0),
    )?;
    for (col, ty) in [("tbl", "TEXT"), ("seen_seq", db.d.bigint())] {
        if !have.iter().any(|h| h == col) {
            let sql = db.d.add_column(&db.table("_govbus_dead"), col, ty);
            db.batch(&sql)?;
        }
    }
    Ok(())
}

/// Records `dead` (once per topic, partition and offset), with the
/// sequence its entity had then.
pub(crate) fn record(db: &mut Db, dead: &[Dead]) -> Result<(), DbError> {
    let sql = format!(
        "INSERT INTO {} (topic, partition, source_offset, key, reason, error, at_ms, tbl, seen_seq)
         VALUES ({p1}, {p2}, {p3}, {p4}, {p5}, {p6}, {p7}, {p8},
                 (SELECT seq FROM {seen} WHERE tbl = {p8} AND key = {p4}))
         ON CONFLICT DO NOTHING",
        db.table("_govbus_dead"),
        seen = db.table("_govbus_seen"),
        p1 = db.p(1),
        p2 = db.p(2),
        p3 = db.p(3),
        p4 = db.p(4),
        p5 = db.p(5),
        p6 = db.p(6),
        p7 = db.p(7),
        p8 = db.p(8),
    );
    db.write(|db| {
        for d in dead {
            db.execute(
                &sql,
                &[
                    (&d.topic).into(),
                    d.partition.into(),
                    d.offset.into(),
                    (&d.key).into(),
                    d.reason.into(),
                    (&d.error).into(),
                    govbus_core::now_ms().into(),
                    Param::Text(d.table.clone()),
                ],
            )?;
        }
        Ok(())
    })
}

/// How many entities of `topic` (or its replay topic) are stale: a
/// record of theirs was dead-lettered and no newer change of them has been
/// applied since (rows of an earlier build, without a table, count).
pub(crate) fn stale(db: &mut Db, topic: &str) -> Result<i64, DbError> {
    let sql = format!(
        "SELECT count(DISTINCT coalesce(d.tbl, '') || '/' || d.key) FROM {} d
         WHERE (d.topic = {p} OR d.topic = {p} || '.replay')
           AND NOT EXISTS (SELECT 1 FROM {} s
                           WHERE s.tbl = d.tbl AND s.key = d.key AND s.seq > coalesce(d.seen_seq, -1))",
        db.table("_govbus_dead"),
        db.table("_govbus_seen"),
        p = db.p(1)
    );
    Ok(db.first(&sql, &[topic.into()], |r| r.int(0))?.unwrap_or(0))
}
