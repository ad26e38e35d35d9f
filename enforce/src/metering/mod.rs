//! LLM metering: each LLM call is reserved at its worst case before it
//! leaves, its usage is read from the provider's response as it streams to
//! the sandbox, and it is settled to the provider's figures when the
//! response ends — a `usage` receipt linked to the decision, a `usage`
//! event, the budget counters corrected (see `docs/catalog.md`, "Metering").

/// The response filter that reads usage and settles.
mod filter;
/// Worst-case reservation and request rewrites.
mod plan;
/// Per-model prices.
pub mod rates;
/// Members picked out of streaming JSON.
mod scan;
/// The API shapes and their usage readers.
mod shapes;
/// Server-sent events, read incrementally.
mod sse;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use capabilities::Action;
use proxy::ResponseVerdict;
use receipts::{
    cost_micro_usd, BudgetWarningRecord, Entry, RateSnapshot, ReceiptLog, UsageRecord, UsageTokens,
};

use crate::catalog::MediaType;
use crate::counters::Ledger;
use crate::events::{BudgetWarning, Event, EventBus, EventKind, UsageEvent};

pub use plan::MeterSettings;
pub use rates::{
    LongContext, ModelMatch, Pricing, RateCard, RateCardError, RateEntry, Tier, BUILTIN_AS_OF,
};

pub(crate) use plan::Plan;
pub(crate) use shapes::Api;

/// The usage a response reports, read as the proxy reads it: `path` is the
/// request's path (its shape), `event_stream` whether the body is
/// `text/event-stream`, `chunks` the body as it arrived. `None` when it
/// reports none (or its shape is not metered). For tools and benchmarks.
pub fn usage_of<'a>(
    path: &str,
    event_stream: bool,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Option<UsageTokens> {
    let mut reader = shapes::UsageReader::new(Api::from_path(path)?, event_stream);
    for chunk in chunks {
        reader.push_quiet(chunk);
    }
    reader.finish();
    reader.reported().tokens
}

/// [`usage_of`] as the proxy reads a stream whose usage chunk it removes
/// (the client did not ask for it): also told where events end. Returns
/// the usage and how many usage chunks the stream had. For benchmarks.
pub fn usage_and_usage_chunks_of<'a>(
    path: &str,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> (Option<UsageTokens>, usize) {
    let Some(api) = Api::from_path(path) else {
        return (None, 0);
    };
    let mut reader = shapes::UsageReader::new(api, true);
    let mut usage_chunks = 0;
    for chunk in chunks {
        reader.push_coarse(chunk, &mut |r, _| {
            usage_chunks += usize::from(r.last_was_usage_chunk());
        });
    }
    reader.finish();
    (reader.reported().tokens, usage_chunks)
}

/// Whether a response's `Content-Type` is `text/event-stream` (type and
/// subtype compared, any case, parameters allowed). A header that does not
/// parse as a media type is not a stream: the body is then read as one JSON
/// document, and without usage found the call is charged its reservation.
pub(crate) fn is_event_stream(content_type: Option<&http::HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(MediaType::parse)
        .is_some_and(|m| m.kind == "text" && m.subtype == "event-stream")
}

/// A call that went upstream, waiting for its response to settle it.
#[derive(Debug)]
pub(crate) struct Ticket {
    /// The gate's request number and the sandbox connection (for events).
    pub request: u64,
    pub conn: u64,
    pub action: Action,
    /// Seq of the decision receipt it went out under.
    pub decision_seq: u64,
    pub plan: Plan,
    /// What was reserved (and committed) for it.
    pub reserved: u64,
    /// Its hold on the tenant's day quota, if the session has one.
    pub quota: Option<crate::quota::QuotaHold>,
}

/// The session's metering: prices, settings, and what settling touches.
pub(crate) struct Metering {
    pub(crate) rates: RateCard,
    pub(crate) settings: MeterSettings,
    ledger: Arc<Ledger>,
    receipts: ReceiptLog,
    events: EventBus,
    /// The token's LLM budget in micro-USD, if it has one.
    budget: Option<u64>,
    /// Warnings given so far (of `settings.warn_at_percent`, ascending).
    /// Held while a call settles, so settlements (the spend corrected, the
    /// usage receipt, the warnings) reach the chain in the order they
    /// happen: a warning's spend covers every usage receipt before it.
    warned: Mutex<usize>,
    /// Forwarded calls by request number, until their response head.
    waiting: Mutex<HashMap<u64, Ticket>>,
    /// Permits to read a request body past `max_body_bytes` (up to
    /// `max_whole_body_bytes`), [`LARGE_BODY_READS_PER_SESSION`] of them.
    /// One is held as long as the gate holds the body it read.
    pub(crate) large_body_reads: Arc<tokio::sync::Semaphore>,
}

