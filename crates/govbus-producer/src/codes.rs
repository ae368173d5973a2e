//! A dataset's `[[codes]]` applied to a change before its contract rules:
//! each administrative code is read on the change's date, and normalised to
//! its successor (the code as sent kept in the rule's `as_sent` field),
//! refused with the reason, or kept, as the rule says
//! ([`govbus_core::codes::judge`]).

use std::sync::Arc;

use apache_avro::types::Value as AvroValue;
use apache_avro::Schema;
use chrono::NaiveDate;
use govbus_core::admin_map::day_of_ms;
use govbus_core::catalog::{CodeAction, CodeRule, DatasetFile};
use govbus_core::codes::{judge, Verdict};
use govbus_schema::json::FieldError;

use crate::lookup::Lookup;

/// The problems of `file`'s code rules against its `entity` schema (each a
/// sentence naming the rule's field).
pub fn check(file: &DatasetFile, entity: &Schema) -> Vec<String> {
    let names = govbus_schema::names::Names::of(entity);
    let mut out = Vec::new();
    for r in &file.codes {
        let at = |what: &str, path: &str| format!("codes {}: {what} `{path}`", r.field);
        if !file.lookups.contains_key(&r.catalog) {
            out.push(format!(
                "codes {}: `catalog = \"{}\"` is not one of the dataset's [lookups]",
                r.field, r.catalog
            ));
        }
        for path in std::iter::once(&r.field)
            .chain(&r.date)
            .chain(&r.within)
            .chain(&r.as_sent)
        {
            let parts: Vec<String> = path.split('.').map(str::to_string).collect();
            if let Err(e) = govbus_schema::cel::check_field(entity, &names, &parts) {
                out.push(format!("{}: {e}", at("field", path)));
            }
        }
        if let Some(level) = r.level.as_deref() {
            if !["PROVINCE", "DISTRICT", "COMMUNE"].contains(&level) {
                out.push(format!(
                    "codes {}: `level = \"{level}\"` is not PROVINCE, DISTRICT or COMMUNE",
                    r.field
                ));
            }
        }
        for (what, action) in [("split", r.split), ("unknown", r.unknown)] {
            if action == CodeAction::Normalise {
                out.push(format!(
                    "codes {}: `{what} = \"normalise\"` has no single successor to normalise to; use refuse or keep",
                    r.field
                ));
            }
        }
    }
    out
}

/// Cleans the codes of `entity` (received on `received`) under `rules`,
/// each with the lookup holding its map; the refusals, one per code.
pub fn clean(
    rules: &[(CodeRule, Arc<Lookup>)],
    entity: &mut AvroValue,
    received: NaiveDate,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (rule, lookup) in rules {
        let Some(code) = text_at(entity, &rule.field) else {
            continue; // null or absent: the schema and rules say whether that is allowed
        };
        let Some(map) = lookup.admin_map() else {
            errors.push(FieldError {
                field: rule.field.clone(),
                problem: format!(
                    "the administrative map ({}) is not held; the code cannot be checked",
                    lookup.dataset()
                ),
            });
            continue;
        };
        let day = rule
            .date
            .as_deref()
            .and_then(|f| day_at(entity, f))
            .unwrap_or(received);
        let within = rule.within.as_deref().and_then(|w| text_at(entity, w));
        match judge(&map, rule, &code, day, within.as_deref()) {
            Verdict::Keep => {}
            Verdict::Normalise { to, name } => {
                tracing::debug!(field = rule.field, from = code, to, name, %day, "code normalised");
                metrics::counter!("govbus_codes_normalised_total", "field" => rule.field.clone())
                    .increment(1);
                set_text(entity, &rule.field, &to);
                if let Some(keep) = &rule.as_sent {
                    set_text(entity, keep, &code);
                }
            }
            Verdict::Refuse(why) => errors.push(FieldError {
                field: rule.field.clone(),
                // `rule codes`: counted and dead-lettered under that name.
                problem: format!("rule codes: {why}"),
            }),
        }
    }
    errors
}

/// The value at a dotted path (through records and unions).
fn at<'v>(v: &'v AvroValue, path: &str) -> Option<&'v AvroValue> {
    let mut cur = v;
    for part in path.split('.') {
        cur = unwrap(cur);
        let AvroValue::Record(fields) = cur else {
            return None;
        };
        cur = &fields.iter().find(|(k, _)| k == part)?.1;
    }
    Some(unwrap(cur))
}

