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
    /// Chunks given out (or about to be) and still to be read. A chunk goes
    /// on first and is read at the next pull, so reading never delays it
    /// (the proxy flushes the first one before that pull). When stripping,
    /// only chunks that cannot hold a usage chunk, at the stream's start.
    unread: VecDeque<Bytes>,
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
            unread: VecDeque::new(),
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
            // Passed on whole, nothing held back; read after.
            self.unread.push_back(chunk.clone());
            self.ready.push_back(chunk);
            return;
        }
        // In order: what went on unread is read before the next chunk.
        self.read_unread();
        if !self.leaked && self.held.is_empty() && self.reader.may_pass_before_read(&chunk) {
            // No usage chunk in it: on at once, read after (as above). The
            // `\n` of a CRLF blank line goes with the next event, as when
            // events are told one by one (removed with a usage chunk).
            self.unread.push_back(chunk.clone());
            let crlf = chunk.ends_with(b"\r\n");
            if crlf {
                self.held.extend_from_slice(b"\n");
            }
            self.ready
                .push_back(chunk.slice(..chunk.len() - usize::from(crlf)));
            return;
        }
        let mut ends = std::mem::take(&mut self.ends);
        ends.clear();
        self.reader.push_coarse(&chunk, &mut |r, end| {
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

    /// Reads the chunks that went on unread. Reading cannot fail: a usage
    /// that does not parse reads as none, and the call is charged its
    /// reservation (the same whether read before or after the forward).
    fn read_unread(&mut self) {
        while let Some(chunk) = self.unread.pop_front() {
            self.reader.push_quiet(&chunk);
        }
    }

    /// The body ended: give out what was held, settle from what was read.
    fn end(&mut self) {
        if !self.held.is_empty() {
            self.ready.push_back(self.held.split().freeze());
        }
        self.read_unread();
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
            self.read_unread();
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
        // What went on unread reached the client, or could have: read too.
        if let Some((metering, ticket)) = self.settle.take() {
            self.read_unread();
            metering.settle(ticket, self.reader.reported());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::Ledger;
    use crate::events::{Event, EventBus};
    use capabilities::{Action, ActionType, Counters};
    use receipts::{DurableSink, LogOptions, ReceiptLog, SessionStart, UsageTokens};
    use tokio::sync::broadcast;

    const FIRST: &[u8] =
        b"data: {\"id\":\"chatcmpl-1\",\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\
        \"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n";
    const USAGE: &[u8] =
        b"data: {\"id\":\"chatcmpl-1\",\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\
        \"usage\":{\"prompt_tokens\":12,\"completion_tokens\":7}}\n\ndata: [DONE]\n\n";

    struct Discard;

    impl DurableSink for Discard {
        fn write_all(&mut self, _: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
        fn sync(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A metering filter of a streamed Chat call that keeps the usage chunk
    /// (the client asked for it), and the session's events.
    fn filter() -> (MeterFilter, broadcast::Receiver<Event>) {
        filter_for(true)
    }

    /// The same; `asked`: whether the client asked for the usage chunk
    /// (else the proxy asks, and removes it).
    fn filter_for(asked: bool) -> (MeterFilter, broadcast::Receiver<Event>) {
        let receipts = ReceiptLog::with_sink(
            Discard,
            ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
            SessionStart {
                session_id: "filter-test".into(),
                revocation_ids: vec!["r".into()],
                sandbox: "netns".into(),
                capability_sha256: None,
                tenant: None,
                user: None,
            },
            LogOptions::default(),
        )
        .expect("log");
        let events = EventBus::new();
        let rx = events.subscribe();
        let metering = Arc::new(Metering::new(
            super::super::RateCard::builtin(),
            super::super::MeterSettings::default(),
            Ledger::new(Counters::default()),
            receipts,
            events,
            None,
        ));
        let body: &[u8] = if asked {
            br#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"max_tokens":10,"messages":[]}"#
        } else {
            br#"{"model":"gpt-4o-mini","stream":true,"max_tokens":10,"messages":[]}"#
        };
        let plan = metering
            .plan("api.openai.com", "/v1/chat/completions", body)
            .expect("plan");
        assert_eq!(plan.strip_usage_chunk, !asked);
        let ticket = Ticket {
            request: 1,
            conn: 1,
            action: Action::request(
                ActionType::Llm,
                "POST",
                "api.openai.com",
                "/v1/chat/completions",
            ),
            decision_seq: 1,
            reserved: plan.reserved.unwrap_or(0),
            plan,
            quota: None,
        };
        (MeterFilter::new(None, true, metering, ticket), rx)
    }

    fn settled(rx: &mut broadcast::Receiver<Event>) -> (UsageTokens, bool) {
        let usage = rx.try_recv().expect("usage event").usage.expect("usage");
        (usage.tokens, usage.estimated)
    }

    const REPORTED: UsageTokens = UsageTokens {
        input: 12,
        cached_input: 0,
        cache_write_5m: 0,
        cache_write_1h: 0,
        output: 7,
        reasoning: 0,
    };

    #[test]
    fn a_chunk_goes_on_before_it_is_read() {
        let (mut f, mut rx) = filter();
        f.push(Bytes::from_static(FIRST)).expect("push");
        // Given out as it came, not read yet.
        assert_eq!(f.pull().expect("pull").as_deref(), Some(FIRST));
        assert_eq!(f.reader.reported().id, None);
        // Read at the next pull, before more input is asked for.
        assert_eq!(f.pull().expect("pull"), None);
        assert_eq!(f.reader.reported().id.as_deref(), Some("chatcmpl-1"));
        f.push(Bytes::from_static(USAGE)).expect("push");
        f.finish().expect("finish");
        assert_eq!(f.pull().expect("pull").as_deref(), Some(USAGE));
        assert!(rx.try_recv().is_err(), "settled before the body ended");
        assert_eq!(f.pull().expect("pull"), None);
        assert_eq!(settled(&mut rx), (REPORTED, false));
    }

    #[test]
    fn a_chunk_given_out_but_not_yet_read_counts_when_the_client_goes() {
        let (mut f, mut rx) = filter();
        f.push(Bytes::from_static(FIRST)).expect("push");
        assert!(f.pull().expect("pull").is_some());
        f.push(Bytes::from_static(USAGE)).expect("push");
        assert_eq!(f.pull().expect("pull").as_deref(), Some(USAGE));
        // The client goes before the next pull: the usage chunk it was
        // given is read when the filter is dropped.
        drop(f);
        assert_eq!(settled(&mut rx), (REPORTED, false));
    }

    /// Pulls until the filter wants more input.
    fn pull_all(f: &mut MeterFilter, out: &mut Vec<u8>) {
        while let Some(b) = f.pull().expect("pull") {
            out.extend_from_slice(&b);
        }
    }

    #[test]
    fn when_removing_the_usage_chunk_the_first_events_go_on_before_they_are_read() {
        for brk in ["\n", "\r\n"] {
            let crlf = |s: &[u8]| {
                String::from_utf8(s.to_vec())
                    .expect("utf8")
                    .replace('\n', brk)
            };
            let (first, usage) = (crlf(FIRST), crlf(USAGE));
            let (mut f, mut rx) = filter_for(false);
            let mut out = Vec::new();
            f.push(Bytes::from(first.clone())).expect("push");
            let given = f.pull().expect("pull").expect("the first chunk");
            // Out before it was read: all of it but a CRLF blank line's
            // `\n`, which goes with the next event.
            assert_eq!(f.reader.reported().id, None);
            let held_back = usize::from(brk == "\r\n");
            assert_eq!(&given[..], &first.as_bytes()[..first.len() - held_back]);
            out.extend_from_slice(&given);
            pull_all(&mut f, &mut out);
            assert_eq!(f.reader.reported().id.as_deref(), Some("chatcmpl-1"));
            f.push(Bytes::from(usage.clone())).expect("push");
            f.finish().expect("finish");
            pull_all(&mut f, &mut out);
            // The client sees the stream without the usage chunk.
            let done = format!("data: [DONE]{brk}{brk}");
            assert_eq!(
                String::from_utf8(out).expect("utf8"),
                format!("{first}{done}"),
                "{brk:?}"
            );
            assert_eq!(settled(&mut rx), (REPORTED, false));
        }
    }

    #[test]
    fn malformed_usage_read_after_the_forward_is_still_charged_the_reservation() {
        let (mut f, mut rx) = filter();
        let reserved = f.settle.as_ref().expect("ticket").1.reserved;
        assert!(reserved > 0);
        let bad = b"data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":\"12\"\n\n";
        f.push(Bytes::from_static(bad)).expect("push");
        f.finish().expect("finish");
        assert!(f.pull().expect("pull").is_some());
        assert_eq!(f.pull().expect("pull"), None);
        let usage = rx.try_recv().expect("event").usage.expect("usage");
        assert!(usage.estimated);
        assert_eq!(usage.cost_micro_usd, reserved);
    }
}
