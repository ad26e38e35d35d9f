//! The adversarial suite for how the proxy reads a request (issue 14 §1–§3):
//! attack requests go through the real proxy with the enforcing gate (real
//! curl, real TLS) to a real server-side parser, the Go upstream
//! (`test-support/upstreams/go`: encoding/json into structs, whose member
//! matching is case-insensitive; net/url and mime/multipart forms; PHP's
//! form-name rules; the query and the body merged as frameworks merge
//! them; framework routing styles). For every request the
//! upstream receives, what it read must be what the decision receipt says
//! (amount, currency, recipients, the endpoint it routed to, the path
//! under a web prefix); every other request must be refused, with a receipt
//! naming why, before anything reaches the upstream.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::Value;
use support::{ExternalUpstream, Options, Session, HOSTS};
use test_support::{go_fold_orbits, GoUpstream, TestCa};

const POLICY: &str = r#"
ttl = "30m"

# united.com is open to any web request: a payment the catalog failed to
# see would go through as web, so a misreading shows up as a forward.
[web]
allow = ["google.com/travel/flights", "united.com", "api.mail.example"]
methods = ["GET", "HEAD", "POST"]

[payment]
merchant = "united.com"
currency = "USD"
max_per_charge = "600.00"

[email]
host = "api.mail.example"
recipients = ["traveler@example.com", "agent@example.com"]
"#;

const CATALOG: &str = r#"
[[rule]]
name = "purchase"
host = "united.com"
method = "POST"
path = "/api/booking/purchase"
type = "payment"
amount = { json = "/total" }
currency = { json = "/currency" }
merchant = { value = "united.com" }

[[rule]]
name = "pay"
host = "united.com"
method = "POST"
path = "/pay"
type = "payment"
amount = { form = "amount_cents" }
amount_unit = "minor"
currency = { form = "currency" }
merchant = { value = "united.com" }

[[rule]]
name = "charge"
host = "united.com"
method = "POST"
path = "/charge"
type = "payment"
amount = { query = "amount" }
currency = { query = "currency" }
merchant = { value = "united.com" }

[[rule]]
name = "send"
host = "api.mail.example"
method = "POST"
path = "/v1/send"
type = "email"
recipients = [{ json = "/to" }, { json = "/cc" }, { json = "/bcc" }]
subject = { json = "/subject" }

[[rule]]
name = "send form"
host = "api.mail.example"
method = "POST"
path = "/v1/send-form"
type = "email"
recipients = [{ form = "to" }, { form = "cc" }, { form = "bcc" }]
subject = { form = "subject" }
"#;

const JSON: &str = "content-type: application/json";
const FORM: &str = "content-type: application/x-www-form-urlencoded";
const NO_TYPE: &str = "content-type:";
const BOUNDARY: &str = "b0undary";

fn multipart_type() -> String {
    format!("content-type: multipart/form-data; boundary={BOUNDARY}")
}

/// A multipart body of plain fields.
fn multipart(fields: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (name, value) in fields {
        out.push_str(&format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        ));
    }
    out.push_str(&format!("--{BOUNDARY}--\r\n"));
    out
}

/// What must become of a request.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Forwarded (its facts are then checked against the upstream's reading).
    Forward,
    /// Refused at `stage` with a reason containing `reason`; the upstream
    /// never sees it.
    Block(&'static str, &'static str),
}
use Expect::{Block, Forward};

struct Attack {
    name: &'static str,
    method: &'static str,
    url: String,
    headers: Vec<String>,
    body: Option<Vec<u8>>,
    expect: Expect,
}

fn attack(
    name: &'static str,
    method: &'static str,
    url: &str,
    headers: &[&str],
    body: Option<&str>,
    expect: Expect,
) -> Attack {
    Attack {
        name,
        method,
        url: url.to_owned(),
        headers: headers.iter().map(|h| (*h).to_owned()).collect(),
        body: body.map(|b| b.as_bytes().to_vec()),
        expect,
    }
}

fn post(name: &'static str, url: &str, header: &str, body: &str, expect: Expect) -> Attack {
    attack(name, "POST", url, &[header], Some(body), expect)
}

const PURCHASE: &str = "https://united.com/api/booking/purchase";
const PAY: &str = "https://united.com/pay";
const SEND: &str = "https://api.mail.example/v1/send";
const SEND_FORM: &str = "https://api.mail.example/v1/send-form";
const CHARGE: &str = "https://united.com/charge?amount=5.00&currency=USD";

