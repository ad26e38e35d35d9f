//! Attenuation only narrows (concrete cases and a property test), and the
//! ways a token must fail: another root key, expiry, revocation, tampering,
//! attenuating a sealed token.

mod common;

use std::time::Duration;

use capabilities::policy::{
    Amount, ApprovalRule, EmailGrant, LlmGrant, LoginGrant, MicroUsd, PaymentGrant, Ttl, WebGrant,
    WebsocketGrant,
};
use capabilities::{
    Action, ActionType, CapabilityError, Counters, Policy, UnverifiedToken, Verdict,
};
use common::*;
use proptest::prelude::*;

fn parse(text: &str) -> Policy {
    Policy::from_toml_str(text).expect("policy")
}

#[test]
fn attenuation_narrows_and_cannot_widen() {
    let root = capabilities::mint(&seed_policy(), &ROOT_SECRET, t0()).expect("mint");
    let narrow = parse(
        "ttl = \"5m\"\n[web]\nallow = [\"kayak.com\", \"evil.com\"]\nmethods = [\"GET\", \"POST\"]",
    );
    let token = UnverifiedToken::from_base64(&root)
        .expect("parse")
        .attenuate(&narrow, t0())
        .expect("attenuate");
    let cap = verify(&token);
    let now = t0() + Duration::from_secs(60);
    let none = Counters::default();
    assert_eq!(
        cap.authorize(&web("GET", "kayak.com", "/"), &none, now)
            .decision,
        Verdict::Allow
    );
    // Still outside the root grant: the narrowing block cannot add it.
    let evil = cap.authorize(&web("GET", "evil.com", "/"), &none, now);
    assert_eq!(evil.decision, Verdict::Block);
    assert_eq!(
        cap.authorize(&web("POST", "kayak.com", "/"), &none, now)
            .decision,
        Verdict::Block
    );
    // Dropped by the narrowing block.
    let google = cap.authorize(&web("GET", "google.com", "/flights"), &none, now);
    assert_eq!(google.decision, Verdict::Block);
    assert!(
        google.reason.starts_with("narrowed by block 1"),
        "{}",
        google.reason
    );
    let pay = cap.authorize(&payment("united.com", 100, "USD"), &none, now);
    assert_eq!(pay.decision, Verdict::Block);
    assert!(!cap.credential_allowed("united_login", "united.com", now));
    assert_eq!(
        cap.authorize_dns("united.com", now).decision,
        Verdict::Block
    );
    // The shorter TTL wins.
    let late = t0() + Duration::from_secs(301);
    let d = cap.authorize(&web("GET", "kayak.com", "/"), &none, late);
    assert_eq!(d.decision, Verdict::Block);
    assert!(d.reason.contains("expired"), "{}", d.reason);
    assert_eq!(cap.expires_at(), Some(t0() + Duration::from_secs(300)));
    // Two blocks, two revocation ids; the summary counts what survives.
    assert_eq!(cap.revocation_ids().len(), 2);
    assert_eq!(d.revocation_ids, cap.revocation_ids());
    assert_eq!(cap.summary().to_string(), "1 grant, 3 constraints");
}

#[test]
fn attenuation_can_lower_a_ceiling_and_add_an_approval() {
    let cap = mint_verified(&seed_policy());
    let narrow = parse(
        r#"
        [payment]
        merchant = "united.com"
        currency = "USD"
        max_per_charge = "300.00"
        card = "united_card"
        [[approval]]
        type = "payment"
    "#,
    );
    let cap = verify(&cap.attenuate(&narrow, t0()).expect("attenuate"));
    let now = t0() + Duration::from_secs(1);
    let d = |cents| {
        cap.authorize(
            &payment("united.com", cents, "USD"),
            &Counters::default(),
            now,
        )
    };
    assert_eq!(
        d(10_000).decision,
        Verdict::Approval,
        "every payment now needs a human"
    );
    let over = d(30_001);
    assert_eq!(over.decision, Verdict::Block);
    assert!(over.reason.contains("$300.00"), "{}", over.reason);
}

