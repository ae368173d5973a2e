//! Report figures beside the rows: `_govbus_report_cells` (the count per
//! cell of each report) and `_govbus_reports` (the definition the counts
//! were built for). Counts move in the batch's transaction ([`Counts`], a
//! [`Hook`]), from the cell a row had before the batch to its new one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::rows::Before;
use super::{Batch, Db, DbError, Hook, Param};
use crate::change::Row;
use crate::report::{cell_of, cell_text, Cell, Report, TableRow};
use crate::table::{ColType, TableDef};

pub(super) const DDL: &str = "CREATE TABLE IF NOT EXISTS {p}_govbus_report_cells (
    report TEXT NOT NULL, cell TEXT NOT NULL, n {bigint} NOT NULL, PRIMARY KEY (report, cell));
CREATE TABLE IF NOT EXISTS {p}_govbus_reports (
    report TEXT PRIMARY KEY, definition TEXT NOT NULL, built_ms {bigint} NOT NULL);";

/// The reports kept beside the rows, and the cells the last committed
/// batch changed.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) reports: Vec<Arc<Report>>,
    pending: Vec<(String, Cell, i64)>,
    touched: Vec<(String, Cell, i64)>,
}

impl Counts {
    /// What the committed batches changed since the last call.
    pub(crate) fn take(&mut self) -> Vec<(String, Cell, i64)> {
        std::mem::take(&mut self.touched)
    }
}

impl Hook for Counts {
    /// The columns of `t` a report reads (None: no report counts `t`'s
    /// rows, so the rows a batch replaces need not be read).
    fn reads_before(&self, t: &TableDef) -> Option<Vec<bool>> {
        let over: Vec<&Arc<Report>> = self.reports.iter().filter(|r| r.table == t.name).collect();
        if over.is_empty() {
            return None;
        }
        Some(
            t.columns
                .iter()
                .map(|c| over.iter().any(|r| r.reads(&c.name)))
                .collect(),
        )
    }

    fn write(&mut self, db: &mut Db, batch: &Batch<'_>) -> Result<(), DbError> {
        for (rep, deltas) in deltas(&self.reports, batch.applied, batch.before) {
            if deltas.is_empty() {
                continue;
            }
            let id = rep.id();
            // Cells that empty are removed (a second statement only then).
            let sql = format!(
                "INSERT INTO {} AS c (report, cell, n) SELECT {}, l.v0, l.v1 FROM {} WHERE true
                 ON CONFLICT (report, cell) DO UPDATE SET n = c.n + excluded.n
                 RETURNING cell, n",
                db.table("_govbus_report_cells"),
                db.p(1),
                db.d.lists(2, &[ColType::Text, ColType::Int])
            );
            let empty: Vec<String> = db
                .rows(
                    &sql,
                    &[
                        (&id).into(),
                        Param::Texts(deltas.keys().map(cell_text).collect()),
                        Param::Ints(deltas.values().copied().collect()),
                    ],
                    |r| Ok((r.text(0)?, r.int(1)?)),
                )?
                .into_iter()
                .filter(|(_, n)| *n == 0)
                .map(|(c, _)| c)
                .collect();
            if !empty.is_empty() {
                let sql = format!(
                    "DELETE FROM {} WHERE report = {} AND n = 0 AND {}",
                    db.table("_govbus_report_cells"),
                    db.p(1),
                    db.d.in_list("cell", 2, ColType::Text)
                );
                db.execute(&sql, &[(&id).into(), Param::Texts(empty)])?;
            }
            self.pending
                .extend(deltas.into_iter().map(|(c, d)| (id.clone(), c, d)));
        }
        Ok(())
    }

    fn committed(&mut self) {
        self.touched.append(&mut self.pending);
    }

    fn abandoned(&mut self) {
        self.pending.clear();
    }
}

