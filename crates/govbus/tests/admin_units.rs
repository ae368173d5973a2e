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
    eprintln!(
        "admin-units: {rows} rows loaded in {load_s:.1} s ({:.0} rows/s); bca's lookup held them {lookup_s:.1} s after it started",
        rows as f64 / load_s
    );
}