#[test]
fn a_token_from_another_root_key_never_verifies() {
    let token = capabilities::mint(&seed_policy(), &[8; 32], t0()).expect("mint");
    let err = UnverifiedToken::from_base64(&token)
        .expect("parse")
        .verify(&public_of(&ROOT_SECRET))
        .expect_err("wrong root");
    assert!(matches!(err, CapabilityError::Signature(_)), "{err:?}");
    // Attenuating someone else's token does not make it ours either.
    let narrowed = UnverifiedToken::from_base64(&token)
        .expect("parse")
        .attenuate(&parse("[web]\nallow=[\"kayak.com\"]"), t0())
        .expect("attenuate");
    let err = UnverifiedToken::from_base64(&narrowed)
        .expect("parse")
        .verify(&public_of(&ROOT_SECRET))
        .expect_err("wrong root");
    assert!(matches!(err, CapabilityError::Signature(_)), "{err:?}");
}

#[test]
fn a_tampered_token_fails() {
    let token = capabilities::mint(&seed_policy(), &ROOT_SECRET, t0()).expect("mint");
    let mut bytes = token.into_bytes();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).expect("ascii");
    let result =
        UnverifiedToken::from_base64(&tampered).and_then(|t| t.verify(&public_of(&ROOT_SECRET)));
    assert!(result.is_err());
    assert!(UnverifiedToken::from_base64("not a token").is_err());
}

#[test]
fn a_revoked_id_fails_verification() {
    let root = capabilities::mint(&seed_policy(), &ROOT_SECRET, t0()).expect("mint");
    let child = verify(&root)
        .attenuate(&parse("ttl = \"1m\""), t0())
        .expect("attenuate");
    let ids = verify(&child).revocation_ids();
    let pk = public_of(&ROOT_SECRET);
    for id in &ids {
        let err = UnverifiedToken::from_base64(&child)
            .expect("parse")
            .verify_with_revocations(&pk, &[id.to_uppercase()])
            .expect_err("revoked");
        assert_eq!(err, CapabilityError::Revoked { id: id.clone() });
    }
    // Revoking the child's block leaves the root token valid.
    UnverifiedToken::from_base64(&root)
        .expect("parse")
        .verify_with_revocations(&pk, &[ids[1].clone()])
        .expect("root not revoked");
    let none: [&str; 0] = [];
    UnverifiedToken::from_base64(&child)
        .expect("parse")
        .verify_with_revocations(&pk, &none)
        .expect("empty list");
}

#[test]
fn a_sealed_token_cannot_be_attenuated_but_still_authorizes() {
    let cap = mint_verified(&seed_policy());
    let sealed = cap.seal().expect("seal");
    let sealed_cap = verify(&sealed);
    let now = t0() + Duration::from_secs(1);
    assert_eq!(
        sealed_cap
            .authorize(&web("GET", "kayak.com", "/"), &Counters::default(), now)
            .decision,
        Verdict::Allow
    );
    let narrow = parse("ttl = \"1m\"");
    assert_eq!(
        sealed_cap.attenuate(&narrow, t0()),
        Err(CapabilityError::Sealed)
    );
    let unverified = UnverifiedToken::from_base64(&sealed).expect("parse");
    assert_eq!(
        unverified.attenuate(&narrow, t0()),
        Err(CapabilityError::Sealed)
    );
    assert_eq!(unverified.seal(), Err(CapabilityError::Sealed));
}

#[test]
fn unverified_summary_matches_the_verified_one_but_says_so() {
    let token = capabilities::mint(&seed_policy(), &ROOT_SECRET, t0()).expect("mint");
    let unverified = UnverifiedToken::from_base64(&token).expect("parse");
    let a = unverified.summary_unverified().expect("summary");
    let b = verify(&token).summary();
    assert!(!a.signature_verified && b.signature_verified);
    assert_eq!(a.grant_lines, b.grant_lines);
    assert_eq!(a.to_string(), "4 grants, 2 constraints");
    assert_eq!(unverified.root_policy_unverified(), Some(seed_policy()));
}

