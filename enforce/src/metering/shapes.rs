//! The provider API shapes the proxy meters, and reading what each says
//! about usage — from a JSON body or an event stream, as it passes — into
//! [`UsageTokens`].
//!
//! - OpenAI Chat Completions (and the legacy completions endpoint, and
//!   OpenAI-compatible servers: vLLM, Ollama, llama.cpp): `usage` with
//!   `prompt_tokens` (cached included), `completion_tokens` (reasoning
//!   included); streamed, one final chunk with `choices: []` when the
//!   request set `stream_options.include_usage`.
//! - OpenAI Responses: `usage` with `input_tokens`, `output_tokens` and
//!   their details; streamed, inside `response.completed`,
//!   `response.incomplete` or `response.failed`.
//! - Anthropic Messages: `usage` with `input_tokens` (cache reads and writes
//!   excluded), `cache_read_input_tokens`, `cache_creation_input_tokens` (and
//!   its 5-minute / 1-hour breakdown), `output_tokens`; streamed,
//!   `message_start` carries the input side and `message_delta` cumulative
//!   counts (replacing, never added to, what came before); the tier that
//!   served the call in `usage.service_tier` (`message_start`'s).
//! - Embeddings: `usage.prompt_tokens`, or `total_tokens` alone (servers
//!   that only report that).

use std::sync::LazyLock;

use memchr::memmem::Finder;
use receipts::UsageTokens;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::Value;

use super::scan::{MemberScanner, Paths};
use super::sse::{SseReader, SseSink};

/// An API shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Chat,
    Responses,
    Embeddings,
    Messages,
}

impl Api {
    /// The shape of a request to `path` (without its query), by its last
    /// segments, so a gateway's prefix (`/openai/v1/...`) reads the same.
    pub(crate) fn from_path(path: &str) -> Option<Api> {
        let path = path.trim_end_matches('/');
        if path.ends_with("/chat/completions") || path.ends_with("/v1/completions") {
            Some(Api::Chat)
        } else if path.ends_with("/responses") {
            Some(Api::Responses)
        } else if path.ends_with("/embeddings") {
            Some(Api::Embeddings)
        } else if path.ends_with("/messages") {
            Some(Api::Messages)
        } else {
            None
        }
    }

    /// The provider-shaped `429` for a call of this shape past `quota`: the
    /// body an SDK of that provider parses as its own quota error, with
    /// `retry-after` in seconds.
    pub(crate) fn quota_refusal(
        self,
        quota: &str,
        detail: &str,
        retry_after: Duration,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let message = format!("openclaw: tenant quota {quota} reached: {detail}");
        let body = match self {
            Api::Messages => serde_json::json!({
                "type": "error",
                "error": {"type": "rate_limit_error", "message": message},
            }),
            Api::Chat | Api::Responses | Api::Embeddings => serde_json::json!({
                "error": {
                    "message": message,
                    "type": "insufficient_quota",
                    "param": null,
                    "code": "insufficient_quota",
                },
            }),
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(retry_after.as_secs()),
        );
        (
            StatusCode::TOO_MANY_REQUESTS,
            headers,
            Bytes::from(body.to_string()),
        )
    }

    /// The name a usage receipt records.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Api::Chat => "openai.chat",
            Api::Responses => "openai.responses",
            Api::Embeddings => "openai.embeddings",
            Api::Messages => "anthropic.messages",
        }
    }
}

/// The count at `pointer` (a JSON pointer of plain object keys, as every
/// caller's is), walked key by key: `Value::pointer` unescapes each token
/// into a new string first, which cost more than the rest of reading the
/// usage chunk's JSON.
fn count(v: &Value, pointer: &str) -> Option<u64> {
    debug_assert!(pointer.starts_with('/') && !pointer.contains('~'));
    pointer
        .split('/')
        .skip(1)
        .try_fold(v, |v, key| v.get(key))
        .and_then(Value::as_u64)
}

/// Anthropic's counts as reported so far in one response.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct AnthropicCounts {
    input: u64,
    cache_read: u64,
    /// All cache writes (`cache_creation_input_tokens`).
    cache_write: u64,
    /// Of those, the 1-hour ones (`cache_creation.ephemeral_1h_input_tokens`).
    cache_write_1h: u64,
    output: u64,
}

