//! The service catalog: which requests are payments, emails, logins or LLM
//! calls, and where in the request their facts (amount, recipients, ...) live.
//! Everything the catalog does not name is `web`. Format: `docs/catalog.md`.

/// Exact decimals for amounts and prices.
mod decimal;
/// Why a catalog or a request could not be read.
mod error;
/// Reading a matched request's facts.
mod extract;
/// The catalog file's schema.
mod file;
/// Form and query bodies, and reading one form field.
mod form;
/// Exact JSON-pointer lookups.
mod json;
/// Built-in LLM endpoints and the deprecated `[[llm_price]]` table.
mod llm;
/// Body formats from the `Content-Type`.
mod media;
/// Fields servers read from the query and the body together.
mod merged;
/// Method overrides naming another method: refused.
mod method;
/// The strict multipart/form-data reader.
mod multipart;
/// Field names as lenient servers compare them.
mod names;
/// Host and path patterns.
mod pattern;
/// One validated rule.
mod rule;

use std::path::Path;

use capabilities::{check_path, Action, ActionType, PathError};

pub use decimal::decimal_to_scaled;
pub use error::{CatalogError, ClassifyError};
pub use extract::RequestView;
pub use file::{AmountUnit, Field, RuleKind};
pub use json::{lookup as json_lookup, JsonLeaf};
pub use llm::LlmPrice;
pub use rule::Rule;

pub(crate) use media::MediaType;

use file::CatalogFile;
use rule::Extract;

/// Default cap on the body bytes read to classify a request (64 KiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

/// Default cap on the body bytes read of a request that must be read whole
/// (16 MiB): an LLM call is metered only when its whole JSON body is read
/// (coding and RAG agents send prompts of hundreds of KiB), and a `POST`
/// whose body could name `_method` anywhere (a JSON document, a file
/// upload) is checked whole.
pub const DEFAULT_MAX_WHOLE_BODY_BYTES: usize = 16 * 1024 * 1024;

/// LLM APIs opened as WebSockets (OpenAI's Realtime API), on any host, as
/// the built-in LLM rules are; the built-in HTTP paths count too (OpenAI's
/// Responses API also runs over a WebSocket at `/v1/responses`).
const LLM_WEBSOCKET_PATHS: [&str; 1] = ["/**/v1/realtime"];

/// A loaded service catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    rules: Vec<Rule>,
    max_body_bytes: usize,
    /// The cap on bodies read whole, and the catalog key that set it (the
    /// key a refusal names, so it reads as the operator wrote it).
    whole_body: BodyCap,
    prices: Vec<LlmPrice>,
}

/// A cap on the body bytes read, and the catalog setting it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyCap {
    pub bytes: usize,
    pub setting: &'static str,
}

impl std::fmt::Display for BodyCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.setting == "max_body_bytes" {
            "classification cap"
        } else {
            "cap"
        };
        write!(f, "{}-byte {what} ({})", self.bytes, self.setting)
    }
}

/// The catalog rule (if any) a request falls under; say whether the body must
/// be read before [`Matched::classify`] can run.
#[derive(Debug, Clone)]
pub struct Matched<'c> {
    rule: Option<&'c Rule>,
    /// The path is refused outright (`capabilities::check_path`), whatever
    /// rule it might have matched.
    refused: Option<ClassifyError>,
    max_body_bytes: usize,
    /// How far a content-encoded body is decoded to check it: the
    /// classification cap, or the cap on bodies read whole when the gate
    /// read it under a large-body read permit ([`Matched::read_whole`]).
    decode_cap: BodyCap,
    whole_body: BodyCap,
}

impl Catalog {
    /// A catalog with only the built-in LLM rules.
    pub fn builtin() -> Self {
        Self::from_file(CatalogFile {
            max_body_bytes: None,
            max_whole_body_bytes: None,
            max_llm_body_bytes: None,
            builtin_llm: true,
            rule: Vec::new(),
            llm_price: Vec::new(),
        })
        .expect("the built-in rules are valid")
    }

    /// The file's deprecated `[[llm_price]]` entries (the rate card reads
    /// them, `metering::RateCard::with_legacy_prices`).
    pub fn llm_prices(&self) -> &[LlmPrice] {
        &self.prices
    }

