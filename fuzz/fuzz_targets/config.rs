//! Fuzz target: `laneway::fuzz::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| laneway::fuzz::config(data));