impl AnthropicCounts {
    /// Takes every count `usage` reports (they are cumulative: each
    /// replaces the last).
    pub(crate) fn update(&mut self, usage: &Value) {
        let set = |slot: &mut u64, pointer: &str| {
            if let Some(n) = count(usage, pointer) {
                *slot = n;
            }
        };
        set(&mut self.input, "/input_tokens");
        set(&mut self.cache_read, "/cache_read_input_tokens");
        set(&mut self.cache_write, "/cache_creation_input_tokens");
        set(&mut self.output, "/output_tokens");
        if let Some(breakdown) = usage.get("cache_creation").filter(|v| v.is_object()) {
            let five = count(breakdown, "/ephemeral_5m_input_tokens").unwrap_or(0);
            let hour = count(breakdown, "/ephemeral_1h_input_tokens").unwrap_or(0);
            self.cache_write_1h = hour;
            // Without the total, the breakdown is the total.
            if usage.get("cache_creation_input_tokens").is_none() {
                self.cache_write = five.saturating_add(hour);
            }
        }
    }

    pub(crate) fn tokens(&self) -> UsageTokens {
        // Writes without a breakdown are 5-minute ones (the default lifetime).
        let hour = self.cache_write_1h.min(self.cache_write);
        UsageTokens {
            input: self.input,
            cached_input: self.cache_read,
            cache_write_5m: self.cache_write - hour,
            cache_write_1h: hour,
            output: self.output,
            reasoning: 0,
        }
    }
}

/// A complete `usage` object of `api`'s shape, normalized.
pub(crate) fn normalize(api: Api, usage: &Value) -> UsageTokens {
    match api {
        Api::Chat => openai_tokens(
            usage,
            [
                "/prompt_tokens",
                "/prompt_tokens_details/cached_tokens",
                "/completion_tokens",
                "/completion_tokens_details/reasoning_tokens",
            ],
        ),
        Api::Responses => openai_tokens(
            usage,
            [
                "/input_tokens",
                "/input_tokens_details/cached_tokens",
                "/output_tokens",
                "/output_tokens_details/reasoning_tokens",
            ],
        ),
        Api::Embeddings => UsageTokens {
            input: count(usage, "/prompt_tokens")
                .or_else(|| count(usage, "/total_tokens"))
                .unwrap_or(0),
            ..UsageTokens::default()
        },
        Api::Messages => {
            let mut counts = AnthropicCounts::default();
            counts.update(usage);
            counts.tokens()
        }
    }
}

/// OpenAI's two shapes name the same four counts differently (`pointers`:
/// input, cached, output, reasoning). Their input includes the cached
/// tokens and their output the reasoning ones; a part is capped at its whole
/// so a malformed report cannot make `input` wrap.
fn openai_tokens(usage: &Value, pointers: [&str; 4]) -> UsageTokens {
    let [input, cached, output, reasoning] = pointers;
    let input = count(usage, input).unwrap_or(0);
    let cached = count(usage, cached).unwrap_or(0).min(input);
    let output = count(usage, output).unwrap_or(0);
    UsageTokens {
        input: input - cached,
        cached_input: cached,
        output,
        reasoning: count(usage, reasoning).unwrap_or(0).min(output),
        ..UsageTokens::default()
    }
}

/// What a response said about its usage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Reported {
    /// The final counts, once the response gave them.
    pub tokens: Option<UsageTokens>,
    /// The provider's response id.
    pub id: Option<String>,
    /// The model the provider says answered.
    pub model: Option<String>,
    /// The tier the provider says served the call (OpenAI's top-level
    /// `service_tier`, Anthropic's `usage.service_tier`), once one was
    /// read: `Some(true)` when any read part of the response named
    /// `"priority"` — what the provider bills for, also for a request that
    /// asked for no tier or `auto` when the project's default is priority
    /// (OpenAI) or the organization has priority capacity (Anthropic).
    pub priority: Option<bool>,
    /// A usage object of the response held a count that is not a
    /// non-negative integer (`"12"`, `-1`, `1.5`): no report of this
    /// response is trusted after it, so the call is charged its
    /// reservation and marked estimated rather than settled at zero.
    pub malformed: bool,
    /// The usage reports provider-run tool uses billed per use
    /// (Anthropic's `server_tool_use`, e.g. `web_search_requests`), which
    /// the rate card does not price: the call is charged its reservation,
    /// marked estimated, rather than its tokens alone.
    pub server_tool_use: bool,
}

