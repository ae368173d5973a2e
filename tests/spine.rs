//! The spine, end to end on a real broker and PostgreSQL: resident changes
//! posted to a ministry's HTTP ingest reach each province's database exactly
//! as the source says, and a dropped field never leaves the router.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use govbus_e2e::{
    consumer_config, expected_rows, pg_rows, pg_url, read_all, unique, wait_until, Bus, Worker,
};
use govbus_producer::demo::{DemoWorld, ETHNICITIES};
use govbus_producer::{ChangeRequest, Relay};
use govbus_router::{decide, Decision};
use govbus_schema::Op;
use rdkafka::Message;
use serde_json::{json, Value as Json};

const CHANGES: usize = 1000;

/// The province a resident lies in today, whatever codes it was sent with.
fn province(r: &Json) -> &str {
    govbus_producer::demo::province_now(&r["permanent_address"]).unwrap_or_default()
}

/// How many events the view of `p` receives for one change (0 or 1).
fn routed(p: &str, req: &ChangeRequest, before: &Option<Json>) -> usize {
    let b = before.as_ref().map(|r| province(r) == p);
    let (op, a) = match req {
        ChangeRequest::Upsert(r) => (
            if before.is_some() {
                Op::Update
            } else {
                Op::Create
            },
            Some(province(r) == p),
        ),
        ChangeRequest::Delete { .. } => (Op::Delete, None),
    };
    usize::from(decide(op, b, a) != Decision::Nothing)
}

fn sqlite_rows(path: &std::path::Path) -> Option<BTreeMap<String, Vec<String>>> {
    let conn = rusqlite::Connection::open(path).ok()?;
    let mut st = conn
        .prepare(
            "SELECT citizen_id, full_name, date_of_birth, sex, permanent_address_province_code,
                    permanent_address_commune_code, coalesce(permanent_address_street, ''), updated_at
             FROM bca_residents",
        )
        .ok()?;
    let rows = st
        .query_map([], |r| {
            let ts: String = r.get(7)?;
            let ms = chrono::DateTime::parse_from_rfc3339(&ts)
                .map(|t| t.timestamp_millis().to_string())
                .unwrap_or(ts);
            let mut v: Vec<String> = (1..7)
                .map(|i| r.get::<_, String>(i))
                .collect::<Result<_, _>>()?;
            v.push(ms);
            Ok((r.get::<_, String>(0)?, v))
        })
        .ok()?;
    rows.collect::<Result<_, _>>().ok()
}

#[test]
fn a_thousand_changes_reach_each_province_exactly_as_the_source_says() {
    spine(Bus::start());
}

/// The same with TLS, SCRAM and the authorizer on: every agent on its own
/// principal, allowed only what `govbus acl apply` grants it.
#[test]
fn the_spine_runs_with_every_agent_on_its_own_principal_over_tls() {
    spine(Bus::secured());
}

