//! `_govbus_applied_days`: the changes applied per day (Vietnam's), for
//! the dashboard's chart, counted in each batch's transaction ([`Days`]).

use super::{Batch, Db, DbError, Hook};

pub(super) const DDL: &str = "CREATE TABLE IF NOT EXISTS {p}_govbus_applied_days (
    day {date} PRIMARY KEY, n {bigint} NOT NULL);";

/// Counts each batch's applied changes in its day.
#[derive(Debug, Default)]
pub(crate) struct Days;

impl Hook for Days {
    fn write(&mut self, db: &mut Db, batch: &Batch<'_>) -> Result<(), DbError> {
        let n = (batch.done.upserts + batch.done.deletes) as i64;
        if n == 0 {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO {} AS d (day, n) VALUES ({}, {})
             ON CONFLICT (day) DO UPDATE SET n = d.n + excluded.n",
            db.table("_govbus_applied_days"),
            db.d.date_param(1),
            db.p(2)
        );
        let day = govbus_core::admin_map::day_of_ms(govbus_core::now_ms()).to_string();
        db.execute(&sql, &[day.into(), n.into()])?;
        Ok(())
    }
}

/// Changes applied per day, oldest first, over the last `days` days.
pub(crate) fn read(db: &mut Db, days: u32) -> Result<Vec<(String, i64)>, DbError> {
    let first = govbus_core::admin_map::day_of_ms(govbus_core::now_ms())
        - chrono::Duration::days(i64::from(days.saturating_sub(1)));
    let sql = format!(
        "SELECT {}, n FROM {} WHERE day >= {} ORDER BY day",
        db.d.as_text("day"),
        db.table("_govbus_applied_days"),
        db.d.date_param(1)
    );
    db.rows(&sql, &[first.to_string().into()], |r| {
        Ok((r.text(0)?, r.int(1)?))
    })
}
