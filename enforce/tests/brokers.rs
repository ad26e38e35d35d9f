//! The fan-out broker with real brokers behind it: the first answer wins
//! and the other questions are withdrawn; all brokers gone is a denial.

use std::sync::Arc;
use std::time::Duration;

use enforce::{ask_and_wait, ApiBroker, ApprovalOutcome, FirstAnswer};
use test_support::purchase_question as request;
use test_support::{Scripted, ScriptedBroker};

#[tokio::test]
async fn first_answer_wins_and_withdraws_the_rest() {
    let (api, handle) = ApiBroker::new();
    let never = ScriptedBroker::new(vec![Scripted::Never]);
    let fan = FirstAnswer::new(vec![Arc::new(never), Arc::new(api)]);
    let t = Duration::from_secs(5);
    let mut changes = handle.changes();
    let wait = tokio::spawn({
        let fan = fan.clone();
        async move { ask_and_wait(&fan, request(1, t), t).await }
    });
    changes.changed().await.expect("asked");
    handle.answer(1, false, "ui").expect("answered");
    match wait.await.expect("join") {
        ApprovalOutcome::Answered(a) => assert!(!a.approved && a.approver == "ui"),
        other => panic!("{other:?}"),
    }
    // All brokers crashed: gone.
    let fan = FirstAnswer::new(vec![
        Arc::new(ScriptedBroker::new(vec![Scripted::Crash])),
        Arc::new(ScriptedBroker::new(vec![Scripted::Crash])),
    ]);
    assert_eq!(
        ask_and_wait(&fan, request(2, t), t).await,
        ApprovalOutcome::BrokerGone
    );
}
