//! Which dead letters an operation takes, and what each one became: the
//! pure part of `govbus dlq replay|discard` (no Kafka here).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::Letter;

/// The letters an operation takes: every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Selection {
    /// `govbus.reason` equals this.
    pub(crate) reason: Option<String>,
    /// Partition (the DLQ topics have one; given for completeness).
    pub(crate) partition: Option<i32>,
    /// Offsets from..=to.
    pub(crate) offsets: Option<(i64, i64)>,
    /// The record's key equals this (as text).
    pub(crate) key: Option<String>,
    /// Written at or after this time (ms).
    pub(crate) since_ms: Option<i64>,
    /// Written before this time (ms).
    pub(crate) until_ms: Option<i64>,
}

/// A selection the command line could not read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum SelectionError {
    /// `--offsets` is not `N` or `FROM-TO`.
    #[error("--offsets takes N or FROM-TO (inclusive), not `{0}`")]
    Offsets(String),
    /// A time is neither RFC 3339 nor an age.
    #[error("a time is RFC 3339 (2026-12-02T08:00:00Z) or an age (30m, 2h, 7d), not `{0}`")]
    Time(String),
    /// Nothing narrows an operation that changes state.
    #[error("select the records: give at least one of --reason, --offsets, --key, --since, --until, or --all")]
    Unbounded,
}

impl Selection {
    /// Reads `--offsets` (`N` or `FROM-TO`).
    pub(crate) fn parse_offsets(s: &str) -> Result<(i64, i64), SelectionError> {
        let bad = || SelectionError::Offsets(s.to_string());
        match s.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (
                    a.trim().parse().map_err(|_| bad())?,
                    b.trim().parse().map_err(|_| bad())?,
                );
                if a > b {
                    return Err(bad());
                }
                Ok((a, b))
            }
            None => {
                let n = s.trim().parse().map_err(|_| bad())?;
                Ok((n, n))
            }
        }
    }

    /// Reads a time: RFC 3339, or an age before `now_ms` (`30m`, `2h`, `7d`).
    pub(crate) fn parse_time(s: &str, now_ms: i64) -> Result<i64, SelectionError> {
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
            return Ok(t.timestamp_millis());
        }
        let bad = || SelectionError::Time(s.to_string());
        let unit = s.chars().last().ok_or_else(bad)?;
        let n: i64 = s[..s.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
        let ms = match unit {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            _ => return Err(bad()),
        };
        Ok(now_ms - n * ms)
    }

    /// Whether the selection narrows anything.
    pub(crate) fn is_bounded(&self) -> bool {
        *self != Self::default()
    }

    /// Whether `l` is selected.
    pub(crate) fn matches(&self, l: &Letter) -> bool {
        self.reason
            .as_deref()
            .is_none_or(|r| l.header("govbus.reason") == Some(r))
            && self.partition.is_none_or(|p| l.partition == p)
            && self
                .offsets
                .is_none_or(|(a, b)| (a..=b).contains(&l.offset))
            && self
                .key
                .as_deref()
                .is_none_or(|k| l.key.as_deref() == Some(k.as_bytes()))
            && self
                .since_ms
                .is_none_or(|t| l.timestamp_ms.is_some_and(|ts| ts >= t))
            && self
                .until_ms
                .is_none_or(|t| l.timestamp_ms.is_some_and(|ts| ts < t))
    }
}

/// What an operator did with a dead letter, as `_govbus.dlq.state` keeps it
/// (keyed by [`Letter::id`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Handled {
    /// `replayed` or `discarded`.
    pub(crate) action: Action,
    /// Who (`--by`, else `$USER`).
    pub(crate) by: String,
    /// When (ms).
    pub(crate) at_ms: i64,
    /// Why (`--why`; required to discard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) why: Option<String>,
    /// Where a replayed record went (a replay topic, or an outbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) to: Option<String>,
}

/// An operation on a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Action {
    /// Sent back through the stage it failed.
    Replayed,
    /// Marked handled without sending it on.
    Discarded,
}

impl Action {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::Replayed => "replayed",
            Action::Discarded => "discarded",
        }
    }
}

/// One earlier failure of a record, as `govbus.history` lists them (a JSON
/// array, oldest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Failure {
    /// The dead letter (`topic:partition:offset`).
    pub(crate) letter: String,
    /// Its reason.
    pub(crate) reason: String,
    /// Its error.
    pub(crate) error: String,
    /// When it was dead-lettered (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) at_ms: Option<i64>,
}