    /// Parses a catalog from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, CatalogError> {
        Self::from_file(toml::from_str(text)?)
    }

    /// Reads and parses a catalog file.
    pub fn load(path: &Path) -> Result<Self, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    fn from_file(file: CatalogFile) -> Result<Self, CatalogError> {
        let mut rules = file
            .rule
            .into_iter()
            .map(Rule::from_file)
            .collect::<Result<Vec<_>, _>>()?;
        if file.builtin_llm {
            for rule in llm::builtin_rules() {
                rules.push(Rule::from_file(rule)?);
            }
        }
        let prices = llm::prices(file.llm_price)?;
        let max_body_bytes = file.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes == 0 {
            return Err(CatalogError::Rule {
                rule: "max_body_bytes".into(),
                problem: "must be positive".into(),
            });
        }
        // Unset, it is never below `max_body_bytes` (a catalog that raised
        // only that one keeps loading); set, it must not be.
        let (whole, setting) = match (file.max_whole_body_bytes, file.max_llm_body_bytes) {
            (Some(_), Some(_)) => {
                return Err(CatalogError::Rule {
                    rule: "max_whole_body_bytes".into(),
                    problem: "set with max_llm_body_bytes, its older name: keep one".into(),
                })
            }
            (Some(n), None) => (Some(n), "max_whole_body_bytes"),
            (None, Some(n)) => (Some(n), "max_llm_body_bytes"),
            (None, None) => (None, "max_whole_body_bytes"),
        };
        let bytes = match whole {
            None => DEFAULT_MAX_WHOLE_BODY_BYTES.max(max_body_bytes),
            Some(0) => {
                return Err(CatalogError::Rule {
                    rule: setting.into(),
                    problem: "must be positive".into(),
                })
            }
            Some(n) if n < max_body_bytes => {
                return Err(CatalogError::Rule {
                    rule: setting.into(),
                    problem: format!(
                        "{n} is below max_body_bytes ({max_body_bytes}): a body read whole \
                         is read at least as far as any other"
                    ),
                })
            }
            Some(n) => n,
        };
        Ok(Catalog {
            rules,
            max_body_bytes,
            whole_body: BodyCap { bytes, setting },
            prices,
        })
    }

    /// The cap on body bytes read for classification.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// The cap on body bytes read of a request that must be read whole
    /// ([`Self::reads_whole`]), and the setting it comes from
    /// (`max_whole_body_bytes`, or its older name `max_llm_body_bytes`).
    pub fn max_whole_body(&self) -> BodyCap {
        self.whole_body
    }

    /// Whether a request with this head (method, host, path, headers; no
    /// body) goes to an LLM endpoint the catalog knows: a built-in or a
    /// `type = "llm"` rule matches it.
    pub fn is_llm_endpoint(&self, req: &RequestView<'_>) -> bool {
        self.match_request(req).rule().and_then(Rule::kind) == Some(ActionType::Llm)
    }

    /// Whether a request body must be read whole to be checked, read on
    /// past [`Self::max_body_bytes`] up to [`Self::max_whole_body`]
    /// (`prefix` is what was read, all of it when `complete`): an LLM call
    /// (metered from its whole body), a rule's body fields, and a `POST`
    /// whose unread rest could name `_method` for a server (`method.rs`).
    /// A complete body is read whole already; one that is content-encoded
    /// and could name `_method` is decoded past `max_body_bytes`, so it is
    /// one too (its decoded size is not known until it is decoded).
    pub fn reads_whole(&self, req: &RequestView<'_>, prefix: &[u8], complete: bool) -> bool {
        if complete {
            return !prefix.is_empty() && method::decoded_for_override(req);
        }
        let matched = self.match_request(req);
        matched.needs_body()
            || matched.rule().and_then(Rule::kind) == Some(ActionType::Llm)
            || method::rest_may_override(req, prefix)
    }

    /// The rules in match order (catalog rules first, then built-ins).
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// What a WebSocket to this host and path would open, whatever its
    /// method: the kind and name of the first rule covering it that reads
    /// more than web access (a payment, email, login or LLM endpoint), or a
    /// known LLM WebSocket path. `None`: nothing the catalog reads.
    pub fn websocket_endpoint(&self, req: &RequestView<'_>) -> Option<(ActionType, String)> {
        let readings = pattern::request_readings(req.path_and_query);
        if let Some((kind, rule)) = self
            .rules
            .iter()
            .filter(|r| r.covers(req.host, &readings))
            .find_map(|r| r.kind().map(|k| (k, r.name().to_owned())))
        {
            return Some((kind, rule));
        }
        LLM_WEBSOCKET_PATHS
            .iter()
            .filter_map(|p| pattern::PathPattern::parse(p).ok())
            .any(|p| p.matches(&readings))
            .then(|| (ActionType::Llm, "built-in llm websocket".to_owned()))
    }

    /// Finds the first rule a request falls under, matching its path as
    /// servers route it (every reading, `pattern.rs`). A path spelled so
    /// that some server routes it elsewhere is refused outright; an encoded
    /// slash is not (it is routed as `/` here, so a payment stays a payment,
    /// and the token refuses it).
    pub fn match_request<'c>(&'c self, req: &RequestView<'_>) -> Matched<'c> {
        let refused = match check_path(req.path_and_query) {
            Ok(()) | Err(PathError::EncodedSlash) => None,
            Err(e) => Some(ClassifyError::Path(e)),
        };
        let rule = if refused.is_some() {
            None
        } else {
            let readings = pattern::request_readings(req.path_and_query);
            // A rule matches if the request method or an override header
            // names it, so the refusal of an override ([`Matched::classify`]) names
            // the rule the server may run.
            let mut methods = vec![req.method.trim().to_ascii_uppercase()];
            for (name, _) in method::HEADERS {
                for v in req.headers.get_all(name) {
                    if let Ok(v) = v.to_str() {
                        methods.push(v.trim().to_ascii_uppercase());
                    }
                }
            }
            self.rules
                .iter()
                .find(|r| r.matches(&methods, req.host, &readings))
        };
        Matched {
            rule,
            refused,
            max_body_bytes: self.max_body_bytes,
            decode_cap: BodyCap {
                bytes: self.max_body_bytes,
                setting: "max_body_bytes",
            },
            whole_body: self.whole_body,
        }
    }
}

