//! A stored secret read back from a host with credentials through channels
//! other than the body's bytes as they stand: a Content-Type that made
//! substitution encode for the wrong syntax, `Range` requests, the status
//! line's reason phrase, a charset in which ASCII is not ASCII bytes. Each
//! test stores the real login at united.com first, through its allowed
//! place.
#![allow(clippy::unwrap_used)]

mod support;

use support::*;

/// A password with characters encoders treat differently (`!`, `@`).
const SECRET: &str = "Hunter2!real-P@ss";

/// Stores the login and checks the upstream got the real value.
async fn store(s: &Session) {
    s.store_login().await;
    let stored = s.mock.seen_for("united.com");
    assert!(String::from_utf8_lossy(&stored[0].body).contains(SECRET));
}

/// Substitution encodes a secret for the media type placement read: a
/// `json` in a parameter of a form's type once chose JSON escaping, which
/// leaves `&` and `=` raw, so the tail of the secret became a field of its
/// own (`note=real-P@ss`), which the upstream may store and show back and
/// no mask recognises (it is not the whole secret).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_secret_is_percent_encoded_whatever_the_type_s_parameters_say() {
    let secret = "Hunter2&note=real-P@ss";
    let s = Session::start(Options {
        secrets: format!(
            "[[secret]]\nname = \"united_login\"\nvalue = \"{secret}\"\nplacement = [\"form:pw\"]\n"
        ),
        ..Options::default()
    })
    .await;
    let login = s.placeholder("united_login");
    let r = s
        .curl(
            "https://united.com/api/auth/login",
            &[
                "-X",
                "POST",
                "-H",
                "content-type: application/x-www-form-urlencoded; profile=json",
                "--data-binary",
                &format!("pw={login}&note=hello"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.mock.seen();
    assert_eq!(seen.len(), 1);
    let fields: Vec<(String, String)> =
        form_urlencoded::parse(&seen[0].body).into_owned().collect();
    assert_eq!(
        fields,
        [
            ("pw".to_owned(), secret.to_owned()),
            ("note".to_owned(), "hello".to_owned())
        ]
    );
}

/// `Range` requests once read a stored secret back a few bytes at a time:
/// each 206 was masked on its own and held no whole secret. Requests to a
/// host with credentials now go without `Range`, so the server sends the
/// whole body, which is masked; and without `Accept-Charset`, so the
/// sandbox cannot ask for a charset whose escapes the mask does not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_secret_is_not_read_back_in_ranges_or_another_charset() {
    let s = Session::start(Options::with_login(SECRET)).await;
    store(&s).await;
    let r = s
        .curl(
            "https://united.com/vault/plain",
            &[
                "-H",
                "range: bytes=0-7",
                "-H",
                "if-range: \"x\"",
                "-H",
                "accept-charset: utf-7",
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!r.body.contains("Hunter2"), "{}", r.body);
    assert!(
        r.body.contains(&s.placeholder("united_login")),
        "{}",
        r.body
    );
    let last = s.mock.seen().pop().unwrap();
    assert_eq!(last.path, "/vault/plain");
    assert!(last.headers.get("range").is_none(), "{:?}", last.headers);
    assert!(last.headers.get("if-range").is_none(), "{:?}", last.headers);
    // Nor does it choose the charset the answer comes in.
    assert!(
        last.headers.get("accept-charset").is_none(),
        "{:?}",
        last.headers
    );
}

/// A custom reason phrase (`HTTP/1.1 200 <text>`, as Python's
/// `send_error(code, message)` writes) was passed to an HTTP/1.1 sandbox
/// as hyper read it, unmasked; the sandbox now gets the standard phrase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_s_reason_phrase_is_not_passed_on() {
    let s = Session::start(Options::with_login(SECRET)).await;
    store(&s).await;
    let out = s
        .curl_output("https://united.com/vault/reason", &["--http1.1"])
        .await
        .stdout;
    let text = String::from_utf8_lossy(&out);
    let status_line = text.lines().next().unwrap_or_default();
    assert_eq!(status_line, "HTTP/1.1 200 OK", "{text}");
}

/// A body in UTF-16 (as its Content-Type says): each byte of the secret
/// is followed by a NUL, which the byte-wise mask does not read; such a
/// response from a host with credentials is refused, not passed unread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_in_a_charset_the_mask_cannot_read_is_refused() {
    let s = Session::start(Options::with_login(SECRET)).await;
    store(&s).await;
    let r = s.curl("https://united.com/vault/utf16", &[]).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(
        r.blocked().unwrap_or_default().contains("response-charset"),
        "{r:?}"
    );
    let out = s
        .curl_output("https://united.com/vault/utf16", &[])
        .await
        .stdout;
    let units: Vec<u16> = out
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    assert!(!String::from_utf16_lossy(&units).contains(SECRET));
}

/// A body in UTF-16 with no charset label (the client sniffs its BOM):
/// each byte of the secret is followed by a NUL, which a byte-wise mask of
/// the secret's ASCII spellings does not read. The secret's UTF-16 (and
/// UTF-32) spellings are looked for too, and replaced by the placeholder
/// spelled the same way, so the text still decodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_unlabelled_utf16_is_masked_in_utf16() {
    let s = Session::start(Options::with_login(SECRET)).await;
    store(&s).await;
    let out = s
        .curl_output("https://united.com/vault/utf16-bare", &[])
        .await
        .stdout;
    let units: Vec<u16> = out
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let text = String::from_utf16_lossy(&units);
    assert!(!text.contains(SECRET), "{text}");
    assert!(text.contains(&s.placeholder("united_login")), "{text}");
}
