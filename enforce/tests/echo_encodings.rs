//! A secret stored at a granted host by one request and read back by the
//! next in the encodings servers write text in: a JSON text quoted in JSON,
//! an HTML fragment in JSON, a JavaScript string literal, percent-encoded
//! as `encodeURIComponent` does, upper-cased, base64. Each test stores the
//! real login at united.com (the catalog's `json:/password` place) and
//! reads it back as the sandbox would, decoding what it gets.
#![allow(clippy::unwrap_used)]

mod support;

use support::*;

/// A password with a character JSON escapes.
const QUOTED: &str = r#"Hunter2!"real-P@ss"#;
/// A password with characters encoders treat differently (`!`, `@`).
const SECRET: &str = "Hunter2!real-P@ss";

/// Stores the login and checks the upstream got the real value; returns
/// the login response.
async fn store(s: &Session) -> Reply {
    let r = s.store_login().await;
    let stored = s.mock.seen_for("united.com");
    assert!(String::from_utf8_lossy(&stored[0].body).contains("Hunter2!"));
    r
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The upstream echoes the request body as a JSON string (httpbin's
/// `data`, an error quoting the request): the secret is JSON-escaped
/// twice. The sandbox parses the response, then the string: the mask reads
/// the text with JSON escapes undone twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_a_json_text_quoted_in_json_is_masked() {
    let s = Session::start(Options::with_login(QUOTED)).await;
    let r = store(&s).await;
    let outer: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let inner: serde_json::Value = serde_json::from_str(outer["body"].as_str().unwrap()).unwrap();
    let password = inner["password"].as_str().unwrap();
    assert_ne!(password, QUOTED, "the sandbox read the secret: {}", r.body);
}

/// Layered escapes: an HTML fragment in JSON as Go's encoding/json writes
/// it (`&` as `\u0026`), so `"` in the password is `\u0026#34;`. The
/// sandbox parses the JSON and renders the HTML: the mask reads the text
/// with JSON escapes undone, then HTML references.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_html_inside_json_as_go_writes_it_is_masked() {
    let s = Session::start(Options::with_login(QUOTED)).await;
    store(&s).await;
    let r = s.curl("https://united.com/vault/go-html-json", &[]).await;
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let rendered = v["html"].as_str().unwrap().replace("&#34;", "\"");
    assert!(
        !rendered.contains(QUOTED),
        "body {} renders as {rendered}",
        r.body
    );
}

/// A JavaScript string literal with `\xHH` escapes (JSON has none): the
/// sandbox's JS engine would read the secret; the mask's JSON reading
/// undoes them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_javascript_hex_escapes_is_masked() {
    let s = Session::start(Options::with_login(SECRET)).await;
    store(&s).await;
    let r = s.curl("https://united.com/vault/js", &[]).await;
    let mut decoded = String::new();
    let mut rest = r.body.as_str();
    while let Some(at) = rest.find("\\x") {
        decoded.push_str(&rest[..at]);
        decoded.push(u8::from_str_radix(&rest[at + 2..at + 4], 16).unwrap() as char);
        rest = &rest[at + 4..];
    }
    decoded.push_str(rest);
    assert!(
        !decoded.contains(SECRET),
        "body {} reads as {decoded}",
        r.body
    );
}

/// Percent-encoding as encodeURIComponent writes it (`!` left raw, `@`
/// and `"` encoded) matches neither the form nor the RFC 3986 spelling,
/// in a redirect's `Location` and a link: the mask reads the text with
/// `%HH` undone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_percent_encoded_as_encode_uri_component_does_is_masked() {
    let s = Session::start(Options::with_login(SECRET)).await;
    store(&s).await;
    let r = s.curl("https://united.com/vault/uri-component", &[]).await;
    let location = r.header("location").unwrap_or_default().to_owned();
    assert!(
        !percent_decode(&location).contains(SECRET),
        "Location: {location}"
    );
    assert!(
        !percent_decode(&r.body).contains(SECRET),
        "body: {}",
        r.body
    );
}

/// Upper-cased by the server (normalising what it stores): the sandbox
/// would get the password up to the case of its letters; the mask matches
/// in any ASCII case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upper_cased_secret_is_masked() {
    let s = Session::start(Options::with_login(SECRET)).await;
    store(&s).await;
    let r = s.curl("https://united.com/vault/upper", &[]).await;
    assert!(!r.body.contains(&SECRET.to_uppercase()), "body: {}", r.body);
}

/// Base64 of the stored text (a token or cookie built from it): the mask
/// looks for the secret's base64 spellings at each alignment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_base64_is_masked() {
    let s = Session::start(Options::with_login(SECRET)).await;
    store(&s).await;
    let r = s.curl("https://united.com/vault/base64", &[]).await;
    let out = tokio::process::Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    let mut out = out;
    out.stdin
        .take()
        .unwrap()
        .write_all(r.body.as_bytes())
        .await
        .unwrap();
    let decoded =
        String::from_utf8_lossy(&out.wait_with_output().await.unwrap().stdout).into_owned();
    assert!(
        !decoded.contains(SECRET),
        "body {} decodes to {decoded}",
        r.body
    );
}
