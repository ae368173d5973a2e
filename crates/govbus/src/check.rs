//! `govbus check deploy/`: everything in `deploy/` validated in one pass —
//! datasets against their schemas, their contract rules, lookups,
//! subscriptions (files, datasets, filters) and agency files — printing
//! every problem with its file and line, not just the first.

use std::path::Path;

use govbus_core::catalog::line_of;
use govbus_core::CatalogError;

use crate::config::GovbusConfig;

/// One problem: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// `file:line` (or `file` when the line is not known).
    pub(crate) at: String,
    /// What is wrong.
    pub(crate) message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

fn at(file: &str, line: Option<usize>) -> String {
    match line {
        Some(l) => format!("{file}:{l}"),
        None => file.to_string(),
    }
}

fn from_catalog(e: &CatalogError) -> Problem {
    match e {
        CatalogError::Io { file, source } => Problem {
            at: file.clone(),
            message: format!("cannot read: {source}"),
        },
        CatalogError::Parse { file, message } => {
            // toml's messages carry "at line N, column M".
            let line = message
                .split("line ")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok());
            Problem {
                at: at(file, line),
                message: message.lines().next().unwrap_or_default().to_string(),
            }
        }
        CatalogError::Invalid {
            file,
            line,
            message,
        } => Problem {
            at: at(file, *line),
            message: message.clone(),
        },
    }
}

/// The line of a dataset file a contract problem is about: a `[[codes]]`
/// block's `field` line for `codes FIELD: …`, a rule's `name` line for
/// one naming a rule, the `[lookups]` entry for a lookup.
fn problem_line(
    text: &str,
    ds: &govbus_core::catalog::DatasetSpec,
    message: &str,
) -> Option<usize> {
    // `<owner.name>: codes FIELD: …` or `codes FIELD: …`.
    let tail = message.split_once(": ").map_or(message, |(_, t)| t);
    if let Some(field) = tail
        .strip_prefix("codes ")
        .or_else(|| message.strip_prefix("codes "))
        .and_then(|r| r.split(':').next())
    {
        let mut in_codes = false;
        for (i, l) in text.lines().enumerate() {
            let l = l.trim();
            if l.starts_with('[') {
                in_codes = l == "[[codes]]";
            } else if in_codes
                && l.starts_with("field")
                && l.split_once('=')
                    .is_some_and(|(_, v)| v.trim().trim_matches('"') == field)
            {
                return Some(i + 1);
            }
        }
    }
    if let Some(name) = tail
        .strip_prefix("lookup ")
        .and_then(|r| r.split(':').next())
    {
        return line_of(text, name);
    }
    ds.file
        .rules
        .iter()
        .find(|r| message.contains(&r.name))
        .and_then(|r| {
            text.lines()
                .position(|l| l.contains(&format!("\"{}\"", r.name)))
                .map(|n| n + 1)
        })
        .or_else(|| line_of(text, "schema"))
}

/// Every problem in `deploy` (schemas under `schemas`), and what was
/// checked.
pub(crate) fn check(deploy: &Path, schemas: &Path) -> (Vec<Problem>, String) {
    let (catalog, errors) = govbus_core::Catalog::load_all(deploy, schemas);
    let mut problems: Vec<Problem> = errors.iter().map(from_catalog).collect();
    // Contract rules, each against its dataset's schema and lookups.
    let mut rules = 0;
    for ds in catalog.datasets.values() {
        let file = deploy.join("datasets").join(format!("{}.toml", ds.id));
        let file = file.display().to_string();
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let (entity, compiled) = govbus_producer::publisher::compile_rules(&catalog, ds);
        if let Err(e) = entity {
            problems.push(Problem {
                at: at(&file, line_of(&text, "schema")),
                message: e.to_string(),
            });
        }
        rules += ds.file.rules.len();
        for e in compiled.iter().filter_map(|r| r.as_ref().err()) {
            let message = e.to_string();
            problems.push(Problem {
                at: at(&file, problem_line(&text, ds, &message)),
                message,
            });
        }
    }
    // Each subscription's filter and drops against its dataset, every
    // problem of each.
    for s in catalog
        .subscriptions
        .iter()
        .filter(|s| catalog.dataset(&s.file.dataset).is_some())
    {
        problems.extend(
            govbus_router::views::spec_problems(&catalog, s)
                .iter()
                .map(from_catalog),
        );
    }
    // Agency files, as any agent would read them (no environment).
    let mut agencies = 0;
    if let Ok(entries) = std::fs::read_dir(deploy.join("agencies")) {
        let mut files: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        for f in files {
            agencies += 1;
            if let Err(e) = GovbusConfig::load_from(Some(&f), None, &[]) {
                let message = format!("{e:#}");
                // "invalid configuration at `x` (set by FILE:LINE): …"
                let place = message
                    .split("set by ")
                    .nth(1)
                    .and_then(|r| r.split(')').next())
                    .filter(|p| p.starts_with(&f.display().to_string()))
                    .map(str::to_string);
                problems.push(Problem {
                    at: place.unwrap_or_else(|| f.display().to_string()),
                    message,
                });
            }
        }
    }
    let summary = format!(
        "{} datasets, {} rules, {} subscriptions, {} agency files",
        catalog.datasets.len(),
        rules,
        catalog.subscriptions.len(),
        agencies
    );
    (problems, summary)
}

