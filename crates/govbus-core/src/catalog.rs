//! Datasets and subscriptions as files (`deploy/datasets/*.toml`,
//! `deploy/subscriptions/*.toml`, schemas in `schemas/`).
//!
//! One file because its types are one grammar: a dataset's file, a
//! subscription's, the checks between them (a filter's fields, a drop's
//! path, the tags a view keeps) and the catalog that holds them; split, each
//! part would import all the others.

use std::collections::BTreeMap;
use std::path::Path;

use crate::files::toml_files;
pub use crate::files::{line_of, CatalogError, DatasetId};
use crate::report::{load_reports, parse_report, ReportSpec};
use serde::{Deserialize, Serialize};

/// A dataset as declared in `deploy/datasets/<owner>.<name>.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetFile {
    /// Owning agency.
    pub owner: String,
    /// Dataset name.
    pub name: String,
    /// Major version: part of the topic name; a breaking change means a new major.
    pub major: u32,
    /// The Avro entity schema, relative to `schemas/`.
    pub schema: String,
    /// The key field (top level).
    pub key: String,
    /// Retention of the central topic (-1 = forever).
    #[serde(default = "forever")]
    pub retention_ms: i64,
    /// Field tags: dotted path → tags (`PII`, `SENSITIVE`).
    #[serde(default)]
    pub tags: BTreeMap<String, Vec<String>>,
    /// Data-quality rules the producer enforces before it accepts a change.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// Catalogs the rules look values up in: a CEL variable name → the
    /// dataset (`admin_units = "moha.admin_units"`). The variable is a map
    /// from the dataset's key to its current row; the producer follows the
    /// dataset's central topic live to keep it current.
    #[serde(default)]
    pub lookups: BTreeMap<String, DatasetId>,
    /// Administrative codes cleaned at the edge, against the map a lookup
    /// holds ([`crate::codes`]): normalised, refused or kept by the date of
    /// the change.
    #[serde(default)]
    pub codes: Vec<CodeRule>,
}

/// How a dataset's producer treats one field holding an administrative
/// unit's code (`[[codes]]`): the code means the unit valid on the change's
/// date; one retired by then is normalised to its successor or refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CodeRule {
    /// The field (dotted path) holding the code.
    pub field: String,
    /// The `[lookups]` name of the administrative map (`admin_units`).
    pub catalog: String,
    /// The field holding the change's date (a date, or a timestamp read in
    /// Vietnam's time); none: the day the change is received.
    #[serde(default)]
    pub date: Option<String>,
    /// The level the code must have on that date (`PROVINCE`, `COMMUNE`).
    #[serde(default)]
    pub level: Option<String>,
    /// A field holding the unit the code must lie in on that date (a
    /// commune's province), after that field's own rule has run.
    #[serde(default)]
    pub within: Option<String>,
    /// The field that keeps the code as sent when it is normalised.
    #[serde(default)]
    pub as_sent: Option<String>,
    /// A code retired and merged whole into one unit: `normalise` (the
    /// default) or `refuse`.
    #[serde(default = "normalise")]
    pub merged: CodeAction,
    /// A code retired and merged in part into several units: `refuse` (the
    /// default, naming the candidates) or `keep`.
    #[serde(default = "refuse")]
    pub split: CodeAction,
    /// A code that never existed, was not yet valid, or was retired with
    /// no successor: `refuse` (the default) or `keep`.
    #[serde(default = "refuse")]
    pub unknown: CodeAction,
}

/// What a code rule does with one kind of code.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CodeAction {
    /// Replace it with its successor, keeping it as sent.
    Normalise,
    /// Refuse the change, saying why.
    Refuse,
    /// Accept it unchanged.
    Keep,
}

fn normalise() -> CodeAction {
    CodeAction::Normalise
}
fn refuse() -> CodeAction {
    CodeAction::Refuse
}

/// A data-quality rule of a dataset's contract.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Short name, reported with every reject (`citizen_id_is_12_digits`).
    pub name: String,
    /// A CEL expression over the entity's fields that must be true; `today`
    /// is the current date (`YYYY-MM-DD`).
    pub expr: String,
    /// The field the rule is about (reported as the failing field).
    pub field: String,
    /// What the sender is told when it fails.
    pub message: String,
    /// `reject` (the default) refuses the change; `warn` only counts it.
    #[serde(default)]
    pub action: RuleAction,
}

