//! A dead letter's headers as a Kafka record carries them.

use govbus_core::dead::DeadLetter;
use rdkafka::message::{Header, OwnedHeaders};

/// `letter`'s headers (govbus's, then the record's own), as a record
/// carries them.
pub fn dead_letter_headers(letter: &DeadLetter) -> OwnedHeaders {
    let govbus = letter.headers().iter().fold(
        OwnedHeaders::new_with_capacity(5 + letter.original.len()),
        |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value.as_str()),
            })
        },
    );
    letter.original.iter().fold(govbus, |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(value.as_slice()),
        })
    })
}