/// Per report over a table of `applied` (changes applied in a batch), the
/// change of count per cell: each applied key leaves the cell its row had
/// before the batch (`before`) and enters the cell of its last change
/// (none for a delete, or a row the filter leaves out). A row's cell is a
/// function of its values, and the figures move in the rows'
/// transaction, so the row before the batch is what was counted. A new
/// row the filter fails on is not counted, with a warning and
/// `govbus_report_uncounted_total` (a rebuild decides the same).
fn deltas<'a>(
    reports: &'a [Arc<Report>],
    applied: &[&Row],
    before: &Before,
) -> Vec<(&'a Arc<Report>, BTreeMap<Cell, i64>)> {
    reports
        .iter()
        .filter_map(|rep| {
            let rows: Vec<(String, Option<Cell>)> = applied
                .iter()
                .filter(|r| r.table.name == rep.table)
                .map(|r| {
                    let cell = r.values.as_ref().and_then(|values| {
                        let row = TableRow {
                            table: &r.table,
                            values,
                        };
                        rep.cell(&row).unwrap_or_else(|e| {
                            govbus_core::InternalEvent::emit(crate::events::Uncounted {
                                report: rep,
                                key: &r.key,
                                error: &e,
                            });
                            None
                        })
                    });
                    (r.key.clone(), cell)
                })
                .collect();
            if rows.is_empty() {
                return None;
            }
            let old: HashMap<String, Cell> = rows
                .iter()
                .filter_map(|(k, _)| {
                    let (table, values) = before.row(&rep.table, k)?;
                    // Warned of when it was applied.
                    let cell = rep.cell(&TableRow { table, values }).ok()??;
                    Some((k.clone(), cell))
                })
                .collect();
            Some((rep, crate::report::plan(&rows, &old)))
        })
        .collect()
}

/// A report's stored cells and their counts.
pub(crate) fn read(db: &mut Db, report: &str) -> Result<Vec<(Cell, i64)>, DbError> {
    let sql = format!(
        "SELECT cell, n FROM {} WHERE report = {} ORDER BY cell",
        db.table("_govbus_report_cells"),
        db.p(1)
    );
    let rows = db.rows(&sql, &[report.into()], |r| Ok((r.text(0)?, r.int(1)?)))?;
    Ok(rows
        .into_iter()
        .filter_map(|(c, n)| Some((cell_of(&c)?, n)))
        .collect())
}

/// What a report's figures were built for (its definition as text), if
/// they were.
pub(crate) fn definition(db: &mut Db, report: &str) -> Result<Option<String>, DbError> {
    let sql = format!(
        "SELECT definition FROM {} WHERE report = {}",
        db.table("_govbus_reports"),
        db.p(1)
    );
    db.first(&sql, &[report.into()], |r| r.text(0))
}

/// Replaces a report's counts with `cells`, built for `definition`, in
/// one transaction.
pub(crate) fn replace(
    db: &mut Db,
    report: &str,
    definition: &str,
    cells: &[(Cell, i64)],
) -> Result<(), DbError> {
    let clear = format!(
        "DELETE FROM {} WHERE report = {}",
        db.table("_govbus_report_cells"),
        db.p(1)
    );
    let fill = format!(
        "INSERT INTO {} (report, cell, n) SELECT {}, l.v0, l.v1 FROM {}",
        db.table("_govbus_report_cells"),
        db.p(1),
        db.d.lists(2, &[ColType::Text, ColType::Int])
    );
    let built = format!(
        "INSERT INTO {} (report, definition, built_ms) VALUES ({}, {}, {})
         ON CONFLICT (report) DO UPDATE SET definition = excluded.definition, built_ms = excluded.built_ms",
        db.table("_govbus_reports"),
        db.p(1),
        db.p(2),
        db.p(3)
    );
    db.write(|db| {
        db.execute(&clear, &[report.into()])?;
        db.execute(
            &fill,
            &[
                report.into(),
                Param::Texts(cells.iter().map(|c| cell_text(&c.0)).collect()),
                Param::Ints(cells.iter().map(|c| c.1).collect()),
            ],
        )?;
        db.execute(
            &built,
            &[
                report.into(),
                definition.into(),
                govbus_core::now_ms().into(),
            ],
        )?;
        Ok(())
    })
}
