//! The change envelope every dataset's events share (Debezium-style):
//! `event_id`, `op`, `before`, `after`, `source {agency, system, seq}`, `ts_ms`.

use apache_avro::types::Value;
use apache_avro::Schema;
use serde_json::{json, Value as Json};

use crate::{wire, SchemaError};

/// What happened to the entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// The entity appeared.
    Create,
    /// The entity changed.
    Update,
    /// The entity went away (`after` is null).
    Delete,
    /// The entity's current state, re-sent (backfill); applied like an upsert.
    Snapshot,
}

impl Op {
    /// The Avro enum symbols, in order.
    pub const SYMBOLS: [&'static str; 4] = ["CREATE", "UPDATE", "DELETE", "SNAPSHOT"];

    fn index(self) -> u32 {
        match self {
            Op::Create => 0,
            Op::Update => 1,
            Op::Delete => 2,
            Op::Snapshot => 3,
        }
    }

    fn from_symbol(s: &str) -> Option<Self> {
        Some(match s {
            "CREATE" => Op::Create,
            "UPDATE" => Op::Update,
            "DELETE" => Op::Delete,
            "SNAPSHOT" => Op::Snapshot,
            _ => return None,
        })
    }

    /// The symbol, e.g. `CREATE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "CREATE",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
            Op::Snapshot => "SNAPSHOT",
        }
    }
}

/// Where a change comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Publishing agency (`bca`).
    pub agency: String,
    /// The source system inside the agency.
    pub system: String,
    /// Per-entity sequence: strictly increasing for one entity.
    pub seq: i64,
}

/// One change of one entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Unique id of the change (UUID text).
    pub event_id: String,
    /// What happened.
    pub op: Op,
    /// The entity before the change (null for a create).
    pub before: Option<Value>,
    /// The entity after the change (null for a delete).
    pub after: Option<Value>,
    /// Where it comes from, with the entity's sequence.
    pub source: Source,
    /// When the source changed, ms since the epoch.
    pub ts_ms: i64,
}

