//! Layered configuration: built-in defaults, then a file, then `GOVBUS__*`
//! environment variables (`GOVBUS__ROUTER__KAFKA__BOOTSTRAP=...`).
//!
//! A variable for an agent's section (`GOVBUS__ROUTER__…`) configures only
//! that agent: `govbus produce` ignores it. Every value remembers where it
//! came from ([`Origins`]), so an error names the file and line or the
//! variable, and `govbus config show` prints each value with its source.

mod origins;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use govbus_consumer::ConsumerConfig;
use govbus_core::Catalog;
use govbus_producer::ProducerConfig;
use govbus_registry::RegistryConfig;
use govbus_router::RouterConfig;
use serde::{Deserialize, Serialize};

pub(crate) use origins::Origins;

/// One file for any agent: each agent reads its own section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GovbusConfig {
    /// Directory with `datasets/` and `subscriptions/`; absent = the built-in catalog.
    #[serde(default)]
    pub(crate) deploy: Option<PathBuf>,
    /// Directory of Avro schemas (defaults to `<deploy>/../schemas`).
    #[serde(default)]
    pub(crate) schemas: Option<PathBuf>,
    /// Where `/metrics` (Prometheus), `/healthz` and `/readyz` are served.
    #[serde(default)]
    pub(crate) metrics_listen: Option<SocketAddr>,
    /// The largest allocation one record may ask an Avro decoder for
    /// (a length or an item count it claims); default 4 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_allocation_bytes: Option<usize>,
    /// `govbus registry`.
    #[serde(default)]
    pub(crate) registry: Option<RegistryConfig>,
    /// `govbus route`.
    #[serde(default)]
    pub(crate) router: Option<RouterConfig>,
    /// `govbus produce`.
    #[serde(default)]
    pub(crate) producer: Option<ProducerConfig>,
    /// `govbus consume`.
    #[serde(default)]
    pub(crate) consumer: Option<ConsumerConfig>,
    /// `govbus acl plan|apply`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) acl: Option<AclConfig>,
}

/// `[acl]`: who operates the bus, and how `govbus acl` reaches the broker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AclConfig {
    /// Operators' user names: they apply subscriptions, replay DLQs and
    /// describe every topic and group.
    #[serde(default)]
    pub(crate) operators: Vec<String>,
    /// The cluster as a super user, who may change ACLs, create users
    /// and topics and write the control topic: the identity of the
    /// operator's commands (`govbus acl`, `topics`, `subscriptions apply`;
    /// default: `[router.kafka]`).
    #[serde(default)]
    pub(crate) kafka: Option<govbus_kafka_client::KafkaConfig>,
}

impl GovbusConfig {
    /// The cluster as the operator's commands reach it: `[acl.kafka]`
    /// where the file has one, else `router`'s.
    pub(crate) fn operator_kafka(
        &self,
        router: &govbus_router::RouterConfig,
    ) -> govbus_kafka_client::KafkaConfig {
        self.acl
            .as_ref()
            .and_then(|a| a.kafka.clone())
            .unwrap_or_else(|| router.kafka.clone())
    }
}

/// The agents, each reading its own section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Agent {
    /// `[registry]`.
    Registry,
    /// `[router]` (also `topics` and `subscriptions apply`).
    Router,
    /// `[producer]` (also `publish`).
    Producer,
    /// `[consumer]` (also `status`).
    Consumer,
}

impl Agent {
    /// Every agent's section name.
    pub(crate) const SECTIONS: [&'static str; 4] = ["registry", "router", "producer", "consumer"];

    /// The section this agent reads.
    pub(crate) fn section(self) -> &'static str {
        match self {
            Agent::Registry => "registry",
            Agent::Router => "router",
            Agent::Producer => "producer",
            Agent::Consumer => "consumer",
        }
    }
}

/// The `GOVBUS__*` variables of this process.
pub(crate) fn environment() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("GOVBUS__"))
        .collect()
}

