//! A report's pure core: which cell of the report a row of the view counts
//! in, the changes of counts a batch makes, and the figures as shown on a
//! day. The sinks keep the counts beside the rows; nothing here touches a
//! database or Kafka.
//!
//! A row counts in one cell: the labels of its dimensions as stored (a
//! date of birth is stored as its year, so that a figure changes only with
//! the data). Each counted row's cell is kept by key (`members`), so a
//! change moves one count from the row's old cell to its new one, a delete
//! subtracts, and a row sent again (a snapshot) adds nothing twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{Datelike, NaiveDate};
use govbus_core::report::{ReportFile, ReportSpec};
use govbus_core::Catalog;
use govbus_schema::cel::{base_context, check_field, BaseContext, CelValue, Filter, Vars};
use govbus_schema::names::Names;
use govbus_schema::Schema;

use crate::table::{SqlValue, TableDef};

/// A report that cannot be kept.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The report file does not fit the view it counts.
    #[error("report {report}: {message}")]
    Invalid {
        /// `subscriber.name`.
        report: String,
        /// What is wrong.
        message: String,
    },
    /// The filter failed on a row.
    #[error("report {report}: {source}")]
    Filter {
        /// `subscriber.name`.
        report: String,
        /// Why.
        source: govbus_schema::cel::FilterError,
    },
}

/// A cell's labels, one per dimension, as stored.
pub type Cell = Vec<String>;

/// A compiled report.
#[derive(Debug)]
pub struct Report {
    /// What its file says.
    pub file: ReportFile,
    /// The table of the view it counts (`bca_residents`).
    pub table: String,
    /// Per dimension, the column it reads.
    columns: Vec<String>,
    /// Per dimension, whether it is an age band over a date.
    ages: Vec<bool>,
    filter: Option<Filter>,
    /// The columns the filter reads, with their paths.
    filter_columns: Vec<(String, Vec<String>)>,
}

/// A row's values by column name.
pub trait Columns {
    /// The value of a column (None when the row has none).
    fn get(&self, column: &str) -> Option<&SqlValue>;
}

thread_local! {
    /// CEL's functions for report filters, made once per thread rather
    /// than for every row counted.
    static BASE: BaseContext = base_context();
}

/// A row of a table, by its definition.
#[derive(Debug)]
pub struct TableRow<'a> {
    /// The table.
    pub table: &'a TableDef,
    /// Its values, in `table.columns` order.
    pub values: &'a [SqlValue],
}

impl Columns for TableRow<'_> {
    fn get(&self, column: &str) -> Option<&SqlValue> {
        self.table
            .columns
            .iter()
            .position(|c| c.name == column)
            .and_then(|i| self.values.get(i))
    }
}

impl Columns for BTreeMap<String, SqlValue> {
    fn get(&self, column: &str) -> Option<&SqlValue> {
        BTreeMap::get(self, column)
    }
}

fn label(v: &SqlValue, age: bool) -> String {
    match v {
        SqlValue::Null => String::new(),
        // The year of a date: `1988-02-29` → `1988`.
        SqlValue::Text(s) | SqlValue::Date(s) if age => s.chars().take(4).collect(),
        SqlValue::Text(s) | SqlValue::Date(s) => s.clone(),
        SqlValue::Int(i) | SqlValue::Timestamp(i) => i.to_string(),
        SqlValue::Float(f) => f.to_string(),
        SqlValue::Bool(b) => b.to_string(),
    }
}

fn cel(v: SqlValue) -> CelValue {
    match v {
        SqlValue::Null => CelValue::Null,
        SqlValue::Text(s) | SqlValue::Date(s) => CelValue::String(Arc::new(s)),
        SqlValue::Int(i) | SqlValue::Timestamp(i) => CelValue::Int(i),
        SqlValue::Float(f) => CelValue::Float(f),
        SqlValue::Bool(b) => CelValue::Bool(b),
    }
}