/// §1: body fields are read in the format the upstream reads.
fn body_formats() -> Vec<Attack> {
    // Valid JSON whose form reading has another total (servers that pick
    // the parser by media type read 900.00).
    let both = r#"{"total":"1.00","currency":"USD","x":"&total=900.00&currency=USD&"}"#;
    let ok = r#"{"total":"5.00","currency":"USD"}"#;
    let mpb = multipart_type();
    let mp = mpb.as_str();
    vec![
        post("json purchase", PURCHASE, JSON, ok, Forward),
        post("json with parameters", PURCHASE, "content-type: Application/JSON; charset=UTF-8", ok, Forward),
        post("+json media type", PURCHASE, "content-type: application/vnd.api+json", ok, Forward),
        post("json body sent as a form", PURCHASE, FORM, both, Block("catalog", "body is application/x-www-form-urlencoded")),
        post("json body with no content type", PURCHASE, NO_TYPE, both, Block("catalog", "no Content-Type")),
        post("json body as text/plain", PURCHASE, "content-type: text/plain", ok, Block("catalog", "not a body format")),
        post("json in utf-16 charset", PURCHASE, "content-type: application/json; charset=utf-16", ok, Block("catalog", "charset")),
        attack("two content types", "POST", PURCHASE, &[JSON, "content-type: application/x-www-form-urlencoded"], Some(both), Block("catalog", "several Content-Type")),
        attack("gzip body", "POST", PURCHASE, &[JSON, "content-encoding: gzip"], Some(ok), Block("catalog", "content-encoded")),
        attack("identity then gzip", "POST", PURCHASE, &[JSON, "content-encoding: identity", "content-encoding: gzip"], Some(ok), Block("catalog", "content-encoded (gzip)")),
        post("form payment", PAY, FORM, "amount_cents=500&currency=USD", Forward),
        post("form payment with charset", PAY, "content-type: application/x-www-form-urlencoded; charset=utf-8", "amount_cents=500&currency=USD", Forward),
        post("multipart payment", PAY, mp, &multipart(&[("amount_cents", "700"), ("currency", "USD")]), Forward),
        // Valid JSON whose form reading has another amount (servers that
        // decode JSON whatever the type, as many Go handlers do, read 50000).
        post("json body typed as a form", PAY, FORM, r#"{"amount_cents":50000,"currency":"USD","x":"&amount_cents=100&currency=USD&"}"#, Block("catalog", "also valid JSON")),
        post("form rule, json body", PAY, JSON, r#"{"amount_cents":500,"currency":"USD"}"#, Block("catalog", "body is JSON")),
        post("json rule, multipart body", PURCHASE, mp, &multipart(&[("total", "5.00"), ("currency", "USD")]), Block("catalog", "body is multipart/form-data")),
        post("multipart with a preamble", PAY, mp, &format!("hello\r\n{}", multipart(&[("amount_cents", "700"), ("currency", "USD")])), Block("catalog", "preamble")),
        post("multipart with LF lines", PAY, mp, &multipart(&[("amount_cents", "700"), ("currency", "USD")]).replace("\r\n", "\n"), Block("catalog", "multipart body")),
        post(
            "multipart amount as a file",
            PAY,
            mp,
            &format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"amount_cents\"; filename=\"a\"\r\n\r\n700\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"currency\"\r\n\r\nUSD\r\n--{BOUNDARY}--\r\n"),
            Block("catalog", "uploaded file"),
        ),
        post("multipart boundary text inside a value", PAY, mp, &multipart(&[("amount_cents", &format!("1\n--{BOUNDARY}")), ("currency", "USD")]), Block("catalog", "boundary")),
    ]
}

/// §2: field names compared as lenient servers compare them; numbers read
/// exactly or refused.
fn spellings_and_numbers() -> Vec<Attack> {
    vec![
        post(
            "json member in another case",
            PURCHASE,
            JSON,
            r#"{"TOTAL":"5.00","Currency":"USD"}"#,
            Forward,
        ),
        post(
            "json member escaped",
            PURCHASE,
            JSON,
            r#"{"\u0074otal":"5.00","currency":"USD"}"#,
            Forward,
        ),
        post(
            "json two spellings",
            PURCHASE,
            JSON,
            r#"{"total":"1.00","TOTAL":"500.00","currency":"USD"}"#,
            Block("catalog", "spelled"),
        ),
        post(
            "json escaped spelling",
            PURCHASE,
            JSON,
            r#"{"total":"1.00","\u0054otal":"500.00","currency":"USD"}"#,
            Block("catalog", "spelled"),
        ),
        post(
            "json exact duplicate",
            PURCHASE,
            JSON,
            r#"{"total":"1.00","total":"500.00","currency":"USD"}"#,
            Block("catalog", "more than once"),
        ),
        post(
            "json Cc alone is a recipient",
            SEND,
            JSON,
            r#"{"to":"traveler@example.com","Cc":"evil@example.net","subject":"hi"}"#,
            Block("token", "evil@example.net"),
        ),
        post(
            "json long s in subject",
            SEND,
            JSON,
            "{\"to\":\"traveler@example.com\",\"\u{17f}ubject\":\"hi\"}",
            Forward,
        ),
        post(
            "json cc in two spellings",
            SEND,
            JSON,
            r#"{"to":"traveler@example.com","cc":"agent@example.com","CC":"evil@example.net","subject":"hi"}"#,
            Block("catalog", "spelled"),
        ),
        // A mail API that writes the subject or an address into a
        // message's header as is sends the second line as a header of its
        // own: a Bcc nobody checked.
        post(
            "json subject with a line break",
            SEND,
            JSON,
            r#"{"to":"traveler@example.com","subject":"hi\r\nBcc: evil@example.net"}"#,
            Block("catalog", "line break"),
        ),
        post(
            "json recipient with a line break",
            SEND,
            JSON,
            r#"{"to":"traveler@example.com\nBcc: evil@example.net","subject":"hi"}"#,
            Block("catalog", "line break"),
        ),
        post(
            "json list recipients",
            SEND,
            JSON,
            r#"{"to":["traveler@example.com","agent@example.com"],"subject":"hi"}"#,
            Forward,
        ),
        post(
            "form two spellings",
            PAY,
            FORM,
            "amount_cents=100&Amount_Cents=50000&currency=USD",
            Block("catalog", "spelled"),
        ),
        post(
            "form duplicate",
            PAY,
            FORM,
            "amount_cents=100&amount_cents=50000&currency=USD",
            Block("catalog", "more than once"),
        ),
        post(
            "form php dot spelling alone",
            PAY,
            FORM,
            "amount.cents=50000&currency=USD",
            Forward,
        ),
        post(
            "form php dot beside the name",
            PAY,
            FORM,
            "amount_cents=100&amount.cents=50000&currency=USD",
            Block("catalog", "spelled"),
        ),
        post(
            "form php space spelling",
            PAY,
            FORM,
            "amount+cents=100&amount_cents=50000&currency=USD",
            Block("catalog", "spelled"),
        ),
        post(
            "form percent-encoded name",
            PAY,
            FORM,
            "amount%5Fcents=500&currency=USD",
            Forward,
        ),
        post(
            "form list where one value",
            PAY,
            FORM,
            "amount_cents[]=500&currency=USD",
            Block("catalog", "list"),
        ),
        post(
            "form structure",
            PAY,
            FORM,
            "amount_cents[x]=500&currency=USD",
            Block("catalog", "structure"),
        ),
        post(
            "form semicolon separator",
            PAY,
            FORM,
            "amount_cents=100;amount_cents=50000&currency=USD",
            Block("catalog", "';'"),
        ),
        post(
            "form bad escape",
            PAY,
            FORM,
            "amount_cents=%zz&currency=USD",
            Block("catalog", "percent-escape"),
        ),
        post(
            "multipart two spellings",
            PAY,
            &multipart_type(),
            &multipart(&[
                ("amount_cents", "100"),
                ("Amount.Cents", "50000"),
                ("currency", "USD"),
            ]),
            Block("catalog", "spelled"),
        ),
        post(
            "form recipients as list items",
            SEND_FORM,
            FORM,
            "to[]=traveler@example.com&to[]=agent@example.com&subject=hi",
            Forward,
        ),
        post(
            "form recipients list with a stranger",
            SEND_FORM,
            FORM,
            "to[]=traveler@example.com&to[1]=evil@example.net&subject=hi",
            Block("token", "evil@example.net"),
        ),
        post(
            "form recipient plain and list",
            SEND_FORM,
            FORM,
            "to=traveler@example.com&to[]=evil@example.net&subject=hi",
            Block("catalog", "spelled"),
        ),
        post(
            "form recipient in another case",
            SEND_FORM,
            FORM,
            "to=traveler@example.com&CC=evil@example.net&subject=hi",
            Block("token", "evil@example.net"),
        ),
        post(
            "json number with exponent",
            PURCHASE,
            JSON,
            r#"{"total":1.5e2,"currency":"USD"}"#,
            Forward,
        ),
        post(
            "json amount past float precision",
            PURCHASE,
            JSON,
            r#"{"total":487.10000000000000001,"currency":"USD"}"#,
            Block("catalog", "not an exact"),
        ),
        post(
            "json amount with plus",
            PURCHASE,
            JSON,
            r#"{"total":"+5.00","currency":"USD"}"#,
            Block("catalog", "not an exact"),
        ),
        post(
            "json negative zero",
            PURCHASE,
            JSON,
            r#"{"total":-0,"currency":"USD"}"#,
            Block("catalog", "not an exact"),
        ),
        post(
            "json hex amount",
            PURCHASE,
            JSON,
            r#"{"total":"0x1p4","currency":"USD"}"#,
            Block("catalog", "not an exact"),
        ),
        post(
            "json huge amount",
            PURCHASE,
            JSON,
            r#"{"total":"100000000000000000000000.00","currency":"USD"}"#,
            Block("catalog", "not an exact"),
        ),
        post(
            "json amount in a list",
            PURCHASE,
            JSON,
            r#"{"total":["5.00"],"currency":"USD"}"#,
            Block("catalog", "array"),
        ),
        post(
            "json currency in two spellings",
            PURCHASE,
            JSON,
            r#"{"total":"5.00","currency":"USD","Currency":"EUR"}"#,
            Block("catalog", "spelled"),
        ),
    ]
}

/// A field read from the body must not be named in the query, and one read
/// from the query not in the body: servers that hand a handler both as one
/// set of parameters (the upstream's `go_form_value`, `query_first` and
/// `body_first` readings) may act on the other copy.
fn query_and_body() -> Vec<Attack> {
    let ok = r#"{"total":"5.00","currency":"USD"}"#;
    let mail = r#"{"to":"traveler@example.com","subject":"hi"}"#;
    let mpb = multipart_type();
    let mp = mpb.as_str();
    let in_query = "the query also names field";
    let in_body = "the body also names field query amount";
    vec![
        post("query payment", CHARGE, FORM, "note=x", Forward),
        post(
            "json purchase beside an unrelated query",
            &format!("{PURCHASE}?ref=abc"),
            JSON,
            ok,
            Forward,
        ),
        post(
            "form amount also in the query",
            &format!("{PAY}?amount_cents=50000"),
            FORM,
            "amount_cents=100&currency=USD",
            Block("catalog", in_query),
        ),
        post(
            "multipart amount also in the query",
            &format!("{PAY}?Amount.Cents=50000"),
            mp,
            &multipart(&[("amount_cents", "700"), ("currency", "USD")]),
            Block("catalog", in_query),
        ),
        post(
            "json amount also in the query",
            &format!("{PURCHASE}?total=900.00"),
            JSON,
            ok,
            Block("catalog", in_query),
        ),
        post(
            "form recipient only in the query",
            &format!("{SEND_FORM}?bcc=evil@example.net"),
            FORM,
            "to=traveler@example.com&subject=hi",
            Block("catalog", in_query),
        ),
        post(
            "json recipient only in the query",
            &format!("{SEND}?bcc=evil@example.net"),
            JSON,
            mail,
            Block("catalog", in_query),
        ),
        post(
            "query amount also in the form body",
            CHARGE,
            FORM,
            "amount=500.00",
            Block("catalog", in_body),
        ),
        post(
            "query amount also in the json body",
            CHARGE,
            JSON,
            r#"{"Amount":"500.00"}"#,
            Block("catalog", in_body),
        ),
        post(
            "query amount also in the multipart body",
            CHARGE,
            mp,
            &multipart(&[("amount", "500.00")]),
            Block("catalog", in_body),
        ),
        post(
            "query amount in an untyped body",
            CHARGE,
            NO_TYPE,
            "amount=500.00",
            Block("catalog", in_body),
        ),
        // PHP's $_REQUEST (cookies last, without a php.ini) and ASP.NET's
        // Request[] read cookies with the query and the form.
        attack(
            "form amount also in a cookie",
            "POST",
            PAY,
            &[FORM, "cookie: session=1; amount_cents=50000"],
            Some("amount_cents=100&currency=USD"),
            Block("catalog", "a cookie also names field form amount_cents"),
        ),
        attack(
            "form recipient only in a cookie",
            "POST",
            SEND_FORM,
            &[FORM, "cookie: bcc=evil%40example.net"],
            Some("to=traveler@example.com&subject=hi"),
            Block("catalog", "a cookie also names field form bcc"),
        ),
        attack(
            "query amount also in a cookie",
            "POST",
            CHARGE,
            &["cookie: Amount=500.00"],
            None,
            Block("catalog", "a cookie also names field query amount"),
        ),
        attack(
            "unrelated cookie",
            "POST",
            PAY,
            &[FORM, "cookie: session=1"],
            Some("amount_cents=100&currency=USD"),
            Forward,
        ),
    ]
}

/// A web page that takes `POST`s: no catalog rule reads it.
const ACCOUNT: &str = "https://united.com/profile/trips/1";

fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(body).unwrap();
    z.finish().unwrap()
}

