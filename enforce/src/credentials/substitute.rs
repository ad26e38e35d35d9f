//! Substitution: a granted credential's exact placeholders replaced by its
//! secret, written the way the place it sits in expects (URL, header, JSON
//! or form body), and header injections added, all computed on copies so a
//! request whose credentials cannot be placed is refused unchanged.

use aho_corasick::AhoCorasick;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

use super::encode::{json_escaped, percent_encoded, uri_encoded};
use super::finder::build;
use super::placement::{body_content_type, is_form, is_json};
use super::store::Secret;

/// Why a granted substitution could not be made (the request is blocked).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubstituteError {
    #[error("credential {0} cannot be placed in a header (invalid header bytes)")]
    BadHeader(String),
    #[error("credential {0} is in a body over the inspection cap, where it cannot be substituted")]
    BodyNotBuffered(String),
    #[error("credential {0}: the request URL would not be valid after substitution")]
    BadUri(String),
}

/// What [`SessionCredentials::substitute`] did, by credential name (never values).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Substituted {
    /// Placeholders replaced by their secret.
    pub replaced: Vec<String>,
    /// Headers added without a placeholder.
    pub injected: Vec<String>,
    /// The new body, when a placeholder in it was replaced.
    pub body: Option<Bytes>,
}

/// The exact finder over one session's whole placeholders (what gets
/// substituted; pieces and markers are only ever refused).
pub(super) struct Substitution {
    exact: Option<AhoCorasick>,
}

impl Substitution {
    /// `placeholders[i]` stands for `secrets[i]` in [`Substitution::apply`].
    pub(super) fn new(placeholders: &[String]) -> Self {
        Substitution {
            exact: build(placeholders, false),
        }
    }

    /// Replaces every exact placeholder of a credential in `granted` with its
    /// secret (encoded for where it sits: percent-encoding in the URL and
    /// form bodies, JSON escaping in JSON bodies, raw in headers and other
    /// bodies), and adds the injection headers of granted secrets. `body` is
    /// the buffered body and `complete` whether it is all of it.
    pub(super) fn apply(
        &self,
        secrets: &[Secret],
        granted: &dyn Fn(&str) -> bool,
        uri: &mut http::Uri,
        headers: &mut HeaderMap,
        body: &[u8],
        complete: bool,
    ) -> Result<Substituted, SubstituteError> {
        let mut out = Substituted::default();
        let Some(exact) = &self.exact else {
            return Ok(out);
        };
        let use_ok = |i: usize| granted(secrets[i].name());
        let note = |list: &mut Vec<String>, i: usize| {
            let n = secrets[i].name().to_owned();
            if !list.contains(&n) {
                list.push(n);
            }
        };

        // URL.
        let pq = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        if let Some(new) = replace_with(secrets, exact, &pq, use_ok, uri_encoded, &mut |i| {
            note(&mut out.replaced, i)
        }) {
            let mut parts = uri.clone().into_parts();
            parts.path_and_query = Some(new.parse().map_err(|_| {
                SubstituteError::BadUri(out.replaced.last().cloned().unwrap_or_default())
            })?);
            *uri = http::Uri::from_parts(parts).map_err(|_| {
                SubstituteError::BadUri(out.replaced.last().cloned().unwrap_or_default())
            })?;
        }

        // Headers.
        let names: Vec<HeaderName> = headers.keys().cloned().collect();
        for name in names {
            let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
            let mut changed = false;
            let mut new_values = Vec::with_capacity(values.len());
            for v in values {
                let text = String::from_utf8_lossy(v.as_bytes()).into_owned();
                let mut used = Vec::new();
                match replace_with(secrets, exact, &text, use_ok, |s| s.to_owned(), &mut |i| {
                    used.push(i)
                }) {
                    Some(new) => {
                        let hv = HeaderValue::from_str(&new).map_err(|_| {
                            SubstituteError::BadHeader(
                                used.first()
                                    .map(|&i| secrets[i].name().to_owned())
                                    .unwrap_or_default(),
                            )
                        })?;
                        for i in used {
                            note(&mut out.replaced, i);
                        }
                        new_values.push(hv);
                        changed = true;
                    }
                    None => new_values.push(v),
                }
            }
            if changed {
                headers.remove(&name);
                for v in new_values {
                    headers.append(name.clone(), v);
                }
            }
        }

        // Body.
        if !body.is_empty() {
            // The media type as placement read it: a `json` in a parameter
            // of a form's type (`…urlencoded; profile=json`) once chose JSON
            // escaping, leaving `&` and `=` raw, so part of a secret landed
            // in another form field.
            let content_type = body_content_type(headers);
            let encode: fn(&str) -> String = if is_json(content_type) {
                json_escaped
            } else if is_form(content_type) {
                percent_encoded
            } else {
                |s: &str| s.to_owned()
            };
            let mut used = Vec::new();
            let text = String::from_utf8_lossy(body);
            let found_any = exact
                .find_iter(body)
                .any(|m| use_ok(m.pattern().as_usize()));
            if found_any {
                if !complete || std::str::from_utf8(body).is_err() {
                    let i = exact
                        .find_iter(body)
                        .map(|m| m.pattern().as_usize())
                        .find(|&i| use_ok(i))
                        .unwrap_or(0);
                    return Err(SubstituteError::BodyNotBuffered(
                        secrets[i].name().to_owned(),
                    ));
                }
                if let Some(new) =
                    replace_with(secrets, exact, &text, use_ok, encode, &mut |i| used.push(i))
                {
                    for i in used {
                        note(&mut out.replaced, i);
                    }
                    out.body = Some(Bytes::from(new));
                }
            }
        }

        // Header injection (overrides whatever the sandbox sent in that header).
        for (i, s) in secrets.iter().enumerate() {
            let Some(inj) = s.injection() else { continue };
            if !use_ok(i) {
                continue;
            }
            let value = HeaderValue::from_str(&inj.format.replace("{}", s.value()))
                .map_err(|_| SubstituteError::BadHeader(s.name().to_owned()))?;
            headers.insert(inj.header.clone(), value);
            note(&mut out.injected, i);
        }
        Ok(out)
    }
}

/// `text` with each exact placeholder of an allowed secret replaced by
/// `encode(secret)`; `None` when nothing was replaced.
fn replace_with(
    secrets: &[Secret],
    exact: &AhoCorasick,
    text: &str,
    allowed: impl Fn(usize) -> bool,
    encode: impl Fn(&str) -> String,
    used: &mut dyn FnMut(usize),
) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut any = false;
    for m in exact.find_iter(text) {
        let i = m.pattern().as_usize();
        if !allowed(i) {
            continue;
        }
        out.push_str(&text[last..m.start()]);
        out.push_str(&encode(secrets[i].value()));
        last = m.end();
        any = true;
        used(i);
    }
    if !any {
        return None;
    }
    out.push_str(&text[last..]);
    Some(out)
}