/// What a failed rule does.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// The change is refused.
    #[default]
    Reject,
    /// The change is accepted; the failure is logged and counted.
    Warn,
}

fn forever() -> i64 {
    -1
}

/// A dataset with its entity schema loaded.
#[derive(Debug, Clone)]
pub struct DatasetSpec {
    /// `owner.name`.
    pub id: DatasetId,
    /// What the file says.
    pub file: DatasetFile,
    /// The entity schema (Avro JSON text).
    pub entity_schema: String,
}

/// A subscription as declared in `deploy/subscriptions/*.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionFile {
    /// The subscribing agency, e.g. `p52`.
    pub subscriber: String,
    /// The dataset, `owner.name`.
    pub dataset: DatasetId,
    /// A CEL expression over the entity's fields; true = the entity belongs to the view.
    pub filter: String,
    /// Fields (dotted paths) removed from the view: they never leave the router.
    #[serde(default)]
    pub drop: Vec<String>,
    /// Why the subscriber is entitled to this data (free text).
    #[serde(default)]
    pub legal_basis: String,
    /// The legal act or decision the basis rests on (number, article).
    #[serde(default)]
    pub legal_reference: String,
    /// Who asked for the subscription (person, office).
    #[serde(default)]
    pub requested_by: String,
    /// The fields tagged SENSITIVE that the view keeps, each named on
    /// purpose (a SENSITIVE field not dropped must be listed here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensitive: Vec<String>,
    /// Last day of delivery (`YYYY-MM-DD`, inclusive); none = no end.
    #[serde(default)]
    pub expires: Option<String>,
    /// What happens to the view's rows when the unit its filter names
    /// (`in_unit(…, "94")`, `province_of(…) == "94"`) ceases to exist in
    /// the administrative map: `leave` (the default: nothing lies in it any
    /// more, so every row leaves) or `keep` (delivery stops on that day and
    /// the rows stay, as when a subscription expires).
    #[serde(default, skip_serializing_if = "UnitEnded::is_leave")]
    pub unit_ended: UnitEnded,
}

/// What a subscription's view does when the unit it follows ceases to exist.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnitEnded {
    /// Every row leaves (a delete each), as the map says.
    #[default]
    Leave,
    /// Delivery stops and the rows stay.
    Keep,
}

impl UnitEnded {
    fn is_leave(&self) -> bool {
        *self == UnitEnded::Leave
    }
}

/// The first of `problems`, as an error.
fn first_problem(problems: Vec<CatalogError>) -> Result<(), CatalogError> {
    problems.into_iter().next().map_or(Ok(()), Err)
}

/// A rule of its dataset's tags that a subscription breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagViolation {
    /// The tagged fields the view keeps.
    pub fields: Vec<String>,
    /// The subscription's key that would mend it.
    pub key: &'static str,
    /// The rule, as an operator reads it.
    pub rule: String,
}

impl SubscriptionFile {
    /// Whether the view keeps `field` (a dotted path): neither it nor a
    /// record holding it is dropped.
    pub fn keeps(&self, field: &str) -> bool {
        !self
            .drop
            .iter()
            .any(|d| field == d || field.starts_with(&format!("{d}.")))
    }

