//! `_govbus_seen`: the last sequence applied per entity of each table
//! (deleted entities included), which makes applying idempotent.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use super::{Db, DbError, Param};
use crate::change::Row;
use crate::table::ColType;

pub(super) const DDL: &str = "CREATE TABLE IF NOT EXISTS {p}_govbus_seen (
    tbl TEXT NOT NULL, key TEXT NOT NULL, seq {bigint} NOT NULL, PRIMARY KEY (tbl, key));";

/// The last applied sequence of each of `keys` of `table` that has one.
pub(crate) fn known(
    db: &mut Db,
    table: &str,
    keys: Vec<String>,
) -> Result<HashMap<String, i64>, DbError> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = db.d.lookup(
        &db.d.lists(2, &[ColType::Text]),
        &db.table("_govbus_seen"),
        "r.seq",
        &format!("r.tbl = {} AND r.key = l.v0", db.p(1)),
    );
    let rows = db.rows(&sql, &[table.into(), Param::Texts(keys)], |r| {
        Ok((r.text(0)?, r.int(1)?))
    })?;
    Ok(rows.into_iter().collect())
}

/// [`known`] as an ordered map.
pub(crate) fn seqs(
    db: &mut Db,
    table: &str,
    keys: &[String],
) -> Result<BTreeMap<String, i64>, DbError> {
    Ok(known(db, table, keys.to_vec())?.into_iter().collect())
}

/// Records the sequences of `rows` (one per key) of `table`. `known`,
/// when given, holds every key of them it had: where the database has
/// COPY and the others are many, they are copied in.
pub(crate) fn mark(
    db: &mut Db,
    table: &str,
    rows: &[&Row],
    known: Option<&HashMap<String, i64>>,
) -> Result<(), DbError> {
    let mut rows = rows.to_vec();
    let new = |k: &HashMap<String, i64>| rows.iter().filter(|r| !k.contains_key(&r.key)).count();
    if let Some(known) = known.filter(|k| db.d.copies() && new(k) >= super::rows::COPY_FROM) {
        let mut data = String::new();
        rows.retain(|r| {
            if known.contains_key(&r.key) {
                return true;
            }
            super::rows::escape_copy(&mut data, table);
            data.push('\t');
            super::rows::escape_copy(&mut data, &r.key);
            let _ = writeln!(data, "\t{}", r.seq);
            false
        });
        if !data.is_empty() {
            db.copy_in(
                &format!(
                    "COPY {} (tbl, key, seq) FROM STDIN",
                    db.table("_govbus_seen")
                ),
                data.as_bytes(),
            )?;
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO {} (tbl, key, seq) SELECT {}, l.v0, l.v1 FROM {} WHERE true
         ON CONFLICT (tbl, key) DO UPDATE SET seq = excluded.seq",
        db.table("_govbus_seen"),
        db.p(1),
        db.d.lists(2, &[ColType::Text, ColType::Int])
    );
    db.execute(
        &sql,
        &[
            table.into(),
            Param::Texts(rows.iter().map(|r| r.key.clone()).collect()),
            Param::Ints(rows.iter().map(|r| r.seq).collect()),
        ],
    )?;
    Ok(())
}
