//! The batch step: a pure function from plain input records to the records
//! the views and DLQs receive and the offsets to commit. It talks to no
//! broker (schemas come through a [`SchemaResolver`]), so its dedupe
//! floors, DLQ reasons and headers, decisions and expiry are unit-tested
//! here; the session hands it what the consumer polled and the committer
//! what it returns.

use std::collections::HashMap;

use cel_interpreter::Context;
use govbus_core::InternalEvent;
use govbus_schema::SchemaResolver;

use super::committer::{DeadLetter, Routed, CHUNK};
use super::live::Live;
use super::RouterError;
use crate::events::{DeadLettered, Refetched};
use crate::fast::{FastOutputs, FastRoute, Tally};
use crate::route::{route, RouteError};

/// A record's headers, read only when needed (a dead letter keeps them):
/// librdkafka's as the consumer returned them, or a plain list in tests.
pub trait InputHeaders {
    /// Calls `f` with each header, in order.
    fn each(&self, f: &mut dyn FnMut(&str, &[u8]));
}

/// A polled record's headers are parsed only when asked for (librdkafka
/// parses them on first access): routing never asks.
impl InputHeaders for rdkafka::message::BorrowedMessage<'_> {
    fn each(&self, f: &mut dyn FnMut(&str, &[u8])) {
        use rdkafka::message::{Headers, Message};
        for h in self.headers().into_iter().flat_map(|h| h.iter()) {
            f(h.key, h.value.unwrap_or_default());
        }
    }
}

impl<const N: usize> InputHeaders for [(&str, &[u8]); N] {
    fn each(&self, f: &mut dyn FnMut(&str, &[u8])) {
        for (k, v) in self {
            f(k, v);
        }
    }
}

/// One input record, as the consumer returned it. Routing depends on its
/// position, key and value; its headers travel with it only into a dead
/// letter.
#[derive(Clone, Copy)]
pub struct Input<'a> {
    /// The central topic.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The entity key.
    pub key: &'a [u8],
    /// The change, in the wire format.
    pub payload: &'a [u8],
    /// Its headers, if any.
    pub headers: Option<&'a dyn InputHeaders>,
}

impl std::fmt::Debug for Input<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl<'a> Input<'a> {
    /// The fields of a record the consumer polled.
    pub fn of(m: &'a rdkafka::message::BorrowedMessage<'_>) -> Self {
        use rdkafka::Message;
        Self {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().unwrap_or_default(),
            payload: m.payload().unwrap_or_default(),
            headers: Some(m as &dyn InputHeaders),
        }
    }
}

/// The offset to commit for one input partition: the one after the last
/// record the batch routed there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    /// The input topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// The next offset to read.
    pub next: i64,
}

/// What the step keeps from batch to batch: reused buffers and, per input
/// partition, the offset after the last record routed in this session.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    out: FastOutputs,
    tally: Tally,
    pub(super) routed: HashMap<(String, i32), i64>,
    /// Input partitions the last batch stopped routing at a record whose
    /// writer schema could not be fetched (the registry unreachable, or
    /// asked about too many new ids): (topic, partition, that record's
    /// offset, why). The session reads them from there again later; the
    /// other partitions go on.
    pub(super) held: Vec<(String, i32, i64, String)>,
}

/// Writer schema ids the fast path accepts (true) or not (false), learnt
/// once per value subject and id: an id is accepted only for a topic whose
/// subject it is registered under.
#[derive(Debug, Default)]
pub(crate) struct FastIds(std::sync::Mutex<HashMap<(String, u32), bool>>);

impl FastIds {
    fn accepts(
        &self,
        fast: &FastRoute,
        subject: &str,
        id: u32,
        resolver: &dyn SchemaResolver,
    ) -> bool {
        // Asked only when a record's id differs from the one before it.
        let key = (subject.to_string(), id);
        let mut ids = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match ids.get(&key) {
            Some(ok) => *ok,
            None => match resolver.resolve_in(subject, id) {
                Ok(writer) => *ids.entry(key).or_insert(fast.accepts(&writer)),
                Err(_) => false,
            },
        }
    }
}

/// What one batch step reads: the live set, the schemas, the CEL base
/// context and the time that decides expiry.
pub(crate) struct Step<'s, 'l> {
    pub(crate) live: &'l Live,
    pub(crate) resolver: &'s dyn SchemaResolver,
    pub(crate) base: &'s Context<'s>,
    pub(crate) fast_ids: &'s FastIds,
    pub(crate) now_ms: i64,
}

