//! Exactly once, proven under kill -9 on a three-node Apache Kafka cluster
//! (replication factor 3, `min.insync.replicas` 2): resident changes
//! (creates, updates, moves between provinces, deletes) are posted to the
//! ministry's ingest while the producer (ingest + relay), the router (and a
//! second router), both provinces' consumers — each a `govbus` process — and
//! the brokers themselves (one at a time: the leader of a central partition,
//! the active controller, or any node) are killed with SIGKILL at random
//! moments and started again. At the end each province's PostgreSQL table
//! equals the view computed from the source changes (no row missing, extra
//! or stale); each province topic, read with read_committed, holds no event
//! twice and no entity's sequence n after n+1; every change the ministry
//! was told is stored is on the central topic; and no broker has a hanging
//! transaction (`kafka-transactions find-hanging`).
//!
//! The test command runs a short version. The long one:
//!
//! ```sh
//! GOVBUS_CHAOS_CHANGES=100000 GOVBUS_CHAOS_KILLS=30 GOVBUS_CHAOS_RATE=0 \
//!   cargo test --release -p govbus --test chaos -- --nocapture --test-threads 1
//! ```
//!
//! For a failing run: `GOVBUS_CHAOS_KEEP=1` keeps the agents' logs,
//! `GOVBUS_KEEP_BROKER=1` the brokers' directory (logs and data),
//! `GOVBUS_CHAOS_LOG` sets the agents' `RUST_LOG`,
//! `GOVBUS_CHAOS_RDKAFKA_DEBUG` librdkafka's `debug` contexts in the
//! routers, `GOVBUS_CHAOS_SETTLE_SECS` how long the tables may take.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use govbus_core::{DatasetId, Topics};
use govbus_e2e::{
    expected_rows, free_port, init_logs, pg_rows, pg_url, poll_until, read_all, runtime,
    seed_admin_units, start_registry, unique, Broker,
};
use govbus_producer::demo::DemoWorld;
use govbus_producer::ChangeRequest;
use govbus_schema::SchemaCache;
use rand::Rng;
use rdkafka::Message;
use serde_json::json;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One `govbus` process, started again after each kill.
struct Agent {
    name: &'static str,
    args: Vec<String>,
    log: PathBuf,
    child: Child,
    kills: usize,
}

impl Agent {
    fn start(name: &'static str, args: Vec<String>, dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let child = Self::spawn(&args, &log);
        Self {
            name,
            args,
            log,
            child,
            kills: 0,
        }
    }

    fn spawn(args: &[String], log: &Path) -> Child {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log");
        Command::new(env!("CARGO_BIN_EXE_govbus"))
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("GOVBUS_CHAOS_LOG")
                    .unwrap_or_else(|_| "warn,govbus_producer::relay=info".into()),
            )
            // Gone with the test process, even if it dies mid-run.
            .env("GOVBUS_EXIT_WITH_PARENT", "1")
            .stdout(Stdio::from(out.try_clone().expect("log")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start govbus")
    }

    /// SIGKILL, then start again.
    fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.kills += 1;
        self.child = Self::spawn(&self.args, &self.log);
    }

    /// Started again if it exited by itself (e.g. it gave up on a broker
    /// that was being restarted); how it ended, for the report.
    fn keep_alive(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.child = Self::spawn(&self.args, &self.log);
                Some(format!("{} exited by itself ({status})", self.name))
            }
            _ => None,
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(serde::Serialize)]
struct ConfigFile<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    producer: Option<&'a govbus_producer::ProducerConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    router: Option<&'a govbus_router::RouterConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consumer: Option<&'a govbus_consumer::ConsumerConfig>,
}

fn write_config(dir: &Path, name: &str, file: &ConfigFile<'_>) -> String {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml::to_string(file).expect("config as TOML")).expect("write config");
    path.display().to_string()
}

