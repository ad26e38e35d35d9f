//! A method override (an `X-HTTP-Method-Override`, `X-HTTP-Method` or
//! `X-Method-Override` header, a `_method` field in the query, a form body
//! or a JSON body) naming another method than the request's is refused at the
//! catalog stage: frameworks that honour it (Rails, Laravel, Symfony,
//! Express's method-override, ASP.NET Core, Google APIs on a `POST`; Slim
//! a header on any method) run the other method, others do not, and the
//! token must decide the method the server runs. The upstream receives
//! nothing. An override naming the request's own method changes nothing.
#![allow(clippy::unwrap_used)]

mod support;

use support::*;

/// The refusal's wording, for a request line method and the one asked for.
fn asks(requested: &str, method: &str, via: &str) -> String {
    format!(
        "the request asks the server to run {requested} instead of {method} ({via}); openclaw \
         decides the method the server runs, and cannot know whether this server honours \
         the override"
    )
}

/// The web grant is read-only (`GET`, `HEAD`): a `GET` a server runs as a
/// `DELETE` (Slim honours the header on any method) is not a `GET`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_overridden_to_delete_is_refused() {
    let s = Session::start(Options::default()).await;
    let r = s
        .curl(
            "https://united.com/profile/trips/1",
            &["-H", "X-HTTP-Method-Override: DELETE"],
        )
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    let reason = r.blocked().unwrap();
    assert!(
        reason.contains(&asks("DELETE", "GET", "X-HTTP-Method-Override")),
        "{reason}"
    );
    assert!(s.mock.seen().is_empty(), "{:?}", s.mock.seen());
    let chain = s.finish_and_verify();
    let d = decisions(&chain);
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].1.as_str(), d[0].2.as_str()), ("block", "catalog"));
    assert_eq!(d[0].4["method"], "GET");
    assert!(d[0].3.contains("instead of GET"), "{}", d[0].3);
}

/// A session whose token grants `POST` as well as `GET` and `HEAD` on the
/// site (the default policy grants reads only).
async fn session_granting_post() -> Session {
    let policy = POLICY.replace(
        r#"methods = ["GET", "HEAD"]"#,
        r#"methods = ["GET", "HEAD", "POST"]"#,
    );
    assert_ne!(policy, POLICY);
    Session::start(Options {
        policy,
        ..Options::default()
    })
    .await
}

/// The usual shape: a token granting `POST` (not `DELETE`) on a site; a
/// `POST` the server runs as a `DELETE` is refused, under every override
/// header name (and a CGI spelling of one), in any case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_overridden_to_another_method_is_refused_where_post_is_granted() {
    let s = session_granting_post().await;
    let url = "https://kayak.com/account/saved/1";
    for (header, requested, via) in [
        (
            "X-HTTP-Method-Override: DELETE",
            "DELETE",
            "X-HTTP-Method-Override",
        ),
        ("X-HTTP-Method: put", "PUT", "X-HTTP-Method"),
        ("X-Method-Override: Patch", "PATCH", "X-Method-Override"),
        (
            "X_HTTP_Method_Override: DELETE",
            "DELETE",
            "x_http_method_override",
        ),
    ] {
        let r = s.curl(url, &["-X", "POST", "-H", header]).await;
        assert_eq!(r.status, 403, "{header}: {r:?}");
        let reason = r.blocked().unwrap();
        assert!(reason.contains(&asks(requested, "POST", via)), "{reason}");
    }
    assert!(s.mock.seen().is_empty(), "{:?}", s.mock.seen());
    let chain = s.finish_and_verify();
    let d = decisions(&chain);
    assert_eq!(d.len(), 4);
    for x in &d {
        assert_eq!((x.1.as_str(), x.2.as_str()), ("block", "catalog"), "{x:?}");
        assert_eq!(x.4["method"], "POST");
    }
}

