//! Vietnam's administrative map with its history: every code with its
//! dated meanings. The same code names different units before and after
//! 1 July 2025, so a code means something only together with a date.
//!
//! Built from the statistics office's conversion table and the list of
//! units before the reform (`data/vn-admin-units/`, with their provenance).
//! A pure core: no Kafka, no I/O but the text it is given.
//!
//! One file because the map is one data structure with one invariant (a
//! code's dated meanings never overlap, and successors lead to today's
//! units): building it, resolving a code on a day and following successors
//! all read the same private index; a fifth of the file is its tests.

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;

/// The day the 2025 reorganisation took effect (districts abolished, 63
/// provinces became 34, 10,033 communes became 3,321).
pub fn reform_day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2025, 7, 1).expect("a valid date")
}

/// The reference data shipped with govbus (`data/vn-admin-units/`, with its
/// provenance), compiled in: the conversion table and the list before.
pub const REFERENCE: (&str, &str) = (
    include_str!("../../../data/vn-admin-units/conversion-2025-07-01.csv"),
    include_str!("../../../data/vn-admin-units/communes-before-2025-07-01.csv"),
);

/// The real map built from [`REFERENCE`], once per process.
pub fn reference() -> &'static AdminMap {
    static MAP: std::sync::OnceLock<AdminMap> = std::sync::OnceLock::new();
    MAP.get_or_init(|| {
        AdminMap::from_reference(REFERENCE.0, REFERENCE.1)
            .map(|(m, _)| m)
            .unwrap_or_else(|e| {
                // The data is compiled in and tested; this is a broken build.
                tracing::error!(error = %e, "the compiled-in administrative map does not build; using an empty one");
                AdminMap::default()
            })
    })
}

/// The map's epoch on `day`, from its [`AdminMap::change_days`]: the last
/// day on or before it on which the map changed (None: no map then). Two
/// days with the same epoch have the same map.
pub fn epoch_in(days: &[NaiveDate], day: NaiveDate) -> Option<NaiveDate> {
    let i = days.partition_point(|d| *d <= day);
    i.checked_sub(1).map(|i| days[i])
}

/// The Vietnamese calendar day (UTC+7, no daylight saving) of a time in
/// ms since the epoch: the day a change's codes are read on.
pub fn day_of_ms(ms: i64) -> NaiveDate {
    chrono::DateTime::from_timestamp_millis(ms.saturating_add(7 * 3_600_000))
        .map(|t| t.date_naive())
        .unwrap_or(NaiveDate::MIN)
}

/// From when the units before the reform are taken to be valid: the
/// coding decision 124/2004/QĐ-TTg (8 July 2004). The reference data has
/// no earlier dates.
pub fn coding_day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2004, 7, 8).expect("a valid date")
}

/// A unit's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// A province or centrally-run city.
    Province,
    /// A district (abolished on 1 July 2025).
    District,
    /// A commune, ward, township or special zone (đặc khu).
    Commune,
}

impl Level {
    /// As `moha.admin_units` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Province => "PROVINCE",
            Level::District => "DISTRICT",
            Level::Commune => "COMMUNE",
        }
    }
}

/// A unit a retired one went into.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Successor {
    /// Its code (valid from the day the predecessor ended).
    pub code: String,
    /// Whether the whole of the predecessor's population went into it.
    /// A unit merged in part has several successors, none of them whole.
    pub whole: bool,
}

/// One meaning of a code, valid from `valid_from` until `valid_to`
/// (exclusive; None: still valid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The code.
    pub code: String,
    /// The unit's name.
    pub name: String,
    /// Its level.
    pub level: Level,
    /// The code of the unit it belongs to (a commune's district before the
    /// reform, its province after; a district's province), valid on the
    /// same dates.
    pub parent: Option<String>,
    /// First day valid.
    pub valid_from: NaiveDate,
    /// First day no longer valid.
    pub valid_to: Option<NaiveDate>,
    /// What it became when it ended.
    pub successors: Vec<Successor>,
}

impl Version {
    /// Whether the version is valid on `day`.
    pub fn valid_on(&self, day: NaiveDate) -> bool {
        self.valid_from <= day && self.valid_to.is_none_or(|t| day < t)
    }
}