/// The history a replay of `l` carries: `l`'s own history, then `l`.
pub(crate) fn history_after(l: &Letter) -> String {
    let mut h: Vec<Failure> = match l.header("govbus.history") {
        None => vec![],
        Some(s) => serde_json::from_str(s).unwrap_or_else(|e| {
            // Kept as it was, not dropped: the history of a record is its audit.
            vec![Failure {
                letter: "(unreadable history)".into(),
                reason: "unreadable_history".into(),
                error: format!("{e}: {s}"),
                at_ms: None,
            }]
        }),
    };
    h.push(Failure {
        letter: l.id(),
        reason: l.header("govbus.reason").unwrap_or("(none)").to_string(),
        error: l.header("govbus.error").unwrap_or("").to_string(),
        at_ms: l.timestamp_ms,
    });
    serde_json::to_string(&h).expect("a history serializes")
}

/// Headers a dead-lettering stage wrote; a replay leaves them off (the
/// record's own headers follow them and are kept).
const DLQ_HEADERS: [&str; 10] = [
    "govbus.entity.seq",
    "govbus.reason",
    "govbus.error",
    "govbus.rule",
    "govbus.source",
    "govbus.source.topic",
    "govbus.source.partition",
    "govbus.source.offset",
    "govbus.history",
    "govbus.replay.of",
];

/// A record to send back to a stage that reads Kafka (the router, a
/// province): to the replay topic of the topic it was read from, with its
/// own key, value and headers, and `govbus.history`/`govbus.replay.of`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resend {
    pub(crate) topic: String,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Option<Vec<u8>>,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
}

/// Why a letter cannot be replayed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ReplayError {
    /// The letter does not say which topic it was read from.
    #[error("{0} has no govbus.source.topic header: it does not say which topic it was read from")]
    NoSource(String),
}

/// The record replaying `l` sends (a route or consume letter).
pub(crate) fn resend(l: &Letter) -> Result<Resend, ReplayError> {
    let source = l
        .header("govbus.source.topic")
        .ok_or_else(|| ReplayError::NoSource(l.id()))?;
    let mut headers: Vec<(String, Vec<u8>)> = vec![
        ("govbus.history".into(), history_after(l).into_bytes()),
        ("govbus.replay.of".into(), l.id().into_bytes()),
    ];
    headers.extend(
        l.headers
            .iter()
            .filter(|(k, _)| !DLQ_HEADERS.contains(&k.as_str()))
            .cloned(),
    );
    Ok(Resend {
        topic: govbus_core::Topics::replay(source),
        key: l.key.clone(),
        payload: l.payload.clone(),
        headers,
    })
}

