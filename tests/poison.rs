//! Poison input on a central topic — bytes not in the wire format, an unknown
//! schema id, Avro that does not decode — goes to `dlq.route.<dataset>` with
//! the reason and where it came from; routing goes on; nothing panics.

use std::collections::BTreeMap;
use std::time::Duration;

use govbus_e2e::{read_all, wait_until, Bus};
use govbus_producer::ChangeRequest;
use govbus_schema::RegistryClient;
use rdkafka::message::Headers;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Message;
use serde_json::json;

#[test]
fn poison_goes_to_the_dlq_with_its_reason_and_routing_goes_on() {
    let bus = Bus::start();
    let (kafka, prefix, registry) = (&bus.kafka, &bus.prefix, &bus.registry);
    let publisher = bus.publisher("t");
    let router = bus.router();

    // Poison, written straight to the central topic by a client that is not govbus.
    let central = format!("{prefix}gov.bca.residents.v1");
    let raw: BaseProducer = kafka.producer().create().unwrap();
    let poison: [(&str, Vec<u8>); 3] = [
        ("not_wire_format", b"{\"citizen_id\": \"052\"}".to_vec()),
        ("unknown_schema", vec![0, 0x7f, 0xff, 0xff, 0xff, 2, 4]),
        ("avro_decode", {
            let id = RegistryClient::new(registry.as_str())
                .latest(&format!("{central}-value"))
                .unwrap()
                .id;
            let mut v = vec![0];
            v.extend_from_slice(&id.to_be_bytes());
            v.extend_from_slice(&[0xff, 0xff, 0xff]);
            v
        }),
    ];
    for (i, (_, bytes)) in poison.iter().enumerate() {
        // The record's own headers travel into its dead letter.
        let own = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
            key: "origin",
            value: Some(&format!("client-{i}")),
        });
        raw.send(
            BaseRecord::to(&central)
                .key(&format!("poison-{i}"))
                .payload(bytes)
                .headers(own),
        )
        .unwrap();
    }
    raw.flush(Duration::from_secs(10)).unwrap();

    // A good change after the poison still reaches p52's view.
    publisher
        .submit(
            "bca.residents",
            ChangeRequest::Upsert(json!({
                "citizen_id": "052090000777", "full_name": "Mai Anh", "date_of_birth": "1990-01-01",
                "sex": "FEMALE", "ethnicity": "Kinh",
                "permanent_address": {"province_code": "52", "commune_code": "21553"},
                "updated_at": 1_764_230_400_000i64
            })),
        )
        .unwrap();
    let _relay = bus.relay(&publisher);
    let view = format!("{prefix}sub.p52.bca.residents.v1");
    wait_until(
        Duration::from_secs(60),
        "the good change in p52's view",
        || {
            assert!(!router.finished(), "the router stopped");
            (read_all(kafka, &view).len() == 1).then_some(())
        },
    );

    let dlq = format!("{prefix}dlq.route.bca.residents");
    let dead = read_all(kafka, &dlq);
    assert_eq!(dead.len(), 3, "each poison record is dead-lettered once");
    let mut by_key = BTreeMap::new();
    for m in &dead {
        let h = m.headers().unwrap();
        let get = |k: &str| {
            h.iter()
                .find(|x| x.key == k)
                .and_then(|x| x.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        assert_eq!(get("govbus.source.topic"), central);
        assert!(get("govbus.source.offset").parse::<i64>().is_ok());
        assert!(get("govbus.source.partition").parse::<i32>().is_ok());
        assert!(!get("govbus.error").is_empty());
        let key = String::from_utf8_lossy(m.key().unwrap()).into_owned();
        assert_eq!(
            get("origin"),
            key.replace("poison", "client"),
            "its own header kept"
        );
        by_key.insert(key, (get("govbus.reason"), m.payload().unwrap().to_vec()));
    }
    for (i, (reason, bytes)) in poison.iter().enumerate() {
        let (got, payload) = &by_key[&format!("poison-{i}")];
        assert_eq!(got, reason);
        assert_eq!(payload, bytes, "the original bytes are kept");
    }
    assert!(!router.finished());
}
