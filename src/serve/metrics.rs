//! `GET /metrics`: Prometheus text (format 0.0.4) for the admin token.
//! Everything but the refusal counters is read from disk at scrape time —
//! the tenants' session bundles (state, backend, decisions, receipts) and
//! their ledgers (today's LLM tokens and USD) — so the figures are what the
//! records say, at the cost of a scrape that reads every bundle's report.
//! The proxy request latency histogram is asked of each running session's
//! control socket (`control::latency`) and remembered here per session, so
//! a session that ended keeps counting with what it last reported.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use crate::control::latency::LatencyWire;
use crate::control::{self, ControlRequest};

use super::quota;
use super::sessions;
use super::state::State;

/// `name{labels} value` lines of one metric family, with its help and type.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    samples: BTreeMap<Vec<(&'static str, String)>, u64>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Family {
            name,
            help,
            kind,
            samples: BTreeMap::new(),
        }
    }

    fn add(&mut self, labels: Vec<(&'static str, String)>, value: u64) {
        *self.samples.entry(labels).or_default() += value;
    }

    fn write(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, value) in &self.samples {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = writeln!(out, "{}{{{}}} {value}", self.name, labels.join(","));
        }
    }
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole exposition.
pub fn render(state: &State) -> anyhow::Result<String> {
    let mut sessions_f = Family::new(
        "openclaw_sessions",
        "gauge",
        "Sessions on disk by tenant, state (running, completed, failed, interrupted, stale) and backend.",
    );
    let mut decisions = Family::new(
        "openclaw_decisions",
        "gauge",
        "Decisions in the sessions on disk by tenant and kind (allowed, blocked; approved, denied, pending of those held).",
    );
    let mut receipts = Family::new(
        "openclaw_receipts",
        "gauge",
        "Receipts appended to the sessions' chains on disk, by tenant.",
    );
    let mut tokens = Family::new(
        "openclaw_llm_tokens_today",
        "gauge",
        "LLM input + output tokens of the tenant's ledger rows of today (UTC).",
    );
    let mut usd = Family::new(
        "openclaw_llm_micro_usd_today",
        "gauge",
        "Micro-USD of the tenant's ledger rows of today (UTC).",
    );
    let mut refusals = Family::new(
        "openclaw_quota_refusals_total",
        "counter",
        "Requests refused with 429 by tenant and quota since the daemon started.",
    );
    for tenant in state.registry.list()? {
        let t = tenant.name.to_string();
        let root = state.registry.root(&tenant.name);
        for (row, count) in sessions::list_with_receipts(&root) {
            if row.live {
                if let Some((dir, true)) = sessions::dir_of(&root, &row.id) {
                    ask_latency(&t, &row.id, &row.backend, &dir);
                }
            }
            sessions_f.add(
                vec![
                    ("tenant", t.clone()),
                    ("state", row.status.clone()),
                    ("backend", row.backend.clone()),
                ],
                1,
            );
            for (kind, n) in [
                ("allowed", row.allowed),
                ("blocked", row.blocked),
                ("approved", row.approved),
                ("denied", row.denied),
                ("pending", row.pending),
            ] {
                decisions.add(vec![("tenant", t.clone()), ("kind", kind.into())], n);
            }
            receipts.add(vec![("tenant", t.clone())], count);
        }
        let day = quota::usage_today(&state.ledger, &tenant.name)?;
        tokens.add(vec![("tenant", t.clone())], day.tokens);
        usd.add(vec![("tenant", t.clone())], day.micro_usd);
    }
    for ((tenant, which), n) in state.limits.refusals() {
        refusals.add(vec![("tenant", tenant), ("quota", which.into())], n);
    }
    let mut out = String::new();
    for family in [&sessions_f, &decisions, &receipts, &tokens, &usd, &refusals] {
        family.write(&mut out);
    }
    write_latency(&mut out);
    Ok(out)
}

/// Each session's last latency report, by (tenant, session id), with its
/// backend: kept for the daemon's life, so the histogram never goes back
/// when a session ends (requests it finished after the last scrape are not
/// counted; a restarted daemon starts from zero, as counters may).
type Reports = BTreeMap<(String, String), (String, LatencyWire)>;
static LATENCY: Mutex<Reports> = Mutex::new(BTreeMap::new());

/// Asks the running session in `dir` for its request latency. A session
/// that does not answer keeps its last report.
fn ask_latency(tenant: &str, id: &str, backend: &str, dir: &std::path::Path) {
    let report = control::call_blocking(dir, &ControlRequest::Latency)
        .ok()
        .and_then(|reply| serde_json::from_value::<LatencyWire>(reply["latency"].clone()).ok());
    if let Some(report) = report {
        LATENCY.lock().unwrap_or_else(|e| e.into_inner()).insert(
            (tenant.to_owned(), id.to_owned()),
            (backend.to_owned(), report),
        );
    }
}

/// `openclaw_proxy_request_duration_seconds`, by tenant and backend.
fn write_latency(out: &mut String) {
    const NAME: &str = "openclaw_proxy_request_duration_seconds";
    let reports = LATENCY.lock().unwrap_or_else(|e| e.into_inner());
    let mut sums: BTreeMap<(String, String), LatencyWire> = BTreeMap::new();
    for ((tenant, _), (backend, report)) in reports.iter() {
        let total = sums.entry((tenant.clone(), backend.clone())).or_default();
        if total.buckets.is_empty() {
            total.buckets = report.buckets.iter().map(|(le, _)| (*le, 0)).collect();
        }
        for (sum, (_, n)) in total.buckets.iter_mut().zip(&report.buckets) {
            sum.1 += n;
        }
        total.count += report.count;
        total.sum_seconds += report.sum_seconds;
    }
    let _ = writeln!(
        out,
        "# HELP {NAME} Proxied requests of the sessions, from the decision that let each go \
         upstream to the end of its response, by tenant and backend."
    );
    let _ = writeln!(out, "# TYPE {NAME} histogram");
    for ((tenant, backend), h) in &sums {
        let labels = format!(
            "backend=\"{}\",tenant=\"{}\"",
            escape(backend),
            escape(tenant)
        );
        for (le, n) in &h.buckets {
            let _ = writeln!(out, "{NAME}_bucket{{{labels},le=\"{le}\"}} {n}");
        }
        let _ = writeln!(out, "{NAME}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{NAME}_sum{{{labels}}} {}", h.sum_seconds);
        let _ = writeln!(out, "{NAME}_count{{{labels}}} {}", h.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_samples_summed() {
        let mut f = Family::new("x", "gauge", "help text");
        f.add(vec![("a", "q\"\\\n".into())], 2);
        f.add(vec![("a", "q\"\\\n".into())], 3);
        let mut out = String::new();
        f.write(&mut out);
        assert_eq!(
            out,
            "# HELP x help text\n# TYPE x gauge\nx{a=\"q\\\"\\\\\\n\"} 5\n"
        );
    }
}
