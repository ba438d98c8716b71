//! Fuzz target: `laneway::fuzz::chunked`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| laneway::fuzz::chunked(data));
