//! The production topology, natively: docker-compose.yml (secured) and
//! docker-compose.laptop.yml (plaintext) read as they are, their Kafka
//! brokers started from the jars with the compose file's broker settings,
//! and every govbus service started as a process with the compose file's
//! command and environment — host names and container paths mapped to
//! loopback ports and scratch directories, `/run/secrets` to the files
//! `govbus secrets generate` writes, nothing else changed. Changes posted to
//! bca's ingest then reach p52's PostgreSQL and p92's SQLite exactly as the
//! source says; on the secured file, each agent's user is refused what its
//! grants do not allow. So the compose files and the tested setup cannot
//! drift apart: the test has no configuration of its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use govbus_e2e::{expected_rows, free_port, kafka_dist, pg_rows, pg_url, poll_until, unique};
use govbus_producer::demo::DemoWorld;
use govbus_producer::ChangeRequest;
use serde_json::json;
use serde_yaml::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Broker settings that say where a node sits (ports, names, ids, its
/// directory) and how its listeners speak (TLS files, SASL): the native
/// cluster decides those itself (on the secured file, SASL_SSL with
/// SCRAM-SHA-512 between brokers as admin, as start.sh configures).
const TOPOLOGY: &[&str] = &[
    "process.roles",
    "controller.quorum.voters",
    "listeners",
    "listener.security.protocol.map",
    "controller.listener.names",
    "inter.broker.listener.name",
    "node.id",
    "advertised.listeners",
    "cluster.id",
    "log.dirs",
    "sasl.enabled.mechanisms",
    "sasl.mechanism.inter.broker.protocol",
    "ssl.keystore.type",
    "ssl.keystore.location",
    "ssl.truststore.type",
    "ssl.truststore.location",
];

/// The brokers' settings: deploy/kafka/compose/server.properties where the
/// brokers start with deploy/kafka/compose/start.sh, else the image's
/// `KAFKA_*` variables as the image turns them into properties.
fn broker_settings(kafka: &Value) -> Vec<(String, String)> {
    if kafka.get("entrypoint").is_some() {
        let text = std::fs::read_to_string(repo().join("deploy/kafka/compose/server.properties"))
            .expect("the brokers' server.properties");
        return text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
    }
    env_of(kafka)
        .into_iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix("KAFKA_")?.to_lowercase().replace('_', ".");
            Some((key, v))
        })
        .collect()
}

fn env_of(service: &Value) -> BTreeMap<String, String> {
    service
        .get("environment")
        .and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ => return None,
                    };
                    Some((k.as_str()?.to_string(), v))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One compose service as a process.
struct Service {
    name: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    dir: PathBuf,
    one_shot: bool,
    child: Option<Child>,
    restarts: usize,
}

impl Service {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("service.log"))
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_govbus"))
            .args(&self.args)
            .envs(&self.env)
            .env("RUST_LOG", "warn")
            .env("GOVBUS_EXIT_WITH_PARENT", "1")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start govbus");
        self.child = Some(child);
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("service.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn the_secured_compose_topology_runs_natively_delivers_and_refuses() {
    run_topology("docker-compose.yml", true);
}

#[test]
fn the_laptop_compose_topology_runs_natively_and_delivers() {
    run_topology("docker-compose.laptop.yml", false);
}