fn zlib(body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(body).unwrap();
    z.finish().unwrap()
}

fn brotli(body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(body).unwrap();
    }
    out
}

/// A `POST` with a compressed body and the headers saying so.
fn encoded(
    name: &'static str,
    header: &str,
    coding: &str,
    body: Vec<u8>,
    expect: Expect,
) -> Attack {
    Attack {
        name,
        method: "POST",
        url: ACCOUNT.to_owned(),
        headers: vec![header.to_owned(), format!("content-encoding: {coding}")],
        body: Some(body),
        expect,
    }
}

/// A `_method` naming another method, wherever a framework that honours
/// it reads it from (the upstream's `overrides`), is refused: the receipt
/// records the request line's method.
fn method_overrides() -> Vec<Attack> {
    let instead = Block("catalog", "instead of POST");
    vec![
        post(
            "form override",
            ACCOUNT,
            FORM,
            "note=x&_method=DELETE",
            instead,
        ),
        post(
            "json override",
            ACCOUNT,
            JSON,
            r#"{"_method":"DELETE"}"#,
            instead,
        ),
        // Express's body-parser decodes gzip and deflate bodies before
        // method-override reads `_method`; so do servers' input filters.
        encoded(
            "gzip form override",
            FORM,
            "gzip",
            gzip(b"note=x&_method=DELETE"),
            instead,
        ),
        encoded(
            "deflate json override",
            JSON,
            "deflate",
            zlib(br#"{"_method":"DELETE"}"#),
            instead,
        ),
        encoded(
            "br form override",
            FORM,
            "br",
            brotli(b"_method=PUT"),
            instead,
        ),
        encoded(
            "gzip then br override",
            FORM,
            "gzip, br",
            brotli(&gzip(b"_method=PUT")),
            instead,
        ),
        encoded(
            "gzip json upload",
            JSON,
            "gzip",
            gzip(br#"{"note":"x","method":"card"}"#),
            Forward,
        ),
        encoded(
            "gzip form naming post",
            FORM,
            "gzip",
            gzip(b"_method=post&note=x"),
            Forward,
        ),
        encoded(
            "gzip image upload",
            "content-type: image/png",
            "gzip",
            b"not gzip".to_vec(),
            Forward,
        ),
        encoded(
            "unknown coding",
            FORM,
            "compress",
            b"_method=DELETE".to_vec(),
            Block("catalog", "the compress-encoded body may ask"),
        ),
        encoded(
            "corrupt gzip",
            FORM,
            "gzip",
            b"_method=DELETE".to_vec(),
            Block("catalog", "the gzip-encoded body may ask"),
        ),
    ]
}

/// A `_method` past the bytes the gate reads first (`max_body_bytes`,
/// 64 KiB), in the body or in what it decodes to: such a body is read (and
/// decoded) whole, up to `max_whole_body_bytes`, and the override refused;
/// a bomb decoding past that cap is refused where its rest could name one.
fn overrides_past_the_cap() -> Vec<Attack> {
    // Well past the first cap: the gate may buffer a little more than it.
    let pad = "a".repeat(512 * 1024);
    let in_json = Block(
        "catalog",
        "run DELETE instead of POST (_method in the JSON body)",
    );
    let in_form = Block(
        "catalog",
        "run DELETE instead of POST (_method in the form body)",
    );
    let bomb = gzip(format!("note={}&_method=DELETE", "a".repeat(1 << 20)).as_bytes());
    let past_whole = gzip(format!("note={}&_method=DELETE", "a".repeat(17 << 20)).as_bytes());
    vec![
        post(
            "json override past the cap",
            ACCOUNT,
            JSON,
            &format!(r#"{{"note":"{pad}","_method":"DELETE"}}"#),
            in_json,
        ),
        post(
            "form override past the cap",
            ACCOUNT,
            FORM,
            &format!("note={pad}&_method=DELETE"),
            in_form,
        ),
        post(
            "untyped override past the cap",
            ACCOUNT,
            NO_TYPE,
            &format!("note={pad}&_method=DELETE"),
            in_form,
        ),
        encoded("gzip bomb with an override", FORM, "gzip", bomb, in_form),
        encoded(
            "gzip bomb past the whole-body cap",
            FORM,
            "gzip",
            past_whole,
            Block(
                "catalog",
                "the body past the 16777216-byte cap (max_whole_body_bytes)",
            ),
        ),
        post(
            "json array past the cap",
            ACCOUNT,
            JSON,
            &format!(r#"["{pad}","_method"]"#),
            Forward,
        ),
        post(
            "upload past the cap",
            ACCOUNT,
            "content-type: application/octet-stream",
            &format!("note={pad}&_method=DELETE"),
            Forward,
        ),
        post(
            "json object past the cap",
            ACCOUNT,
            JSON,
            &format!(r#"{{"note":"{pad}","method":"card"}}"#),
            Forward,
        ),
    ]
}

/// Names some server reads as a rule's field, another as something else
/// (the upstream's `php_*`, `rack_*` and `qs_*` readings): PHP cuts a name
/// at a NUL; Rack 2 drops brackets before a name and ends it at `]`; qs
/// (Express) reads `[name]` as `name`. Beside the field's own spelling
/// they are two spellings; alone, the value some server reads.
fn bracket_and_nul_spellings() -> Vec<Attack> {
    let spelled = Block("catalog", "spelled");
    vec![
        post(
            "form bracketed name beside the name",
            PAY,
            FORM,
            "amount_cents=100&[amount_cents]=50000&currency=USD",
            spelled,
        ),
        post(
            "form bracketed name alone",
            PAY,
            FORM,
            "[amount_cents]=500&currency=USD",
            Forward,
        ),
        post(
            "form nul-cut name beside the name",
            PAY,
            FORM,
            "amount_cents=100&amount_cents%00x=50000&currency=USD",
            spelled,
        ),
        post(
            "form closing bracket beside the name",
            PAY,
            FORM,
            "amount_cents=100&amount_cents]=50000&currency=USD",
            spelled,
        ),
        post(
            "form leading bracket beside the name",
            PAY,
            FORM,
            "amount_cents=100&]amount_cents=50000&currency=USD",
            spelled,
        ),
        post(
            "form bracketed recipient",
            SEND_FORM,
            FORM,
            "to=traveler@example.com&[bcc]=evil@example.net&subject=hi",
            Block("token", "evil@example.net"),
        ),
        post(
            "query bracketed name beside the name",
            &format!("{CHARGE}&[amount]=900.00"),
            FORM,
            "note=x",
            spelled,
        ),
        post(
            "form amount bracketed in the query",
            &format!("{PAY}?[amount_cents]=50000"),
            FORM,
            "amount_cents=100&currency=USD",
            Block("catalog", "the query also names field"),
        ),
        post(
            "bracketed override",
            ACCOUNT,
            FORM,
            "note=x&[_method]=DELETE",
            Block("catalog", "instead of POST"),
        ),
        post(
            "nul-cut override",
            ACCOUNT,
            FORM,
            "note=x&_method%00=DELETE",
            Block("catalog", "instead of POST"),
        ),
    ]
}

/// Spring's data binder reads `!name` as `name` where no `name` is sent
/// (the upstream's `spring_*` readings): beside a spelling only lenient
/// servers fold into the field, Spring reads the `!` one.
fn spring_default_prefix() -> Vec<Attack> {
    vec![
        post(
            "form spring default beside a folded spelling",
            PAY,
            FORM,
            "Amount_Cents=100&!amount_cents=50000&currency=USD",
            Block("catalog", "spelled"),
        ),
        post(
            "form spring default alone",
            PAY,
            FORM,
            "!amount_cents=500&currency=USD",
            Forward,
        ),
        post(
            "query spring default beside a folded spelling",
            &format!("{CHARGE}&!amount=900.00").replace("amount=5.00", "AMOUNT=5.00"),
            FORM,
            "note=x",
            Block("catalog", "spelled"),
        ),
    ]
}

/// ASP.NET Core binds a model parameter named `model` from `model.name`
/// (or `model[name]`) when the request carries any such name, and then
/// ignores the bare `name` (the upstream's `aspnet_*` readings, for a
/// parameter named `model`).
fn model_prefixes() -> Vec<Attack> {
    vec![
        post(
            "form model prefix beside the name",
            PAY,
            FORM,
            "amount_cents=100&currency=USD&model.amount_cents=50000&model.currency=USD",
            Block("catalog", "spelled"),
        ),
        post(
            "form jquery model alone",
            PAY,
            FORM,
            "model[amount_cents]=500&model[currency]=USD",
            Forward,
        ),
        post(
            "query model prefix beside the name",
            &format!("{CHARGE}&model.amount=900.00&model.currency=USD"),
            FORM,
            "note=x",
            Block("catalog", "spelled"),
        ),
        post(
            "form model recipient",
            SEND_FORM,
            FORM,
            "to=traveler@example.com&subject=hi&model.bcc=evil@example.net",
            Block("token", "evil@example.net"),
        ),
    ]
}

/// §3: paths matched as frameworks route them.
fn paths() -> Vec<Attack> {
    let ok = r#"{"total":"5.00","currency":"USD"}"#;
    let purchase = |name, path: &str, expect| {
        post(name, &format!("https://united.com{path}"), JSON, ok, expect)
    };
    let get = |name, path: &str, expect| {
        attack(
            name,
            "GET",
            &format!("https://google.com{path}"),
            &[],
            None,
            expect,
        )
    };
    vec![
        purchase("format suffix", "/api/booking/purchase.json", Forward),
        purchase("xml suffix", "/api/booking/purchase.xml", Forward),
        purchase(
            "matrix parameter",
            "/api/booking/purchase;jsessionid=1",
            Forward,
        ),
        purchase(
            "matrix parameter mid-path",
            "/api/booking;v=2/purchase",
            Forward,
        ),
        purchase("case", "/API/Booking/PURCHASE", Forward),
        purchase("slashes", "//api//booking/purchase/", Forward),
        purchase("percent-encoded letter", "/api/booking/%70urchase", Forward),
        purchase("encoded semicolon", "/api/booking/purchase%3Bx", Forward),
        purchase(
            "encoded slash",
            "/api/booking%2Fpurchase",
            Block("token", "encoded slash"),
        ),
        purchase(
            "dot-dot-semicolon",
            "/api/x/..;/booking/purchase",
            Block("catalog", "dot segment"),
        ),
        purchase(
            "semicolon-dot-dot",
            "/api/x/;../booking/purchase",
            Block("catalog", "dot segment"),
        ),
        purchase(
            "encoded dot segment",
            "/api/x/%2e%2e/booking/purchase",
            Block("catalog", "dot segment"),
        ),
        purchase(
            "double-encoded dot segment",
            "/api/x/%252e%252e/booking/purchase",
            Block("catalog", "dot segment"),
        ),
        purchase(
            "backslash",
            "/api/x\\..\\booking/purchase",
            Block("catalog", "backslash"),
        ),
        purchase(
            "overlong dot",
            "/api/x/%c0%ae%c0%ae/booking/purchase",
            Block("catalog", "UTF-8"),
        ),
        get("prefix itself", "/travel/flights", Forward),
        get("prefix with suffix", "/travel/flights.json", Forward),
        get(
            "prefix with matrix parameter",
            "/travel;jsessionid=1/flights/search",
            Forward,
        ),
        get("prefix with slashes", "//travel//flights//search/", Forward),
        get(
            "prefix percent-encoded",
            "/travel/%66lights/search",
            Forward,
        ),
        get(
            "beside the prefix",
            "/travel/flightsx",
            Block("token", "no capability"),
        ),
        get(
            "encoded semicolon after the prefix",
            "/travel/flights%3B/../admin",
            Block("catalog", "dot segment"),
        ),
        get(
            "escape by dot-dot-semicolon",
            "/travel/flights/..;/admin",
            Block("catalog", "dot segment"),
        ),
        get(
            "escape by encoded dots",
            "/travel/flights/%2e%2e/admin",
            Block("catalog", "dot segment"),
        ),
        get(
            "escape by fullwidth dots",
            "/travel/flights/%ef%bc%8e%ef%bc%8e/admin",
            Block("catalog", "look-alike"),
        ),
        get(
            "escape by double-encoded slash",
            "/travel/flights%252F..%252Fadmin",
            Block("catalog", "dot segment"),
        ),
    ]
}

/// The last decision receipt in the file.
fn last_decision(s: &Session) -> (usize, Value) {
    let decisions: Vec<Value> = s
        .receipts_text()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["kind"] == "decision")
        .collect();
    (
        decisions.len(),
        decisions.last().cloned().unwrap_or(Value::Null),
    )
}

fn text_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|s| s.trim().to_lowercase())
                .collect()
        })
        .unwrap_or_default()
}

