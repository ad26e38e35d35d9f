//! Acknowledgements: a receipt's place in the chain is fixed when it is
//! queued; its [`PendingReceipt`] resolves once the writer made it durable,
//! or failed to.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::writer::{parity, Queue, State};
use super::{lock, AppendError, Appended};

impl State {
    pub(super) fn outcome(&self, appended: Appended) -> Option<Result<Appended, AppendError>> {
        if appended.seq < self.durable {
            return Some(Ok(appended));
        }
        match &self.failed {
            Some((from, why)) if appended.seq >= *from => Some(Err(AppendError::Write {
                seq: appended.seq,
                why: why.clone(),
            })),
            _ => None,
        }
    }
}

/// An append on its way to disk. Wait for it with [`PendingReceipt::wait`]
/// (blocking) or `.await` it (it is a plain `Future`, runtime-agnostic).
pub struct PendingReceipt {
    pub(super) queue: Arc<Queue>,
    pub(super) appended: Appended,
    /// Whether a waker for this receipt may be registered in the queue.
    pub(super) registered: bool,
}

impl PendingReceipt {
    /// The receipt's seq, fixed when it was queued.
    pub fn seq(&self) -> u64 {
        self.appended.seq
    }

    pub fn wait(self) -> Result<Appended, AppendError> {
        let mut s = lock(&self.queue.state);
        loop {
            if let Some(r) = s.outcome(self.appended) {
                return r;
            }
            // Taken but not durable: in the batch in flight. Not taken yet:
            // in the next one (or, if max_batch cuts it short, a later one;
            // the next batch's end then wakes this thread to look again).
            let batch = if self.appended.seq < s.buf_seq {
                s.taken
            } else {
                s.taken + 1
            };
            let p = parity(batch);
            s.blocked[p] += 1;
            s = self.queue.done[p]
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            s.blocked[p] -= 1;
        }
    }
}

impl Future for PendingReceipt {
    type Output = Result<Appended, AppendError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut s = lock(&this.queue.state);
        match s.outcome(this.appended) {
            Some(r) => Poll::Ready(r),
            None => {
                s.wakers.insert(this.appended.seq, cx.waker().clone());
                drop(s);
                this.registered = true;
                Poll::Pending
            }
        }
    }
}

impl Drop for PendingReceipt {
    fn drop(&mut self) {
        // A future dropped before completion leaves no waker behind.
        if self.registered {
            lock(&self.queue.state).wakers.remove(&self.appended.seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    use super::super::test_utils::{decision, key, start, FailingSink};
    use super::super::{LogOptions, ReceiptLog};
    use super::*;

    #[test]
    fn submit_is_a_future_that_resolves_when_durable() {
        let log = ReceiptLog::with_sink(
            FailingSink {
                ok: 10,
                written: Arc::default(),
            },
            key(),
            start(),
            LogOptions::default(),
        )
        .expect("start");
        let pending = log.submit(decision(1)).expect("submit");
        // A minimal executor: poll with a thread-unparking waker.
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut pending = Box::pin(pending);
        let appended = loop {
            match pending.as_mut().poll(&mut cx) {
                Poll::Ready(r) => break r.expect("durable"),
                Poll::Pending => std::thread::park(),
            }
        };
        assert_eq!(appended.seq, 1);
    }
}