impl Reported {
    /// Takes `usage`'s counts (`tokens` of it) as the final ones, unless
    /// this or an earlier usage object of the response was malformed.
    fn record(&mut self, api: Api, usage: &Value, tokens: impl FnOnce() -> UsageTokens) {
        self.check(api, usage);
        self.tokens = (!self.malformed).then(tokens);
        // Any use counted (a count not 0 or absent): the counts are
        // cumulative, so once seen it stays.
        if let Some(Value::Object(uses)) = usage.get("server_tool_use") {
            self.server_tool_use |= uses.values().any(|n| n.as_u64() != Some(0) && !n.is_null());
        }
    }

    /// Takes a `service_tier` member's text, if there was one (a `null`
    /// names no tier, as OpenAI-compatible servers send): once any part of
    /// the response said `"priority"` the call was (a cheaper name
    /// elsewhere in it never lowers the charge).
    fn tier(&mut self, text: Option<&[u8]>) {
        if let Some(value) = text.and_then(|t| serde_json::from_slice::<Value>(t).ok()) {
            self.tier_value(&value);
        }
    }

    fn tier_value(&mut self, value: &Value) {
        if !value.is_null() {
            let priority = value.as_str() == Some("priority");
            self.priority = Some(self.priority == Some(true) || priority);
        }
    }

    /// Anthropic names the tier inside `usage` (`standard`, `priority`,
    /// `batch`): in the answer, `message_start`'s and (if sent)
    /// `message_delta`'s.
    fn anthropic_tier(&mut self, usage: &Value) {
        if let Some(tier) = usage.get("service_tier") {
            self.tier_value(tier);
        }
    }

    /// Marks the report malformed when one of `usage`'s counts is.
    fn check(&mut self, api: Api, usage: &Value) {
        if !counts_are_integers(api, usage) {
            self.malformed = true;
            self.tokens = None;
        }
    }
}

/// Every count [`normalize`] reads for `api`, as JSON pointers.
fn count_pointers(api: Api) -> &'static [&'static str] {
    match api {
        Api::Chat => &[
            "/prompt_tokens",
            "/prompt_tokens_details/cached_tokens",
            "/completion_tokens",
            "/completion_tokens_details/reasoning_tokens",
        ],
        Api::Responses => &[
            "/input_tokens",
            "/input_tokens_details/cached_tokens",
            "/output_tokens",
            "/output_tokens_details/reasoning_tokens",
        ],
        Api::Embeddings => &["/prompt_tokens", "/total_tokens"],
        Api::Messages => &[
            "/input_tokens",
            "/cache_read_input_tokens",
            "/cache_creation_input_tokens",
            "/output_tokens",
            "/cache_creation/ephemeral_5m_input_tokens",
            "/cache_creation/ephemeral_1h_input_tokens",
        ],
    }
}

/// Whether each count `api` reads from `usage` is absent, `null` or a
/// non-negative integer, and each object on the way to it is an object
/// (or absent, or `null`). Anything else is a report the proxy cannot read
/// as the provider meant it: fail closed rather than count it as zero.
fn counts_are_integers(api: Api, usage: &Value) -> bool {
    count_pointers(api).iter().all(|pointer| {
        let mut at = usage;
        for key in pointer.split('/').skip(1) {
            match at {
                Value::Null => return true,
                Value::Object(members) => match members.get(key) {
                    Some(next) => at = next,
                    None => return true,
                },
                _ => return false,
            }
        }
        at.is_null() || at.is_u64()
    })
}

/// Members read from a whole JSON response (every shape).
const BODY_PATHS: Paths = &[&["usage"], &["id"], &["model"], &["service_tier"]];
/// Members read from each Chat stream chunk; `choices` tells the usage
/// chunk (`choices: []`) from content.
const CHAT_EVENT_PATHS: Paths = &[
    &["usage"],
    &["id"],
    &["model"],
    &["choices"],
    &["service_tier"],
];
/// `response.created` names the tier asked for, `response.completed` the
/// one that served the call (both read: the first event is read in full,
/// the last carries usage).
const RESPONSES_EVENT_PATHS: Paths = &[
    &["type"],
    &["response", "usage"],
    &["response", "id"],
    &["response", "model"],
    &["response", "service_tier"],
];
const MESSAGES_EVENT_PATHS: Paths = &[
    &["type"],
    &["message", "usage"],
    &["message", "id"],
    &["message", "model"],
    &["usage"],
];

