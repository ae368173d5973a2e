//! The province's own tables: one per view, keyed by the entity's key,
//! with `_govbus_seq` and `_govbus_source_ts` beside the view's columns.

use std::collections::HashMap;
use std::sync::Arc;

use super::{q, Db, DbError, Param};
use crate::change::Row;
use crate::table::{ColType, SqlValue, TableDef};

/// Creates `t` or adds the columns it lacks.
pub(crate) fn ensure(db: &mut Db, t: &TableDef) -> Result<(), DbError> {
    let name = db.table(&t.name);
    let Some(key) = t.columns.first() else {
        return Ok(());
    };
    db.batch(&format!(
        "CREATE TABLE IF NOT EXISTS {name} ({} {} PRIMARY KEY, _govbus_seq {big} NOT NULL, _govbus_source_ts {big} NOT NULL);",
        q(&key.name),
        db.d.column_type(key.ty),
        big = db.d.bigint()
    ))?;
    let have = db.rows(
        db.d.columns_of(),
        &[db.schema.clone().into(), (&t.name).into()],
        |r| r.text(0),
    )?;
    let mut add = String::new();
    for c in &t.columns[1..] {
        if !have.contains(&c.name) {
            add.push_str(&db.d.add_column(&name, &q(&c.name), db.d.column_type(c.ty)));
        }
    }
    if !add.is_empty() {
        db.batch(&add)?;
        db.forget();
    }
    Ok(())
}

/// Whether `table` exists.
pub(crate) fn exists(db: &mut Db, table: &str) -> Result<bool, DbError> {
    let sql = db.d.table_exists();
    let n = db.first(sql, &[db.schema.clone().into(), table.into()], |r| r.int(0))?;
    Ok(n.unwrap_or(0) > 0)
}

/// Rows held in `table` and the source time (ms) of the newest change
/// applied (None: no such table yet).
pub(crate) fn status(db: &mut Db, table: &str) -> Result<Option<(i64, Option<i64>)>, DbError> {
    if !exists(db, table)? {
        return Ok(None);
    }
    let sql = format!(
        "SELECT count(*), max(_govbus_source_ts) FROM {}",
        db.table(table)
    );
    db.first(&sql, &[], |r| Ok((r.int(0)?, r.opt_int(1)?)))
}

/// The `n` rows of `table` changed last: key (read from `key_column`)
/// and the source time of the change (ms), newest first.
pub(crate) fn recent(
    db: &mut Db,
    table: &str,
    key_column: &str,
    n: u32,
) -> Result<Vec<(String, i64)>, DbError> {
    if !exists(db, table)? {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {}, _govbus_source_ts FROM {} ORDER BY _govbus_source_ts DESC LIMIT {}",
        db.d.as_text(&q(key_column)),
        db.table(table),
        db.p(1)
    );
    db.rows(&sql, &[i64::from(n).into()], |r| {
        Ok((r.text(0)?, r.int(1)?))
    })
}

