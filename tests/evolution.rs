//! Evolution that never breaks a province: v2 of bca.residents adds an
//! optional field; a v1 and a v2 producer run at once; the v1 router and the
//! v1 consumer keep working; when the router and the consumer move to v2,
//! the province's table gains the column; no change is lost or mangled.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use govbus_core::{Catalog, DatasetId};
use govbus_e2e::{
    consumer_config, pg_url, read_all, router_config, unique, wait_until, Bus, Worker,
};
use govbus_producer::demo::DemoWorld;
use govbus_producer::{ChangeRequest, Publisher, Relay};
use serde_json::{json, Value};

/// The built-in catalog with `phone` (optional) added to bca.residents.
fn catalog_v2() -> Catalog {
    let mut c = Catalog::builtin();
    let ds: DatasetId = "bca.residents".parse().unwrap();
    let spec = c.datasets.get_mut(&ds).unwrap();
    let mut schema: Value = serde_json::from_str(&spec.entity_schema).unwrap();
    schema["fields"].as_array_mut().unwrap().push(
        json!({"name": "phone", "type": ["null", "string"], "default": null, "doc": "Contact phone (v2)."}),
    );
    spec.entity_schema = schema.to_string();
    c
}

fn resident(id: &str, name: &str, phone: Option<&str>) -> ChangeRequest {
    let mut r = json!({
        "citizen_id": id, "full_name": name, "date_of_birth": "1990-01-01",
        "sex": "FEMALE", "ethnicity": "Kinh",
        "permanent_address": {"province_code": "52", "commune_code": "21553", "street": null},
        "updated_at": 1_764_230_400_000i64
    });
    if let Some(p) = phone {
        r["phone"] = json!(p);
    }
    ChangeRequest::Upsert(r)
}

type Rows = BTreeMap<String, (String, Option<String>)>;

fn table(pg: &mut postgres::Client, schema: &str, with_phone: bool) -> Option<Rows> {
    let sql = if with_phone {
        format!("SELECT citizen_id, full_name, phone FROM \"{schema}\".bca_residents")
    } else {
        format!("SELECT citizen_id, full_name, NULL::text FROM \"{schema}\".bca_residents")
    };
    let rows = pg.query(&sql, &[]).ok()?;
    Some(
        rows.iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect(),
    )
}

fn has_phone_column(pg: &mut postgres::Client, schema: &str) -> bool {
    pg.query_one(
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'bca_residents' AND column_name = 'phone'",
        &[&schema],
    )
    .map(|r| r.get::<_, i64>(0) == 1)
    .unwrap_or(false)
}

#[test]
fn v1_and_v2_producers_at_once_and_the_table_gains_the_column() {
    let bus = Bus::start();
    let (kafka, prefix, registry) = (&bus.kafka, &bus.prefix, &bus.registry);
    let v1 = bus.catalog.clone();
    let v2 = Arc::new(catalog_v2());

    // Two producers of bca.residents: one still on v1, one already on v2.
    let old = bus.publisher("old-system");
    let store =
        govbus_producer::open_store(bus.dir.path().join("new.db").to_str().unwrap(), "").unwrap();
    let new = Publisher::new(
        &v2,
        "bca",
        "new-system",
        &bus.topics,
        kafka,
        &govbus_schema::RegistryClient::new(registry),
        store,
    )
    .expect("v2 is a compatible version");
    let _relays: Vec<Worker> = [&old, &new]
        .iter()
        .map(|p| {
            let r = Relay::new(kafka, p.store(), p.wakeup()).unwrap();
            Worker::spawn("relay", move |stop| r.run(stop))
        })
        .collect();

    // The router and p52 on v1.
    let router_cfg = router_config(kafka, registry, prefix);
    let p52 = unique("p52_");
    let consumer_cfg = consumer_config(kafka, registry, prefix, "p52", &pg_url(), &p52);
    let start = |catalog: &Arc<Catalog>| {
        let router = govbus_e2e::router(router_cfg.clone(), catalog);
        let (cfg, c) = (consumer_cfg.clone(), catalog.clone());
        (
            Worker::spawn("router", move |stop| router.run(stop).unwrap()),
            Worker::spawn("p52", move |stop| {
                govbus_consumer::run(&cfg, &c, stop).unwrap()
            }),
        )
    };
    let agents = start(&v1);

    let mut want: Rows = BTreeMap::new();
    for i in 0..5 {
        let (a, b) = (format!("05299100000{i}"), format!("05299200000{i}"));
        old.submit("bca.residents", resident(&a, &format!("Cũ {i}"), None))
            .unwrap();
        new.submit(
            "bca.residents",
            resident(&b, &format!("Mới {i}"), Some(&format!("090000000{i}"))),
        )
        .unwrap();
        want.insert(a, (format!("Cũ {i}"), None));
        want.insert(b, (format!("Mới {i}"), Some(format!("090000000{i}"))));
    }
    // Some demo traffic, in other provinces too (the demo never makes a
    // citizen id with century digit 9, so it never touches those above).
    let mut world = DemoWorld::new(5);
    for _ in 0..50 {
        old.submit("bca.residents", world.next_change()).unwrap();
    }

    // v1 router and consumer: every change of 52 arrives, without the phone.
    let mut pg = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
    let v1_view: Rows = want
        .iter()
        .map(|(k, (n, _))| (k.clone(), (n.clone(), None)))
        .collect();
    wait_until(
        Duration::from_secs(90),
        "p52 (v1) to hold both producers' residents",
        || {
            let got = table(&mut pg, &p52, false)?;
            v1_view
                .iter()
                .all(|(k, v)| got.get(k) == Some(v))
                .then_some(())
        },
    );
    assert!(
        !has_phone_column(&mut pg, &p52),
        "a v1 consumer has no phone column"
    );
    let dlq = bus.topics.dlq("route", "bca.residents");
    let dead: Vec<_> = read_all(kafka, &dlq);
    assert!(
        dead.is_empty(),
        "nothing dead-lettered by the v1 router: {} records",
        dead.len()
    );

    // The router and the consumer move to v2 (same group, same database).
    drop(agents);
    let _agents = start(&v2);
    for i in 0..5 {
        let b = format!("05299200000{i}");
        let phone = format!("091111111{i}");
        new.submit(
            "bca.residents",
            resident(&b, &format!("Mới {i}"), Some(&phone)),
        )
        .unwrap();
        want.insert(b, (format!("Mới {i}"), Some(phone)));
    }
    old.submit("bca.residents", resident("052991000009", "Cũ 9", None))
        .unwrap();
    want.insert("052991000009".into(), ("Cũ 9".into(), None));

    wait_until(
        Duration::from_secs(90),
        "p52 (v2) to gain the column and the phones",
        || {
            if !has_phone_column(&mut pg, &p52) {
                return None;
            }
            let got = table(&mut pg, &p52, true)?;
            want.iter()
                .all(|(k, v)| got.get(k) == Some(v))
                .then_some(())
        },
    );
    assert!(
        read_all(kafka, &dlq).is_empty(),
        "nothing dead-lettered after the move"
    );
}