/// What a code given with a date is, in the map valid on that date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved<'m> {
    /// The code was valid on the date.
    Valid(&'m Version),
    /// It had been retired by then and went whole into one unit: use it.
    Succeeded {
        /// The retired version.
        retired: &'m Version,
        /// The code valid on the date.
        now: &'m Version,
    },
    /// It had been retired and went in part into several units: which one
    /// cannot be told from the code.
    Split {
        /// The retired version.
        retired: &'m Version,
        /// The candidates.
        candidates: Vec<&'m Version>,
    },
    /// It had been retired with no recorded successor.
    Retired(&'m Version),
    /// It was not yet valid on the date.
    NotYet(&'m Version),
    /// No such code, ever.
    Unknown,
}

/// Something in the reference data that needed a decision (logged at load,
/// counted in tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A conversion row's old province differs from the list before the
    /// reform, which wins.
    OldProvinceMislabelled {
        /// The old commune.
        code: String,
        /// What the row says.
        row: String,
        /// What the list says.
        list: String,
    },
    /// An old code only the conversion table names.
    OnlyInConversion(String),
    /// An old commune with no conversion row: kept, with no successor.
    NoSuccessor(String),
    /// A code the list before the reform gives twice; the first is kept.
    Duplicate(String),
    /// A new unit formed from an area with no code of its own.
    NoPredecessor(String),
}

/// The map could not be built.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// A file is not the CSV it should be.
    #[error("{file}: {source}")]
    Csv {
        /// Which file.
        file: &'static str,
        /// Why.
        source: csv::Error,
    },
    /// A row lacks something it must have.
    #[error("{file} line {line}: {problem}")]
    Row {
        /// Which file.
        file: &'static str,
        /// Its line (1-based, as an editor shows it).
        line: u64,
        /// What is wrong.
        problem: String,
    },
}

/// Every code with its dated meanings.
#[derive(Debug, Clone, Default)]
pub struct AdminMap {
    /// Code → versions, oldest first, never overlapping.
    versions: BTreeMap<String, Vec<Version>>,
}

const CONVERSION: &str = "conversion-2025-07-01.csv";
const BEFORE: &str = "communes-before-2025-07-01.csv";

/// `Name (code)` → (name, code).
fn name_code(cell: &str) -> Option<(String, String)> {
    let cell = cell.trim();
    let open = cell.rfind('(')?;
    let code = cell[open + 1..].strip_suffix(')')?.trim();
    (!code.is_empty() && code.chars().all(|c| c.is_ascii_digit()))
        .then(|| (cell[..open].trim().to_string(), code.to_string()))
}