impl<'c> Matched<'c> {
    /// The rule matched, if any (`None` means plain web access).
    pub fn rule(&self) -> Option<&'c Rule> {
        self.rule
    }

    /// Whether [`Matched::classify`] needs the body.
    pub fn needs_body(&self) -> bool {
        self.rule.is_some_and(Rule::needs_body)
    }

    /// Whether an LLM rule matched (its body is read when available, to
    /// estimate cost).
    pub fn wants_body(&self) -> bool {
        self.needs_body() || self.rule.is_some_and(|r| matches!(r.extract, Extract::Llm))
    }

    /// The body cap in force.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// Says the body was read whole under a large-body read permit
    /// ([`Catalog::reads_whole`]): a content-encoded one is then decoded up
    /// to the cap on bodies read whole, not `max_body_bytes`, to check it.
    pub fn read_whole(mut self) -> Self {
        self.decode_cap = self.whole_body;
        self
    }

    /// Builds the action. `body` is the request body as read, `None` when it
    /// was not read; `complete` says whether it is the whole body (false when
    /// the cap cut it).
    pub fn classify(
        &self,
        req: &RequestView<'_>,
        body: Option<&[u8]>,
        complete: bool,
    ) -> Result<Action, ClassifyError> {
        if let Some(refused) = &self.refused {
            return Err(refused.clone());
        }
        // A rule's facts past the cap or in an encoded body are not read:
        // said as such, before the override check, which would refuse the
        // same body for what it might say unread.
        if self.rule.is_some_and(Rule::needs_body) {
            if !complete {
                return Err(ClassifyError::BodyTooLarge {
                    limit: self.max_body_bytes,
                });
            }
            media::check_identity_encoding(req.headers)?;
        }
        // So are the rule's fields named on both sides (or a body that
        // cannot be read to tell).
        if let Some(rule) = self.rule {
            merged::check(&rule.extract, req, body.unwrap_or(&[]), complete)?;
        }
        // Before the facts: which method the action is must be certain.
        method::check(req, body, complete, self.decode_cap)?;
        let path = req
            .path_and_query
            .split(['?', '#'])
            .next()
            .filter(|p| !p.is_empty())
            .unwrap_or("/")
            .to_owned();
        let mut action = Action {
            kind: ActionType::Web,
            method: req.method.to_ascii_uppercase(),
            host: req.host.as_str().to_owned(),
            path,
            amount_cents: None,
            currency: None,
            merchant: None,
            recipients: Vec::new(),
            subject: None,
            credential: None,
            cost_micro_usd: None,
        };
        let Some(rule) = self.rule else {
            return Ok(action);
        };
        action.credential = rule.credential.clone();
        extract::read_facts(&mut action, &rule.extract, req, body)?;
        Ok(action)
    }
}

