//! Reports built from the table: when a report is new or its definition
//! changed, the consumer counts the rows the table holds before it applies
//! anything; `govbus report check` counts them again and compares with the
//! figures the consumer maintains (they must be equal).

use std::collections::BTreeMap;

use govbus_core::{Catalog, Topics};
use govbus_schema::{RegistryClient, Schema};

use crate::db::DbError;
use crate::report::{Cell, Report};
use crate::sink::{SinkError, SqlSink};
use crate::store::Store;
use crate::table::{table_def, TableDef};

/// Why a report could not be built or checked.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The sink failed.
    #[error("sink: {0}")]
    Sink(#[from] SinkError),
    /// The view's schema could not be read from the registry.
    #[error("the schema of {subject}: {reason}")]
    Schema {
        /// The subject.
        subject: String,
        /// Why.
        reason: String,
        /// Whether asking again later may help (the registry is away).
        transient: bool,
    },
}

/// The table a report's view lands in, as its latest registered schema
/// says; None when the view has no schema yet (nothing was routed to it).
pub fn view_table(
    report: &Report,
    catalog: &Catalog,
    topics: &Topics,
    registry: &RegistryClient,
) -> Result<Option<TableDef>, BuildError> {
    let Some(ds) = catalog.dataset(&report.file.dataset) else {
        return Ok(None);
    };
    let topic = topics.view(&report.file.subscriber, &ds.id, ds.file.major);
    let subject = govbus_core::topics::value_subject(&topic);
    let latest = match registry.latest(&subject) {
        Ok(v) => v,
        Err(govbus_schema::RegistryError::Api { status: 404, .. }) => return Ok(None),
        Err(e) => {
            return Err(BuildError::Schema {
                subject,
                transient: e.is_transient(),
                reason: e.to_string(),
            })
        }
    };
    let schema = Schema::parse_str(&latest.schema).map_err(|e| BuildError::Schema {
        subject: subject.clone(),
        reason: e.to_string(),
        transient: false,
    })?;
    table_def(&report.table, &ds.file.key, &schema)
        .map(Some)
        .ok_or_else(|| BuildError::Schema {
            subject,
            reason: format!("no entity keyed by {}", ds.file.key),
            transient: false,
        })
}

/// Counts `table`'s rows for `report`: each counted row's key and cell,
/// and the report's maintained cells read in the same snapshot (None: no
/// such table).
#[allow(clippy::type_complexity)]
pub fn count_table(
    report: &Report,
    table: &TableDef,
    store: &mut Store,
) -> Result<Option<(Vec<(String, Cell)>, Vec<(Cell, i64)>)>, DbError> {
    let mut members = Vec::new();
    let cells = store.scan(table, Some(&report.id()), &mut |values| {
        let row = crate::report::TableRow { table, values };
        let cell = report.cell(&row).unwrap_or_else(|e| {
            govbus_core::InternalEvent::emit(crate::events::Uncounted {
                report,
                key: &crate::table::value_key(&values[0]),
                error: &e,
            });
            None
        });
        if let Some(c) = cell {
            members.push((crate::table::value_key(&values[0]), c));
        }
    })?;
    Ok(cells.map(|c| (members, c)))
}

/// Builds `report` from the table when its figures were built for another
/// definition (or never): true when it did.
pub fn build_if_changed(
    report: &Report,
    table: Option<&TableDef>,
    sink: &mut SqlSink,
) -> Result<bool, SinkError> {
    let def = report.definition();
    if sink.store().report_definition(&report.id())?.as_deref() == Some(def.as_str()) {
        return Ok(false);
    }
    let members = match table {
        Some(t) => count_table(report, t, sink.store())?
            .map(|x| x.0)
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let mut cells: BTreeMap<Cell, i64> = BTreeMap::new();
    for (_, c) in &members {
        *cells.entry(c.clone()).or_default() += 1;
    }
    let cells: Vec<(Cell, i64)> = cells.into_iter().collect();
    sink.replace_report(&report.id(), &def, &cells)?;
    tracing::info!(report = %report.id(), rows = members.len(), "report built from the table");
    Ok(true)
}

/// A report's maintained figures beside the ones its table gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Rows counted from the table.
    pub rows: usize,
    /// Cells whose counts differ: (cell, maintained, counted).
    pub differences: Vec<(Cell, i64, i64)>,
}

/// Compares the maintained cells with the cells counted from the table.
pub fn compare(maintained: &[(Cell, i64)], members: &[(String, Cell)]) -> Check {
    let mut counted: BTreeMap<&Cell, i64> = BTreeMap::new();
    for (_, c) in members {
        *counted.entry(c).or_default() += 1;
    }
    let kept: BTreeMap<&Cell, i64> = maintained.iter().map(|(c, n)| (c, *n)).collect();
    let mut cells: Vec<&Cell> = kept.keys().chain(counted.keys()).copied().collect();
    cells.sort();
    cells.dedup();
    let differences = cells
        .into_iter()
        .filter_map(|c| {
            let (a, b) = (
                kept.get(c).copied().unwrap_or(0),
                counted.get(c).copied().unwrap_or(0),
            );
            (a != b).then(|| (c.clone(), a, b))
        })
        .collect();
    Check {
        rows: members.len(),
        differences,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_difference_names_the_cell_and_both_counts() {
        let a: Cell = vec!["a".into()];
        let b: Cell = vec!["b".into()];
        let members = vec![("1".to_string(), a.clone()), ("2".to_string(), a.clone())];
        assert!(compare(&[(a.clone(), 2)], &members).differences.is_empty());
        let c = compare(&[(a.clone(), 1), (b.clone(), 1)], &members);
        assert_eq!(c.rows, 2);
        assert_eq!(c.differences, [(a, 1, 2), (b, 1, 0)]);
    }
}