/// `govbus check DEPLOY`: prints every problem; fails if there is one.
pub(crate) fn run(deploy: &Path, schemas: &Path) -> anyhow::Result<()> {
    let (problems, summary) = check(deploy, schemas);
    for p in &problems {
        println!("{p}");
    }
    if problems.is_empty() {
        println!("ok: {summary}");
        Ok(())
    } else {
        anyhow::bail!(
            "{} problem{} in {} ({summary})",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            deploy.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    #[test]
    fn the_shipped_deploy_directory_is_valid() {
        let (problems, summary) = check(&repo().join("deploy"), &repo().join("schemas"));
        assert!(problems.is_empty(), "{problems:#?}");
        assert!(summary.contains("subscriptions"), "{summary}");
    }

    #[test]
    fn every_problem_is_reported_with_its_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["datasets", "subscriptions", "agencies"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let shipped = repo().join("deploy");
        for f in ["bca.residents.toml", "moha.admin_units.toml"] {
            std::fs::copy(shipped.join("datasets").join(f), d.join("datasets").join(f)).unwrap();
        }
        // A rule reading a field that does not exist.
        let mut bca = std::fs::read_to_string(d.join("datasets/bca.residents.toml")).unwrap();
        bca.push_str("\n[[rules]]\nname = \"nonsense\"\nfield = \"x\"\nexpr = 'no_such_field == 1'\nmessage = \"m\"\n");
        // A code rule with a level that does not exist, and a rule whose
        // literal is not a symbol of the field's enum.
        bca.push_str("\n[[codes]]\nfield = \"permanent_address.street\"\ncatalog = \"admin_units\"\nlevel = \"REGION\"\n");
        bca.push_str("\n[[rules]]\nname = \"sexes\"\nfield = \"sex\"\nexpr = 'sex != \"F\"'\nmessage = \"m\"\n");
        std::fs::write(d.join("datasets/bca.residents.toml"), bca).unwrap();
        // A subscription whose filter reads an unknown field, one for an
        // unknown dataset, and one that is not TOML.
        std::fs::write(
            d.join("subscriptions/p01.toml"),
            "subscriber = \"p01\"\ndataset = \"bca.residents\"\nfilter = 'nowhere == \"01\"'\nlegal_basis = \"t\"\n",
        )
        .unwrap();
        std::fs::write(
            d.join("subscriptions/p02.toml"),
            "subscriber = \"p02\"\ndataset = \"bca.nobody\"\nfilter = 'true'\nlegal_basis = \"t\"\n",
        )
        .unwrap();
        std::fs::write(d.join("subscriptions/p03.toml"), "subscriber = \n").unwrap();
        // A filter comparing an enum with a symbol it does not have, and a
        // wrong drop in the same file: both reported.
        std::fs::write(
            d.join("subscriptions/p04.toml"),
            "subscriber = \"p04\"\ndataset = \"bca.residents\"\nfilter = 'sex == \"FEMAL\"'\nlegal_basis = \"t\"\nlegal_reference = \"r\"\ndrop = [\"full_name\", \"date_of_birth\", \"ethnicity\", \"permanent_address.stret\"]\n",
        )
        .unwrap();
        // An agency file with an unknown key.
        std::fs::write(
            d.join("agencies/x.toml"),
            "[router]\nregistry = \"http://r\"\nbatchsize = 1\n[router.kafka]\nbootstrap = \"k\"\n",
        )
        .unwrap();
        let (problems, _) = check(d, &repo().join("schemas"));
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let has =
            |file: &str, what: &str| text.iter().any(|p| p.contains(file) && p.contains(what));
        assert!(has("bca.residents.toml:", "nonsense"), "{text:#?}");
        assert!(has("p01.toml:3", "nowhere"), "{text:#?}");
        assert!(has("p02.toml:2", "bca.nobody"), "{text:#?}");
        assert!(has("p03.toml:1", ""), "{text:#?}");
        assert!(has("x.toml:3", "batchsize"), "{text:#?}");
        let codes_line = std::fs::read_to_string(d.join("datasets/bca.residents.toml"))
            .unwrap()
            .lines()
            .position(|l| l.contains("REGION"))
            .unwrap()
            - 1;
        assert!(
            has(
                &format!("bca.residents.toml:{codes_line}"),
                "`level = \"REGION\"`"
            ),
            "{text:#?}"
        );
        assert!(
            has("bca.residents.toml:", "\"F\" (not a symbol of Sex"),
            "{text:#?}"
        );
        assert!(
            has("p04.toml:3", "\"FEMAL\" (not a symbol of Sex"),
            "{text:#?}"
        );
        assert!(has("p04.toml:6", "permanent_address.stret"), "{text:#?}");
        // p01 keeps PII and SENSITIVE fields with a basis but no reference,
        // and does not name ethnicity.
        assert!(
            has("p01.toml", "must name its `legal_reference`"),
            "{text:#?}"
        );
        assert!(has("p01.toml", "sensitive = [\"ethnicity\"]"), "{text:#?}");
        assert_eq!(problems.len(), 11, "{text:#?}");
    }
}
