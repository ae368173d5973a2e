//! `govbus_schema::fuzz::json` under libFuzzer. `cargo +nightly fuzz run json`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| govbus_schema::fuzz::json(data));
