//! `govbus_schema::fuzz::bytes` under libFuzzer. `cargo +nightly fuzz run bytes`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| govbus_schema::fuzz::bytes(data));