impl GovbusConfig {
    /// Loads `file` (if any) with the `GOVBUS__` variables that concern
    /// `agent` (all of them when None).
    pub(crate) fn load(file: Option<&Path>, agent: Option<Agent>) -> anyhow::Result<Self> {
        Ok(Self::load_from(file, agent, &environment())?.0)
    }

    /// [`GovbusConfig::load`] from the variables `env`, with where each
    /// value came from.
    pub(crate) fn load_from(
        file: Option<&Path>,
        agent: Option<Agent>,
        env: &[(String, String)],
    ) -> anyhow::Result<(Self, Origins)> {
        let mut origins = Origins::default();
        let mut b = config::Config::builder();
        if let Some(f) = file {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            origins.add_file(f, &text)?;
            b = b.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        let mut vars = std::collections::HashMap::new();
        for (name, value) in env {
            let Some(path) = origins::env_path(name) else {
                continue;
            };
            let first = path.split('.').next().unwrap_or_default();
            if let Some(a) = agent {
                if Agent::SECTIONS.contains(&first) && first != a.section() {
                    tracing::debug!(
                        variable = name,
                        agent = a.section(),
                        "variable for another agent's section ignored"
                    );
                    continue;
                }
            }
            origins.add_env(&path, name);
            vars.insert(name.clone(), value.clone());
        }
        b = b.add_source(
            config::Environment::with_prefix("GOVBUS")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(vars)),
        );
        let built = b
            .build()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        match serde_path_to_error::deserialize::<_, GovbusConfig>(built) {
            Ok(cfg) => {
                cfg.check_kafka_options(&origins, file)?;
                Ok((cfg, origins))
            }
            Err(e) => {
                let at = e.path().to_string();
                let place = origins.describe(&at, file);
                Err(anyhow::anyhow!(
                    "invalid configuration at `{at}` ({place}): {}",
                    e.into_inner()
                ))
            }
        }
    }

    /// Refuses `[kafka.options]` this binary cannot honour, naming where
    /// the option was set.
    fn check_kafka_options(&self, origins: &Origins, file: Option<&Path>) -> anyhow::Result<()> {
        let sections = [
            ("registry", self.registry.as_ref().map(|c| &c.kafka)),
            ("router", self.router.as_ref().map(|c| &c.kafka)),
            ("producer", self.producer.as_ref().map(|c| &c.kafka)),
            ("consumer", self.consumer.as_ref().map(|c| &c.kafka)),
        ];
        for (name, kafka) in sections {
            let Some(kafka) = kafka else { continue };
            if let Err(e) = kafka.check() {
                use govbus_kafka_client::OptionError as E;
                let at = match &e {
                    E::Pinned { key }
                    | E::SecretInOptions { key }
                    | E::Twice { key }
                    | E::Unsupported { key, .. } => format!("{name}.kafka.options.{key}"),
                    E::Security { .. } => format!("{name}.kafka.security"),
                };
                anyhow::bail!(
                    "invalid configuration at `{at}` ({}): {e}",
                    origins.describe(&at, file)
                );
            }
        }
        Ok(())
    }

    /// The catalog: files under `deploy`, or the built-in one.
    pub(crate) fn catalog(&self) -> anyhow::Result<Catalog> {
        match &self.deploy {
            None => Ok(Catalog::builtin()),
            Some(d) => {
                let schemas = self
                    .schemas
                    .clone()
                    .unwrap_or_else(|| d.join("..").join("schemas"));
                let c = Catalog::load(d, &schemas)?;
                c.check_subscriptions()?;
                Ok(c)
            }
        }
    }

    /// A province consumer's configuration and its `[consumer]` section,
    /// refused when `subscriber` is given and is not the section's.
    pub(crate) fn consumer_for(
        file: Option<&Path>,
        subscriber: Option<&str>,
    ) -> anyhow::Result<(Self, govbus_consumer::ConsumerConfig)> {
        let cfg = Self::load(file, Some(Agent::Consumer))?;
        let c = Self::section(&cfg.consumer, "consumer", file)?.clone();
        if let Some(s) = subscriber.filter(|s| *s != c.subscriber) {
            anyhow::bail!(
                "the configuration is {}'s consumer, not {s}'s: give {s}'s configuration with -c",
                c.subscriber
            );
        }
        Ok((cfg, c))
    }