/// The columns of `t` as [`values`] reads them; a typed NULL for those
/// `read` leaves out (None: all).
fn select_list(db: &Db, t: &TableDef, read: Option<&[bool]>) -> String {
    t.columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if read.is_none_or(|r| r.get(i).copied().unwrap_or(true)) {
                db.d.select_column(&format!("r.{}", q(&c.name)), c.ty)
            } else {
                db.d.null_of(c.ty)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A row of `t` selected with [`select_list`] from column `from` on.
fn values(r: &dyn super::Fetched, t: &TableDef, from: usize) -> Result<Vec<SqlValue>, DbError> {
    t.columns
        .iter()
        .enumerate()
        .map(|(i, c)| r.value(from + i, c.ty))
        .collect()
}

/// Rows as a batch found them before it wrote, by table and key, with
/// the definition they were read by (None: there was no row).
#[derive(Debug, Default)]
pub(crate) struct Before(HashMap<String, HashMap<String, Option<Found>>>);

/// A row read, with the definition it was read by.
type Found = (Arc<TableDef>, Vec<SqlValue>);

impl Before {
    fn has(&self, table: &str, key: &str) -> bool {
        self.0.get(table).is_some_and(|m| m.contains_key(key))
    }

    /// The row of `key` in `table` as the batch found it (None: there was
    /// none, or it was not read).
    pub(crate) fn row(&self, table: &str, key: &str) -> Option<(&TableDef, &[SqlValue])> {
        let (t, v) = self.0.get(table)?.get(key)?.as_ref()?;
        Some((t, v))
    }
}

/// Reads the rows of `keys` of `t` not read yet in this batch into
/// `before`: the columns `read` says, as they stand before the batch
/// writes them. A key govbus never applied (not in `known`, the last
/// sequences of `_govbus_seen`) has no row: it is not looked for.
pub(crate) fn read_before(
    db: &mut Db,
    t: &Arc<TableDef>,
    keys: &[&str],
    known: &HashMap<String, i64>,
    read: &[bool],
    before: &mut Before,
) -> Result<(), DbError> {
    let mut want: Vec<String> = Vec::new();
    for k in keys {
        if before.has(&t.name, k) {
            continue;
        }
        if known.contains_key(*k) {
            want.push(k.to_string());
        } else {
            before
                .0
                .entry(t.name.clone())
                .or_default()
                .insert(k.to_string(), None);
        }
    }
    want.sort();
    want.dedup();
    if want.is_empty() {
        return Ok(());
    }
    let Some(key) = t.columns.first() else {
        return Ok(());
    };
    let sql = db.d.lookup(
        &db.d.lists(1, &[ColType::Text]),
        &db.table(&t.name),
        &select_list(db, t, Some(read)),
        &format!("{} = l.v0", db.d.key_text(&format!("r.{}", q(&key.name)))),
    );
    let found = db.rows(&sql, &[Param::Texts(want.clone())], |r| {
        Ok((r.text(0)?, values(r, t, 1)?))
    })?;
    let rows = before.0.entry(t.name.clone()).or_default();
    for k in want {
        rows.insert(k, None);
    }
    for (k, v) in found {
        rows.insert(k, Some((t.clone(), v)));
    }
    Ok(())
}

/// Deletes the rows of `keys` from `t`.
pub(crate) fn delete(db: &mut Db, t: &TableDef, keys: Vec<String>) -> Result<(), DbError> {
    let Some(key) = t.columns.first() else {
        return Ok(());
    };
    if keys.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "DELETE FROM {} WHERE {}",
        db.table(&t.name),
        db.d.in_list(&db.d.key_text(&q(&key.name)), 1, ColType::Text)
    );
    db.execute(&sql, &[Param::Texts(keys)])?;
    Ok(())
}

/// Parameters a statement may carry (PostgreSQL allows 65,535, SQLite
/// 32,766).
const PARAMS: usize = 30_000;

/// Where the database has COPY (PostgreSQL), at least this many rows of
/// a run are loaded with it; fewer are inserted with VALUES. A quiet
/// batch's few rows gain nothing from COPY, and a staging table made and
/// dropped per transaction would cost them more than it saves.
pub(super) const COPY_FROM: usize = 256;

/// Inserts or replaces `rows` (live, one per key) of `t`.
///
/// Where the database has COPY and the rows are many: the rows of
/// entities govbus never applied (not in `known`, the last sequences of
/// `_govbus_seen`; a table holds only entities applied) are copied
/// straight in, as a plain COPY would; the others are copied into a
/// staging table and merged in one statement. A row someone put in by
/// hand under a new key makes the COPY fail on the key: the consumer then
/// applies the batch change by change, with VALUES, which replaces it.
/// Otherwise, a few hundred rows per VALUES statement.
pub(crate) fn upsert(
    db: &mut Db,
    t: &TableDef,
    rows: &[&Row],
    known: &HashMap<String, i64>,
) -> Result<(), DbError> {
    if !db.d.copies() || rows.len() < COPY_FROM {
        return upsert_values(db, t, rows);
    }
    let (mut held, mut new): (Vec<&Row>, Vec<&Row>) =
        rows.iter().partition(|r| known.contains_key(&r.key));
    let (cols, set) = columns_and_set(t);
    let table = db.table(&t.name);
    if new.len() >= COPY_FROM {
        if let Some(data) = copy_text(t, &new) {
            db.copy_in(
                &format!("COPY {table} ({cols}) FROM STDIN"),
                data.as_bytes(),
            )?;
            new.clear();
        }
    }
    if held.len() >= COPY_FROM {
        if let (Some((create, stage)), Some(data)) = (db.d.stage(&table), copy_text(t, &held)) {
            db.batch(&create)?;
            db.copy_in(
                &format!("COPY {stage} ({cols}) FROM STDIN"),
                data.as_bytes(),
            )?;
            db.batch(&format!(
                "INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT ({}) DO UPDATE SET {set}",
                q(&t.columns[0].name),
            ))?;
            held.clear();
        }
    }
    held.append(&mut new);
    upsert_values(db, t, &held)
}

/// [`upsert`] with VALUES statements, a few hundred rows each.
fn upsert_values(db: &mut Db, t: &TableDef, rows: &[&Row]) -> Result<(), DbError> {
    let per = t.columns.len() + 2;
    for chunk in rows.chunks((PARAMS / per).max(1)) {
        let sql = upsert_sql(db, t, chunk.len());
        let mut params = Vec::with_capacity(chunk.len() * per);
        for r in chunk {
            for (v, c) in r.values.iter().flatten().zip(&t.columns) {
                params.push(Param::of(v, c.ty));
            }
            params.push(Param::Int(r.seq));
            params.push(Param::Int(r.source_ts));
        }
        db.execute(&sql, &params)?;
    }
    Ok(())
}

/// The columns an upsert writes (`"a", "b", _govbus_seq,
/// _govbus_source_ts`) and its `SET` list (every column but the key, from
/// `excluded`).
fn columns_and_set(t: &TableDef) -> (String, String) {
    let cols: Vec<String> = t.columns.iter().map(|c| q(&c.name)).collect();
    let set: Vec<String> = cols[1..]
        .iter()
        .map(String::as_str)
        .chain(["_govbus_seq", "_govbus_source_ts"])
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    (
        format!("{}, _govbus_seq, _govbus_source_ts", cols.join(", ")),
        set.join(", "),
    )
}

fn upsert_sql(db: &Db, t: &TableDef, rows: usize) -> String {
    let per = t.columns.len() + 2;
    let values: Vec<String> = (0..rows)
        .map(|r| {
            let mut ph: Vec<String> = t
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| db.d.typed_param(c.ty, r * per + i + 1))
                .collect();
            ph.push(db.d.typed_param(ColType::Int, r * per + per - 1));
            ph.push(db.d.typed_param(ColType::Int, r * per + per));
            format!("({})", ph.join(", "))
        })
        .collect();
    let (cols, set) = columns_and_set(t);
    format!(
        "INSERT INTO {} ({cols}) VALUES {} ON CONFLICT ({}) DO UPDATE SET {set}",
        db.table(&t.name),
        values.join(", "),
        q(&t.columns[0].name),
    )
}