    /// What the dataset's tags require of this subscription and it does
    /// not give, one [`TagViolation`] per rule broken. A view
    /// that keeps a PII or SENSITIVE field must name its legal basis and
    /// reference; one that keeps a SENSITIVE field must also name that
    /// field in `sensitive`.
    pub fn tag_violations(&self, dataset: &DatasetFile) -> Vec<TagViolation> {
        let has = |tags: &[String], t: &str| tags.iter().any(|x| x.eq_ignore_ascii_case(t));
        let kept: Vec<(&String, &Vec<String>)> =
            dataset.tags.iter().filter(|(f, _)| self.keeps(f)).collect();
        let tagged: Vec<(&String, &Vec<String>)> = kept
            .iter()
            .copied()
            .filter(|(_, t)| has(t, "PII") || has(t, "SENSITIVE"))
            .collect();
        let mut out = Vec::new();
        if !tagged.is_empty() {
            let listed = tagged
                .iter()
                .map(|(f, t)| format!("`{f}` ({})", t.join(", ")))
                .collect::<Vec<_>>()
                .join(", ");
            for (key, value) in [
                ("legal_basis", &self.legal_basis),
                ("legal_reference", &self.legal_reference),
            ] {
                if value.trim().is_empty() {
                    out.push(TagViolation {
                        fields: tagged.iter().map(|(f, _)| f.to_string()).collect(),
                        key,
                        rule: format!("the view keeps {listed}, so it must name its `{key}` (or drop those fields)"),
                    });
                }
            }
        }
        let unnamed: Vec<String> = kept
            .iter()
            .filter(|(f, t)| has(t, "SENSITIVE") && !self.sensitive.contains(f))
            .map(|(f, _)| f.to_string())
            .collect();
        if !unnamed.is_empty() {
            let quoted: Vec<String> = unnamed.iter().map(|f| format!("\"{f}\"")).collect();
            out.push(TagViolation {
                rule: format!(
                    "the view keeps `{}`, tagged SENSITIVE, so it must name it in `sensitive = [{}]` (or drop it)",
                    unnamed.join("`, `"),
                    quoted.join(", ")
                ),
                fields: unnamed,
                key: "sensitive",
            });
        }
        out
    }

    /// The first instant after the subscription ends (ms since the epoch), if it ends.
    pub fn expires_ms(&self) -> Result<Option<i64>, ExpiresError> {
        let Some(d) = &self.expires else {
            return Ok(None);
        };
        let date = chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
            .map_err(|_| ExpiresError::NotADate(d.clone()))?;
        let next = date
            .succ_opt()
            .ok_or_else(|| ExpiresError::OutOfRange(d.clone()))?;
        Ok(Some(
            next.and_hms_opt(0, 0, 0)
                .map_or(i64::MAX, |t| t.and_utc().timestamp_millis()),
        ))
    }
}

/// A subscription's `expires` that is not a day it can end on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpiresError {
    /// Not `YYYY-MM-DD`.
    #[error("expires `{0}` is not a date (YYYY-MM-DD)")]
    NotADate(String),
    /// A date with no day after it.
    #[error("expires `{0}` is out of range")]
    OutOfRange(String),
}

/// A subscription with where it came from (for error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSpec {
    /// What the file says.
    pub file: SubscriptionFile,
    /// The file's name, as given to the loader.
    pub origin: String,
    /// The line of the `filter` key, when known.
    pub filter_line: Option<usize>,
}

impl SubscriptionSpec {
    /// `<subscriber>/<dataset>`: the subscription's name in logs and metrics.
    pub fn name(&self) -> String {
        format!("{}/{}", self.file.subscriber, self.file.dataset)
    }

    /// A validation error naming this subscription's file (and the filter's line).
    pub fn invalid(&self, message: impl Into<String>) -> CatalogError {
        CatalogError::Invalid {
            file: self.origin.clone(),
            line: self.filter_line,
            message: message.into(),
        }
    }
}

/// Every dataset and subscription the deployment declares.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Datasets by id.
    pub datasets: BTreeMap<DatasetId, DatasetSpec>,
    /// Subscriptions, in file-name order.
    pub subscriptions: Vec<SubscriptionSpec>,
    /// Reports over subscribers' views (`deploy/reports/*.toml`).
    pub reports: Vec<ReportSpec>,
}

const BUILTIN_DATASETS: &[(&str, &str)] = &[
    (
        "deploy/datasets/bca.residents.toml",
        include_str!("../../../deploy/datasets/bca.residents.toml"),
    ),
    (
        "deploy/datasets/moha.admin_units.toml",
        include_str!("../../../deploy/datasets/moha.admin_units.toml"),
    ),
];

const BUILTIN_SCHEMAS: &[(&str, &str)] = &[
    (
        "bca/residents.v1.avsc",
        include_str!("../../../schemas/bca/residents.v1.avsc"),
    ),
    (
        "bca/residents.v2.avsc",
        include_str!("../../../schemas/bca/residents.v2.avsc"),
    ),
    (
        "moha/admin_units.v1.avsc",
        include_str!("../../../schemas/moha/admin_units.v1.avsc"),
    ),
    (
        "moha/admin_units.v2.avsc",
        include_str!("../../../schemas/moha/admin_units.v2.avsc"),
    ),
];

