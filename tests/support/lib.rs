//! Support for govbus's end-to-end tests: a real broker (Apache Kafka started
//! from its jars once per test binary, a cluster of a test's own where it
//! kills brokers, the cluster named by `GOVBUS_KAFKA_BOOTSTRAP`, or nisshi),
//! a real PostgreSQL (`GOVBUS_TEST_POSTGRES`, default the local `test`
//! database), unique names, and polling with a deadline instead of sleeps.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use govbus_core::{Catalog, KafkaConfig};
use rand::Rng;

/// A unique lowercase name: `<prefix><12 random chars>`.
pub fn unique(prefix: &str) -> String {
    let mut rng = rand::thread_rng();
    let tail: String = (0..12)
        .map(|_| (b'a' + rng.gen_range(0..26)) as char)
        .collect();
    format!("{prefix}{tail}")
}

/// Polls `f` until it returns `Some`, or panics after `limit` naming `what`.
pub fn wait_until<T>(limit: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    poll_until(limit, f).unwrap_or_else(|| panic!("timed out after {limit:?} waiting for {what}"))
}

/// Polls `f` until it returns `Some` (that value) or `limit` has passed
/// (None); the pause between polls grows from 10 to 250 ms.
pub fn poll_until<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// PostgreSQL URL for tests.
pub fn pg_url() -> String {
    std::env::var("GOVBUS_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://govbus:govbus@127.0.0.1:5432/test".into())
}

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

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
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
            let cluster = govbus_kafka::Cluster::start(&kafka_dist(), test_nodes(1, dir.path()))
                .unwrap_or_else(|e| panic!("{e}"));
            (cluster, dir)
        });
        Self {
            bootstrap: cluster.bootstrap(),
            kind: Kind::Shared,
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
        }
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

    /// Kafka settings for this broker.
    pub fn kafka(&self) -> KafkaConfig {
        KafkaConfig::new(&self.bootstrap)
    }
}

/// A background thread with a stop flag; stopped and joined on drop.
#[derive(Debug)]
pub struct Worker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    name: String,
}

impl Worker {
    /// Runs `f(stop)` on a thread named `name`.
    pub fn spawn(name: &str, f: impl FnOnce(Arc<AtomicBool>) + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || f(s))
            .expect("spawn worker");
        Self {
            stop,
            handle: Some(handle),
            name: name.into(),
        }
    }

    /// Whether the thread ended on its own (an error in it).
    pub fn finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A tokio runtime for the HTTP parts (registry, ingest).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Starts govbus's registry on `topic`; returns its URL and task.
pub fn start_registry(
    rt: &tokio::runtime::Runtime,
    kafka: &KafkaConfig,
    topic: &str,
) -> (String, tokio::task::JoinHandle<std::io::Result<()>>) {
    let cfg = govbus_registry::RegistryConfig {
        kafka: kafka.clone(),
        topic: topic.to_string(),
        replication: 1,
        listen: "127.0.0.1:0".parse().expect("addr"),
        topic_prefix: String::new(),
    };
    let running = rt
        .block_on(govbus_registry::start(&cfg))
        .expect("registry starts");
    (format!("http://{}", running.addr), running.task)
}

/// Logs to the test output (once per binary), at `GOVBUS_TEST_LOG` or warn.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GOVBUS_TEST_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Every record now in `topic` (read_committed), in partition order: each
/// partition read from its beginning to its end as the broker reports it
/// (partition EOF at the last stable offset).
pub fn read_all(kafka: &KafkaConfig, topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::Consumer;
    use rdkafka::Message;
    let probe: rdkafka::consumer::BaseConsumer = kafka
        .consumer(&unique("reader-"))
        .create()
        .expect("consumer");
    let partitions = govbus_core::kafka::partitions_of(&probe, topic).expect("metadata");
    assert!(!partitions.is_empty(), "{topic} has no partitions");
    let bounds: Vec<(i32, Option<i64>)> = partitions.iter().map(|p| (*p, None)).collect();
    let mut out = Vec::new();
    govbus_core::kafka::read_partitions(kafka, topic, &bounds, Duration::from_secs(60), |m| {
        out.push(m.detach())
    })
    .unwrap_or_else(|e| panic!("reading {topic} to its end: {e}"));
    out.sort_by_key(|m| (m.partition(), m.offset()));
    drop(probe.unassign());
    out
}