fn clean(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A unit of the map before the reform (valid until the reform day).
fn old_unit(code: &str, name: &str, level: Level, parent: Option<&str>) -> Version {
    Version {
        code: code.to_string(),
        name: name.to_string(),
        level,
        parent: parent.map(str::to_string),
        valid_from: coding_day(),
        valid_to: Some(reform_day()),
        successors: vec![],
    }
}

/// A retired unit's rows in the conversion table: (new code, note).
type Moves = BTreeMap<String, Vec<(String, String)>>;

impl AdminMap {
    /// Builds the map from the conversion table and the list before the
    /// reform (their text), with what needed a decision.
    pub fn from_reference(
        conversion: &str,
        before: &str,
    ) -> Result<(Self, Vec<Finding>), MapError> {
        let reform = reform_day();
        let mut findings = Vec::new();
        let mut old: BTreeMap<String, Version> = BTreeMap::new();
        let mut new: BTreeMap<String, Version> = BTreeMap::new();

        // The list before the reform: provinces, districts, communes.
        let mut rd = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .from_reader(before.as_bytes());
        for (i, rec) in rd.records().enumerate() {
            let rec = rec.map_err(|source| MapError::Csv {
                file: BEFORE,
                source,
            })?;
            let line = i as u64 + 2;
            let cell = |n: usize| rec.get(n).map(clean).unwrap_or_default();
            let (pname, pcode, dname, dcode, cname, ccode) =
                (cell(0), cell(1), cell(2), cell(3), cell(4), cell(5));
            if pcode.is_empty() || dcode.is_empty() {
                return Err(MapError::Row {
                    file: BEFORE,
                    line,
                    problem: "no province or district code".into(),
                });
            }
            old.entry(pcode.clone())
                .or_insert_with(|| old_unit(&pcode, &pname, Level::Province, None));
            old.entry(dcode.clone())
                .or_insert_with(|| old_unit(&dcode, &dname, Level::District, Some(&pcode)));
            if ccode.is_empty() {
                continue; // a district with no commune level (an island)
            }
            if old.contains_key(&ccode) {
                findings.push(Finding::Duplicate(ccode));
                continue;
            }
            old.insert(
                ccode.clone(),
                old_unit(&ccode, &cname, Level::Commune, Some(&dcode)),
            );
        }

        // The conversion table: new units, and where each old one went.
        let mut rd = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(conversion.as_bytes());
        let mut moves: Moves = BTreeMap::new();
        for (i, rec) in rd.records().enumerate() {
            let rec = rec.map_err(|source| MapError::Csv {
                file: CONVERSION,
                source,
            })?;
            let line = rec.position().map_or(i as u64 + 1, |p| p.line());
            if i < 2 {
                continue; // the two header lines
            }
            let cell = |n: usize| rec.get(n).map(clean).unwrap_or_default();
            let new_code = cell(2);
            let Some((pname, pcode)) = name_code(&cell(0)) else {
                continue; // a province banner
            };
            if new_code.is_empty() {
                continue; // a province named on its own line
            }
            new.entry(pcode.clone()).or_insert_with(|| Version {
                code: pcode.clone(),
                name: pname.clone(),
                level: Level::Province,
                parent: None,
                valid_from: reform,
                valid_to: None,
                successors: vec![],
            });
            new.entry(new_code.clone()).or_insert_with(|| Version {
                code: new_code.clone(),
                name: cell(1),
                level: Level::Commune,
                parent: Some(pcode.clone()),
                valid_from: reform,
                valid_to: None,
                successors: vec![],
            });
            let old_code = cell(4);
            let note = cell(5);
            if old_code.is_empty() {
                // A whole district become a special zone, or an area with
                // no code of its own.
                match name_code(&cell(6)) {
                    Some((_, dcode)) if note.contains("huyện") => {
                        moves
                            .entry(dcode)
                            .or_default()
                            .push((new_code.clone(), "toàn bộ".into()));
                    }
                    _ => findings.push(Finding::NoPredecessor(new_code.clone())),
                }
                continue;
            }
            let listed = old.get(&old_code).map(|v| v.level == Level::Commune);
            if listed != Some(true) {
                // Only the conversion table names it: its district and
                // province come from the row.
                let (dname, dcode) = name_code(&cell(6)).ok_or_else(|| MapError::Row {
                    file: CONVERSION,
                    line,
                    problem: format!("old commune {old_code} with no district \"Name (code)\""),
                })?;
                let (opname, opcode) = name_code(&cell(7)).ok_or_else(|| MapError::Row {
                    file: CONVERSION,
                    line,
                    problem: format!("old commune {old_code} with no province \"Name (code)\""),
                })?;
                if !old.contains_key(&old_code) {
                    findings.push(Finding::OnlyInConversion(old_code.clone()));
                    old.entry(opcode.clone())
                        .or_insert_with(|| old_unit(&opcode, &opname, Level::Province, None));
                    old.entry(dcode.clone()).or_insert_with(|| {
                        old_unit(&dcode, &dname, Level::District, Some(&opcode))
                    });
                    old.insert(
                        old_code.clone(),
                        old_unit(&old_code, &cell(3), Level::Commune, Some(&dcode)),
                    );
                }
            } else if let Some((_, row_province)) = name_code(&cell(7)) {
                let listed_province = old
                    .get(&old_code)
                    .and_then(|c| c.parent.as_ref())
                    .and_then(|d| old.get(d))
                    .and_then(|d| d.parent.clone());
                if let Some(list) = listed_province.filter(|p| *p != row_province) {
                    findings.push(Finding::OldProvinceMislabelled {
                        code: old_code.clone(),
                        row: row_province,
                        list,
                    });
                }
            }
            moves.entry(old_code).or_default().push((new_code, note));
        }

        // Successors: whole when the old unit's population went into one
        // new unit only.
        for (code, to) in &moves {
            let Some(v) = old.get_mut(code) else {
                continue;
            };
            let targets: BTreeSet<&String> = to.iter().map(|(c, _)| c).collect();
            let partial_note = to.iter().any(|(_, note)| {
                let n = note.to_lowercase();
                n.contains("một phần") && !n.contains("toàn bộ dân số")
            });
            let whole = targets.len() == 1 && !partial_note;
            v.successors = targets
                .into_iter()
                .map(|c| Successor {
                    code: c.clone(),
                    whole,
                })
                .collect();
        }
        for v in old.values() {
            if v.level == Level::Commune && v.successors.is_empty() {
                findings.push(Finding::NoSuccessor(v.code.clone()));
            }
        }
        // An old province went into the new provinces its communes went
        // into (whole when into one).
        let mut province_to: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for v in old.values().filter(|v| v.level == Level::Commune) {
            let Some(p) = v
                .parent
                .as_ref()
                .and_then(|d| old.get(d))
                .and_then(|d| d.parent.clone())
            else {
                continue;
            };
            for s in &v.successors {
                if let Some(np) = new.get(&s.code).and_then(|n| n.parent.clone()) {
                    province_to.entry(p.clone()).or_default().insert(np);
                }
            }
        }
        for (p, to) in province_to {
            if let Some(v) = old.get_mut(&p) {
                let whole = to.len() == 1;
                v.successors = to
                    .into_iter()
                    .map(|code| Successor { code, whole })
                    .collect();
            }
        }

        let mut versions: BTreeMap<String, Vec<Version>> = BTreeMap::new();
        for v in old.into_values().chain(new.into_values()) {
            versions.entry(v.code.clone()).or_default().push(v);
        }
        for vs in versions.values_mut() {
            vs.sort_by_key(|v| v.valid_from);
        }
        Ok((Self { versions }, findings))
    }

    /// Every version of `code`, oldest first.
    pub fn versions(&self, code: &str) -> &[Version] {
        self.versions.get(code).map_or(&[], Vec::as_slice)
    }

    /// Every code with its versions.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[Version])> {
        self.versions
            .iter()
            .map(|(c, v)| (c.as_str(), v.as_slice()))
    }

    /// The version of `code` valid on `day`.
    pub fn at(&self, code: &str, day: NaiveDate) -> Option<&Version> {
        self.versions(code).iter().find(|v| v.valid_on(day))
    }

    /// What `code`, given with the date `day`, is on that date.
    pub fn resolve(&self, code: &str, day: NaiveDate) -> Resolved<'_> {
        let vs = self.versions(code);
        if vs.is_empty() {
            return Resolved::Unknown;
        }
        if let Some(v) = vs.iter().find(|v| v.valid_on(day)) {
            return Resolved::Valid(v);
        }
        // The last version that ended on or before the day, following its
        // successors while they too had ended.
        let Some(retired) = vs
            .iter()
            .rev()
            .find(|v| v.valid_to.is_some_and(|t| t <= day))
        else {
            return Resolved::NotYet(&vs[0]);
        };
        let mut current = retired;
        for _ in 0..8 {
            match current.successors.as_slice() {
                [] => return Resolved::Retired(retired),
                [one] if one.whole => {
                    let Some(next) = self.at(&one.code, current.valid_to.unwrap_or(day)) else {
                        return Resolved::Retired(retired);
                    };
                    if next.valid_on(day) {
                        return Resolved::Succeeded { retired, now: next };
                    }
                    current = next;
                }
                many => {
                    let from = current.valid_to.unwrap_or(day);
                    let candidates = many.iter().filter_map(|s| self.at(&s.code, from)).collect();
                    return Resolved::Split {
                        retired,
                        candidates,
                    };
                }
            }
        }
        Resolved::Retired(retired)
    }

    /// The province `code` belonged to on `day` (itself for a province).
    pub fn province_of(&self, code: &str, day: NaiveDate) -> Option<&Version> {
        let mut v = self.at(code, day)?;
        for _ in 0..4 {
            if v.level == Level::Province {
                return Some(v);
            }
            v = self.at(v.parent.as_deref()?, day)?;
        }
        None
    }

    /// Every code as a `moha.admin_units` (v2) row: its latest meaning,
    /// with the earlier ones in `history`, in code order.
    pub fn rows(&self) -> impl Iterator<Item = serde_json::Value> + '_ {
        fn meaning(v: &Version) -> serde_json::Map<String, serde_json::Value> {
            let date = |d: NaiveDate| serde_json::Value::String(d.format("%Y-%m-%d").to_string());
            let mut m = serde_json::Map::new();
            m.insert("name".into(), v.name.clone().into());
            m.insert("level".into(), v.level.as_str().into());
            m.insert(
                "parent_code".into(),
                v.parent.clone().map_or(serde_json::Value::Null, Into::into),
            );
            m.insert("valid_from".into(), date(v.valid_from));
            m.insert(
                "valid_to".into(),
                v.valid_to.map_or(serde_json::Value::Null, date),
            );
            m.insert(
                "successors".into(),
                v.successors
                    .iter()
                    .map(|s| serde_json::json!({"code": s.code, "whole": s.whole}))
                    .collect(),
            );
            m
        }
        self.versions.iter().filter_map(|(code, vs)| {
            let (latest, earlier) = vs.split_last()?;
            let mut row = serde_json::Map::new();
            row.insert("code".into(), code.clone().into());
            row.extend(meaning(latest));
            row.insert(
                "history".into(),
                earlier
                    .iter()
                    .map(|v| serde_json::Value::Object(meaning(v)))
                    .collect(),
            );
            Some(serde_json::Value::Object(row))
        })
    }

    /// The map back from `moha.admin_units` rows (as [`AdminMap::rows`]
    /// writes them, and as a producer or router following the topic holds
    /// them): what cannot be read is skipped and named.
    pub fn from_rows<'r>(
        rows: impl IntoIterator<Item = &'r serde_json::Value>,
    ) -> (Self, Vec<String>) {
        fn version(code: &str, m: &serde_json::Value) -> Result<Version, String> {
            let text = |k: &str| m.get(k).and_then(serde_json::Value::as_str);
            let date = |k: &str| -> Result<Option<NaiveDate>, String> {
                match m.get(k) {
                    None | Some(serde_json::Value::Null) => Ok(None),
                    Some(v) => v
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .map(Some)
                        .ok_or_else(|| format!("{code}: `{k}` is not a date: {v}")),
                }
            };
            let level = match text("level") {
                Some("PROVINCE") => Level::Province,
                Some("DISTRICT") => Level::District,
                Some("COMMUNE") => Level::Commune,
                other => return Err(format!("{code}: unknown level {other:?}")),
            };
            Ok(Version {
                code: code.to_string(),
                name: text("name").unwrap_or_default().to_string(),
                level,
                parent: text("parent_code").map(str::to_string),
                valid_from: date("valid_from")?
                    .ok_or_else(|| format!("{code}: no `valid_from`"))?,
                valid_to: date("valid_to")?,
                successors: m
                    .get("successors")
                    .and_then(serde_json::Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| {
                                Some(Successor {
                                    code: s.get("code")?.as_str()?.to_string(),
                                    whole: s.get("whole")?.as_bool()?,
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        }
        let mut versions: BTreeMap<String, Vec<Version>> = BTreeMap::new();
        let mut skipped = Vec::new();
        for row in rows {
            let Some(code) = row.get("code").and_then(serde_json::Value::as_str) else {
                skipped.push(format!("a row with no code: {row}"));
                continue;
            };
            let earlier = row
                .get("history")
                .and_then(serde_json::Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let mut vs = Vec::with_capacity(earlier.len() + 1);
            for m in earlier.iter().chain(std::iter::once(row)) {
                match version(code, m) {
                    Ok(v) => vs.push(v),
                    Err(e) => skipped.push(e),
                }
            }
            vs.sort_by_key(|v| v.valid_from);
            versions.insert(code.to_string(), vs);
        }
        (Self { versions }, skipped)
    }

    /// Whether `code`, given with the date `day`, lies in `unit` (itself or
    /// under it) on that date, following a retired code to its successor.
    /// A code merged in part lies in `unit` only when every candidate does.
    pub fn in_unit(&self, code: &str, unit: &str, day: NaiveDate) -> bool {
        let within = |v: &Version| {
            let mut v = v;
            for _ in 0..4 {
                if v.code == unit {
                    return true;
                }
                let Some(up) = v.parent.as_deref().and_then(|p| self.at(p, day)) else {
                    return false;
                };
                v = up;
            }
            false
        };
        match self.resolve(code, day) {
            Resolved::Valid(v) | Resolved::Succeeded { now: v, .. } => within(v),
            Resolved::Split { candidates, .. } => {
                !candidates.is_empty() && candidates.iter().all(|v| within(v))
            }
            Resolved::Retired(_) | Resolved::NotYet(_) | Resolved::Unknown => false,
        }
    }

    /// How many versions of `level` are valid on `day`.
    pub fn count(&self, level: Level, day: NaiveDate) -> usize {
        self.versions
            .values()
            .flatten()
            .filter(|v| v.level == level && v.valid_on(day))
            .count()
    }
}

/// Where a code lies in the map valid on one day (see [`Hierarchy`]): the
/// units it is in, itself first, and its province.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Place {
    /// The codes of the units it lies in on the day (itself, its parent, …).
    /// For a code merged in part: only the units every candidate lies in.
    pub within: Vec<String>,
    /// Its province on the day (None when candidates lie in different ones).
    pub province: Option<String>,
}

/// A code's meaning from a day until another (exclusive; None: open), as
/// the place it lies in on the index's day.
type Period = (NaiveDate, Option<NaiveDate>, Option<std::sync::Arc<Place>>);

/// The map's answers to hierarchy questions as of one day, indexed for the
/// router (no scan per change): a code given with the date of its change
/// means the unit valid on that date, followed through its successors to
/// the map of `as_of`. Built once per map version and day.
#[derive(Debug, Clone, Default)]
pub struct Hierarchy {
    as_of: Option<NaiveDate>,
    /// Code → (from, until (exclusive; None: open), place on `as_of`),
    /// the periods in order.
    places: std::collections::HashMap<String, Vec<Period>>,
}

impl Hierarchy {
    /// No map: every question is answered no.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The day the map is read as of (None: no map).
    pub fn as_of(&self) -> Option<NaiveDate> {
        self.as_of
    }

    /// The index of `map` as of `as_of`.
    pub fn new(map: &AdminMap, as_of: NaiveDate) -> Self {
        let mut places = std::collections::HashMap::new();
        for (code, vs) in map.iter() {
            let mut periods = Vec::with_capacity(vs.len() + 1);
            for (i, v) in vs.iter().enumerate() {
                let place = map.place(v, as_of).map(std::sync::Arc::new);
                periods.push((v.valid_from, v.valid_to, place));
                // After a version ends and before the next begins (or for
                // ever): the code is retired; it means its successors.
                if let Some(to) = v.valid_to {
                    let next = vs.get(i + 1).map(|n| n.valid_from);
                    if next != Some(to) {
                        let retired = map
                            .follow(v, as_of)
                            .and_then(|vs| map.common(&vs, as_of))
                            .map(std::sync::Arc::new);
                        periods.push((to, next, retired));
                    }
                }
            }
            places.insert(code.to_string(), periods);
        }
        Self {
            as_of: Some(as_of),
            places,
        }
    }

    /// Where `code`, given with a change of `day`, lies as of the index's
    /// day. A change dated after that day is read on it: the index answers
    /// as the map stood then (what a view held before a later change).
    pub fn place(&self, code: &str, day: NaiveDate) -> Option<&Place> {
        let day = self.as_of.map_or(day, |a| day.min(a));
        self.places
            .get(code)?
            .iter()
            .find(|(from, to, _)| *from <= day && to.is_none_or(|t| day < t))?
            .2
            .as_deref()
    }

    /// Whether `code` (of a change of `day`) lies in `unit`.
    pub fn in_unit(&self, code: &str, unit: &str, day: NaiveDate) -> bool {
        self.place(code, day)
            .is_some_and(|p| p.within.iter().any(|u| u == unit))
    }

    /// The province `code` (of a change of `day`) lies in.
    pub fn province_of(&self, code: &str, day: NaiveDate) -> Option<&str> {
        self.place(code, day)?.province.as_deref()
    }
}

impl AdminMap {
    /// The map restricted to `codes` (each with its whole history): a
    /// consistent slice of the real one, for a demo or a test.
    pub fn slice<'c>(&self, codes: impl IntoIterator<Item = &'c str>) -> AdminMap {
        let mut versions = BTreeMap::new();
        for c in codes {
            if let Some(vs) = self.versions.get(c) {
                versions.insert(c.to_string(), vs.clone());
            }
        }
        AdminMap { versions }
    }

    /// Every day on which a version begins or ends, in order: the map is
    /// the same between two of them.
    pub fn change_days(&self) -> Vec<NaiveDate> {
        let mut days: Vec<NaiveDate> = self
            .versions
            .values()
            .flatten()
            .flat_map(|v| [Some(v.valid_from), v.valid_to])
            .flatten()
            .collect();
        days.sort_unstable();
        days.dedup();
        days
    }

    /// The versions valid on `as_of` that `v` became: itself when valid
    /// then; through its successors (or the same code's next version when
    /// none are recorded) when it ended before; None when it begins later
    /// or went nowhere.
    fn follow<'a>(&'a self, v: &'a Version, as_of: NaiveDate) -> Option<Vec<&'a Version>> {
        let mut out = Vec::new();
        let mut todo = vec![(v, 0u8)];
        while let Some((v, depth)) = todo.pop() {
            if v.valid_on(as_of) {
                out.push(v);
                continue;
            }
            let end = v.valid_to.filter(|t| *t <= as_of)?;
            if depth > 8 {
                return None;
            }
            let next: Vec<&Version> = if v.successors.is_empty() {
                self.at(&v.code, end).into_iter().collect()
            } else {
                v.successors
                    .iter()
                    .filter_map(|s| self.at(&s.code, end))
                    .collect()
            };
            if next.is_empty() {
                return None;
            }
            todo.extend(next.into_iter().map(|n| (n, depth + 1)));
        }
        Some(out)
    }

    /// Where `v` lies on `as_of` (followed there when it ended before).
    fn place(&self, v: &Version, as_of: NaiveDate) -> Option<Place> {
        let now = self.follow(v, as_of)?;
        self.common(&now, as_of)
    }

    /// The units every one of `now` (valid on `as_of`) lies in.
    fn common(&self, now: &[&Version], as_of: NaiveDate) -> Option<Place> {
        let chain = |v: &Version| -> (Vec<String>, Option<String>) {
            let (mut within, mut province) = (vec![v.code.clone()], None);
            let mut cur = Some(v);
            for _ in 0..4 {
                let Some(c) = cur else { break };
                if c.level == Level::Province {
                    province = Some(c.code.clone());
                }
                cur = c.parent.as_deref().and_then(|p| self.at(p, as_of));
                if let Some(up) = cur {
                    within.push(up.code.clone());
                }
            }
            (within, province)
        };
        let mut it = now.iter();
        let (mut within, mut province) = chain(it.next()?);
        for v in it {
            let (w, p) = chain(v);
            within.retain(|u| w.contains(u));
            if province != p {
                province = None;
            }
        }
        Some(Place { within, province })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> (AdminMap, Vec<Finding>) {
        AdminMap::from_reference(
            include_str!("../../../data/vn-admin-units/conversion-2025-07-01.csv"),
            include_str!("../../../data/vn-admin-units/communes-before-2025-07-01.csv"),
        )
        .expect("the shipped reference data builds")
    }

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn the_real_map_has_the_official_counts_on_both_sides_of_the_reform() {
        let (m, _) = map();
        let before = day("2025-06-30");
        let after = reform_day();
        assert_eq!(m.count(Level::Province, before), 63);
        assert_eq!(m.count(Level::Province, after), 34);
        assert_eq!(m.count(Level::Commune, after), 3_321);
        assert_eq!(m.count(Level::District, after), 0, "districts abolished");
        assert_eq!(m.count(Level::District, before), 696);
        // 10,033 communes went into new ones; 28 more of the list before
        // the reform have no conversion row (dissolved earlier).
        assert_eq!(m.count(Level::Commune, before), 10_061);
        let converted = m
            .iter()
            .flat_map(|(_, vs)| vs)
            .filter(|v| v.level == Level::Commune && v.valid_on(before))
            .filter(|v| !v.successors.is_empty())
            .count();
        assert_eq!(converted, 10_033);
    }

    #[test]
    fn the_same_code_means_different_units_before_and_after() {
        let (m, _) = map();
        let p52: Vec<&str> = m.versions("52").iter().map(|v| v.name.as_str()).collect();
        assert_eq!(p52, ["Tỉnh Bình Định", "Tỉnh Gia Lai"]);
        assert_eq!(
            m.at("52", day("2020-01-01")).unwrap().name,
            "Tỉnh Bình Định"
        );
        assert_eq!(m.at("52", reform_day()).unwrap().name, "Tỉnh Gia Lai");
        // Bình Định went whole into Gia Lai; Sóc Trăng into Cần Thơ.
        assert_eq!(
            m.versions("52")[0].successors,
            [Successor {
                code: "52".into(),
                whole: true
            }]
        );
        assert_eq!(
            m.versions("94")[0].successors,
            [Successor {
                code: "92".into(),
                whole: true
            }]
        );
        assert_eq!(m.at("94", reform_day()), None, "94 is no longer a code");
    }

    #[test]
    fn codes_resolve_by_their_date() {
        let (m, _) = map();
        let after = day("2025-09-01");
        // Phường 5 of Sóc Trăng city went whole into Phường Sóc Trăng (Cần Thơ).
        match m.resolve("31498", after) {
            Resolved::Succeeded { retired, now } => {
                assert_eq!(retired.name, "Phường 5");
                assert_eq!(now.code, "31507");
                assert_eq!(m.province_of(&now.code, after).unwrap().code, "92");
            }
            other => panic!("{other:?}"),
        }
        // Before the reform it keeps its meaning then: in Sóc Trăng (94).
        assert!(matches!(
            m.resolve("31498", day("2024-05-01")),
            Resolved::Valid(_)
        ));
        assert_eq!(
            m.province_of("31498", day("2024-05-01")).unwrap().name,
            "Tỉnh Sóc Trăng"
        );
        // A commune merged in part names its candidates.
        match m.resolve("00016", after) {
            Resolved::Split { candidates, .. } => {
                assert!(candidates.len() > 1);
                assert!(candidates.iter().any(|c| c.code == "00004"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.resolve("99999", after), Resolved::Unknown);
        // A new code is not valid before it existed.
        assert!(matches!(
            m.resolve("11948", day("2024-01-01")),
            Resolved::NotYet(_)
        ));
    }

    #[test]
    fn what_the_reference_data_gets_wrong_is_decided_and_reported() {
        let (m, findings) = map();
        let count = |f: fn(&Finding) -> bool| findings.iter().filter(|x| f(x)).count();
        assert_eq!(
            count(|f| matches!(f, Finding::OldProvinceMislabelled { .. })),
            2
        );
        assert_eq!(count(|f| matches!(f, Finding::OnlyInConversion(_))), 10);
        assert_eq!(count(|f| matches!(f, Finding::NoSuccessor(_))), 28);
        assert_eq!(count(|f| matches!(f, Finding::NoPredecessor(_))), 1);
        assert_eq!(count(|f| matches!(f, Finding::Duplicate(_))), 0);
        assert!(findings.contains(&Finding::OldProvinceMislabelled {
            code: "27691".into(),
            row: "82".into(),
            list: "80".into()
        }));
        // The Tân An wards of Long An (80) stay in Long An, which went into Tây Ninh (80).
        let long_an = &m.versions("80")[0];
        assert_eq!(long_an.name, "Tỉnh Long An");
        assert!(
            long_an.successors.iter().all(|s| s.code == "80"),
            "{long_an:?}"
        );
        // An island district became a special zone.
        let bach_long_vi = m.at("318", day("2024-01-01")).unwrap();
        assert_eq!(bach_long_vi.level, Level::District);
        assert_eq!(bach_long_vi.successors[0].code, "11948");
        assert_eq!(m.province_of("11948", reform_day()).unwrap().code, "31");
    }

    #[test]
    fn each_code_is_one_row_with_its_latest_meaning_and_its_history() {
        let (m, _) = map();
        let rows: Vec<serde_json::Value> = m.rows().collect();
        assert_eq!(rows.len(), m.iter().count());
        let p52 = rows.iter().find(|r| r["code"] == "52").unwrap();
        assert_eq!(p52["name"], "Tỉnh Gia Lai");
        assert_eq!(p52["valid_from"], "2025-07-01");
        assert_eq!(p52["valid_to"], serde_json::Value::Null);
        assert_eq!(p52["history"][0]["name"], "Tỉnh Bình Định");
        assert_eq!(p52["history"][0]["valid_to"], "2025-07-01");
        assert_eq!(
            p52["history"][0]["successors"],
            serde_json::json!([{"code": "52", "whole": true}])
        );
        let phuong5 = rows.iter().find(|r| r["code"] == "31498").unwrap();
        assert_eq!(phuong5["level"], "COMMUNE");
        assert_eq!(phuong5["valid_to"], "2025-07-01");
        assert_eq!(phuong5["history"], serde_json::json!([]));
    }

    #[test]
    fn the_rows_give_back_the_same_map() {
        let (m, _) = map();
        let rows: Vec<serde_json::Value> = m.rows().collect();
        let (back, skipped) = AdminMap::from_rows(&rows);
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(back.versions, m.versions);
        let (_, skipped) = AdminMap::from_rows(&[
            serde_json::json!({"name": "no code"}),
            serde_json::json!({"code": "1", "level": "TOWN", "valid_from": "2025-07-01"}),
        ]);
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped[1].contains("unknown level"), "{skipped:?}");
    }

    #[test]
    fn a_code_lies_in_the_unit_it_belongs_to_on_the_date() {
        let (m, _) = map();
        let today = day("2026-12-02");
        // A resident still carrying a former Sóc Trăng commune code lies in
        // Cần Thơ today, and in Sóc Trăng on a date before the reform.
        assert!(m.in_unit("31498", "92", today));
        assert!(!m.in_unit("31498", "94", today));
        assert!(m.in_unit("31498", "94", day("2025-06-30")));
        assert!(m.in_unit("31507", "92", today));
        assert!(m.in_unit("92", "92", today));
        // Quy Nhơn's wards are in Gia Lai (52) now, as they were in Bình Định (52).
        assert!(m.in_unit("21553", "52", today));
        // A split commune: all its candidates are in Hà Nội.
        assert!(m.in_unit("00016", "01", today));
        assert!(!m.in_unit("00016", "79", today));
        assert!(!m.in_unit("99999", "01", today));
    }

    #[test]
    fn a_name_and_code_cell_is_read_or_not() {
        assert_eq!(
            name_code("Tỉnh Gia Lai (52) "),
            Some(("Tỉnh Gia Lai".into(), "52".into()))
        );
        assert_eq!(name_code("GIA LAI"), None);
        assert_eq!(name_code("Huyện X (ab)"), None);
    }

    #[test]
    fn the_hierarchy_follows_a_code_to_todays_map() {
        let (m, _) = map();
        let h = Hierarchy::new(&m, day("2026-11-30"));
        let (old, new) = (day("2024-03-01"), day("2026-01-01"));
        // A province code merged whole, given before and after the reform.
        assert_eq!(h.province_of("94", old), Some("92"));
        assert!(h.in_unit("94", "92", new));
        // 52 before the reform (Bình Định) and after (Gia Lai): both Gia Lai.
        assert_eq!(h.province_of("52", old), Some("52"));
        assert_eq!(h.province_of("52", new), Some("52"));
        // Every former Sóc Trăng commune lies in Cần Thơ today.
        let soc_trang: Vec<&str> = m
            .iter()
            .filter(|(_, vs)| {
                vs.iter().any(|v| {
                    v.level == Level::Commune
                        && v.valid_on(old)
                        && m.province_of(&v.code, old).is_some_and(|p| p.code == "94")
                })
            })
            .map(|(c, _)| c)
            .collect();
        assert!(soc_trang.len() > 50, "{}", soc_trang.len());
        for c in &soc_trang {
            assert!(h.in_unit(c, "92", old), "{c}");
            assert!(!h.in_unit(c, "52", old), "{c}");
        }
        // A code that never existed lies nowhere.
        assert_eq!(h.place("99999", new), None);
        // No map: nothing lies anywhere.
        assert!(!Hierarchy::empty().in_unit("94", "92", new));
    }

    #[test]
    fn the_map_epoch_is_the_last_change_on_or_before_a_day() {
        let (m, _) = map();
        let days = m.change_days();
        assert_eq!(days, [coding_day(), reform_day()]);
        assert_eq!(epoch_in(&days, day("2026-11-30")), Some(reform_day()));
        assert_eq!(epoch_in(&days, reform_day()), Some(reform_day()));
        assert_eq!(epoch_in(&days, day("2025-06-30")), Some(coding_day()));
        assert_eq!(epoch_in(&days, day("2000-01-01")), None);
    }
}
