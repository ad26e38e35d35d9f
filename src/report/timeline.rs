//! A report's timeline and totals, built receipt by receipt: the whole-file
//! build ([`super::build_from`]) and the live page's follower
//! ([`super::ReportFollower`]) feed the same [`TimelineTally`], so both say
//! the same of the same receipts.

use std::collections::{BTreeMap, HashMap};

use receipts::{Body, Receipt};
use serde_json::Value;

use super::{ApprovalOutcome, Bytes, CallUsage, Counts, LlmTotals, Outcome, Spend, TimelineEntry};

/// What a timeline needs to remember between receipts.
#[derive(Debug, Default, Clone)]
pub(super) struct TimelineTally {
    /// Proven decisions: seq -> index in the timeline. Approvals, usage and
    /// outcomes attach to these only (a forged line past the break must not
    /// approve or price a verified decision).
    pub(super) index_by_seq: HashMap<u64, usize>,
    /// Allowed LLM calls' estimated costs (sessions from before metering).
    llm_estimate_micro_usd: u64,
    llm: LlmTotals,
    /// The proven entries' counts, kept as entries come and change, so an
    /// update of a long session does not count its timeline again.
    counted: Counted,
}

/// What the proven entries add up to.
#[derive(Debug, Default, Clone)]
struct Counted {
    counts: Counts,
    bytes: Bytes,
    payments_cents: u64,
    /// Forwarded payments' currencies by timeline index: the first one is
    /// the session's.
    currencies: BTreeMap<usize, String>,
}

impl Counted {
    /// Adds (or, with `remove`, takes back) what entry `index` adds up to.
    fn count(&mut self, index: usize, entry: &TimelineEntry, remove: bool) {
        let step = |n: &mut u64, by: u64| {
            *n = if remove {
                n.saturating_sub(by)
            } else {
                n.saturating_add(by)
            }
        };
        let counts = &mut self.counts;
        step(&mut counts.actions, 1);
        step(&mut self.bytes.up, entry.bytes_up);
        step(&mut self.bytes.down, entry.bytes_down);
        let forwarded = match (entry.decision.as_str(), &entry.approval) {
            ("allow", _) => {
                step(&mut counts.allowed, 1);
                true
            }
            ("approval", None) => {
                step(&mut counts.approvals.pending, 1);
                false
            }
            ("approval", Some(a)) if a.approved => {
                step(&mut counts.approvals.approved, 1);
                true
            }
            ("approval", Some(a)) if a.approver == "timeout" => {
                step(&mut counts.approvals.expired, 1);
                false
            }
            ("approval", Some(_)) => {
                step(&mut counts.approvals.denied, 1);
                false
            }
            _ => {
                step(&mut counts.blocked, 1);
                false
            }
        };
        if forwarded && entry.action.get("type").and_then(Value::as_str) == Some("payment") {
            let cents = entry
                .action
                .get("amount_cents")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            step(&mut self.payments_cents, cents);
            if remove {
                self.currencies.remove(&index);
            } else if let Some(currency) = entry.action.get("currency").and_then(Value::as_str) {
                self.currencies.insert(index, currency.to_owned());
            }
        }
    }
}

