//! `govbus secrets generate DIR`: the secret files docker-compose.yml
//! mounts (compose secrets), made once before `docker compose up`: a CA and
//! the brokers' certificate, a random password per Kafka user (each agency,
//! each subscriber, the router, the registry, and `admin`, the brokers' own
//! super user), PostgreSQL's password and a `.pgpass` for the agents.
//!
//! DIR is made readable by its owner only; the files in it are readable by
//! all, because the containers read them as their own users (Kafka's
//! uid 1000, govbus's 10001) through the bind mounts compose makes, while
//! DIR keeps the host's other users out. A file that exists is kept, so
//! running it again adds what new files in deploy/ need and changes nothing
//! else.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;

/// The Kafka users of `catalog`: its agencies and subscribers, the router,
/// the registry, and `admin`.
pub(crate) fn users(catalog: &govbus_core::Catalog) -> Vec<String> {
    let mut u: Vec<String> = ["admin", "router", "registry"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    u.extend(catalog.datasets.keys().map(|d| d.owner.clone()));
    u.extend(
        catalog
            .subscriptions
            .iter()
            .map(|s| s.file.subscriber.clone()),
    );
    u.sort();
    u.dedup();
    u
}

/// Writes `bytes` to `path` unless it exists; whether it wrote.
fn keep_or_write(path: &Path, bytes: &[u8]) -> anyhow::Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    Ok(true)
}

/// `govbus secrets generate DIR`.
pub(crate) fn generate(dir: &Path, catalog: &govbus_core::Catalog) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let said = |name: &str, new: bool, what: &str| {
        println!("{}  {name:<18} {what}", if new { "new " } else { "kept" });
    };
    if !dir.join("ca.pem").exists() || !dir.join("kafka-broker.pem").exists() {
        // A CA of its own for a trial (30 days); production brings its
        // own CA's files under the same names.
        let ca = govbus_kafka::tls::Authority::create(dir)?;
        let broker = ca.issue(
            "kafka-broker",
            &["kafka1", "kafka2", "kafka3", "localhost", "127.0.0.1"],
        )?;
        std::fs::set_permissions(&broker.bundle, std::fs::Permissions::from_mode(0o644))?;
        std::fs::set_permissions(ca.ca(), std::fs::Permissions::from_mode(0o644))?;
        said("ca.pem", true, "the CA clients trust (valid 30 days)");
        said(
            "kafka-broker.pem",
            true,
            "the brokers' key and certificate (kafka1, kafka2, kafka3)",
        );
    } else {
        said("ca.pem", false, "the CA clients trust");
        said(
            "kafka-broker.pem",
            false,
            "the brokers' key and certificate",
        );
    }
    for u in users(catalog) {
        let new = keep_or_write(
            &dir.join(&u),
            format!("{}\n", govbus_http::new_token()?).as_bytes(),
        )?;
        said(&u, new, "Kafka SCRAM-SHA-512 password");
    }
    let pg = govbus_http::new_token()?;
    let new = keep_or_write(&dir.join("pg-password"), format!("{pg}\n").as_bytes())?;
    said("pg-password", new, "PostgreSQL's password (user govbus)");
    if new {
        std::fs::remove_file(dir.join("pgpass")).ok();
    }
    let pg = std::fs::read_to_string(dir.join("pg-password"))?;
    let new = keep_or_write(
        &dir.join("pgpass"),
        format!("*:*:*:govbus:{}\n", pg.trim()).as_bytes(),
    )?;
    said("pgpass", new, "the same, for the agents (PGPASSFILE)");
    Ok(())
}
