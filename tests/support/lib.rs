//! Support for govbus's end-to-end tests: a real Kafka-protocol broker (nisshi
//! started per test binary, or the cluster named by `GOVBUS_KAFKA_BOOTSTRAP`),
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
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A broker for one test binary; killed on drop.
#[derive(Debug)]
pub struct Broker {
    /// `host:port`.
    pub bootstrap: String,
    child: Option<Child>,
    /// Where nisshi's output goes.
    pub log: Option<PathBuf>,
    /// nisshi's storage engine URL (None for an external cluster).
    storage: Option<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
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
    /// The cluster named by `GOVBUS_KAFKA_BOOTSTRAP`, or a fresh nisshi with memory storage.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        if let Ok(b) = std::env::var("GOVBUS_KAFKA_BOOTSTRAP") {
            return Self {
                bootstrap: b,
                child: None,
                log: None,
                storage: None,
                _dir: dir,
            };
        }
        Self::nisshi(dir, "memory://nisshi/".into())
    }

    /// A fresh nisshi with durable SQLite storage, which [`Broker::restart`]
    /// stops and starts again on the same port and file (or the cluster
    /// named by `GOVBUS_KAFKA_BOOTSTRAP`, which is never restarted).
    /// GOVBUS_KEEP_BROKER=1 keeps its directory (log and SQLite file).
    pub fn durable() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("govbus-nisshi-")
            .disable_cleanup(std::env::var_os("GOVBUS_KEEP_BROKER").is_some())
            .tempdir()
            .expect("tempdir");
        if std::env::var("GOVBUS_KAFKA_BOOTSTRAP").is_ok() {
            return Self::start();
        }
        Self::nisshi(dir, "sqlite://nisshi.db".into())
    }

    /// Whether [`Broker::restart`] can restart this broker.
    pub fn restartable(&self) -> bool {
        self.storage
            .as_deref()
            .is_some_and(|s| s.starts_with("sqlite://"))
    }

    /// Stops the broker (SIGTERM, then SIGKILL after 10 s) and starts it
    /// again on the same port and storage; returns once it listens.
    pub fn restart(&mut self) {
        let storage = self.storage.clone().expect("a broker this test started");
        if let Some(c) = self.child.as_mut() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let port: u16 = self
            .bootstrap
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        let log = self.log.clone().expect("log");
        self.child = Some(Self::spawn_nisshi(self._dir.path(), port, &storage, &log));
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

    fn nisshi(dir: tempfile::TempDir, storage: String) -> Self {
        let port = free_port();
        let log = dir.path().join("nisshi.log");
        let child = Self::spawn_nisshi(dir.path(), port, &storage, &log);
        Self {
            bootstrap: format!("127.0.0.1:{port}"),
            child: Some(child),
            log: Some(log),
            storage: Some(storage),
            _dir: dir,
        }
    }

    /// The nisshi process's id (None for an external cluster).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
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

/// Every record now in `topic` (read_committed), in partition order.
///
/// nisshi's ListOffsets(latest) undercounts when the last produce request
/// carried several records (see docs/ARCHITECTURE.md), so this does not use
/// watermarks: it writes a fence record to every partition and reads each
/// partition up to its fence. Fences (of this call and earlier ones) are
/// not returned.
pub fn read_all(kafka: &KafkaConfig, topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::{Message, Offset, TopicPartitionList};

    let fence = unique("__fence__");
    let consumer: BaseConsumer = kafka
        .consumer(&unique("reader-"))
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    assert!(!partitions.is_empty(), "{topic} has no partitions");
    let producer: BaseProducer = kafka.producer().create().expect("producer");
    for p in &partitions {
        producer
            .send(
                BaseRecord::<str, str>::to(topic)
                    .partition(*p)
                    .key(&fence)
                    .payload(""),
            )
            .map_err(|(e, _)| e)
            .expect("fence");
    }
    producer
        .flush(Duration::from_secs(10))
        .expect("fences written");
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let mut open: std::collections::HashSet<i32> = partitions.into_iter().collect();
    let mut out = Vec::new();
    wait_until(
        Duration::from_secs(60),
        &format!("every partition of {topic} read to its fence"),
        || {
            while let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                if m.key() == Some(fence.as_bytes()) {
                    open.remove(&m.partition());
                } else if !m.key().is_some_and(|k| k.starts_with(b"__fence__")) {
                    // Fences of earlier calls are not data either.
                    out.push(m.detach());
                }
            }
            open.is_empty().then_some(())
        },
    );
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
        sink: sink.to_string(),
        pg_schema: pg_schema.to_string(),
        batch: 500,
        partitions: 4,
        state: None,
        webhook_secret: None,
        webhook_per_change: false,
        webhook_timeout_ms: 10_000,
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
        init_logs();
        let broker = Broker::start();
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