const BUILTIN_SUBSCRIPTIONS: &[(&str, &str)] = &[
    (
        "deploy/subscriptions/p52.bca.residents.toml",
        include_str!("../../../deploy/subscriptions/p52.bca.residents.toml"),
    ),
    (
        "deploy/subscriptions/p92.bca.residents.toml",
        include_str!("../../../deploy/subscriptions/p92.bca.residents.toml"),
    ),
];

const BUILTIN_REPORTS: &[(&str, &str)] = &[
    (
        "deploy/reports/p52.population.toml",
        include_str!("../../../deploy/reports/p52.population.toml"),
    ),
    (
        "deploy/reports/p92.population.toml",
        include_str!("../../../deploy/reports/p92.population.toml"),
    ),
];

impl Catalog {
    /// The datasets and subscriptions shipped in this repository, compiled in
    /// (the embedded defaults of `govbus up`).
    pub fn builtin() -> Self {
        let mut c = Catalog::default();
        for (file, text) in BUILTIN_DATASETS {
            let spec = parse_dataset(file, text, |path| {
                BUILTIN_SCHEMAS
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map(|(_, s)| s.to_string())
                    .ok_or_else(|| std::io::Error::other("not built in"))
            })
            .expect("built-in dataset files are valid (tested)");
            c.datasets.insert(spec.id.clone(), spec);
        }
        c.check_lookups()
            .expect("built-in lookups name built-in datasets (tested)");
        for (file, text) in BUILTIN_SUBSCRIPTIONS {
            let s = parse_subscription(file, text).expect("built-in subscriptions are valid");
            c.subscriptions.push(s);
        }
        for (file, text) in BUILTIN_REPORTS {
            c.reports
                .push(parse_report(file, text).expect("built-in reports are valid"));
        }
        c
    }

    /// Loads `<deploy>/datasets/*.toml` (schemas relative to `schemas`) and
    /// `<deploy>/subscriptions/*.toml`.
    pub fn load(deploy: &Path, schemas: &Path) -> Result<Self, CatalogError> {
        let mut c = Catalog::default();
        for path in toml_files(&deploy.join("datasets"))? {
            let text = read(&path)?;
            let spec = parse_dataset(&path.display().to_string(), &text, |rel| {
                std::fs::read_to_string(schemas.join(rel))
            })?;
            c.datasets.insert(spec.id.clone(), spec);
        }
        c.check_lookups()?;
        c.subscriptions = load_subscriptions(&deploy.join("subscriptions"))?;
        c.reports = load_reports(&deploy.join("reports"))?;
        if let Some(e) = c.report_problems().into_iter().next() {
            return Err(e);
        }
        Ok(c)
    }

    /// Loads what [`Catalog::load`] loads, going on past bad files: the
    /// catalog of the good ones, and every problem found (for `govbus
    /// check`).
    pub fn load_all(deploy: &Path, schemas: &Path) -> (Self, Vec<CatalogError>) {
        let mut c = Catalog::default();
        let mut problems = Vec::new();
        match toml_files(&deploy.join("datasets")) {
            Ok(files) => {
                for path in files {
                    let parsed = read(&path).and_then(|text| {
                        parse_dataset(&path.display().to_string(), &text, |rel| {
                            std::fs::read_to_string(schemas.join(rel))
                        })
                    });
                    match parsed {
                        Ok(spec) => {
                            c.datasets.insert(spec.id.clone(), spec);
                        }
                        Err(e) => problems.push(e),
                    }
                }
            }
            Err(e) => problems.push(e),
        }
        problems.extend(c.lookup_problems());
        match toml_files(&deploy.join("subscriptions")) {
            Ok(files) => {
                for path in files {
                    let file = path.display().to_string();
                    match read(&path).and_then(|text| parse_subscription(&file, &text)) {
                        Ok(s) => c.subscriptions.push(s),
                        Err(e) => problems.push(e),
                    }
                }
            }
            Err(e) => problems.push(e),
        }
        problems.extend(c.subscription_problems());
        problems.extend(c.policy_problems());
        match load_reports(&deploy.join("reports")) {
            Ok(r) => c.reports = r,
            Err(e) => problems.push(e),
        }
        problems.extend(c.report_problems());
        (c, problems)
    }

    /// Checks that every dataset's `[lookups]` name a declared dataset under
    /// a name CEL can use that is neither a field of the entity nor `today`.
    pub fn check_lookups(&self) -> Result<(), CatalogError> {
        first_problem(self.lookup_problems())
    }

