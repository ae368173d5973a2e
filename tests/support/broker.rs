//! The broker a test talks to: the Apache Kafka node shared by a test
//! binary, a cluster of a test's own, the one `GOVBUS_KAFKA_BOOTSTRAP`
//! names, or nisshi.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use govbus_kafka_client::KafkaConfig;

use crate::wait_until;

/// Which broker a test talks to; see [`Broker::start`].
#[derive(Debug)]
enum Kind {
    /// The cluster named by `GOVBUS_KAFKA_BOOTSTRAP` (never stopped here).
    External,
    /// The Apache Kafka node shared by every test of this binary.
    Shared,
    /// Apache Kafka nodes of this test's own, killed on drop.
    Own(
        Box<govbus_kafka::Cluster>,
        #[allow(dead_code)] tempfile::TempDir,
    ),
    /// nisshi, the development broker.
    Nisshi {
        child: Child,
        log: PathBuf,
        storage: String,
        _dir: tempfile::TempDir,
    },
}

/// A broker for a test: Apache Kafka by default (started from its jars,
/// cached in `~/.cache/govbus`), the cluster named by
/// `GOVBUS_KAFKA_BOOTSTRAP`, or nisshi (`GOVBUS_TEST_BROKER=nisshi`, or
/// [`Broker::nisshi`]).
#[derive(Debug)]
pub struct Broker {
    /// `host:port[,host:port]`.
    pub bootstrap: String,
    kind: Kind,
    /// A secured cluster's CA and users (None: plaintext, anonymous).
    secured: Option<Secured>,
}

/// What a client of a secured cluster needs: the CA that signed the
/// brokers' certificates, and each SCRAM user's password file.
#[derive(Debug)]
pub struct Secured {
    /// The CA's certificate (PEM).
    pub ca: PathBuf,
    /// The certificate authority, to issue further certificates.
    pub authority: govbus_kafka::tls::Authority,
    /// Password files by user name (`admin` included).
    pub passwords: std::collections::BTreeMap<String, PathBuf>,
}

