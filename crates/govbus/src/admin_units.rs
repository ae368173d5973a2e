//! `govbus admin-units export|load`: the real administrative map, with its
//! history, as `moha.admin_units` rows (one per code: its latest meaning and
//! the earlier ones), built from the reference data shipped in
//! `data/vn-admin-units/` (compiled in; `--data` reads another copy).

use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use govbus_core::admin_map::{AdminMap, Finding, Level};

/// The reference data compiled into this binary.
const CONVERSION: &str = govbus_core::admin_map::REFERENCE.0;
const BEFORE: &str = govbus_core::admin_map::REFERENCE.1;

/// The map, from `data` (a directory holding the two reference files) or
/// the copy compiled in.
fn map(data: Option<&Path>) -> anyhow::Result<(AdminMap, Vec<Finding>)> {
    let (conversion, before): (Cow<'_, str>, Cow<'_, str>) = match data {
        Some(d) => {
            let read = |f: &str| {
                std::fs::read_to_string(d.join(f))
                    .with_context(|| format!("reading {}", d.join(f).display()))
            };
            (
                read("conversion-2025-07-01.csv")?.into(),
                read("communes-before-2025-07-01.csv")?.into(),
            )
        }
        None => (CONVERSION.into(), BEFORE.into()),
    };
    Ok(AdminMap::from_reference(&conversion, &before)?)
}

/// What the map holds, in one line per era, and what needed a decision.
pub(crate) fn summary(m: &AdminMap, findings: &[Finding]) -> String {
    let before = govbus_core::admin_map::reform_day()
        .pred_opt()
        .expect("a date");
    let after = govbus_core::admin_map::reform_day();
    let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
    for f in findings {
        *kinds
            .entry(match f {
                Finding::OldProvinceMislabelled { .. } => {
                    "old province mislabelled (the list before wins)"
                }
                Finding::OnlyInConversion(_) => "old commune only in the conversion table",
                Finding::NoSuccessor(_) => "old commune with no successor (dissolved earlier)",
                Finding::Duplicate(_) => "code listed twice",
                Finding::NoPredecessor(_) => "new commune from an area with no code",
            })
            .or_default() += 1;
    }
    let mut out = format!(
        "{} codes\n  on {before}: {} provinces, {} districts, {} communes\n  on {after}: {} provinces, {} communes\n",
        m.iter().count(),
        m.count(Level::Province, before),
        m.count(Level::District, before),
        m.count(Level::Commune, before),
        m.count(Level::Province, after),
        m.count(Level::Commune, after),
    );
    for (k, n) in kinds {
        out.push_str(&format!("  {n} {k}\n"));
    }
    out
}

/// Writes every row, one JSON object per line.
fn write_rows(m: &AdminMap, out: &mut dyn Write) -> anyhow::Result<usize> {
    let mut n = 0;
    for row in m.rows() {
        serde_json::to_writer(&mut *out, &row)?;
        out.write_all(b"\n")?;
        n += 1;
    }
    out.flush()?;
    Ok(n)
}

/// `govbus admin-units export`: the rows as JSON lines to `out` (or
/// standard output), the summary to standard error.
pub(crate) fn export(data: Option<&Path>, out: Option<&Path>) -> anyhow::Result<()> {
    let (m, findings) = map(data)?;
    let n = match out {
        Some(p) => write_rows(
            &m,
            &mut std::io::BufWriter::new(
                std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
            ),
        )?,
        None => write_rows(&m, &mut std::io::stdout().lock())?,
    };
    eprint!("{}", summary(&m, &findings));
    eprintln!("{n} rows written");
    Ok(())
}

/// `govbus admin-units load`: the rows written to a file named after their
/// content (so that a second run resumes the first), then published like
/// `govbus publish --file`: resumably, exactly once, with progress.
pub(crate) async fn load(config: Option<&Path>, data: Option<&Path>) -> anyhow::Result<()> {
    let (m, findings) = map(data)?;
    eprint!("{}", summary(&m, &findings));
    let mut bytes = Vec::new();
    write_rows(&m, &mut bytes)?;
    let path = rows_file(&bytes);
    if std::fs::read(&path).ok().as_deref() != Some(bytes.as_slice()) {
        std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    crate::agents::publish_file(config, path, "moha.admin_units".into()).await
}

/// Where `load` keeps the rows: the temporary directory, named by their
/// length and a hash of their content.
fn rows_file(bytes: &[u8]) -> PathBuf {
    // FNV-1a: stable across builds and platforms.
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    std::env::temp_dir().join(format!(
        "govbus-moha.admin_units-{}-{hash:016x}.jsonl",
        bytes.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_a_valid_admin_unit_of_the_shipped_schema() {
        let (m, findings) = map(None).unwrap();
        let schema = apache_avro::Schema::parse_str(include_str!(
            "../../../schemas/moha/admin_units.v2.avsc"
        ))
        .unwrap();
        let mut n = 0;
        for row in m.rows() {
            govbus_schema::json::to_avro(&schema, &row).unwrap_or_else(|e| panic!("{row}: {e:?}"));
            n += 1;
        }
        assert_eq!(n, 10_825, "one row per code");
        let s = summary(&m, &findings);
        assert!(
            s.contains("provinces, 696 districts, 10061 communes\n"),
            "{s}"
        );
        assert!(s.contains("34 provinces, 3321 communes\n"), "{s}");
        assert!(
            s.contains("28 old commune with no successor (dissolved earlier)"),
            "{s}"
        );
    }

    #[test]
    fn the_rows_file_is_named_by_its_content() {
        assert_eq!(rows_file(b"a"), rows_file(b"a"));
        assert_ne!(rows_file(b"a"), rows_file(b"b"));
    }
}
