//! Support for govbus's end-to-end tests: a real broker (Apache Kafka started
//! from its jars once per test binary, a cluster of a test's own where it
//! kills brokers, the cluster named by `GOVBUS_KAFKA_BOOTSTRAP`, or nisshi),
//! a real PostgreSQL (`GOVBUS_TEST_POSTGRES`, default the local `test`
//! database), unique names, and polling with a deadline instead of sleeps.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use govbus_core::Catalog;
use govbus_kafka_client::KafkaConfig;
use rand::Rng;

mod broker;
mod browser;
mod proxy;

pub use broker::{ensure_nisshi, free_port, kafka_dist, nisshi_path, Broker, Secured};
pub use browser::{Browser, Page};
pub use proxy::TcpProxy;

/// A unique lowercase name: `<prefix><12 random chars>`.
pub fn unique(prefix: &str) -> String {
    let mut rng = rand::thread_rng();
    let tail: String = (0..12)
        .map(|_| (b'a' + rng.gen_range(0..26)) as char)
        .collect();
    format!("{prefix}{tail}")
}

/// Runs the binary `bin` with `args`; panics, with its output, unless it
/// succeeds. Returns its standard output and error.
pub fn run_ok(bin: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{bin}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{bin} {args:?} failed:\n{text}");
    text
}