impl Secured {
    /// Kafka settings connecting to `bootstrap` as `user` (SASL_SSL,
    /// SCRAM-SHA-512, the broker verified against the CA).
    pub fn kafka_as(&self, bootstrap: &str, user: &str) -> KafkaConfig {
        let file = self
            .passwords
            .get(user)
            .unwrap_or_else(|| panic!("no SCRAM user {user} on this cluster"));
        let password = govbus_core::secret::Secret::load(govbus_core::secret::SecretSource::File(
            file.clone(),
        ))
        .expect("password file");
        KafkaConfig::new(bootstrap).with_security(govbus_kafka_client::KafkaSecurity::scram(
            &self.ca, user, password,
        ))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Kind::Nisshi { child, .. } = &mut self.kind {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Apache Kafka's jars, installed into the cache on first use (Maven's
/// output shown).
pub fn kafka_dist() -> govbus_kafka::Dist {
    govbus_kafka::Dist::ensure(govbus_kafka::Progress::Shown).unwrap_or_else(|e| {
        panic!("{e}\n(set GOVBUS_KAFKA_BOOTSTRAP to test against another cluster)")
    })
}

/// Settings for the test nodes: fewer partitions for the internal topics
/// than Kafka's 50 (each test's first group or transaction waits for their
/// creation), topics created only by the agents that own them.
fn test_nodes(nodes: usize, dir: &std::path::Path) -> govbus_kafka::ClusterConfig {
    govbus_kafka::ClusterConfig::new(nodes, dir)
        .set("offsets.topic.num.partitions", 4)
        .set("transaction.state.log.num.partitions", 4)
        .set("auto.create.topics.enable", "false")
}

/// The nisshi binary: `GOVBUS_NISSHI`, else the cache `.ci/run` and `govbus up` install into.
pub fn nisshi_path() -> PathBuf {
    if let Ok(p) = std::env::var("GOVBUS_NISSHI") {
        return p.into();
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/govbus/nisshi-0.6.0/bin/nisshi")
}

/// The nisshi binary, installed with cargo into the cache on first use
/// (once per test binary; about 15 minutes on 2 cores, cargo's progress on
/// the terminal).
pub fn ensure_nisshi() -> PathBuf {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let bin = nisshi_path();
    if bin.exists() {
        return bin;
    }
    let root = bin
        .parent()
        .and_then(|p| p.parent())
        .expect("nisshi path has a root")
        .to_path_buf();
    eprintln!(
        "installing nisshi 0.6.0 into {} (first run only)",
        root.display()
    );
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "install",
            "nisshi@0.6.0",
            "--locked",
            "--features",
            "dynostore,postgres,libsql",
            "--root",
        ])
        .arg(&root)
        .status()
        .expect("run cargo install");
    assert!(
        status.success() && bin.exists(),
        "installing nisshi failed ({status}); set GOVBUS_NISSHI or GOVBUS_KAFKA_BOOTSTRAP instead"
    );
    bin
}

/// A free loopback port below the ephemeral range (see
/// [`govbus_kafka::free_ports`]: a service binds it seconds later, and an
/// outgoing connection must not have taken it meanwhile).
pub fn free_port() -> u16 {
    govbus_kafka::free_ports(1).expect("a free port")[0]
}

impl Broker {
    /// The broker most tests share: the cluster named by
    /// `GOVBUS_KAFKA_BOOTSTRAP`; else one Apache Kafka node started once per
    /// test binary (tests keep apart by their random topic and group names);
    /// or, with `GOVBUS_TEST_BROKER=nisshi`, a fresh nisshi.
    pub fn start() -> Self {
        static SHARED: std::sync::OnceLock<(govbus_kafka::Cluster, tempfile::TempDir)> =
            std::sync::OnceLock::new();
        if let Ok(b) = std::env::var("GOVBUS_KAFKA_BOOTSTRAP") {
            return Self {
                bootstrap: b,
                kind: Kind::External,
                secured: None,
            };
        }
        if std::env::var("GOVBUS_TEST_BROKER").as_deref() == Ok("nisshi") {
            return Self::nisshi();
        }
        let (cluster, _) = SHARED.get_or_init(|| {
            let dir = tempfile::Builder::new()
                .prefix("govbus-kafka-")
                .tempdir()
                .expect("tempdir");
            // A static is never dropped: the directory goes when the test
            // process ends, with its broker.
            let mut cfg = test_nodes(1, dir.path());
            if std::env::var_os("GOVBUS_KEEP_BROKER").is_none() {
                cfg = cfg.remove_with_parent();
            }
            let cluster =
                govbus_kafka::Cluster::start(&kafka_dist(), cfg).unwrap_or_else(|e| panic!("{e}"));
            (cluster, dir)
        });
        Self {
            bootstrap: cluster.bootstrap(),
            kind: Kind::Shared,
            secured: None,
        }
    }

    /// Apache Kafka nodes of this test's own (`nodes` = 3: replication
    /// factor 3, `min.insync.replicas` 2), which [`Broker::cluster`] can
    /// kill and restart; the cluster named by `GOVBUS_KAFKA_BOOTSTRAP`
    /// instead, if set (never restarted). GOVBUS_KEEP_BROKER=1 keeps the
    /// nodes' directory (logs and data).
    pub fn own(nodes: usize) -> Self {
        if std::env::var("GOVBUS_KAFKA_BOOTSTRAP").is_ok() {
            return Self::start();
        }
        let dir = tempfile::Builder::new()
            .prefix("govbus-kafka-")
            .disable_cleanup(std::env::var_os("GOVBUS_KEEP_BROKER").is_some())
            .tempdir()
            .expect("tempdir");
        let cluster = govbus_kafka::Cluster::start(&kafka_dist(), test_nodes(nodes, dir.path()))
            .unwrap_or_else(|e| panic!("{e}"));
        Self {
            bootstrap: cluster.bootstrap(),
            kind: Kind::Own(Box::new(cluster), dir),
            secured: None,
        }
    }

    /// An Apache Kafka node of this test's own that clients reach only
    /// over SASL_SSL with SCRAM-SHA-512, as `admin` (the super user) or one
    /// of `users`, each with a random password; the authorizer denies what
    /// no ACL allows. Its CA is made for it. Never an external cluster.
    pub fn secured(users: &[&str]) -> Self {
        Self::secured_nodes(1, users)
    }

    /// As [`Broker::secured`], on `nodes` nodes (3: replication factor 3,
    /// `min.insync.replicas` 2, the brokers talking SASL_SSL as `admin`).
    pub fn secured_nodes(nodes: usize, users: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("govbus-kafka-")
            .disable_cleanup(std::env::var_os("GOVBUS_KEEP_BROKER").is_some())
            .tempdir()
            .expect("tempdir");
        let authority =
            govbus_kafka::tls::Authority::create(dir.path().join("tls")).expect("a test CA");
        let mut passwords = std::collections::BTreeMap::new();
        let mut pairs = Vec::new();
        let secrets = dir.path().join("secrets");
        std::fs::create_dir_all(&secrets).expect("secrets dir");
        for user in std::iter::once(&"admin").chain(users) {
            let pw = crate::unique("pw");
            let file = secrets.join(user);
            std::fs::write(&file, format!("{pw}\n")).expect("password file");
            passwords.insert(user.to_string(), file);
            if *user != "admin" {
                pairs.push((user.to_string(), pw));
            }
        }
        let admin_pw = std::fs::read_to_string(&passwords["admin"]).expect("admin password");
        let sec = govbus_kafka::Secured::new(&authority, admin_pw.trim(), pairs)
            .expect("broker certificate");
        let cluster =
            govbus_kafka::Cluster::start(&kafka_dist(), test_nodes(nodes, dir.path()).secured(sec))
                .unwrap_or_else(|e| panic!("{e}"));
        Self {
            bootstrap: cluster.bootstrap(),
            kind: Kind::Own(Box::new(cluster), dir),
            secured: Some(Secured {
                ca: authority.ca(),
                authority,
                passwords,
            }),
        }
    }

    /// A secured cluster's CA and users.
    pub fn secure(&self) -> Option<&Secured> {
        self.secured.as_ref()
    }

    /// Kafka settings connecting as `user` (a secured cluster only).
    pub fn kafka_as(&self, user: &str) -> KafkaConfig {
        self.secured
            .as_ref()
            .expect("a secured cluster")
            .kafka_as(&self.bootstrap, user)
    }

    /// This test's own Kafka nodes (None for a shared or external broker).
    pub fn cluster(&mut self) -> Option<&mut govbus_kafka::Cluster> {
        match &mut self.kind {
            Kind::Own(c, _) => Some(c),
            _ => None,
        }
    }

    /// A fresh nisshi with memory storage (the development broker).
    pub fn nisshi() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = "memory://nisshi/".to_string();
        let port = free_port();
        let log = dir.path().join("nisshi.log");
        let child = Self::spawn_nisshi(dir.path(), port, &storage, &log);
        Self {
            bootstrap: format!("127.0.0.1:{port}"),
            kind: Kind::Nisshi {
                child,
                log,
                storage,
                _dir: dir,
            },
            secured: None,
        }
    }

    fn spawn_nisshi(
        dir: &std::path::Path,
        port: u16,
        storage: &str,
        log: &std::path::Path,
    ) -> Child {
        let bin = ensure_nisshi();
        let url = format!("tcp://127.0.0.1:{port}");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = Command::new(&bin)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", storage])
            .current_dir(dir)
            .stdout(Stdio::from(out.try_clone().expect("log")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start nisshi");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        wait_until(Duration::from_secs(30), "nisshi to listen", || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        });
        child
    }

    /// Whether this is nisshi.
    pub fn is_nisshi(&self) -> bool {
        matches!(self.kind, Kind::Nisshi { .. })
    }

    /// The broker's process id, for a single-process broker this test
    /// started (nisshi, or one Kafka node of its own).
    pub fn pid(&mut self) -> Option<u32> {
        match &mut self.kind {
            Kind::Nisshi { child, .. } => Some(child.id()),
            Kind::Own(c, _) if c.len() == 1 => c.pid(0),
            _ => None,
        }
    }

    /// Where the broker logs (nisshi's file, or node 1's of an own cluster).
    pub fn log(&self) -> Option<PathBuf> {
        match &self.kind {
            Kind::Nisshi { log, .. } => Some(log.clone()),
            Kind::Own(c, _) => Some(c.log(0)),
            _ => None,
        }
    }

    /// nisshi's storage URL (None for Kafka).
    pub fn nisshi_storage(&self) -> Option<&str> {
        match &self.kind {
            Kind::Nisshi { storage, .. } => Some(storage),
            _ => None,
        }
    }

    /// Kafka settings for this broker (on a secured cluster, as `admin`).
    pub fn kafka(&self) -> KafkaConfig {
        match &self.secured {
            Some(s) => s.kafka_as(&self.bootstrap, "admin"),
            None => KafkaConfig::new(&self.bootstrap),
        }
    }
}
