//! Fuzz target: `proxy::fuzzing::h1_guard` (see there for the property checked).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| proxy::fuzzing::h1_guard(data));