#[test]
fn a_websocket_needs_its_own_grant_and_attenuation_narrows_it() {
    let ws = |host: &str, path: &str| Action {
        kind: ActionType::Websocket,
        ..web("GET", host, path)
    };
    let none = Counters::default();
    let now = t0() + Duration::from_secs(1);
    // The seed policy reads kayak.com over the web grant: no WebSocket there.
    let seed = mint_verified(&seed_policy());
    let d = seed.authorize(&ws("kayak.com", "/live"), &none, now);
    assert_eq!(d.decision, Verdict::Block);
    assert!(d.reason.contains("no websocket grant"), "{}", d.reason);
    let cap = mint_verified(&parse(
        "[websocket]\nallow = [\"chat.example/socket\", \"*.live.example\"]",
    ));
    assert_eq!(cap.summary().to_string(), "1 grant, 0 constraints");
    for (host, path, verdict) in [
        ("chat.example", "/socket", Verdict::Allow),
        ("chat.example", "/socket/room?id=1", Verdict::Allow),
        ("chat.example", "/socketx", Verdict::Block),
        ("chat.example", "/", Verdict::Block),
        ("a.live.example", "/anything", Verdict::Allow),
        ("live.example", "/", Verdict::Block),
    ] {
        let d = cap.authorize(&ws(host, path), &none, now);
        assert_eq!(d.decision, verdict, "{host}{path}: {}", d.reason);
        if verdict == Verdict::Allow {
            assert_eq!(d.grant.as_deref(), Some("websocket"));
        }
    }
    // A WebSocket grant is not a web grant either.
    let d = cap.authorize(&web("GET", "chat.example", "/socket"), &none, now);
    assert_eq!(d.decision, Verdict::Block);
    assert_eq!(
        cap.authorize_dns("chat.example", now).decision,
        Verdict::Allow
    );
    // Narrowed to one host: the other is gone.
    let narrowed = verify(
        &cap.attenuate(&parse("[websocket]\nallow = [\"a.live.example\"]"), t0())
            .expect("attenuate"),
    );
    assert_eq!(
        narrowed
            .authorize(&ws("a.live.example", "/x"), &none, now)
            .decision,
        Verdict::Allow
    );
    let d = narrowed.authorize(&ws("chat.example", "/socket"), &none, now);
    assert_eq!(d.decision, Verdict::Block);
    assert!(d.reason.starts_with("narrowed by block 1"), "{}", d.reason);
    // And an approval rule for WebSockets holds them for a human.
    let held = verify(
        &cap.attenuate(
            &parse("[websocket]\nallow = [\"chat.example\"]\n[[approval]]\ntype = \"websocket\""),
            t0(),
        )
        .expect("attenuate"),
    );
    assert_eq!(
        held.authorize(&ws("chat.example", "/socket"), &none, now)
            .decision,
        Verdict::Approval
    );
}

#[test]
fn llm_providers_are_named_by_any_block() {
    let cap = mint_verified(&parse(
        "[llm]\nproviders = [\"api.openai.com\", \"*.llm.example\"]",
    ));
    let host = |h: &str| capabilities::Host::parse(h).expect("host");
    assert!(cap.names_llm_provider(&host("api.openai.com")));
    assert!(cap.names_llm_provider(&host("eu.llm.example")));
    assert!(!cap.names_llm_provider(&host("llm.example")));
    assert!(!mint_verified(&seed_policy()).names_llm_provider(&host("api.openai.com")));
}

// ---- property: attenuation never widens ----

const HOSTS: &[&str] = &[
    "a.com",
    "b.com",
    "c.a.com",
    "a.com.evil.net",
    "evila.com",
    "mail.x",
];
const PATTERNS: &[&str] = &["a.com", "b.com", "*.a.com", "c.a.com", "mail.x"];

