//! Arbitrary bytes as a Kafka record value: Confluent wire format, then a
//! change envelope. `cargo fuzz run wire`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| govbus_schema::fuzz::wire(data));