impl Report {
    /// Compiles `spec` against the view its subscriber receives: every
    /// field it reads must be in the view (not dropped by the
    /// subscription), an age band must read a date, and the filter must
    /// compile and ask no hierarchy question (the consumer holds no map).
    pub fn compile(spec: &ReportSpec, catalog: &Catalog) -> Result<Self, ReportError> {
        let f = &spec.file;
        let invalid = |message: String| ReportError::Invalid {
            report: f.id(),
            message: format!("{message} ({})", spec.origin),
        };
        let ds = catalog
            .dataset(&f.dataset)
            .ok_or_else(|| invalid(format!("unknown dataset {}", f.dataset)))?;
        let sub = catalog
            .subscriptions
            .iter()
            .find(|s| s.file.subscriber == f.subscriber && s.file.dataset == f.dataset)
            .ok_or_else(|| {
                invalid(format!(
                    "{} has no subscription to {}",
                    f.subscriber, f.dataset
                ))
            })?;
        let view =
            govbus_schema::project::project_schema(&ds.entity_schema, &sub.file.drop, &ds.file.key)
                .map_err(|e| invalid(format!("the view's schema: {e}")))?;
        let entity =
            Schema::parse_str(&view).map_err(|e| invalid(format!("the view's schema: {e}")))?;
        let names = Names::of(&entity);
        let mut columns = Vec::new();
        let mut ages = Vec::new();
        for d in &f.dimensions {
            let path: Vec<String> = d.field.split('.').map(str::to_string).collect();
            check_field(&entity, &names, &path).map_err(|e| {
                invalid(format!(
                    "dimension `{}`: {e}{}",
                    d.name,
                    if sub.file.drop.contains(&d.field) {
                        "; the subscription drops it"
                    } else {
                        ""
                    }
                ))
            })?;
            let age = !d.age_bands.is_empty();
            if age && !is_date(&entity, &names, &path) {
                return Err(invalid(format!(
                    "dimension `{}`: age_bands read a date, and `{}` is not one",
                    d.name, d.field
                )));
            }
            columns.push(path.join("_"));
            ages.push(age);
        }
        let (filter, filter_columns) = match &f.filter {
            None => (None, Vec::new()),
            Some(src) => {
                let filter =
                    Filter::compile(src, &entity).map_err(|e| invalid(format!("filter: {e}")))?;
                if filter.uses_hierarchy() {
                    return Err(invalid(
                        "filter: in_unit and province_of are for subscriptions; a report counts what the view already holds".into(),
                    ));
                }
                let cols = Filter::paths(src)
                    .into_iter()
                    .map(|p| (p.join("_"), p))
                    .collect();
                (Some(filter), cols)
            }
        };
        Ok(Self {
            file: f.clone(),
            table: format!("{}_{}", ds.id.owner, ds.id.name),
            columns,
            ages,
            filter,
            filter_columns,
        })
    }

    /// `subscriber.name`.
    pub fn id(&self) -> String {
        self.file.id()
    }

    /// What the figures depend on (the dataset, the dimensions' fields and
    /// bands, the filter), as text: figures built for another definition
    /// are built again from the table.
    pub fn definition(&self) -> String {
        let dims: Vec<serde_json::Value> = self
            .file
            .dimensions
            .iter()
            .map(|d| serde_json::json!([d.name, d.field, d.age_bands]))
            .collect();
        serde_json::json!({
            "dataset": self.file.dataset.to_string(),
            "dimensions": dims,
            "filter": self.file.filter,
        })
        .to_string()
    }

    /// Each dimension's title, in English (`en`) or Vietnamese.
    pub fn dimension_titles(&self, en: bool) -> Vec<String> {
        self.file
            .dimensions
            .iter()
            .map(|d| {
                if en {
                    d.title.en.clone()
                } else {
                    d.title.vi.clone()
                }
            })
            .collect()
    }

