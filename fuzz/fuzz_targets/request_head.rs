//! Fuzz target: `laneway::fuzz::request_head`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| laneway::fuzz::request_head(data));
