//! Tenant names: parsed once at the boundary into a [`TenantName`], so no
//! unchecked string ever names a directory under `<home>/tenants`.

use std::fmt;

use serde::Serialize;

/// Longest tenant name (a DNS label's length: names end up in hostnames,
/// metrics labels and file names).
pub const MAX_NAME: usize = 63;

/// A valid tenant name: `[a-z0-9][a-z0-9-]{0,62}`. Nothing in that set can
/// be `.`, `..`, contain `/`, `\`, `%` or NUL, or start with `-` (an option
/// to a command), so a name is always exactly one plain path component.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct TenantName(String);

/// Why a string is not a tenant name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantNameError {
    #[error("a tenant name cannot be empty")]
    Empty,
    #[error("a tenant name has at most {MAX_NAME} characters")]
    TooLong,
    #[error("a tenant name starts with a lower-case letter or a digit")]
    BadStart,
    #[error("a tenant name holds only lower-case letters, digits and '-'")]
    BadCharacter,
}

impl TenantName {
    pub fn parse(text: &str) -> Result<TenantName, TenantNameError> {
        let first = text.bytes().next().ok_or(TenantNameError::Empty)?;
        if text.len() > MAX_NAME {
            return Err(TenantNameError::TooLong);
        }
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(TenantNameError::BadStart);
        }
        if !text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(TenantNameError::BadCharacter);
        }
        Ok(TenantName(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // pad, not write_str: `{:<32}` in `tenants list` aligns.
        f.pad(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_lower_case_labels_are_names() {
        for good in [
            "acme",
            "a",
            "0",
            "acme-corp",
            "x1-2-3",
            &"a".repeat(MAX_NAME),
        ] {
            assert_eq!(TenantName::parse(good).expect(good).as_str(), good);
        }
        let cases: [(&str, TenantNameError); 14] = [
            ("", TenantNameError::Empty),
            ("..", TenantNameError::BadStart),
            (".", TenantNameError::BadStart),
            ("-acme", TenantNameError::BadStart),
            ("/etc", TenantNameError::BadStart),
            ("Acme", TenantNameError::BadStart),
            ("acme/..", TenantNameError::BadCharacter),
            ("a%2fb", TenantNameError::BadCharacter),
            ("a%2e%2e", TenantNameError::BadCharacter),
            ("a\\b", TenantNameError::BadCharacter),
            ("a\0", TenantNameError::BadCharacter),
            ("a_b", TenantNameError::BadCharacter),
            ("acmé", TenantNameError::BadCharacter),
            ("a b", TenantNameError::BadCharacter),
        ];
        for (bad, why) in cases {
            assert_eq!(TenantName::parse(bad), Err(why), "{bad:?}");
        }
        assert_eq!(
            TenantName::parse(&"a".repeat(MAX_NAME + 1)),
            Err(TenantNameError::TooLong)
        );
    }
}
