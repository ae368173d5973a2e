//! `govbus_schema::fuzz::writer` under libFuzzer. `cargo +nightly fuzz run writer`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| govbus_schema::fuzz::writer(data));