/// `path` is under the web prefix `/travel/flights` (or is it with a
/// format suffix).
fn under_prefix(path: &str) -> bool {
    let base = path.strip_suffix(".json").unwrap_or(path);
    base == "/travel/flights" || path.starts_with("/travel/flights/")
}

/// What the upstream read must be what the receipt says.
fn check_facts(name: &str, action: &Value, reading: &Value) {
    let kind = action["type"].as_str().unwrap();
    // The method the receipt records is the one every emulated framework
    // runs: none of them honoured an override naming another.
    assert_eq!(
        reading["overrides"],
        serde_json::json!({}),
        "{name}: the receipt says {} but {} ran another method",
        action["method"],
        reading["overrides"]
    );
    // Every routing style: an endpoint the catalog names is that kind.
    for (style, route) in reading["routes"].as_object().unwrap() {
        let want = match route["endpoint"].as_str().unwrap_or("") {
            "purchase" | "pay" | "charge" => Some("payment"),
            "send" | "sendform" => Some("email"),
            _ => None,
        };
        if let Some(want) = want {
            assert_eq!(
                kind, want,
                "{name}: {style} routed to {route} but the receipt says {action}"
            );
        }
        // Go's ServeMux knows no matrix parameters: there a `;` is part
        // of a segment name no route under the prefix serves, so only the
        // styles that route them are asked.
        let raw_has_params = reading["target"].as_str().unwrap().contains(';');
        if action["host"] == "google.com" && !(style == "go_servemux" && raw_has_params) {
            let path = route["path"].as_str().unwrap();
            assert!(
                under_prefix(path),
                "{name}: {style} routed to {path}, outside the web prefix"
            );
        }
    }
    let path = action["path"].as_str().unwrap().to_lowercase();
    let (amount_field, from_query) = if path.contains("purchase") {
        ("total", false)
    } else if path.contains("charge") {
        ("amount", true)
    } else {
        ("amount_cents", false)
    };
    for (which, facts) in reading["readings"].as_object().unwrap() {
        // The query alone is read only where the rule reads it; the
        // merged readings (query and body together) always are.
        if which.ends_with("_query") && !from_query {
            continue;
        }
        match kind {
            "payment" => {
                if facts.get(amount_field).is_some() {
                    let cents = &facts[format!("{amount_field}_in_cents")];
                    assert_eq!(
                        cents.as_str().and_then(|c| c.parse::<u64>().ok()),
                        action["amount_cents"].as_u64(),
                        "{name}: {which} read {facts} but the receipt says {action}"
                    );
                }
                if let Some(c) = facts["currency"].as_str() {
                    assert_eq!(
                        Some(c.trim().to_uppercase().as_str()),
                        action["currency"].as_str(),
                        "{name}: {which} read {facts}"
                    );
                }
            }
            "email" => {
                let receipt = text_list(&action["recipients"]);
                for field in ["to", "cc", "bcc"] {
                    for r in text_list(&facts[field]) {
                        assert!(
                            receipt.contains(&r),
                            "{name}: {which} sends to {r}, the receipt lists {receipt:?}"
                        );
                    }
                }
                if let Some(subject) = facts["subject"].as_str() {
                    assert_eq!(Some(subject), action["subject"].as_str(), "{name}: {which}");
                }
            }
            _ => {}
        }
    }
}