fn rank(v: Verdict) -> u8 {
    match v {
        Verdict::Block => 0,
        Verdict::Approval => 1,
        Verdict::Allow => 2,
    }
}

fn subset<T: Clone + std::fmt::Debug>(items: &'static [T]) -> impl Strategy<Value = Vec<T>> {
    proptest::sample::subsequence(items, 1..=items.len())
}

fn cents() -> impl Strategy<Value = Amount> {
    (0u64..2_000).prop_map(Amount)
}

fn arb_policy() -> impl Strategy<Value = Policy> {
    let web = (
        subset(
            &[
                "a.com",
                "b.com",
                "*.a.com",
                "a.com/p",
                "b.com/p/q",
                "c.a.com",
            ][..],
        ),
        subset(&["GET", "POST", "HEAD"][..]),
    )
        .prop_map(|(allow, methods)| WebGrant {
            allow: allow.into_iter().map(str::to_owned).collect(),
            methods: methods.into_iter().map(str::to_owned).collect(),
        });
    let payment = (
        proptest::sample::select(&["a.com", "b.com"][..]),
        proptest::sample::select(&["USD", "EUR"][..]),
        cents(),
        proptest::option::of(cents()),
        proptest::option::of(cents()),
        proptest::option::of(proptest::sample::select(&["card1", "card2"][..])),
    )
        .prop_map(
            |(merchant, currency, max, total, approval, card)| PaymentGrant {
                merchant: merchant.into(),
                currency: currency.into(),
                max_per_charge: max,
                max_total: total,
                approval_above: approval,
                card: card.map(str::to_owned),
            },
        );
    let email = (
        subset(&["u@x.com", "v@x.com"][..]),
        proptest::option::of(proptest::sample::select(&["hi", "hello"][..])),
        proptest::option::of(0u64..3),
    )
        .prop_map(|(to, subject, max)| EmailGrant {
            host: "mail.x".into(),
            recipients: to.into_iter().map(str::to_owned).collect(),
            subject_contains: subject.map(str::to_owned),
            max_count: max,
        });
    let login = (
        proptest::sample::select(PATTERNS),
        proptest::sample::select(&["l1", "l2"][..]),
    )
        .prop_map(|(service, cred)| LoginGrant {
            service: service.into(),
            credential: cred.into(),
            scopes: Vec::new(),
        });
    let llm = (
        subset(PATTERNS),
        proptest::option::of(proptest::sample::select(&["k1", "k2"][..])),
        proptest::option::of((0u64..3_000).prop_map(MicroUsd)),
    )
        .prop_map(|(providers, cred, budget)| LlmGrant {
            providers: providers.into_iter().map(str::to_owned).collect(),
            credential: cred.map(str::to_owned),
            budget_usd: budget,
        });
    let websocket =
        subset(&["a.com", "*.a.com", "a.com/p", "b.com/p/q", "mail.x"][..]).prop_map(|allow| {
            WebsocketGrant {
                allow: allow.into_iter().map(str::to_owned).collect(),
            }
        });
    let approval = proptest::collection::vec(
        prop_oneof![
            (proptest::option::of(cents())).prop_map(|above| ApprovalRule {
                kind: ActionType::Payment,
                above,
                once_spent_usd: None,
            }),
            (
                proptest::option::of((0u64..30).prop_map(Amount)),
                proptest::option::of((0u64..3_000).prop_map(MicroUsd)),
            )
                .prop_map(|(above, once_spent_usd)| ApprovalRule {
                    kind: ActionType::Llm,
                    above,
                    once_spent_usd,
                }),
            Just(ApprovalRule {
                kind: ActionType::Email,
                above: None,
                once_spent_usd: None,
            }),
            Just(ApprovalRule {
                kind: ActionType::Websocket,
                above: None,
                once_spent_usd: None,
            }),
        ],
        0..2,
    );
    (
        proptest::option::of(proptest::sample::select(&[60u64, 600][..])),
        proptest::option::of(web),
        proptest::option::of(payment),
        proptest::option::of(email),
        proptest::option::of(login),
        proptest::option::of(llm),
        proptest::option::of(websocket),
        approval,
    )
        .prop_map(
            |(ttl, web, payment, email, login, llm, websocket, approval)| {
                Policy {
                    ttl: ttl.map(|s| Ttl(Duration::from_secs(s))),
                    web,
                    payment,
                    email,
                    login,
                    llm,
                    websocket,
                    approval,
                }
                .normalized()
                .expect("generated policies are valid")
            },
        )
}

