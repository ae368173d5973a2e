//! Agencies as principals: on Apache Kafka with TLS, SCRAM-SHA-512 and the
//! authorizer on, each govbus command is refused what its agency's grants
//! (`govbus acl apply`) do not allow, with an error naming why.

use std::path::{Path, PathBuf};
use std::time::Duration;

use govbus_e2e::{unique, wait_until, Bus, Worker};
use govbus_producer::{ChangeRequest, Relay};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

fn govbus(args: &[&str]) -> (bool, String) {
    govbus_e2e::run(env!("CARGO_BIN_EXE_govbus"), args)
}

/// `[<section>.kafka]` connecting as `user` with the password in `password`.
fn kafka_section(bus: &Bus, section: &str, user: &str, password: &Path) -> String {
    let sec = bus.broker.secure().expect("a secured bus");
    format!(
        "[{section}.kafka]\nbootstrap = \"{}\"\n[{section}.kafka.security]\nprotocol = \"sasl_ssl\"\n\
         ca = \"{}\"\nusername = \"{user}\"\npassword = {{ file = \"{}\" }}\n",
        bus.broker.bootstrap,
        sec.ca.display(),
        password.display()
    )
}

fn password_of(bus: &Bus, user: &str) -> PathBuf {
    bus.broker.secure().expect("a secured bus").passwords[user].clone()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let f = dir.join(name);
    std::fs::write(&f, text).unwrap();
    f.to_str().unwrap().to_string()
}

/// A province consumer's config: `subscriber`'s views, as `user`, into
/// the SQLite database `sink`.
fn consumer_toml(bus: &Bus, subscriber: &str, user: &str, password: &Path, sink: &Path) -> String {
    format!(
        "[consumer]\nsubscriber = \"{subscriber}\"\nregistry = \"{}\"\ntopic_prefix = \"{}\"\n\
         [consumer.sink]\ntype = \"sqlite\"\npath = \"{}\"\n{}",
        bus.registry,
        bus.prefix,
        sink.display(),
        kafka_section(bus, "consumer", user, password)
    )
}

/// A sink path of its own.
fn sink_path(bus: &Bus) -> PathBuf {
    bus.dir.path().join(format!("{}.db", unique("sink-")))
}

/// A ministry agent's config publishing as `agency`, connecting as `user`.
fn producer_toml(bus: &Bus, agency: &str, user: &str) -> String {
    format!(
        "[producer]\nagency = \"{agency}\"\nsystem = \"t\"\nregistry = \"{}\"\ntopic_prefix = \"{}\"\n\
         listen = \"127.0.0.1:0\"\nstore = \"sqlite://{}\"\n{}",
        bus.registry,
        bus.prefix,
        bus.dir.path().join(format!("{}.db", unique("outbox-"))).display(),
        kafka_section(bus, "producer", user, &password_of(bus, user))
    )
}