/// Most raw bytes of one unfinished event held (from earlier chunks) in
/// case it turns out to carry usage; a longer event is read in full as it
/// streams instead.
const MAX_HELD_EVENT: usize = 16 * 1024;

/// The byte string every `usage` member's key is, also in an event's raw
/// bytes: the SSE framing cannot split it (a data line break inside a key
/// would put a newline in it), and inside a JSON string its quotes are
/// escaped (`\"usage\"`), so content rarely spells it.
const USAGE_KEY: &[u8] = b"\"usage\"";

/// Finds [`USAGE_KEY`]. Most events are searched once each, a few hundred
/// bytes: memchr's AVX2 pair search called directly takes about a third
/// fewer instructions there than through `memmem`'s dispatch (callgrind,
/// `benches/metering.rs`). `memmem` where the CPU lacks AVX2 or the bytes
/// are too few for it.
struct KeySearch {
    any: Finder<'static>,
    #[cfg(target_arch = "x86_64")]
    avx2: Option<memchr::arch::x86_64::avx2::packedpair::Finder>,
}

impl KeySearch {
    fn new() -> Self {
        KeySearch {
            any: Finder::new(USAGE_KEY),
            #[cfg(target_arch = "x86_64")]
            avx2: memchr::arch::x86_64::avx2::packedpair::Finder::new(USAGE_KEY),
        }
    }

    fn find(&self, haystack: &[u8]) -> Option<usize> {
        #[cfg(target_arch = "x86_64")]
        if let Some(avx2) = &self.avx2 {
            if haystack.len() >= avx2.min_haystack_len() {
                return avx2.find(haystack, USAGE_KEY);
            }
        }
        self.any.find(haystack)
    }
}

static KEY_SEARCH: LazyLock<KeySearch> = LazyLock::new(KeySearch::new);

/// Told the end of an event (see [`UsageReader::push`]).
type OnEvent<'a> = &'a mut dyn FnMut(&UsageReader, usize);

/// Who is told where events end.
enum Ends<'a> {
    /// Told each event's end.
    #[cfg(test)]
    Each(OnEvent<'a>),
    /// Told the ends of events that are not usage chunks coarsely.
    Coarse(OnEvent<'a>),
    /// Nobody.
    None,
}

/// How an event stream is being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Every byte through the SSE reader and the member scanner.
    Full,
    /// Raw lines: events are only split at their blank lines, and one is
    /// read in full only if its raw bytes may hold a `usage` member.
    Fast,
}

/// Reads one response's usage as its body passes, chunk by chunk: the
/// whole body as one JSON document, or each server-sent event's data.
///
/// Most events of a stream are content (a few words each) and cannot carry
/// usage. So after the first event with data (read in full, for the
/// response's id and model), the stream's raw bytes are only split into
/// events at their blank lines (a byte search per line, nothing copied),
/// and searched for the key `"usage"`; an event is read in full (SSE
/// fields, then the member scanner) only when it has that key with a
/// value other than `null` (with `include_usage`, every Chat chunk carries
/// `"usage":null`) — or when the raw bytes leave any doubt (a line break
/// after the key: its value may go on in the next `data` line). Every
/// shape's usage event also names the id and model, so nothing the
/// receipt records is skipped. An event split across chunks keeps its
/// earlier bytes (up to [`MAX_HELD_EVENT`], else it is read in full as it
/// streams), so a key split between chunks is found when the event ends.
/// The scanner still decides what is usage; this only skips events that
/// cannot have any. Nothing is held back from the client.
#[derive(Debug)]
pub(crate) struct UsageReader {
    api: Api,
    /// The body is an event stream (the reader's state in [`Mode::Full`]).
    sse: Option<SseReader>,
    scan: MemberScanner,
    anthropic: AnthropicCounts,
    reported: Reported,
    /// The event just dispatched was a Chat usage chunk (`choices: []` and
    /// a `usage` object).
    last_was_usage_chunk: bool,
    mode: Mode,
    /// An event with data was read in full: later ones may be skipped.
    read_one: bool,
    /// [`Mode::Full`]: the current event has data so far.
    has_data: bool,
    /// [`Mode::Fast`]: at the start of a line.
    line_start: bool,
    /// [`Mode::Fast`]: the last byte was a `\r` (a `\n` next belongs to it).
    after_cr: bool,
    /// [`Mode::Fast`]: no byte of the current event seen yet.
    fresh: bool,
    /// [`Mode::Fast`]: the current event's raw bytes from earlier chunks.
    held: Vec<u8>,
    /// Events whose data went through the member scanner (tests check
    /// that content events are skipped).
    #[cfg(test)]
    scanned: usize,
    /// Chunk tails passed over whole by [`Self::skip_whole_events`].
    #[cfg(test)]
    skipped_chunks: usize,
    /// Never [`Mode::Fast`]: the reference the tests compare it with.
    #[cfg(test)]
    full_only: bool,
}

