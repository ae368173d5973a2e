//! The words of applying: a change to apply ([`Row`]), what a batch did
//! ([`Applied`]) and a record that was dead-lettered ([`Dead`]). Every
//! sink, the database layer and the consumer's events speak them.

use std::sync::Arc;

use crate::table::{SqlValue, TableDef};

/// One change to apply.
#[derive(Debug, Clone)]
pub struct Row {
    /// The table.
    pub table: Arc<TableDef>,
    /// The entity key.
    pub key: String,
    /// The entity's sequence.
    pub seq: i64,
    /// When the source changed (ms).
    pub source_ts: i64,
    /// Column values (in `table.columns` order), or None for a delete.
    pub values: Option<Vec<SqlValue>>,
    /// The change's id (idempotency key for webhook receivers).
    pub event_id: String,
    /// The view's op.
    pub op: govbus_schema::Op,
    /// The entity after the change, as the view holds it (None for a delete).
    pub after: Option<govbus_schema::AvroValue>,
    /// The record it was read from (topic, partition, offset), for its
    /// receipt.
    pub record: Option<(Arc<str>, i32, i64)>,
}

impl Row {
    /// Whether the change is already applied, given the entity's last
    /// applied sequence: a change not newer is, except a snapshot or a
    /// delete of the same sequence — what a router sends when a
    /// subscription changes (the entity re-sent with a new projection,
    /// entering again, or leaving), which applies again harmlessly.
    pub fn is_stale(&self, prev: Option<i64>) -> bool {
        use govbus_schema::Op;
        prev.is_some_and(|p| {
            p > self.seq || (p == self.seq && !matches!(self.op, Op::Snapshot | Op::Delete))
        })
    }
}

/// What one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Rows upserted.
    pub upserts: u64,
    /// Rows deleted.
    pub deletes: u64,
    /// Changes skipped as not newer than what the table holds.
    pub stale: u64,
}

/// A record of a view that was dead-lettered (`dlq.consume.<subscriber>`):
/// kept beside the rows so that its entity shows as stale in the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dead {
    /// The view topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The entity key (empty when the record had none).
    pub key: String,
    /// The table the view fills.
    pub table: String,
    /// A bounded reason.
    pub reason: &'static str,
    /// The error in words.
    pub error: String,
}

/// The changes of `rows` (one table's run) that are newer than what is
/// stored (`known`: the last applied sequence per key), in order, and the
/// last of each key among them (what the table ends up holding). Counts
/// them in `done`.
pub(crate) fn fresh<'a>(
    rows: &[&'a Row],
    known: &std::collections::HashMap<String, i64>,
    done: &mut Applied,
) -> (Vec<&'a Row>, Vec<&'a Row>) {
    use std::collections::HashMap;
    let mut seq: HashMap<&str, i64> = HashMap::new();
    let mut last: HashMap<&str, usize> = HashMap::new();
    let mut applied: Vec<&'a Row> = Vec::new();
    let mut finals: Vec<&'a Row> = Vec::new();
    for r in rows {
        let prev = seq
            .get(r.key.as_str())
            .copied()
            .or_else(|| known.get(&r.key).copied());
        if r.is_stale(prev) {
            done.stale += 1;
            continue;
        }
        seq.insert(r.key.as_str(), r.seq);
        applied.push(r);
        match last.get(r.key.as_str()) {
            Some(&i) => finals[i] = r,
            None => {
                last.insert(r.key.as_str(), finals.len());
                finals.push(r);
            }
        }
        if r.values.is_some() {
            done.upserts += 1;
        } else {
            done.deletes += 1;
        }
    }
    (applied, finals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{ColType, Column};

    fn table() -> Arc<TableDef> {
        Arc::new(TableDef {
            name: "t".into(),
            key: "id".into(),
            columns: vec![Column {
                name: "id".into(),
                path: vec!["id".into()],
                ty: ColType::Text,
            }],
        })
    }

    fn row(t: &Arc<TableDef>, key: &str, seq: i64, live: bool) -> Row {
        Row {
            table: t.clone(),
            key: key.into(),
            seq,
            source_ts: 0,
            values: live.then(|| vec![SqlValue::Text(key.into())]),
            event_id: format!("{key}-{seq}"),
            op: if live {
                govbus_schema::Op::Update
            } else {
                govbus_schema::Op::Delete
            },
            after: None,
            record: None,
        }
    }

    #[test]
    fn a_snapshot_or_delete_of_the_same_sequence_applies_again() {
        let t = table();
        let mut r = row(&t, "a", 5, true);
        assert!(!r.is_stale(None) && !r.is_stale(Some(4)));
        assert!(r.is_stale(Some(5)), "a live change seen twice");
        assert!(r.is_stale(Some(6)));
        r.op = govbus_schema::Op::Snapshot;
        assert!(!r.is_stale(Some(5)), "re-sent by a subscription change");
        assert!(r.is_stale(Some(6)));
        let d = row(&t, "a", 5, false);
        assert!(!d.is_stale(Some(5)), "left by a subscription change");
        assert!(d.is_stale(Some(6)));
    }

    #[test]
    fn fresh_skips_what_is_not_newer_and_keeps_the_last_of_each_key() {
        let t = table();
        let rows = [
            row(&t, "a", 1, true),
            row(&t, "b", 7, true),
            row(&t, "a", 3, true),
            row(&t, "a", 2, true),
            row(&t, "b", 8, false),
        ];
        let refs: Vec<&Row> = rows.iter().collect();
        let known = [("b".to_string(), 7)].into_iter().collect();
        let mut done = Applied::default();
        let (applied, finals) = fresh(&refs, &known, &mut done);
        let ids = |v: &[&Row]| v.iter().map(|r| r.event_id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&applied), ["a-1", "a-3", "b-8"]);
        assert_eq!(ids(&finals), ["a-3", "b-8"]);
        assert_eq!(
            done,
            Applied {
                upserts: 2,
                deletes: 1,
                stale: 2
            }
        );
    }
}
