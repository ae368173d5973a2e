//! The router's Prometheus metrics, as `/metrics` renders them: consumed,
//! routed per subscription and decision (enter, update, leave), filtered
//! out, dead-lettered by reason, transactions committed, consumer lag.
//!
//! Its own test binary: the Prometheus recorder is process-wide.

use std::time::Duration;

use govbus_e2e::{read_all, wait_until, Bus};
use govbus_producer::ChangeRequest;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::json;

/// The value of the sample of `name` whose labels include every one of
/// `labels`, in Prometheus' text format.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let inside = match rest.strip_prefix('{') {
                Some(r) => r.strip_suffix('}')?,
                None if rest.is_empty() => "",
                None => return None,
            };
            labels
                .iter()
                .all(|(k, v)| inside.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
                .then(|| value.parse().ok())?
        })
        .next()
}

fn resident(province: &str, updated_at: i64) -> ChangeRequest {
    let commune = if province == "92" { "31507" } else { "21553" };
    ChangeRequest::Upsert(json!({
        "citizen_id": "052090000888", "full_name": "Lan Anh", "date_of_birth": "1990-01-01",
        "sex": "FEMALE", "ethnicity": "Kinh",
        "permanent_address": {"province_code": province, "commune_code": commune},
        "updated_at": updated_at
    }))
}

#[test]
fn the_router_counts_what_it_consumes_routes_filters_and_dead_letters() {
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this test binary");
    let bus = Bus::start();
    let (kafka, prefix) = (&bus.kafka, &bus.prefix);
    let publisher = bus.publisher("t");
    let router = bus.router();

    // One resident enters p52's view, moves to p92 (a leave for p52, an
    // enter for p92), and is updated there; one poison record.
    let central = format!("{prefix}gov.bca.residents.v1");
    let raw: BaseProducer = kafka.producer().create().unwrap();
    raw.send(BaseRecord::to(&central).key("poison").payload("{}"))
        .unwrap();
    raw.flush(Duration::from_secs(10)).unwrap();
    for (i, province) in ["52", "92", "92"].into_iter().enumerate() {
        publisher
            .submit(
                "bca.residents",
                resident(province, 1_764_230_400_000 + i as i64),
            )
            .unwrap();
    }
    let _relay = bus.relay(&publisher);
    let (p52, p92) = (
        format!("{prefix}sub.p52.bca.residents.v1"),
        format!("{prefix}sub.p92.bca.residents.v1"),
    );
    wait_until(Duration::from_secs(60), "both views routed", || {
        assert!(!router.finished(), "the router stopped");
        (read_all(kafka, &p52).len() == 2 && read_all(kafka, &p92).len() == 2).then_some(())
    });

    let ds = ("dataset", "bca.residents");
    // Lag is sampled every 2 s off the routing thread.
    let text = wait_until(Duration::from_secs(30), "the lag gauge", || {
        let text = prometheus.render();
        sample(&text, "govbus_router_lag_events", &[ds]).map(|_| text)
    });
    let get = |name: &str, labels: &[(&str, &str)]| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{text}"))
    };
    assert_eq!(get("govbus_router_consumed_total", &[ds]), 4.0);
    let routed = |sub: &str, decision: &str| {
        get(
            "govbus_router_routed_total",
            &[("subscriber", sub), ds, ("decision", decision)],
        )
    };
    assert_eq!(routed("p52", "enter"), 1.0);
    assert_eq!(routed("p52", "leave"), 1.0);
    assert_eq!(routed("p92", "enter"), 1.0);
    assert_eq!(routed("p92", "update"), 1.0);
    // p52 does not see the update in 94; p92 does not see the first
    // version, in 52; other provinces see none of the three.
    assert_eq!(
        get("govbus_router_filtered_total", &[("subscriber", "p52"), ds]),
        1.0
    );
    assert_eq!(
        get("govbus_router_filtered_total", &[("subscriber", "p92"), ds]),
        1.0
    );
    assert_eq!(
        get(
            "govbus_router_dlq_total",
            &[ds, ("reason", "not_wire_format")]
        ),
        1.0
    );
    assert!(
        get(
            "govbus_router_transactions_total",
            &[("result", "committed")]
        ) >= 1.0
    );
    assert!(get("govbus_router_partitions", &[ds]) >= 1.0);
    assert_eq!(
        get("govbus_subscription_active", &[("subscriber", "p52"), ds]),
        1.0
    );
}
