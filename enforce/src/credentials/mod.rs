//! Secrets and their per-session placeholders: loading the host's secrets
//! file, finding placeholders (whole or in pieces) in a request, swapping
//! them for the real values only where the token grants the credential and
//! only in the places it belongs, injecting headers, and masking secrets a
//! response echoes back (after decoding a compressed body).
//! Format and detection rules: `docs/credentials.md`.

/// Compressed response bodies decoded as they stream.
mod decode;
/// Echoed secrets replaced by their placeholders.
mod echo;
/// How a secret is written in a URL, a form or JSON.
mod encode;
/// JSON escapes and HTML character references undone, with a map back.
mod escapes;
/// The Aho-Corasick finders.
mod finder;
/// Minting placeholders and finding them in requests.
mod placeholder;
/// Where in a request a placeholder may be substituted.
mod placement;
/// The secrets file.
mod store;
/// Granted placeholders replaced by their secrets; header injection.
mod substitute;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use capabilities::{Action, Host};
use http::HeaderMap;

pub use decode::{BodyDecoder, Coding, DecodeError};
pub use echo::{EchoFilter, Pushed, SplitSecret};
pub use placeholder::{Findings, Place, Sighting, FRAGMENT_LEN, PLACEHOLDER_PREFIX, RANDOM_LEN};
pub use placement::Placement;
pub use store::{Injection, Secret, SecretStore, SecretsError};
pub use substitute::{SubstituteError, Substituted};

use echo::EchoMask;
use placeholder::Placeholders;
use substitute::Substitution;

/// One session's view of the secrets: each secret with a fresh random
/// placeholder, and the matchers built from them.
pub struct SessionCredentials {
    secrets: Vec<Secret>,
    placeholders: Placeholders,
    substitution: Substitution,
    /// `None` when there is no secret to mask.
    echo: Option<Arc<EchoMask>>,
}