/// Runs `file`'s topology natively until both provinces hold their views;
/// `secured`: the file must run Kafka secured, and each user is refused
/// what its grants do not allow.
fn run_topology(file: &str, secured: bool) {
    // One topology at a time: each is three brokers and eleven services.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    govbus_e2e::init_logs();
    let text = std::fs::read_to_string(repo().join(file)).expect("compose file");
    let mut doc: Value = serde_yaml::from_str(&text).expect("compose YAML");
    doc.apply_merge().expect("merge keys");
    let services = doc["services"].as_mapping().expect("services").clone();

    // The brokers: the compose file's settings, from the jars.
    let kafkas: Vec<&Value> = services
        .values()
        .filter(|s| {
            s["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("apache/kafka"))
        })
        .collect();
    assert_eq!(kafkas.len(), 3, "three brokers in the compose file");
    let image_version = kafkas[0]["image"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap();
    assert_eq!(
        image_version,
        govbus_kafka::VERSION,
        "the compose file runs the Kafka the project pins"
    );
    let dir = tempfile::Builder::new()
        .prefix("govbus-topology-")
        .tempdir()
        .unwrap();
    let mut cfg = govbus_kafka::ClusterConfig::new(3, dir.path().join("kafka"));
    let settings = broker_settings(kafkas[0]);
    let says = |k: &str| {
        settings
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    for (k, v) in &settings {
        if TOPOLOGY.contains(&k.as_str()) {
            continue;
        }
        cfg = cfg.set(k, v.clone());
    }
    // The secrets, as `govbus secrets generate` writes them.
    let secrets = dir.path().join("secrets");
    let mut authority = None;
    if secured {
        assert_eq!(
            says("listener.security.protocol.map"),
            Some("CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL"),
            "{file}'s clients and brokers speak SASL_SSL only"
        );
        assert_eq!(says("inter.broker.listener.name"), Some("SASL_SSL"));
        assert_eq!(says("sasl.enabled.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(
            says("authorizer.class.name"),
            Some("org.apache.kafka.metadata.authorizer.StandardAuthorizer")
        );
        assert_eq!(says("allow.everyone.if.no.acl.found"), Some("false"));
        let out = Command::new(env!("CARGO_BIN_EXE_govbus"))
            .args(["secrets", "generate"])
            .arg(&secrets)
            .output()
            .expect("govbus secrets generate");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The native brokers' CA stands for the generated one; only admin
        // exists when they start (the kafka-users step makes the rest).
        let ca = govbus_kafka::tls::Authority::create(dir.path().join("tls")).unwrap();
        let admin = std::fs::read_to_string(secrets.join("admin")).unwrap();
        cfg = cfg.secured(govbus_kafka::Secured::new(&ca, admin.trim(), Vec::new()).unwrap());
        authority = Some(ca.ca());
        // The agents' .pgpass: the test database's password.
        let userinfo = pg_url()
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .map(|(u, _)| u.to_string())
            .unwrap();
        let (user, password) = userinfo.split_once(':').unwrap_or((&userinfo, ""));
        std::fs::write(secrets.join("pgpass"), format!("*:*:*:{user}:{password}\n")).unwrap();
    } else {
        assert_eq!(
            says("listener.security.protocol.map").map(|m| m.contains("SASL")),
            Some(false)
        );
    }
    let cluster =
        govbus_kafka::Cluster::start(&kafka_dist(), cfg).unwrap_or_else(|e| panic!("{e}"));
    let bootstrap = cluster.bootstrap();

    // PostgreSQL: a fresh database stands for the compose file's.
    let db = unique("topology_");
    let mut admin = postgres::Client::connect(&pg_url(), postgres::NoTls).expect("postgres");
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .expect("create database");
    let (pg_base, _) = pg_url()
        .rsplit_once('/')
        .map(|(b, d)| (b.to_string(), d.to_string()))
        .unwrap();
    let pg_host = pg_base
        .rsplit_once('@')
        .map(|(_, h)| h.to_string())
        .unwrap();

    // Every `0.0.0.0:PORT` a service listens on gets a loopback port, and
    // `service:PORT` anywhere means that port.
    let mut ports: BTreeMap<String, u16> = BTreeMap::new();
    for (name, s) in &services {
        let name = name.as_str().unwrap();
        for v in env_of(s).values() {
            if let Some(port) = v.strip_prefix("0.0.0.0:") {
                ports.insert(format!("{name}:{port}"), free_port());
            }
        }
    }
    let kafka_hosts = "kafka1:9092,kafka2:9092,kafka3:9092";
    let map = |service: &str, v: &str, scratch: &Path| -> String {
        let mut v = v.replace(kafka_hosts, &bootstrap);
        if let Some(ca) = &authority {
            v = v.replace("/run/secrets/ca.pem", &ca.display().to_string());
        }
        v = v.replace("/run/secrets", &secrets.display().to_string());
        v = v.replace("@postgres:5432/govbus", &format!("@{pg_host}/{db}"));
        if let Some(port) = v.strip_prefix("0.0.0.0:") {
            v = format!("127.0.0.1:{}", ports[&format!("{service}:{port}")]);
        }
        for (host_port, local) in &ports {
            v = v.replace(&format!("//{host_port}"), &format!("//127.0.0.1:{local}"));
        }
        v = v.replace(
            "/etc/govbus/deploy",
            &repo().join("deploy").display().to_string(),
        );
        v = v.replace(
            "/etc/govbus/schemas",
            &repo().join("schemas").display().to_string(),
        );
        v.replace("/var/lib/govbus", &scratch.display().to_string())
    };

    // The govbus services, in the file's order. The long-running ones are
    // kept running as `restart: unless-stopped` does (from the start: a
    // service may exit while the one it needs is still starting); each
    // one-shot (`restart: on-failure`) is run until it succeeds.
    let procs: Arc<Mutex<Vec<Service>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let keeper = {
        let (procs, stop) = (procs.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for p in procs.lock().unwrap().iter_mut().filter(|p| !p.one_shot) {
                    if let Some(Ok(Some(_))) = p.child.as_mut().map(|c| c.try_wait()) {
                        p.restarts += 1;
                        p.spawn();
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    for (name, s) in &services {
        let name = name.as_str().unwrap().to_string();
        if s.get("build").is_none() || s.get("profiles").is_some() {
            continue;
        }
        let scratch = dir.path().join(&name);
        std::fs::create_dir_all(&scratch).unwrap();
        let args: Vec<String> = s["command"]
            .as_sequence()
            .expect("a command")
            .iter()
            .map(|a| map(&name, a.as_str().unwrap(), &scratch))
            .collect();
        let env: BTreeMap<String, String> = env_of(s)
            .iter()
            .map(|(k, v)| (k.clone(), map(&name, v, &scratch)))
            .collect();
        let one_shot = s["restart"].as_str() == Some("on-failure");
        let mut svc = Service {
            name: name.clone(),
            args,
            env,
            dir: scratch,
            one_shot,
            child: None,
            restarts: 0,
        };
        svc.spawn();
        if one_shot {
            let done = poll_until(Duration::from_secs(120), || {
                let status = svc.child.as_mut()?.try_wait().ok()??;
                if status.success() {
                    return Some(());
                }
                svc.restarts += 1;
                svc.spawn();
                None
            });
            if done.is_none() {
                let others: String = procs
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|p| {
                        format!(
                            "--- {} ({} restarts):\n{}\n",
                            p.name,
                            p.restarts,
                            p.log_tail()
                        )
                    })
                    .collect();
                panic!(
                    "{name} did not succeed in 120 s:\n{}\n{others}",
                    svc.log_tail()
                );
            }
            eprintln!("topology: {name} done ({} retries)", svc.restarts);
        }
        procs.lock().unwrap().push(svc);
    }

    // Every long-running service's healthcheck is `govbus health` on its
    // /readyz, and passes once the service is ready.
    for (name, s) in &services {
        let name = name.as_str().unwrap();
        if s.get("build").is_none()
            || s["restart"].as_str() == Some("on-failure")
            || s.get("profiles").is_some()
        {
            continue;
        }
        let test: Vec<String> = s["healthcheck"]["test"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name} has no healthcheck"))
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        assert_eq!(test[..3], ["CMD", "govbus", "health"], "{name}: {test:?}");
        let url = test[3].replace(
            "127.0.0.1:9100",
            &format!("127.0.0.1:{}", ports[&format!("{name}:9100")]),
        );
        let mut last = String::new();
        let healthy = poll_until(Duration::from_secs(120), || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_govbus"))
                .args(["health", &url])
                .output()
                .ok()?;
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            out.status.success().then_some(())
        });
        assert!(healthy.is_some(), "{name} not healthy in 120 s: {last}");
    }
    eprintln!("topology: every service healthy");

    // A ministry's source system posts to bca's ingest.
    let ingest = format!("http://127.0.0.1:{}", ports["bca:8080"]);
    let http = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    let mut world = DemoWorld::new(2025);
    let changes = 300;
    let start = Instant::now();
    for _ in 0..changes {
        let body = match world.next_change() {
            ChangeRequest::Upsert(r) => json!({"op": "upsert", "data": r}),
            ChangeRequest::Delete { key } => json!({"op": "delete", "key": key}),
        };
        let url = format!("{ingest}/v1/datasets/bca.residents/changes");
        let posted = poll_until(Duration::from_secs(120), || {
            match http.post(&url).send_string(&body.to_string()) {
                Ok(_) => Some(Ok(())),
                Err(ureq::Error::Status(s, r)) if s < 500 && s != 404 => {
                    Some(Err(format!("{s}: {}", r.into_string().unwrap_or_default())))
                }
                Err(_) => None,
            }
        });
        match posted {
            Some(Ok(())) => {}
            Some(Err(e)) => panic!("bca's ingest refused a change: {e}"),
            None => panic!(
                "bca's ingest did not answer in 120 s:\n{}",
                procs
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|p| p.name == "bca")
                    .unwrap()
                    .log_tail()
            ),
        }
    }
    eprintln!(
        "topology: {changes} changes posted in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    // p52 into PostgreSQL (the compose file's schema), p92 into SQLite.
    let p52_schema = {
        let text = std::fs::read_to_string(repo().join("deploy/agencies/p52.toml")).unwrap();
        let t: toml::Value = toml::from_str(&text).unwrap();
        t["consumer"]["sink"]["schema"]
            .as_str()
            .unwrap_or("public")
            .to_string()
    };
    let db_url = format!("{pg_base}/{db}");
    let mut pg = postgres::Client::connect(&db_url, postgres::NoTls).expect("postgres");
    let want52 = expected_rows(&world, "52");
    let settled = poll_until(Duration::from_secs(120), || {
        (pg_rows(&mut pg, &p52_schema)? == want52).then_some(())
    });
    let tails = |who: &str| {
        procs
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.name == who)
            .map(|p| p.log_tail())
            .collect::<String>()
    };
    assert!(
        settled.is_some(),
        "p52's table did not equal its view:\n{}",
        tails("p52")
    );
    let p92_db = dir.path().join("p92/p92.db");
    let want92 = expected_rows(&world, "92");
    let settled = poll_until(Duration::from_secs(120), || {
        let conn = rusqlite::Connection::open(&p92_db).ok()?;
        let mut st = conn
            .prepare("SELECT citizen_id, permanent_address_province_code, permanent_address_commune_code FROM bca_residents")
            .ok()?;
        let got: BTreeMap<String, (String, String)> = st
            .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
            .ok()?
            .collect::<Result<_, _>>()
            .ok()?;
        let want: BTreeMap<String, (String, String)> = want92
            .iter()
            .map(|(k, v)| (k.clone(), (v[3].clone(), v[4].clone())))
            .collect();
        (got == want).then_some(())
    });
    assert!(
        settled.is_some(),
        "p92's table did not equal its view:\n{}",
        tails("p92")
    );
    eprintln!(
        "topology: p52 {} rows, p92 {} rows, equal to their views",
        want52.len(),
        want92.len()
    );
    // Secured: each user may do what its grants say, and is refused the
    // rest, as the brokers' authorizer answers it.
    if let Some(ca) = &authority {
        use govbus_kafka_client::acl::{AclAdmin, Authorized, Operation};
        let as_user = |user: &str| {
            let password = govbus_core::secret::Secret::load(
                govbus_core::secret::SecretSource::File(secrets.join(user)),
            )
            .unwrap();
            govbus_kafka_client::KafkaConfig::new(&bootstrap).with_security(
                govbus_kafka_client::KafkaSecurity::scram(ca, user, password),
            )
        };
        let may = |user: &str, topic: &str, op: Operation| -> bool {
            let answer = AclAdmin::new(&as_user(user))
                .unwrap()
                .authorized(&[topic.to_string()])
                .unwrap_or_else(|e| panic!("{user} on {topic}: {e}"));
            match &answer[0].1 {
                Authorized::Allowed(ops) => ops.contains(&op) || ops.contains(&Operation::All),
                Authorized::Refused(_) => false,
                Authorized::Missing => panic!("{topic} is missing"),
            }
        };
        let checks: &[(&str, &str, Operation, bool)] = &[
            ("p52", "sub.p52.bca.residents.v1", Operation::Read, true),
            ("p52", "sub.p92.bca.residents.v1", Operation::Read, false),
            ("p52", "gov.bca.residents.v1", Operation::Write, false),
            ("p92", "sub.p92.bca.residents.v1", Operation::Read, true),
            ("p92", "sub.p52.bca.residents.v1", Operation::Read, false),
            ("bca", "gov.bca.residents.v1", Operation::Write, true),
            ("bca", "gov.moha.admin_units.v1", Operation::Write, false),
            ("moha", "gov.moha.admin_units.v1", Operation::Write, true),
            ("moha", "gov.bca.residents.v1", Operation::Write, false),
            ("router", "_govbus.subscriptions", Operation::Read, true),
            ("router", "_govbus.subscriptions", Operation::Write, false),
            ("registry", "_schemas", Operation::Write, true),
            (
                "registry",
                "sub.p52.bca.residents.v1",
                Operation::Read,
                false,
            ),
        ];
        for (user, topic, op, allowed) in checks {
            assert_eq!(
                may(user, topic, *op),
                *allowed,
                "User:{user} {op:?} on {topic}: the grants say {}",
                if *allowed { "allowed" } else { "refused" }
            );
        }
        eprintln!(
            "topology: {} grants and refusals as the plan says",
            checks.len()
        );
    }
    let restarts: Vec<(String, usize)> = procs
        .lock()
        .unwrap()
        .iter()
        .map(|p| (p.name.clone(), p.restarts))
        .collect();
    eprintln!("topology: restarts {restarts:?}");
    stop.store(true, Ordering::Relaxed);
    keeper.join().unwrap();
    procs.lock().unwrap().clear();
    drop(pg);
    drop(cluster);
    let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
}
