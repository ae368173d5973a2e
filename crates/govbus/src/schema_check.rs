//! `govbus schema check`: for an agency's CI. Compares every dataset schema
//! under `schemas/` with what the registry holds (or with a git revision)
//! and fails, explaining which change breaks which rule.

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use govbus_core::{Catalog, Topics};
use govbus_schema::{Compatibility, RegistryClient, RegistryError, Schema};

/// What the schemas are compared with.
pub(crate) enum Against {
    /// The registry at this URL (the subjects' levels in force).
    Registry(String),
    /// The same files at this git revision (BACKWARD).
    Git(String),
}

pub(crate) fn run(
    deploy: &Path,
    schemas: &Path,
    prefix: &str,
    against: &Against,
    live: Option<&Path>,
) -> anyhow::Result<()> {
    let mut catalog = Catalog::load(deploy, schemas)?;
    let mut prefix = prefix.to_string();
    // With a config, the subscriptions in force are the control topic's
    // (what `govbus subscriptions apply` wrote), not the files'.
    if let Some(file) = live {
        let cfg =
            crate::config::GovbusConfig::load(Some(file), Some(crate::config::Agent::Router))?;
        let r = crate::config::GovbusConfig::section(&cfg.router, "router", Some(file))?;
        prefix = r.topic_prefix.clone();
        let topic = Topics::new(&prefix).subscriptions();
        let set = govbus_router::control::read(&r.kafka, &topic)?;
        catalog.subscriptions = set
            .values()
            .filter_map(|v| v.active())
            .map(|f| govbus_core::catalog::SubscriptionSpec {
                file: f.clone(),
                origin: topic.clone(),
                filter_line: None,
            })
            .collect();
        println!(
            "subscriptions in force: {} (from {topic})",
            catalog.subscriptions.len()
        );
    }
    let topics = Topics::new(&prefix);
    let mut failed = 0;
    for ds in catalog.datasets.values() {
        let file = schemas.join(&ds.file.schema);
        let new = govbus_schema::parse(&ds.entity_schema)
            .with_context(|| format!("{}", file.display()))?;
        let subject = govbus_core::topics::value_subject(&topics.central(&ds.id, ds.file.major));
        let (old, level, what) = match against {
            Against::Registry(url) => {
                let client = RegistryClient::new(url);
                match client.latest(&subject) {
                    Ok(v) => {
                        let env = govbus_schema::parse(&v.schema)?;
                        let old = govbus_router::guard::entity_of_envelope(&env)
                            .context("the registered schema is not a change envelope")?;
                        let level = client.level(&subject).unwrap_or_default();
                        (Some(old), level, format!("{subject} version {}", v.version))
                    }
                    Err(RegistryError::Api { status: 404, .. }) => {
                        (None, Compatibility::Backward, subject.clone())
                    }
                    Err(e) => return Err(e).context(format!("reading {subject}")),
                }
            }
            Against::Git(rev) => {
                let out = Command::new("git")
                    .arg("show")
                    .arg(format!("{rev}:./{}", file.display()))
                    .output()
                    .context("running git")?;
                let old = if out.status.success() {
                    Some(govbus_schema::parse(&String::from_utf8_lossy(&out.stdout))?)
                } else {
                    None
                };
                (
                    old,
                    Compatibility::Backward,
                    format!("{} at {rev}", file.display()),
                )
            }
        };
        let Some(old) = old else {
            println!("new   {} ({}): not in {what} yet", file.display(), ds.id);
            continue;
        };
        let problems = review(&catalog, &ds.id, level, &old, &new);
        if problems.is_empty() {
            println!("ok    {} ({}) against {what}", file.display(), ds.id);
        } else {
            failed += 1;
            println!("FAIL  {} ({}) against {what}:", file.display(), ds.id);
            for p in problems {
                println!("        - {p}");
            }
        }
    }
    anyhow::ensure!(failed == 0, "{failed} dataset schema(s) would break");
    Ok(())
}

fn review(
    catalog: &Catalog,
    ds: &govbus_core::DatasetId,
    level: Compatibility,
    old: &Schema,
    new: &Schema,
) -> Vec<String> {
    govbus_router::guard::review(catalog, ds, level, old, new)
}

/// `govbus schema openapi`: the ingest API of `agency`'s datasets (or of
/// every dataset) as an OpenAPI 3.1 document.
pub(crate) fn openapi(
    deploy: &Path,
    schemas: &Path,
    agency: Option<&str>,
    bearer: bool,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let catalog = govbus_core::Catalog::load(deploy, schemas)?;
    let datasets: Vec<&govbus_core::catalog::DatasetSpec> = catalog
        .datasets
        .values()
        .filter(|d| agency.is_none_or(|a| d.id.owner == a))
        .collect();
    if datasets.is_empty() {
        anyhow::bail!(
            "{} declares no dataset{}",
            deploy.display(),
            agency.map(|a| format!(" owned by {a}")).unwrap_or_default()
        );
    }
    let doc = govbus_producer::openapi::document(&datasets, bearer)?;
    let text = serde_json::to_string_pretty(&doc)? + "\n";
    match out {
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}