    /// A section, or an error naming it.
    pub(crate) fn section<'a, T>(
        v: &'a Option<T>,
        name: &str,
        file: Option<&Path>,
    ) -> anyhow::Result<&'a T> {
        v.as_ref().with_context(|| {
            format!(
                "no [{name}] section in {}",
                file.map(|f| f.display().to_string())
                    .unwrap_or_else(|| "the environment (GOVBUS__...)".into())
            )
        })
    }
}

/// `govbus config show`: every effective value, one per line, with its
/// source (a file and line, a variable, or the default); secrets masked.
pub(crate) fn show(
    file: Option<&Path>,
    agent: Option<Agent>,
    env: &[(String, String)],
) -> anyhow::Result<String> {
    let (cfg, origins) = GovbusConfig::load_from(file, agent, env)?;
    let mut value = serde_json::to_value(&cfg)?;
    if let (Some(a), serde_json::Value::Object(map)) = (agent, &mut value) {
        map.retain(|k, _| !Agent::SECTIONS.contains(&k.as_str()) || k == a.section());
    }
    let mut leaves = Vec::new();
    flatten(&value, "", &mut leaves);
    let width = leaves.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (path, v) in leaves {
        let shown = mask(&path, &v);
        let source = origins
            .get(&path)
            .map_or_else(|| "default".to_string(), ToString::to_string);
        out.push_str(&format!("{path:<width$} = {shown}  # {source}\n"));
    }
    Ok(out)
}

fn flatten(v: &serde_json::Value, prefix: &str, out: &mut Vec<(String, serde_json::Value)>) {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            for (k, inner) in m {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(inner, &path, out);
            }
        }
        serde_json::Value::Null => {}
        other => out.push((prefix.to_string(), other.clone())),
    }
}

