#![no_main]
//! See `src/fuzz.rs` for what this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| enigma::fuzz::token(data));
