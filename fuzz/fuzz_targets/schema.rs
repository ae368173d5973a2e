//! Arbitrary bytes as an Avro schema: parse, normalize, check compatibility.
//! `cargo fuzz run schema`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| govbus_schema::fuzz::schema(data));