#[cfg(test)]
mod tests {
    use capabilities::Host;
    use http::HeaderMap;

    use super::*;

    const FLIGHT: &str = include_str!("../../../examples/flight-booking/catalog.toml");

    fn view<'a>(
        method: &'a str,
        host: &str,
        path: &'a str,
        headers: &'a HeaderMap,
    ) -> RequestView<'a> {
        // A test's hosts live as long as the test binary.
        let host: &'static Host = Box::leak(Box::new(Host::parse(host).expect("test host")));
        RequestView {
            method,
            host,
            path_and_query: path,
            headers,
        }
    }

    /// A request saying its body is JSON.
    fn json_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().expect("valid"));
        headers
    }

    fn classify(
        cat: &Catalog,
        method: &str,
        host: &str,
        path: &str,
        body: &str,
    ) -> Result<Action, ClassifyError> {
        let headers = json_headers();
        let v = view(method, host, path, &headers);
        cat.match_request(&v)
            .classify(&v, Some(body.as_bytes()), true)
    }

    /// A form body that is also valid JSON (at any depth) is refused: a
    /// handler decoding JSON whatever the type reads it otherwise.
    #[test]
    fn a_form_body_that_is_also_json_is_refused() {
        let cat = Catalog::from_toml(
            r#"
            [[rule]]
            host = "shop.example"
            path = "/pay"
            type = "payment"
            amount = { form = "amount" }
            "#,
        )
        .expect("catalog");
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            "application/x-www-form-urlencoded".parse().expect("valid"),
        );
        let v = view("POST", "shop.example", "/pay", &headers);
        let deep = format!(
            r#"{{"amount":900,"x":{}"&amount=1&"{}}}"#,
            "[".repeat(300),
            "]".repeat(300)
        );
        for body in [r#"{"amount":900,"x":"&amount=1&"}"#, deep.as_str()] {
            let err = cat
                .match_request(&v)
                .classify(&v, Some(body.as_bytes()), true)
                .expect_err("refused");
            assert!(err.to_string().contains("also valid JSON"), "{err}");
        }
        let a = cat
            .match_request(&v)
            .classify(&v, Some(b"amount=1&x=%7B%7D"), true)
            .expect("a plain form");
        assert_eq!(a.amount_cents, Some(100));
    }

    #[test]
    fn flight_catalog_classifies_purchase_login_email_and_web() {
        let cat = Catalog::from_toml(FLIGHT).expect("example catalog parses");
        let a = classify(
            &cat,
            "POST",
            "united.com",
            "/api/booking/purchase",
            r#"{"flight":"UA 123","total":"487.00","currency":"usd"}"#,
        )
        .expect("purchase classifies");
        assert_eq!(a.kind, ActionType::Payment);
        assert_eq!(a.amount_cents, Some(48700));
        assert_eq!(a.currency.as_deref(), Some("USD"));
        assert_eq!(a.merchant.as_deref(), Some("united.com"));
        // A JSON number works too, exactly.
        let a = classify(
            &cat,
            "POST",
            "united.com",
            "/api/booking/purchase",
            r#"{"total":700.10,"currency":"USD"}"#,
        )
        .expect("numeric total");
        assert_eq!(a.amount_cents, Some(70010));

        let a = classify(
            &cat,
            "POST",
            "united.com",
            "/api/auth/login",
            r#"{"user":"a","password":"ocs_x"}"#,
        )
        .expect("login classifies");
        assert_eq!(a.kind, ActionType::Login);
        assert_eq!(a.credential.as_deref(), Some("united_login"));

        let a = classify(
            &cat,
            "POST",
            "api.mail.example",
            "/v1/send",
            r#"{"to":["me@example.com"],"cc":"x@y.z, w@v.u","subject":"Your flight confirmation"}"#,
        )
        .expect("email classifies");
        assert_eq!(a.kind, ActionType::Email);
        assert_eq!(a.recipients, vec!["me@example.com", "x@y.z", "w@v.u"]);
        assert_eq!(a.subject.as_deref(), Some("Your flight confirmation"));

        let a = classify(
            &cat,
            "GET",
            "google.com",
            "/travel/flights/search?q=SFO",
            "",
        )
        .expect("web");
        assert_eq!(a.kind, ActionType::Web);
        assert_eq!(a.path, "/travel/flights/search");
    }

    #[test]
    fn purchase_path_tricks_still_match_the_payment_rule() {
        let cat = Catalog::from_toml(FLIGHT).expect("example catalog parses");
        let body = r#"{"total":"1.00","currency":"USD"}"#;
        for path in [
            "/api/booking/purchase",
            "/api/booking/purchase/",
            "//api//booking/purchase",
            "/API/Booking/Purchase",
            "/api/booking/%70urchase",
            "/api/booking%2Fpurchase",
            "/api/booking%252Fpurchase",
            "/api/booking/purchase;jsessionid=1",
            "/api/booking/purchase?x=1",
        ] {
            let a = classify(&cat, "POST", "United.COM.", path, body).expect(path);
            assert_eq!(a.kind, ActionType::Payment, "{path}");
        }
        // Dot segments (which once resolved to the purchase here) are now
        // refused outright: servers resolve them differently.
        assert_eq!(
            classify(
                &cat,
                "POST",
                "united.com",
                "/api/x/../booking/./purchase",
                body
            ),
            Err(ClassifyError::Path(PathError::DotSegment))
        );
        // Method override headers count too: the rule matches, and the
        // request is refused, since the server may run either method.
        let mut headers = HeaderMap::new();
        headers.insert("x-http-method-override", "POST".parse().expect("valid"));
        let v = view("GET", "united.com", "/api/booking/purchase", &headers);
        let m = cat.match_request(&v);
        assert!(m.needs_body());
        assert_eq!(
            m.classify(&v, Some(body.as_bytes()), true),
            Err(ClassifyError::MethodOverride {
                method: "GET".into(),
                requested: "POST".into(),
                via: "X-HTTP-Method-Override".into()
            })
        );
        // Another host with the same path is not united's purchase.
        let a = classify(
            &cat,
            "POST",
            "evilunited.com",
            "/api/booking/purchase",
            body,
        )
        .expect("web");
        assert_eq!(a.kind, ActionType::Web);
    }

    #[test]
    fn unreadable_payment_bodies_block_instead_of_guessing() {
        let cat = Catalog::from_toml(FLIGHT).expect("example catalog parses");
        let p = "/api/booking/purchase";
        assert_eq!(
            classify(&cat, "POST", "united.com", p, r#"{"currency":"USD"}"#),
            Err(ClassifyError::MissingField("json /total".into()))
        );
        assert_eq!(
            classify(
                &cat,
                "POST",
                "united.com",
                p,
                r#"{"total":"1.00","total":"900.00","currency":"USD"}"#
            ),
            Err(ClassifyError::DuplicateField("/total".into()))
        );
        assert_eq!(
            classify(
                &cat,
                "POST",
                "united.com",
                p,
                r#"{"total":"1.005","currency":"USD"}"#
            ),
            Err(ClassifyError::BadAmount("1.005".into()))
        );
        assert_eq!(
            classify(&cat, "POST", "united.com", p, r#"{"total":"1.00""#),
            Err(ClassifyError::BadJson)
        );
        assert_eq!(
            classify(&cat, "POST", "united.com", p, "total=1.00"),
            Err(ClassifyError::BadJson)
        );
        let headers = HeaderMap::new();
        let v = view("POST", "united.com", p, &headers);
        let m = cat.match_request(&v);
        assert!(m.needs_body());
        assert_eq!(
            m.classify(&v, Some(b"{\"total\":"), false),
            Err(ClassifyError::BodyTooLarge {
                limit: DEFAULT_MAX_BODY_BYTES
            })
        );
        let mut gz = HeaderMap::new();
        gz.insert("content-encoding", "gzip".parse().expect("valid"));
        let v = view("POST", "united.com", p, &gz);
        assert_eq!(
            cat.match_request(&v).classify(&v, Some(b"{}"), true),
            Err(ClassifyError::BodyEncoded("gzip".into()))
        );
        // An email with no readable recipient is blocked, not sent unchecked.
        assert_eq!(
            classify(
                &cat,
                "POST",
                "api.mail.example",
                "/v1/send",
                r#"{"subject":"hi"}"#
            ),
            Err(ClassifyError::NoRecipients)
        );
    }

    #[test]
    fn form_query_header_and_minor_units() {
        let cat = Catalog::from_toml(
            r#"
            max_body_bytes = 1024
            [[rule]]
            host = "*.shop.example"
            method = "post"
            path = "/pay/*/go/**"
            type = "payment"
            amount = { form = "amount_cents" }
            amount_unit = "minor"
            currency = { query = "cur" }
            merchant = { header = "x-merchant" }
            "#,
        )
        .expect("parses");
        assert_eq!(cat.max_body_bytes(), 1024);
        let mut headers = HeaderMap::new();
        headers.insert("x-merchant", "Shop.Example".parse().expect("valid"));
        headers.insert(
            "content-type",
            "application/x-www-form-urlencoded".parse().expect("valid"),
        );
        let v = view(
            "POST",
            "a.shop.example",
            "/pay/123/go/now/please?cur=eur",
            &headers,
        );
        let a = cat
            .match_request(&v)
            .classify(&v, Some(b"item=1&amount_cents=1999"), true)
            .expect("classifies");
        assert_eq!(
            (a.amount_cents, a.currency.as_deref(), a.merchant.as_deref()),
            (Some(1999), Some("EUR"), Some("shop.example"))
        );
        // `*.shop.example` does not match the bare domain or a lookalike.
        for host in ["shop.example", "evilshop.example", "shop.example.evil"] {
            let v = view("POST", host, "/pay/1/go", &headers);
            assert!(cat.match_request(&v).rule().is_none(), "{host}");
        }
        let v = view("POST", "a.shop.example", "/pay/go", &headers);
        assert!(cat.match_request(&v).rule().is_none());
    }

    #[test]
    fn bad_catalogs_are_refused() {
        for (text, why) in [
            (
                "[[rule]]\nhost='a'\npath='/x'\ntype='payment'\n",
                "needs `amount`",
            ),
            (
                "[[rule]]\nhost='a'\npath='/x'\ntype='email'\n",
                "needs `recipients`",
            ),
            (
                "[[rule]]\nhost='a'\npath='/x'\ntype='login'\n",
                "needs `credential`",
            ),
            (
                "[[rule]]\nhost='a'\npath='x'\ntype='web'\n",
                "must start with /",
            ),
            (
                "[[rule]]\nhost='a'\npath='/x'\ntype='web'\namount={json='/a'}\n",
                "does not apply",
            ),
            ("[[rule]]\nhost='a*'\npath='/x'\ntype='web'\n", "bad host"),
            (
                "[[rule]]\nhost='a'\npath='/a/**/x'\ntype='web'\n",
                "** only",
            ),
            (
                "[[rule]]\nhost='a'\npath='/x'\ntype='web'\nbogus=1\n",
                "unknown field",
            ),
            ("max_body_bytes = 0\n", "positive"),
            ("max_llm_body_bytes = 0\n", "positive"),
            ("max_whole_body_bytes = 0\n", "positive"),
            (
                "max_body_bytes = 2048\nmax_llm_body_bytes = 1024\n",
                "1024 is below max_body_bytes (2048)",
            ),
            (
                "max_body_bytes = 2048\nmax_whole_body_bytes = 1024\n",
                "max_whole_body_bytes: 1024 is below max_body_bytes (2048)",
            ),
            (
                "max_whole_body_bytes = 100000\nmax_llm_body_bytes = 100000\n",
                "its older name",
            ),
        ] {
            let err = Catalog::from_toml(text).expect_err(text).to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn bodies_read_whole_have_their_own_cap() {
        let cat = Catalog::builtin();
        assert_eq!(
            cat.max_whole_body(),
            BodyCap {
                bytes: DEFAULT_MAX_WHOLE_BODY_BYTES,
                setting: "max_whole_body_bytes"
            }
        );
        // Its older name still loads, and a refusal names the key written.
        for key in ["max_whole_body_bytes", "max_llm_body_bytes"] {
            let cat = Catalog::from_toml(&format!("{key} = 100000\n")).expect("parses");
            assert_eq!(cat.max_body_bytes(), DEFAULT_MAX_BODY_BYTES);
            assert_eq!(
                cat.max_whole_body().to_string(),
                format!("100000-byte cap ({key})")
            );
        }
        // Raising only max_body_bytes past the default whole cap raises both.
        let big = 2 * DEFAULT_MAX_WHOLE_BODY_BYTES;
        let cat = Catalog::from_toml(&format!("max_body_bytes = {big}\n")).expect("parses");
        assert_eq!(cat.max_whole_body().bytes, big);
        // The head alone tells an LLM endpoint: built-in or `type = "llm"`.
        let cat = Catalog::from_toml(
            r#"
            [[rule]]
            host = "llm.internal.example"
            path = "/generate"
            type = "llm"
            "#,
        )
        .expect("parses");
        let headers = HeaderMap::new();
        for (host, path, llm) in [
            ("api.openai.com", "/v1/chat/completions", true),
            ("llm.internal.example", "/generate", true),
            ("llm.internal.example", "/other", false),
            ("api.openai.com", "/v1/files", false),
        ] {
            let v = view("POST", host, path, &headers);
            assert_eq!(cat.is_llm_endpoint(&v), llm, "{host}{path}");
        }
        // Read whole: an LLM call, a rule's body fields, and a `POST` whose
        // rest could name `_method` (when cut), or one decoded to check it
        // (when complete).
        let cat = Catalog::from_toml(FLIGHT).expect("parses");
        let typed = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.append(*n, v.parse().expect("valid"));
            }
            h
        };
        let json = typed(&[("content-type", "application/json")]);
        let form_gz = typed(&[
            ("content-type", "application/x-www-form-urlencoded"),
            ("content-encoding", "gzip"),
        ]);
        let png_gz = typed(&[("content-type", "image/png"), ("content-encoding", "gzip")]);
        let octets = typed(&[("content-type", "application/octet-stream")]);
        let none = HeaderMap::new();
        for (method, host, path, headers, prefix, complete, whole) in [
            (
                "POST",
                "api.openai.com",
                "/v1/chat/completions",
                &octets,
                "x",
                false,
                true,
            ),
            // The rule reads its body: read whole whatever it starts with.
            (
                "POST",
                "united.com",
                "/api/booking/purchase",
                &json,
                "[",
                false,
                true,
            ),
            ("POST", "kayak.com", "/docs", &json, " {\"a\"", false, true),
            ("POST", "kayak.com", "/docs", &none, "a=1", false, true),
            ("POST", "kayak.com", "/docs", &json, "[1", false, false),
            ("POST", "kayak.com", "/docs", &octets, "{", false, false),
            ("PUT", "kayak.com", "/docs", &json, "{", false, false),
            ("POST", "kayak.com", "/docs", &form_gz, "\u{1f}", true, true),
            ("POST", "kayak.com", "/docs", &png_gz, "\u{1f}", true, false),
            ("POST", "kayak.com", "/docs", &json, "{}", true, false),
            ("POST", "kayak.com", "/docs", &form_gz, "", true, false),
        ] {
            let v = view(method, host, path, headers);
            assert_eq!(
                cat.reads_whole(&v, prefix.as_bytes(), complete),
                whole,
                "{method} {host}{path} {headers:?} {prefix:?} {complete}"
            );
        }
    }

    #[test]
    fn builtin_llm_endpoints() {
        let cat = Catalog::from_toml(
            r#"
            [[llm_price]]
            model = "gpt-test"
            input_usd_per_mtok = "2.50"
            output_usd_per_mtok = "10"
            "#,
        )
        .expect("parses");
        let body = r#"{"model":"gpt-test","max_tokens":1000,"messages":[]}"#;
        let a =
            classify(&cat, "POST", "api.openai.com", "/v1/chat/completions", body).expect("llm");
        assert_eq!(a.kind, ActionType::Llm);
        // The cost is metering's worst case (`metering/plan.rs` tests it),
        // not the catalog's; the prices stay readable for the rate card.
        assert_eq!(a.cost_micro_usd, None);
        assert_eq!(cat.llm_prices()[0].output_micro_usd_per_mtok, 10_000_000);
        let a = classify(
            &cat,
            "POST",
            "api.anthropic.com",
            "/v1/messages",
            r#"{"model":"other"}"#,
        )
        .expect("llm");
        assert_eq!((a.kind, a.cost_micro_usd), (ActionType::Llm, None));
        let a = classify(&cat, "GET", "api.anthropic.com", "/v1/messages", "").expect("web");
        assert_eq!(a.kind, ActionType::Web);
        // Under a gateway's prefix, as metering reads the shape.
        for (host, path) in [
            ("openrouter.ai", "/api/v1/chat/completions"),
            (
                "x.openai.azure.com",
                "/openai/deployments/gpt/chat/completions?api-version=2024-10-21",
            ),
            ("gateway.example", "/team/a/v1/messages"),
            ("gateway.example", "/llm/v1/embeddings"),
        ] {
            let a = classify(&cat, "POST", host, path, body).expect("llm");
            assert_eq!(a.kind, ActionType::Llm, "{host}{path}");
        }
        // Paths that only end like one stay web.
        for path in ["/api/v10/channels/1/messages", "/forms/1/responses"] {
            let a = classify(&cat, "POST", "chat.example", path, "{}").expect("web");
            assert_eq!(a.kind, ActionType::Web, "{path}");
        }
        let off = Catalog::from_toml("builtin_llm = false").expect("parses");
        let a =
            classify(&off, "POST", "api.openai.com", "/v1/chat/completions", body).expect("web");
        assert_eq!(a.kind, ActionType::Web);
    }

    /// Hosts are read by the one `Host` reading; where the catalog used to
    /// be more lenient (a `:port` dropped from a rule's host or from a
    /// merchant read from the request), it now refuses: fail closed.
    #[test]
    fn rule_hosts_and_merchants_are_hosts() {
        let err = Catalog::from_toml("[[rule]]\nhost='united.com:443'\npath='/x'\ntype='web'\n")
            .expect_err("a port is not part of a host")
            .to_string();
        assert!(err.contains("bad host"), "{err}");
        let cat = Catalog::from_toml(
            r#"
            [[rule]]
            host = " United.COM. "
            path = "/pay"
            type = "payment"
            amount = { json = "/total" }
            merchant = { header = "x-merchant" }
            "#,
        )
        .expect("parses");
        let mut headers = json_headers();
        headers.insert("x-merchant", " Shop.Example. ".parse().expect("valid"));
        let v = view("POST", "united.com", "/pay", &headers);
        let a = cat
            .match_request(&v)
            .classify(&v, Some(br#"{"total":"1.00"}"#), true)
            .expect("classifies");
        assert_eq!(a.merchant.as_deref(), Some("shop.example"));
        for bad in ["shop.example:443", "[::1]", "Shop Example"] {
            let mut headers = json_headers();
            headers.insert("x-merchant", bad.parse().expect("valid"));
            let v = view("POST", "united.com", "/pay", &headers);
            assert_eq!(
                cat.match_request(&v)
                    .classify(&v, Some(br#"{"total":"1.00"}"#), true),
                Err(ClassifyError::BadField {
                    field: "header x-merchant".into(),
                    problem: "not a host name".into()
                }),
                "{bad}"
            );
        }
    }
}
