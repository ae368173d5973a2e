//! Today's administrative map on a running bus (Apache Kafka): codes
//! cleaned at the edge by the date of the change, subscriptions that ask
//! the hierarchy (`in_unit`), and a change of the map that moves residents
//! between two provinces' tables live, exactly once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use govbus_e2e::{consumer_config, read_all, wait_until, Bus, Worker};
use govbus_producer::{ChangeRequest, Publisher, Relay};
use govbus_schema::{envelope, Op, SchemaCache};
use rdkafka::Message;
use serde_json::{json, Value};

/// 2026-11-27, after the reform (ms).
const AFTER: i64 = 1_764_230_400_000;
/// 2024-06-01, before the reform (ms).
const BEFORE: i64 = 1_717_200_000_000;

fn resident(id: &str, province: &str, commune: &str, at_ms: i64) -> Value {
    json!({
        "citizen_id": id, "full_name": "Thạch Thị Sa Ry", "date_of_birth": "1990-03-04",
        "sex": "FEMALE", "ethnicity": "Khmer",
        "permanent_address": {"province_code": province, "commune_code": commune, "street": null},
        "updated_at": at_ms
    })
}

/// A running bus: bca's publisher and relay with its HTTP ingest, the
/// router, and p52 and p92 applying to SQLite.
struct Running {
    bus: Bus,
    _publisher: Arc<Publisher>,
    ingest: String,
    _workers: Vec<Worker>,
}

impl Running {
    fn start() -> Self {
        let bus = Bus::start();
        let publisher = Arc::new(bus.publisher("map"));
        let relay = Relay::new(&bus.kafka, publisher.store(), publisher.wakeup()).unwrap();
        let mut workers = vec![Worker::spawn("relay", move |stop| relay.run(stop))];
        let listener = bus
            .rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let ingest = format!(
            "http://{}/v1/datasets/bca.residents/changes",
            listener.local_addr().unwrap()
        );
        bus.rt
            .spawn(govbus_producer::http::serve(listener, publisher.clone()));
        workers.push(bus.router());
        for p in ["p52", "p92"] {
            let db = bus.dir.path().join(format!("{p}.db"));
            let cfg = consumer_config(
                &bus.kafka,
                &bus.registry,
                &bus.prefix,
                p,
                db.to_str().unwrap(),
                "",
            );
            let catalog = bus.catalog.clone();
            workers.push(Worker::spawn(p, move |stop| {
                govbus_consumer::run(&cfg, &catalog, stop).unwrap()
            }));
        }
        Self {
            bus,
            _publisher: publisher,
            ingest,
            _workers: workers,
        }
    }

    fn post(&self, data: &Value) -> (u16, Value) {
        let body = json!({"op": "upsert", "data": data}).to_string();
        match ureq::post(&self.ingest).send_string(&body) {
            Ok(r) => (r.status(), r.into_json().unwrap()),
            Err(ureq::Error::Status(s, r)) => (s, r.into_json().unwrap()),
            Err(e) => panic!("{e}"),
        }
    }

    /// A province's table: citizen id → (province, commune).
    fn table(&self, p: &str) -> BTreeMap<String, (String, String)> {
        let Ok(conn) = rusqlite::Connection::open(self.bus.dir.path().join(format!("{p}.db")))
        else {
            return BTreeMap::new();
        };
        let Ok(mut st) = conn.prepare(
            "SELECT citizen_id, permanent_address_province_code, permanent_address_commune_code FROM bca_residents",
        ) else {
            return BTreeMap::new();
        };
        st.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
            .map(|rows| rows.filter_map(Result::ok).collect())
            .unwrap_or_default()
    }

    /// The records of `p`'s view of residents: (key, op).
    fn view(&self, p: &str) -> Vec<(String, Op)> {
        let resolver = SchemaCache::new(govbus_schema::RegistryClient::new(&self.bus.registry));
        read_all(
            &self.bus.kafka,
            &self
                .bus
                .topics
                .view(p, &"bca.residents".parse().unwrap(), 1),
        )
        .iter()
        .map(|m| {
            let (_, c) = envelope::decode(m.payload().unwrap(), &resolver).unwrap();
            (String::from_utf8_lossy(m.key().unwrap()).into_owned(), c.op)
        })
        .collect()
    }
}

