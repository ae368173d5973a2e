//! What a record may ask of a decoder: bounded allocation, bounded depth,
//! and values of logical types within the range govbus can represent.
//!
//! apache-avro reserves what a length prefix claims before it reads the
//! items, so a 10-byte record can ask for gigabytes. Every decode goes
//! through [`ensure`] first, which sets apache-avro's process-wide
//! allocation limit (an agent sets its configured value at start with
//! [`set_max_allocation_bytes`]; the first call wins). A writer schema is
//! decoded with only when [`check_bounded`] accepts it: no recursive type
//! (so a value's depth is the schema's), and no array whose items may take
//! zero bytes (an `array<null>` claims millions of items per byte of input).
//! Dates and timestamps are checked against [`MIN_DATE_DAYS`]..=
//! [`MAX_DATE_DAYS`] (years 1 to 9999) wherever they enter.

use std::collections::HashSet;

use apache_avro::schema::Name;
use apache_avro::types::Value;
use apache_avro::Schema;

use crate::names::Names;

/// The default limit of one allocation a decoded record may ask for: 4 MiB,
/// above Kafka's default largest record (1 MiB).
pub const DEFAULT_MAX_ALLOCATION_BYTES: usize = 4 << 20;

/// 0001-01-01 in days since 1970-01-01.
pub const MIN_DATE_DAYS: i64 = -719_162;
/// 9999-12-31 in days since 1970-01-01.
pub const MAX_DATE_DAYS: i64 = 2_932_896;
/// 0001-01-01T00:00:00Z in milliseconds since the epoch.
pub const MIN_TIMESTAMP_MS: i64 = MIN_DATE_DAYS * 86_400_000;
/// 9999-12-31T23:59:59.999Z in milliseconds since the epoch.
pub const MAX_TIMESTAMP_MS: i64 = (MAX_DATE_DAYS + 1) * 86_400_000 - 1;

/// Sets the largest allocation a decoded record may ask for, process-wide;
/// answers the limit in force (only the first call of the process sets it).
pub fn set_max_allocation_bytes(bytes: usize) -> usize {
    apache_avro::max_allocation_bytes(bytes)
}

/// Makes sure a limit is set (the default, if the agent set none) before
/// anything decodes.
pub fn ensure() -> usize {
    apache_avro::max_allocation_bytes(DEFAULT_MAX_ALLOCATION_BYTES)
}

/// Why a schema may not be decoded with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unbounded {
    /// A named type contains itself.
    #[error("type {0} is recursive: a record could nest without bound")]
    Recursive(String),
    /// An array whose items may be encoded in no bytes.
    #[error("array at {0} has items of zero bytes: a record could claim items without bound")]
    ZeroSizeItems(String),
}

/// Whether values of `schema` take bytes of input in proportion to what
/// they allocate, and nest no deeper than the schema.
pub fn check_bounded(schema: &Schema) -> Result<(), Unbounded> {
    let names = Names::of(schema);
    let mut open = HashSet::new();
    walk(schema, &names, &mut open, "$")
}

fn walk<'s>(
    s: &'s Schema,
    names: &'s Names,
    open: &mut HashSet<&'s Name>,
    path: &str,
) -> Result<(), Unbounded> {
    match s {
        Schema::Ref { name } => {
            if open.contains(name) {
                return Err(Unbounded::Recursive(name.to_string()));
            }
            match names.get(name) {
                Some(t) => walk(t, names, open, path),
                None => Ok(()),
            }
        }
        Schema::Record(r) => {
            if !open.insert(&r.name) {
                return Err(Unbounded::Recursive(r.name.to_string()));
            }
            for f in &r.fields {
                walk(&f.schema, names, open, &format!("{path}.{}", f.name))?;
            }
            open.remove(&r.name);
            Ok(())
        }
        Schema::Array(a) => {
            let items = format!("{path}[]");
            if zero_size(&a.items, names, &mut HashSet::new()) {
                return Err(Unbounded::ZeroSizeItems(path.to_string()));
            }
            walk(&a.items, names, open, &items)
        }
        Schema::Map(m) => walk(&m.types, names, open, &format!("{path}{{}}")),
        Schema::Union(u) => u
            .variants()
            .iter()
            .try_for_each(|v| walk(v, names, open, path)),
        Schema::Decimal(d) => walk(&d.inner, names, open, path),
        _ => Ok(()),
    }
}

