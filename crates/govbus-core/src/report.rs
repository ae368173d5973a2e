//! Reports as files (`deploy/reports/*.toml`): a count of a subscriber's
//! view grouped by some of its fields, maintained by the subscriber's
//! consumer from the view's changes, and frozen on a schedule.
//!
//! ```toml
//! name = "population"
//! subscriber = "p52"
//! dataset = "bca.residents"
//! title = { vi = "Dân số theo xã, giới tính và nhóm tuổi", en = "Population by commune, sex and age band" }
//! filter = 'sex != "UNKNOWN"'
//!
//! [[dimensions]]
//! name = "commune"
//! field = "permanent_address.commune_code"
//! title = { vi = "Xã", en = "Commune" }
//!
//! [[dimensions]]
//! name = "age_band"
//! field = "date_of_birth"
//! age_bands = [0, 6, 15, 60]
//! title = { vi = "Nhóm tuổi", en = "Age band" }
//!
//! [schedule]
//! every = "month"
//! timezone = "Asia/Ho_Chi_Minh"
//! ```

use std::path::Path;

use chrono::{Datelike, Duration, FixedOffset, NaiveDate, NaiveDateTime};
use serde::{Deserialize, Serialize};

use crate::files::{line_of, CatalogError, DatasetId};

/// A text in Vietnamese and English.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Text {
    /// Vietnamese.
    pub vi: String,
    /// English.
    pub en: String,
}

/// One grouping of a report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Dimension {
    /// The column's name in the report (`commune`).
    pub name: String,
    /// The field of the entity it reads (dotted path).
    pub field: String,
    /// Its heading.
    pub title: Text,
    /// For a date of birth: the lower bounds of the age bands, in years,
    /// starting at 0 (`[0, 6, 15, 60]` gives 0-5, 6-14, 15-59, 60+). The age
    /// is the one reached in the year of the figure (year − year of birth),
    /// so a figure changes only with a change of the data or with the year.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub age_bands: Vec<u32>,
    /// How values are named on pages (`FEMALE = { vi = "Nữ", en =
    /// "Female" }`); a value not named is shown as it is. Data (CSV, the
    /// report topic) keep the values.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, Text>,
}

impl Dimension {
    /// The band of an age, as its label (`15-59`, `60+`).
    pub fn band_of(&self, age: i64) -> String {
        let b = &self.age_bands;
        let i = b.iter().rposition(|&lo| i64::from(lo) <= age).unwrap_or(0);
        match b.get(i + 1) {
            Some(next) => format!("{}-{}", b[i], next - 1),
            None => format!("{}+", b[i]),
        }
    }

    /// Every band's label, in order.
    pub fn bands(&self) -> Vec<String> {
        self.age_bands
            .iter()
            .map(|&lo| self.band_of(i64::from(lo)))
            .collect()
    }
}

/// How often a dated snapshot is frozen.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// At the end of every day.
    Day,
    /// At the end of every month.
    Month,
    /// At the end of every quarter.
    Quarter,
    /// At the end of every year.
    Year,
}

/// `[schedule]`: when a dated snapshot is frozen.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// The period whose last day a snapshot is dated.
    pub every: Period,
    /// Whose midnight ends a day: `Asia/Ho_Chi_Minh` (the default), `UTC`,
    /// or an offset such as `+07:00`.
    #[serde(default = "vietnam")]
    pub timezone: String,
}

fn vietnam() -> String {
    "Asia/Ho_Chi_Minh".into()
}

/// The UTC offset a schedule's time zone names (zones without daylight
/// saving only).
pub fn offset_of(zone: &str) -> Result<FixedOffset, String> {
    match zone {
        "Asia/Ho_Chi_Minh" | "Asia/Saigon" | "Asia/Bangkok" | "Asia/Jakarta" => {
            Ok(FixedOffset::east_opt(7 * 3600).expect("in range"))
        }
        "UTC" | "Etc/UTC" => Ok(FixedOffset::east_opt(0).expect("in range")),
        other => other
            .parse::<FixedOffset>()
            .map_err(|_| format!("time zone `{other}` is not `Asia/Ho_Chi_Minh`, `UTC` or an offset such as `+07:00`")),
    }
}

impl Period {
    /// The last day of the period that holds `day`.
    pub fn end_of(self, day: NaiveDate) -> NaiveDate {
        let first_of = |y: i32, m: u32| NaiveDate::from_ymd_opt(y, m, 1).expect("valid month");
        let next_month = |y: i32, m: u32| if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        match self {
            Period::Day => day,
            Period::Month => {
                let (y, m) = next_month(day.year(), day.month());
                first_of(y, m) - Duration::days(1)
            }
            Period::Quarter => {
                let last = (day.month() - 1) / 3 * 3 + 3;
                let (y, m) = next_month(day.year(), last);
                first_of(y, m) - Duration::days(1)
            }
            Period::Year => NaiveDate::from_ymd_opt(day.year(), 12, 31).expect("valid"),
        }
    }