#[test]
fn a_former_soc_trang_code_lands_in_can_tho_normalised_with_the_code_as_sent_kept() {
    let bus = Running::start();
    // Phường 5 of the former Sóc Trăng city (province 94) went whole into
    // Phường Sóc Trăng (31507) of Cần Thơ (92).
    let (status, body) = bus.post(&resident("094190000001", "94", "31498", AFTER));
    assert_eq!(status, 202, "{body}");
    wait_until(
        Duration::from_secs(60),
        "the resident in p92's table",
        || bus.table("p92").get("094190000001").cloned(),
    );
    assert_eq!(
        bus.table("p92")["094190000001"],
        ("92".to_string(), "31507".to_string())
    );
    assert!(!bus.table("p52").contains_key("094190000001"));
    // The event on the central topic keeps the codes as sent.
    let resolver = SchemaCache::new(govbus_schema::RegistryClient::new(&bus.bus.registry));
    let central = read_all(
        &bus.bus.kafka,
        &bus.bus.topics.central(&"bca.residents".parse().unwrap(), 1),
    );
    let (_, change) = envelope::decode(central[0].payload().unwrap(), &resolver).unwrap();
    let after = govbus_schema::json::to_json(&change.after.unwrap());
    let a = &after["permanent_address"];
    assert_eq!(
        (
            &a["province_code"],
            &a["commune_code"],
            &a["province_code_as_sent"],
            &a["commune_code_as_sent"]
        ),
        (&json!("92"), &json!("31507"), &json!("94"), &json!("31498")),
        "{after}"
    );
}

#[test]
fn codes_merged_in_part_or_never_existing_are_refused_and_old_dates_keep_their_meaning() {
    let bus = Running::start();
    // Merged in part: 422 naming every candidate.
    let (split, candidates) = govbus_producer::demo::split_example();
    assert!(candidates.len() > 1);
    let (status, body) = bus.post(&resident("094190000002", "94", split, AFTER));
    assert_eq!(status, 422, "{body}");
    let text = body.to_string();
    assert!(text.contains("merged in part"), "{text}");
    for c in &candidates {
        assert!(text.contains(c.as_str()), "{text} names {c}");
    }
    // Never existed.
    let (status, body) = bus.post(&resident("094190000003", "92", "99999", AFTER));
    assert_eq!(status, 422, "{body}");
    assert!(
        body.to_string()
            .contains("99999 is not a unit of the administrative map"),
        "{body}"
    );
    // Dated before the reform, the Sóc Trăng codes were valid: accepted
    // as sent, and Cần Thơ's subscription (in_unit) still receives it.
    let (status, body) = bus.post(&resident("094190000004", "94", "31498", BEFORE));
    assert_eq!(status, 202, "{body}");
    wait_until(
        Duration::from_secs(60),
        "the resident in p92's table",
        || bus.table("p92").get("094190000004").cloned(),
    );
    assert_eq!(
        bus.table("p92")["094190000004"],
        ("94".to_string(), "31498".to_string())
    );
    // Nothing refused reached a table.
    for p in ["p52", "p92"] {
        let t = bus.table(p);
        assert!(!t.contains_key("094190000002") && !t.contains_key("094190000003"));
    }
}

#[test]
fn a_map_change_moves_residents_between_two_provinces_live_and_exactly_once() {
    let bus = Running::start();
    // Residents of Xã Thới An Hội (31540, Cần Thơ) and of Phường Sóc Trăng.
    let movers = ["092190000011", "092190000012", "092190000013"];
    for id in movers {
        assert_eq!(bus.post(&resident(id, "92", "31540", AFTER)).0, 202);
    }
    assert_eq!(
        bus.post(&resident("092190000014", "92", "31507", AFTER)).0,
        202
    );
    wait_until(Duration::from_secs(60), "four residents in p92", || {
        (bus.table("p92").len() == 4).then_some(())
    });

    // moha moves Thới An Hội to Gia Lai from today, with the bus running.
    let today = govbus_core::admin_map::day_of_ms(govbus_core::now_ms()).to_string();
    let (moha, _moha_relay) = bus.bus.moha("danh-muc");
    moha.submit(
        "moha.admin_units",
        ChangeRequest::Upsert(json!({
            "code": "31540", "name": "Xã Thới An Hội", "level": "COMMUNE", "parent_code": "52",
            "valid_from": today, "valid_to": null, "successors": [],
            "history": [{"name": "Xã Thới An Hội", "level": "COMMUNE", "parent_code": "92",
                         "valid_from": "2025-07-01", "valid_to": today, "successors": []}]
        })),
    )
    .unwrap();

    wait_until(
        Duration::from_secs(120),
        "the movers in p52's table and out of p92's",
        || {
            let (t52, t92) = (bus.table("p52"), bus.table("p92"));
            (movers
                .iter()
                .all(|m| t52.contains_key(*m) && !t92.contains_key(*m))
                && t92.contains_key("092190000014"))
            .then_some(())
        },
    );
    // Exactly once: each mover left p92's view once and entered p52's once;
    // the resident who stayed got nothing more.
    let count = |view: &[(String, Op)], key: &str, op: Op| {
        view.iter().filter(|(k, o)| k == key && *o == op).count()
    };
    let (v52, v92) = (bus.view("p52"), bus.view("p92"));
    for m in movers {
        assert_eq!(count(&v92, m, Op::Delete), 1, "{m} left p92 once: {v92:?}");
        assert_eq!(
            count(&v52, m, Op::Snapshot),
            1,
            "{m} entered p52 once: {v52:?}"
        );
    }
    assert_eq!(
        v92.iter().filter(|(k, _)| k == "092190000014").count(),
        1,
        "{v92:?}"
    );
    assert!(!v52.iter().any(|(k, _)| k == "092190000014"));
}