fn spine(bus: Bus) {
    let (rt, kafka, prefix, registry, catalog, dir) = (
        &bus.rt,
        &bus.kafka,
        &bus.prefix,
        &bus.registry,
        &bus.catalog,
        &bus.dir,
    );

    // The ministry: durable store, relay, HTTP ingest.
    let publisher = Arc::new(bus.publisher("e2e"));
    let relay = Relay::new(&bus.kafka_of("bca"), publisher.store(), publisher.wakeup()).unwrap();
    let relay = Worker::spawn("relay", move |stop| relay.run(stop));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let ingest = format!(
        "http://{}/v1/datasets/bca.residents/changes",
        listener.local_addr().unwrap()
    );
    rt.spawn(govbus_producer::http::serve(listener, publisher.clone()));

    // The router.
    let router = bus.router();

    // Two provinces: p52 into PostgreSQL, p92 into SQLite.
    let pg_schema = unique("p52_");
    let consumer = |subscriber: &str, sink: String| {
        let cfg = consumer_config(
            &bus.kafka_of(subscriber),
            registry,
            prefix,
            subscriber,
            &sink,
            &pg_schema,
        );
        let catalog = catalog.clone();
        let c = cfg.clone();
        let w = Worker::spawn(subscriber, move |stop| {
            govbus_consumer::run(&c, &catalog, stop).unwrap()
        });
        (w, cfg)
    };
    let (p52, p52_cfg) = consumer("p52", pg_url());
    let p92_db = dir.path().join("p92.db");
    let (p92, _) = consumer("p92", p92_db.to_str().unwrap().to_string());
    let workers = [&relay, &router, &p52, &p92];

    // 1,000 changes over 5 provinces, with moves and deletes.
    let mut world = DemoWorld::new(2026);
    let (mut to52, mut to92, mut moves, mut deletes) = (0, 0, 0, 0);
    let agent = ureq::AgentBuilder::new().build();
    for _ in 0..CHANGES {
        let (req, before) = world.next_with_before();
        to52 += routed("52", &req, &before);
        to92 += routed("92", &req, &before);
        let body = match &req {
            ChangeRequest::Upsert(r) => {
                if before.as_ref().is_some_and(|b| province(b) != province(r)) {
                    moves += 1;
                }
                json!({"op": "upsert", "data": r})
            }
            ChangeRequest::Delete { key } => {
                deletes += 1;
                json!({"op": "delete", "key": key})
            }
        };
        let res = agent.post(&ingest).send_string(&body.to_string()).unwrap();
        assert_eq!(res.status(), 202);
    }
    assert!(
        moves > 30 && deletes > 30,
        "the run must exercise moves ({moves}) and deletes ({deletes})"
    );

    let alive = || {
        for w in workers {
            assert!(!w.finished(), "{} stopped", w.name());
        }
    };
    let want52 = expected_rows(&world, "52");
    let want92 = expected_rows(&world, "92");
    assert!(want52.len() > 50 && want92.len() > 50);

    let mut pg = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
    wait_until(
        Duration::from_secs(120),
        "p52's table to equal its view",
        || {
            alive();
            (pg_rows(&mut pg, &pg_schema).as_ref() == Some(&want52)).then_some(())
        },
    );
    wait_until(
        Duration::from_secs(120),
        "p92's table to equal its view",
        || {
            alive();
            (sqlite_rows(&p92_db).as_ref() == Some(&want92)).then_some(())
        },
    );

    // `govbus status` reads the same from the sink and the cluster.
    let st = govbus_consumer::status(&p52_cfg, catalog).unwrap();
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].subscription, "p52/bca.residents");
    assert_eq!(st[0].rows, Some(want52.len() as i64));
    assert!(st[0].last_change_ms.is_some());
    // Applied in full, the view reads no lag: the markers of the router's
    // transactions past the last change are not records to apply (found as
    // a new user would: `LAG 4` on an idle view, one per partition).
    wait_until(
        Duration::from_secs(30),
        "govbus status to show no lag on p52's applied view",
        || {
            let st = govbus_consumer::status(&p52_cfg, catalog).ok()?;
            (st[0].lag == Some(0)).then_some(())
        },
    );

    // p52 drops ethnicity: no column for it; p92 keeps it.
    let cols: Vec<String> = pg
        .query(
            "SELECT column_name::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'bca_residents'",
            &[&pg_schema],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(cols.contains(&"full_name".to_string()), "{cols:?}");
    assert!(!cols.iter().any(|c| c.contains("ethnicity")), "{cols:?}");

    // The raw bytes of p52's topic never hold an ethnicity value; p92's do.
    // Exactly one record per routed change (read_committed): nothing twice, nothing missing.
    let view52 = read_all(kafka, &format!("{prefix}sub.p52.bca.residents.v1"));
    let view94 = read_all(kafka, &format!("{prefix}sub.p92.bca.residents.v1"));
    assert_eq!((view52.len(), view94.len()), (to52, to92));
    let raw = |v: &[rdkafka::message::OwnedMessage]| -> Vec<u8> {
        v.iter()
            .flat_map(|m| m.payload().unwrap_or_default().to_vec())
            .collect()
    };
    let (raw52, raw94) = (raw(&view52), raw(&view94));
    let contains =
        |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    for e in ETHNICITIES {
        assert!(!contains(&raw52, e), "ethnicity `{e}` found in p52's topic");
    }
    assert!(
        ETHNICITIES.iter().any(|e| contains(&raw94, e)),
        "the check must be able to fail"
    );
    assert!(raw52.len() > 10_000, "p52 got {} bytes", raw52.len());
}
