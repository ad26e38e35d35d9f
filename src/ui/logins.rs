//! Logins to the UI `openclaw serve` serves: a tenant token, posted once
//! from the login page, is traded for a random login id carried in an
//! HttpOnly, SameSite=Strict cookie. The token stays with the login in the
//! daemon's memory (never in the cookie, a page or a log), so every request
//! checks it against the store exactly as the API checks a bearer token: a
//! rotated token or a deleted tenant ends its logins at their next request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderMap;
use sha2::{Digest, Sha256};

use super::auth;
use crate::tenants::TenantName;

/// The cookie that carries the login id.
pub const COOKIE: &str = "openclaw_serve_ui";
/// A login ends this long after it began, whatever it did.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Logins kept at most per tenant; past it the tenant's oldest goes. Per
/// tenant, so that one tenant logging in over and over ends only its own
/// logins, never another's; memory is bounded by the tenants the operator
/// made (a tenant token is needed to make one, so this is not about
/// guessing).
const MAX_LOGINS_PER_TENANT: usize = 256;

/// One login: the tenant, its token as presented, the CSRF token its pages
/// carry.
pub struct Login {
    pub tenant: TenantName,
    token: String,
    pub csrf: String,
    began: Instant,
}

impl Login {
    /// The token that logged in, to check against the store again.
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl std::fmt::Debug for Login {
    // The token never goes into a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// The key a login is filed under: SHA-256 of its cookie value, so the
/// map's lookup timing says nothing about the value itself.
type LoginKey = [u8; 32];

fn key_of(cookie_value: &str) -> LoginKey {
    Sha256::digest(cookie_value.as_bytes()).into()
}

#[derive(Default)]
pub struct Logins {
    by_key: Mutex<HashMap<LoginKey, Arc<Login>>>,
}

impl Logins {
    /// A new login for `tenant`, proved by `token`; returns the cookie
    /// value and the login.
    pub fn create(&self, tenant: TenantName, token: String) -> (String, Arc<Login>) {
        let value = auth::random_secret();
        let login = Arc::new(Login {
            tenant,
            token,
            csrf: auth::random_secret(),
            began: Instant::now(),
        });
        let mut map = self.lock();
        map.retain(|_, l| l.began.elapsed() < LIFETIME);
        let own = || map.iter().filter(|(_, l)| l.tenant == login.tenant);
        if own().count() >= MAX_LOGINS_PER_TENANT {
            if let Some(oldest) = own().min_by_key(|(_, l)| l.began).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(key_of(&value), login.clone());
        (value, login)
    }

    /// The login the request's cookie names, if it exists and has not
    /// expired.
    pub fn find(&self, headers: &HeaderMap) -> Option<Arc<Login>> {
        let mut map = self.lock();
        for value in auth::cookies(headers, COOKIE) {
            let key = key_of(value);
            match map.get(&key) {
                Some(login) if login.began.elapsed() < LIFETIME => return Some(login.clone()),
                Some(_) => {
                    map.remove(&key);
                }
                None => {}
            }
        }
        None
    }

    /// Ends the login the request's cookie names (logout).
    pub fn end(&self, headers: &HeaderMap) {
        let mut map = self.lock();
        for value in auth::cookies(headers, COOKIE) {
            map.remove(&key_of(value));
        }
    }

    /// Ends every login of `login`'s tenant made with its token: once the
    /// store refuses that token, none of them may go on.
    pub fn end_token_of(&self, login: &Login) {
        self.lock()
            .retain(|_, l| !(l.tenant == login.tenant && auth::ct_eq(&l.token, &login.token)));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LoginKey, Arc<Login>>> {
        // A panic elsewhere while holding it leaves a usable map.
        self.by_key.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `Set-Cookie` for a new login: script cannot read it, other sites'
/// requests do not carry it, and it goes only to the UI's paths.
pub fn set_cookie(value: &str, path: &str) -> String {
    format!(
        "{COOKIE}={value}; HttpOnly; SameSite=Strict; Path={path}; Max-Age={}",
        LIFETIME.as_secs()
    )
}

/// `Set-Cookie` that removes the login cookie (logout).
pub fn clear_cookie(path: &str) -> String {
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path={path}; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::COOKIE as COOKIE_HEADER;
    use http::HeaderValue;

    fn with_cookie(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE_HEADER,
            HeaderValue::from_str(&format!("other=1; {COOKIE}={value}")).expect("hv"),
        );
        h
    }

    fn tenant(name: &str) -> TenantName {
        TenantName::parse(name).expect("name")
    }

    #[test]
    fn a_login_is_found_by_its_cookie_only() {
        let logins = Logins::default();
        let (value, login) = logins.create(tenant("a"), "tk_a_secret".into());
        assert_eq!(value.len(), 64);
        assert_ne!(login.csrf, value);
        let found = logins.find(&with_cookie(&value)).expect("found");
        assert_eq!(found.tenant, tenant("a"));
        assert_eq!(found.token(), "tk_a_secret");
        assert!(logins.find(&with_cookie("00")).is_none());
        assert!(logins.find(&HeaderMap::new()).is_none());
        assert!(
            !format!("{found:?}").contains("secret"),
            "the token is not in Debug"
        );
    }

    #[test]
    fn logout_and_a_refused_token_end_logins() {
        let logins = Logins::default();
        let (one, login) = logins.create(tenant("a"), "tk_a_1".into());
        let (two, _) = logins.create(tenant("a"), "tk_a_1".into());
        let (other, _) = logins.create(tenant("a"), "tk_a_2".into());
        logins.end(&with_cookie(&one));
        assert!(logins.find(&with_cookie(&one)).is_none());
        assert!(logins.find(&with_cookie(&two)).is_some());
        logins.end_token_of(&login);
        assert!(logins.find(&with_cookie(&two)).is_none());
        assert!(
            logins.find(&with_cookie(&other)).is_some(),
            "another token's login stays"
        );
    }

    #[test]
    fn a_tenant_past_its_cap_ends_its_own_oldest_login_never_anothers() {
        let logins = Logins::default();
        let (b, _) = logins.create(tenant("b"), "tk_b_1".into());
        let (first, _) = logins.create(tenant("a"), "tk_a_1".into());
        for _ in 0..MAX_LOGINS_PER_TENANT {
            logins.create(tenant("a"), "tk_a_1".into());
        }
        assert!(
            logins.find(&with_cookie(&first)).is_none(),
            "a's oldest went"
        );
        assert!(logins.find(&with_cookie(&b)).is_some(), "b's stays");
        assert_eq!(logins.lock().len(), MAX_LOGINS_PER_TENANT + 1);
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_scoped() {
        let set = set_cookie("abc", "/ui");
        for part in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age="] {
            assert!(set.contains(part), "{part} in {set}");
        }
        assert!(clear_cookie("/ui").contains("Max-Age=0"));
    }
}