impl<'l> Step<'_, 'l> {
    /// Routes `batch` into `out`, handing every full chunk ([`CHUNK`]
    /// records) to `chunk` on the way, and returns the offsets the batch
    /// advances.
    ///
    /// A record below its partition's floor (the offset after the last one
    /// routed in this session) was routed already and is skipped: Kafka
    /// never returns one, a broker that does would otherwise make the
    /// router write an event twice (one comparison per record, counted in
    /// `govbus_router_refetched_total`). A change that cannot be routed
    /// goes to its input's DLQ with its reason; one whose writer schema
    /// cannot be fetched now holds its partition at that record
    /// ([`Scratch::held`]), and the batch goes on with the others.
    pub(crate) fn run<'a>(
        &self,
        batch: impl IntoIterator<Item = Input<'a>>,
        out: &mut Routed<'l>,
        scratch: &mut Scratch,
        chunk: &mut dyn FnMut(&mut Routed<'l>) -> Result<(), RouterError>,
    ) -> Result<Vec<Advance>, RouterError> {
        let live = self.live;
        // A batch holds a few partitions: a list searched from the last one
        // used.
        let mut next: Vec<(&str, i32, i64)> = Vec::new();
        let mut at = 0;
        let mut refetched: Option<(&str, i32, i64, i64, u64)> = None;
        // The input topic's views, counter and fast path, looked up again
        // only when the topic changes from one record to the next.
        type Current<'l> = (
            &'l str,
            &'l (String, Vec<usize>),
            Option<&'l FastRoute>,
            u64,
        );
        let mut input: Option<Current<'_>> = None;
        let mut consumed: Vec<(&str, u64)> = Vec::new();
        let mut fast_id: Option<(u32, bool)> = None;
        let mut subject = String::new();
        scratch.held.clear();
        for m in batch {
            if out.records.len() >= CHUNK {
                chunk(out)?;
            }
            let Input {
                topic,
                partition,
                offset,
                key,
                payload,
                headers,
            } = m;
            if scratch
                .held
                .iter()
                .any(|(t, p, ..)| *p == partition && t == topic)
            {
                continue;
            }
            if next
                .get(at)
                .is_none_or(|(t, p, _)| *p != partition || *t != topic)
            {
                at = match next
                    .iter()
                    .position(|(t, p, _)| *p == partition && *t == topic)
                {
                    Some(i) => i,
                    None => {
                        let floor = scratch
                            .routed
                            .get(&(topic.to_string(), partition))
                            .copied()
                            .unwrap_or(i64::MIN);
                        next.push((topic, partition, floor));
                        next.len() - 1
                    }
                };
            }
            let floor = &mut next[at].2;
            if offset < *floor {
                if refetched.is_none() {
                    refetched = Some((topic, partition, offset, *floor, 0));
                }
                if let Some(r) = refetched.as_mut() {
                    r.4 += 1;
                }
                continue;
            }
            *floor = offset + 1;
            if input.is_none_or(|(t, ..)| t != topic) {
                if let Some((t, _, _, n)) = input.take() {
                    consumed.push((t, n));
                }
                let Some((name, views)) = live.inputs.get_key_value(topic) else {
                    continue;
                };
                input = Some((name, views, live.fast.get(topic), 0));
                fast_id = None;
                subject = live.subject(name);
            }
            let Some((name, (dataset, idx), fast, count)) = input.as_mut() else {
                continue;
            };
            *count += 1;
            tracing::trace!(
                topic,
                partition,
                offset,
                key = %String::from_utf8_lossy(key),
                "routing"
            );
            if let Some(fast) = fast {
                let accepted = payload.len() >= 5 && {
                    let id = u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]);
                    match fast_id {
                        Some((last, ok)) if last == id => ok,
                        _ => {
                            let ok = self.fast_ids.accepts(fast, &subject, id, self.resolver);
                            fast_id = Some((id, ok));
                            ok
                        }
                    }
                };
                if accepted
                    && fast.route(
                        payload,
                        &live.views,
                        idx,
                        self.now_ms,
                        &mut scratch.out,
                        &mut scratch.tally,
                    )
                {
                    for o in scratch.out.iter() {
                        out.emit(&live.views[idx[o.nth]], o.decision, key, o.value);
                    }
                    continue;
                }
            }
            match route(
                payload,
                self.resolver,
                &subject,
                live.scope(self.base),
                &live.views,
                idx,
                self.now_ms,
            ) {
                Ok(outs) => {
                    for o in outs {
                        out.emit(&live.views[o.view], o.decision, key, &o.value);
                    }
                }
                Err(RouteError::Envelope(e)) if e.is_transient() => {
                    // The writer schema cannot be fetched now: hold this
                    // partition at this record (read again later) rather
                    // than dead-letter a good record, and route the others.
                    if let Some(n) = next.get_mut(at) {
                        n.2 = offset;
                    }
                    *count -= 1;
                    crate::events::Held {
                        dataset,
                        topic,
                        partition,
                        offset,
                        error: &e,
                    }
                    .emit();
                    scratch
                        .held
                        .push((topic.to_string(), partition, offset, e.to_string()));
                }
                Err(e) => {
                    let mut original = Vec::new();
                    if let Some(h) = headers {
                        h.each(&mut |k, v| original.push((k.to_string(), v.to_vec())));
                    }
                    let dead = DeadLetter {
                        reason: e.reason(),
                        error: e.to_string(),
                        topic: topic.to_string(),
                        partition,
                        offset,
                        original,
                    };
                    DeadLettered {
                        dataset,
                        dead: &dead,
                    }
                    .emit();
                    out.push(&live.dlq[*name], key, payload, Some(Box::new(dead)));
                }
            }
        }
        if let Some((topic, partition, offset, next, count)) = refetched {
            Refetched {
                topic,
                partition,
                offset,
                next,
                count,
            }
            .emit();
        }
        if let Some((t, _, _, n)) = input {
            consumed.push((t, n));
        }
        for (t, n) in consumed {
            if let Some(c) = live.consumed.get(t) {
                c.increment(n);
            }
        }
        scratch.tally.flush(&live.views, self.now_ms);
        Ok(next
            .into_iter()
            .map(|(t, p, o)| {
                scratch.routed.insert((t.to_string(), p), o);
                Advance {
                    topic: t.to_string(),
                    partition: p,
                    next: o,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::Schema;
    use govbus_core::catalog::parse_subscription;
    use govbus_core::{Catalog, Topics};
    use govbus_schema::client::FixedResolver;
    use govbus_schema::envelope::envelope_schema;
    use govbus_schema::{Change, EnvelopeCodec, Op, Source};

    const RESIDENTS: &str = include_str!("../../../../schemas/bca/residents.v2.avsc");
    const INPUT: &str = "gov.bca.residents.v1";
    const DLQ: &str = "dlq.route.bca.residents";
    /// The writer schema id of the input's changes.
    const WRITER: u32 = 7;

    /// Views of p52 and p92 by province code (p52 without ethnicity); the
    /// resolver knows the writer and every view schema.
    fn world(filter: &str) -> (Live, FixedResolver) {
        let mut c = Catalog::builtin();
        c.subscriptions = [("p52", "52", "\"ethnicity\""), ("p92", "94", "")]
            .iter()
            .map(|(p, code, drop)| {
                let f = filter.replace("CODE", code);
                parse_subscription(
                    "s.toml",
                    &format!("subscriber = \"{p}\"\ndataset = \"bca.residents\"\nfilter = '{f}'\ndrop = [{drop}]\n"),
                )
                .unwrap()
            })
            .collect();
        let mut views = crate::views::compile(&c, &Topics::default()).unwrap();
        let mut schemas = vec![(WRITER, writer())];
        for (i, v) in views.iter_mut().enumerate() {
            let schema = Schema::parse_str(&v.schema).unwrap();
            schemas.push((100 + i as u32, schema.clone()));
            v.codec = Some(EnvelopeCodec::new(schema, 100 + i as u32));
        }
        (Live::of(views, INPUT, DLQ), FixedResolver::new(schemas))
    }

    fn writer() -> Schema {
        Schema::parse_str(&envelope_schema(RESIDENTS).unwrap()).unwrap()
    }

    /// A resident of `province` (None: no image).
    fn resident(province: Option<&str>) -> Option<govbus_schema::AvroValue> {
        let mut world = govbus_producer::demo::DemoWorld::new(3);
        let mut r = world.new_resident();
        r["permanent_address"]["province_code"] = province?.into();
        let entity = Schema::parse_str(RESIDENTS).unwrap();
        Some(govbus_schema::json::to_avro(&entity, &r).unwrap())
    }

    fn change(op: Op, before: Option<&str>, after: Option<&str>, seq: i64) -> Vec<u8> {
        EnvelopeCodec::new(writer(), WRITER)
            .encode(&Change {
                event_id: format!("e{seq}"),
                op,
                before: resident(before),
                after: resident(after),
                source: Source {
                    agency: "bca".into(),
                    system: "t".into(),
                    seq,
                },
                ts_ms: 1_700_000_000_000 + seq,
            })
            .unwrap()
    }

    fn input(offset: i64, payload: &[u8]) -> Input<'_> {
        const HEADERS: &[(&str, &[u8]); 1] = &[("govbus.outbox", b"00000000000000ab:7")];
        Input {
            topic: INPUT,
            partition: 0,
            offset,
            key: b"079001000001",
            payload,
            headers: Some(HEADERS as &dyn InputHeaders),
        }
    }

    /// Runs one batch at `now_ms`: the records (topic, op or DLQ reason)
    /// and the advances.
    fn run(
        live: &Live,
        resolver: &FixedResolver,
        scratch: &mut Scratch,
        batch: &[(i64, Vec<u8>)],
        now_ms: i64,
    ) -> (Vec<(String, String)>, Vec<Advance>, Vec<DeadLetter>) {
        let base = govbus_schema::cel::base_context();
        let fast_ids = FastIds::default();
        let step = Step {
            live,
            resolver,
            base: &base,
            fast_ids: &fast_ids,
            now_ms,
        };
        let mut out = Routed::default();
        let mut chunks = 0;
        let advances = step
            .run(
                batch.iter().map(|(o, p)| input(*o, p)),
                &mut out,
                scratch,
                &mut |_| {
                    chunks += 1;
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(chunks, 0, "a small batch goes over whole");
        let mut records = Vec::new();
        let mut dead = Vec::new();
        for (topic, key, value, d) in out.iter() {
            assert_eq!(key, b"079001000001");
            let what = match d {
                Some(d) => {
                    dead.push(d.clone());
                    d.reason.to_string()
                }
                None => {
                    let (_, c) = govbus_schema::envelope::decode(value, resolver).unwrap();
                    format!(
                        "{:?} before={} after={}",
                        c.op,
                        c.before.is_some(),
                        c.after.is_some()
                    )
                }
            };
            records.push((topic.to_string(), what));
        }
        (records, advances, dead)
    }

    fn rec(topic: &str, what: &str) -> (String, String) {
        (topic.to_string(), what.to_string())
    }

    #[test]
    fn an_entity_enters_moves_and_leaves_each_view_with_the_images_it_may_see() {
        // The fast path (equality filters) and the general path (any other
        // filter) must decide alike.
        for filter in [
            "permanent_address.province_code == \"CODE\"",
            "permanent_address.province_code in [\"CODE\"]",
        ] {
            let (live, resolver) = world(filter);
            assert_eq!(live.fast.is_empty(), filter.contains(" in "), "{filter}");
            let batch = vec![
                (0, change(Op::Create, None, Some("52"), 1)),
                (1, change(Op::Update, Some("52"), Some("52"), 2)),
                (2, change(Op::Update, Some("52"), Some("94"), 3)),
                (3, change(Op::Update, Some("01"), Some("01"), 4)),
                (4, change(Op::Delete, Some("94"), None, 5)),
            ];
            let (records, advances, _) = run(&live, &resolver, &mut Scratch::default(), &batch, 0);
            assert_eq!(
                records,
                vec![
                    rec("sub.p52.bca.residents.v1", "Create before=false after=true"),
                    rec("sub.p52.bca.residents.v1", "Update before=true after=true"),
                    rec("sub.p52.bca.residents.v1", "Delete before=true after=false"),
                    rec("sub.p92.bca.residents.v1", "Create before=false after=true"),
                    rec("sub.p92.bca.residents.v1", "Delete before=true after=false"),
                ],
                "{filter}"
            );
            assert_eq!(
                advances,
                vec![Advance {
                    topic: INPUT.into(),
                    partition: 0,
                    next: 5
                }]
            );
        }
    }

    #[test]
    fn a_record_below_the_sessions_floor_is_not_routed_twice() {
        let (live, resolver) = world("permanent_address.province_code == \"CODE\"");
        let mut scratch = Scratch::default();
        let first: Vec<_> = (0..3)
            .map(|o| (o, change(Op::Create, None, Some("52"), o + 1)))
            .collect();
        let (records, advances, _) = run(&live, &resolver, &mut scratch, &first, 0);
        assert_eq!((records.len(), advances[0].next), (3, 3));
        // The broker returns offsets 1..5: only 3 and 4 are new.
        let again: Vec<_> = (1..5)
            .map(|o| (o, change(Op::Create, None, Some("94"), o + 1)))
            .collect();
        let (records, advances, _) = run(&live, &resolver, &mut scratch, &again, 0);
        assert_eq!(
            records,
            vec![
                rec("sub.p92.bca.residents.v1", "Create before=false after=true"),
                rec("sub.p92.bca.residents.v1", "Create before=false after=true"),
            ]
        );
        assert_eq!(advances[0].next, 5);
        // A new session (no floor) routes whatever it is given.
        let (records, ..) = run(&live, &resolver, &mut Scratch::default(), &again, 0);
        assert_eq!(records.len(), 4);
    }

    #[test]
    fn a_change_that_cannot_be_routed_goes_to_the_dlq_with_its_reason_and_origin() {
        let (live, resolver) = world("permanent_address.province_code == \"CODE\"");
        let mut unknown = change(Op::Create, None, Some("52"), 1);
        unknown[1..5].copy_from_slice(&99u32.to_be_bytes());
        let batch = vec![
            (10, b"\x01not avro".to_vec()),
            (11, unknown),
            (12, vec![0, 0]),
            (13, change(Op::Create, None, Some("94"), 2)),
        ];
        let (records, advances, dead) = run(&live, &resolver, &mut Scratch::default(), &batch, 0);
        assert_eq!(
            records,
            vec![
                rec(DLQ, "not_wire_format"),
                rec(DLQ, "unknown_schema"),
                rec(DLQ, "not_wire_format"),
                rec("sub.p92.bca.residents.v1", "Create before=false after=true"),
            ]
        );
        assert_eq!(advances[0].next, 14, "dead letters advance the offsets too");
        let headers = dead[1].headers();
        assert_eq!(headers[0], ("govbus.reason", "unknown_schema".into()));
        assert!(headers[1].1.contains("99"), "{:?}", headers[1]);
        assert_eq!(headers[2], ("govbus.source.topic", INPUT.into()));
        assert_eq!(headers[3], ("govbus.source.partition", "0".into()));
        assert_eq!(headers[4], ("govbus.source.offset", "11".into()));
        assert_eq!(
            dead[1].original,
            [("govbus.outbox".to_string(), b"00000000000000ab:7".to_vec())],
            "the record's own headers are kept"
        );
    }

    #[test]
    fn an_expired_view_receives_nothing_and_the_others_go_on() {
        for filter in [
            "permanent_address.province_code == \"CODE\"",
            "permanent_address.province_code in [\"CODE\"]",
        ] {
            let (mut live, resolver) = world(filter);
            live.views[0].expires_ms = Some(1_000);
            let batch = vec![
                (0, change(Op::Create, None, Some("52"), 1)),
                (1, change(Op::Create, None, Some("94"), 2)),
            ];
            let (records, ..) = run(&live, &resolver, &mut Scratch::default(), &batch, 999);
            assert_eq!(records.len(), 2, "{filter}: not expired yet");
            let (records, ..) = run(&live, &resolver, &mut Scratch::default(), &batch, 1_000);
            assert_eq!(
                records,
                vec![rec(
                    "sub.p92.bca.residents.v1",
                    "Create before=false after=true"
                )],
                "{filter}"
            );
        }
    }

    #[test]
    fn a_large_batch_goes_to_the_committer_in_chunks() {
        let (live, resolver) = world("permanent_address.province_code == \"CODE\"");
        let payload = change(Op::Create, None, Some("52"), 1);
        let base = govbus_schema::cel::base_context();
        let fast_ids = FastIds::default();
        let step = Step {
            live: &live,
            resolver: &resolver,
            base: &base,
            fast_ids: &fast_ids,
            now_ms: 0,
        };
        let n = 2 * CHUNK + 10;
        let mut out = Routed::default();
        let mut handed = Vec::new();
        step.run(
            (0..n as i64).map(|o| input(o, &payload)),
            &mut out,
            &mut Scratch::default(),
            &mut |o| {
                handed.push(o.records.len());
                o.clear();
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(handed, vec![CHUNK, CHUNK]);
        assert_eq!(out.records.len(), 10);
    }
}