/// The letters of `letters` an operation takes: selected, and not handled
/// before (those are returned apart, with what was done).
pub(crate) fn pick<'a>(
    letters: &'a [Letter],
    sel: &Selection,
    state: &HashMap<String, Handled>,
) -> (Vec<&'a Letter>, Vec<(&'a Letter, Handled)>) {
    let mut todo = Vec::new();
    let mut done = Vec::new();
    for l in letters.iter().filter(|l| sel.matches(l)) {
        match state.get(&l.id()) {
            Some(h) => done.push((l, h.clone())),
            None => todo.push(l),
        }
    }
    (todo, done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(offset: i64, reason: &str, key: &str, ts: i64) -> Letter {
        Letter {
            topic: "dlq.route.bca.residents".into(),
            partition: 0,
            offset,
            timestamp_ms: Some(ts),
            key: Some(key.as_bytes().to_vec()),
            payload: Some(vec![0, 1, 2]),
            headers: vec![
                ("govbus.reason".into(), reason.as_bytes().to_vec()),
                (
                    "govbus.error".into(),
                    b"schema 9 is not in the registry".to_vec(),
                ),
                (
                    "govbus.source.topic".into(),
                    b"gov.bca.residents.v1".to_vec(),
                ),
                ("govbus.source.partition".into(), b"3".to_vec()),
                ("govbus.source.offset".into(), b"17".to_vec()),
                ("traceparent".into(), vec![0xff, 0x00]),
            ],
        }
    }

    #[test]
    fn a_selection_takes_what_every_condition_allows() {
        let ls = [
            letter(0, "unknown_schema", "a", 1_000),
            letter(1, "avro_decode", "b", 2_000),
            letter(2, "unknown_schema", "b", 3_000),
        ];
        let take = |s: Selection| -> Vec<i64> {
            ls.iter()
                .filter(|l| s.matches(l))
                .map(|l| l.offset)
                .collect()
        };
        assert_eq!(take(Selection::default()), vec![0, 1, 2]);
        assert!(!Selection::default().is_bounded());
        let by_reason = Selection {
            reason: Some("unknown_schema".into()),
            ..Selection::default()
        };
        assert!(by_reason.is_bounded());
        assert_eq!(take(by_reason.clone()), vec![0, 2]);
        assert_eq!(
            take(Selection {
                key: Some("b".into()),
                ..by_reason
            }),
            vec![2]
        );
        assert_eq!(
            take(Selection {
                offsets: Some((1, 2)),
                ..Selection::default()
            }),
            vec![1, 2]
        );
        assert_eq!(
            take(Selection {
                since_ms: Some(2_000),
                until_ms: Some(3_000),
                ..Selection::default()
            }),
            vec![1]
        );
        assert_eq!(
            take(Selection {
                partition: Some(1),
                ..Selection::default()
            }),
            Vec::<i64>::new()
        );
    }

    #[test]
    fn offsets_and_times_are_read_or_refused_with_the_form_to_use() {
        assert_eq!(Selection::parse_offsets("4"), Ok((4, 4)));
        assert_eq!(Selection::parse_offsets("4-9"), Ok((4, 9)));
        assert_eq!(
            Selection::parse_offsets("9-4"),
            Err(SelectionError::Offsets("9-4".into()))
        );
        assert!(Selection::parse_offsets("x").is_err());
        let now = 10 * 86_400_000;
        assert_eq!(Selection::parse_time("2h", now), Ok(now - 7_200_000));
        assert_eq!(Selection::parse_time("7d", now), Ok(3 * 86_400_000));
        assert_eq!(
            Selection::parse_time("1970-01-01T00:00:01Z", now),
            Ok(1_000)
        );
        let e = Selection::parse_time("yesterday", now).unwrap_err();
        assert!(e.to_string().contains("RFC 3339"), "{e}");
    }

    #[test]
    fn a_resend_goes_to_the_replay_topic_with_its_own_headers_and_history() {
        let l = letter(5, "unknown_schema", "k", 1_000);
        let r = resend(&l).unwrap();
        assert_eq!(r.topic, "gov.bca.residents.v1.replay");
        assert_eq!(r.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(r.payload, l.payload);
        let keys: Vec<&str> = r.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["govbus.history", "govbus.replay.of", "traceparent"]);
        assert_eq!(r.headers[2].1, vec![0xff, 0x00], "binary headers kept");
        let h: Vec<Failure> = serde_json::from_slice(&r.headers[0].1).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].letter, "dlq.route.bca.residents:0:5");
        assert_eq!(h[0].reason, "unknown_schema");

        // It fails again: the router's new letter carries the record's
        // headers after its own; replaying that one extends the history
        // and still targets the same replay topic.
        let mut again = letter(9, "avro_decode", "k", 2_000);
        again.headers[2].1 = b"gov.bca.residents.v1.replay".to_vec();
        again.headers.truncate(5);
        again.headers.extend(r.headers.clone());
        let r2 = resend(&again).unwrap();
        assert_eq!(r2.topic, "gov.bca.residents.v1.replay");
        let h: Vec<Failure> = serde_json::from_slice(&r2.headers[0].1).unwrap();
        let reasons: Vec<&str> = h.iter().map(|f| f.reason.as_str()).collect();
        assert_eq!(reasons, ["unknown_schema", "avro_decode"]);
        assert_eq!(
            r2.headers
                .iter()
                .filter(|(k, _)| k == "govbus.history")
                .count(),
            1
        );

        let mut garbled = letter(2, "x", "k", 0);
        garbled
            .headers
            .push(("govbus.history".into(), b"not json".to_vec()));
        let h: Vec<Failure> = serde_json::from_str(&history_after(&garbled)).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].reason, "unreadable_history");
        assert!(h[0].error.ends_with(": not json"), "{:?}", h[0]);

        let mut lost = letter(1, "x", "k", 0);
        lost.headers.retain(|(k, _)| k != "govbus.source.topic");
        assert_eq!(
            resend(&lost),
            Err(ReplayError::NoSource("dlq.route.bca.residents:0:1".into()))
        );
    }

    #[test]
    fn letters_handled_before_are_set_apart() {
        let ls = [letter(0, "a", "k", 0), letter(1, "a", "k", 0)];
        let state = HashMap::from([(
            "dlq.route.bca.residents:0:0".to_string(),
            Handled {
                action: Action::Discarded,
                by: "ops".into(),
                at_ms: 5,
                why: Some("garbage".into()),
                to: None,
            },
        )]);
        let (todo, done) = pick(&ls, &Selection::default(), &state);
        assert_eq!(todo.iter().map(|l| l.offset).collect::<Vec<_>>(), [1]);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].1.action, Action::Discarded);
        let json = serde_json::to_string(&done[0].1).unwrap();
        assert_eq!(
            json,
            r#"{"action":"discarded","by":"ops","at_ms":5,"why":"garbage"}"#
        );
    }
}
