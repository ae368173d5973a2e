//! Delivery receipts: one per applied batch, written by the sink in the
//! same transaction as the rows, and chained: each holds the hash of the
//! one before, so a receipt changed or removed afterwards breaks the chain
//! where it was changed. Each is also published on `_govbus.receipts`, so
//! that anyone can ask which subscribers applied an event, and when.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The hash the first receipt chains to.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One event a batch applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The change's id.
    pub event_id: String,
    /// The view topic it was read from.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
}

/// A receipt for one applied batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The subscriber that applied the batch.
    pub subscriber: String,
    /// Its number in the subscriber's chain, from 1.
    pub seq: i64,
    /// The events applied (a change superseded by a newer one of the same
    /// entity in the batch counts: it was applied in order).
    pub events: Vec<Applied>,
    /// When the transaction that applied them committed (ms since the
    /// epoch; taken just before the commit).
    pub applied_at_ms: i64,
    /// The hash of the receipt before (GENESIS for the first).
    pub prev: String,
    /// SHA-256 (hex) of everything above.
    pub hash: String,
}

impl Receipt {
    /// The receipt after `prev` (its seq and hash; None: the first).
    pub fn next(
        subscriber: &str,
        prev: Option<(i64, String)>,
        events: Vec<Applied>,
        applied_at_ms: i64,
    ) -> Self {
        let (seq, prev) = match prev {
            Some((s, h)) => (s + 1, h),
            None => (1, GENESIS.to_string()),
        };
        let mut r = Self {
            subscriber: subscriber.to_string(),
            seq,
            events,
            applied_at_ms,
            prev,
            hash: String::new(),
        };
        r.hash = r.compute_hash();
        r
    }

    /// The hash of the content (everything but the hash), over a canonical
    /// JSON text: `[subscriber, seq, events, applied_at_ms, prev]`, compact,
    /// each event's keys in alphabetical order.
    pub fn compute_hash(&self) -> String {
        let events: Vec<CanonicalEvent<'_>> = self
            .events
            .iter()
            .map(|e| CanonicalEvent {
                event_id: &e.event_id,
                offset: e.offset,
                partition: e.partition,
                topic: &e.topic,
            })
            .collect();
        let canonical = serde_json::to_vec(&(
            &self.subscriber,
            self.seq,
            events,
            self.applied_at_ms,
            &self.prev,
        ))
        .unwrap_or_default();
        hex::encode(Sha256::digest(&canonical))
    }
}

/// An event as the hash reads it (the keys in alphabetical order, as a
/// JSON object with sorted keys writes them; written directly, with no
/// intermediate JSON tree, as it is hashed for every applied batch).
#[derive(Serialize)]
struct CanonicalEvent<'a> {
    event_id: &'a str,
    offset: i64,
    partition: i32,
    topic: &'a str,
}

/// Where a chain of receipts breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    /// A receipt's content does not give its hash: it was changed.
    #[error(
        "receipt {seq} was changed: its content gives {computed}, its stored hash is {stored}"
    )]
    Altered {
        /// The receipt.
        seq: i64,
        /// What the content gives.
        computed: String,
        /// What is stored.
        stored: String,
    },
    /// A receipt does not chain to the one before it.
    #[error("receipt {seq} does not follow receipt {before}: it chains to {prev}, receipt {before} is {hash}")]
    Unchained {
        /// The receipt.
        seq: i64,
        /// The one before it in the store.
        before: i64,
        /// What it chains to.
        prev: String,
        /// The hash of the one before.
        hash: String,
    },
    /// Receipts are missing from the chain.
    #[error("receipts {from} to {to} are missing")]
    Gap {
        /// The first missing.
        from: i64,
        /// The last missing.
        to: i64,
    },
}

/// Checks a subscriber's chain (receipts in seq order): every hash, every
/// link, no gap. Ok holds the number of receipts and events checked.
pub fn verify(chain: &[Receipt]) -> Result<(usize, usize), Broken> {
    let mut before: Option<&Receipt> = None;
    let mut events = 0;
    for r in chain {
        let computed = r.compute_hash();
        if computed != r.hash {
            return Err(Broken::Altered {
                seq: r.seq,
                computed,
                stored: r.hash.clone(),
            });
        }
        let (want_seq, want_prev) = match before {
            Some(b) => (b.seq + 1, b.hash.as_str()),
            None => (r.seq, if r.seq == 1 { GENESIS } else { r.prev.as_str() }),
        };
        if r.seq != want_seq {
            return Err(Broken::Gap {
                from: want_seq,
                to: r.seq - 1,
            });
        }
        if r.prev != want_prev {
            return Err(Broken::Unchained {
                seq: r.seq,
                before: before.map_or(0, |b| b.seq),
                prev: r.prev.clone(),
                hash: want_prev.to_string(),
            });
        }
        events += r.events.len();
        before = Some(r);
    }
    Ok((chain.len(), events))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: i64) -> Applied {
        Applied {
            event_id: format!("e{i}"),
            topic: "sub.p52.bca.residents.v1".into(),
            partition: 0,
            offset: i,
        }
    }

    fn chain(n: i64) -> Vec<Receipt> {
        let mut out: Vec<Receipt> = Vec::new();
        for i in 0..n {
            let prev = out.last().map(|r| (r.seq, r.hash.clone()));
            out.push(Receipt::next(
                "p52",
                prev,
                vec![ev(2 * i), ev(2 * i + 1)],
                1000 + i,
            ));
        }
        out
    }

    #[test]
    fn the_hash_reads_the_canonical_text_of_a_sorted_json_tree() {
        let r = Receipt::next(
            "p52 \"Gia Lai\"",
            Some((6, "ab\u{1}".into())),
            vec![Applied {
                event_id: "é\n\\".into(),
                topic: "sub.p52.bca.residents.v1".into(),
                partition: -1,
                offset: i64::MAX,
            }],
            -5,
        );
        let tree = serde_json::json!([r.subscriber, r.seq, r.events, r.applied_at_ms, r.prev]);
        assert_eq!(
            r.hash,
            hex::encode(Sha256::digest(tree.to_string().as_bytes()))
        );
    }

    #[test]
    fn a_chain_verifies_and_each_receipt_follows_the_one_before() {
        let c = chain(5);
        assert_eq!(c[0].prev, GENESIS);
        assert_eq!(c[3].prev, c[2].hash);
        assert_eq!(verify(&c), Ok((5, 10)));
    }

    #[test]
    fn a_change_a_reorder_or_a_removal_names_where_the_chain_breaks() {
        let mut c = chain(5);
        c[2].events[0].offset = 99;
        assert!(matches!(verify(&c), Err(Broken::Altered { seq: 3, .. })));
        // Rehashed after the change: the next receipt no longer follows.
        c[2].hash = c[2].compute_hash();
        let e = verify(&c).unwrap_err();
        assert!(
            matches!(
                e,
                Broken::Unchained {
                    seq: 4,
                    before: 3,
                    ..
                }
            ),
            "{e}"
        );
        let mut c = chain(5);
        c.remove(2);
        assert_eq!(verify(&c), Err(Broken::Gap { from: 3, to: 3 }));
        let e = Broken::Gap { from: 3, to: 3 }.to_string();
        assert_eq!(e, "receipts 3 to 3 are missing");
    }
}