/// Posts one change until the producer has it (it may be dead or starting).
fn post(agent: &ureq::Agent, base: &str, req: &ChangeRequest) {
    let (url, body) = match req {
        ChangeRequest::Upsert(r) => (
            format!("{base}/v1/datasets/bca.residents/changes"),
            json!({"op": "upsert", "data": r}),
        ),
        ChangeRequest::Delete { key } => (
            format!("{base}/v1/datasets/bca.residents/changes"),
            json!({"op": "delete", "key": key}),
        ),
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match agent.post(&url).send_string(&body.to_string()) {
            Ok(_) => return,
            // A delete whose answer was lost to a kill: it was stored.
            Err(ureq::Error::Status(404, _)) if matches!(req, ChangeRequest::Delete { .. }) => {
                return
            }
            Err(ureq::Error::Status(s, r)) if s < 500 => panic!(
                "ingest refused a demo change ({s}): {}",
                r.into_string().unwrap_or_default()
            ),
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the producer did not come back within 120 s: {e}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn chaos(routers: usize) {
    // One chaos run at a time: each starts three brokers and five or six
    // agents, on a 2-core machine.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    init_logs();
    let changes = env_usize("GOVBUS_CHAOS_CHANGES", 1500);
    let kills = env_usize("GOVBUS_CHAOS_KILLS", 3);
    let rate = env_usize("GOVBUS_CHAOS_RATE", 150);
    let mut broker = Broker::own(3);
    let kafka = broker.kafka();
    // Under GOVBUS_KAFKA_BOOTSTRAP the cluster is not ours: no broker is
    // killed, and its transactions are not inspected.
    let own_brokers = broker.cluster().is_some();
    let broker_kills_wanted = if own_brokers { kills } else { 0 };
    let broker = Arc::new(Mutex::new(broker));
    let rt = runtime();
    let prefix = format!("{}.", unique("chaos"));
    let topics = Topics::new(&prefix);
    let (registry, _registry) = start_registry(&rt, &kafka, &topics.schemas());
    // GOVBUS_CHAOS_KEEP=1 keeps the agents' logs (the path is printed).
    let dir = tempfile::Builder::new()
        .prefix("govbus-chaos-")
        .disable_cleanup(std::env::var_os("GOVBUS_CHAOS_KEEP").is_some())
        .tempdir()
        .expect("tempdir");
    eprintln!("chaos: logs in {}", dir.path().display());
    seed_admin_units(&kafka, &topics, &registry, dir.path());

    // The agents, as an operator runs them: one process each.
    let ingest_port = free_port();
    let producer = govbus_producer::ProducerConfig {
        kafka: kafka.clone(),
        registry: registry.clone(),
        registry_access: None,
        agency: "bca".into(),
        system: "chaos".into(),
        listen: format!("127.0.0.1:{ingest_port}").parse().unwrap(),
        tls: None,
        auth: None,
        store: format!("sqlite://{}", dir.path().join("bca.db").display()),
        pg_schema: "govbus".into(),
        topic_prefix: prefix.clone(),
        partitions: 4,
        stall_secs: 60,
    };
    let router = govbus_router::RouterConfig {
        kafka: kafka.clone(),
        registry: registry.clone(),
        registry_access: None,
        group: unique("router-"),
        instance: "0".into(),
        topic_prefix: prefix.clone(),
        batch: 500,
        partitions: 4,
        // Which transaction wrote each view record: named when an event
        // is found twice.
        txn_header: true,
        stall_secs: 60,
        map_dataset: "moha.admin_units".into(),
    };
    govbus_e2e::apply_subscriptions(&kafka, &prefix, &govbus_core::Catalog::builtin(), false);
    let schemas: Vec<String> = ["p52", "p92"]
        .iter()
        .map(|p| format!("{}_{p}", unique("chaos")))
        .collect();
    // The consumers' default batch (5,000 for a database): a province
    // catching up after a kill loads its new rows with COPY.
    let consumer = |p: &str, schema: &str| {
        govbus_e2e::consumer_config(&kafka, &registry, &prefix, p, &pg_url(), schema)
    };
    let (c52, c94) = (consumer("p52", &schemas[0]), consumer("p92", &schemas[1]));
    let cfg = |name: &str, f: ConfigFile<'_>| write_config(dir.path(), name, &f);
    let none = || ConfigFile {
        producer: None,
        router: None,
        consumer: None,
    };
    let args = |cmd: &str, file: String| vec![cmd.to_string(), "--config".into(), file];
    let agents = Arc::new(Mutex::new(vec![
        Agent::start(
            "producer",
            args(
                "produce",
                cfg(
                    "producer",
                    ConfigFile {
                        producer: Some(&producer),
                        ..none()
                    },
                ),
            ),
            dir.path(),
        ),
        Agent::start(
            "p52",
            args(
                "consume",
                cfg(
                    "p52",
                    ConfigFile {
                        consumer: Some(&c52),
                        ..none()
                    },
                ),
            ),
            dir.path(),
        ),
        Agent::start(
            "p92",
            args(
                "consume",
                cfg(
                    "p92",
                    ConfigFile {
                        consumer: Some(&c94),
                        ..none()
                    },
                ),
            ),
            dir.path(),
        ),
    ]));

    // Routers in one consumer group (instances 0, 1, ...) share the work.
    for i in 0..routers {
        let mut r = router.clone();
        r.instance = i.to_string();
        // GOVBUS_CHAOS_RDKAFKA_DEBUG=cgrp,fetch,... turns on librdkafka's
        // debug contexts in the routers (their logs).
        if let Ok(d) = std::env::var("GOVBUS_CHAOS_RDKAFKA_DEBUG") {
            r.kafka.options.insert("debug".into(), d);
        }
        let name = ["router", "router-2", "router-3"][i.min(2)];
        let file = cfg(
            name,
            ConfigFile {
                router: Some(&r),
                ..none()
            },
        );
        let agent = Agent::start(name, args("route", file), dir.path());
        agents.lock().unwrap().push(agent);
    }

    // The killer: SIGKILL one agent or one broker at a random moment, start
    // it again; until the changes are all posted and each agent and the
    // brokers were killed `kills` times. Brokers are killed one at a time,
    // in turn the leader of a central partition, the active controller and
    // any node, and each is back before the next kill.
    let posted = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let central_topic = topics.central(&DatasetId::new("bca", "residents"), 1);
    let killer = {
        let (agents, done, broker, kafka, central_topic) = (
            agents.clone(),
            done.clone(),
            broker.clone(),
            kafka.clone(),
            central_topic.clone(),
        );
        std::thread::spawn(move || {
            let mut rng = rand::thread_rng();
            let mut notes = Vec::new();
            let mut broker_kills: Vec<String> = Vec::new();
            loop {
                std::thread::sleep(Duration::from_millis(rng.gen_range(300..1200)));
                let mut a = agents.lock().unwrap();
                notes.extend(a.iter_mut().filter_map(Agent::keep_alive));
                let finished = done.load(Ordering::Relaxed);
                if finished
                    && a.iter().all(|x| x.kills >= kills)
                    && broker_kills.len() >= broker_kills_wanted
                {
                    return (notes, broker_kills);
                }
                // Index a.len() stands for a broker, when the brokers are ours.
                let candidates: Vec<usize> = (0..a.len() + usize::from(own_brokers))
                    .filter(|i| {
                        !finished
                            || a.get(*i)
                                .map_or(broker_kills.len() < broker_kills_wanted, |x| {
                                    x.kills < kills
                                })
                    })
                    .collect();
                let i = candidates[rng.gen_range(0..candidates.len())];
                if let Some(agent) = a.get_mut(i) {
                    agent.kill_and_restart();
                    continue;
                }
                drop(a);
                let mut b = broker.lock().unwrap();
                let cluster = b.cluster().expect("the test's own cluster");
                let (what, node) = match broker_kills.len() % 3 {
                    0 => {
                        let p = rng.gen_range(0..4);
                        (
                            "leader of a central partition",
                            partition_leader(&kafka, &central_topic, p),
                        )
                    }
                    1 => ("active controller", cluster.active_controller().ok()),
                    _ => ("a node", Some(rng.gen_range(1..=3))),
                };
                let Some(i) = node.and_then(|id| cluster.index_of(id)) else {
                    notes.push(format!("no {what} found to kill"));
                    continue;
                };
                let t = Instant::now();
                cluster.kill(i);
                cluster
                    .restart(i)
                    .unwrap_or_else(|e| panic!("broker {} does not start again: {e}", i + 1));
                broker_kills.push(format!(
                    "{} ({what}, back in {:.1} s)",
                    i + 1,
                    t.elapsed().as_secs_f64()
                ));
            }
        })
    };

    let outbox = dir.path().join("bca.db");
    // The ministry: `changes` demo changes through HTTP ingest.
    let base = format!("http://127.0.0.1:{ingest_port}");
    let http = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    let mut world = DemoWorld::new(2026);
    let start = Instant::now();
    for i in 0..changes {
        let req = world.next_change();
        post(&http, &base, &req);
        posted.store(i + 1, Ordering::Relaxed);
        if rate > 0 {
            let due = start + Duration::from_secs_f64((i + 1) as f64 / rate as f64);
            if let Some(w) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(w);
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    let (notes, broker_kills) = killer.join().expect("killer");
    let kill_counts: BTreeMap<&str, usize> = agents
        .lock()
        .unwrap()
        .iter()
        .map(|a| (a.name, a.kills))
        .collect();
    eprintln!(
        "chaos: {changes} changes posted in {:.1} s; kills {kill_counts:?}; brokers killed {}: {broker_kills:?}; {notes:?}",
        start.elapsed().as_secs_f64(),
        broker_kills.len()
    );

    let recoveries = std::fs::read_to_string(dir.path().join("producer.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("already on the broker"))
        .count();
    eprintln!("chaos: the relay found changes already on the broker (instead of sending them again) {recoveries} times");

    // 1. Each province's table is exactly its view of the source.
    // A table that does not settle is reported with what its topic holds
    // for the rows in question (below), then fails the test.
    let mut pg = postgres::Client::connect(&pg_url(), postgres::NoTls).expect("postgres");
    let mut unsettled: HashMap<String, Vec<String>> = HashMap::new();
    for (p, schema) in [("52", &schemas[0]), ("92", &schemas[1])] {
        let want = expected_rows(&world, p);
        let mut last = None;
        let settle = Instant::now();
        let settled = poll_until(
            Duration::from_secs(env_usize("GOVBUS_CHAOS_SETTLE_SECS", 300) as u64),
            || {
                for a in agents.lock().unwrap().iter_mut() {
                    if let Some(n) = a.keep_alive() {
                        eprintln!("chaos: {n}");
                    }
                }
                let got = pg_rows(&mut pg, schema)?;
                if got == want {
                    return Some(());
                }
                let missing = want.keys().filter(|k| !got.contains_key(*k)).count();
                let extra = got.keys().filter(|k| !want.contains_key(*k)).count();
                let stale = want
                    .iter()
                    .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
                    .count();
                let now = (missing, extra, stale);
                if last != Some(now) {
                    eprintln!("chaos: p{p} missing {missing}, extra {extra}, stale {stale}");
                    last = Some(now);
                }
                let wrong: Vec<String> = want
                    .keys()
                    .chain(got.keys())
                    .filter(|k| want.get(*k) != got.get(*k))
                    .cloned()
                    .collect();
                unsettled.insert(format!("p{p}"), wrong);
                None
            },
        );
        if settled.is_none() {
            eprintln!(
                "chaos: p{p}'s table did not equal its view after {:.0} s",
                settle.elapsed().as_secs_f64()
            );
            continue;
        }
        unsettled.remove(&format!("p{p}"));
        eprintln!(
            "chaos: p{p}: {} rows, equal to the source's view ({:.1} s after the last post)",
            want.len(),
            settle.elapsed().as_secs_f64()
        );
    }

    // 2. Every change the relay was told is stored is on the central topic.
    let resolver = SchemaCache::new(govbus_schema::RegistryClient::new(&registry));
    let ds = DatasetId::new("bca", "residents");
    let mut violations: Vec<String> = Vec::new();
    let mut central: HashMap<String, usize> = HashMap::new();
    let mut central_history: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut on_central: HashSet<i64> = HashSet::new();
    for m in read_all(&kafka, &topics.central(&ds, 1)) {
        let Some(payload) = m.payload().filter(|p| !p.is_empty()) else {
            continue;
        };
        let (_, change) = govbus_schema::envelope::decode(payload, &resolver).expect("decodes");
        if let Some(id) = outbox_id(&m) {
            on_central.insert(id);
        }
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        if unsettled.values().any(|keys| keys.contains(&key)) {
            central_history.entry(key).or_default().push(format!(
                "{:?} seq {} at {}@{}",
                change.op,
                change.source.seq,
                m.partition(),
                m.offset()
            ));
        }
        *central.entry(change.event_id).or_default() += 1;
    }
    for (key, history) in &central_history {
        eprintln!("chaos: central topic: row {key} (wrong in a table) has {history:?}");
    }
    let accepted = poll_until(Duration::from_secs(60), || {
        let db = rusqlite::Connection::open(&outbox).ok()?;
        let left: i64 = db
            .query_row("SELECT count(*) FROM govbus_outbox", [], |r| r.get(0))
            .ok()?;
        (left == 0).then(|| outbox_last_id(&outbox))
    })
    .expect("the relay empties its outbox");
    let lost: Vec<i64> = (1..=accepted)
        .filter(|id| !on_central.contains(id))
        .collect();
    if !lost.is_empty() {
        violations.push(format!(
            "{} of the {accepted} changes the relay was told are stored are not on the central topic (outbox ids {:?}…)",
            lost.len(),
            &lost[..lost.len().min(10)]
        ));
    }
    eprintln!(
        "chaos: central topic: {} events, {} of them written twice by the relay",
        central.len(),
        central.values().filter(|n| **n > 1).count()
    );

    // 3. No event twice on a province topic; per entity, sequences rise.
    for p in ["p52", "p92"] {
        let topic = topics.view(p, &ds, 1);
        let records = read_all(&kafka, &topic);
        let mut events: HashMap<String, String> = HashMap::new();
        let mut last_seq: HashMap<String, i64> = HashMap::new();
        let wrong: HashSet<&String> = unsettled.get(p).into_iter().flatten().collect();
        let mut history: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for m in &records {
            let payload = m.payload().unwrap_or_default();
            let (_, change) =
                govbus_schema::envelope::decode(payload, &resolver).expect("a view event decodes");
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            let label = txn_of(m).unwrap_or_else(|| "no govbus.txn header".into());
            if wrong.contains(&key) {
                history.entry(key.clone()).or_default().push(format!(
                    "{:?} seq {} at {}@{} by {label}",
                    change.op,
                    change.source.seq,
                    m.partition(),
                    m.offset(),
                ));
            }
            if let Some(first) = events.insert(change.event_id.clone(), label.clone()) {
                violations.push(format!(
                    "{topic}: event {} delivered twice (by transaction {first}, again by {label})",
                    change.event_id
                ));
            }
            if let Some(prev) = last_seq.insert(key.clone(), change.source.seq) {
                if change.source.seq <= prev {
                    violations.push(format!(
                        "{topic}: entity {key} had sequence {} after {prev}",
                        change.source.seq
                    ));
                }
            }
        }
        eprintln!("chaos: {topic}: {} records", records.len());
        for key in &wrong {
            eprintln!(
                "chaos: {topic}: row {key} is wrong in the table; the topic holds {:?}",
                history.get(*key)
            );
        }
    }

    // 4. No transaction left hanging on any broker (of ours).
    if own_brokers {
        let mut b = broker.lock().unwrap();
        let cluster = b.cluster().expect("the test's own cluster");
        for i in 0..cluster.len() {
            let out = cluster
                .dist()
                .tool_text(
                    govbus_kafka::tools::TRANSACTIONS,
                    &[
                        "--bootstrap-server",
                        &cluster.bootstrap(),
                        "find-hanging",
                        "--broker-id",
                        &cluster.node_id(i).to_string(),
                    ],
                )
                .expect("kafka-transactions find-hanging");
            let hanging: Vec<&str> = out
                .lines()
                .skip(1)
                .filter(|l| !l.trim().is_empty())
                .collect();
            if !hanging.is_empty() {
                violations.push(format!(
                    "broker {}: hanging transactions: {hanging:?}",
                    cluster.node_id(i)
                ));
            }
        }
    }

    assert!(
        unsettled.is_empty(),
        "tables not equal to their views: {unsettled:?}"
    );
    assert!(violations.is_empty(), "{violations:#?}");
    eprintln!("chaos: no event twice on a province topic, sequences rising per entity, no hanging transaction");
    for (p, k) in &kill_counts {
        assert!(*k >= kills, "{p} was killed {k} times, fewer than {kills}");
    }
    assert!(
        broker_kills.len() >= broker_kills_wanted,
        "brokers were killed {} times, fewer than {broker_kills_wanted}",
        broker_kills.len()
    );
}

/// The node id of the leader of `topic`'s `partition`, from metadata.
fn partition_leader(
    kafka: &govbus_kafka_client::KafkaConfig,
    topic: &str,
    partition: i32,
) -> Option<u32> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = kafka.client().create().ok()?;
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .ok()?;
    let t = md.topics().iter().find(|t| t.name() == topic)?;
    let p = t.partitions().iter().find(|p| p.id() == partition)?;
    u32::try_from(p.leader()).ok()
}

/// The highest outbox id the producer's store has handed out.
fn outbox_last_id(outbox: &Path) -> i64 {
    rusqlite::Connection::open(outbox)
        .and_then(|db| {
            db.query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'govbus_outbox'",
                [],
                |r| r.get(0),
            )
        })
        .expect("the producer's store names its last outbox id")
}

/// The outbox id a central record carries (`govbus.outbox` = `<relay>:<id>`).
fn outbox_id(m: &rdkafka::message::OwnedMessage) -> Option<i64> {
    use rdkafka::message::Headers;
    let h = m
        .headers()?
        .iter()
        .find(|h| h.key == govbus_producer::relay::OUTBOX_HEADER)?;
    govbus_producer::relay::outbox_tag(h.value?).map(|(_, id)| id)
}

/// A view record's `govbus.txn` header: `<transactional id>/<session
/// start>/<transaction number>`.
fn txn_of(m: &rdkafka::message::OwnedMessage) -> Option<String> {
    use rdkafka::message::Headers;
    let h = m.headers()?.iter().find(|h| h.key == "govbus.txn")?;
    Some(String::from_utf8_lossy(h.value?).into_owned())
}

#[test]
fn exactly_once_while_every_agent_and_broker_is_killed() {
    chaos(1);
}

/// Scale-out: two routers in one consumer group (the group divides the
/// central topic's partitions between them; killing either hands its
/// partitions to the other and back), both killed at random, brokers too:
/// no loss, no duplicate.
#[test]
fn two_routers_in_one_group_survive_each_others_death() {
    chaos(2);
}