fn unwrap(v: &AvroValue) -> &AvroValue {
    match v {
        AvroValue::Union(_, inner) => unwrap(inner),
        other => other,
    }
}

fn text_at(v: &AvroValue, path: &str) -> Option<String> {
    match at(v, path)? {
        AvroValue::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// The day a date or timestamp field holds (a timestamp read in Vietnam's time).
fn day_at(v: &AvroValue, path: &str) -> Option<NaiveDate> {
    match at(v, path)? {
        AvroValue::Date(days) => NaiveDate::from_ymd_opt(1970, 1, 1)?
            .checked_add_signed(chrono::Duration::days(i64::from(*days))),
        AvroValue::TimestampMillis(ms) | AvroValue::Long(ms) => Some(day_of_ms(*ms)),
        AvroValue::TimestampMicros(us) => Some(day_of_ms(us / 1000)),
        AvroValue::String(s) => s.get(..10)?.parse().ok(),
        _ => None,
    }
}

/// Sets the string at a dotted path (a `["null", "string"]` union takes its
/// string branch); nothing when the path is absent.
fn set_text(v: &mut AvroValue, path: &str, text: &str) {
    let mut cur = v;
    for part in path.split('.') {
        if let AvroValue::Union(_, inner) = cur {
            cur = inner.as_mut();
        }
        let AvroValue::Record(fields) = cur else {
            return;
        };
        let Some((_, next)) = fields.iter_mut().find(|(k, _)| k == part) else {
            return;
        };
        cur = next;
    }
    *cur = match cur {
        AvroValue::Union(..) => AvroValue::Union(1, Box::new(AvroValue::String(text.into()))),
        _ => AvroValue::String(text.into()),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_read_and_written_at_their_paths() {
        let mut v = AvroValue::Record(vec![
            (
                "permanent_address".into(),
                AvroValue::Record(vec![
                    ("commune_code".into(), AvroValue::String("31234".into())),
                    (
                        "commune_code_as_sent".into(),
                        AvroValue::Union(0, Box::new(AvroValue::Null)),
                    ),
                ]),
            ),
            (
                "updated_at".into(),
                AvroValue::TimestampMillis(1_751_302_800_000),
            ),
            ("born".into(), AvroValue::Date(1)),
        ]);
        assert_eq!(
            text_at(&v, "permanent_address.commune_code").as_deref(),
            Some("31234")
        );
        assert_eq!(text_at(&v, "permanent_address.commune_code_as_sent"), None);
        set_text(&mut v, "permanent_address.commune_code_as_sent", "31234");
        set_text(&mut v, "permanent_address.commune_code", "92001");
        set_text(&mut v, "permanent_address.nothing", "x");
        assert_eq!(
            text_at(&v, "permanent_address.commune_code").as_deref(),
            Some("92001")
        );
        assert_eq!(
            text_at(&v, "permanent_address.commune_code_as_sent").as_deref(),
            Some("31234")
        );
        // 2025-06-30 17:00 UTC is 1 July in Vietnam.
        assert_eq!(day_at(&v, "updated_at").unwrap().to_string(), "2025-07-01");
        assert_eq!(day_at(&v, "born").unwrap().to_string(), "1970-01-02");
    }

    #[test]
    fn code_rules_that_cannot_work_are_named_at_load() {
        let c = govbus_core::Catalog::builtin();
        let ds = c.dataset(&"bca.residents".parse().unwrap()).unwrap();
        let entity = Schema::parse_str(&ds.entity_schema).unwrap();
        assert_eq!(check(&ds.file, &entity), Vec::<String>::new());
        let mut file = ds.file.clone();
        file.codes[0].catalog = "units".into();
        file.codes[0].split = CodeAction::Normalise;
        file.codes[1].level = Some("COMUNE".into());
        file.codes[1].as_sent = Some("permanent_address.kept".into());
        let problems = check(&file, &entity);
        assert_eq!(problems.len(), 4, "{problems:#?}");
        for needle in [
            "[lookups]",
            "split = \"normalise\"",
            "COMUNE",
            "permanent_address.kept",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "{needle}: {problems:#?}"
            );
        }
    }
}
