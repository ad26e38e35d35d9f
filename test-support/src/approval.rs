//! Approval brokers for tests: a scripted broker that answers (or not) in
//! a given order, and a sample question.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use capabilities::{Action, ActionType};
use enforce::{Answerer, ApprovalAnswer, ApprovalBroker, ApprovalRequest};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Question `id`: approve the $487.00 purchase at united.com, waiting `timeout`.
pub fn purchase_question(id: u64, timeout: Duration) -> ApprovalRequest {
    ApprovalRequest {
        id,
        action: Action {
            kind: ActionType::Payment,
            method: "POST".into(),
            host: "united.com".into(),
            path: "/api/booking/purchase".into(),
            amount_cents: Some(48_700),
            currency: Some("USD".into()),
            merchant: Some("united.com".into()),
            recipients: Vec::new(),
            subject: None,
            credential: None,
            cost_micro_usd: None,
        },
        query: None,
        reason: "payments above $400.00 need approval".into(),
        decision_seq: 3,
        asked_at: receipts::format_time(SystemTime::now()),
        timeout,
    }
}

/// What a [`ScriptedBroker`] does with one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scripted {
    Approve,
    Deny,
    /// Answer after a delay.
    ApproveAfter(Duration),
    /// Never answer (the gate's timeout decides).
    Never,
    /// The broker's task panics while holding the question.
    Crash,
}

/// A broker for tests: answers questions in script order (the last entry
/// repeats) and records every question asked.
#[derive(Clone)]
pub struct ScriptedBroker {
    script: Arc<Mutex<Vec<Scripted>>>,
    asked: Arc<Mutex<Vec<ApprovalRequest>>>,
    /// Answerers of `Never` questions, kept so they are not dropped.
    parked: Arc<Mutex<Vec<Answerer>>>,
}

impl ScriptedBroker {
    pub fn new(script: Vec<Scripted>) -> Self {
        ScriptedBroker {
            script: Arc::new(Mutex::new(script)),
            asked: Arc::default(),
            parked: Arc::default(),
        }
    }

    /// Every question asked so far.
    pub fn asked(&self) -> Vec<ApprovalRequest> {
        lock(&self.asked).clone()
    }
}

impl ApprovalBroker for ScriptedBroker {
    fn ask(&self, request: ApprovalRequest, tx: Answerer) {
        lock(&self.asked).push(request);
        let step = {
            let mut s = lock(&self.script);
            if s.len() > 1 {
                s.remove(0)
            } else {
                s.first().cloned().unwrap_or(Scripted::Deny)
            }
        };
        match step {
            Scripted::Approve => {
                let _ = tx.answer(ApprovalAnswer::new(true, "test"));
            }
            Scripted::Deny => {
                let _ = tx.answer(ApprovalAnswer::new(false, "test"));
            }
            Scripted::ApproveAfter(d) => {
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    let _ = tx.answer(ApprovalAnswer::new(true, "test"));
                });
            }
            Scripted::Never => lock(&self.parked).push(tx),
            Scripted::Crash => {
                tokio::spawn(async move {
                    let _held = tx;
                    panic!("scripted approval broker crash");
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use enforce::{ask_and_wait, ApprovalOutcome};
    use purchase_question as request;

    #[tokio::test]
    async fn scripted_answers_timeouts_and_crashes() {
        let b = ScriptedBroker::new(vec![
            Scripted::Approve,
            Scripted::Deny,
            Scripted::Never,
            Scripted::Crash,
        ]);
        let t = Duration::from_millis(200);
        assert!(
            matches!(ask_and_wait(&b, request(1, t), t).await, ApprovalOutcome::Answered(a) if a.approved)
        );
        assert!(
            matches!(ask_and_wait(&b, request(2, t), t).await, ApprovalOutcome::Answered(a) if !a.approved)
        );
        assert_eq!(
            ask_and_wait(&b, request(3, t), t).await,
            ApprovalOutcome::TimedOut
        );
        assert_eq!(
            ask_and_wait(&b, request(4, t), t).await,
            ApprovalOutcome::BrokerGone
        );
        assert_eq!(
            b.asked().iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
    }
}