/// A TCP proxy on loopback whose link can be cut and restored, to make a
/// server "go away and come back" without touching the server.
#[derive(Debug)]
pub struct TcpProxy {
    /// `127.0.0.1:port` to connect to instead of the target.
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl TcpProxy {
    /// Forwards a new loopback port to `target`.
    pub fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<std::sync::Mutex<Vec<TcpStream>>> = Arc::default();
        let (u, c) = (up.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !u.load(Ordering::SeqCst) {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                for s in [&client, &server] {
                    if let Ok(s) = s.try_clone() {
                        c.lock().unwrap_or_else(|p| p.into_inner()).push(s);
                    }
                }
                for (mut from, mut to) in [
                    (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    ),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Self { addr, up, conns }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for s in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// A router on `cfg` routing `catalog`'s subscriptions: they are written to
/// the control topic under `cfg.topic_prefix` first, as `govbus
/// subscriptions apply` does.
pub fn router(cfg: govbus_router::RouterConfig, catalog: &Catalog) -> govbus_router::Router {
    apply_subscriptions(&cfg.kafka, &cfg.topic_prefix, catalog, false);
    govbus_router::Router::new(cfg, catalog).expect("router starts")
}

/// Writes `catalog`'s subscriptions to the control topic under `prefix`
/// (removing those it does not declare), as `govbus subscriptions apply`.
pub fn apply_subscriptions(
    kafka: &KafkaConfig,
    prefix: &str,
    catalog: &Catalog,
    empty_removed: bool,
) -> Vec<govbus_router::control::Step> {
    govbus_router::control::apply(
        kafka,
        &govbus_core::Topics::new(prefix),
        catalog,
        empty_removed,
        false,
    )
    .expect("subscriptions apply")
}

/// A router for tests: its own group, topics under `prefix`.
pub fn router_config(
    kafka: &KafkaConfig,
    registry: &str,
    prefix: &str,
) -> govbus_router::RouterConfig {
    govbus_router::RouterConfig {
        kafka: kafka.clone(),
        registry: registry.to_string(),
        group: unique("router-"),
        instance: "0".into(),
        topic_prefix: prefix.to_string(),
        batch: 500,
        partitions: 4,
        txn_header: false,
        stall_secs: 60,
    }
}

/// A province consumer for tests, topics under `prefix`.
pub fn consumer_config(
    kafka: &KafkaConfig,
    registry: &str,
    prefix: &str,
    subscriber: &str,
    sink: &str,
    pg_schema: &str,
) -> govbus_consumer::ConsumerConfig {
    govbus_consumer::ConsumerConfig {
        kafka: kafka.clone(),
        registry: registry.to_string(),
        subscriber: subscriber.to_string(),
        topic_prefix: prefix.to_string(),
        sink: govbus_consumer::SinkConfig::from_url(sink, pg_schema),
        batch: 500,
        partitions: 4,
        stall_secs: 60,
    }
}

/// Everything most end-to-end tests start with: a broker, a runtime, the
/// registry on its own `_schemas`, a unique topic prefix, the built-in
/// catalog and a scratch directory. Destructure it to keep the parts alive.
#[derive(Debug)]
pub struct Bus {
    /// Runs the registry (dropped first).
    pub rt: tokio::runtime::Runtime,
    /// The registry's server task.
    pub registry_task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// Kafka settings for the broker.
    pub kafka: KafkaConfig,
    /// This test's topic prefix (`t<random>.`).
    pub prefix: String,
    /// Topic names under the prefix.
    pub topics: govbus_core::Topics,
    /// The registry's URL.
    pub registry: String,
    /// The built-in datasets and subscriptions.
    pub catalog: Arc<govbus_core::Catalog>,
    /// A scratch directory.
    pub dir: tempfile::TempDir,
    /// How many admin units were published (once, on first use).
    pub seeded: std::sync::OnceLock<usize>,
    /// The broker (dropped last).
    pub broker: Broker,
}

impl Bus {
    /// Starts the broker and the registry.
    pub fn start() -> Self {
        Self::on(Broker::start())
    }

    /// Starts the registry on `broker`.
    pub fn on(broker: Broker) -> Self {
        init_logs();
        let kafka = broker.kafka();
        let rt = runtime();
        let prefix = format!("{}.", unique("t"));
        let topics = govbus_core::Topics::new(&prefix);
        let (registry, registry_task) = start_registry(&rt, &kafka, &topics.schemas());
        Self {
            rt,
            registry_task,
            kafka,
            prefix,
            topics,
            registry,
            catalog: Arc::new(govbus_core::Catalog::builtin()),
            dir: tempfile::tempdir().expect("tempdir"),
            seeded: std::sync::OnceLock::new(),
            broker,
        }
    }

    /// A router with the catalog's subscriptions, running until dropped.
    pub fn router(&self) -> Worker {
        let router = router(
            router_config(&self.kafka, &self.registry, &self.prefix),
            &self.catalog,
        );
        Worker::spawn("router", move |stop| router.run(stop).unwrap())
    }

    /// The bca publisher with a SQLite store in the scratch directory, its
    /// central topics created, the demo's admin units published first (its
    /// contract looks codes up in moha.admin_units).
    pub fn publisher(&self, system: &str) -> govbus_producer::Publisher {
        self.seeded.get_or_init(|| {
            seed_admin_units(&self.kafka, &self.topics, &self.registry, self.dir.path())
        });
        let path = self.dir.path().join(format!("bca-{system}.db"));
        let store =
            govbus_producer::open_store(path.to_str().expect("utf-8 path"), "").expect("store");
        let p = govbus_producer::Publisher::new(
            &self.catalog,
            "bca",
            system,
            &self.topics,
            &self.kafka,
            &govbus_schema::RegistryClient::new(&self.registry),
            store,
        )
        .expect("publisher");
        govbus_producer::ensure_topics(&self.kafka, &p, 4).expect("topics");
        p
    }
}

/// Publishes the demo's admin units (moha.admin_units) through a moha
/// publisher with a store in `dir` and relays them; returns how many.
pub fn seed_admin_units(
    kafka: &KafkaConfig,
    topics: &govbus_core::Topics,
    registry: &str,
    dir: &std::path::Path,
) -> usize {
    govbus_producer::demo::seed_admin_units(
        &govbus_core::Catalog::builtin(),
        topics,
        kafka,
        &govbus_schema::RegistryClient::new(registry),
        dir.join("moha.db").to_str().expect("utf-8 path"),
    )
    .expect("admin units published")
}

/// Python with Confluent's client (`confluent-kafka[avro,schemaregistry]`):
/// `GOVBUS_PYTHON`, or a virtualenv in ~/.cache/govbus/pyvenv, created and
/// filled from PyPI on first use (as .ci/run does).
pub fn ensure_python_client() -> PathBuf {
    if let Ok(p) = std::env::var("GOVBUS_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let venv = PathBuf::from(home).join(".cache/govbus/pyvenv");
    let python = venv.join("bin/python");
    let ready = |p: &PathBuf| {
        std::process::Command::new(p)
            .args([
                "-c",
                "import confluent_kafka.schema_registry.avro, fastavro",
            ])
            .status()
            .is_ok_and(|s| s.success())
    };
    if ready(&python) {
        return python;
    }
    // One test binary at a time installs (a lock file next to the venv).
    let _ = std::fs::create_dir_all(venv.parent().expect("parent"));
    let lock = venv.with_extension("lock");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(_) => break,
            Err(_) if ready(&python) => return python,
            Err(_) if Instant::now() > deadline => panic!("{} held for 10 minutes", lock.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
    eprintln!(
        "installing confluent-kafka[avro,schemaregistry] into {}",
        venv.display()
    );
    let ok = std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && std::process::Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "confluent-kafka[avro,schemaregistry]"])
            .status()
            .is_ok_and(|s| s.success());
    let _ = std::fs::remove_file(&lock);
    assert!(
        ok && ready(&python),
        "cannot install Confluent's Python client into {}",
        venv.display()
    );
    python
}

/// Expected row as text: name, dob, sex, province, commune, street, updated_at (ms).
pub fn expected_rows(
    world: &govbus_producer::demo::DemoWorld,
    p: &str,
) -> std::collections::BTreeMap<String, Vec<String>> {
    world
        .in_province(p)
        .into_iter()
        .map(|(k, r)| {
            let a = &r["permanent_address"];
            let row = vec![
                r["full_name"].as_str().unwrap().to_string(),
                r["date_of_birth"].as_str().unwrap().to_string(),
                r["sex"].as_str().unwrap().to_string(),
                a["province_code"].as_str().unwrap().to_string(),
                a["commune_code"].as_str().unwrap().to_string(),
                a["street"].as_str().unwrap_or("").to_string(),
                r["updated_at"].as_i64().unwrap().to_string(),
            ];
            (k, row)
        })
        .collect()
}

pub fn pg_rows(
    client: &mut postgres::Client,
    schema: &str,
) -> Option<std::collections::BTreeMap<String, Vec<String>>> {
    let rows = client
        .query(
            &format!(
                "SELECT citizen_id, full_name, date_of_birth::text, sex, permanent_address_province_code,
                        permanent_address_commune_code, coalesce(permanent_address_street, ''),
                        (extract(epoch from updated_at) * 1000)::bigint::text
                 FROM \"{schema}\".bca_residents"
            ),
            &[],
        )
        .ok()?;
    Some(
        rows.iter()
            .map(|r| (r.get(0), (1..8).map(|i| r.get::<_, String>(i)).collect()))
            .collect(),
    )
}