/// A record that is not a valid change envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Bytes not in the Confluent wire format.
    #[error("not in the wire format: {0}")]
    Wire(#[from] wire::WireError),
    /// The writer schema could not be found.
    #[error("schema id {id}: {reason}")]
    UnknownSchema {
        /// The id in the header.
        id: u32,
        /// Why it could not be fetched.
        reason: String,
        /// The registry is unreachable or failing: retry, do not dead-letter.
        transient: bool,
    },
    /// The Avro body does not decode with its writer schema.
    #[error("Avro does not decode with schema {id}: {reason}")]
    Decode {
        /// The writer schema id.
        id: u32,
        /// The decoder's message.
        reason: String,
    },
    /// The writer schema may not be decoded with here: registered under
    /// another subject than the topic's, or unbounded (see
    /// [`crate::limits::check_bounded`]).
    #[error("schema id {id} refused: {reason}")]
    Refused {
        /// The id in the header.
        id: u32,
        /// Why.
        reason: String,
    },
    /// It decodes, but is not a change envelope.
    #[error("not a change envelope: {0}")]
    Shape(String),
    /// A date or timestamp out of the range govbus represents.
    #[error("out of range: {0}")]
    OutOfRange(#[from] crate::limits::OutOfRange),
    /// Encoding failed (a value that does not fit the schema).
    #[error("cannot encode: {0}")]
    Encode(String),
}

/// The envelope schema (Avro JSON) around an entity schema (Avro JSON).
pub fn envelope_schema(entity_schema: &str) -> Result<String, SchemaError> {
    let entity: Json =
        serde_json::from_str(entity_schema).map_err(|e| SchemaError(e.to_string()))?;
    let name = entity
        .get("name")
        .and_then(Json::as_str)
        .ok_or_else(|| SchemaError("entity schema must be a named record".into()))?;
    let full = match entity.get("namespace").and_then(Json::as_str) {
        Some(ns) if !name.contains('.') => format!("{ns}.{name}"),
        _ => name.to_string(),
    };
    let ns = full
        .rsplit_once('.')
        .map(|(ns, _)| ns.to_string())
        .unwrap_or_default();
    let env = json!({
        "type": "record",
        "name": "ChangeEvent",
        "namespace": ns,
        "doc": "A change of one entity (govbus change envelope).",
        "fields": [
            {"name": "event_id", "type": "string"},
            {"name": "op", "type": {"type": "enum", "name": "Op", "namespace": "govbus",
                                     "symbols": Op::SYMBOLS}},
            {"name": "before", "type": ["null", entity], "default": null},
            {"name": "after", "type": ["null", full], "default": null},
            {"name": "source", "type": {"type": "record", "name": "Source", "namespace": "govbus",
                "fields": [
                    {"name": "agency", "type": "string"},
                    {"name": "system", "type": "string"},
                    {"name": "seq", "type": "long"}
                ]}},
            {"name": "ts_ms", "type": "long"}
        ]
    });
    Ok(env.to_string())
}

impl Change {
    /// The envelope as an Avro value.
    pub fn to_value(&self) -> Value {
        let opt = |v: &Option<Value>| match v {
            None => Value::Union(0, Box::new(Value::Null)),
            Some(v) => Value::Union(1, Box::new(v.clone())),
        };
        Value::Record(vec![
            ("event_id".into(), Value::String(self.event_id.clone())),
            (
                "op".into(),
                Value::Enum(self.op.index(), self.op.as_str().into()),
            ),
            ("before".into(), opt(&self.before)),
            ("after".into(), opt(&self.after)),
            (
                "source".into(),
                Value::Record(vec![
                    ("agency".into(), Value::String(self.source.agency.clone())),
                    ("system".into(), Value::String(self.source.system.clone())),
                    ("seq".into(), Value::Long(self.source.seq)),
                ]),
            ),
            ("ts_ms".into(), Value::Long(self.ts_ms)),
        ])
    }

    /// Reads an envelope from a decoded Avro value.
    pub fn from_value(v: Value) -> Result<Self, EnvelopeError> {
        let Value::Record(fields) = v else {
            return Err(EnvelopeError::Shape("top level is not a record".into()));
        };
        let mut event_id = None;
        let mut op = None;
        let mut before = None;
        let mut after = None;
        let mut source = None;
        let mut ts_ms = None;
        for (name, value) in fields {
            match (name.as_str(), value) {
                ("event_id", Value::String(s)) => event_id = Some(s),
                ("op", Value::Enum(_, s)) => op = Op::from_symbol(&s),
                ("before", v) => before = Some(unwrap_optional(v)),
                ("after", v) => after = Some(unwrap_optional(v)),
                ("source", Value::Record(sf)) => {
                    let mut agency = None;
                    let mut system = None;
                    let mut seq = None;
                    for (n, v) in sf {
                        match (n.as_str(), v) {
                            ("agency", Value::String(s)) => agency = Some(s),
                            ("system", Value::String(s)) => system = Some(s),
                            ("seq", Value::Long(l)) => seq = Some(l),
                            _ => {}
                        }
                    }
                    source = match (agency, system, seq) {
                        (Some(agency), Some(system), Some(seq)) => Some(Source {
                            agency,
                            system,
                            seq,
                        }),
                        _ => None,
                    };
                }
                ("ts_ms", Value::Long(l)) => ts_ms = Some(l),
                _ => {}
            }
        }
        let missing = |f: &str| EnvelopeError::Shape(format!("field `{f}` missing or mistyped"));
        Ok(Change {
            event_id: event_id.ok_or_else(|| missing("event_id"))?,
            op: op.ok_or_else(|| missing("op"))?,
            before: before.ok_or_else(|| missing("before"))?,
            after: after.ok_or_else(|| missing("after"))?,
            source: source.ok_or_else(|| missing("source"))?,
            ts_ms: ts_ms.ok_or_else(|| missing("ts_ms"))?,
        })
    }
}

fn unwrap_optional(v: Value) -> Option<Value> {
    match v {
        Value::Union(_, b) => match *b {
            Value::Null => None,
            other => Some(other),
        },
        Value::Null => None,
        other => Some(other),
    }
}

impl EnvelopeError {
    /// A bounded reason, for metrics and dead letters' `govbus.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            EnvelopeError::Wire(_) => "not_wire_format",
            EnvelopeError::UnknownSchema { .. } => "unknown_schema",
            EnvelopeError::Decode { .. } => "avro_decode",
            EnvelopeError::Refused { .. } => "schema_refused",
            EnvelopeError::Shape(_) => "not_an_envelope",
            EnvelopeError::OutOfRange(_) => "out_of_range",
            EnvelopeError::Encode(_) => "encode",
        }
    }

    /// True when the same record may decode later (the registry was down).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            EnvelopeError::UnknownSchema {
                transient: true,
                ..
            }
        )
    }
}

