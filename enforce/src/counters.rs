//! The session's counters ledger (amounts charged, emails sent, LLM spend):
//! reserve-then-commit, so concurrent requests cannot race past a ceiling.
//!
//! A decision that may forward (allow, or approval pending) reserves the
//! action's amounts while the ledger is locked, so every later decision sees
//! them. The reservation is committed when the gate lets the request go
//! upstream, and released when the request is refused, denied, times out, or
//! is dropped (client gone during an approval hold). An upstream failure after
//! forwarding still counts: the proxy cannot know whether a merchant charged.
//!
//! An LLM call reserves and commits its worst case; when its response ends,
//! [`Ledger::settle_llm`] replaces that by what the provider reported (more
//! or less), so the next call decides with the spend as it really is.

use std::sync::{Arc, Mutex, MutexGuard};

use capabilities::{Action, ActionType, Counters, Decision, Verdict};

/// The session's counters: what was committed, and what is reserved by
/// requests decided but not yet forwarded.
#[derive(Debug, Default)]
pub struct Ledger {
    state: Mutex<State>,
}

#[derive(Debug, Default, Clone, Copy)]
struct State {
    committed: Counters,
    reserved: Counters,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every critical section leaves the state consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn add(a: Counters, b: Counters) -> Counters {
    Counters {
        spent_cents: a.spent_cents.saturating_add(b.spent_cents),
        emails_sent: a.emails_sent.saturating_add(b.emails_sent),
        llm_spent_micro_usd: a.llm_spent_micro_usd.saturating_add(b.llm_spent_micro_usd),
    }
}

fn sub(a: Counters, b: Counters) -> Counters {
    Counters {
        spent_cents: a.spent_cents.saturating_sub(b.spent_cents),
        emails_sent: a.emails_sent.saturating_sub(b.emails_sent),
        llm_spent_micro_usd: a.llm_spent_micro_usd.saturating_sub(b.llm_spent_micro_usd),
    }
}

/// What forwarding `action` adds to the counters.
pub fn delta(action: &Action) -> Counters {
    match action.kind {
        ActionType::Payment => Counters {
            spent_cents: action.amount_cents.unwrap_or(0),
            ..Counters::default()
        },
        ActionType::Email => Counters {
            emails_sent: 1,
            ..Counters::default()
        },
        ActionType::Llm => Counters {
            llm_spent_micro_usd: action.cost_micro_usd.unwrap_or(0),
            ..Counters::default()
        },
        ActionType::Web | ActionType::Login | ActionType::Websocket => Counters::default(),
    }
}

impl Ledger {
    /// A ledger starting from `initial` (e.g. a resumed session's counters).
    pub fn new(initial: Counters) -> Arc<Self> {
        Arc::new(Ledger {
            state: Mutex::new(State {
                committed: initial,
                reserved: Counters::default(),
            }),
        })
    }

    /// Counters of forwarded actions.
    pub fn committed(&self) -> Counters {
        lock(&self.state).committed
    }

    /// Amounts held by decided, not yet forwarded requests.
    pub fn reserved(&self) -> Counters {
        lock(&self.state).reserved
    }

    /// Decides `action` with `decide`, which is handed the counters to decide
    /// with (committed plus every reservation), under the ledger's lock. When
    /// the verdict may forward and the action counts, its amounts are
    /// reserved. Returns the decision, the counters it saw, and the
    /// reservation (to commit when forwarded).
    pub fn decide(
        self: &Arc<Self>,
        action: &Action,
        decide: impl FnOnce(&Counters) -> Decision,
    ) -> (Decision, Counters, Reservation) {
        let d = delta(action);
        let counts = d != Counters::default();
        if !counts {
            // Web and login actions read no counter: no need to serialize them.
            let seen = self.snapshot();
            let decision = decide(&seen);
            return (decision, seen, Reservation::empty(self));
        }
        let mut state = lock(&self.state);
        let seen = add(state.committed, state.reserved);
        let decision = decide(&seen);
        let reservation = if decision.decision == Verdict::Block {
            Reservation::empty(self)
        } else {
            state.reserved = add(state.reserved, d);
            Reservation {
                ledger: Arc::clone(self),
                delta: d,
                settled: false,
            }
        };
        (decision, seen, reservation)
    }

    /// An LLM call whose worst case `reserved` was committed cost `actual`:
    /// the committed LLM spend is corrected (an excess over the reservation
    /// is charged too). Returns the committed LLM spend after it.
    pub fn settle_llm(&self, reserved: u64, actual: u64) -> u64 {
        let mut s = lock(&self.state);
        let spent = &mut s.committed.llm_spent_micro_usd;
        *spent = spent.saturating_sub(reserved).saturating_add(actual);
        *spent
    }

    fn snapshot(&self) -> Counters {
        let s = lock(&self.state);
        add(s.committed, s.reserved)
    }
}

/// Amounts held for one decided request. Dropping it without
/// [`Reservation::commit`] releases them.
#[derive(Debug)]
pub struct Reservation {
    ledger: Arc<Ledger>,
    delta: Counters,
    settled: bool,
}

impl Reservation {
    fn empty(ledger: &Arc<Ledger>) -> Self {
        Reservation {
            ledger: Arc::clone(ledger),
            delta: Counters::default(),
            settled: true,
        }
    }