/// How many request bodies one session reads past `max_body_bytes` at
/// once (and holds: a permit is released when the body is, see
/// `gate.rs`). A sandbox may open 512 connections of 128 HTTP/2 streams
/// each; without a bound, each buffering up to `max_whole_body_bytes` (16
/// MiB by default) would let one session hold gigabytes. Four bounds it to 64 MiB
/// by default and still lets an agent run a few large calls in parallel.
pub(crate) const LARGE_BODY_READS_PER_SESSION: usize = 4;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Metering {
    pub(crate) fn new(
        rates: RateCard,
        mut settings: MeterSettings,
        ledger: Arc<Ledger>,
        receipts: ReceiptLog,
        events: EventBus,
        budget: Option<u64>,
    ) -> Self {
        // A level is a percent of the budget, 1 to 100 (what the verifier
        // accepts in a `budget_warning` receipt).
        settings.warn_at_percent.retain(|p| (1..=100).contains(p));
        settings.warn_at_percent.sort_unstable();
        settings.warn_at_percent.dedup();
        Metering {
            rates,
            settings,
            ledger,
            receipts,
            events,
            budget,
            warned: Mutex::new(0),
            waiting: Mutex::new(HashMap::new()),
            large_body_reads: Arc::new(tokio::sync::Semaphore::new(LARGE_BODY_READS_PER_SESSION)),
        }
    }

    /// Plans an LLM request to `host` at `path` (without query) with the
    /// complete `body`; `None` when the proxy cannot bound its cost.
    pub(crate) fn plan(&self, host: &str, path: &str, body: &[u8]) -> Option<Plan> {
        let api = Api::from_path(path)?;
        let remaining = self.budget.map(|b| {
            let held = self
                .ledger
                .committed()
                .llm_spent_micro_usd
                .saturating_add(self.ledger.reserved().llm_spent_micro_usd);
            b.saturating_sub(held)
        });
        plan::plan(api, host, body, &self.rates, &self.settings, remaining)
    }

    /// Why `plan` must not go: under a budget, a call whose cost the proxy
    /// cannot bound (the reason says what); `None` otherwise.
    pub(crate) fn refusal(&self, plan: &Plan) -> Option<String> {
        let budget = self.budget?;
        let why = plan.unbounded.as_ref()?;
        Some(format!(
            "llm call of unbounded cost under a budget of {budget} micro-USD: {why}"
        ))
    }

    /// A metered call was forwarded: its response will settle it.
    pub(crate) fn forwarded(&self, ticket: Ticket) {
        lock(&self.waiting).insert(ticket.request, ticket);
    }

    /// The verdict on the response head of request `request`: `inner` (the
    /// credential mask's verdict) wrapped so the body is metered. Requests
    /// that are not metered get `inner` back.
    pub(crate) fn response(
        self: &Arc<Self>,
        request: u64,
        event_stream: bool,
        inner: ResponseVerdict,
    ) -> ResponseVerdict {
        let Some(ticket) = lock(&self.waiting).remove(&request) else {
            return inner;
        };
        let inner = match inner {
            ResponseVerdict::Pass => None,
            ResponseVerdict::Filter(f) => Some(f),
            refused @ ResponseVerdict::Refuse(_) => {
                // Nothing reaches the sandbox, but the provider did the work.
                self.settle(ticket, &shapes::Reported::default());
                return refused;
            }
        };
        ResponseVerdict::Filter(Box::new(filter::MeterFilter::new(
            inner,
            event_stream,
            self.clone(),
            ticket,
        )))
    }

    /// The exchange of request `request` ended; if no response head came
    /// (the upstream failed), its call is settled at the reservation.
    pub(crate) fn ended(&self, request: u64) {
        let ticket = lock(&self.waiting).remove(&request);
        if let Some(ticket) = ticket {
            self.settle(ticket, &shapes::Reported::default());
        }
    }

    /// Settles a call: its cost from the reported usage at its snapshot's
    /// prices (or its reservation when none was reported), the counters
    /// corrected, a `usage` receipt, a `usage` event, budget warnings.
    fn settle(&self, mut ticket: Ticket, reported: &shapes::Reported) {
        let (tokens, cost, rates, estimated) = self.price(&ticket, reported);
        if let Some(hold) = ticket.quota.take() {
            // No usage came back: the provider still billed it, so the
            // tokens quota keeps the worst case held, as the cost does.
            let billed = reported.tokens.map(|t| t.total());
            hold.settle_tokens(cost, billed);
        }
        let mut warned = lock(&self.warned);
        let spent = self.ledger.settle_llm(ticket.reserved, cost);
        let record = UsageRecord {
            decision_seq: ticket.decision_seq,
            provider: ticket.action.host.clone(),
            api: ticket.plan.api.name().to_owned(),
            model: ticket.plan.model.clone(),
            response_id: reported.id.clone(),
            tokens,
            rates,
            cost_micro_usd: cost,
            reserved_micro_usd: ticket.reserved,
            estimated,
        };
        // Queued now, in chain order after its decision, without a signing
        // turn of its own: nothing waits on it (the response is over), so
        // it rides with the next receipt's signature and write (or the
        // writer signs it within the log's `defer`).
        let seq = match self.receipts.submit_deferred(Entry::Usage(record)) {
            Ok(pending) => Some(pending.seq()),
            Err(e) => {
                ratelog::error!(request = ticket.request, "usage receipt failed: {e}");
                None
            }
        };
        let mut e = Event::about(
            EventKind::Usage,
            ticket.request,
            ticket.conn,
            &ticket.action,
        );
        e.receipt = seq;
        e.usage = Some(UsageEvent {
            decision_seq: ticket.decision_seq,
            model: ticket.plan.model.clone(),
            tokens,
            cost_micro_usd: cost,
            estimated,
            budget_spent_micro_usd: spent,
            budget_micro_usd: self.budget,
        });
        self.events.send(e);
        self.warn(&mut warned, &ticket, spent, seq);
    }

    /// What a call is charged: its tokens at the prices (long context
    /// above its threshold) of the tier that served it, of the dearer of
    /// the model it asked for and the model the provider says answered (an
    /// Azure deployment or an OpenRouter fallback picks the model; a
    /// cheaper name never lowers the charge). The tier is the one the
    /// response names (OpenAI's `service_tier`, Anthropic's
    /// `usage.service_tier`: `"priority"`, else standard; a project whose
    /// default is priority, or an organization with Anthropic Priority Tier
    /// capacity, is billed so for a request that asked for none), or the
    /// one asked for when it names none. Charged its reservation, marked
    /// estimated (tokens zero, as the verifier expects), when there is no
    /// usage, the answering model or the serving tier is unpriced though
    /// the asked-for model is priced, or the usage reports provider-run
    /// tool uses the card does not price.
    fn price(
        &self,
        ticket: &Ticket,
        reported: &shapes::Reported,
    ) -> (UsageTokens, u64, RateSnapshot, bool) {
        let reservation = (
            UsageTokens::default(),
            ticket.reserved,
            ticket.plan.rates.clone(),
            true,
        );
        let Some(t) = reported.tokens else {
            return reservation;
        };
        if reported.server_tool_use {
            return reservation;
        }
        let Some(asked) = &ticket.plan.pricing else {
            // Unpriced: recorded at zero prices (refused under a budget).
            let rates = ticket.plan.rates.clone();
            return (t, cost_micro_usd(&t, &rates.price), rates, false);
        };
        let tier = match (ticket.plan.api, reported.priority) {
            (Api::Chat | Api::Responses | Api::Messages, Some(true)) => Tier::Priority,
            (Api::Chat | Api::Responses | Api::Messages, Some(false)) => Tier::Standard,
            _ => ticket.plan.tier,
        };
        let served = if tier == ticket.plan.tier {
            asked.clone()
        } else {
            match self.rates.pricing_for(&ticket.plan.model, tier) {
                Some(p) => p,
                // No price for the tier that served it: fail closed.
                None => return reservation,
            }
        };
        let (mut cost, mut rates) = served.cost(&t);
        if let Some(answered) = reported
            .model
            .as_deref()
            .filter(|m| *m != ticket.plan.model)
        {
            match self.rates.pricing_for(answered, tier) {
                Some(p) => {
                    let (other, snapshot) = p.cost(&t);
                    if other > cost {
                        (cost, rates) = (other, snapshot);
                    }
                }
                None => return reservation,
            }
        }
        (t, cost, rates, false)
    }

    /// A `budget_warning` receipt (after the usage receipt `usage_seq`, when
    /// it was written) and event for each warning level `spent` reached.
    fn warn(&self, warned: &mut usize, ticket: &Ticket, spent: u64, usage_seq: Option<u64>) {
        let Some(budget) = self.budget.filter(|b| *b > 0) else {
            return;
        };
        while let Some(&percent) = self.settings.warn_at_percent.get(*warned) {
            if u128::from(spent) * 100 < u128::from(percent) * u128::from(budget) {
                break;
            }
            *warned += 1;
            let seq = usage_seq.and_then(|usage_seq| {
                let record = BudgetWarningRecord {
                    usage_seq,
                    percent,
                    spent_micro_usd: spent,
                    budget_micro_usd: budget,
                };
                match self.receipts.submit_deferred(Entry::BudgetWarning(record)) {
                    Ok(pending) => Some(pending.seq()),
                    Err(e) => {
                        ratelog::error!(
                            request = ticket.request,
                            "budget warning receipt failed: {e}"
                        );
                        None
                    }
                }
            });
            let mut e = Event::about(
                EventKind::BudgetWarning,
                ticket.request,
                ticket.conn,
                &ticket.action,
            );
            e.receipt = seq;
            e.budget_warning = Some(BudgetWarning {
                percent,
                spent_micro_usd: spent,
                budget_micro_usd: budget,
            });
            self.events.send(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_event_stream;

    #[test]
    fn an_event_stream_is_told_by_its_type_and_subtype() {
        let is = |v: &str| is_event_stream(Some(&http::HeaderValue::from_str(v).expect("value")));
        assert!(is("text/event-stream"));
        assert!(is("Text/Event-Stream; charset=utf-8"));
        assert!(is(" text/event-stream ;charset=\"utf-8\""));
        assert!(!is("text/event-streamx"));
        assert!(!is("text/event-stream-x"));
        assert!(!is("text/event"));
        assert!(!is("application/json"));
        assert!(!is("text/event-stream; charset"));
        assert!(!is_event_stream(None));
    }
}