#[test]
fn a_unit_that_ceases_to_exist_empties_or_keeps_its_views_as_their_subscriptions_say() {
    let bus = Bus::start();
    let publisher = bus.publisher("end");
    let relay = Relay::new(&bus.kafka, publisher.store(), publisher.wakeup()).unwrap();
    let _relay = Worker::spawn("relay", move |stop| relay.run(stop));
    // Two subscriptions to the residents of one commune: one keeps its rows
    // when the commune ceases to exist, one follows the map.
    let mut catalog = (*bus.catalog).clone();
    for (who, when) in [("pkeep", "keep"), ("pleave", "leave")] {
        catalog.subscriptions.push(
            govbus_core::catalog::parse_subscription(
                &format!("{who}.toml"),
                &format!(
                    "subscriber = \"{who}\"\ndataset = \"bca.residents\"\nfilter = 'in_unit(permanent_address.commune_code, \"31540\")'\nunit_ended = \"{when}\"\n\
                     legal_basis = \"test\"\nlegal_reference = \"test\"\nsensitive = [\"ethnicity\"]\n"
                ),
            )
            .unwrap(),
        );
    }
    let router = govbus_e2e::router(
        govbus_e2e::router_config(&bus.kafka, &bus.registry, &bus.prefix),
        &catalog,
    );
    let _router = Worker::spawn("router", move |stop| router.run(stop).unwrap());
    let residents = ["092190000021", "092190000022"];
    for id in residents {
        publisher
            .submit(
                "bca.residents",
                ChangeRequest::Upsert(resident(id, "92", "31540", AFTER)),
            )
            .unwrap();
    }
    let topic = |who: &str| bus.topics.view(who, &"bca.residents".parse().unwrap(), 1);
    let resolver = SchemaCache::new(govbus_schema::RegistryClient::new(&bus.registry));
    let probe: rdkafka::consumer::BaseConsumer = bus
        .kafka
        .consumer(&govbus_e2e::unique("probe-"))
        .create()
        .unwrap();
    let ops = |who: &str| -> Vec<(String, Op)> {
        // Nothing yet while the router has not created the view's topic.
        if govbus_kafka_client::partitions_of(&probe, &topic(who)).map_or(true, |p| p.is_empty()) {
            return vec![];
        }
        read_all(&bus.kafka, &topic(who))
            .iter()
            .map(|m| {
                let (_, c) = envelope::decode(m.payload().unwrap(), &resolver).unwrap();
                (String::from_utf8_lossy(m.key().unwrap()).into_owned(), c.op)
            })
            .collect()
    };
    wait_until(
        Duration::from_secs(60),
        "both views to hold both residents",
        || (ops("pkeep").len() == 2 && ops("pleave").len() == 2).then_some(()),
    );

    // moha merges Xã Thới An Hội whole into Phường Sóc Trăng from today.
    let today = govbus_core::admin_map::day_of_ms(govbus_core::now_ms()).to_string();
    let (moha, _moha_relay) = bus.moha("end");
    moha.submit(
        "moha.admin_units",
        ChangeRequest::Upsert(json!({
            "code": "31540", "name": "Xã Thới An Hội", "level": "COMMUNE", "parent_code": "92",
            "valid_from": "2025-07-01", "valid_to": today,
            "successors": [{"code": "31507", "whole": true}], "history": []
        })),
    )
    .unwrap();

    // `leave`: each resident leaves once. `keep`: nothing more is sent, in
    // the same transaction that sent the leaves (one partition's step).
    wait_until(
        Duration::from_secs(120),
        "the leaves in pleave's view",
        || {
            let v = ops("pleave");
            residents
                .iter()
                .all(|r| v.iter().filter(|(k, o)| k == r && *o == Op::Delete).count() == 1)
                .then_some(())
        },
    );
    let kept = ops("pkeep");
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(kept.iter().all(|(_, o)| *o != Op::Delete), "{kept:?}");
}