    /// What this reservation holds.
    pub fn amounts(&self) -> Counters {
        self.delta
    }

    /// The request was forwarded: its amounts count from now on.
    pub fn commit(mut self) {
        if !self.settled {
            let mut s = lock(&self.ledger.state);
            s.reserved = sub(s.reserved, self.delta);
            s.committed = add(s.committed, self.delta);
            self.settled = true;
        }
    }

    /// The request was not forwarded: give the amounts back.
    pub fn release(mut self) {
        self.settle_release();
    }

    fn settle_release(&mut self) {
        if !self.settled {
            let mut s = lock(&self.ledger.state);
            s.reserved = sub(s.reserved, self.delta);
            self.settled = true;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.settle_release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(cents: u64) -> Action {
        Action {
            kind: ActionType::Payment,
            method: "POST".into(),
            host: "united.com".into(),
            path: "/pay".into(),
            amount_cents: Some(cents),
            currency: Some("USD".into()),
            merchant: Some("united.com".into()),
            recipients: Vec::new(),
            subject: None,
            credential: None,
            cost_micro_usd: None,
        }
    }

    /// A stand-in for the token: total ceiling of 600.00 including this charge.
    fn ceiling(a: &Action) -> impl FnOnce(&Counters) -> Decision + '_ {
        move |c| Decision {
            decision: if c.spent_cents + a.amount_cents.unwrap_or(0) <= 60_000 {
                Verdict::Allow
            } else {
                Verdict::Block
            },
            reason: String::new(),
            grant: None,
            revocation_ids: Vec::new(),
        }
    }

    #[test]
    fn reservations_are_seen_by_later_decisions_and_settle_once() {
        let ledger = Ledger::new(Counters::default());
        let a = payment(40_000);
        let (d1, seen1, r1) = ledger.decide(&a, ceiling(&a));
        assert_eq!((d1.decision, seen1.spent_cents), (Verdict::Allow, 0));
        // The second 400.00 sees the first one's reservation and is blocked.
        let (d2, seen2, r2) = ledger.decide(&a, ceiling(&a));
        assert_eq!((d2.decision, seen2.spent_cents), (Verdict::Block, 40_000));
        assert_eq!(r2.amounts(), Counters::default());
        drop(r2);
        assert_eq!(ledger.reserved().spent_cents, 40_000);
        r1.commit();
        assert_eq!(ledger.committed().spent_cents, 40_000);
        assert_eq!(ledger.reserved().spent_cents, 0);
        // A released (or dropped) reservation gives its headroom back.
        let b = payment(20_000);
        let (d, _, r) = ledger.decide(&b, ceiling(&b));
        assert_eq!(d.decision, Verdict::Allow);
        drop(r);
        let (d, _, r) = ledger.decide(&b, ceiling(&b));
        assert_eq!(d.decision, Verdict::Allow);
        r.release();
        assert_eq!(ledger.committed().spent_cents, 40_000);
        assert_eq!(ledger.reserved(), Counters::default());
    }

    #[test]
    fn concurrent_payments_cannot_race_past_the_ceiling() {
        let ledger = Ledger::new(Counters::default());
        let allowed = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| {
                    let a = payment(10_000);
                    let (d, _, r) = ledger.decide(&a, ceiling(&a));
                    if d.decision == Verdict::Allow {
                        allowed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        std::thread::yield_now();
                        r.commit();
                    }
                });
            }
        });
        assert_eq!(allowed.into_inner(), 6);
        assert_eq!(ledger.committed().spent_cents, 60_000);
    }

    #[test]
    fn llm_calls_settle_to_what_they_cost() {
        let ledger = Ledger::new(Counters::default());
        let mut a = payment(0);
        a.kind = ActionType::Llm;
        a.cost_micro_usd = Some(1_000);
        let (_, _, r) = ledger.decide(&a, |_| Decision {
            decision: Verdict::Allow,
            reason: String::new(),
            grant: None,
            revocation_ids: Vec::new(),
        });
        r.commit();
        assert_eq!(ledger.committed().llm_spent_micro_usd, 1_000);
        // Cheaper than the worst case: the difference comes back.
        assert_eq!(ledger.settle_llm(1_000, 300), 300);
        // Dearer (the provider reported more): the excess is charged.
        assert_eq!(ledger.settle_llm(0, 50), 350);
        assert_eq!(ledger.reserved(), Counters::default());
    }

    #[test]
    fn deltas_per_type() {
        let mut a = payment(5);
        assert_eq!(delta(&a).spent_cents, 5);
        a.kind = ActionType::Email;
        assert_eq!(delta(&a).emails_sent, 1);
        a.kind = ActionType::Llm;
        a.cost_micro_usd = Some(7);
        assert_eq!(delta(&a).llm_spent_micro_usd, 7);
        a.kind = ActionType::Web;
        assert_eq!(delta(&a), Counters::default());
    }
}