    /// The headings of the report's table: each dimension's title, then
    /// the count's.
    pub fn headings(&self, en: bool) -> Vec<String> {
        let mut out = self.dimension_titles(en);
        out.push(if en { "Count" } else { "Số lượng" }.to_string());
        out
    }

    /// Whether the report reads `column` (a dimension, or the filter).
    pub fn reads(&self, column: &str) -> bool {
        self.columns.iter().any(|c| c == column)
            || self.filter_columns.iter().any(|(c, _)| c == column)
    }

    /// The cell `row` counts in, or None when the filter leaves it out.
    pub fn cell(&self, row: &dyn Columns) -> Result<Option<Cell>, ReportError> {
        if let Some(f) = &self.filter {
            let values: Vec<(&[String], CelValue)> = self
                .filter_columns
                .iter()
                .map(|(c, p)| {
                    (
                        p.as_slice(),
                        cel(row.get(c).cloned().unwrap_or(SqlValue::Null)),
                    )
                })
                .collect();
            let vars = Vars::from_paths(values);
            let keep =
                BASE.with(|base| f.matches(base, &vars))
                    .map_err(|source| ReportError::Filter {
                        report: self.id(),
                        source,
                    })?;
            if !keep {
                return Ok(None);
            }
        }
        Ok(Some(
            self.columns
                .iter()
                .zip(&self.ages)
                .map(|(c, &age)| label(row.get(c).unwrap_or(&SqlValue::Null), age))
                .collect(),
        ))
    }

    /// A stored cell as shown on `day`: a year of birth becomes its age
    /// band (the age reached in `day`'s year).
    pub fn shown(&self, cell: &Cell, day: NaiveDate) -> Cell {
        cell.iter()
            .zip(&self.file.dimensions)
            .map(|(l, d)| match l.parse::<i32>() {
                Ok(year) if !d.age_bands.is_empty() => d.band_of(i64::from(day.year() - year)),
                _ => l.clone(),
            })
            .collect()
    }

    /// The figures on `day`: stored cells folded into shown ones, summed,
    /// in label order; empty cells left out.
    pub fn figures(&self, cells: &[(Cell, i64)], day: NaiveDate) -> BTreeMap<Cell, i64> {
        let mut out: BTreeMap<Cell, i64> = BTreeMap::new();
        for (c, n) in cells {
            *out.entry(self.shown(c, day)).or_default() += n;
        }
        out.retain(|_, n| *n != 0);
        out
    }
}

fn is_date(entity: &Schema, names: &Names, path: &[String]) -> bool {
    let mut cur = names.resolve(entity);
    for p in path {
        let Some(rec) = govbus_schema::project::record_of(cur, names) else {
            return false;
        };
        match rec.lookup.get(p) {
            Some(&i) => cur = names.resolve(&rec.fields[i].schema),
            None => return false,
        }
    }
    let inner = match cur {
        Schema::Union(u) => u
            .variants()
            .iter()
            .find(|v| !matches!(v, Schema::Null))
            .map(|v| names.resolve(v)),
        other => Some(other),
    };
    matches!(inner, Some(Schema::Date))
}

/// The counts a set of moves makes: each (old cell, new cell) of a row
/// takes one from its old cell and adds one to its new; cells left
/// unchanged are not listed.
pub fn deltas<'a>(
    moves: impl IntoIterator<Item = (Option<&'a Cell>, Option<&'a Cell>)>,
) -> BTreeMap<Cell, i64> {
    let mut out: BTreeMap<Cell, i64> = BTreeMap::new();
    for (old, new) in moves {
        if old == new {
            continue;
        }
        if let Some(o) = old {
            *out.entry(o.clone()).or_default() -= 1;
        }
        if let Some(n) = new {
            *out.entry(n.clone()).or_default() += 1;
        }
    }
    out.retain(|_, n| *n != 0);
    out
}