    /// Every problem [`Catalog::check_lookups`] would report.
    pub fn lookup_problems(&self) -> Vec<CatalogError> {
        let mut problems = Vec::new();
        for ds in self.datasets.values() {
            let file = format!("deploy/datasets/{}.toml", ds.id);
            for (name, target) in &ds.file.lookups {
                let invalid = |message: String| CatalogError::Invalid {
                    file: file.clone(),
                    line: None,
                    message,
                };
                let ident = name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !ident {
                    problems.push(invalid(format!(
                        "lookup `{name}` is not a CEL identifier (letters, digits, _)"
                    )));
                    continue;
                }
                let fields: Vec<String> =
                    serde_json::from_str::<serde_json::Value>(&ds.entity_schema)
                        .ok()
                        .and_then(|s| s["fields"].as_array().cloned())
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|f| f["name"].as_str().map(String::from))
                        .collect();
                if name == "today" || fields.iter().any(|f| f == name) {
                    problems.push(invalid(format!(
                        "lookup `{name}` hides a variable of the same name (`today` or a field)"
                    )));
                    continue;
                }
                if !self.datasets.contains_key(target) {
                    let known: Vec<String> = self.datasets.keys().map(|d| d.to_string()).collect();
                    problems.push(invalid(format!(
                        "lookup `{name}`: unknown dataset `{target}` (declared: {})",
                        known.join(", ")
                    )));
                    continue;
                }
            }
        }
        problems
    }

    /// The dataset `id`, if declared.
    pub fn dataset(&self, id: &DatasetId) -> Option<&DatasetSpec> {
        self.datasets.get(id)
    }

    /// Checks that every subscription names a declared dataset.
    pub fn check_subscriptions(&self) -> Result<(), CatalogError> {
        first_problem(self.subscription_problems())
    }

    /// Every problem [`Catalog::check_subscriptions`] would report.
    pub fn subscription_problems(&self) -> Vec<CatalogError> {
        let mut problems = Vec::new();
        for s in &self.subscriptions {
            if !self.datasets.contains_key(&s.file.dataset) {
                let known: Vec<String> = self.datasets.keys().map(|d| d.to_string()).collect();
                problems.push(CatalogError::Invalid {
                    file: s.origin.clone(),
                    line: line_of(&read_or_empty(&s.origin), "dataset"),
                    message: format!(
                        "unknown dataset `{}` (declared: {})",
                        s.file.dataset,
                        known.join(", ")
                    ),
                });
            }
        }
        problems
    }
}

impl Catalog {
    /// Refuses a subscription that breaks its dataset's tag policy
    /// ([`SubscriptionFile::tag_violations`]), naming the file, the
    /// fields and the rule: what `govbus subscriptions apply` and `check`
    /// enforce before a subscription is put in force.
    pub fn check_policy(&self) -> Result<(), CatalogError> {
        first_problem(self.policy_problems())
    }

    /// Every problem [`Catalog::check_policy`] would report.
    pub fn policy_problems(&self) -> Vec<CatalogError> {
        let mut problems = Vec::new();
        for s in &self.subscriptions {
            let Some(ds) = self.datasets.get(&s.file.dataset) else {
                continue;
            };
            let text = read_or_empty(&s.origin);
            for v in s.file.tag_violations(&ds.file) {
                problems.push(CatalogError::Invalid {
                    file: s.origin.clone(),
                    line: line_of(&text, v.key),
                    message: v.rule,
                });
            }
        }
        problems
    }

    /// The reports over `subscriber`'s views.
    pub fn reports_of<'a>(&'a self, subscriber: &'a str) -> impl Iterator<Item = &'a ReportSpec> {
        self.reports
            .iter()
            .filter(move |r| r.file.subscriber == subscriber)
    }

    /// Every report whose subscriber has no subscription to its dataset.
    pub fn report_problems(&self) -> Vec<CatalogError> {
        self.reports
            .iter()
            .filter(|r| {
                !self.subscriptions.iter().any(|s| {
                    s.file.subscriber == r.file.subscriber && s.file.dataset == r.file.dataset
                })
            })
            .map(|r| {
                r.invalid(
                    "dataset",
                    format!(
                        "{} has no subscription to {}: a report counts a subscriber's view",
                        r.file.subscriber, r.file.dataset
                    ),
                )
            })
            .collect()
    }
}

