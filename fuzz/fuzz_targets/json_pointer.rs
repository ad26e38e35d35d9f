//! Fuzz target: the catalog's JSON pointer reader (`enforce::catalog::
//! json_lookup`): member names folded as lenient servers fold them,
//! duplicates in any spelling refused, numbers as literal text. Input: the
//! pointer, a newline, the JSON text (seeds in `fuzz/seeds/json_pointer/`).
#![no_main]

use enforce::catalog::{json_lookup, JsonLeaf};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pointer, json) = text.split_once('\n').unwrap_or(("", text));
    let found = json_lookup(json, pointer);
    // Whatever the reader accepts is JSON to serde_json too (read for
    // syntax only: a number like 1e999 is JSON, but not an f64 `Value`).
    if found.is_ok() {
        assert!(
            serde_json::from_str::<serde::de::IgnoredAny>(json).is_ok(),
            "accepted non-JSON {json:?}"
        );
    }
    // A number comes back as literal JSON number text, never reformatted.
    if let Ok(Some(JsonLeaf::Number(n))) = &found {
        assert!(json.contains(n.as_str()), "{n:?} is not in {json:?}");
    }
});