/// `rows` of `t` in COPY's text format, columns as [`columns_and_set`]
/// lists them, each value as the VALUES statement would bind it; None
/// when a value has no text PostgreSQL reads back the same (an instant
/// outside years 1–9999): the run then takes VALUES, which says what is
/// wrong with it.
fn copy_text(t: &TableDef, rows: &[&Row]) -> Option<String> {
    use std::fmt::Write;
    let mut out = String::with_capacity(rows.len() * 64 * (t.columns.len() + 2));
    for r in rows {
        for (v, c) in r.values.iter().flatten().zip(&t.columns) {
            match Param::of(v, c.ty) {
                Param::Null => out.push_str("\\N"),
                Param::Text(s) | Param::Date(s) => escape_copy(&mut out, &s),
                Param::Int(n) => {
                    let _ = write!(out, "{n}");
                }
                Param::Timestamp(ms) => {
                    let at = chrono::DateTime::from_timestamp_millis(ms)
                        .filter(|d| (1..=9999).contains(&chrono::Datelike::year(d)))?;
                    let _ = write!(out, "{}", at.format("%Y-%m-%d %H:%M:%S%.3f+00"));
                }
                Param::Float(f) if f.is_nan() => out.push_str("NaN"),
                Param::Float(f) if f.is_infinite() => {
                    out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" })
                }
                Param::Float(f) => {
                    let _ = write!(out, "{f:?}");
                }
                Param::Bool(b) => out.push(if b { 't' } else { 'f' }),
                Param::Texts(_) | Param::Ints(_) => return None,
            }
            out.push('\t');
        }
        let _ = writeln!(out, "{}\t{}", r.seq, r.source_ts);
    }
    Some(out)
}