    /// The latest period end that has fully passed at `now` (local time):
    /// the last day of the period before the one holding today.
    pub fn last_ended(self, now: NaiveDateTime) -> NaiveDate {
        self.start_of(now.date()) - Duration::days(1)
    }

    /// The first day of the period that holds `day`.
    pub fn start_of(self, day: NaiveDate) -> NaiveDate {
        match self {
            Period::Day => day,
            Period::Month => day.with_day(1).expect("valid"),
            Period::Quarter => {
                NaiveDate::from_ymd_opt(day.year(), (day.month() - 1) / 3 * 3 + 1, 1)
                    .expect("valid")
            }
            Period::Year => NaiveDate::from_ymd_opt(day.year(), 1, 1).expect("valid"),
        }
    }
}

impl Schedule {
    /// The date of the snapshot that is due at `now_ms`, given the date of
    /// the newest one taken: the last period end that has passed in the
    /// schedule's zone, if no snapshot holds it yet.
    pub fn due(&self, newest: Option<NaiveDate>, now_ms: i64) -> Option<NaiveDate> {
        let offset = offset_of(&self.timezone).ok()?;
        let now = chrono::DateTime::from_timestamp_millis(now_ms)?
            .with_timezone(&offset)
            .naive_local();
        let end = self.every.last_ended(now);
        (newest.is_none_or(|n| n < end)).then_some(end)
    }
}

/// A report as declared in `deploy/reports/*.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReportFile {
    /// Its name (`population`): lowercase letters, digits or _.
    pub name: String,
    /// The subscriber whose view it counts.
    pub subscriber: String,
    /// The view's dataset.
    pub dataset: DatasetId,
    /// Its heading.
    pub title: Text,
    /// The body the report is issued by, as its printable page heads it
    /// (`Ủy ban nhân dân tỉnh Gia Lai`); none: the subscriber's code.
    #[serde(default)]
    pub issuer: Option<Text>,
    /// A CEL expression over the view's fields; only rows it holds true for
    /// are counted (none: every row).
    #[serde(default)]
    pub filter: Option<String>,
    /// The groupings, in order.
    #[serde(default)]
    pub dimensions: Vec<Dimension>,
    /// When dated snapshots are frozen (none: only on demand).
    #[serde(default)]
    pub schedule: Option<Schedule>,
}

impl ReportFile {
    /// `report.<subscriber>.<name>`, the report's name in topics and logs.
    pub fn id(&self) -> String {
        format!("{}.{}", self.subscriber, self.name)
    }
}

/// A report with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportSpec {
    /// What the file says.
    pub file: ReportFile,
    /// The file's name.
    pub origin: String,
}

