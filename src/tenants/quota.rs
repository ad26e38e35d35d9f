//! A tenant's quotas as the admin sets them: concurrent sessions, API
//! requests per minute, LLM tokens per UTC day and USD per UTC day. `None`
//! is no limit. USD is kept as whole micro-USD (the ledger's unit), so a
//! quota compares exactly with what the ledger sums.

use serde::{Deserialize, Serialize};

/// The largest USD/day quota taken (a typo guard, and far inside `u64`
/// micro-USD).
const MAX_USD_PER_DAY: f64 = 1e9;

/// Per-tenant limits; each `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quotas {
    /// Sessions running at once (started by the API).
    pub sessions: Option<u64>,
    /// `/v1` requests in any 60 s window.
    pub requests_per_minute: Option<u64>,
    /// LLM tokens (input + output) per UTC day.
    pub llm_tokens_per_day: Option<u64>,
    /// Micro-USD of LLM calls per UTC day.
    pub micro_usd_per_day: Option<u64>,
}

/// The JSON shape of the API and of `openclaw tenants quota --json`: USD as
/// a decimal number of dollars, `null` for no limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotasJson {
    #[serde(default)]
    pub sessions: Option<u64>,
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    #[serde(default)]
    pub llm_tokens_per_day: Option<u64>,
    #[serde(default)]
    pub usd_per_day: Option<f64>,
}

impl Quotas {
    pub fn to_json(self) -> QuotasJson {
        QuotasJson {
            sessions: self.sessions,
            requests_per_minute: self.requests_per_minute,
            llm_tokens_per_day: self.llm_tokens_per_day,
            usd_per_day: self.micro_usd_per_day.map(|m| m as f64 / 1e6),
        }
    }
}

/// A dollar amount as micro-USD: finite, not negative, at most
/// [`MAX_USD_PER_DAY`], rounded to the nearest micro-dollar.
pub fn usd_to_micro(usd: f64) -> Result<u64, String> {
    if !usd.is_finite() || usd < 0.0 {
        return Err("expected a dollar amount of 0 or more".into());
    }
    if usd > MAX_USD_PER_DAY {
        return Err(format!("at most {MAX_USD_PER_DAY} dollars a day"));
    }
    Ok((usd * 1e6).round() as u64)
}

impl QuotasJson {
    /// The quotas, or `(field, why)` for the first value out of range.
    pub fn checked(&self) -> Result<Quotas, (&'static str, String)> {
        Ok(Quotas {
            sessions: self.sessions,
            requests_per_minute: self.requests_per_minute,
            llm_tokens_per_day: self.llm_tokens_per_day,
            micro_usd_per_day: self
                .usd_per_day
                .map(usd_to_micro)
                .transpose()
                .map_err(|why| ("usd_per_day", why))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_round_trip_through_micro_usd_and_bad_amounts_are_refused() {
        assert_eq!(usd_to_micro(2.5), Ok(2_500_000));
        assert_eq!(usd_to_micro(0.000001), Ok(1));
        assert_eq!(usd_to_micro(0.0), Ok(0));
        for bad in [-0.01, f64::NAN, f64::INFINITY, 2e9] {
            assert!(usd_to_micro(bad).is_err(), "{bad}");
        }
        let q = QuotasJson {
            usd_per_day: Some(0.25),
            sessions: Some(2),
            ..Default::default()
        }
        .checked()
        .expect("valid");
        assert_eq!(q.micro_usd_per_day, Some(250_000));
        assert_eq!(q.to_json().usd_per_day, Some(0.25));
        let bad = QuotasJson {
            usd_per_day: Some(-1.0),
            ..Default::default()
        };
        assert_eq!(bad.checked().map_err(|(f, _)| f), Err("usd_per_day"));
    }
}