async fn run(s: &Session, up: &GoUpstream, a: &Attack) {
    let before = up.requests();
    let (decisions_before, _) = last_decision(s);
    // `--globoff`: brackets in a query are the request's, not curl's ranges.
    let mut args: Vec<String> = vec![
        "--path-as-is".into(),
        "--globoff".into(),
        "-X".into(),
        a.method.into(),
    ];
    for h in &a.headers {
        args.push("-H".into());
        args.push(h.clone());
    }
    // From a file: bodies may be binary (compressed) or past the length
    // of one argument.
    let dir = tempfile::tempdir().unwrap();
    if let Some(body) = &a.body {
        let path = dir.path().join("body");
        std::fs::write(&path, body).unwrap();
        args.push("--data-binary".into());
        args.push(format!("@{}", path.display()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let reply = s.curl(&a.url, &args).await;
    let (decisions_after, decision) = last_decision(s);
    assert_eq!(
        decisions_after,
        decisions_before + 1,
        "{}: one decision receipt: {reply:?}",
        a.name
    );
    let forwarded = up.requests() > before;
    let verdict = decision["decision"]["decision"].as_str().unwrap();
    if forwarded {
        assert_eq!(verdict, "allow", "{}", a.name);
        check_facts(a.name, &decision["action"], up.readings().last().unwrap());
    }
    match a.expect {
        Forward => {
            assert!(forwarded, "{}: not forwarded: {decision}", a.name);
            assert_eq!(reply.status, 200, "{}: {reply:?}", a.name);
        }
        Block(stage, reason) => {
            assert!(!forwarded, "{}: reached the upstream: {decision}", a.name);
            // A body far past the cap is still being sent when the
            // refusal comes: over HTTP/2 the stream is then reset instead.
            let cut_short =
                reply.status == 0 && a.body.as_ref().is_some_and(|b| b.len() > 128 * 1024);
            assert!(reply.status == 403 || cut_short, "{}: {reply:?}", a.name);
            assert_eq!(verdict, "block", "{}", a.name);
            assert_eq!(
                decision["decision"]["stage"], stage,
                "{}: {decision}",
                a.name
            );
            let why = decision["decision"]["reason"].as_str().unwrap();
            assert!(why.contains(reason), "{}: {why}", a.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_reads_what_the_receipt_says() {
    let ca = TestCa::new("adversarial upstream");
    let up = GoUpstream::start(&ca, HOSTS);
    let s = Session::start(Options {
        policy: POLICY.to_owned(),
        catalog: CATALOG.to_owned(),
        upstream: Some(ExternalUpstream {
            addr: up.addr,
            ca_pem: ca.cert_pem().to_owned(),
        }),
        ..Options::default()
    })
    .await;
    let attacks: Vec<Attack> = body_formats()
        .into_iter()
        .chain(spellings_and_numbers())
        .chain(query_and_body())
        .chain(paths())
        .chain(method_overrides())
        .chain(overrides_past_the_cap())
        .chain(bracket_and_nul_spellings())
        .chain(spring_default_prefix())
        .chain(model_prefixes())
        .chain(python_lax_readings())
        .collect();
    for a in &attacks {
        run(&s, &up, a).await;
    }
    let forwarded = attacks
        .iter()
        .filter(|a| matches!(a.expect, Forward))
        .count();
    assert_eq!(up.requests(), forwarded);
    let chain = s.finish_and_verify();
    assert!(s.rederive(&chain) > 0);
}

/// Python's readers (checked against `json.loads`, `urllib.parse`,
/// werkzeug and pydantic v2's lax coercion into `int`/`Decimal`, which
/// FastAPI validates bodies with): pydantic reads `" 5000 "`, `"5_000"`,
/// `"+5000"`, `"5000."`, full-width or Arabic-Indic digits as numbers,
/// `true` as `1`; `json.loads` reads `NaN`, `Infinity` and `1e400` (as
/// inf), and a body with a UTF-8 BOM or in UTF-16 when given bytes. The
/// receipt cannot say those amounts exactly, so each is refused.
fn python_lax_readings() -> Vec<Attack> {
    let amount = |name: &'static str, total: &str| {
        post(
            name,
            PURCHASE,
            JSON,
            &format!(r#"{{"total":{total},"currency":"USD"}}"#),
            Block("catalog", "not an exact"),
        )
    };
    let form = |name: &'static str, cents: &str, reason: &'static str| {
        post(
            name,
            PAY,
            FORM,
            &format!("amount_cents={cents}&currency=USD"),
            Block("catalog", reason),
        )
    };
    let mut utf16 = vec![0xff, 0xfe];
    utf16.extend(
        r#"{"total":"5000.00","currency":"USD"}"#
            .encode_utf16()
            .flat_map(u16::to_le_bytes),
    );
    vec![
        amount("pydantic: spaces around the digits", r#"" 500.00 ""#),
        amount("pydantic: a trailing newline", r#""500.00\n""#),
        amount("pydantic: underscores", r#""50_000""#),
        amount("pydantic: plus sign", r#""+500""#),
        amount("pydantic: trailing dot", r#""500.""#),
        amount("pydantic: leading dot", r#"".5""#),
        amount(
            "pydantic: full-width digits",
            "\"\u{ff15}\u{ff10}\u{ff10}\"",
        ),
        amount("pydantic: Arabic-Indic digits", "\"\u{665}\u{660}\u{660}\""),
        amount("Decimal: a huge exponent", r#""1e400""#),
        amount("json.loads: a huge exponent reads as inf", "1e400"),
        post(
            "pydantic: true is 1",
            PURCHASE,
            JSON,
            r#"{"total":true,"currency":"USD"}"#,
            Block("catalog", "not a string, number or array"),
        ),
        post(
            "json.loads: NaN",
            PURCHASE,
            JSON,
            r#"{"total":NaN,"currency":"USD"}"#,
            Block("catalog", "not valid JSON"),
        ),
        post(
            "json.loads: Infinity",
            PURCHASE,
            JSON,
            r#"{"total":Infinity,"currency":"USD"}"#,
            Block("catalog", "not valid JSON"),
        ),
        post(
            "json.loads: a UTF-8 BOM",
            PURCHASE,
            JSON,
            "\u{feff}{\"total\":\"5000.00\",\"currency\":\"USD\"}",
            Block("catalog", "not valid JSON"),
        ),
        Attack {
            name: "json.loads: UTF-16 bytes",
            method: "POST",
            url: PURCHASE.to_owned(),
            headers: vec![JSON.to_owned()],
            body: Some(utf16),
            expect: Block("catalog", "not valid UTF-8"),
        },
        // A pydantic model bound by alias and by name (`to_camel`,
        // `populate_by_name`) reads `amountCents` as `amount_cents` and
        // prefers it: the receipt said 100 where FastAPI charged 50000.
        post(
            "pydantic: the camelCase alias beside the name",
            PAY,
            FORM,
            "amount_cents=100&amountCents=50000&currency=USD",
            Block("catalog", "spelled"),
        ),
        post(
            "pydantic: the camelCase alias in a multipart body",
            PAY,
            &multipart_type(),
            &multipart(&[
                ("amountCents", "50000"),
                ("amount_cents", "100"),
                ("currency", "USD"),
            ]),
            Block("catalog", "spelled"),
        ),
        form(
            "werkzeug: an invalid UTF-8 escape kept as text",
            "500%ff",
            "not UTF-8",
        ),
        form(
            "pydantic: a percent-encoded space",
            "%20500",
            "not an exact",
        ),
        form(
            "pydantic: a zero-width space",
            "500%E2%80%8B",
            "not an exact",
        ),
    ]
}

/// Every pair of characters Go's `encoding/json` matches (its Unicode
/// simple folding orbits) reads as the same member name here.
#[test]
fn member_names_fold_as_go_folds_them() {
    let orbits = go_fold_orbits();
    assert!(orbits.len() > 1000, "{}", orbits.len());
    let mut pairs = 0;
    for orbit in &orbits {
        for a in orbit {
            for b in orbit {
                let body = serde_json::json!({ format!("x{a}") : "v" }).to_string();
                let found = enforce::catalog::json_lookup(&body, &format!("/x{b}"));
                assert_eq!(
                    found,
                    Ok(Some(enforce::catalog::JsonLeaf::String("v".into()))),
                    "{a:?} (U+{:04X}) and {b:?} (U+{:04X})",
                    *a as u32,
                    *b as u32
                );
                pairs += 1;
            }
        }
    }
    assert!(pairs > 2 * orbits.len());
}
