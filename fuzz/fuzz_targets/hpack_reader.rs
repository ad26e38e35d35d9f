//! Fuzz target: `proxy::fuzzing::hpack` (see there for the property checked).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| proxy::fuzzing::hpack(data));