impl TimelineTally {
    /// Adds one receipt, in chain order. `proven`: within the verified
    /// lines; past them a decision is listed, marked `unverified`, and
    /// counts for nothing, and nothing else changes anything.
    pub(super) fn apply(
        &mut self,
        timeline: &mut Vec<TimelineEntry>,
        receipt: Receipt,
        proven: bool,
        outcomes: &HashMap<u64, Outcome>,
    ) {
        match receipt.body {
            Body::Decision(record) => {
                let field = |name: &str| record.decision.get(name).and_then(Value::as_str);
                let outcome = proven.then(|| outcomes.get(&receipt.seq)).flatten();
                if proven {
                    if let Some(cost) = record.action.get("cost_micro_usd").and_then(Value::as_u64)
                    {
                        if field("decision") == Some("allow") {
                            self.llm_estimate_micro_usd += cost;
                        }
                    }
                    self.index_by_seq.insert(receipt.seq, timeline.len());
                }
                timeline.push(TimelineEntry {
                    seq: receipt.seq,
                    ts: receipt.ts,
                    decision: field("decision").unwrap_or("block").to_owned(),
                    reason: field("reason").unwrap_or_default().to_owned(),
                    grant: field("grant").map(str::to_owned),
                    action: record.action,
                    approval: None,
                    status: outcome.and_then(|o| o.status),
                    bytes_up: outcome.map_or(0, |o| o.bytes_up),
                    bytes_down: outcome.map_or(0, |o| o.bytes_down),
                    usage: None,
                    unverified: !proven,
                });
                if proven {
                    let index = timeline.len() - 1;
                    self.counted.count(index, &timeline[index], false);
                }
            }
            _ if !proven => {}
            Body::Usage(u) => {
                let llm = &mut self.llm;
                llm.calls += 1;
                llm.cost_micro_usd = llm.cost_micro_usd.saturating_add(u.cost_micro_usd);
                llm.estimated_calls += u64::from(u.estimated);
                let (t, add) = (&mut llm.tokens, &u.tokens);
                for (sum, n) in [
                    (&mut t.input, add.input),
                    (&mut t.cached_input, add.cached_input),
                    (&mut t.cache_write_5m, add.cache_write_5m),
                    (&mut t.cache_write_1h, add.cache_write_1h),
                    (&mut t.output, add.output),
                    (&mut t.reasoning, add.reasoning),
                ] {
                    *sum = sum.saturating_add(n);
                }
                if let Some(&i) = self.index_by_seq.get(&u.decision_seq) {
                    timeline[i].usage = Some(CallUsage {
                        model: u.model,
                        tokens: u.tokens,
                        cost_micro_usd: u.cost_micro_usd,
                        estimated: u.estimated,
                    });
                }
            }
            Body::Approval(answer) => {
                if let Some(&i) = self.index_by_seq.get(&answer.decision_seq) {
                    self.counted.count(i, &timeline[i], true);
                    timeline[i].approval = Some(ApprovalOutcome {
                        approved: answer.approved,
                        approver: answer.approver,
                        answered_at: answer.answered_at,
                    });
                    self.counted.count(i, &timeline[i], false);
                }
            }
            Body::SessionStart { .. } | Body::BudgetWarning(_) | Body::SessionEnd { .. } => {}
        }
    }

    /// An outcome that arrived after its decision (or, with `None`, one
    /// no longer there): set on the proven entry of `seq`.
    pub(super) fn attach(
        &mut self,
        timeline: &mut [TimelineEntry],
        seq: u64,
        outcome: Option<&Outcome>,
    ) {
        if let Some(&i) = self.index_by_seq.get(&seq) {
            self.counted.count(i, &timeline[i], true);
            let entry = &mut timeline[i];
            entry.status = outcome.and_then(|o| o.status);
            entry.bytes_up = outcome.map_or(0, |o| o.bytes_up);
            entry.bytes_down = outcome.map_or(0, |o| o.bytes_down);
            self.counted.count(i, &timeline[i], false);
        }
    }

    /// Every proven entry's outcome set anew from `outcomes`.
    pub(super) fn attach_all(
        &mut self,
        timeline: &mut [TimelineEntry],
        outcomes: &HashMap<u64, Outcome>,
    ) {
        let seqs: Vec<u64> = self.index_by_seq.keys().copied().collect();
        for seq in seqs {
            self.attach(timeline, seq, outcomes.get(&seq));
        }
    }

    /// The counts, bytes and spend of the proven entries.
    pub(super) fn totals(&self, llm_budget_micro_usd: Option<u64>) -> (Counts, Bytes, Spend) {
        let llm = self.llm.clone();
        let counted = &self.counted;
        let spend = Spend {
            llm_micro_usd: if llm.calls > 0 {
                llm.cost_micro_usd
            } else {
                self.llm_estimate_micro_usd
            },
            llm,
            llm_budget_micro_usd,
            payments_cents: counted.payments_cents,
            currency: counted.currencies.values().next().cloned(),
        };
        (counted.counts.clone(), counted.bytes.clone(), spend)
    }
}