/// The changes of counts per cell for rows whose new cells are `new` (the
/// last per key wins; None: not counted), given the cells `old` they were
/// counted in before.
pub fn plan(new: &[(String, Option<Cell>)], old: &HashMap<String, Cell>) -> BTreeMap<Cell, i64> {
    let mut last: HashMap<&str, Option<&Cell>> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for (k, c) in new {
        if last.insert(k.as_str(), c.as_ref()).is_none() {
            order.push(k.as_str());
        }
    }
    deltas(order.iter().map(|k| (old.get(*k), last[k])))
}

/// The label of a report's total row, in English (`en`) or Vietnamese.
pub fn total_label(en: bool) -> &'static str {
    if en {
        "Total"
    } else {
        "Tổng cộng"
    }
}

/// A cell as one text (a JSON array of its labels), as the sinks store it.
pub fn cell_text(cell: &Cell) -> String {
    serde_json::to_string(cell).unwrap_or_default()
}

/// A cell from its stored text; None for text that is not one.
pub fn cell_of(text: &str) -> Option<Cell> {
    serde_json::from_str(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::builtin()
    }

    fn report(extra: &str) -> Result<Report, ReportError> {
        let text = format!(
            "name = \"population\"\nsubscriber = \"p52\"\ndataset = \"bca.residents\"\ntitle = {{ vi = \"Dân số\", en = \"Population\" }}\n{extra}\n\
             [[dimensions]]\nname = \"commune\"\nfield = \"permanent_address.commune_code\"\ntitle = {{ vi = \"Xã\", en = \"Commune\" }}\n\
             [[dimensions]]\nname = \"sex\"\nfield = \"sex\"\ntitle = {{ vi = \"Giới tính\", en = \"Sex\" }}\n\
             [[dimensions]]\nname = \"age_band\"\nfield = \"date_of_birth\"\nage_bands = [0, 15, 60]\ntitle = {{ vi = \"Nhóm tuổi\", en = \"Age band\" }}\n"
        );
        let spec = govbus_core::report::parse_report("r.toml", &text).unwrap();
        Report::compile(&spec, &catalog())
    }

    fn row(commune: &str, sex: &str, born: &str) -> BTreeMap<String, SqlValue> {
        [
            (
                "permanent_address_commune_code",
                SqlValue::Text(commune.into()),
            ),
            ("sex", SqlValue::Text(sex.into())),
            ("date_of_birth", SqlValue::Date(born.into())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn a_row_counts_in_the_cell_of_its_labels_with_its_year_of_birth() {
        let r = report("").unwrap();
        let c = r
            .cell(&row("21553", "FEMALE", "1988-02-29"))
            .unwrap()
            .unwrap();
        assert_eq!(c, ["21553", "FEMALE", "1988"]);
        assert_eq!(r.shown(&c, day("2026-11-30")), ["21553", "FEMALE", "15-59"]);
        // The same row is 60 in 2048: the band follows the year, not the data.
        assert_eq!(r.shown(&c, day("2048-01-01")), ["21553", "FEMALE", "60+"]);
    }

    #[test]
    fn a_move_takes_one_from_the_old_cell_and_adds_one_to_the_new() {
        let r = report("").unwrap();
        let before = r.cell(&row("21553", "MALE", "1990-01-01")).unwrap();
        let after = r.cell(&row("21583", "MALE", "1990-01-01")).unwrap();
        let d = deltas([(before.as_ref(), after.as_ref())]);
        assert_eq!(d.len(), 2);
        assert_eq!(
            d[&vec!["21553".to_string(), "MALE".into(), "1990".into()]],
            -1
        );
        assert_eq!(
            d[&vec!["21583".to_string(), "MALE".into(), "1990".into()]],
            1
        );
        // A leave subtracts; a row sent again where it already counts adds nothing.
        let d = deltas([(after.as_ref(), None), (before.as_ref(), before.as_ref())]);
        assert_eq!(
            d.into_iter().collect::<Vec<_>>(),
            [(after.clone().unwrap(), -1)]
        );
    }

    #[test]
    fn a_plan_moves_each_row_from_its_old_cell_to_its_last_one_once() {
        let a: Cell = vec!["1".into()];
        let b: Cell = vec!["2".into()];
        let old: HashMap<String, Cell> =
            [("k1".to_string(), a.clone()), ("k2".to_string(), a.clone())]
                .into_iter()
                .collect();
        let new = vec![
            ("k1".to_string(), Some(b.clone())), // moves
            ("k2".to_string(), None),            // leaves
            ("k3".to_string(), Some(a.clone())), // arrives
            ("k3".to_string(), Some(b.clone())), // and moves in the same batch
            ("k4".to_string(), None),            // never counted
        ];
        let p = plan(&new, &old);
        assert_eq!(
            p.into_iter().collect::<Vec<_>>(),
            [(a.clone(), -2), (b.clone(), 2)]
        );
        // Sent again (a snapshot of what is already counted): nothing.
        let again = plan(&[("k1".to_string(), Some(a.clone()))], &old);
        assert!(again.is_empty());
    }

    #[test]
    fn the_filter_leaves_rows_out() {
        let r = report("filter = 'sex == \"FEMALE\" && permanent_address.commune_code != \"\"'")
            .unwrap();
        assert!(r
            .cell(&row("21553", "MALE", "1990-01-01"))
            .unwrap()
            .is_none());
        assert!(r
            .cell(&row("21553", "FEMALE", "1990-01-01"))
            .unwrap()
            .is_some());
    }

    #[test]
    fn figures_fold_years_into_bands_and_drop_empty_cells() {
        let r = report("").unwrap();
        let cells = vec![
            (vec!["1".to_string(), "MALE".into(), "2020".into()], 2),
            (vec!["1".to_string(), "MALE".into(), "2015".into()], 3),
            (vec!["1".to_string(), "MALE".into(), "1950".into()], 0),
        ];
        let f = r.figures(&cells, day("2026-06-01"));
        assert_eq!(
            f.into_iter().collect::<Vec<_>>(),
            [(vec!["1".to_string(), "MALE".into(), "0-14".into()], 5)]
        );
    }

    #[test]
    fn a_report_that_does_not_fit_its_view_is_refused_naming_why() {
        let e = report("filter = 'colour == \"red\"'")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("report p52.population: filter") && e.contains("colour"),
            "{e}"
        );
        let e = report("filter = 'in_unit(permanent_address.commune_code, \"52\")'")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("in_unit and province_of are for subscriptions"),
            "{e}"
        );
        // p52's subscription drops `ethnicity`.
        let text = "name = \"e\"\nsubscriber = \"p52\"\ndataset = \"bca.residents\"\ntitle = { vi = \"x\", en = \"x\" }\n[[dimensions]]\nname = \"ethnicity\"\nfield = \"ethnicity\"\ntitle = { vi = \"Dân tộc\", en = \"Ethnicity\" }\n";
        let spec = govbus_core::report::parse_report("e.toml", text).unwrap();
        let e = Report::compile(&spec, &catalog()).unwrap_err().to_string();
        assert!(e.contains("the subscription drops it"), "{e}");
        let text = "name = \"e\"\nsubscriber = \"p52\"\ndataset = \"bca.residents\"\ntitle = { vi = \"x\", en = \"x\" }\n[[dimensions]]\nname = \"sex\"\nfield = \"sex\"\nage_bands = [0, 10]\ntitle = { vi = \"x\", en = \"x\" }\n";
        let spec = govbus_core::report::parse_report("e.toml", text).unwrap();
        let e = Report::compile(&spec, &catalog()).unwrap_err().to_string();
        assert!(e.contains("age_bands read a date"), "{e}");
    }

    #[test]
    fn the_shipped_reports_compile() {
        let c = catalog();
        assert_eq!(c.reports.len(), 2);
        for r in &c.reports {
            Report::compile(r, &c).unwrap();
        }
    }
}
