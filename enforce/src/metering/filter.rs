//! The response side of a metered call: a [`ResponseFilter`] that reads the
//! usage as the body passes to the sandbox (after the credential mask, when
//! there is one, so it reads the decoded body), removes the usage chunk the
//! client did not ask for, and settles the call when the body ends — or,
//! when the stream was cut or the client went away, when it is dropped.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use proxy::{FilterError, ResponseFilter};

use super::shapes::UsageReader;
use super::{Metering, Ticket};

/// Most bytes of one event held back while waiting to see whether it is
/// the usage chunk to remove; a longer event cannot be it and is let
/// through.
const MAX_HELD: usize = 256 * 1024;

pub(crate) struct MeterFilter {
    /// The credential mask (and decoder), when the host has credentials.
    inner: Option<Box<dyn ResponseFilter>>,
    reader: UsageReader,
    /// Remove Chat usage chunks (the proxy asked for them, not the client).
    strip: bool,
    /// Output ready for the sandbox.
    ready: VecDeque<Bytes>,
    /// When stripping: the current event's bytes so far, held back.
    held: BytesMut,
    /// Part of the current event was let through already (too long to hold).
    leaked: bool,
    /// When stripping: where events ended in the chunk being read, and
    /// whether each was the usage chunk (kept to reuse its allocation).
    ends: Vec<(usize, bool)>,
    input_done: bool,
    /// Settled already (the body ended), or still to settle on drop.
    settle: Option<(Arc<Metering>, Ticket)>,
}

impl MeterFilter {
    pub(crate) fn new(
        inner: Option<Box<dyn ResponseFilter>>,
        event_stream: bool,
        metering: Arc<Metering>,
        ticket: Ticket,
    ) -> Self {
        MeterFilter {
            inner,
            reader: UsageReader::new(ticket.plan.api, event_stream),
            strip: ticket.plan.strip_usage_chunk && event_stream,
            ready: VecDeque::new(),
            held: BytesMut::new(),
            leaked: false,
            ends: Vec::new(),
            input_done: false,
            settle: Some((metering, ticket)),
        }
    }

    /// Reads a piece of the body (as the sandbox would get it) and queues
    /// what goes on.
    fn take_in(&mut self, chunk: Bytes) {
        if !self.strip {
            // Read, then passed on whole: nothing held back.
            self.reader.push(&chunk, &mut |_, _| {});
            self.ready.push_back(chunk);
            return;
        }
        let mut ends = std::mem::take(&mut self.ends);
        ends.clear();
        self.reader.push(&chunk, &mut |r, end| {
            ends.push((end, r.last_was_usage_chunk()));
        });
        let mut from = 0;
        for &(end, usage_chunk) in &ends {
            let piece = chunk.slice(from..end);
            from = end;
            if usage_chunk && !self.leaked {
                // The client did not ask for it: it never sees it.
                self.held.clear();
            } else if self.held.is_empty() {
                self.ready.push_back(piece);
            } else {
                self.held.extend_from_slice(&piece);
                self.ready.push_back(self.held.split().freeze());
            }
            self.leaked = false;
        }
        self.ends = ends;
        let rest = chunk.slice(from..);
        if self.held.len() + rest.len() > MAX_HELD {
            self.leaked = true;
            if !self.held.is_empty() {
                self.ready.push_back(self.held.split().freeze());
            }
            self.ready.push_back(rest);
        } else if !rest.is_empty() {
            self.held.extend_from_slice(&rest);
        }
    }

    /// The body ended: give out what was held, settle from what was read.
    fn end(&mut self) {
        if !self.held.is_empty() {
            self.ready.push_back(self.held.split().freeze());
        }
        self.reader.finish();
        if let Some((metering, ticket)) = self.settle.take() {
            metering.settle(ticket, self.reader.reported());
        }
    }
}

impl ResponseFilter for MeterFilter {
    fn push(&mut self, chunk: Bytes) -> Result<(), FilterError> {
        match self.inner.as_mut() {
            Some(inner) => inner.push(chunk),
            None => {
                self.take_in(chunk);
                Ok(())
            }
        }
    }

    fn pull(&mut self) -> Result<Option<Bytes>, FilterError> {
        loop {
            if let Some(b) = self.ready.pop_front() {
                return Ok(Some(b));
            }
            if let Some(inner) = self.inner.as_mut() {
                if let Some(b) = inner.pull()? {
                    self.take_in(b);
                    continue;
                }
            }
            if self.input_done && self.settle.is_some() {
                self.end();
                continue;
            }
            return Ok(None);
        }
    }

    fn finish(&mut self) -> Result<(), FilterError> {
        self.input_done = true;
        match self.inner.as_mut() {
            Some(inner) => inner.finish(),
            None => Ok(()),
        }
    }

    fn trailers(&mut self, trailers: &mut http::HeaderMap) {
        if let Some(inner) = self.inner.as_mut() {
            inner.trailers(trailers);
        }
    }
}

impl Drop for MeterFilter {
    fn drop(&mut self) {
        // Cut before its end (upstream failed, the client went away): what
        // was read so far decides; without final usage, the reservation.
        if let Some((metering, ticket)) = self.settle.take() {
            metering.settle(ticket, self.reader.reported());
        }
    }
}