#[test]
fn each_agency_is_refused_what_its_grants_do_not_allow_naming_why() {
    let bus = Bus::secured();
    let dir = bus.dir.path();
    // The bus runs: bca's change reaches p52's view through the router.
    let publisher = bus.publisher("t");
    let _router = bus.router();
    let relay = Relay::new(&bus.kafka_of("bca"), publisher.store(), publisher.wakeup()).unwrap();
    let _relay = Worker::spawn("relay", move |stop| relay.run(stop));
    let change = ChangeRequest::Upsert(json!({
        "citizen_id": "052090000001", "full_name": "Lê Văn An", "date_of_birth": "1979-09-02",
        "sex": "MALE", "ethnicity": "Kinh",
        "permanent_address": {"province_code": "52", "commune_code": "21553"},
        "updated_at": govbus_core::now_ms()
    }));
    publisher.submit("bca.residents", change).unwrap();
    let view52 = format!("{}sub.p52.bca.residents.v1", bus.prefix);
    wait_until(Duration::from_secs(60), "the change in p52's view", || {
        (exists(&bus, &view52) && !govbus_e2e::read_all(&bus.kafka, &view52).is_empty())
            .then_some(())
    });
    // p52 itself reads it, as `govbus consume` does: the row reaches its table.
    let p52_sink = sink_path(&bus);
    let p52 = write(
        dir,
        "p52.toml",
        &consumer_toml(&bus, "p52", "p52", &password_of(&bus, "p52"), &p52_sink),
    );
    {
        let mut agent = Agent::spawn(&["consume", "-c", &p52], dir.join("p52.log"));
        wait_until(Duration::from_secs(60), "the change in p52's table", || {
            agent.alive();
            let db = rusqlite::Connection::open(&p52_sink).ok()?;
            let id: String = db
                .query_row("SELECT citizen_id FROM bca_residents", [], |r| r.get(0))
                .ok()?;
            (id == "052090000001").then_some(())
        });
    }

    // A wrong password: refused at connection, the password never shown.
    let wrong = write(dir, "wrong-password", "not-the-password\n");
    let bad = write(
        dir,
        "p52-wrong.toml",
        &consumer_toml(&bus, "p52", "p52", Path::new(&wrong), &sink_path(&bus)),
    );
    let (ok, out) = govbus(&["consume", "-c", &bad]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("cannot connect to Kafka") && out.contains("as User:p52"),
        "{out}"
    );
    assert!(out.contains("Authentication failed"), "{out}");
    assert!(
        !out.contains("not-the-password"),
        "the password leaked: {out}"
    );

    // p52 reading p92's view.
    let as_p92 = write(
        dir,
        "p52-as-p92.toml",
        &consumer_toml(
            &bus,
            "p92",
            "p52",
            &password_of(&bus, "p52"),
            &sink_path(&bus),
        ),
    );
    let (ok, out) = govbus(&["consume", "-c", &as_p92]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "not authorized to describe topic {}sub.p92.bca.residents.v1",
            bus.prefix
        )),
        "{out}"
    );

    // bca writing moha's dataset.
    let bca_as_moha = write(dir, "bca-as-moha.toml", &producer_toml(&bus, "moha", "bca"));
    let (ok, out) = govbus(&["produce", "-c", &bca_as_moha]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "User:bca may not Write topic {}gov.moha.admin_units.v1",
            bus.prefix
        )),
        "{out}"
    );

    // A province writing anything: a ministry's dataset through govbus,
    // and its own view or another's directly.
    let p52_as_bca = write(dir, "p52-as-bca.toml", &producer_toml(&bus, "bca", "p52"));
    let rows = write(dir, "rows.jsonl", "{}\n");
    let (ok, out) = govbus(&[
        "publish",
        "-c",
        &p52_as_bca,
        "--file",
        &rows,
        "--dataset",
        "bca.residents",
    ]);
    assert!(!ok, "{out}");
    // Its rules look codes up in moha's dataset, which p52 may not read.
    assert!(
        out.contains(&format!("following {}gov.moha.admin_units.v1", bus.prefix))
            && out.contains("TopicAuthorizationFailed"),
        "{out}"
    );
    // The broker refuses each record, and none lands.
    let producer: FutureProducer = bus.kafka_of("p52").producer().create().unwrap();
    for topic in [
        view52.clone(),
        format!("{}sub.p92.bca.residents.v1", bus.prefix),
    ] {
        let delivery = producer
            .send_result(FutureRecord::to(&topic).key("k").payload("v"))
            .unwrap_or_else(|(e, _)| panic!("queueing for {topic}: {e}"));
        match futures_executor::block_on(delivery).expect("a delivery report") {
            Err((e, _)) => assert_eq!(
                e.rdkafka_error_code(),
                Some(RDKafkaErrorCode::TopicAuthorizationFailed),
                "p52 writing {topic}: {e}"
            ),
            Ok(at) => panic!("p52 wrote {topic} at {at:?}"),
        }
        let landed = govbus_e2e::read_all(&bus.kafka, &topic)
            .iter()
            .any(|m| rdkafka::Message::key(m) == Some(b"k".as_slice()));
        assert!(!landed, "p52's record is in {topic}");
    }

    // The subscription expires: `govbus acl apply` takes p52's read away,
    // and its consumer is refused.
    let deploy = dir.join("deploy");
    govbus_e2e::copy_dir(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy")
            .as_path(),
        &deploy,
    );
    let sub = deploy.join("subscriptions/p52.bca.residents.toml");
    let text = std::fs::read_to_string(&sub).unwrap();
    std::fs::write(&sub, format!("{text}expires = \"2026-01-31\"\n")).unwrap();
    let platform = write(
        dir,
        "platform.toml",
        &format!(
            "deploy = \"{}\"\nschemas = \"{}\"\n[router]\nregistry = \"{}\"\ngroup = \"{}\"\ntopic_prefix = \"{}\"\n{}\
             [acl]\noperators = [\"ops\"]\n{}",
            deploy.display(),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas").display(),
            bus.registry,
            bus.router_group,
            bus.prefix,
            kafka_section(&bus, "router", "router", &password_of(&bus, "router")),
            kafka_section(&bus, "acl", "admin", &password_of(&bus, "admin")),
        ),
    );
    let (ok, out) = govbus(&["acl", "plan", "-c", &platform]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("- User:p52 Read topic {view52}")),
        "{out}"
    );
    assert!(!out.contains("+ "), "nothing else changes: {out}");
    let (ok, out) = govbus(&["acl", "apply", "-c", &platform]);
    assert!(ok, "{out}");
    let (ok, out) = govbus(&["acl", "plan", "-c", &platform]);
    assert!(
        ok && out.contains("the broker's ACLs match the plan"),
        "{out}"
    );
    // The plan as Strimzi KafkaUsers lists exactly the ACLs the broker
    // now holds for those users.
    let (ok, yaml) = govbus(&["acl", "plan", "-c", &platform, "--strimzi", "c"]);
    assert!(ok, "{yaml}");
    let mut listed = std::collections::BTreeSet::new();
    let mut users = std::collections::BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(&yaml) {
        let d: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
        let Some(user) = d["metadata"]["name"].as_str() else {
            continue;
        };
        users.insert(format!("User:{user}"));
        for a in d["spec"]["authorization"]["acls"].as_array().unwrap() {
            let r = &a["resource"];
            for op in a["operations"].as_array().unwrap() {
                listed.insert(format!(
                    "User:{user} {} {} {} {}",
                    op.as_str().unwrap(),
                    r["type"].as_str().unwrap(),
                    r["name"].as_str().unwrap_or("kafka-cluster"),
                    r["patternType"].as_str().unwrap_or("literal"),
                ));
            }
        }
    }
    let (held, _) = govbus_kafka_client::acl::AclAdmin::new(&bus.kafka)
        .unwrap()
        .describe()
        .unwrap();
    let on_broker: std::collections::BTreeSet<String> = held
        .iter()
        .filter(|a| users.contains(&a.principal))
        .map(|a| {
            use govbus_kafka_client::acl::{Pattern, Resource};
            format!(
                "{} {:?} {} {} {}",
                a.principal,
                a.operation,
                match a.resource {
                    Resource::Topic => "topic",
                    Resource::Group => "group",
                    Resource::Cluster => "cluster",
                    Resource::TransactionalId => "transactionalId",
                },
                a.name,
                if a.pattern == Pattern::Prefixed {
                    "prefix"
                } else {
                    "literal"
                },
            )
        })
        .collect();
    assert!(users.contains("User:p52") && !listed.is_empty());
    assert_eq!(listed, on_broker, "KafkaUsers' ACLs and the broker's");
    let (ok, out) = govbus(&["consume", "-c", &p52]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("not authorized to describe topic {view52}")),
        "{out}"
    );

    // A write the broker refuses is an error, not a silent success: as
    // the router, who may read the control topic but not write it,
    // `subscriptions apply` fails naming the refusal; as the operator
    // (`[acl.kafka]`) it applies.
    let as_router = write(
        dir,
        "router-only.toml",
        &format!(
            "deploy = \"{}\"\nschemas = \"{}\"\n[router]\nregistry = \"{}\"\ngroup = \"{}\"\ntopic_prefix = \"{}\"\n{}",
            deploy.display(),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas").display(),
            bus.registry,
            bus.router_group,
            bus.prefix,
            kafka_section(&bus, "router", "router", &password_of(&bus, "router")),
        ),
    );
    let subs = deploy.join("subscriptions");
    let (ok, out) = govbus(&[
        "subscriptions",
        "apply",
        subs.to_str().unwrap(),
        "-c",
        &as_router,
        "--scope",
        "all",
    ]);
    assert!(!ok && out.contains("TopicAuthorizationFailed"), "{out}");
    let (ok, out) = govbus(&[
        "subscriptions",
        "apply",
        subs.to_str().unwrap(),
        "-c",
        &platform,
        "--scope",
        "all",
    ]);
    assert!(ok, "{out}");

    // `govbus acl users`: every user the plan names, from a directory of
    // password files; one missing is named, and p52's new password takes
    // over from its old one.
    let passwords = dir.join("passwords");
    std::fs::create_dir_all(&passwords).unwrap();
    let acl_users = || {
        govbus(&[
            "acl",
            "users",
            "-c",
            &platform,
            "--passwords",
            passwords.to_str().unwrap(),
        ])
    };
    let (ok, out) = acl_users();
    assert!(
        !ok && out.contains("no password file in") && out.contains("p52"),
        "{out}"
    );
    for u in govbus_e2e::PRINCIPALS {
        std::fs::copy(password_of(&bus, u), passwords.join(u)).unwrap();
    }
    std::fs::write(passwords.join("p52"), "a-new-password-for-p52\n").unwrap();
    let (ok, out) = acl_users();
    assert!(ok && out.contains("ok  p52"), "{out}");
    let as_p52 = |password: &Path| {
        let pw = govbus_core::secret::Secret::load(govbus_core::secret::SecretSource::File(
            password.to_path_buf(),
        ))
        .unwrap();
        let kafka = govbus_kafka_client::KafkaConfig::new(&bus.broker.bootstrap).with_security(
            govbus_kafka_client::KafkaSecurity::scram(&bus.broker.secure().unwrap().ca, "p52", pw),
        );
        govbus_kafka_client::connect(&kafka, Duration::from_secs(5)).is_ok()
    };
    wait_until(
        Duration::from_secs(30),
        "p52's new password to work",
        || as_p52(&passwords.join("p52")).then_some(()),
    );
    assert!(
        !as_p52(&password_of(&bus, "p52")),
        "p52's old password still works"
    );
}

