//! `govbus acl plan|apply`: every ACL the bus needs, derived from the files
//! in `deploy/` and the platform's config (`govbus_core::acl::plan`),
//! compared with the broker's, and applied so that the broker enforces who
//! reads and writes what.

use std::path::Path;

use govbus_core::acl::{managed, plan, AclAdmin, AclDiff, Principals};
use govbus_core::Topics;

use crate::config::{Agent, GovbusConfig};

/// `govbus acl plan|apply`.
pub(crate) fn run(file: Option<&Path>, deploy: Option<&Path>, apply: bool) -> anyhow::Result<()> {
    let mut cfg = GovbusConfig::load(file, Some(Agent::Router))?;
    if let Some(dir) = deploy {
        cfg.deploy = Some(dir.to_path_buf());
    }
    let r = GovbusConfig::section(&cfg.router, "router", file)?;
    let catalog = cfg.catalog()?;
    let acl = cfg.acl.clone().unwrap_or_default();
    let name_of = |k: &govbus_core::KafkaConfig, default: &str| {
        k.security
            .as_ref()
            .and_then(|s| s.username.clone())
            .unwrap_or_else(|| default.to_string())
    };
    let principals = Principals {
        router: name_of(&r.kafka, "router"),
        registry: cfg
            .registry
            .as_ref()
            .map(|g| name_of(&g.kafka, "registry"))
            .unwrap_or_else(|| "registry".into()),
        operators: acl.operators.clone(),
        router_group: r.group.clone(),
    };
    let topics = Topics::new(&r.topic_prefix);
    let now = chrono::Utc::now().timestamp_millis();
    let wanted = plan(&catalog, &topics, &principals, now);
    let kafka = acl.kafka.as_ref().unwrap_or(&r.kafka);
    govbus_core::kafka::connect(kafka, std::time::Duration::from_secs(15))?;
    let admin = AclAdmin::new(kafka)?;
    let current = admin.describe()?;
    let diff = AclDiff::between(&wanted, &current, &managed(&wanted, &catalog, &principals));
    print!("{diff}");
    if diff.is_empty() {
        println!("the broker's ACLs match the plan ({} ACLs)", wanted.len());
        return Ok(());
    }
    if apply {
        admin.create(&diff.create)?;
        admin.delete(&diff.delete)?;
        println!(
            "applied: {} created, {} deleted ({} ACLs planned)",
            diff.create.len(),
            diff.delete.len(),
            wanted.len()
        );
    } else {
        println!(
            "{} to create, {} to delete ({} ACLs planned); `govbus acl apply` makes the broker match",
            diff.create.len(),
            diff.delete.len(),
            wanted.len()
        );
    }
    Ok(())
}