/// `_method` in a form body (Rails, Laravel, Symfony: urlencoded or
/// multipart) or in the query (Symfony) is an override like the headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_field_to_another_method_is_refused() {
    let s = session_granting_post().await;
    let url = "https://kayak.com/account/saved/1";
    let form = "content-type: application/x-www-form-urlencoded";
    let attempts: Vec<(&str, Vec<&str>, &str, &str)> = vec![
        (
            url,
            vec!["-H", form, "--data-binary", "note=x&_method=DELETE"],
            "DELETE",
            "_method in the form body",
        ),
        (
            url,
            vec!["-F", "note=x", "-F", "_method=PUT"],
            "PUT",
            "_method in the form body",
        ),
        (
            "https://kayak.com/account/saved/1?_method=delete",
            vec!["-X", "POST"],
            "DELETE",
            "_method in the query",
        ),
    ];
    for (target, args, requested, via) in &attempts {
        let r = s.curl(target, args).await;
        assert_eq!(r.status, 403, "{args:?}: {r:?}");
        let reason = r.blocked().unwrap();
        assert!(reason.contains(&asks(requested, "POST", via)), "{reason}");
    }
    assert!(s.mock.seen().is_empty(), "{:?}", s.mock.seen());
    let chain = s.finish_and_verify();
    let d = decisions(&chain);
    assert_eq!(d.len(), attempts.len());
    for x in &d {
        assert_eq!((x.1.as_str(), x.2.as_str()), ("block", "catalog"), "{x:?}");
    }
}

/// Laravel reads `_method` from a JSON body too: for a request whose
/// `Content-Type` contains `/json` or `+json` (anywhere in the header, its
/// parameters included) it replaces Symfony's form bag with the decoded
/// JSON object, and Symfony takes `_method` from that bag, so `{"_method":
/// "DELETE"}` in a JSON `POST` runs the `DELETE` route. Refused like the
/// form field, in any spelling PHP's `json_decode` reads as that member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_member_of_a_json_body_is_refused() {
    let s = session_granting_post().await;
    let url = "https://kayak.com/account/saved/1";
    let attempts = [
        (
            "application/json",
            r#"{"note":"x","_method":"DELETE"}"#,
            "DELETE",
        ),
        ("application/json", r#"{"\u005fmethod":"put"}"#, "PUT"),
        (
            "application/json",
            r#"{"_method":"POST","_method":"PATCH"}"#,
            "PATCH",
        ),
        (
            "application/vnd.api+json",
            r#"{"_method":"DELETE"}"#,
            "DELETE",
        ),
        ("text/plain; x=/json", r#"{"_method":"DELETE"}"#, "DELETE"),
    ];
    for (content_type, body, requested) in attempts {
        let header = format!("content-type: {content_type}");
        let r = s.curl(url, &["-H", &header, "--data-binary", body]).await;
        assert_eq!(r.status, 403, "{content_type} {body}: {r:?}");
        let reason = r.blocked().unwrap();
        assert!(
            reason.contains(&asks(requested, "POST", "_method in the JSON body")),
            "{reason}"
        );
    }
    // Not JSON the proxy reads (a decoder that stops after the first value
    // would), and it may name the member.
    let r = s
        .curl(
            url,
            &[
                "-H",
                "content-type: application/json",
                "--data-binary",
                r#"{"_method":"DELETE"} trailing"#,
            ],
        )
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.blocked()
            .unwrap()
            .contains("the JSON body may ask the server to run another method"),
        "{r:?}"
    );
    assert!(s.mock.seen().is_empty(), "{:?}", s.mock.seen());
    // A JSON body naming its own method, or none, goes.
    for body in [r#"{"_method":"post","note":"x"}"#, r#"{"method":"DELETE"}"#] {
        let r = s
            .curl(
                url,
                &[
                    "-H",
                    "content-type: application/json",
                    "--data-binary",
                    body,
                ],
            )
            .await;
        assert_eq!(r.status, 200, "{body}: {r:?}");
    }
    assert_eq!(s.mock.seen().len(), 2);
    let chain = s.finish_and_verify();
    let d = decisions(&chain);
    assert_eq!(d.len(), attempts.len() + 3);
    for x in &d[..attempts.len() + 1] {
        assert_eq!((x.1.as_str(), x.2.as_str()), ("block", "catalog"), "{x:?}");
        assert_eq!(x.4["method"], "POST");
    }
}