/// Whether `topic` has partitions yet (as the super user sees it).
fn exists(bus: &Bus, topic: &str) -> bool {
    let probe: rdkafka::consumer::BaseConsumer =
        bus.kafka.consumer(&unique("probe-")).create().unwrap();
    govbus_kafka_client::partitions_of(&probe, topic).is_ok_and(|p| !p.is_empty())
}

/// A govbus agent process, killed when dropped; its output in `log`.
struct Agent {
    child: std::process::Child,
    log: PathBuf,
}

impl Agent {
    fn spawn(args: &[&str], log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_govbus"))
            .args(args)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics, with the agent's output, if it exited.
    fn alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the agent exited ({status}):\n{}", self.output());
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A ureq agent trusting only `ca`.
fn https_client(ca: &Path) -> ureq::Agent {
    govbus_http::ClientAccess {
        ca: Some(ca.to_path_buf()),
        user: None,
        token: None,
    }
    .agent(ureq::AgentBuilder::new().timeout(Duration::from_secs(10)))
    .unwrap()
}

/// `(status, body)` of a call, whatever the status.
fn call(req: ureq::Request, body: Option<&str>) -> (u16, String) {
    let res = match body {
        Some(b) => req.set("content-type", "application/json").send_string(b),
        None => req.call(),
    };
    match res {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

#[test]
fn the_registry_and_ingest_speak_https_and_refuse_strangers_and_other_ministries() {
    let bus = Bus::secured();
    let dir = bus.dir.path();
    let sec = bus.broker.secure().unwrap();
    let ca = sec.ca.clone();
    let registry_cert = sec
        .authority
        .issue("registry", &["127.0.0.1", "localhost"])
        .unwrap();
    let ingest_cert = sec
        .authority
        .issue("ingest", &["127.0.0.1", "localhost"])
        .unwrap();
    // Tokens: each ministry's for the registry, a source system's for moha's ingest.
    let tokens: Vec<(&str, String)> = ["bca", "moha", "ops", "danh-muc-dvhc"]
        .iter()
        .map(|n| (*n, govbus_http::new_token().unwrap()))
        .collect();
    let token = |n: &str| tokens.iter().find(|(k, _)| *k == n).unwrap().1.clone();
    let line = |n: &str| govbus_http::credential_line(n, &token(n));
    let registry_creds = write(
        dir,
        "registry.credentials",
        &format!("{}\n{}\n{}\n", line("bca"), line("moha"), line("ops")),
    );
    let ingest_creds = write(
        dir,
        "ingest.credentials",
        &format!("{}\n", line("danh-muc-dvhc")),
    );
    for n in ["bca", "moha"] {
        write(
            dir,
            &format!("{n}.registry-token"),
            &format!("{}\n", token(n)),
        );
    }

    // The registry, as the platform runs it: HTTPS, credentials, on Kafka as `registry`.
    let port = govbus_e2e::free_port();
    let platform = write(
        dir,
        "platform.toml",
        &format!(
            "[registry]\nlisten = \"127.0.0.1:{port}\"\ntopic = \"{}\"\ntopic_prefix = \"{}\"\n\
             [registry.tls]\ncertificate = \"{}\"\nkey = \"{}\"\n\
             [registry.auth]\ncredentials = \"{registry_creds}\"\nadmins = [\"ops\"]\n{}",
            bus.topics.schemas(),
            bus.prefix,
            registry_cert.cert.display(),
            registry_cert.key.display(),
            kafka_section(&bus, "registry", "registry", &password_of(&bus, "registry")),
        ),
    );
    let mut registry = Agent::spawn(&["registry", "-c", &platform], dir.join("registry.log"));
    let url = format!("https://127.0.0.1:{port}");
    let client = https_client(&ca);
    // Without credentials: refused, saying how to authenticate.
    let (status, body) = wait_until(
        Duration::from_secs(60),
        "the registry to answer over HTTPS",
        || {
            registry.alive();
            let (s, b) = call(client.get(&format!("{url}/subjects")), None);
            (s != 0).then_some((s, b))
        },
    );
    assert_eq!(status, 401, "{body}");
    assert!(
        body.contains("\"error_code\":401") && body.contains("authentication required"),
        "{body}"
    );
    // Plain HTTP to it gets nothing.
    let (s, _) = call(
        ureq::get(&format!("http://127.0.0.1:{port}/subjects")),
        None,
    );
    assert_eq!(s, 0, "plain HTTP must not be served");
    // A known principal reads.
    let (s, body) = call(
        client
            .get(&format!("{url}/subjects"))
            .set("authorization", &format!("Bearer {}", token("bca"))),
        None,
    );
    assert_eq!(s, 200, "{body}");

    // moha's producer, as moha runs it: registers its subjects over HTTPS
    // as `moha`, serves its ingest over HTTPS to its source system.
    let ingest_port = govbus_e2e::free_port();
    let producer = |name: &str, agency: &str, user: &str, ingest: u16| {
        format!(
            "[producer]\nagency = \"{agency}\"\nsystem = \"t\"\nregistry = \"{url}\"\ntopic_prefix = \"{}\"\n\
             listen = \"127.0.0.1:{ingest}\"\nstore = \"sqlite://{}\"\n\
             [producer.registry_access]\nca = \"{}\"\nuser = \"{user}\"\ntoken = {{ file = \"{}\" }}\n\
             [producer.tls]\ncertificate = \"{}\"\nkey = \"{}\"\n\
             [producer.auth]\ncredentials = \"{ingest_creds}\"\n{}",
            bus.prefix,
            dir.join(format!("{name}.db")).display(),
            ca.display(),
            dir.join(format!("{user}.registry-token")).display(),
            ingest_cert.cert.display(),
            ingest_cert.key.display(),
            kafka_section(&bus, "producer", user, &password_of(&bus, user)),
        )
    };
    let moha_toml = write(
        dir,
        "moha.toml",
        &producer("moha", "moha", "moha", ingest_port),
    );
    let mut moha = Agent::spawn(&["produce", "-c", &moha_toml], dir.join("moha.log"));
    let changes = format!("https://127.0.0.1:{ingest_port}/v1/datasets/moha.admin_units/changes");
    let unit = r#"{"op": "upsert", "data": {"code": "52", "name": "Gia Lai", "level": "PROVINCE", "parent_code": null, "valid_from": "2025-07-01", "valid_to": null, "successors": [], "history": []}}"#;
    let (s, body) = wait_until(
        Duration::from_secs(90),
        "moha's ingest to answer over HTTPS",
        || {
            moha.alive();
            let (s, b) = call(client.post(&changes), Some(unit));
            (s != 0).then_some((s, b))
        },
    );
    // Posting without credentials: refused, the reason in the ingest's JSON shape.
    assert_eq!(s, 401, "{body}");
    assert!(
        body.contains("\"error\":\"authentication required"),
        "{body}"
    );
    let (s, body) = call(
        client
            .post(&changes)
            .set("authorization", "Bearer not-a-token"),
        Some(unit),
    );
    assert_eq!(
        (s, body.contains("unknown credentials")),
        (401, true),
        "{body}"
    );
    let (s, body) = call(
        client.post(&changes).set(
            "authorization",
            &format!("Bearer {}", token("danh-muc-dvhc")),
        ),
        Some(unit),
    );
    assert_eq!(s, 202, "{body}");

    // bca registering moha's subject: refused by the registry, and
    // `govbus produce` stops saying so.
    let bca_as_moha = write(
        dir,
        "bca-as-moha-https.toml",
        &producer("bca-as-moha", "moha", "bca", govbus_e2e::free_port()),
    );
    let (ok, out) = govbus(&["produce", "-c", &bca_as_moha]);
    assert!(!ok, "{out}");
    let subject = format!("{}gov.moha.admin_units.v1-value", bus.prefix);
    assert!(
        out.contains(&format!("bca may not change subject {subject}")),
        "{out}"
    );
    assert!(!out.contains(&token("bca")), "a token leaked: {out}");
    drop(moha);
    drop(registry);
}

/// The CA that signed the test PostgreSQL's certificate (`.ci/run` makes
/// it): `GOVBUS_TEST_PG_CA`, else the cache `.ci/run` writes it to.
fn pg_ca() -> PathBuf {
    std::env::var_os("GOVBUS_TEST_PG_CA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/govbus/pg-tls/ca.pem")
        })
}

fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

#[test]
fn postgres_connections_honour_sslmode_and_verify_the_server() {
    let ca = pg_ca();
    assert!(ca.exists(), "{} is missing: run .ci/run's PostgreSQL step (it gives PostgreSQL a certificate for 127.0.0.1)", ca.display());
    let base = govbus_e2e::pg_url();
    let tls_of = |c: &mut postgres::Client| -> bool {
        c.query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0)
    };
    // verify-full: encrypted, the certificate checked against the CA and the host.
    let full = with_params(
        &base,
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    );
    let mut c = govbus_pg::connect(&full).unwrap();
    assert!(tls_of(&mut c));
    // disable: plain.
    let mut c = govbus_pg::connect(&with_params(&base, "sslmode=disable")).unwrap();
    assert!(!tls_of(&mut c));
    // A CA that did not sign the server's certificate: refused, saying why.
    let dir = tempfile::tempdir().unwrap();
    let other = govbus_kafka::tls::Authority::create(dir.path()).unwrap();
    let wrong = with_params(
        &base,
        &format!("sslmode=verify-full&sslrootcert={}", other.ca().display()),
    );
    let e = govbus_pg::connect(&wrong)
        .err()
        .expect("an unknown CA must be refused")
        .to_string();
    assert!(e.contains("certificate verify failed"), "{e}");
    // require encrypts without verifying: the same wrong CA is not read.
    let mut c = govbus_pg::connect(&with_params(&base, "sslmode=require")).unwrap();
    assert!(tls_of(&mut c));
    // No password in the URL: it comes from a password file, as libpq's.
    let parsed: postgres::Config = base.parse().unwrap();
    let password = String::from_utf8(parsed.get_password().unwrap().to_vec()).unwrap();
    let (host, port) = match (parsed.get_hosts().first(), parsed.get_ports().first()) {
        (Some(postgres::config::Host::Tcp(h)), Some(p)) => (h.clone(), *p),
        other => panic!("a TCP PostgreSQL is expected: {other:?}"),
    };
    let (user, db) = (parsed.get_user().unwrap(), parsed.get_dbname().unwrap());
    let passfile = dir.path().join("pgpass");
    std::fs::write(&passfile, format!("{host}:{port}:{db}:{user}:{password}\n")).unwrap();
    let bare = format!(
        "postgres://{user}@{host}:{port}/{db}?sslmode=verify-full&sslrootcert={}&passfile={}",
        ca.display(),
        passfile.display()
    );
    let mut c = govbus_pg::connect(&bare).unwrap();
    assert!(tls_of(&mut c));
    std::fs::write(&passfile, format!("{host}:{port}:{db}:{user}:wrong\n")).unwrap();
    let e = govbus_pg::connect(&bare)
        .err()
        .expect("a wrong password must be refused")
        .to_string();
    assert!(
        e.contains("password authentication failed") && !e.contains("wrong"),
        "{e}"
    );
    // A province's sink on verify-full applies over TLS.
    let schema = unique("p52_tls_");
    let sink = govbus_consumer::SinkConfig::from_url(&full, &schema).build();
    assert!(sink.is_ok(), "{:?}", sink.err());
    let mut c = govbus_pg::connect(&full).unwrap();
    c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .unwrap();
}

/// `govbus schema check -c` checks a schema change against the
/// subscriptions in force on the control topic, not the files: with only
/// p52's subscription applied, renaming the commune code names p52's and
/// not p92's.
#[test]
fn schema_check_reads_the_subscriptions_in_force() {
    let bus = Bus::start();
    let dir = bus.dir.path();
    let _publisher = bus.publisher("t"); // registers bca.residents' schema
    let mut in_force = govbus_core::Catalog::builtin();
    in_force
        .subscriptions
        .retain(|s| s.file.subscriber == "p52");
    govbus_e2e::apply_subscriptions(&bus.kafka, &bus.prefix, &in_force, false);
    // The agency's working copy renames the commune code.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    govbus_e2e::copy_dir(&repo.join("deploy"), &dir.join("deploy"));
    govbus_e2e::copy_dir(&repo.join("schemas"), &dir.join("schemas"));
    let avsc = dir.join("schemas/bca/residents.v2.avsc");
    let mut schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&avsc).unwrap()).unwrap();
    schema["fields"][5]["type"]["fields"][1] =
        json!({"name": "commune", "type": "string", "default": ""});
    std::fs::write(&avsc, schema.to_string()).unwrap();
    let platform = write(
        dir,
        "platform-plain.toml",
        &format!(
            "[router]\nregistry = \"{}\"\ntopic_prefix = \"{}\"\n[router.kafka]\nbootstrap = \"{}\"\n",
            bus.registry, bus.prefix, bus.broker.bootstrap
        ),
    );
    let args = |live: bool| {
        let mut a = vec![
            "schema".to_string(),
            "check".into(),
            "--registry".into(),
            bus.registry.clone(),
            "--deploy".into(),
            dir.join("deploy").display().to_string(),
            "--schemas".into(),
            dir.join("schemas").display().to_string(),
            "--topic-prefix".into(),
            bus.prefix.clone(),
        ];
        if live {
            a.extend(["-c".into(), platform.clone()]);
        }
        a
    };
    let run = |live: bool| {
        let a = args(live);
        govbus(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // From the files: both subscriptions break.
    let (ok, out) = run(false);
    assert!(
        !ok && out.contains("p52/bca.residents") && out.contains("p92/bca.residents"),
        "{out}"
    );
    // In force: p52's only.
    let (ok, out) = run(true);
    assert!(!ok, "{out}");
    assert!(out.contains("subscriptions in force: 1"), "{out}");
    assert!(
        out.contains("p52/bca.residents") && !out.contains("p92/bca.residents"),
        "{out}"
    );
}
