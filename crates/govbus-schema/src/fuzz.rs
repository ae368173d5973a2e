//! What the fuzz targets (`fuzz/`, `cargo fuzz run wire|schema`) and the
//! stable mutation test feed arbitrary bytes to. Each must return, never
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

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    /// A stable-toolchain stand-in for the fuzzers: seeds mutated at random
    /// (bit flips, truncations, splices, byte insertions), fixed seed so a
    /// failure reproduces.
    fn mutate(seeds: &[Vec<u8>], rounds: usize, f: impl Fn(&[u8])) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x60b0);
        for _ in 0..rounds {
            let mut d = seeds[rng.gen_range(0..seeds.len())].clone();
            for _ in 0..rng.gen_range(1..8) {
                if d.is_empty() {
                    d.push(rng.gen());
                    continue;
                }
                let i = rng.gen_range(0..d.len());
                match rng.gen_range(0..5) {
                    0 => d[i] ^= 1 << rng.gen_range(0..8),
                    1 => d.truncate(i),
                    2 => d.insert(i, rng.gen()),
                    3 => {
                        d[i] = *[b'{', b'[', b'"', b'0', 0xff, 0x80]
                            .get(rng.gen_range(0..6))
                            .unwrap_or(&0)
                    }
                    _ => {
                        let j = rng.gen_range(0..d.len());
                        let chunk: Vec<u8> = d[i.min(j)..i.max(j)].to_vec();
                        d.splice(i..i, chunk);
                    }
                }
            }
            f(&d);
        }
    }

    #[test]
    fn arbitrary_wire_bytes_never_panic() {
        let resident = serde_json::json!({
            "citizen_id": "052090000001", "full_name": "Lê Văn A", "date_of_birth": "1990-01-01",
            "sex": "MALE", "ethnicity": "Kinh",
            "permanent_address": {"province_code": "52", "commune_code": "21550", "street": null},
            "updated_at": 1_764_230_400_000i64
        });
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
        let after = crate::json::to_avro(&after_schema, &resident).expect("a valid resident");
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
        let good = codec.encode(&change).expect("encodes");
        mutate(&[good, vec![0, 0, 0, 0, 1], vec![]], 100_000, super::wire);
    }

    #[test]
    fn arbitrary_schema_text_never_panics() {
        let seeds: Vec<Vec<u8>> = [
            include_str!("../../../schemas/bca/residents.v1.avsc"),
            include_str!("../../../schemas/moha/admin_units.v1.avsc"),
            r#"["null",{"type":"record","name":"L","fields":[{"name":"next","type":["null","L"]}]}]"#,
            r#"{"type":"map","values":{"type":"array","items":{"type":"fixed","name":"F","size":4}}}"#,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        mutate(&seeds, 30_000, super::schema);
    }
}
