//! How a secret is written where it sits: JSON-escaped in JSON, percent-
//! encoded in forms and URLs. Substitution writes these forms; echo masking
//! looks for them.

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;

/// The value as it would look JSON-escaped inside a string.
pub(super) fn json_escaped(v: &str) -> String {
    let quoted = serde_json::to_string(v).unwrap_or_default();
    quoted
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(&quoted)
        .to_owned()
}

/// The value as a form field (`application/x-www-form-urlencoded`).
pub(super) fn percent_encoded(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// Percent-encodes for a URL path or query: everything but RFC 3986 unreserved.
pub(super) fn uri_encoded(v: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(v, SET).to_string()
}

/// Shortest base64 spelling looked for: 16 characters (96 bits of the
/// secret) make a coincidental match in other base64 text negligible.
const MIN_BASE64: usize = 16;

/// The value's spellings inside base64 text (standard and URL-safe
/// alphabets), at each of the three alignments it can start at in the
/// encoded bytes: the characters that only carry bits of the value (the
/// one or two at each end that mix in neighbouring bytes are left out).
/// None when the value is too short for a spelling of [`MIN_BASE64`].
pub(super) fn base64_spellings(v: &str) -> Vec<String> {
    let n = v.len();
    let mut out = Vec::new();
    for a in 0..3 {
        let mut data = vec![0u8; a];
        data.extend_from_slice(v.as_bytes());
        let chars = STANDARD_NO_PAD.encode(&data);
        let (first, end) = ((8 * a).div_ceil(6), 8 * (a + n) / 6);
        if end < first + MIN_BASE64 {
            continue;
        }
        // Base64 is ASCII: the range falls on character boundaries.
        let std = chars[first..end].to_owned();
        let url = std.replace('+', "-").replace('/', "_");
        out.push(std);
        out.push(url);
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_spellings_are_the_value_bits_at_each_alignment() {
        // base64("Hunter2!real-P@ss>>") = SHVudGVyMiFyZWFsLVBAc3M+Pg==:
        // all but the last whole character of the padding.
        // base64("x" + value) = eEh1bnRlcjIhcmVhbC1QQHNzPj4=: from the
        // third character (the second mixes `x` in) to the last whole one.
        // base64("xy" + value) = eHlIdW50ZXIyIXJlYWwtUEBzcz4+
        let s = base64_spellings("Hunter2!real-P@ss>>");
        let want = [
            "SHVudGVyMiFyZWFsLVBAc3M+P",
            "SHVudGVyMiFyZWFsLVBAc3M-P",
            "h1bnRlcjIhcmVhbC1QQHNzPj",
            "IdW50ZXIyIXJlYWwtUEBzcz4+",
            "IdW50ZXIyIXJlYWwtUEBzcz4-",
        ];
        assert_eq!(s.len(), want.len(), "{s:?}");
        for w in want {
            assert!(s.contains(&w.to_owned()), "{w} not in {s:?}");
        }
        assert!(base64_spellings("short").is_empty());
    }
}