/// Whether some value of `s` is encoded in zero bytes.
fn zero_size<'s>(s: &'s Schema, names: &'s Names, seen: &mut HashSet<&'s Name>) -> bool {
    match s {
        Schema::Null => true,
        Schema::Fixed(f) => f.size == 0,
        Schema::Record(r) => {
            // A recursive record is refused by `walk`; here it is not zero.
            if !seen.insert(&r.name) {
                return false;
            }
            r.fields.iter().all(|f| zero_size(&f.schema, names, seen))
        }
        Schema::Ref { name } => names.get(name).is_some_and(|t| zero_size(t, names, seen)),
        Schema::Decimal(d) => zero_size(&d.inner, names, seen),
        _ => false,
    }
}

/// A value of a logical type out of the range govbus represents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct OutOfRange {
    /// Dotted path of the field.
    pub field: String,
    /// What is wrong, with the range.
    pub problem: String,
}

/// The problem with a date of `days` since 1970-01-01, if out of range.
pub fn date_problem(days: i64) -> Option<String> {
    (!(MIN_DATE_DAYS..=MAX_DATE_DAYS).contains(&days)).then(|| {
        format!(
            "date {days} (days since 1970-01-01) is out of range: dates run from \
             0001-01-01 ({MIN_DATE_DAYS}) to 9999-12-31 ({MAX_DATE_DAYS})"
        )
    })
}

/// The problem with a timestamp of `ms` since the epoch, if out of range.
pub fn timestamp_problem(ms: i64) -> Option<String> {
    (!(MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&ms)).then(|| {
        format!(
            "timestamp {ms} (ms since the epoch) is out of range: timestamps run from \
             0001-01-01T00:00:00Z ({MIN_TIMESTAMP_MS}) to 9999-12-31T23:59:59.999Z ({MAX_TIMESTAMP_MS})"
        )
    })
}

/// Checks every date and timestamp in `v`; the first out of range, named
/// by its path under `path`.
pub fn check_ranges(v: &Value, path: &str) -> Result<(), OutOfRange> {
    // Every decoded record is checked: its paths are built only when one
    // of its values is out of range.
    if in_range(v) {
        return Ok(());
    }
    locate(v, path)
}

