//! `_govbus_offsets`: the next offset to read per view partition, written
//! in the transaction of the rows it covers.

use std::collections::{BTreeMap, HashMap};

use super::{Db, DbError, Param};
use crate::table::ColType;

pub(super) const DDL: &str = "CREATE TABLE IF NOT EXISTS {p}_govbus_offsets (
    topic TEXT NOT NULL, partition {int} NOT NULL, next_offset {bigint} NOT NULL,
    PRIMARY KEY (topic, partition));";

/// The next offset per partition of `topic`, as stored.
pub(crate) fn read(db: &mut Db, topic: &str) -> Result<HashMap<i32, i64>, DbError> {
    let sql = format!(
        "SELECT partition, next_offset FROM {} WHERE topic = {}",
        db.table("_govbus_offsets"),
        db.p(1)
    );
    let rows = db.rows(&sql, &[topic.into()], |r| Ok((r.int(0)? as i32, r.int(1)?)))?;
    Ok(rows.into_iter().collect())
}

/// The next offsets of each of `topics`.
pub(crate) fn read_many(
    db: &mut Db,
    topics: &[String],
) -> Result<BTreeMap<String, BTreeMap<i32, i64>>, DbError> {
    let sql = format!(
        "SELECT topic, partition, next_offset FROM {} WHERE {}",
        db.table("_govbus_offsets"),
        db.d.in_list("topic", 1, ColType::Text)
    );
    let mut out: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    for (t, p, o) in db.rows(&sql, &[Param::Texts(topics.to_vec())], |r| {
        Ok((r.text(0)?, r.int(1)? as i32, r.int(2)?))
    })? {
        out.entry(t).or_default().insert(p, o);
    }
    Ok(out)
}

/// Stores `offsets` (topic, partition, next offset).
pub(crate) fn write(db: &mut Db, offsets: &[(String, i32, i64)]) -> Result<(), DbError> {
    if offsets.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO {} (topic, partition, next_offset) SELECT l.v0, l.v1, l.v2 FROM {} WHERE true
         ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
        db.table("_govbus_offsets"),
        db.d.lists(1, &[ColType::Text, ColType::Int, ColType::Int])
    );
    db.execute(
        &sql,
        &[
            Param::Texts(offsets.iter().map(|o| o.0.clone()).collect()),
            Param::Ints(offsets.iter().map(|o| i64::from(o.1)).collect()),
            Param::Ints(offsets.iter().map(|o| o.2).collect()),
        ],
    )?;
    Ok(())
}
