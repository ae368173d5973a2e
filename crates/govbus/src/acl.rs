//! `govbus acl plan|apply`: every ACL the bus needs, derived from the files
//! in `deploy/` and the platform's config (`govbus_kafka_client::acl::plan`),
//! compared with the broker's, and applied so that the broker enforces who
//! reads and writes what.

use std::path::Path;

use govbus_core::Topics;
use govbus_kafka_client::acl::{managed, plan, AclAdmin, Principals};

use crate::config::{Agent, GovbusConfig};

/// The platform's principals as its config names them: the router's and
/// the registry's SASL users (`router`, `registry` by default), the
/// operators of `[acl]`, the router's group.
pub(crate) fn principals(cfg: &GovbusConfig) -> Principals {
    let name_of = |k: &govbus_kafka_client::KafkaConfig, default: &str| {
        k.security
            .as_ref()
            .and_then(|s| s.username.clone())
            .unwrap_or_else(|| default.to_string())
    };
    Principals {
        router: cfg
            .router
            .as_ref()
            .map(|r| name_of(&r.kafka, "router"))
            .unwrap_or_else(|| "router".into()),
        registry: cfg
            .registry
            .as_ref()
            .map(|g| name_of(&g.kafka, "registry"))
            .unwrap_or_else(|| "registry".into()),
        operators: cfg
            .acl
            .as_ref()
            .map(|a| a.operators.clone())
            .unwrap_or_default(),
        router_group: cfg
            .router
            .as_ref()
            .map(|r| r.group.clone())
            .unwrap_or_else(|| "govbus-router".into()),
    }
}

/// The registry's subject policy: an agency may change the subjects of
/// the topics the ACL plan lets it write (`<topic>-value`, `<topic>-key`).
#[derive(Debug)]
pub(crate) struct WritersOwnSubjects {
    acls: Vec<govbus_kafka_client::acl::Acl>,
}

impl WritersOwnSubjects {
    /// The policy of `catalog`'s plan.
    pub(crate) fn new(catalog: &govbus_core::Catalog, topics: &Topics, p: &Principals) -> Self {
        Self {
            acls: plan(catalog, topics, p, chrono::Utc::now().timestamp_millis()),
        }
    }
}

impl govbus_registry::access::SubjectPolicy for WritersOwnSubjects {
    fn may_write(&self, principal: &str, subject: &str) -> bool {
        let Some(topic) = subject
            .strip_suffix("-value")
            .or_else(|| subject.strip_suffix("-key"))
        else {
            return false;
        };
        govbus_kafka_client::acl::allows(
            &self.acls,
            &format!("User:{principal}"),
            govbus_kafka_client::acl::Operation::Write,
            topic,
        )
    }
}

/// What `govbus acl` works from: the platform's config (with `deploy`
/// overriding its directory), the ACLs its files imply, and every principal
/// the plan manages (those with no ACL left included).
struct Planned {
    cfg: GovbusConfig,
    wanted: Vec<govbus_kafka_client::acl::Acl>,
    managed: Vec<String>,
}

impl Planned {
    fn load(file: Option<&Path>, deploy: Option<&Path>) -> anyhow::Result<Self> {
        let mut cfg = GovbusConfig::load(file, Some(Agent::Router))?;
        if let Some(dir) = deploy {
            cfg.deploy = Some(dir.to_path_buf());
        }
        let r = GovbusConfig::section(&cfg.router, "router", file)?;
        let catalog = cfg.catalog()?;
        let principals = principals(&cfg);
        let topics = Topics::new(&r.topic_prefix);
        let wanted = plan(
            &catalog,
            &topics,
            &principals,
            chrono::Utc::now().timestamp_millis(),
        );
        let mut managed = managed(&wanted, &catalog, &principals);
        managed.sort();
        managed.dedup();
        Ok(Self {
            cfg,
            wanted,
            managed,
        })
    }

    /// The cluster as the operator reaches it, connected.
    fn operator_kafka(
        &self,
        file: Option<&Path>,
    ) -> anyhow::Result<govbus_kafka_client::KafkaConfig> {
        let r = GovbusConfig::section(&self.cfg.router, "router", file)?;
        let kafka = self.cfg.operator_kafka(r);
        govbus_kafka_client::connect(&kafka, std::time::Duration::from_secs(15))?;
        Ok(kafka)
    }
}

/// `govbus acl plan|apply`.
pub(crate) fn run(file: Option<&Path>, deploy: Option<&Path>, apply: bool) -> anyhow::Result<()> {
    let planned = Planned::load(file, deploy)?;
    let wanted = &planned.wanted;
    let admin = AclAdmin::new(&planned.operator_kafka(file)?)?;
    let diff = admin.compare(wanted, &planned.managed)?;
    print!("{diff}");
    if diff.is_empty() {
        println!("the broker's ACLs match the plan ({} ACLs)", wanted.len());
        return Ok(());
    }
    if apply {
        admin.apply(&diff)?;
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

/// `govbus acl plan --strimzi CLUSTER`: the plan as KafkaUser resources
/// (SCRAM-SHA-512, simple authorization), one per user the plan manages,
/// printed; no broker is contacted. They are the ACLs `govbus acl apply`
/// would make the broker hold.
pub(crate) fn strimzi(
    file: Option<&Path>,
    deploy: Option<&Path>,
    cluster: &str,
    api: crate::strimzi::Api,
) -> anyhow::Result<()> {
    let Planned {
        wanted, managed, ..
    } = Planned::load(file, deploy)?;
    let docs = crate::strimzi::users(&wanted, &managed, cluster, api)?;
    print!(
        "{}",
        crate::strimzi::yaml(
            &format!(
                "Every grant the files in deploy/ imply (govbus acl plan --strimzi {cluster}),\n\
                 for the Strimzi User Operator: {} ACLs, {} KafkaUser resources. Each\n\
                 user's password is in the Secret of its name, key `password`.",
                wanted.len(),
                docs.len()
            ),
            &docs
        )?
    );
    Ok(())
}

/// `govbus acl users --passwords DIR`: every user the plan names (each
/// agency, each subscriber, the router, the registry, the operators)
/// created on the cluster as a SCRAM-SHA-512 user, or its password reset,
/// from `DIR/<user>` (a file holding the password, as each agent's
/// `password = { file = … }` reads it), as `[acl.kafka]`'s super user.
pub(crate) fn users(
    file: Option<&Path>,
    deploy: Option<&Path>,
    passwords: &Path,
) -> anyhow::Result<()> {
    let planned = Planned::load(file, deploy)?;
    let names: Vec<String> = planned
        .managed
        .iter()
        .map(|p| p.strip_prefix("User:").unwrap_or(p).to_string())
        .collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|u| !passwords.join(u).is_file())
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "no password file in {} for: {} (one file per user, named after it, holding its password)",
            passwords.display(),
            missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut pairs = Vec::new();
    for u in &names {
        let secret = govbus_core::secret::Secret::load(govbus_core::secret::SecretSource::File(
            passwords.join(u),
        ))?;
        pairs.push((u.clone(), secret.expose().to_string()));
    }
    AclAdmin::new(&planned.operator_kafka(file)?)?.upsert_scram_users(&pairs)?;
    for u in &names {
        println!(
            "ok  {u:<12} SCRAM-SHA-512, password from {}",
            passwords.join(u).display()
        );
    }
    println!(
        "{} users created or their passwords reset; `govbus acl apply` grants them what deploy/ says",
        names.len()
    );
    Ok(())
}