/// Encodes changes with one registered envelope schema.
#[derive(Debug, Clone)]
pub struct EnvelopeCodec {
    /// The envelope schema.
    pub schema: Schema,
    /// Its registry id.
    pub id: u32,
}

impl EnvelopeCodec {
    /// A codec for `schema` registered as `id`.
    pub fn new(schema: Schema, id: u32) -> Self {
        Self { schema, id }
    }

    /// The change in the wire format.
    pub fn encode(&self, change: &Change) -> Result<Vec<u8>, EnvelopeError> {
        let body = apache_avro::to_avro_datum(&self.schema, change.to_value()).map_err(|e| {
            EnvelopeError::Encode(format!(
                "event {} does not match schema {}: {e}",
                change.event_id, self.id
            ))
        })?;
        let mut out = Vec::with_capacity(5 + body.len());
        wire::header_into(self.id, &mut out);
        out.extend_from_slice(&body);
        Ok(out)
    }
}

/// A change whose images are already encoded entities (Avro datums of the
/// entity schema): the producer stores entities so and writes the
/// envelope around them without building Avro values again.
#[derive(Debug, Clone, Copy)]
pub struct EncodedChange<'a> {
    /// The change's id.
    pub event_id: &'a str,
    /// What happened.
    pub op: Op,
    /// The entity before, as a datum.
    pub before: Option<&'a [u8]>,
    /// The entity after, as a datum.
    pub after: Option<&'a [u8]>,
    /// Where it comes from.
    pub source: &'a Source,
    /// When (ms).
    pub ts_ms: i64,
}

impl EnvelopeCodec {
    /// `change` in the wire format, written byte by byte: the same bytes as
    /// [`EnvelopeCodec::encode`] gives for a codec of [`envelope_schema`]'s
    /// shape (the producer's own), without decoding the images.
    pub fn encode_datums(&self, change: &EncodedChange<'_>) -> Vec<u8> {
        use crate::bytes::write_long;
        let images = change.before.map_or(0, <[u8]>::len) + change.after.map_or(0, <[u8]>::len);
        let mut w = Vec::with_capacity(48 + change.event_id.len() + images);
        wire::header_into(self.id, &mut w);
        let string = |w: &mut Vec<u8>, s: &str| {
            write_long(w, s.len() as i64);
            w.extend_from_slice(s.as_bytes());
        };
        string(&mut w, change.event_id);
        write_long(&mut w, i64::from(change.op.index()));
        for image in [change.before, change.after] {
            match image {
                // Union branch 1 (the entity), then its datum.
                Some(datum) => {
                    write_long(&mut w, 1);
                    w.extend_from_slice(datum);
                }
                None => write_long(&mut w, 0),
            }
        }
        string(&mut w, &change.source.agency);
        string(&mut w, &change.source.system);
        write_long(&mut w, change.source.seq);
        write_long(&mut w, change.ts_ms);
        w
    }
}

/// [`decode_in`], waiting while the registry is unreachable (never giving
/// up on a record for that) until `stop`: for followers that must not skip
/// a row. `what` names the follower in the warning logged on the first try
/// and every 30th.
pub fn decode_waiting(
    payload: &[u8],
    resolver: &dyn crate::SchemaResolver,
    subject: &str,
    stop: &std::sync::atomic::AtomicBool,
    what: &str,
) -> Result<(u32, Change), EnvelopeError> {
    let mut tries = 0u32;
    loop {
        match decode_in(payload, resolver, subject) {
            Err(e) if e.is_transient() && !stop.load(std::sync::atomic::Ordering::Relaxed) => {
                tries += 1;
                if tries == 1 || tries.is_multiple_of(30) {
                    tracing::warn!(error = %e, follower = what, "waiting for the schema registry");
                }
                std::thread::sleep(std::time::Duration::from_millis(
                    200 * u64::from(tries.min(10)),
                ));
            }
            other => return other,
        }
    }
}

/// Decodes a wire-format payload into a change, fetching the writer schema
/// through `resolver` (any id it knows).
pub fn decode(
    payload: &[u8],
    resolver: &dyn crate::SchemaResolver,
) -> Result<(u32, Change), EnvelopeError> {
    decode_with(payload, |id| resolver.resolve(id))
}

