//! Reconciliation's reads: bucket digests of a table's rows and the rows
//! of chosen buckets ([`crate::reconcile`]), computed where the rows are
//! when the dialect can (PostgreSQL), else read and computed here.

use std::collections::BTreeMap;

use super::{q, rows, Db, DbError, Param};
use crate::reconcile::{self, Digest, Held};
use crate::table::TableDef;

/// Bucket digests of `t`'s rows (None: no such table).
pub(crate) fn digests(
    db: &mut Db,
    t: &TableDef,
    buckets: u32,
) -> Result<Option<BTreeMap<u32, Digest>>, DbError> {
    if !rows::exists(db, &t.name)? {
        return Ok(None);
    }
    let Some(with) = server_side(db, t) else {
        let held = held(db, t, buckets, None)?;
        let entries: BTreeMap<String, reconcile::Entry> = held
            .into_iter()
            .map(|(k, h)| (k, (h.seq, h.hash)))
            .collect();
        return Ok(Some(reconcile::digests(&entries, buckets)));
    };
    let sql = format!("{with} SELECT b, count(*), coalesce(sum(e), 0)::text FROM r GROUP BY b");
    let mut out = BTreeMap::new();
    for (b, count, sum) in db.rows(&sql, &[i64::from(buckets).into()], |r| {
        Ok((r.int(0)?, r.int(1)?, r.text(2)?))
    })? {
        out.insert(
            b as u32,
            Digest {
                count,
                sum: sum.parse().unwrap_or(0),
            },
        );
    }
    Ok(Some(out))
}

/// The rows of `t` in the buckets `which`.
pub(crate) fn bucket_rows(
    db: &mut Db,
    t: &TableDef,
    buckets: u32,
    which: &[u32],
) -> Result<BTreeMap<String, Held>, DbError> {
    let Some(with) = server_side(db, t) else {
        return held(db, t, buckets, Some(which));
    };
    let sql = format!(
        "{with} SELECT k, s, h, ts FROM r WHERE {}",
        db.d.in_list("b", 2, crate::table::ColType::Int)
    );
    let rows = db.rows(
        &sql,
        &[
            i64::from(buckets).into(),
            Param::Ints(which.iter().map(|b| i64::from(*b)).collect()),
        ],
        |r| {
            Ok((
                r.text(0)?,
                Held {
                    seq: r.int(1)?,
                    hash: r.text(2)?,
                    source_ts: r.int(3)?,
                },
            ))
        },
    )?;
    Ok(rows.into_iter().collect())
}

fn server_side(db: &Db, t: &TableDef) -> Option<String> {
    let cols: Vec<(String, crate::table::ColType)> =
        t.columns.iter().map(|c| (q(&c.name), c.ty)).collect();
    db.d.digests(&db.table(&t.name), &cols)
}

/// Every row of `t` (of the buckets `which`, when given), hashed here.
fn held(
    db: &mut Db,
    t: &TableDef,
    buckets: u32,
    which: Option<&[u32]>,
) -> Result<BTreeMap<String, Held>, DbError> {
    let mut out = BTreeMap::new();
    rows::scan_held(db, t, &mut |seq, source_ts, values| {
        let Some(k) = values.first() else { return };
        let key = reconcile::value_text(k);
        if which.is_some_and(|w| !w.contains(&reconcile::bucket_of(&key, buckets))) {
            return;
        }
        out.insert(
            key,
            Held {
                seq,
                hash: reconcile::row_hash(&values),
                source_ts,
            },
        );
    })?;
    Ok(out)
}
