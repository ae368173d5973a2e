//! The schema registry on a real broker: ids are stable, survive a restart,
//! and incompatible schemas are refused with Confluent's codes.

use govbus_e2e::{init_logs, runtime, start_registry, unique, Broker};
use govbus_schema::{RegistryClient, RegistryError};

const V1: &str =
    r#"{"type":"record","name":"Unit","namespace":"t","fields":[{"name":"code","type":"string"}]}"#;
const V2_OPTIONAL: &str = r#"{"type":"record","name":"Unit","namespace":"t","fields":[{"name":"code","type":"string"},{"name":"name","type":["null","string"],"default":null}]}"#;
const V2_REQUIRED: &str = r#"{"type":"record","name":"Unit","namespace":"t","fields":[{"name":"code","type":"string"},{"name":"level","type":"int"}]}"#;

#[test]
fn ids_are_stable_survive_restart_and_incompatible_is_409() {
    init_logs();
    let broker = Broker::start();
    let rt = runtime();
    let topic = unique("schemas_");
    let subject = format!("{}-value", unique("gov.t."));
    let (url, task) = start_registry(&rt, &broker.kafka(), &topic);
    let c = RegistryClient::new(&url);

    let id1 = c.register(&subject, V1).unwrap();
    assert_eq!(
        c.register(&subject, V1).unwrap(),
        id1,
        "same schema, same id"
    );
    let id2 = c.register(&subject, V2_OPTIONAL).unwrap();
    assert_ne!(id1, id2);

    match c.register(&subject, V2_REQUIRED) {
        Err(RegistryError::Api {
            status: 409,
            error_code: 409,
            message,
        }) => {
            assert!(message.contains("incompatible"), "{message}")
        }
        other => panic!("expected 409, got {other:?}"),
    }
    match c.latest("no-such-subject") {
        Err(RegistryError::Api {
            status: 404,
            error_code: 40401,
            ..
        }) => {}
        other => panic!("expected 40401, got {other:?}"),
    }
    match c.register(&subject, "{\"type\": \"nosuchtype\"}") {
        Err(RegistryError::Api {
            status: 422,
            error_code: 42201,
            ..
        }) => {}
        other => panic!("expected 42201, got {other:?}"),
    }

    // Restart: a new instance reads everything back from the topic.
    task.abort();
    let _ = rt.block_on(task);
    let (url2, _task2) = start_registry(&rt, &broker.kafka(), &topic);
    assert_ne!(url, url2);
    let c2 = RegistryClient::new(&url2);
    assert_eq!(
        c2.register(&subject, V1).unwrap(),
        id1,
        "id kept across restart"
    );
    assert_eq!(c2.register(&subject, V2_OPTIONAL).unwrap(), id2);
    let latest = c2.latest(&subject).unwrap();
    assert_eq!((latest.version, latest.id), (2, id2));
    assert!(c2.schema_text(id1).unwrap().contains("\"code\""));
    // A new schema after the restart gets a fresh id, not a reused one.
    let other = format!("{}-value", unique("gov.t."));
    let id3 = c2
        .register(
            &other,
            r#"{"type":"record","name":"X","fields":[{"name":"a","type":"long"}]}"#,
        )
        .unwrap();
    assert!(id3 > id2, "{id3} > {id2}");
}