/// Runs the binary `bin` with `args`: whether it succeeded, and its
/// standard output then error.
pub fn run(bin: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{bin}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Copies the directory `from` to `to`, recursively.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Starts `cmd` (a `govbus up`, say) exiting with this process, its
/// standard output read line by line into the receiver.
pub fn spawn_lines(
    cmd: &mut std::process::Command,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = cmd
        .env("GOVBUS_EXIT_WITH_PARENT", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the command starts");
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    fn forward(from: impl std::io::Read + Send + 'static, tx: std::sync::mpsc::Sender<String>) {
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(from).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
    }
    if let Some(out) = child.stdout.take() {
        forward(out, tx.clone());
    }
    // A caller that pipes stderr reads it among the lines too (an error a
    // command exits with is there).
    if let Some(err) = child.stderr.take() {
        forward(err, tx);
    }
    (child, lines)
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
        tls: None,
        auth: None,
        import: false,
        max_body_bytes: None,
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
/// (partition EOF at the last stable offset). A topic an agent creates as it
/// starts (a router's views) is waited for, up to 60 s; one that never
/// appears fails the test.
pub fn read_all(kafka: &KafkaConfig, topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::Consumer;
    use rdkafka::Message;
    let probe: rdkafka::consumer::BaseConsumer = kafka
        .consumer(&unique("reader-"))
        .create()
        .expect("consumer");
    let partitions = wait_until(
        Duration::from_secs(60),
        &format!("{topic} to have partitions"),
        || {
            let p = govbus_kafka_client::partitions_of(&probe, topic).expect("metadata");
            (!p.is_empty()).then_some(p)
        },
    );
    let bounds: Vec<(i32, Option<i64>)> = partitions.iter().map(|p| (*p, None)).collect();
    let mut out = Vec::new();
    govbus_kafka_client::read_partitions(kafka, topic, &bounds, Duration::from_secs(60), |m| {
        out.push(m.detach())
    })
    .unwrap_or_else(|e| panic!("reading {topic} to its end: {e}"));
    out.sort_by_key(|m| (m.partition(), m.offset()));
    drop(probe.unassign());
    out
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
        registry_access: None,
        group: unique("router-"),
        instance: "0".into(),
        topic_prefix: prefix.to_string(),
        batch: 500,
        partitions: 4,
        txn_header: false,
        stall_secs: 60,
        map_dataset: "moha.admin_units".into(),
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
        registry_access: None,
        subscriber: subscriber.to_string(),
        topic_prefix: prefix.to_string(),
        sink: govbus_consumer::SinkConfig::from_url(sink, pg_schema),
        batch: None,
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
    /// The router's consumer group (its transactional ids derive from it).
    pub router_group: String,
    /// The broker (dropped last).
    pub broker: Broker,
}

/// The users of a secured bus: each agent its own principal, as `deploy/`
/// names them, and an operator.
pub const PRINCIPALS: &[&str] = &["bca", "moha", "router", "registry", "p52", "p92", "ops"];

impl Bus {
    /// Starts the broker and the registry.
    pub fn start() -> Self {
        Self::on(Broker::start())
    }

    /// A bus on a Kafka node of its own that speaks only SASL_SSL with the
    /// authorizer on: every agent connects as its own user
    /// ([`PRINCIPALS`], [`Bus::kafka_of`]), and the ACLs `govbus acl apply`
    /// derives from the catalog are applied before anything starts.
    pub fn secured() -> Self {
        Self::on(Broker::secured(PRINCIPALS))
    }

    /// Starts the registry on `broker` (on a secured broker, once the ACLs
    /// are applied, as `registry`).
    pub fn on(broker: Broker) -> Self {
        init_logs();
        let kafka = broker.kafka();
        let rt = runtime();
        let prefix = format!("{}.", unique("t"));
        let topics = govbus_core::Topics::new(&prefix);
        let catalog = Arc::new(govbus_core::Catalog::builtin());
        let router_group = unique("router-");
        if broker.secure().is_some() {
            apply_acls(&kafka, &catalog, &topics, &router_group);
        }
        let as_registry = match broker.secure() {
            Some(_) => broker.kafka_as("registry"),
            None => kafka.clone(),
        };
        let (registry, registry_task) = start_registry(&rt, &as_registry, &topics.schemas());
        Self {
            rt,
            registry_task,
            kafka,
            prefix,
            topics,
            registry,
            catalog,
            dir: tempfile::tempdir().expect("tempdir"),
            seeded: std::sync::OnceLock::new(),
            router_group,
            broker,
        }
    }

    /// Kafka settings for agent `user` (`bca`, `router`, `p52`, …): its own
    /// principal on a secured bus, the plain settings otherwise.
    pub fn kafka_of(&self, user: &str) -> KafkaConfig {
        match self.broker.secure() {
            Some(_) => self.broker.kafka_as(user),
            None => self.kafka.clone(),
        }
    }

    /// The router's settings: as `router`, in [`Bus::router_group`].
    pub fn router_config(&self) -> govbus_router::RouterConfig {
        let mut cfg = router_config(&self.kafka_of("router"), &self.registry, &self.prefix);
        cfg.group = self.router_group.clone();
        cfg
    }

    /// A router with the catalog's subscriptions (written to the control
    /// topic as the operator), running until dropped.
    pub fn router(&self) -> Worker {
        apply_subscriptions(&self.kafka_of("ops"), &self.prefix, &self.catalog, false);
        let router =
            govbus_router::Router::new(self.router_config(), &self.catalog).expect("router starts");
        Worker::spawn("router", move |stop| router.run(stop).unwrap())
    }

    /// moha's publisher (system `system`, a SQLite store in the scratch
    /// directory) with its relay running until the worker is dropped: for
    /// a test that changes the administrative map while the bus runs.
    pub fn moha(&self, system: &str) -> (govbus_producer::Publisher, Worker) {
        let path = self.dir.path().join(format!("moha-{system}.db"));
        let store =
            govbus_producer::open_store(path.to_str().expect("utf-8 path"), "").expect("store");
        let kafka = self.kafka_of("moha");
        let moha = govbus_producer::Publisher::new(
            &self.catalog,
            "moha",
            system,
            &self.topics,
            &kafka,
            &govbus_schema::RegistryClient::new(&self.registry),
            store,
        )
        .expect("moha's publisher");
        let relay =
            govbus_producer::Relay::new(&kafka, moha.store(), moha.wakeup()).expect("moha's relay");
        let worker = Worker::spawn("moha relay", move |stop| relay.run(stop));
        (moha, worker)
    }

    /// `publisher`'s relay, running until the worker is dropped.
    pub fn relay(&self, publisher: &govbus_producer::Publisher) -> Worker {
        let relay = govbus_producer::Relay::new(&self.kafka, publisher.store(), publisher.wakeup())
            .expect("relay");
        Worker::spawn("relay", move |stop| relay.run(stop))
    }

    /// The bca publisher with a SQLite store in the scratch directory, its
    /// central topics created, the demo's admin units published first (its
    /// contract looks codes up in moha.admin_units).
    pub fn publisher(&self, system: &str) -> govbus_producer::Publisher {
        self.seeded.get_or_init(|| {
            seed_admin_units(
                &self.kafka_of("moha"),
                &self.topics,
                &self.registry,
                self.dir.path(),
            )
        });
        let path = self.dir.path().join(format!("bca-{system}.db"));
        let store =
            govbus_producer::open_store(path.to_str().expect("utf-8 path"), "").expect("store");
        let kafka = self.kafka_of("bca");
        let p = govbus_producer::Publisher::new(
            &self.catalog,
            "bca",
            system,
            &self.topics,
            &kafka,
            &govbus_schema::RegistryClient::new(&self.registry),
            store,
        )
        .expect("publisher");
        govbus_producer::ensure_topics(&kafka, &p, 4).expect("topics");
        p
    }
}

/// Makes the broker's ACLs match what the catalog implies under `topics`
/// (router `router`, registry `registry`, operator `ops`), as `govbus acl
/// apply` does; `kafka` must be a super user.
pub fn apply_acls(
    kafka: &KafkaConfig,
    catalog: &Catalog,
    topics: &govbus_core::Topics,
    router_group: &str,
) -> govbus_kafka_client::acl::AclDiff {
    use govbus_kafka_client::acl::{managed, plan, AclAdmin, Principals};
    let p = Principals::standard(router_group);
    let now = chrono::Utc::now().timestamp_millis();
    let wanted = plan(catalog, topics, &p, now);
    let admin = AclAdmin::new(kafka).expect("ACL admin");
    let diff = admin
        .compare(&wanted, &managed(&wanted, catalog, &p))
        .expect("compare ACLs");
    admin.apply(&diff).expect("apply ACLs");
    diff
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
                "import confluent_kafka.schema_registry.avro, fastavro, openapi_core",
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
        "installing confluent-kafka[avro,schemaregistry] and openapi-core into {}",
        venv.display()
    );
    let ok = std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && std::process::Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "-q",
                "confluent-kafka[avro,schemaregistry]",
                "openapi-core==0.19.5",
            ])
            .status()
            .is_ok_and(|s| s.success());
    let _ = std::fs::remove_file(&lock);
    assert!(
        ok && ready(&python),
        "cannot install Confluent's Python client and openapi-core into {}",
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
