//! A granted credential is substituted only where it belongs: the field the
//! matched catalog rule names (`credential_field`), the header a secret
//! injects, the secrets file's `placement` list. Its placeholder anywhere
//! else in a request to the very host it is granted for (another body
//! field, the query, another header, the path, a second spelling of the
//! field) is exfiltration: refused at the credential stage, and the
//! upstream never receives the request.
#![allow(clippy::unwrap_used)]

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placeholder_outside_its_field_is_refused_even_at_its_host() {
    let s = Session::start(Options::default()).await;
    let login = s.placeholder("united_login");
    let url = "https://united.com/api/auth/login";
    let attempts: Vec<(&str, Reply)> = vec![
        (
            "another body field",
            s.post_json(
                url,
                &format!(r#"{{"username":"{login}","password":"{login}"}}"#),
            )
            .await,
        ),
        (
            "the field spelled twice",
            s.post_json(
                url,
                &format!(r#"{{"username":"t","password":"x","Password":"{login}"}}"#),
            )
            .await,
        ),
        (
            "the field in another case only",
            s.post_json(url, &format!(r#"{{"username":"t","PASSWORD":"{login}"}}"#))
                .await,
        ),
        (
            "the query",
            s.post_json(
                &format!("{url}?note={login}"),
                r#"{"username":"t","password":"x"}"#,
            )
            .await,
        ),
        (
            "another header",
            s.curl(
                url,
                &[
                    "-X",
                    "POST",
                    "-H",
                    "content-type: application/json",
                    "-H",
                    &format!("x-note: {login}"),
                    "--data-binary",
                    r#"{"username":"t","password":"x"}"#,
                ],
            )
            .await,
        ),
        (
            "the path of a GET",
            s.curl(&format!("https://united.com/profile/{login}"), &[])
                .await,
        ),
        (
            "a form body, where the rule reads JSON",
            s.curl(
                url,
                &[
                    "-X",
                    "POST",
                    "-H",
                    "content-type: application/x-www-form-urlencoded",
                    "--data-binary",
                    &format!("password={login}"),
                ],
            )
            .await,
        ),
    ];
    for (what, r) in &attempts {
        assert_eq!(r.status, 403, "{what}: {r:?}");
        let reason = r.blocked().unwrap();
        assert!(
            reason.contains("credential exfiltration"),
            "{what}: {reason}"
        );
        // The refusal says where it may go: the login rule's field, or
        // nowhere off the login endpoint.
        let expected = if what.contains("path") {
            "nowhere"
        } else {
            "json:/password"
        };
        assert!(reason.contains(expected), "{what}: {reason}");
    }
    // What the upstream received: nothing at all.
    assert!(s.mock.seen().is_empty(), "{:?}", s.mock.seen());

    // In its field, the placeholder is replaced there and only there.
    let r = s
        .post_json(url, &format!(r#"{{"username":"t","password":"{login}"}}"#))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.mock.seen();
    assert_eq!(seen.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(body["password"], LOGIN_SECRET);
    assert_eq!(body["username"], "t");

    let chain = s.finish_and_verify();
    let d = decisions(&chain);
    assert_eq!(d.len(), attempts.len() + 1);
    for x in &d[..attempts.len()] {
        assert_eq!(
            (x.1.as_str(), x.2.as_str()),
            ("block", "credential"),
            "{x:?}"
        );
    }
    assert_eq!(
        (d[attempts.len()].1.as_str(), d[attempts.len()].2.as_str()),
        ("allow", "token")
    );
    assert!(!s.receipts_text().contains(LOGIN_SECRET));
}

/// A session whose united.com login may also go where `placement` (a TOML
/// list) says.
async fn session_with_login_placement(placement: &str) -> Session {
    let secrets = SECRETS.replace(
        "value = \"Hunter2-real-P@ss\"",
        &format!("value = \"Hunter2-real-P@ss\"\nplacement = {placement}"),
    );
    assert_ne!(secrets, SECRETS);
    Session::start(Options {
        secrets,
        ..Options::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placement_list_widens_where_a_secret_may_go() {
    let s = session_with_login_placement(r#"["header:X-Api-Key", "query:key"]"#).await;
    let login = s.placeholder("united_login");
    // In the header and the query parameter the list names: substituted.
    let r = s
        .curl(
            &format!("https://united.com/flights?key={login}"),
            &["-H", &format!("x-api-key: {login}")],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.mock.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].headers["x-api-key"], LOGIN_SECRET);
    assert_eq!(seen[0].path, "/flights?key=Hunter2-real-P%40ss");
    // In another query parameter or header: refused, and the upstream
    // receives nothing more.
    for args in [
        (
            format!("https://united.com/flights?other={login}"),
            String::new(),
        ),
        (
            "https://united.com/flights".to_owned(),
            format!("x-other: {login}"),
        ),
    ] {
        let extra: Vec<&str> = if args.1.is_empty() {
            vec![]
        } else {
            vec!["-H", &args.1]
        };
        let r = s.curl(&args.0, &extra).await;
        assert_eq!(r.status, 403, "{r:?}");
        assert!(
            r.blocked().unwrap().contains("header:x-api-key, query:key"),
            "{r:?}"
        );
    }
    assert_eq!(s.mock.seen().len(), 1);
    s.finish_and_verify();
}

/// Servers that still split query strings and form bodies at `;` (Rack 2's
/// `parse_nested_query`, Go before 1.17, Python's `parse_qsl` before 3.9.2)
/// read `key=A;note=B` as two fields. A placeholder is substituted only
/// where it lies in the allowed field's value under both readings: after
/// the `;` it would put the secret in `note`, which the upstream may store
/// and show back, so the request is refused and the upstream receives
/// nothing. A `;` that leaves the placeholder in its field is not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semicolon_does_not_carry_a_secret_into_another_field() {
    let s = session_with_login_placement(r#"["query:key", "form:pw"]"#).await;
    let login = s.placeholder("united_login");
    let form = |body: String| {
        [
            "-X".to_owned(),
            "POST".to_owned(),
            "-H".to_owned(),
            "content-type: application/x-www-form-urlencoded".to_owned(),
            "--data-binary".to_owned(),
            body,
        ]
    };
    let login_url = "https://united.com/api/auth/login";
    let in_query = s
        .curl(
            &format!("https://united.com/flights?key={login};note={login}"),
            &[],
        )
        .await;
    let args = form(format!("pw={login};note={login}"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let in_form = s.curl(login_url, &args).await;
    for (what, r) in [("query", &in_query), ("form", &in_form)] {
        assert_eq!(r.status, 403, "{what}: {r:?}");
        let reason = r.blocked().unwrap();
        assert!(
            reason.contains("credential exfiltration")
                && reason.contains(
                    "the credential placeholder would also land in field `note` for servers \
                     that split at ';'"
                ),
            "{what}: {reason}"
        );
    }
    assert!(s.mock.seen().is_empty(), "{:?}", s.mock.seen());

    // A `;` that puts no placeholder outside the field, and no `;` at all:
    // substituted.
    let r = s
        .curl(
            &format!("https://united.com/flights?a=1;b=2&key={login}"),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let args = form(format!("pw={login}&note=hello"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = s.curl(login_url, &args).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.mock.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].path, "/flights?a=1;b=2&key=Hunter2-real-P%40ss");
    assert_eq!(seen[1].body, b"pw=Hunter2-real-P%40ss&note=hello");

    let chain = s.finish_and_verify();
    let d = decisions(&chain);
    let stages: Vec<(&str, &str)> = d.iter().map(|x| (x.1.as_str(), x.2.as_str())).collect();
    assert_eq!(
        stages,
        [
            ("block", "credential"),
            ("block", "credential"),
            ("allow", "token"),
            ("allow", "token"),
        ]
    );
    assert!(!s.receipts_text().contains(LOGIN_SECRET));
}
