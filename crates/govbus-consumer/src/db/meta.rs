//! `_govbus_meta`: named numbers a sink keeps with its offsets (a file's
//! committed length).

use super::{Db, DbError};

pub(super) const DDL: &str = "CREATE TABLE IF NOT EXISTS {p}_govbus_meta (
    name TEXT PRIMARY KEY, value {bigint} NOT NULL);";

/// The value named `name`, if stored.
pub(crate) fn read(db: &mut Db, name: &str) -> Result<Option<i64>, DbError> {
    let sql = format!(
        "SELECT value FROM {} WHERE name = {}",
        db.table("_govbus_meta"),
        db.p(1)
    );
    db.first(&sql, &[name.into()], |r| r.int(0))
}

/// Stores `values` (name, value).
pub(crate) fn write(db: &mut Db, values: &[(&str, i64)]) -> Result<(), DbError> {
    let sql = format!(
        "INSERT INTO {} (name, value) VALUES ({}, {})
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        db.table("_govbus_meta"),
        db.p(1),
        db.p(2)
    );
    for (name, value) in values {
        db.execute(&sql, &[(*name).into(), (*value).into()])?;
    }
    Ok(())
}