impl UsageReader {
    pub(crate) fn new(api: Api, event_stream: bool) -> Self {
        let paths = match (event_stream, api) {
            (false, _) | (true, Api::Embeddings) => BODY_PATHS,
            (true, Api::Chat) => CHAT_EVENT_PATHS,
            (true, Api::Responses) => RESPONSES_EVENT_PATHS,
            (true, Api::Messages) => MESSAGES_EVENT_PATHS,
        };
        UsageReader {
            api,
            sse: event_stream.then(SseReader::default),
            scan: MemberScanner::new(paths),
            anthropic: AnthropicCounts::default(),
            reported: Reported::default(),
            last_was_usage_chunk: false,
            mode: Mode::Full,
            read_one: false,
            has_data: false,
            line_start: true,
            after_cr: false,
            fresh: true,
            held: Vec::new(),
            #[cfg(test)]
            scanned: 0,
            #[cfg(test)]
            skipped_chunks: 0,
            #[cfg(test)]
            full_only: false,
        }
    }

    /// More of the body. `on_event(end)` is called for each event that
    /// ends in `chunk` (`end` is its offset just past the event), after it
    /// was read, so [`Self::last_was_usage_chunk`] describes it.
    /// The reference the tests compare [`Self::push_coarse`] with.
    #[cfg(test)]
    pub(crate) fn push(&mut self, chunk: &[u8], on_event: &mut dyn FnMut(&Self, usize)) {
        self.read(chunk, Ends::Each(on_event));
    }

    /// [`Self::push`], but the ends of events that are not usage chunks
    /// may be told as one: a chunk of whole events none of which may carry
    /// usage is passed over with one search for the key (not one per event
    /// and line) and told as one event ending at the chunk's end. Enough
    /// to remove usage chunks: every usage chunk's end, and the end before
    /// it, are still told.
    pub(crate) fn push_coarse(&mut self, chunk: &[u8], on_event: &mut dyn FnMut(&Self, usize)) {
        self.read(chunk, Ends::Coarse(on_event));
    }

    /// More of the body, when nobody needs to know where events end (see
    /// [`Self::push_coarse`]).
    pub(crate) fn push_quiet(&mut self, chunk: &[u8]) {
        self.read(chunk, Ends::None);
    }

    fn read(&mut self, chunk: &[u8], ends: Ends<'_>) {
        let Some(mut sse) = self.sse.take() else {
            self.scan.push(chunk);
            return;
        };
        let mut ignore = |_: &Self, _: usize| {};
        let (coarse, on_event): (bool, OnEvent<'_>) = match ends {
            #[cfg(test)]
            Ends::Each(f) => (false, f),
            Ends::Coarse(f) => (true, f),
            Ends::None => (true, &mut ignore),
        };
        let mut i = 0;
        while i < chunk.len() {
            match self.mode {
                Mode::Full => {
                    let mut sink = EventSink {
                        reader: self,
                        on_event,
                        base: i,
                    };
                    i += sse.push(&chunk[i..], &mut sink);
                    if self.mode == Mode::Fast {
                        // Stopped just past an event.
                        self.line_start = true;
                        self.after_cr = sse.after_cr();
                        self.fresh = true;
                    }
                }
                Mode::Fast => {
                    if coarse && self.skip_whole_events(&chunk[i..]) {
                        // Told where the last event ended: before the `\n`
                        // of a CRLF blank line, as an event-by-event read
                        // tells it (that `\n` goes with the next event).
                        let crlf = chunk.ends_with(b"\r\n");
                        on_event(self, chunk.len() - usize::from(crlf));
                        break;
                    }
                    i = self.fast(chunk, i, on_event);
                    if self.mode == Mode::Full {
                        // The event at `i` is too long to hold: read it in
                        // full from its start (no event ends in `held`).
                        sse = SseReader::default();
                        let held = std::mem::take(&mut self.held);
                        let mut sink = EventSink {
                            reader: self,
                            on_event,
                            base: 0,
                        };
                        sse.push(&held, &mut sink);
                        self.held = held;
                        self.held.clear();
                    }
                }
            }
        }
        self.sse = Some(sse);
    }

