//! A dead letter's reason and origin, as every stage that dead-letters a
//! record it read from Kafka (the router, a province's consumer) writes
//! them: `govbus.reason`, `govbus.error`, `govbus.source.{topic,partition,
//! offset}`, then the record's own headers.

/// A dead letter's reason and origin, written as its headers
/// (`govbus.reason`, `govbus.error`, `govbus.source.{topic,partition,offset}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// A bounded reason (`not_wire_format`, `constraint`, …).
    pub reason: &'static str,
    /// The error in words.
    pub error: String,
    /// The input topic.
    pub topic: String,
    /// The input partition.
    pub partition: i32,
    /// The input offset.
    pub offset: i64,
    /// The input record's own headers, kept after govbus's.
    pub original: Vec<(String, Vec<u8>)>,
}

impl DeadLetter {
    /// The headers, in the order they are written.
    pub fn headers(&self) -> [(&'static str, String); 5] {
        [
            ("govbus.reason", self.reason.to_string()),
            ("govbus.error", self.error.clone()),
            ("govbus.source.topic", self.topic.clone()),
            ("govbus.source.partition", self.partition.to_string()),
            ("govbus.source.offset", self.offset.to_string()),
        ]
    }
}
