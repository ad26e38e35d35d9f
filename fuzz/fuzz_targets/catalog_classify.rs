//! Fuzz target: the service catalog's whole reading of a request (path
//! readings, rule match, body format, JSON/form/multipart/query/header
//! fields under every spelling, exact amounts), against a catalog with a rule
//! for each source. Input: `METHOD HOST TARGET`, header lines `name: value`,
//! a blank line, the body (seeds in `fuzz/seeds/catalog_classify/`).
#![no_main]

use std::sync::OnceLock;

use capabilities::Host;
use enforce::catalog::{Catalog, RequestView};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const CATALOG: &str = r#"
max_body_bytes = 4096

[[rule]]
host = "united.com"
method = "POST"
path = "/api/booking/purchase"
type = "payment"
amount = { json = "/payment/total" }
currency = { json = "/currency" }
merchant = { header = "x-merchant" }

[[rule]]
host = "*.shop.example"
path = "/pay/*/now"
type = "payment"
amount = { form = "amount_cents" }
amount_unit = "minor"
currency = { query = "currency" }

[[rule]]
host = "api.mail.example"
path = "/v1/send"
type = "email"
recipients = [{ json = "/to" }, { json = "/cc/0" }, { header = "x-bcc" }]
subject = { json = "/subject" }

[[rule]]
host = "api.mail.example"
path = "/v1/form/**"
type = "email"
recipients = [{ form = "to" }, { query = "cc" }]
subject = { form = "subject" }

[[rule]]
host = "*"
path = "/login"
type = "login"
credential = "site_login"

[[llm_price]]
model = "m"
input_usd_per_mtok = "1.5"
output_usd_per_mtok = "6"
"#;

fn catalog() -> &'static Catalog {
    static CATALOG_ONCE: OnceLock<Catalog> = OnceLock::new();
    CATALOG_ONCE.get_or_init(|| Catalog::from_toml(CATALOG).expect("the fuzz catalog loads"))
}

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let Ok(head) = std::str::from_utf8(head) else {
        return;
    };
    let mut lines = head.split('\n');
    let mut first = lines.next().unwrap_or("").splitn(3, ' ');
    let (Some(method), Some(host), Some(target)) = (first.next(), first.next(), first.next())
    else {
        return;
    };
    let Ok(host) = Host::parse(host) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_str(value.trim()),
            ) {
                headers.append(name, value);
            }
        }
    }
    let view = RequestView {
        method,
        host: &host,
        path_and_query: target,
        headers: &headers,
    };
    let matched = catalog().match_request(&view);
    let whole = matched.classify(&view, Some(body), true);
    // One reading: the same request classifies the same way again.
    assert_eq!(whole, matched.classify(&view, Some(body), true));
    // Without its body (not read, or cut short) a request is still decided.
    let _ = matched.classify(&view, None, false);
    let _ = matched.classify(&view, Some(body), false);
});
