//! Shared helpers for the capability tests: keys, the seed policy, actions.
#![allow(dead_code)] // each test file uses a different subset

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use capabilities::{Action, ActionType, Capability, Policy, UnverifiedToken};

pub const ROOT_SECRET: [u8; 32] = [7; 32];

pub fn public_of(secret: &[u8; 32]) -> [u8; 32] {
    ed25519_dalek::SigningKey::from_bytes(secret)
        .verifying_key()
        .to_bytes()
}

/// A fixed minting time, so expiry tests are deterministic.
pub fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_767_225_600) // 2026-01-01T00:00:00Z
}

pub fn seed_policy() -> Policy {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/flight-booking/policy.toml"
    ))
    .expect("seed policy file");
    Policy::from_toml_str(&text).expect("seed policy parses")
}

pub fn mint_verified(policy: &Policy) -> Capability {
    let token = capabilities::mint(policy, &ROOT_SECRET, t0()).expect("mint");
    verify(&token)
}

pub fn verify(token: &str) -> Capability {
    UnverifiedToken::from_base64(token)
        .expect("parse")
        .verify(&public_of(&ROOT_SECRET))
        .expect("verify")
}

pub fn web(method: &str, host: &str, path: &str) -> Action {
    Action::request(
        ActionType::Web,
        method.to_owned(),
        host.to_owned(),
        path.to_owned(),
    )
}

pub fn payment(host: &str, cents: u64, currency: &str) -> Action {
    Action {
        kind: ActionType::Payment,
        amount_cents: Some(cents),
        currency: Some(currency.to_owned()),
        merchant: Some(host.to_owned()),
        credential: Some("united_card".to_owned()),
        ..web("POST", host, "/api/booking/purchase")
    }
}

pub fn email(to: &[&str], subject: &str) -> Action {
    Action {
        kind: ActionType::Email,
        recipients: to.iter().map(|s| (*s).to_owned()).collect(),
        subject: Some(subject.to_owned()),
        ..web("POST", "api.mail.example", "/v1/send")
    }
}

pub fn login(host: &str, credential: &str) -> Action {
    Action {
        kind: ActionType::Login,
        credential: Some(credential.to_owned()),
        ..web("POST", host, "/api/auth/login")
    }
}

pub fn llm(host: &str, cost: u64) -> Action {
    Action {
        kind: ActionType::Llm,
        cost_micro_usd: Some(cost),
        credential: Some("openai_key".to_owned()),
        ..web("POST", host, "/v1/chat/completions")
    }
}