/// Decodes a record of a topic whose value subject is `subject`: the
/// writer schema must be registered under it (as Confluent's broker-side
/// schema validation requires), so a record cannot name any schema of the
/// registry.
pub fn decode_in(
    payload: &[u8],
    resolver: &dyn crate::SchemaResolver,
    subject: &str,
) -> Result<(u32, Change), EnvelopeError> {
    decode_with(payload, |id| resolver.resolve_in(subject, id))
}

/// Decodes one datum of `schema` from `body` and leaves `body` at what
/// follows it, as `apache_avro::from_avro_datum` does, but with the
/// schema's named types resolved once per schema (and thread) instead of
/// once per record: that resolution was a third of decoding a change.
fn datum(schema: &std::sync::Arc<Schema>, body: &mut &[u8]) -> Result<Value, String> {
    use apache_avro::GenericSingleObjectReader;
    use std::io::Read;
    use std::sync::Arc;
    /// The readers of the schemas this thread decoded last (oldest first).
    type Readers = Vec<(Arc<Schema>, Arc<(GenericSingleObjectReader, [u8; 10])>)>;
    const KEPT: usize = 16;
    thread_local! {
        static READERS: std::cell::RefCell<Readers> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let reader = READERS.with(|r| {
        let mut readers = r.borrow_mut();
        if let Some((_, x)) = readers.iter().find(|(s, _)| Arc::ptr_eq(s, schema)) {
            return Some(x.clone());
        }
        // The single-object header the reader expects before the datum.
        let f = schema.fingerprint::<apache_avro::rabin::Rabin>();
        let mut header = [0u8; 10];
        header[..2].copy_from_slice(&[0xC3, 0x01]);
        header[2..].copy_from_slice(f.bytes.get(..8)?);
        let x = Arc::new((
            GenericSingleObjectReader::new((**schema).clone()).ok()?,
            header,
        ));
        if readers.len() >= KEPT {
            readers.remove(0);
        }
        readers.push((schema.clone(), x.clone()));
        Some(x)
    });
    let Some(reader) = reader else {
        return apache_avro::from_avro_datum(schema, body, None).map_err(|e| e.to_string());
    };
    let (single, header) = &*reader;
    let mut input = header.as_slice().chain(*body);
    let value = single.read_value(&mut input).map_err(|e| e.to_string());
    *body = input.into_inner().1;
    value
}

fn decode_with(
    payload: &[u8],
    resolve: impl FnOnce(u32) -> Result<std::sync::Arc<Schema>, crate::RegistryError>,
) -> Result<(u32, Change), EnvelopeError> {
    crate::limits::ensure();
    let (id, mut body) = wire::decode(payload)?;
    let schema = resolve(id).map_err(|e| match e {
        crate::RegistryError::Refused { reason, .. } => EnvelopeError::Refused { id, reason },
        e => EnvelopeError::UnknownSchema {
            id,
            reason: e.to_string(),
            transient: e.is_transient(),
        },
    })?;
    let value = datum(&schema, &mut body).map_err(|reason| EnvelopeError::Decode { id, reason })?;
    if !body.is_empty() {
        return Err(EnvelopeError::Decode {
            id,
            reason: format!("{} bytes left after the record", body.len()),
        });
    }
    let change = Change::from_value(value)?;
    for (name, image) in [("before", &change.before), ("after", &change.after)] {
        if let Some(v) = image {
            crate::limits::check_ranges(v, name)?;
        }
    }
    Ok((id, change))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::FixedResolver;

    /// The residents' envelope schema, and a change of one resident named
    /// `name` (`before` too when `op` is an update).
    fn resident_change(op: Op, name: &str) -> (Schema, Change) {
        let entity = include_str!("../../../schemas/bca/residents.v1.avsc");
        let schema = Schema::parse_str(&envelope_schema(entity).unwrap()).unwrap();
        let ent = Schema::parse_str(entity).unwrap();
        let after = crate::json::to_avro(
            &ent,
            &json!({"citizen_id": "052090000001", "full_name": name, "date_of_birth": 1,
                    "sex": "FEMALE", "ethnicity": "Kinh",
                    "permanent_address": {"province_code": "52", "commune_code": "1"},
                    "updated_at": 5}),
        )
        .unwrap();
        let change = Change {
            event_id: "e1".into(),
            op,
            before: (op == Op::Update).then(|| after.clone()),
            after: Some(after),
            source: Source {
                agency: "bca".into(),
                system: "t".into(),
                seq: 1,
            },
            ts_ms: 7,
        };
        (schema, change)
    }

    #[test]
    fn envelope_round_trips_through_the_wire_format() {
        let (schema, change) = resident_change(Op::Create, "A");
        let codec = EnvelopeCodec::new(schema.clone(), 9);
        let bytes = codec.encode(&change).unwrap();
        let resolver = FixedResolver::new([(9, schema)]);
        let (id, back) = decode(&bytes, &resolver).unwrap();
        assert_eq!(id, 9);
        assert_eq!(back, change);
        assert!(matches!(
            decode(&bytes, &FixedResolver::new([])),
            Err(EnvelopeError::UnknownSchema { id: 9, .. })
        ));
        assert!(matches!(
            decode(&bytes[..8], &resolver),
            Err(EnvelopeError::Decode { .. })
        ));
    }

    /// The reader kept per schema decodes exactly as `from_avro_datum`
    /// does: the same value and the same bytes left over, and the same
    /// error for every truncation and for trailing bytes.
    #[test]
    fn a_kept_reader_decodes_as_from_avro_datum() {
        let (schema, change) = resident_change(Op::Update, "Nguyễn A");
        let schema = std::sync::Arc::new(schema);
        let bytes = EnvelopeCodec::new((*schema).clone(), 9)
            .encode(&change)
            .unwrap();
        let mut body = bytes[5..].to_vec();
        body.extend_from_slice(b"tail");
        for end in 0..=body.len() {
            let (mut a, mut b) = (&body[..end], &body[..end]);
            let kept = datum(&schema, &mut a);
            let plain =
                apache_avro::from_avro_datum(&schema, &mut b, None).map_err(|e| e.to_string());
            assert_eq!(kept, plain, "{end} bytes");
            assert_eq!(a, b, "{end} bytes");
        }
    }

    #[test]
    fn an_envelope_written_around_datums_is_the_one_written_from_values() {
        let entity = include_str!("../../../schemas/bca/residents.v1.avsc");
        let codec = EnvelopeCodec::new(
            Schema::parse_str(&envelope_schema(entity).unwrap()).unwrap(),
            300,
        );
        let ent = Schema::parse_str(entity).unwrap();
        let resident = |name: &str, street: Option<&str>| {
            crate::json::to_avro(
                &ent,
                &json!({"citizen_id": "052090000001", "full_name": name, "date_of_birth": -4000,
                        "sex": "MALE", "ethnicity": "Kinh",
                        "permanent_address": {"province_code": "52", "commune_code": "21550",
                                              "street": street},
                        "updated_at": 1_700_000_000_123_i64}),
            )
            .unwrap()
        };
        let images = [
            (
                Op::Create,
                None,
                Some(resident("Nguyễn Văn A", Some("12 Lê Lợi"))),
            ),
            (
                Op::Update,
                Some(resident("A", None)),
                Some(resident("Trần Thị Bích Ngọc", None)),
            ),
            (Op::Delete, Some(resident("", Some("x"))), None),
            (Op::Snapshot, None, Some(resident("B", None))),
        ];
        for (i, (op, before, after)) in images.into_iter().enumerate() {
            let source = Source {
                agency: "bca".into(),
                system: "hộ tịch".into(),
                seq: [1, 64, -1, i64::MAX][i],
            };
            let change = Change {
                event_id: format!("e-{i}-ư"),
                op,
                before: before.clone(),
                after: after.clone(),
                source: source.clone(),
                ts_ms: [0, -1, 1 << 40, 7][i],
            };
            let datum = |v: &Option<Value>| {
                v.clone()
                    .map(|v| apache_avro::to_avro_datum(&ent, v).unwrap())
            };
            let (b, a) = (datum(&before), datum(&after));
            let written = codec.encode_datums(&EncodedChange {
                event_id: &change.event_id,
                op,
                before: b.as_deref(),
                after: a.as_deref(),
                source: &source,
                ts_ms: change.ts_ms,
            });
            assert_eq!(written, codec.encode(&change).unwrap(), "{op:?}");
        }
    }
}
