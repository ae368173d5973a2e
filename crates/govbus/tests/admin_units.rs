//! The whole real administrative map (every code of the 63 old and 34 new
//! provinces, 696 districts, 10,061 old and 3,321 new communes, with its
//! history) loaded into `moha.admin_units` on Apache Kafka with `govbus
//! admin-units load`: every row once, a second run resumes and adds
//! nothing, and a producer whose contract looks codes up holds them all.
//! The times are printed (docs/BENCHMARKS.md).

use std::time::{Duration, Instant};

use govbus_e2e::{read_all, wait_until, Bus};

fn govbus(args: &[&str]) -> String {
    govbus_e2e::run_ok(env!("CARGO_BIN_EXE_govbus"), args)
}

#[test]
fn the_whole_map_is_loaded_once_and_a_producer_looks_it_up() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("moha.toml");
    std::fs::write(
        &cfg,
        format!(
            "[producer]\nagency = \"moha\"\nsystem = \"map\"\nregistry = \"{}\"\nlisten = \"127.0.0.1:0\"\nstore = \"sqlite://{}\"\ntopic_prefix = \"{}\"\n[producer.kafka]\nbootstrap = \"{}\"\n",
            bus.registry,
            dir.path().join("moha.db").display(),
            bus.prefix,
            bus.broker.bootstrap
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();

    let exported = govbus(&[
        "admin-units",
        "export",
        "--out",
        dir.path().join("units.jsonl").to_str().unwrap(),
    ]);
    let rows = std::fs::read_to_string(dir.path().join("units.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert!(
        exported.contains(&format!("{rows} rows written")),
        "{exported}"
    );
    assert!(
        exported.contains("on 2025-07-01: 34 provinces, 3321 communes"),
        "{exported}"
    );

    let t = Instant::now();
    let out = govbus(&["admin-units", "load", "-c", cfg]);
    let load_s = t.elapsed().as_secs_f64();
    assert!(
        out.contains(&format!("{rows} rows read, {rows} stored, 0 rejected")),
        "{out}"
    );
    assert!(out.contains("published"), "{out}");
    let topic = format!("{}gov.moha.admin_units.v1", bus.prefix);
    let on_topic = read_all(&bus.kafka, &topic);
    assert_eq!(on_topic.len(), rows, "every row once");

    // Run again: it resumes after the last line and publishes nothing.
    let out = govbus(&["admin-units", "load", "-c", cfg]);
    assert!(out.contains(&format!("resumed after line {rows}")), "{out}");
    assert_eq!(read_all(&bus.kafka, &topic).len(), rows, "nothing twice");

    // bca's contract looks codes up in moha.admin_units: its producer holds
    // every code.
    let t = Instant::now();
    let store = dir.path().join("bca.db");
    let bca = govbus_producer::Publisher::new(
        &bus.catalog,
        "bca",
        "t",
        &bus.topics,
        &bus.kafka,
        &govbus_schema::RegistryClient::new(&bus.registry),
        govbus_producer::open_store(store.to_str().unwrap(), "").unwrap(),
    )
    .unwrap();
    wait_until(
        Duration::from_secs(120),
        "bca's lookup to hold every code",
        || {
            bca.lookups()
                .iter()
                .any(|(name, n)| name == "moha.admin_units" && *n == rows)
                .then_some(())
        },
    );
    let lookup_s = t.elapsed().as_secs_f64();
    // Its codes rules read the whole map: a Quy Nhơn ward merged whole on
    // 1 July 2025 (21550, Phường Nhơn Bình → 21601, Phường Quy Nhơn Đông)
    // is normalised; a code that never existed is refused.
    let resident = |commune: &str| {
        govbus_producer::ChangeRequest::Upsert(serde_json::json!({
            "citizen_id": "052090000001", "full_name": "Lê Thị Hoa", "date_of_birth": "1990-01-01",
            "sex": "FEMALE", "ethnicity": "Kinh",
            "permanent_address": {"province_code": "52", "commune_code": commune, "street": null},
            "updated_at": 1_764_230_400_000i64
        }))
    };
    wait_until(
        Duration::from_secs(30),
        "the map built from every row",
        || bca.submit("bca.residents", resident("21550")).ok(),
    );
    match bca.submit("bca.residents", resident("99999")) {
        Err(govbus_producer::SubmitError::Invalid(e)) => {
            assert!(e[0].problem.contains("not a unit"), "{e:?}")
        }
        other => panic!("99999 never existed: {other:?}"),
    }
    eprintln!(
        "admin-units: {rows} rows loaded in {load_s:.1} s ({:.0} rows/s); bca's lookup held them {lookup_s:.1} s after it started",
        rows as f64 / load_s
    );
}
