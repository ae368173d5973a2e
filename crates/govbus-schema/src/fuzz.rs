//! What the fuzz targets (`fuzz/`, `cargo fuzz run …`) and the stable
//! fuzz tests (`govbus_core::fuzz::run`) feed arbitrary bytes to: every
//! decoder here that reads bytes from outside. Each must return, never
//! panic, whatever the input.

use apache_avro::Schema;

use crate::client::FixedResolver;
use crate::Compatibility;

/// The residents envelope, the schema arbitrary payloads are decoded with.
fn residents() -> Schema {
    let entity = include_str!("../../../schemas/bca/residents.v1.avsc");
    let env = crate::envelope::envelope_schema(entity).unwrap_or_default();
    Schema::parse_str(&env).unwrap_or(Schema::Null)
}

/// Bytes as a Kafka record value: the Confluent wire format, then a change
/// envelope under schema id 1 (the residents envelope) or any other id.
pub fn wire(data: &[u8]) {
    let _ = crate::wire::decode(data);
    thread_local! {
        static RESOLVER: FixedResolver = FixedResolver::new([(1, residents())]);
    }
    RESOLVER.with(|r| {
        let _ = crate::envelope::decode(data, r);
    });
}

/// Bytes as a schema text: parse, normalize, parse the normal form again,
/// and check it against itself at every level.
pub fn schema(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(s) = crate::parse(text) else {
        return;
    };
    let normal = crate::canonical(&s);
    if let Ok(again) = crate::parse(&normal) {
        for level in [Compatibility::Backward, Compatibility::FullTransitive] {
            let _ = level.check(&again, std::slice::from_ref(&s));
        }
    }
}