    /// [`Mode::Fast`] without event ends wanted: when `rest` holds whole
    /// events only (it begins an event and ends with a blank line) and none
    /// of them may carry usage, they are passed over at once and this says
    /// so; otherwise nothing changes. One search over several events finds
    /// what searches event by event find: the key holds no line break, so no
    /// match spans two events, and what follows a match is judged only up
    /// to a line break, which every event ends with.
    fn skip_whole_events(&mut self, rest: &[u8]) -> bool {
        if !self.fresh
            || !self.line_start
            || !self.held.is_empty()
            || !ends_with_blank_line(rest)
            || raw_may_carry_usage(rest)
        {
            return false;
        }
        #[cfg(test)]
        {
            self.skipped_chunks += 1;
        }
        // The state just past a blank line: a `\r` ending it may be followed
        // by the `\n` of its CRLF in the next chunk.
        self.after_cr = rest.last() == Some(&b'\r');
        self.last_was_usage_chunk = false;
        true
    }

    /// Reads `chunk[from..]` in [`Mode::Fast`]; returns where it stopped:
    /// the chunk's end, or the start (in this chunk) of an unfinished event
    /// too long to hold, with the mode then [`Mode::Full`].
    fn fast(&mut self, chunk: &[u8], from: usize, on_event: &mut dyn FnMut(&Self, usize)) -> usize {
        let mut start = from;
        let mut i = from;
        while i < chunk.len() {
            let b = chunk[i];
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    i += 1;
                    if self.fresh {
                        // The rest of the blank line that ended the last event.
                        start = i;
                    }
                    continue;
                }
            }
            if self.line_start && (b == b'\n' || b == b'\r') {
                // A blank line ends the event.
                i += 1;
                self.after_cr = b == b'\r';
                self.fast_event(chunk, start, i, on_event);
                start = i;
                self.fresh = true;
                continue;
            }
            self.fresh = false;
            match memchr::memchr2(b'\n', b'\r', &chunk[i..]) {
                Some(off) => {
                    i += off + 1;
                    self.line_start = true;
                    self.after_cr = chunk[i - 1] == b'\r';
                }
                None => {
                    i = chunk.len();
                    self.line_start = false;
                }
            }
        }
        if !self.fresh {
            let rest = &chunk[start..];
            if self.held.len() + rest.len() > MAX_HELD_EVENT {
                self.mode = Mode::Full;
                return start;
            }
            self.held.extend_from_slice(rest);
        }
        chunk.len()
    }

    /// An event ended in [`Mode::Fast`]: `chunk[start..end]` (after the
    /// bytes held from earlier chunks, searched whole with them: the key
    /// may straddle the chunks).
    fn fast_event(
        &mut self,
        chunk: &[u8],
        start: usize,
        end: usize,
        on_event: &mut dyn FnMut(&Self, usize),
    ) {
        let may = if self.held.is_empty() {
            raw_may_carry_usage(&chunk[start..end])
        } else {
            self.held.extend_from_slice(&chunk[start..end]);
            raw_may_carry_usage(&self.held)
        };
        if may {
            let raw = if self.held.is_empty() {
                &chunk[start..end]
            } else {
                &self.held
            };
            SseReader::default().push(raw, &mut ScanSink(&mut self.scan));
            #[cfg(test)]
            {
                self.scanned += 1;
            }
            self.event();
        } else {
            self.last_was_usage_chunk = false;
        }
        self.held.clear();
        on_event(self, end);
    }

    /// The body ended (completely).
    pub(crate) fn finish(&mut self) {
        if self.sse.is_none() {
            let found = self.scan.take();
            let mut usage = None;
            for (path, text) in found {
                match path {
                    0 => usage = serde_json::from_slice::<Value>(&text).ok(),
                    1 => self.reported.id = string(&text),
                    2 => self.reported.model = string(&text),
                    _ => self.reported.tier(Some(&text)),
                }
            }
            if let Some(u) = usage.filter(Value::is_object) {
                let api = self.api;
                if api == Api::Messages {
                    self.reported.anthropic_tier(&u);
                }
                self.reported.record(api, &u, || normalize(api, &u));
            }
        }
    }

    /// Whether `chunk`, the next piece of the stream, may go to the client
    /// before it is read when usage chunks are removed: while the first
    /// event is still to be read in full (the read that would delay the
    /// first byte), a chunk that holds whole events (no data of the current
    /// one came before it, and it ends with a blank line) none of which has
    /// a `usage` key with a possible value holds no usage chunk. Later,
    /// reading a chunk costs no more than this check, so it is read first.
    pub(crate) fn may_pass_before_read(&self, chunk: &[u8]) -> bool {
        self.mode == Mode::Full
            && !self.has_data
            && self.sse.as_ref().is_some_and(SseReader::before_any_data)
            && ends_with_blank_line(chunk)
            && !raw_may_carry_usage(chunk)
    }

    pub(crate) fn reported(&self) -> &Reported {
        &self.reported
    }

    pub(crate) fn last_was_usage_chunk(&self) -> bool {
        self.last_was_usage_chunk
    }

    /// An event read in [`Mode::Full`] ended: its members read; the next
    /// ones are read fast once one with data was read.
    fn event_end(&mut self) {
        #[cfg(test)]
        {
            self.scanned += 1;
        }
        self.event();
        #[cfg(test)]
        {
            if self.full_only {
                return;
            }
        }
        self.read_one |= std::mem::take(&mut self.has_data);
        if self.read_one || (self.reported.id.is_some() && self.reported.model.is_some()) {
            self.mode = Mode::Fast;
        }
    }

    /// One event's members, read.
    fn event(&mut self) {
        let found = self.scan.take();
        self.scan.reset();
        self.last_was_usage_chunk = false;
        let get = |i: usize| {
            found
                .iter()
                .find(|(p, _)| *p == i)
                .map(|(_, t)| t.as_slice())
        };
        let object = |i: usize| {
            get(i)
                .and_then(|t| serde_json::from_slice::<Value>(t).ok())
                .filter(Value::is_object)
        };
        let first = |slot: &mut Option<String>, text: Option<&[u8]>| {
            if slot.is_none() {
                *slot = text.and_then(string);
            }
        };
        match self.api {
            Api::Chat | Api::Embeddings => {
                first(&mut self.reported.id, get(1));
                first(&mut self.reported.model, get(2));
                self.reported.tier(get(4));
                if let Some(u) = object(0) {
                    let api = self.api;
                    self.reported.record(api, &u, || normalize(api, &u));
                    self.last_was_usage_chunk = get(3).is_some_and(is_empty_array);
                }
            }
            Api::Responses => {
                first(&mut self.reported.id, get(2));
                first(&mut self.reported.model, get(3));
                self.reported.tier(get(4));
                let kind = get(0).and_then(string);
                let done = matches!(
                    kind.as_deref(),
                    Some("response.completed" | "response.incomplete" | "response.failed")
                );
                if let (true, Some(u)) = (done, object(1)) {
                    let tokens = || normalize(Api::Responses, &u);
                    self.reported.record(Api::Responses, &u, tokens);
                }
            }
            Api::Messages => {
                first(&mut self.reported.id, get(2));
                first(&mut self.reported.model, get(3));
                match get(0).and_then(string).as_deref() {
                    Some("message_start") => {
                        if let Some(u) = object(1) {
                            self.reported.check(Api::Messages, &u);
                            self.reported.anthropic_tier(&u);
                            self.anthropic.update(&u);
                        }
                    }
                    Some("message_delta") => {
                        if let Some(u) = object(4) {
                            self.reported.anthropic_tier(&u);
                            self.anthropic.update(&u);
                            // The delta's usage is the final, cumulative one.
                            let anthropic = self.anthropic;
                            self.reported
                                .record(Api::Messages, &u, || anthropic.tokens());
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

fn string(text: &[u8]) -> Option<String> {
    match serde_json::from_slice::<Value>(text).ok()? {
        Value::String(s) => Some(s),
        _ => None,
    }
}

/// Whether an event's raw bytes have a `"usage"` key whose value may be
/// other than `null`. False only when the event cannot report usage.
fn raw_may_carry_usage(raw: &[u8]) -> bool {
    let key = USAGE_KEY.len();
    let search = &*KEY_SEARCH;
    let mut from = 0;
    // One search at a time (an iterator's set-up costs more than the search
    // on an event of a few hundred bytes).
    while raw.len() - from >= key {
        let Some(at) = search.find(&raw[from..]) else {
            return false;
        };
        from += at + key;
        match no_value_after_key(&raw[from..]) {
            None => return true,
            // Past a `null` too: the event's tail after it is mostly
            // shorter than the key, and then not searched.
            Some(len) => from += len,
        }
    }
    false
}

/// Whether the `"usage"` just before `after` (raw event bytes) can have no
/// value but `null`: then `Some(len)`, `len` bytes after it that cannot
/// begin another key (blanks, `:`, `null`); `None` when it may have one.
/// Only spaces and tabs are skipped: at a line break the data (and so the
/// value) may go on in the next `data` line, which is then read in full.
fn no_value_after_key(after: &[u8]) -> Option<usize> {
    fn skip_blanks(mut s: &[u8]) -> &[u8] {
        while let [b' ' | b'\t', rest @ ..] = s {
            s = rest;
        }
        s
    }
    match skip_blanks(after) {
        [b':', value @ ..] => {
            let value = skip_blanks(value);
            value
                .starts_with(b"null")
                .then(|| after.len() - value.len() + 4)
        }
        [b'\n' | b'\r', ..] => None,
        // Not a key (a string value `"usage"`), or nothing after it.
        _ => Some(0),
    }
}

/// Whether `raw`, read from the start of a line, ends just past a blank line
/// (the end of an event) — the last line break being a blank line's, or
/// the `\n` of a blank line's CRLF. Decided from the last three bytes: a
/// line-break byte right after another one (not as the `\n` of a CRLF)
/// begins, and so is, a blank line.
fn ends_with_blank_line(raw: &[u8]) -> bool {
    let brk = |b: u8| b == b'\n' || b == b'\r';
    match raw {
        // `\r\n` whose `\r` follows a line break: a blank line in CRLF.
        [.., b3, b'\r', b'\n'] => brk(*b3),
        // `\n\n`, `\r\r`, `\n\r`: the last byte is a blank line; after
        // `\r`, a `\n` there would be the last byte's own CRLF.
        [.., b2, b1] => brk(*b1) && brk(*b2) && !(*b2 == b'\r' && *b1 == b'\n'),
        _ => false,
    }
}

fn is_empty_array(text: &[u8]) -> bool {
    text.iter()
        .filter(|b| !b.is_ascii_whitespace())
        .eq(b"[]".iter())
}

/// [`Mode::Full`]'s sink: data to the member scanner, each event read when
/// it ends and reported to the caller.
struct EventSink<'a, 'b> {
    reader: &'a mut UsageReader,
    on_event: &'b mut dyn FnMut(&UsageReader, usize),
    /// Where in the pushed chunk the SSE reader's input begins.
    base: usize,
}

impl SseSink for EventSink<'_, '_> {
    fn data(&mut self, bytes: &[u8]) {
        self.reader.has_data = true;
        self.reader.scan.push(bytes);
    }
    fn dispatch(&mut self, end: usize) {
        self.reader.event_end();
        (self.on_event)(self.reader, self.base + end);
    }
    fn stop(&self) -> bool {
        self.reader.mode == Mode::Fast
    }
}

/// Feeds one whole event's data to the member scanner (the caller reads it).
struct ScanSink<'a>(&'a mut MemberScanner);

impl SseSink for ScanSink<'_> {
    fn data(&mut self, bytes: &[u8]) {
        self.0.push(bytes);
    }
    fn dispatch(&mut self, _end: usize) {}
}

#[cfg(test)]
mod tests;
