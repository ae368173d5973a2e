//! Layered configuration: built-in defaults, then a file, then `GOVBUS__*`
//! environment variables (`GOVBUS__ROUTER__KAFKA__BOOTSTRAP=...`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use govbus_consumer::ConsumerConfig;
use govbus_core::Catalog;
use govbus_producer::ProducerConfig;
use govbus_registry::RegistryConfig;
use govbus_router::RouterConfig;
use serde::{Deserialize, Serialize};

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
    /// Where `/metrics` (Prometheus) is served.
    #[serde(default)]
    pub(crate) metrics_listen: Option<SocketAddr>,
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
}

impl GovbusConfig {
    /// Loads `file` (if any) with `GOVBUS__` environment overrides.
    pub(crate) fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut b = config::Config::builder();
        if let Some(f) = file {
            b = b.add_source(config::File::from(f).format(config::FileFormat::Toml));
        }
        b = b.add_source(
            config::Environment::with_prefix("GOVBUS")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        let what = file
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| "environment".into());
        b.build()
            .and_then(|c| c.try_deserialize())
            .with_context(|| format!("invalid configuration in {what}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_agency_config_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/agencies");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let c =
                GovbusConfig::load(Some(&p)).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
            assert!(
                c.registry.is_some()
                    || c.router.is_some()
                    || c.producer.is_some()
                    || c.consumer.is_some(),
                "{} configures nothing",
                p.display()
            );
            n += 1;
        }
        assert!(n >= 3);
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.toml");
        std::fs::write(&f, "[router]\nregistry = \"http://x\"\ngroup = \"g\"\nbatchsize = 3\n[router.kafka]\nbootstrap = \"b\"\n").unwrap();
        let e = format!("{:#}", GovbusConfig::load(Some(&f)).unwrap_err());
        assert!(e.contains("batchsize"), "{e}");
        assert!(e.contains("x.toml"), "{e}");
    }
}
