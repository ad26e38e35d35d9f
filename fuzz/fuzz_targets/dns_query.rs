//! Fuzz target: `proxy::fuzzing::dns_query` (see there for the property checked).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| proxy::fuzzing::dns_query(data));