impl ReportSpec {
    /// A validation error naming this report's file (and the key's line).
    pub fn invalid(&self, key: &str, message: impl Into<String>) -> CatalogError {
        CatalogError::Invalid {
            file: self.origin.clone(),
            line: std::fs::read_to_string(&self.origin)
                .ok()
                .and_then(|t| line_of(&t, key)),
            message: message.into(),
        }
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Parses and checks one report file (what it says by itself; the dataset,
/// subscription and fields are checked against the catalog and schema by
/// their users).
pub fn parse_report(file: &str, text: &str) -> Result<ReportSpec, CatalogError> {
    let f: ReportFile = toml::from_str(text).map_err(|e| CatalogError::Parse {
        file: file.to_string(),
        message: e.to_string(),
    })?;
    let invalid = |key: &str, message: String| CatalogError::Invalid {
        file: file.to_string(),
        line: line_of(text, key),
        message,
    };
    if !is_name(&f.name) {
        return Err(invalid(
            "name",
            format!("name `{}` must be lowercase letters, digits or _", f.name),
        ));
    }
    if !is_name(&f.subscriber) {
        return Err(invalid(
            "subscriber",
            format!(
                "subscriber `{}` must be lowercase letters, digits or _",
                f.subscriber
            ),
        ));
    }
    if f.dimensions.is_empty() {
        return Err(invalid(
            "name",
            "a report needs at least one [[dimensions]]".into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for d in &f.dimensions {
        if !is_name(&d.name) || d.name == "count" {
            return Err(invalid(
                "name",
                format!(
                    "dimension `{}` must be lowercase letters, digits or _, and not `count`",
                    d.name
                ),
            ));
        }
        if !seen.insert(d.name.as_str()) {
            return Err(invalid(
                "name",
                format!("dimension `{}` is declared twice", d.name),
            ));
        }
        if !d.age_bands.is_empty()
            && (d.age_bands[0] != 0 || d.age_bands.windows(2).any(|w| w[0] >= w[1]))
        {
            return Err(invalid(
                "age_bands",
                format!(
                    "age_bands {:?} of `{}` must start at 0 and increase",
                    d.age_bands, d.name
                ),
            ));
        }
    }
    if let Some(s) = &f.schedule {
        offset_of(&s.timezone).map_err(|m| invalid("timezone", m))?;
    }
    Ok(ReportSpec {
        file: f,
        origin: file.to_string(),
    })
}

/// Loads every `*.toml` report file in `dir`, in name order; a missing
/// directory holds none.
pub fn load_reports(dir: &Path) -> Result<Vec<ReportSpec>, CatalogError> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut out: Vec<ReportSpec> = Vec::new();
    for path in crate::files::toml_files(dir)? {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|source| CatalogError::Io {
            file: file.clone(),
            source,
        })?;
        let spec = parse_report(&file, &text)?;
        if let Some(other) = out.iter().find(|r| r.file.id() == spec.file.id()) {
            return Err(spec.invalid(
                "name",
                format!(
                    "report `{}` is also declared in {}",
                    spec.file.id(),
                    other.origin
                ),
            ));
        }
        out.push(spec);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()
    }

    #[test]
    fn a_period_ends_on_its_last_day() {
        assert_eq!(Period::Month.end_of(d("2024-02-10")), d("2024-02-29"));
        assert_eq!(Period::Month.end_of(d("2026-12-31")), d("2026-12-31"));
        assert_eq!(Period::Quarter.end_of(d("2026-11-02")), d("2026-12-31"));
        assert_eq!(Period::Quarter.end_of(d("2026-04-01")), d("2026-06-30"));
        assert_eq!(Period::Year.end_of(d("2026-04-01")), d("2026-12-31"));
        assert_eq!(Period::Day.end_of(d("2026-04-01")), d("2026-04-01"));
    }

    #[test]
    fn the_last_ended_period_is_the_one_before_today() {
        let now = at("2026-12-02 00:30");
        assert_eq!(Period::Month.last_ended(now), d("2026-11-30"));
        assert_eq!(Period::Day.last_ended(now), d("2026-12-01"));
        assert_eq!(Period::Quarter.last_ended(now), d("2026-09-30"));
        assert_eq!(Period::Year.last_ended(now), d("2025-12-31"));
        // The first minute of a month closes the month before.
        assert_eq!(
            Period::Month.last_ended(at("2026-12-01 00:00")),
            d("2026-11-30")
        );
        assert_eq!(
            Period::Month.last_ended(at("2026-11-30 23:59")),
            d("2026-10-31")
        );
    }

    #[test]
    fn a_snapshot_is_due_in_vietnams_time_once_per_period() {
        let s = Schedule {
            every: Period::Month,
            timezone: "Asia/Ho_Chi_Minh".into(),
        };
        // 2026-11-30 17:30 UTC is 2026-12-01 00:30 in Vietnam.
        let ms = chrono::DateTime::parse_from_rfc3339("2026-11-30T17:30:00Z")
            .unwrap()
            .timestamp_millis();
        assert_eq!(s.due(None, ms), Some(d("2026-11-30")));
        assert_eq!(s.due(Some(d("2026-10-31")), ms), Some(d("2026-11-30")));
        assert_eq!(s.due(Some(d("2026-11-30")), ms), None);
        let utc = Schedule {
            timezone: "UTC".into(),
            ..s
        };
        assert_eq!(utc.due(Some(d("2026-10-31")), ms), None);
    }

    #[test]
    fn age_bands_have_readable_labels() {
        let dim = Dimension {
            name: "age_band".into(),
            field: "date_of_birth".into(),
            title: Text {
                vi: "Nhóm tuổi".into(),
                en: "Age band".into(),
            },
            age_bands: vec![0, 6, 15, 60],
            labels: Default::default(),
        };
        assert_eq!(dim.band_of(0), "0-5");
        assert_eq!(dim.band_of(14), "6-14");
        assert_eq!(dim.band_of(59), "15-59");
        assert_eq!(dim.band_of(104), "60+");
        assert_eq!(dim.band_of(-1), "0-5");
        assert_eq!(dim.bands(), ["0-5", "6-14", "15-59", "60+"]);
    }

    #[test]
    fn a_bad_report_file_is_refused_naming_the_line() {
        let base = "name = \"population\"\nsubscriber = \"p52\"\ndataset = \"bca.residents\"\ntitle = { vi = \"Dân số\", en = \"Population\" }\n";
        let dim = "[[dimensions]]\nname = \"sex\"\nfield = \"sex\"\ntitle = { vi = \"Giới tính\", en = \"Sex\" }\n";
        assert!(parse_report("r.toml", &format!("{base}{dim}")).is_ok());
        let e = parse_report("r.toml", base).unwrap_err().to_string();
        assert!(e.contains("at least one [[dimensions]]"), "{e}");
        let e = parse_report("r.toml", &format!("{base}{dim}age_bands = [5, 10]\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("r.toml:9") && e.contains("must start at 0"),
            "{e}"
        );
        let e = parse_report("r.toml", &format!("{base}{dim}{dim}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("declared twice"), "{e}");
        let e = parse_report(
            "r.toml",
            &format!("{base}{dim}[schedule]\nevery = \"month\"\ntimezone = \"Mars/Base\"\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("r.toml:11") && e.contains("Mars/Base"), "{e}");
        let e = parse_report("r.toml", &format!("{base}colour = 1\n{dim}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `colour`"), "{e}");
    }
}
