//! `govbus reconcile` finds what a province's table got wrong — a row
//! deleted, a value changed, a stranger inserted — names the keys, exits
//! non-zero and exports them as metrics; `--repair` re-sends exactly those
//! keys through the view, and the next reconciliation is clean.

use std::time::Duration;

use govbus_e2e::{
    consumer_config, expected_rows, pg_rows, pg_url, unique, wait_until, Bus, Worker,
};
use govbus_producer::demo::DemoWorld;

fn govbus(args: &[&str]) -> (bool, String) {
    govbus_e2e::run(env!("CARGO_BIN_EXE_govbus"), args)
}

#[test]
fn reconcile_finds_missing_extra_and_stale_keys_and_repair_sends_exactly_them() {
    let bus = Bus::start();
    let (kafka, prefix, registry) = (&bus.kafka, &bus.prefix, &bus.registry);
    let publisher = bus.publisher("t");
    let _router = bus.router();
    let _relay = bus.relay(&publisher);
    let schema = unique("p52_");
    let cfg = consumer_config(kafka, registry, prefix, "p52", &pg_url(), &schema);
    let (c, catalog) = (cfg.clone(), bus.catalog.clone());
    let p52 = Worker::spawn("p52", move |stop| {
        govbus_consumer::run(&c, &catalog, stop).unwrap()
    });
    let mut world = DemoWorld::new(9);
    for _ in 0..300 {
        publisher
            .submit("bca.residents", world.next_change())
            .unwrap();
    }
    let want = expected_rows(&world, "52");
    let mut pg = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
    wait_until(Duration::from_secs(90), "p52's rows", || {
        assert!(!p52.finished(), "the consumer stopped");
        (pg_rows(&mut pg, &schema)? == want).then_some(())
    });
    let file = bus.dir.path().join("p52.toml");
    std::fs::write(
        &file,
        format!(
            "[consumer]\nsubscriber = \"p52\"\nregistry = \"{registry}\"\ntopic_prefix = \"{prefix}\"\n\
             [consumer.sink]\ntype = \"postgres\"\nurl = \"{}\"\nschema = \"{schema}\"\n\
             [consumer.kafka]\nbootstrap = \"{}\"\n",
            pg_url(),
            kafka.bootstrap
        ),
    )
    .unwrap();
    let c = file.to_str().unwrap();
    let metrics = bus.dir.path().join("reconcile.prom");
    let m = metrics.to_str().unwrap();
    let reconcile = |extra: &[&str]| {
        let mut args = vec![
            "reconcile",
            "-c",
            c,
            "--subscriber",
            "p52",
            "--dataset",
            "bca.residents",
            "--metrics-file",
            m,
            "--settle",
            "1",
        ];
        args.extend_from_slice(extra);
        govbus(&args)
    };
    let (ok, out) = reconcile(&[]);
    assert!(
        ok && out.contains("clean: the table equals the subscription"),
        "{out}"
    );
    assert!(
        out.contains(&format!("the subscription holds {} rows", want.len())),
        "{out}"
    );
    assert!(out.contains(&format!("the table {}", want.len())), "{out}");

    // Tampered with: a row deleted, a value changed, a stranger inserted.
    let keys: Vec<&String> = want.keys().collect();
    let (gone, changed, model) = (keys[0].clone(), keys[1].clone(), keys[2].clone());
    let stranger = "052999000999";
    pg.batch_execute(&format!(
        "DELETE FROM \"{schema}\".bca_residents WHERE citizen_id = '{gone}';
         UPDATE \"{schema}\".bca_residents SET full_name = 'Người Lạ' WHERE citizen_id = '{changed}';
         CREATE TEMP TABLE x AS SELECT * FROM \"{schema}\".bca_residents WHERE citizen_id = '{model}';
         UPDATE x SET citizen_id = '{stranger}';
         INSERT INTO \"{schema}\".bca_residents SELECT * FROM x;"
    ))
    .unwrap();
    let (ok, out) = reconcile(&[]);
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("missing 1: {gone}")), "{out}");
    assert!(out.contains(&format!("extra   1: {stranger}")), "{out}");
    assert!(out.contains(&format!("stale   1: {changed}")), "{out}");
    assert!(out.contains("1 missing, 1 extra, 1 stale"), "{out}");
    let rows_compared: usize = out
        .split(" rows compared")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        rows_compared < want.len() / 4,
        "only the differing buckets: {out}"
    );
    let prom = std::fs::read_to_string(&metrics).unwrap();
    for kind in ["missing", "extra", "stale"] {
        assert!(
            prom.contains(&format!(
                "govbus_reconcile_keys{{subscriber=\"p52\",dataset=\"bca.residents\",kind=\"{kind}\"}} 1"
            )),
            "{prom}"
        );
    }

    // Repaired through the view, then clean.
    let (ok, out) = reconcile(&["--repair"]);
    assert!(
        ok && out.contains("repaired: 2 snapshots and 1 deletes"),
        "{out}"
    );
    wait_until(Duration::from_secs(60), "the repair applied", || {
        assert!(!p52.finished(), "the consumer stopped");
        (pg_rows(&mut pg, &schema)? == want).then_some(())
    });
    let (ok, out) = reconcile(&[]);
    assert!(ok && out.contains("clean"), "{out}");
    assert!(std::fs::read_to_string(&metrics)
        .unwrap()
        .contains("kind=\"stale\"} 0"));
}