/// Loads every `*.toml` subscription file in `dir`, in name order.
pub fn load_subscriptions(dir: &Path) -> Result<Vec<SubscriptionSpec>, CatalogError> {
    let mut out = Vec::new();
    for path in toml_files(dir)? {
        let text = read(&path)?;
        out.push(parse_subscription(&path.display().to_string(), &text)?);
    }
    Ok(out)
}

fn read_or_empty(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn read(path: &Path) -> Result<String, CatalogError> {
    std::fs::read_to_string(path).map_err(|source| CatalogError::Io {
        file: path.display().to_string(),
        source,
    })
}

fn parse_dataset(
    file: &str,
    text: &str,
    load_schema: impl Fn(&str) -> std::io::Result<String>,
) -> Result<DatasetSpec, CatalogError> {
    let parsed: DatasetFile = toml::from_str(text).map_err(|e| CatalogError::Parse {
        file: file.to_string(),
        message: e.to_string(),
    })?;
    let id = DatasetId::new(&parsed.owner, &parsed.name);
    if let Err(message) = id.to_string().parse::<DatasetId>() {
        return Err(CatalogError::Invalid {
            file: file.to_string(),
            line: line_of(text, "name"),
            message,
        });
    }
    let entity_schema = load_schema(&parsed.schema).map_err(|e| CatalogError::Invalid {
        file: file.to_string(),
        line: line_of(text, "schema"),
        message: format!("cannot load schema `{}`: {e}", parsed.schema),
    })?;
    Ok(DatasetSpec {
        id,
        file: parsed,
        entity_schema,
    })
}

/// Parses one subscription file's text; `file` names it in errors.
pub fn parse_subscription(file: &str, text: &str) -> Result<SubscriptionSpec, CatalogError> {
    let parsed: SubscriptionFile = toml::from_str(text).map_err(|e| CatalogError::Parse {
        file: file.to_string(),
        message: e.to_string(),
    })?;
    if parsed.subscriber.is_empty()
        || !parsed
            .subscriber
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(CatalogError::Invalid {
            file: file.to_string(),
            line: line_of(text, "subscriber"),
            message: format!(
                "subscriber `{}` must be lowercase letters, digits or _",
                parsed.subscriber
            ),
        });
    }
    if let Err(e) = parsed.expires_ms() {
        return Err(CatalogError::Invalid {
            file: file.to_string(),
            line: line_of(text, "expires"),
            message: e.to_string(),
        });
    }
    Ok(SubscriptionSpec {
        filter_line: line_of(text, "filter"),
        file: parsed,
        origin: file.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_policy_pii_needs_a_legal_basis_and_sensitive_a_named_field() {
        let c = Catalog::builtin();
        c.check_policy().unwrap();
        let residents = &c.datasets[&"bca.residents".parse().unwrap()].file;
        let sub = |extra: &str| {
            parse_subscription(
                "s.toml",
                &format!(
                    "subscriber = \"p1\"\ndataset = \"bca.residents\"\nfilter = \"true\"\n{extra}"
                ),
            )
            .unwrap()
            .file
        };
        // Keeps PII fields and ethnicity, names nothing.
        let v = sub("").tag_violations(residents);
        assert!(
            v.iter().any(|v| v.fields.contains(&"full_name".to_string())
                && v.key == "legal_basis"
                && v.rule.contains("`full_name` (PII)")),
            "{v:?}"
        );
        assert!(
            v.iter()
                .any(|v| v.fields == ["ethnicity"] && v.key == "sensitive"),
            "{v:?}"
        );
        // A basis and reference, ethnicity named: nothing left.
        let ok = sub("legal_basis = \"b\"\nlegal_reference = \"r\"\nsensitive = [\"ethnicity\"]\n");
        assert_eq!(ok.tag_violations(residents), vec![]);
        // Dropping every tagged field needs no basis (the address record
        // drops its street with it).
        let none = sub(
            "drop = [\"full_name\", \"date_of_birth\", \"ethnicity\", \"permanent_address\"]\n",
        );
        assert_eq!(none.tag_violations(residents), vec![]);
        // In a catalog, the refusal names the file, the field and the rule.
        let mut c2 = Catalog::builtin();
        c2.subscriptions.push(SubscriptionSpec {
            file: sub("legal_basis = \"b\"\nlegal_reference = \"r\"\n"),
            origin: "deploy/subscriptions/p1.bca.residents.toml".into(),
            filter_line: None,
        });
        c2.check_subscriptions().unwrap();
        let e = c2.check_policy().unwrap_err().to_string();
        assert!(
            e.contains("p1.bca.residents.toml")
                && e.contains("`ethnicity`")
                && e.contains("sensitive = [\"ethnicity\"]"),
            "{e}"
        );
    }

    #[test]
    fn builtin_catalog_loads_and_matches_the_files() {
        let c = Catalog::builtin();
        assert!(c.dataset(&"bca.residents".parse().unwrap()).is_some());
        assert!(c.dataset(&"moha.admin_units".parse().unwrap()).is_some());
        c.check_subscriptions().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let disk = Catalog::load(&root.join("deploy"), &root.join("schemas")).unwrap();
        assert_eq!(disk.datasets.len(), c.datasets.len());
        assert_eq!(disk.subscriptions.len(), c.subscriptions.len());
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let text = "subscriber = \"p52\"\ndataset = \"bca.residents\"\nfiltr = \"true\"\n";
        let e = parse_subscription("x.toml", text).unwrap_err().to_string();
        assert!(e.contains("x.toml"), "{e}");
        assert!(e.contains("filtr"), "{e}");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn unknown_dataset_is_refused() {
        let mut c = Catalog::builtin();
        let text = "subscriber = \"p52\"\ndataset = \"bca.nope\"\nfilter = \"true\"\n";
        c.subscriptions
            .push(parse_subscription("y.toml", text).unwrap());
        let e = c.check_subscriptions().unwrap_err().to_string();
        assert!(e.contains("y.toml") && e.contains("bca.nope"), "{e}");
    }

    #[test]
    fn expiry_is_a_date_checked_at_load() {
        let ok = "subscriber = \"p1\"\ndataset = \"bca.residents\"\nfilter = \"true\"\nexpires = \"2026-12-31\"\n";
        let s = parse_subscription("a.toml", ok).unwrap();
        assert_eq!(s.file.expires_ms().unwrap(), Some(1_798_761_600_000)); // 2027-01-01T00:00Z
        let bad = ok.replace("2026-12-31", "31/12/2026");
        let e = parse_subscription("b.toml", &bad).unwrap_err().to_string();
        assert!(
            e.starts_with("b.toml:4:") && e.contains("not a date"),
            "{e}"
        );
    }

    #[test]
    fn lookups_name_declared_datasets_under_free_names() {
        let c = Catalog::builtin();
        let ds = c.dataset(&"bca.residents".parse().unwrap()).unwrap();
        assert_eq!(
            ds.file.lookups["admin_units"].to_string(),
            "moha.admin_units"
        );
        for (name, target, want) in [
            ("units", "moha.nope", "unknown dataset `moha.nope`"),
            ("full_name", "moha.admin_units", "hides a variable"),
            ("today", "moha.admin_units", "hides a variable"),
            ("2x", "moha.admin_units", "not a CEL identifier"),
        ] {
            let mut c = Catalog::builtin();
            let id: DatasetId = "bca.residents".parse().unwrap();
            let ds = c.datasets.get_mut(&id).unwrap();
            ds.file.lookups.clear();
            ds.file.lookups.insert(name.into(), target.parse().unwrap());
            let e = c.check_lookups().unwrap_err().to_string();
            assert!(e.contains("bca.residents.toml") && e.contains(want), "{e}");
        }
    }

    #[test]
    fn dataset_ids_are_checked() {
        assert!("bca.residents".parse::<DatasetId>().is_ok());
        assert!("bca".parse::<DatasetId>().is_err());
        assert!("BCA.x".parse::<DatasetId>().is_err());
    }

    #[test]
    fn a_key_that_does_nothing_is_refused() {
        // `routing` was parsed and never applied; it is gone.
        let text = format!(
            "{}routing = [\"permanent_address.province_code\"]\n",
            BUILTIN_DATASETS[0].1.split("\n[").next().unwrap()
        );
        let e = parse_dataset("d.toml", &text, |_| Ok(BUILTIN_SCHEMAS[0].1.to_string()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `routing`"), "{e}");
    }
}
