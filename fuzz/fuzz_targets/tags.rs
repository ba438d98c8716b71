//! Fuzz target: `laneway::fuzz::tags`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| laneway::fuzz::tags(data));
