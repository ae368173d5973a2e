//! Topic names. Every name goes through [`Topics`] so that a test (or a
//! shared cluster) can put all of govbus under a prefix.

use crate::files::DatasetId;

const REPLAY_SUFFIX: &str = ".replay";

/// Builds topic names, optionally under a prefix (e.g. `t1234.`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// Topic names under `prefix` (empty for the production names).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix in force.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `gov.<owner>.<dataset>.v<major>`: the owner's change events.
    pub fn central(&self, ds: &DatasetId, major: u32) -> String {
        format!("{}gov.{}.{}.v{}", self.prefix, ds.owner, ds.name, major)
    }

    /// `sub.<subscriber>.<owner>.<dataset>.v<major>`: a subscriber's view.
    pub fn view(&self, subscriber: &str, ds: &DatasetId, major: u32) -> String {
        format!(
            "{}sub.{}.{}.{}.v{}",
            self.prefix, subscriber, ds.owner, ds.name, major
        )
    }

    /// `report.<subscriber>.<name>`: a report's figures, one record per
    /// cell keyed by its labels (compacted; a cell that empties gets a
    /// tombstone).
    pub fn report(&self, subscriber: &str, name: &str) -> String {
        format!("{}report.{}.{}", self.prefix, subscriber, name)
    }

    /// `dlq.<stage>.<agency>`: rejected input of one stage.
    pub fn dlq(&self, stage: &str, agency: &str) -> String {
        format!("{}dlq.{}.{}", self.prefix, stage, agency)
    }

    /// `<source>.replay`: the records `govbus dlq replay` sends back to the
    /// stage that reads `source` (a central topic or a view), read by that
    /// stage beside `source` itself. A record that fails again is replayed
    /// to the same topic, never to `<source>.replay.replay`.
    pub fn replay(source: &str) -> String {
        let source = source.strip_suffix(REPLAY_SUFFIX).unwrap_or(source);
        format!("{source}{REPLAY_SUFFIX}")
    }

    /// Whether `topic` is a replay topic.
    pub fn is_replay(topic: &str) -> bool {
        topic.ends_with(REPLAY_SUFFIX)
    }

    /// `_govbus.dlq.state`: what was replayed or discarded, keyed by
    /// `<dlq topic>:<partition>:<offset>` (compacted).
    pub fn dlq_state(&self) -> String {
        format!("{}_govbus.dlq.state", self.prefix)
    }

    /// `_govbus.receipts.<subscriber>`: one subscriber's delivery
    /// receipts (retained, not compacted: an audit log). A topic per
    /// subscriber, which only that subscriber may write (its ACLs), so that
    /// the broker's authorization attributes each receipt to its writer.
    pub fn receipts(&self, subscriber: &str) -> String {
        format!("{}{subscriber}", self.receipts_prefix())
    }

    /// `_govbus.receipts.`: what every subscriber's receipts topic starts with.
    pub fn receipts_prefix(&self) -> String {
        format!("{}_govbus.receipts.", self.prefix)
    }

    /// The subscriber whose receipts `topic` holds, if it is a receipts topic.
    pub fn receipts_of<'t>(&self, topic: &'t str) -> Option<&'t str> {
        topic
            .strip_prefix(self.receipts_prefix().as_str())
            .filter(|s| !s.is_empty())
    }

    /// `_schemas`: the registry's storage.
    pub fn schemas(&self) -> String {
        format!("{}_schemas", self.prefix)
    }

    /// `_govbus.subscriptions`: the live subscription set.
    pub fn subscriptions(&self) -> String {
        format!("{}_govbus.subscriptions", self.prefix)
    }

    /// `_govbus.views`: which subscription spec each view holds, per input
    /// partition (written by routers in their transactions).
    pub fn view_state(&self) -> String {
        format!("{}_govbus.views", self.prefix)
    }
}

/// The registry subject of a topic's values (TopicNameStrategy).
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_design() {
        let t = Topics::default();
        let ds = DatasetId::new("bca", "residents");
        assert_eq!(t.central(&ds, 1), "gov.bca.residents.v1");
        assert_eq!(t.view("p52", &ds, 1), "sub.p52.bca.residents.v1");
        assert_eq!(t.dlq("ingest", "bca"), "dlq.ingest.bca");
        assert_eq!(Topics::new("x.").schemas(), "x._schemas");
        assert_eq!(Topics::new("x.").dlq_state(), "x._govbus.dlq.state");
        assert_eq!(
            Topics::replay("gov.bca.residents.v1"),
            "gov.bca.residents.v1.replay"
        );
        assert_eq!(
            Topics::replay("gov.bca.residents.v1.replay"),
            "gov.bca.residents.v1.replay"
        );
        assert!(Topics::is_replay("sub.p52.bca.residents.v1.replay"));
        assert!(!Topics::is_replay("sub.p52.bca.residents.v1"));
        assert_eq!(
            value_subject("gov.bca.residents.v1"),
            "gov.bca.residents.v1-value"
        );
    }
}