/// Bytes as the writer schema and the record of a topic: the schema
/// text up to the first `0xfe`, the Avro body after it. A schema that is
/// not bounded is refused before anything decodes with it, as the
/// registry cache does; the payload then decodes as an envelope, and the
/// decoded change converts to JSON and CEL values.
pub fn writer(data: &[u8]) {
    let (text, body) = match data.iter().position(|b| *b == 0xfe) {
        Some(i) => (
            data.get(..i).unwrap_or_default(),
            data.get(i + 1..).unwrap_or_default(),
        ),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let Ok(schema) = crate::parse(text) else {
        return;
    };
    if crate::limits::check_bounded(&schema).is_err() {
        return;
    }
    crate::limits::ensure();
    let resolver = FixedResolver::new([(1, schema)]);
    let payload = crate::wire::encode(1, body);
    if let Ok((_, change)) = crate::envelope::decode(&payload, &resolver) {
        for v in change.before.iter().chain(change.after.iter()) {
            let _ = crate::json::to_json(v);
            let _ = crate::cel::to_cel(v);
        }
    }
}

/// Bytes as an ingest request's entity: JSON converted to a resident
/// (field errors or a value), then back to JSON and to CEL values.
pub fn json(data: &[u8]) {
    thread_local! {
        static ENTITY: Schema = crate::parse(include_str!("../../../schemas/bca/residents.v2.avsc"))
            .unwrap_or(Schema::Null);
    }
    let Ok(j) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    ENTITY.with(|e| {
        if let Ok(v) = crate::json::to_avro(e, &j) {
            let _ = crate::json::to_json(&v);
            let _ = crate::cel::to_cel(&v);
        }
    });
}

/// Bytes as a resident's Avro body, walked in place as the router's fast
/// path does: skipped, a field read by path, projected without fields.
pub fn bytes(data: &[u8]) {
    thread_local! {
        static ENTITY: (Schema, crate::names::Names) = {
            let s = crate::parse(include_str!("../../../schemas/bca/residents.v2.avsc"))
                .unwrap_or(Schema::Null);
            let n = crate::names::Names::of(&s);
            (s, n)
        };
    }
    ENTITY.with(|(s, names)| {
        let _ = crate::bytes::Reader::new(data, 0).skip(s, names);
        let path = ["permanent_address".to_string(), "commune_code".to_string()];
        let _ = crate::bytes::field_str(s, names, data, &path);
        let drops = vec![vec!["ethnicity".to_string()], path.to_vec()];
        let mut w = Vec::new();
        let _ = crate::bytes::project(s, names, data, &drops, &mut w);
    });
}

#[cfg(test)]
mod tests {
    use govbus_core::fuzz::run;

    fn resident() -> serde_json::Value {
        serde_json::json!({
            "citizen_id": "052090000001", "full_name": "Lê Văn A", "date_of_birth": "1990-01-01",
            "sex": "MALE", "ethnicity": "Kinh",
            "permanent_address": {"province_code": "52", "commune_code": "21550", "street": null},
            "updated_at": 1_764_230_400_000i64
        })
    }

    fn good_change() -> Vec<u8> {
        let entity = super::residents();
        let codec = crate::EnvelopeCodec {
            schema: entity.clone(),
            id: 1,
        };
        let crate::Schema::Record(r) = &entity else {
            panic!("envelope is a record")
        };
        let after_schema = match &r.fields[2].schema {
            crate::Schema::Union(u) => u.variants()[1].clone(),
            other => other.clone(),
        };
        let after = crate::json::to_avro(&after_schema, &resident()).expect("a valid resident");
        let change = crate::Change {
            event_id: "e".into(),
            op: crate::Op::Create,
            before: None,
            after: Some(after),
            source: crate::Source {
                agency: "bca".into(),
                system: "s".into(),
                seq: 1,
            },
            ts_ms: 0,
        };
        codec.encode(&change).expect("encodes")
    }

    #[test]
    fn fuzz_wire_bytes_never_panic() {
        run(
            "wire",
            &[good_change(), vec![0, 0, 0, 0, 1], vec![]],
            100_000,
            super::wire,
        );
    }

    #[test]
    fn fuzz_schema_text_never_panics() {
        let seeds: Vec<Vec<u8>> = [
            include_str!("../../../schemas/bca/residents.v1.avsc"),
            include_str!("../../../schemas/moha/admin_units.v1.avsc"),
            r#"["null",{"type":"record","name":"L","fields":[{"name":"next","type":["null","L"]}]}]"#,
            r#"{"type":"map","values":{"type":"array","items":{"type":"fixed","name":"F","size":4}}}"#,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        run("schema", &seeds, 30_000, super::schema);
    }

    #[test]
    fn fuzz_any_writer_schema_and_body_never_panic() {
        let with = |schema: &str, body: &[u8]| {
            let mut v = schema.as_bytes().to_vec();
            v.push(0xfe);
            v.extend_from_slice(body);
            v
        };
        let change = good_change();
        let env = crate::envelope::envelope_schema(include_str!(
            "../../../schemas/bca/residents.v2.avsc"
        ))
        .unwrap();
        let seeds = vec![
            with(&env, change.get(5..).unwrap_or_default()),
            with(
                r#"{"type":"array","items":"null"}"#,
                &[0xff, 0xff, 0xff, 0xff, 0x0f],
            ),
            with(
                r#"{"type":"array","items":["null","string"]}"#,
                &[4, 0, 2, 2, b'a', 0],
            ),
            with(
                r#"{"type":"map","values":{"type":"int","logicalType":"date"}}"#,
                &[2, 2, b'k', 0xfe, 0xff, 0xff, 0xff, 0x0f, 0],
            ),
            with(
                r#"{"type":"record","name":"R","fields":[{"name":"t","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ];
        run("writer", &seeds, 30_000, super::writer);
    }

    #[test]
    fn fuzz_ingest_json_never_panics() {
        let mut far = resident();
        far["date_of_birth"] = serde_json::json!(2_000_000_000);
        let seeds = vec![
            resident().to_string().into_bytes(),
            far.to_string().into_bytes(),
            b"[[[[[[[[[[]]]]]]]]]]".to_vec(),
            br#"{"updated_at": "+275760-09-13T00:00:00Z"}"#.to_vec(),
        ];
        run("json", &seeds, 30_000, super::json);
    }

    #[test]
    fn fuzz_fast_path_walk_never_panics() {
        let change = good_change();
        // The resident's body: the envelope after its id, event id and op
        // and the union branches (enough for the walk to start right).
        let seeds = vec![change.get(5..).unwrap_or_default().to_vec(), change, vec![]];
        run("bytes", &seeds, 100_000, super::bytes);
    }
}