/// A value as `config show` prints it: secrets as `"***"`, passwords in
/// URLs masked.
fn mask(path: &str, v: &serde_json::Value) -> String {
    let last = path.rsplit('.').next().unwrap_or(path);
    let secret = govbus_core::secret::is_secret_key(last);
    match v {
        _ if secret => "\"***\"".into(),
        serde_json::Value::String(s) => {
            serde_json::Value::String(govbus_consumer::sink::redact(s)).to_string()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_gives_each_value_its_source_and_masks_secrets() {
        std::env::set_var("GOVBUS_TEST_SHOW_SECRET", "s3cret");
        let (_d, f) = file("metrics_listen = \"127.0.0.1:9103\"\n[consumer]\nsubscriber = \"p52\"\nregistry = \"http://r\"\nkafka = { bootstrap = \"k:9092\" }\n[consumer.sink]\ntype = \"webhook\"\nurl = \"https://govbus:hunter2@hook.example/in\"\nsecret = { env = \"GOVBUS_TEST_SHOW_SECRET\" }\n[router]\nregistry = \"http://r\"\nkafka = { bootstrap = \"k:9092\" }\n");
        let env = [("GOVBUS__CONSUMER__BATCH".to_string(), "50".to_string())];
        let out = show(Some(&f), Some(Agent::Consumer), &env).unwrap();
        let line = |k: &str| {
            out.lines()
                .find(|l| l.starts_with(&format!("{k} ")))
                .unwrap_or_else(|| panic!("{k} missing:\n{out}"))
                .to_string()
        };
        assert!(line("metrics_listen").ends_with("x.toml:1"), "{out}");
        assert!(line("consumer.subscriber").ends_with("x.toml:3"), "{out}");
        assert!(
            line("consumer.kafka.bootstrap").ends_with("x.toml:5"),
            "{out}"
        );
        assert!(
            line("consumer.batch").contains("= 50")
                && line("consumer.batch").ends_with("GOVBUS__CONSUMER__BATCH"),
            "{out}"
        );
        assert!(line("consumer.stall_secs").ends_with("# default"), "{out}");
        assert!(
            line("consumer.sink.url").contains("govbus:***@hook.example"),
            "{out}"
        );
        assert!(!out.contains("hunter2") && !out.contains("s3cret"), "{out}");
        // A secret is shown as where it comes from, never its value.
        assert!(
            line("consumer.sink.secret.env").contains("GOVBUS_TEST_SHOW_SECRET"),
            "{out}"
        );
        assert!(
            !out.contains("router."),
            "another agent's section is not shown:\n{out}"
        );
    }

    #[test]
    fn an_option_this_build_cannot_honour_is_refused_saying_why() {
        const BASE: &str = "[registry]\nlisten = \"127.0.0.1:0\"\n[registry.kafka]\nbootstrap = \"k:9092\"\n[registry.kafka.options]\n";
        let (_d, f) = file(&format!("{BASE}\"enable.idempotence\" = \"false\"\n"));
        let e = format!(
            "{:#}",
            GovbusConfig::load_from(Some(&f), None, &[]).unwrap_err()
        );
        assert!(
            e.contains("enable.idempotence")
                && e.contains("set by govbus itself")
                && e.contains("x.toml:6"),
            "{e}"
        );
        let features = govbus_kafka_client::builtin_features();
        let (_d, f) = file(&format!("{BASE}\"security.protocol\" = \"SASL_SSL\"\n"));
        let res = GovbusConfig::load_from(Some(&f), None, &[]);
        if features.iter().any(|f| f == "ssl") && features.iter().any(|f| f == "sasl") {
            res.expect("this build has TLS and SASL");
        } else {
            let e = format!("{:#}", res.unwrap_err());
            assert!(
                e.contains("security.protocol = SASL_SSL") && e.contains("built without"),
                "{e}"
            );
        }
    }

    /// Every sample in `deploy/agencies/` runs as its header says, all on
    /// one host: each `# Run:` line names a command whose section the file
    /// has, the file loads for that agent, no two processes listen on one
    /// address, and every agent finds the registry and the broker where
    /// they are (found as a new user would: `registry` and `route` with
    /// one file both bound its metrics port).
    #[test]
    fn every_sample_agency_config_runs_as_its_header_says_on_one_host() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut listens: std::collections::BTreeMap<SocketAddr, String> = Default::default();
        let mut listen = |addr: SocketAddr, what: String| {
            if let Some(other) = listens.insert(addr, what.clone()) {
                panic!("{what} and {other} both listen on {addr}");
            }
        };
        let (mut registries, mut wanted, mut bootstraps) = (vec![], vec![], vec![]);
        let mut runs = 0;
        for e in std::fs::read_dir(root.join("deploy/agencies")).unwrap() {
            let p = e.unwrap().path();
            let text = std::fs::read_to_string(&p).unwrap();
            let rel = format!(
                "deploy/agencies/{}",
                p.file_name().unwrap().to_string_lossy()
            );
            let commands: Vec<&str> = text
                .lines()
                .take_while(|l| l.starts_with('#'))
                .filter_map(|l| l.split_once("govbus ").map(|(_, c)| c))
                .filter(|c| c.contains(&format!("--config {rel}")))
                .map(|c| c.split_whitespace().next().unwrap())
                .collect();
            let own: Vec<&str> = commands
                .iter()
                .copied()
                .filter(|c| ["registry", "route", "produce", "consume"].contains(c))
                .collect();
            assert_eq!(
                own.len(),
                1,
                "{rel}: its header runs one agent: {commands:?}"
            );
            let agent = match own[0] {
                "registry" => Agent::Registry,
                "route" => Agent::Router,
                "produce" => Agent::Producer,
                _ => Agent::Consumer,
            };
            // As run from the repository's root, as the header says.
            let (c, _) = GovbusConfig::load_from(Some(&p), Some(agent), &[])
                .unwrap_or_else(|e| panic!("{rel}: {e:#}"));
            let deploy = root.join(c.deploy.as_deref().expect("names its deploy directory"));
            let schemas = root.join(c.schemas.as_deref().expect("names its schemas directory"));
            govbus_core::Catalog::load(&deploy, &schemas)
                .unwrap_or_else(|e| panic!("{rel}: its deploy and schemas: {e}"));
            listen(
                c.metrics_listen.expect("serves its health"),
                format!("{rel} metrics"),
            );
            match agent {
                Agent::Registry => {
                    let r = c.registry.unwrap();
                    listen(r.listen, format!("{rel} registry"));
                    registries.push(format!("http://{}", r.listen));
                    bootstraps.push(r.kafka.bootstrap);
                }
                Agent::Router => {
                    let r = c.router.unwrap();
                    wanted.push((rel.clone(), r.registry));
                    bootstraps.push(r.kafka.bootstrap);
                }
                Agent::Producer => {
                    let p = c.producer.unwrap();
                    listen(p.listen, format!("{rel} ingest"));
                    wanted.push((rel.clone(), p.registry));
                    bootstraps.push(p.kafka.bootstrap);
                }
                Agent::Consumer => {
                    let k = c.consumer.unwrap();
                    wanted.push((rel.clone(), k.registry));
                    bootstraps.push(k.kafka.bootstrap);
                }
            }
            runs += 1;
        }
        assert!(runs >= 6, "{runs} samples");
        assert_eq!(registries.len(), 1, "one registry sample");
        for (rel, r) in wanted {
            assert_eq!(r, registries[0], "{rel} looks for the registry elsewhere");
        }
        bootstraps.dedup();
        assert_eq!(bootstraps.len(), 1, "one broker: {bootstraps:?}");
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.toml");
        std::fs::write(&f, text).unwrap();
        (dir, f)
    }

    #[test]
    fn unknown_keys_are_refused_by_name_file_and_line() {
        let (_d, f) = file("[router]\nregistry = \"http://x\"\ngroup = \"g\"\nbatchsize = 3\n[router.kafka]\nbootstrap = \"b\"\n");
        let e = format!(
            "{:#}",
            GovbusConfig::load_from(Some(&f), None, &[]).unwrap_err()
        );
        assert!(e.contains("batchsize"), "{e}");
        assert!(e.contains("x.toml:4"), "{e}");
    }

    const REGISTRY: &str =
        "[registry]\nlisten = \"127.0.0.1:0\"\nkafka = { bootstrap = \"k:9092\" }\n";

    #[test]
    fn a_variable_for_another_agents_section_leaves_this_agent_alone() {
        let (_d, f) = file(REGISTRY);
        let env = [(
            "GOVBUS__ROUTER__KAFKA__OPTIONS__DEBUG".to_string(),
            "fetch,consumer".to_string(),
        )];
        let (c, _) = GovbusConfig::load_from(Some(&f), Some(Agent::Registry), &env).unwrap();
        assert!(c.router.is_none() && c.registry.is_some());
        // The router itself takes it, and its error names the variable.
        let e = format!(
            "{:#}",
            GovbusConfig::load_from(Some(&f), Some(Agent::Router), &env).unwrap_err()
        );
        assert!(
            e.contains("GOVBUS__ROUTER__KAFKA__OPTIONS__DEBUG") && e.contains("bootstrap"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_value_names_the_variable_or_the_file_line_it_came_from() {
        let (_d, f) = file(&format!("{REGISTRY}replication = 3\n"));
        let env = [(
            "GOVBUS__REGISTRY__REPLICATION".to_string(),
            "three".to_string(),
        )];
        let e = format!(
            "{:#}",
            GovbusConfig::load_from(Some(&f), Some(Agent::Registry), &env).unwrap_err()
        );
        assert!(e.contains("GOVBUS__REGISTRY__REPLICATION"), "{e}");
        let (_d, f) = file(&format!("{REGISTRY}replication = \"three\"\n"));
        let e = format!(
            "{:#}",
            GovbusConfig::load_from(Some(&f), Some(Agent::Registry), &[]).unwrap_err()
        );
        assert!(e.contains("x.toml:4"), "{e}");
    }
}