/// An override naming the request's own method asks for nothing else:
/// decided and forwarded as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_naming_the_request_method_is_forwarded() {
    let s = session_granting_post().await;
    let r = s
        .curl(
            "https://kayak.com/account/saved/1?_method=post",
            &[
                "-H",
                "X-HTTP-Method-Override: post",
                "-H",
                "content-type: application/x-www-form-urlencoded",
                "--data-binary",
                "_method=POST&note=x",
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = s
        .curl(
            "https://united.com/profile/trips/1",
            &["-H", "X-HTTP-Method: GET"],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.mock.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].body.as_slice()),
        ("POST", b"_method=POST&note=x".as_slice())
    );
    assert_eq!(seen[1].method, "GET");
    let chain = s.finish_and_verify();
    let d = decisions(&chain);
    assert_eq!(d.len(), 2);
    for x in &d {
        assert_eq!((x.1.as_str(), x.2.as_str()), ("allow", "token"), "{x:?}");
    }
}

/// Servers run a `GET` route's handler for a `HEAD` (Go's `GET /path`
/// patterns, Express's `app.get`, Rails, Flask, Spring's `@GetMapping`) and
/// only drop the response body: a `HEAD` to a `GET` payment endpoint pays.
/// It is read by the `GET` rule (the receipt keeps the method sent), where
/// it used to be web access, which the read-only grant allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_request_is_read_by_the_get_rule_that_serves_it() {
    let catalog = format!(
        "{CATALOG}\n\
         [[rule]]\n\
         name = \"pay by link\"\n\
         host = \"united.com\"\n\
         method = \"GET\"\n\
         path = \"/api/pay\"\n\
         type = \"payment\"\n\
         amount = {{ query = \"amount\" }}\n\
         currency = {{ query = \"currency\" }}\n"
    );
    let s = Session::start(Options {
        catalog,
        ..Options::default()
    })
    .await;
    // HTTP/1.1: the proxy answers a HEAD over HTTP/2 with a stream reset
    // (a separate problem, in proxy/src/http, reported to the lead).
    let r = s
        .curl(
            "https://united.com/api/pay?amount=900.00&currency=USD",
            &["-I", "--http1.1"],
        )
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(s.mock.seen().is_empty(), "{:?}", s.mock.seen());
    let r = s
        .curl(
            "https://united.com/api/pay?amount=5.00&currency=USD",
            &["-I", "--http1.1"],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.mock.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "HEAD");
    let chain = s.finish_and_verify();
    let d = decisions(&chain);
    assert_eq!(d.len(), 2);
    assert_eq!(
        (d[0].1.as_str(), d[0].2.as_str()),
        ("block", "token"),
        "{:?}",
        d[0]
    );
    assert_eq!(d[1].1, "allow", "{:?}", d[1]);
    for x in &d {
        assert_eq!(x.4["type"], "payment", "{x:?}");
        assert_eq!(x.4["method"], "HEAD", "{x:?}");
    }
    assert_eq!(d[0].4["amount_cents"], 90000);
    assert_eq!(d[1].4["amount_cents"], 500);
}

/// A `PUT` payment rule: a `POST` with `_method=PUT` (body or query) runs
/// the payment on servers that honour it; it is refused, not read as web.
#[test]
fn a_method_field_is_refused_where_it_would_reach_a_payment_rule() {
    use enforce::ClassifyError;
    let cat = enforce::Catalog::from_toml(
        r#"
        [[rule]]
        host = "shop.example"
        method = "put"
        path = "/api/cart/pay"
        type = "payment"
        amount = { form = "amount" }
        currency = { form = "currency" }
        "#,
    )
    .unwrap();
    let host = capabilities::Host::parse("shop.example").unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "content-type",
        "application/x-www-form-urlencoded".parse().unwrap(),
    );
    for (target, body, via) in [
        (
            "/api/cart/pay",
            "_method=PUT&amount=900.00&currency=USD",
            "_method in the form body",
        ),
        (
            "/api/cart/pay?_method=PUT",
            "amount=900.00&currency=USD",
            "_method in the query",
        ),
    ] {
        let view = enforce::RequestView {
            method: "POST",
            host: &host,
            path_and_query: target,
            headers: &headers,
        };
        assert_eq!(
            cat.match_request(&view)
                .classify(&view, Some(body.as_bytes()), true),
            Err(ClassifyError::MethodOverride {
                method: "POST".into(),
                requested: "PUT".into(),
                via: via.into()
            }),
            "{target} {body}"
        );
    }
}