impl fmt::Debug for SessionCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionCredentials")
            .field(
                "names",
                &self.secrets.iter().map(Secret::name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl SessionCredentials {
    /// Mints a fresh placeholder for every secret.
    pub fn new(store: &SecretStore) -> Self {
        let secrets = store.secrets().to_vec();
        let placeholders =
            Placeholders::mint(secrets.iter().map(|s| s.name().to_owned()).collect());
        SessionCredentials {
            substitution: Substitution::new(placeholders.all()),
            echo: EchoMask::new(&secrets, placeholders.all()).map(Arc::new),
            secrets,
            placeholders,
        }
    }

    /// Credential name → placeholder, for the sandbox's environment.
    pub fn placeholders(&self) -> BTreeMap<String, String> {
        self.secrets
            .iter()
            .zip(self.placeholders.all())
            .map(|(s, p)| (s.name().to_owned(), p.clone()))
            .collect()
    }

    /// The credential names, in secrets-file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.secrets.iter().map(Secret::name)
    }

    /// Whether the secrets file allows `name` at `host` (the token must
    /// allow it too: the caller asks the capability).
    pub fn file_allows(&self, name: &str, host: &Host) -> bool {
        self.secrets
            .iter()
            .any(|s| s.name() == name && s.host_ok(host))
    }

    /// Names of secrets that have a header injection.
    pub fn injectable(&self) -> impl Iterator<Item = &str> {
        self.secrets
            .iter()
            .filter(|s| s.injection().is_some())
            .map(Secret::name)
    }

    /// Looks for placeholders anywhere in a request: the URL (raw and
    /// percent-decoded, twice), each header value and all header values run
    /// together (a placeholder split over adjacent headers), and the body
    /// bytes given (raw and percent-decoded). Matching ignores ASCII case.
    pub fn scan(&self, path_and_query: &str, headers: &HeaderMap, body: &[u8]) -> Findings {
        self.placeholders.scan(path_and_query, headers, body)
    }

    /// A placeholder-shaped text (`ocs_<name>_<24 of a-z0-9>`) in the
    /// request that is not one of this session's: minted for a session
    /// that ended (or another tenant's), so no secret stands behind it
    /// here. Its credential name and where it was seen. Looked for where
    /// [`Self::scan`] looks, even when this session has no secrets.
    pub fn foreign(
        &self,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Option<(String, Place)> {
        placeholder::foreign(self.placeholders.all(), path_and_query, headers, body)
    }

    /// Why the placeholder of credential `name` may not be substituted in
    /// this request: it (whole, its marker or a piece) sits somewhere other
    /// than the places it may go: `rule_places` (the matched catalog rule's
    /// `credential_field`, when the rule names this credential), the
    /// secrets file's `placement` list and its injection header. `None`
    /// when every sighting is in such a place.
    pub fn misplaced(
        &self,
        name: &str,
        rule_places: &[Placement],
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
        complete: bool,
    ) -> Option<String> {
        let secret = self.secrets.iter().find(|s| s.name() == name)?;
        let mut places: Vec<Placement> = rule_places.to_vec();
        places.extend_from_slice(secret.placements());
        if let Some(inj) = secret.injection() {
            places.push(Placement::Header(inj.header.clone()));
        }
        let spots = placement::locate(&places, path_and_query, headers, body, complete);
        // The request with its allowed places blanked out: whatever of the
        // placeholder is left is somewhere it must not go.
        let blank = |text: &[u8], ranges: &[std::ops::Range<usize>]| {
            let mut out = text.to_vec();
            for r in ranges {
                out[r.clone()].fill(b' ');
            }
            out
        };
        let mut rest_headers = headers.clone();
        for h in &spots.headers {
            rest_headers.remove(h);
        }
        let rest_of = |query: &[std::ops::Range<usize>], body_ranges: &[std::ops::Range<usize>]| {
            let pq = String::from_utf8_lossy(&blank(path_and_query.as_bytes(), query)).into_owned();
            self.placeholders
                .scan(&pq, &rest_headers, &blank(body, body_ranges))
        };
        let rest = rest_of(&spots.query, &spots.body);
        let (sighting, place) = rest.by_credential.get(name)?;
        let allowed = places
            .iter()
            .map(Placement::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        // Outside only for servers that also split at `;`: say so, it is
        // the one reading that puts the secret in another field.
        if !spots.split_at_semicolon.is_empty() {
            let (mut query, mut body_ranges) = (spots.query.clone(), spots.body.clone());
            for split in &spots.split_at_semicolon {
                let ranges = if split.in_query {
                    &mut query
                } else {
                    &mut body_ranges
                };
                ranges.push(split.whole.clone());
            }
            if !rest_of(&query, &body_ranges)
                .by_credential
                .contains_key(name)
            {
                let fields = spots
                    .split_at_semicolon
                    .iter()
                    .flat_map(|s| &s.fields)
                    .filter(|f| !f.is_empty())
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let fields = if fields.is_empty() {
                    "another field".to_owned()
                } else {
                    format!("field {fields}")
                };
                return Some(format!(
                    "placeholder of {name} ({sighting:?}) in {place}: the credential \
                     placeholder would also land in {fields} for servers that split \
                     at ';' (it may go only in {allowed})"
                ));
            }
        }
        let allowed = if places.is_empty() {
            "nowhere: no catalog rule or placement names a place for it".to_owned()
        } else {
            allowed
        };
        let ambiguous = if spots.ambiguous.is_empty() {
            String::new()
        } else {
            format!("; ambiguous, so not used: {}", spots.ambiguous.join(", "))
        };
        Some(format!(
            "placeholder of {name} ({sighting:?}) in {place}, outside where it may go ({allowed}{ambiguous})"
        ))
    }

    /// Replaces every exact placeholder of a credential in `granted` with its
    /// secret (encoded for where it sits: percent-encoding in the URL and
    /// form bodies, JSON escaping in JSON bodies, raw in headers and other
    /// bodies), and adds the injection headers of granted secrets. `body` is
    /// the buffered body and `complete` whether it is all of it.
    pub fn substitute(
        &self,
        granted: &dyn Fn(&str) -> bool,
        uri: &mut http::Uri,
        headers: &mut HeaderMap,
        body: &[u8],
        complete: bool,
    ) -> Result<Substituted, SubstituteError> {
        self.substitution
            .apply(&self.secrets, granted, uri, headers, body, complete)
    }

    /// Replaces echoed secrets in response header values by their placeholders.
    pub fn mask_headers(&self, headers: &mut HeaderMap) {
        if let Some(echo) = &self.echo {
            echo.mask_headers(headers);
        }
    }

    /// `text` with every secret (raw or encoded) replaced by its placeholder.
    pub fn mask_str(&self, text: &str) -> String {
        self.masked(text).into_owned()
    }

    /// [`Self::mask_str`], borrowing `text` when there is nothing to mask
    /// (no secrets in the session, or none in the text).
    pub fn masked<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match &self.echo {
            Some(echo) => echo.masked(text),
            None => Cow::Borrowed(text),
        }
    }

    /// Masks, in place, every fact of `action` read from what the sandbox
    /// sent (method, host, path, currency, merchant, recipients, subject),
    /// so that a secret the sandbox wrote into one is decided, receipted,
    /// sent in events and asked about as its placeholder. The type, the
    /// credential's name and the numbers are not sandbox text. Nothing is
    /// allocated for a fact without a secret, and nothing scanned in a
    /// session without secrets.
    pub fn mask_facts(&self, action: &mut Action) {
        let Some(echo) = &self.echo else { return };
        let mask = |text: &mut String| {
            if let Cow::Owned(masked) = echo.masked(text) {
                *text = masked;
            }
        };
        mask(&mut action.method);
        mask(&mut action.host);
        mask(&mut action.path);
        for text in [
            &mut action.currency,
            &mut action.merchant,
            &mut action.subject,
        ]
        .into_iter()
        .flatten()
        {
            mask(text);
        }
        action.recipients.iter_mut().for_each(mask);
    }

    /// A streaming filter that replaces echoed secrets in a response body.
    /// `None` when there are no secrets.
    pub fn echo_filter(&self) -> Option<EchoFilter> {
        self.echo.as_ref().map(EchoMask::filter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn store() -> SecretStore {
        SecretStore::from_toml(
            r#"
            [[secret]]
            name = "united_login"
            value = "hunter2 \"quoted\" &=+"

            [[secret]]
            name = "llm_key"
            value = "sk-live-123"
            header = "Authorization"
            format = "Bearer {}"
            hosts = ["api.openai.com"]
            "#,
        )
        .expect("parses")
    }

    #[test]
    fn secrets_never_show_in_debug_or_errors() {
        let s = store();
        let dbg = format!("{s:?}");
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("sk-live"),
            "{dbg}"
        );
        let creds = SessionCredentials::new(&s);
        assert!(!format!("{creds:?}").contains("hunter2"));
        // A syntax error in a line holding a value does not quote it.
        let err = SecretStore::from_toml("[[secret]]\nname = \"a\"\nvalue = \"topsecret\nx")
            .expect_err("bad");
        assert!(!err.to_string().contains("topsecret"), "{err}");
    }

    #[test]
    fn placeholders_are_random_per_session_and_well_formed() {
        let s = store();
        let a = SessionCredentials::new(&s).placeholders();
        let b = SessionCredentials::new(&s).placeholders();
        let p = &a["united_login"];
        assert!(p.starts_with("ocs_united_login_"), "{p}");
        assert_eq!(p.len(), "ocs_united_login_".len() + RANDOM_LEN);
        assert_ne!(a["united_login"], b["united_login"]);
    }

    #[test]
    fn scan_finds_whole_split_encoded_and_partial_placeholders() {
        let creds = SessionCredentials::new(&store());
        let p = creds.placeholders()["united_login"].clone();
        let none = HeaderMap::new();
        let found = |f: Findings| f.by_credential.get("united_login").copied();

        assert_eq!(
            found(creds.scan(&format!("/x?q={p}"), &none, b"")),
            Some((Sighting::Whole, Place::Url))
        );
        let enc: String = p.bytes().map(|b| format!("%{b:02X}")).collect();
        assert_eq!(
            found(creds.scan(&format!("/x?q={enc}"), &none, b"")),
            Some((Sighting::Whole, Place::Url))
        );
        let double = enc.replace('%', "%25");
        assert_eq!(
            found(creds.scan(&format!("/{double}"), &none, b"")),
            Some((Sighting::Whole, Place::Url))
        );
        assert_eq!(
            found(creds.scan("/", &none, p.to_uppercase().as_bytes())),
            Some((Sighting::Whole, Place::Body))
        );
        // Split across two headers: each header alone holds a piece; run
        // together they hold the whole.
        let (a, b) = p.split_at(p.len() - 10);
        let mut h = HeaderMap::new();
        h.insert("x-a", a.parse().expect("valid"));
        h.insert("x-b", b.parse().expect("valid"));
        assert_eq!(
            found(creds.scan("/", &h, b"")),
            Some((Sighting::Whole, Place::Headers))
        );
        // Only the random part, in pieces of 8 in a body: fragments.
        let random = &p["ocs_united_login_".len()..];
        let body = format!("a={}&b={}", &random[..8], &random[8..16]);
        assert_eq!(
            found(creds.scan("/", &none, body.as_bytes())),
            Some((Sighting::Fragment, Place::Body))
        );
        // Just the marker.
        assert_eq!(
            found(creds.scan("/ocs_united_login_", &none, b"")),
            Some((Sighting::Marker, Place::Url))
        );
        // Nothing here, and the other secret's placeholder is told apart.
        assert!(creds.scan("/docs_site/x", &none, b"ocs_ hello").is_empty());
        let other = creds.placeholders()["llm_key"].clone();
        let f = creds.scan("/", &none, other.as_bytes());
        assert_eq!(f.by_credential.keys().collect::<Vec<_>>(), vec!["llm_key"]);
    }

    #[test]
    fn a_placeholder_of_another_session_is_foreign_and_ours_is_not() {
        let earlier = SessionCredentials::new(&store());
        let now = SessionCredentials::new(&store());
        let none = SessionCredentials::new(&SecretStore::default());
        let old = earlier.placeholders()["llm_key"].clone();
        let ours = now.placeholders()["llm_key"].clone();
        let h = HeaderMap::new();
        let foreign = |c: &SessionCredentials, pq: &str, body: &[u8]| c.foreign(pq, &h, body);
        assert_eq!(
            foreign(&now, &format!("/x?k={old}"), b""),
            Some(("llm_key".into(), Place::Url))
        );
        // Same name in this session: its marker matches, but it is not ours.
        assert!(now
            .scan(&format!("/x?k={old}"), &h, b"")
            .by_credential
            .contains_key("llm_key"));
        // A session with no secrets at all still sees it, in any case,
        // percent-encoded, in a header or the body.
        let enc: String = old.bytes().map(|b| format!("%{b:02X}")).collect();
        assert_eq!(
            foreign(&none, &format!("/x?k={enc}"), b""),
            Some(("llm_key".into(), Place::Url))
        );
        let mut with = HeaderMap::new();
        with.insert(
            "authorization",
            format!("Bearer {}", old.to_uppercase())
                .parse()
                .expect("valid"),
        );
        assert_eq!(
            none.foreign("/", &with, b""),
            Some(("llm_key".into(), Place::Headers))
        );
        assert_eq!(
            foreign(&none, "/", format!("{{\"k\":\"{old}\"}}").as_bytes()),
            Some(("llm_key".into(), Place::Body))
        );
        // Our own placeholders, and text that only looks a little like one,
        // are not foreign.
        assert_eq!(
            foreign(&now, &format!("/x?k={ours}"), ours.as_bytes()),
            None
        );
        assert_eq!(
            foreign(&none, "/ocs_x_short?docs_site=1", b"ocs_ hello"),
            None
        );
        // A name ending in 24 letters: its own placeholder is not split
        // into a foreign one.
        let long = format!("k_{}", "a".repeat(RANDOM_LEN));
        let creds = SessionCredentials::new(
            &SecretStore::new(vec![Secret::new(&long, "v").expect("secret")]).expect("store"),
        );
        let p = creds.placeholders()[&long].clone();
        assert_eq!(creds.foreign(&format!("/{p}"), &h, b""), None);
        assert_eq!(
            none.foreign(&format!("/{p}"), &h, b""),
            Some((long.clone(), Place::Url)),
            "elsewhere it is foreign"
        );
    }

    #[test]
    fn substitution_encodes_for_each_place_and_only_granted() {
        let creds = SessionCredentials::new(&store());
        let p = creds.placeholders()["united_login"].clone();
        let k = creds.placeholders()["llm_key"].clone();
        let granted = |n: &str| n == "united_login";
        let mut uri: http::Uri = format!("/login?pw={p}&k={k}").parse().expect("uri");
        let mut headers = HeaderMap::new();
        headers.insert("x-pw", format!("pw {p}").parse().expect("valid"));
        headers.insert("content-type", "application/json".parse().expect("valid"));
        let body = format!(r#"{{"password":"{p}"}}"#);
        let out = creds
            .substitute(&granted, &mut uri, &mut headers, body.as_bytes(), true)
            .expect("substitutes");
        assert_eq!(out.replaced, vec!["united_login"]);
        assert!(out.injected.is_empty());
        assert_eq!(
            uri.to_string(),
            format!("/login?pw=hunter2%20%22quoted%22%20%26%3D%2B&k={k}")
        );
        assert_eq!(headers["x-pw"], "pw hunter2 \"quoted\" &=+");
        let new_body = out.body.expect("body replaced");
        let v: serde_json::Value = serde_json::from_slice(&new_body).expect("still JSON");
        assert_eq!(v["password"], "hunter2 \"quoted\" &=+");

        // Form body.
        let mut uri: http::Uri = "/login".parse().expect("uri");
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            "application/x-www-form-urlencoded".parse().expect("valid"),
        );
        let body = format!("user=a&pw={p}");
        let out = creds
            .substitute(&granted, &mut uri, &mut headers, body.as_bytes(), true)
            .expect("substitutes");
        let new_body = out.body.expect("replaced");
        let pw: Vec<_> = form_urlencoded::parse(&new_body)
            .filter(|(k, _)| k == "pw")
            .collect();
        assert_eq!(pw[0].1, "hunter2 \"quoted\" &=+");

        // Placeholder in an over-cap body cannot be substituted: an error.
        let err = creds
            .substitute(&granted, &mut uri, &mut headers, body.as_bytes(), false)
            .expect_err("over cap");
        assert_eq!(err, SubstituteError::BodyNotBuffered("united_login".into()));
    }

    #[test]
    fn header_injection_only_when_granted_and_allowed_by_file() {
        let creds = SessionCredentials::new(&store());
        let host = |h: &str| Host::parse(h).expect("host");
        assert!(creds.file_allows("llm_key", &host("API.openai.com.")));
        assert!(!creds.file_allows("llm_key", &host("evil.example")));
        assert!(creds.file_allows("united_login", &host("anything.example")));
        let mut uri: http::Uri = "/v1/chat/completions".parse().expect("uri");
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer fake".parse().expect("valid"));
        let out = creds
            .substitute(&|n| n == "llm_key", &mut uri, &mut headers, b"", true)
            .expect("ok");
        assert_eq!(out.injected, vec!["llm_key"]);
        assert_eq!(headers["authorization"], "Bearer sk-live-123");
        let mut headers = HeaderMap::new();
        let out = creds
            .substitute(&|_| false, &mut uri, &mut headers, b"", true)
            .expect("ok");
        assert!(out.injected.is_empty() && headers.is_empty());
    }

    #[test]
    fn facts_holding_a_secret_are_masked_and_others_left_as_they_are() {
        let creds = SessionCredentials::new(&store());
        let p = creds.placeholders()["llm_key"].clone();
        let mut a = Action::request(
            capabilities::ActionType::Email,
            "SK-LIVE-123",
            "sk-live-123.evil.example",
            "/u/sk-live-123",
        );
        a.subject = Some("re: sk-live-123".into());
        a.merchant = Some("m sk%2Dlive%2D123".into());
        a.currency = Some("USD".into());
        a.recipients = vec!["a@example.com".into(), "sk-live-123@x.example".into()];
        a.credential = Some("llm_key".into());
        creds.mask_facts(&mut a);
        assert_eq!(a.method, p);
        assert_eq!(a.host, format!("{p}.evil.example"));
        assert_eq!(a.path, format!("/u/{p}"));
        assert_eq!(a.subject, Some(format!("re: {p}")));
        assert_eq!(a.merchant, Some(format!("m {p}")));
        assert_eq!(a.currency.as_deref(), Some("USD"));
        assert_eq!(
            a.recipients,
            ["a@example.com".to_owned(), format!("{p}@x.example")]
        );
        assert_eq!(a.credential.as_deref(), Some("llm_key"));
        // Text without a secret is not copied.
        assert!(matches!(creds.masked("/search/flights"), Cow::Borrowed(_)));
        let none = SessionCredentials::new(&SecretStore::default());
        assert!(matches!(none.masked("/u/sk-live-123"), Cow::Borrowed(_)));
    }

    #[test]
    fn echoed_secrets_are_masked_across_chunk_boundaries() {
        let creds = Arc::new(SessionCredentials::new(&store()));
        let p = creds.placeholders()["llm_key"].clone();
        let body = b"{\"echo\":\"sk-live-123\",\"again\":\"sk-live-123\"}";
        for split in 0..body.len() {
            let mut f = creds.echo_filter().expect("filter");
            let mut out = Vec::new();
            out.extend_from_slice(&f.push(&body[..split]));
            out.extend_from_slice(&f.push(&body[split..]));
            out.extend_from_slice(&f.finish());
            let text = String::from_utf8(out).expect("utf8");
            assert_eq!(
                text,
                format!("{{\"echo\":\"{p}\",\"again\":\"{p}\"}}"),
                "split {split}"
            );
        }
        // JSON-escaped echo of the password is masked too.
        let mut f = creds.echo_filter().expect("filter");
        let mut out = f.push(br#"{"pw":"hunter2 \"quoted\" &=+"}"#).to_vec();
        out.extend_from_slice(&f.finish());
        assert!(!String::from_utf8_lossy(&out).contains("hunter2"));
        let mut h = HeaderMap::new();
        h.insert(
            "set-cookie",
            "t=sk-live-123; Path=/".parse().expect("valid"),
        );
        creds.mask_headers(&mut h);
        assert_eq!(creds.mask_str("/u/sk-live-123?x"), format!("/u/{p}?x"));
        assert_eq!(h["set-cookie"], format!("t={p}; Path=/").as_str());
    }
}
