//! Agencies as principals: on Apache Kafka with TLS, SCRAM-SHA-512 and the
//! authorizer on, each govbus command is refused what its agency's grants
//! (`govbus acl apply`) do not allow, with an error naming why.

use std::path::{Path, PathBuf};
use std::time::Duration;

use govbus_e2e::{unique, wait_until, Bus, Worker};
use govbus_producer::{ChangeRequest, Relay};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
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

/// A province consumer's config: `subscriber`'s views, as `user`.
fn consumer_toml(bus: &Bus, subscriber: &str, user: &str, password: &Path) -> String {
    format!(
        "[consumer]\nsubscriber = \"{subscriber}\"\nregistry = \"{}\"\ntopic_prefix = \"{}\"\n\
         [consumer.sink]\ntype = \"sqlite\"\npath = \"{}\"\n{}",
        bus.registry,
        bus.prefix,
        bus.dir
            .path()
            .join(format!("{}.db", unique("sink-")))
            .display(),
        kafka_section(bus, "consumer", user, password)
    )
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
    // p52 itself reads it, as `govbus consume` does.
    let p52 = write(
        dir,
        "p52.toml",
        &consumer_toml(&bus, "p52", "p52", &password_of(&bus, "p52")),
    );

    // A wrong password: refused at connection, the password never shown.
    let wrong = write(dir, "wrong-password", "not-the-password\n");
    let bad = write(
        dir,
        "p52-wrong.toml",
        &consumer_toml(&bus, "p52", "p52", Path::new(&wrong)),
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
        &consumer_toml(&bus, "p92", "p52", &password_of(&bus, "p52")),
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
    let producer: BaseProducer = bus.kafka_of("p52").producer().create().unwrap();
    for topic in [
        view52.clone(),
        format!("{}sub.p92.bca.residents.v1", bus.prefix),
    ] {
        producer
            .send(BaseRecord::to(&topic).key("k").payload("v"))
            .unwrap_or_else(|(e, _)| panic!("{e}"));
        let res = producer.flush(Duration::from_secs(30));
        let delivered = govbus_e2e::read_all(&bus.kafka, &topic)
            .iter()
            .any(|m| rdkafka::Message::key(m) == Some(b"k".as_slice()));
        assert!(!delivered, "p52 wrote {topic} ({res:?})");
    }

    // The subscription expires: `govbus acl apply` takes p52's read away,
    // and its consumer is refused.
    let deploy = dir.join("deploy");
    copy_dir(
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
    let (ok, out) = govbus(&["consume", "-c", &p52]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("not authorized to describe topic {view52}")),
        "{out}"
    );
}

/// Whether `topic` has partitions yet (as the super user sees it).
fn exists(bus: &Bus, topic: &str) -> bool {
    let probe: rdkafka::consumer::BaseConsumer =
        bus.kafka.consumer(&unique("probe-")).create().unwrap();
    govbus_core::kafka::partitions_of(&probe, topic).is_ok_and(|p| !p.is_empty())
}

fn copy_dir(from: &Path, to: &Path) {
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
