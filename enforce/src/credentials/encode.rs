//! How a secret is written where it sits: JSON-escaped in JSON, percent-
//! encoded in forms and URLs. Substitution writes these forms; echo masking
//! looks for them.

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