/// Whether every date and timestamp in `v` is in range.
fn in_range(v: &Value) -> bool {
    match v {
        Value::Date(d) => (MIN_DATE_DAYS..=MAX_DATE_DAYS).contains(&i64::from(*d)),
        Value::TimestampMillis(ms) | Value::LocalTimestampMillis(ms) => {
            (MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(ms)
        }
        Value::TimestampMicros(us) | Value::LocalTimestampMicros(us) => {
            (MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&us.div_euclid(1_000))
        }
        Value::TimestampNanos(ns) | Value::LocalTimestampNanos(ns) => {
            (MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&ns.div_euclid(1_000_000))
        }
        Value::Union(_, b) => in_range(b),
        Value::Array(items) => items.iter().all(in_range),
        Value::Map(m) => m.values().all(in_range),
        Value::Record(fields) => fields.iter().all(|(_, x)| in_range(x)),
        _ => true,
    }
}

/// [`check_ranges`] with the path of the value out of range.
fn locate(v: &Value, path: &str) -> Result<(), OutOfRange> {
    let bad = |problem: String| OutOfRange {
        field: if path.is_empty() {
            "$".into()
        } else {
            path.to_string()
        },
        problem,
    };
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        Value::Date(d) => date_problem(i64::from(*d)).map_or(Ok(()), |p| Err(bad(p))),
        Value::TimestampMillis(ms) | Value::LocalTimestampMillis(ms) => {
            timestamp_problem(*ms).map_or(Ok(()), |p| Err(bad(p)))
        }
        Value::TimestampMicros(us) | Value::LocalTimestampMicros(us) => {
            timestamp_problem(us.div_euclid(1_000)).map_or(Ok(()), |p| Err(bad(p)))
        }
        Value::TimestampNanos(ns) | Value::LocalTimestampNanos(ns) => {
            timestamp_problem(ns.div_euclid(1_000_000)).map_or(Ok(()), |p| Err(bad(p)))
        }
        Value::Union(_, b) => locate(b, path),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, x)| locate(x, &format!("{path}[{i}]"))),
        Value::Map(m) => m.iter().try_for_each(|(k, x)| locate(x, &join(k))),
        Value::Record(fields) => fields.iter().try_for_each(|(k, x)| locate(x, &join(k))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Schema {
        Schema::parse_str(s).unwrap()
    }

    #[test]
    fn the_poison_schema_and_recursion_are_refused() {
        for (s, want) in [
            (r#"{"type":"array","items":"null"}"#, "zero bytes"),
            (
                r#"{"type":"record","name":"R","fields":[{"name":"a","type":{"type":"array","items":{"type":"record","name":"E","fields":[]}}}]}"#,
                "zero bytes",
            ),
            (
                r#"{"type":"array","items":{"type":"fixed","name":"F","size":0}}"#,
                "zero bytes",
            ),
            (
                r#"{"type":"record","name":"L","fields":[{"name":"next","type":["null","L"]}]}"#,
                "recursive",
            ),
        ] {
            let e = check_bounded(&parse(s)).unwrap_err().to_string();
            assert!(e.contains(want), "{s}: {e}");
        }
    }

    #[test]
    fn the_datasets_schemas_are_bounded() {
        for s in [
            include_str!("../../../schemas/bca/residents.v2.avsc"),
            include_str!("../../../schemas/moha/admin_units.v2.avsc"),
            r#"{"type":"array","items":["null","string"]}"#,
            r#"{"type":"map","values":"null"}"#,
        ] {
            check_bounded(&parse(s)).unwrap();
            let env = crate::envelope::envelope_schema(s);
            if let Ok(env) = env {
                check_bounded(&parse(&env)).unwrap();
            }
        }
    }

    #[test]
    fn the_range_ends_are_the_calendar_ends() {
        let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        let first = chrono::NaiveDate::from_ymd_opt(1, 1, 1).unwrap();
        let last = chrono::NaiveDate::from_ymd_opt(9999, 12, 31).unwrap();
        assert_eq!((first - epoch).num_days(), MIN_DATE_DAYS);
        assert_eq!((last - epoch).num_days(), MAX_DATE_DAYS);
        assert!(date_problem(MAX_DATE_DAYS).is_none());
        assert!(date_problem(2_000_000_000).unwrap().contains("9999-12-31"));
        assert!(timestamp_problem(MAX_TIMESTAMP_MS + 1).is_some());
        let v = Value::Record(vec![(
            "a".into(),
            Value::Union(1, Box::new(Value::Date(i32::MAX))),
        )]);
        assert_eq!(check_ranges(&v, "").unwrap_err().field, "a");
    }

    #[test]
    fn a_value_out_of_range_deep_in_a_record_is_found_and_named() {
        let day = |d: i32| Value::Date(d);
        let record = |dates: Vec<Value>, ts: i64| {
            Value::Record(vec![
                ("name".into(), Value::String("x".into())),
                (
                    "kids".into(),
                    Value::Array(vec![Value::Record(vec![(
                        "born".into(),
                        Value::Array(dates),
                    )])]),
                ),
                ("at".into(), Value::TimestampMicros(ts)),
            ])
        };
        assert!(check_ranges(&record(vec![day(0), day(MAX_DATE_DAYS as i32)], 0), "after").is_ok());
        let e = check_ranges(&record(vec![day(0), day(i32::MAX)], 0), "after").unwrap_err();
        assert_eq!(e.field, "after.kids[0].born[1]");
        let e = check_ranges(&record(vec![], i64::MAX), "after").unwrap_err();
        assert_eq!(e.field, "after.at");
    }
}