fn arb_action() -> impl Strategy<Value = (Action, Counters, u64)> {
    (
        proptest::sample::select(
            &[
                ActionType::Web,
                ActionType::Login,
                ActionType::Payment,
                ActionType::Email,
                ActionType::Llm,
                ActionType::Websocket,
            ][..],
        ),
        proptest::sample::select(&["GET", "POST", "HEAD", "DELETE"][..]),
        proptest::sample::select(HOSTS),
        proptest::sample::select(&["/", "/p", "/p/q", "/pq", "/p?x=1"][..]),
        (
            0u64..2_500,
            proptest::sample::select(&["USD", "EUR", "usd"][..]),
        ),
        proptest::option::of(proptest::sample::select(HOSTS)),
        proptest::sample::subsequence(&["u@x.com", "V@x.com ", "w@x.com"][..], 0..=3),
        proptest::sample::select(&["hi there", "HELLO", "other"][..]),
        proptest::option::of(proptest::sample::select(
            &["card1", "card2", "l1", "l2", "k1", "k2"][..],
        )),
        (0u64..50, 0u64..3_000, 0u64..4, 0u64..3_000),
        proptest::sample::select(&[0u64, 30, 61, 601][..]),
    )
        .prop_map(
            |(
                kind,
                method,
                host,
                path,
                (amount, currency),
                merchant,
                to,
                subject,
                cred,
                (cost, spent, sent, llm_spent),
                secs,
            )| {
                let action = Action {
                    kind,
                    method: method.into(),
                    host: host.into(),
                    path: path.into(),
                    amount_cents: Some(amount),
                    currency: Some(currency.into()),
                    merchant: merchant.map(str::to_owned),
                    recipients: to.into_iter().map(str::to_owned).collect(),
                    subject: Some(subject.into()),
                    credential: cred.map(str::to_owned),
                    cost_micro_usd: Some(cost),
                };
                let counters = Counters {
                    spent_cents: spent,
                    emails_sent: sent,
                    llm_spent_micro_usd: llm_spent,
                };
                (action, counters, secs)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// For random policies, random attenuations (one or two blocks) and
    /// random actions, the attenuated token never decides more permissively
    /// than the original (block < approval < allow), for requests, DNS names
    /// and credential injection alike.
    #[test]
    fn attenuation_never_widens(
        root in arb_policy(),
        narrowings in proptest::collection::vec(arb_policy(), 1..3),
        actions in proptest::collection::vec(arb_action(), 6),
    ) {
        let original = mint_verified(&root);
        let mut token = original.to_base64().expect("encode");
        for (i, n) in narrowings.iter().enumerate() {
            token = verify(&token).attenuate(n, t0() + Duration::from_secs(i as u64 * 20)).expect("attenuate");
        }
        let narrowed = verify(&token);
        for (action, counters, secs) in &actions {
            let now = t0() + Duration::from_secs(*secs);
            let a = narrowed.authorize(action, counters, now);
            let o = original.authorize(action, counters, now);
            prop_assert!(rank(a.decision) <= rank(o.decision),
                "attenuated {:?} but original {:?} for {:?}", a, o, action);
            let (ad, od) = (narrowed.authorize_dns(&action.host, now), original.authorize_dns(&action.host, now));
            prop_assert!(rank(ad.decision) <= rank(od.decision), "dns {}", action.host);
            if let Some(cred) = &action.credential {
                prop_assert!(!narrowed.credential_allowed(cred, &action.host, now)
                    || original.credential_allowed(cred, &action.host, now));
            }
        }
    }
}