/// `s` as a value of COPY's text format: backslash, tab, newline and
/// carriage return escaped.
pub(super) fn escape_copy(out: &mut String, s: &str) {
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// Every row `t` holds, as values in `t.columns` order, to `each`
/// (streamed).
pub(crate) fn scan(
    db: &mut Db,
    t: &TableDef,
    each: &mut dyn FnMut(&[SqlValue]),
) -> Result<(), DbError> {
    let sql = format!(
        "SELECT {} FROM {} AS r",
        select_list(db, t, None),
        db.table(&t.name)
    );
    db.query(&sql, &[], &mut |r| {
        each(&values(r, t, 0)?);
        Ok(())
    })
}

/// Every row of `t` with its sequence and source time: `each(seq,
/// source_ts, values)`.
pub(crate) fn scan_held(
    db: &mut Db,
    t: &TableDef,
    each: &mut dyn FnMut(i64, i64, Vec<SqlValue>),
) -> Result<(), DbError> {
    let sql = format!(
        "SELECT r._govbus_seq, r._govbus_source_ts, {} FROM {} AS r",
        select_list(db, t, None),
        db.table(&t.name)
    );
    db.query(&sql, &[], &mut |r| {
        each(r.int(0)?, r.int(1)?, values(r, t, 2)?);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Column;

    fn row(values: Vec<SqlValue>) -> (Arc<TableDef>, Row) {
        let tys = [
            ColType::Text,
            ColType::Float,
            ColType::Bool,
            ColType::Timestamp,
            ColType::Int,
        ];
        let t = Arc::new(TableDef {
            name: "t".into(),
            key: "c0".into(),
            columns: tys
                .iter()
                .enumerate()
                .map(|(i, ty)| Column {
                    name: format!("c{i}"),
                    path: vec![format!("c{i}")],
                    ty: *ty,
                })
                .collect(),
        });
        let r = Row {
            table: t.clone(),
            key: "k".into(),
            seq: 7,
            source_ts: 9,
            values: Some(values),
            event_id: "e".into(),
            op: govbus_schema::Op::Update,
            after: None,
            record: None,
        };
        (t, r)
    }

    #[test]
    fn copy_text_escapes_and_types_every_value() {
        let (t, r) = row(vec![
            SqlValue::Text("a\tb\nc\rd\\e\\N".into()),
            SqlValue::Float(f64::NEG_INFINITY),
            SqlValue::Bool(false),
            SqlValue::Timestamp(-1),
            SqlValue::Text("not a number".into()),
        ]);
        assert_eq!(
            copy_text(&t, &[&r]).unwrap(),
            "a\\tb\\nc\\rd\\\\e\\\\N\t-Infinity\tf\t1969-12-31 23:59:59.999+00\t\\N\t7\t9\n"
        );
    }

    #[test]
    fn an_instant_outside_the_years_postgres_reads_back_takes_values() {
        for ms in [-62_135_596_800_001, 253_402_300_800_000, i64::MAX] {
            let (t, r) = row(vec![
                SqlValue::Text("k".into()),
                SqlValue::Float(0.5),
                SqlValue::Bool(true),
                SqlValue::Timestamp(ms),
                SqlValue::Int(1),
            ]);
            assert_eq!(copy_text(&t, &[&r]), None, "{ms}");
        }
    }
}
