//! Acknowledgements: a receipt's place in the chain is fixed when it is
//! queued; its [`PendingReceipt`] resolves once the writer made it durable,
//! or failed to. The writer wakes only the waiters its sync covered.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::writer::{HashSlot, Queue, State, Wake};
use super::{lock, AppendError, Appended};

impl State {
    /// The outcome of receipt `seq` if it has one. Durable is checked by
    /// the caller first (an atomic, no lock needed).
    fn failure(&self, seq: u64) -> Option<AppendError> {
        match &self.failed {
            Some((from, why)) if seq >= *from => Some(AppendError::Write {
                seq,
                why: why.clone(),
            }),
            _ => None,
        }
    }
}

/// An append on its way to disk. Wait for it with [`PendingReceipt::wait`]
/// (blocking) or `.await` it (it is a plain `Future`, runtime-agnostic).
pub struct PendingReceipt {
    pub(super) queue: Arc<Queue>,
    pub(super) seq: u64,
    /// Filled in when the receipt is signed, before it can be durable.
    pub(super) hash: HashSlot,
    /// Whether a waker for this receipt may be registered in the queue.
    pub(super) registered: bool,
}

impl PendingReceipt {
    /// The receipt's seq, fixed when it was queued.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    fn durable(&self) -> Option<Appended> {
        if self.queue.durable.load(Ordering::Acquire) > self.seq {
            let hash = *self
                .hash
                .get()
                .expect("a receipt is signed before it is durable");
            return Some(Appended {
                seq: self.seq,
                hash,
            });
        }
        None
    }

    pub fn wait(self) -> Result<Appended, AppendError> {
        loop {
            if let Some(a) = self.durable() {
                return Ok(a);
            }
            let mut s = lock(&self.queue.state);
            // Checked again under the lock: the writer publishes the mark
            // and takes the waiters under it, so none is missed.
            if let Some(a) = self.durable() {
                return Ok(a);
            }
            if let Some(e) = s.failure(self.seq) {
                return Err(e);
            }
            s.waiting
                .insert(self.seq, Wake::Thread(std::thread::current()));
            drop(s);
            // A stale unpark may end this early: the loop looks again.
            std::thread::park();
        }
    }
}

impl Future for PendingReceipt {
    type Output = Result<Appended, AppendError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        // Once resolved, the writer has already taken any waker of ours.
        if let Some(a) = this.durable() {
            this.registered = false;
            return Poll::Ready(Ok(a));
        }
        let mut s = lock(&this.queue.state);
        if let Some(a) = this.durable() {
            this.registered = false;
            return Poll::Ready(Ok(a));
        }
        if let Some(e) = s.failure(this.seq) {
            this.registered = false;
            return Poll::Ready(Err(e));
        }
        s.waiting.insert(this.seq, Wake::Task(cx.waker().clone()));
        drop(s);
        this.registered = true;
        Poll::Pending
    }
}

impl Drop for PendingReceipt {
    fn drop(&mut self) {
        // A future dropped before completion leaves no waker behind.
        if self.registered {
            lock(&self.queue.state).waiting.remove(&self.seq);
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
