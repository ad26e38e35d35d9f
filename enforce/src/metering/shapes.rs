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
//!   counts (replacing, never added to, what came before).
//! - Embeddings: `usage.prompt_tokens`, or `total_tokens` alone (servers
//!   that only report that).

use std::sync::LazyLock;

use memchr::memmem::Finder;
use receipts::UsageTokens;
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

fn count(v: &Value, pointer: &str) -> Option<u64> {
    v.pointer(pointer).and_then(Value::as_u64)
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
}

/// Members read from a whole JSON response (every shape).
const BODY_PATHS: Paths = &[&["usage"], &["id"], &["model"]];
/// Members read from each Chat stream chunk; `choices` tells the usage
/// chunk (`choices: []`) from content.
const CHAT_EVENT_PATHS: Paths = &[&["usage"], &["id"], &["model"], &["choices"]];
const RESPONSES_EVENT_PATHS: Paths = &[
    &["type"],
    &["response", "usage"],
    &["response", "id"],
    &["response", "model"],
];
const MESSAGES_EVENT_PATHS: Paths = &[
    &["type"],
    &["message", "usage"],
    &["message", "id"],
    &["message", "model"],
    &["usage"],
];

/// Most bytes of one event's data held back to decide, at its end, whether
/// it needs reading at all; a longer event is read as it streams.
const MAX_HELD_EVENT: usize = 16 * 1024;

/// The byte string every `usage` member's key is: an event without one
/// (followed by something other than `null`) cannot report usage.
static USAGE_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));

/// How the current event's data is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventRead {
    /// Fed to the member scanner as it arrives.
    Scan,
    /// Held (up to [`MAX_HELD_EVENT`]) until the event ends, then scanned
    /// only if it may carry usage.
    Hold,
}

/// Reads one response's usage as its body passes, chunk by chunk: the
/// whole body as one JSON document, or each server-sent event's data.
///
/// Most events of a stream are content (a few words each) and cannot carry
/// usage; walking their JSON cost ~13 ns a byte. So once the response's id
/// and model are known, an event's data is held to its end and only
/// scanned when it contains the key `"usage"` with a value other than
/// `null` (with `include_usage`, every Chat chunk carries `"usage":null`).
/// A `"usage"` inside a string value cannot match: there its quotes are
/// escaped. The scanner still decides what is usage; this only skips events
/// that cannot have any.
#[derive(Debug)]
pub(crate) struct UsageReader {
    api: Api,
    /// The body is an event stream.
    sse: Option<SseReader>,
    scan: MemberScanner,
    anthropic: AnthropicCounts,
    reported: Reported,
    /// The event just dispatched was a Chat usage chunk (`choices: []` and
    /// a `usage` object).
    last_was_usage_chunk: bool,
    /// How the current event is read.
    read: EventRead,
    /// When holding: the current event's data so far.
    held: Vec<u8>,
    /// Events whose data went through the member scanner (tests check
    /// that content events are skipped).
    #[cfg(test)]
    scanned: usize,
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
            read: EventRead::Scan,
            held: Vec::new(),
            #[cfg(test)]
            scanned: 0,
        }
    }

    /// More of the body. `on_event(end)` is called for each event that
    /// ends in `chunk` (`end` is its offset just past the event), after it
    /// was read, so [`Self::last_was_usage_chunk`] describes it.
    pub(crate) fn push(&mut self, chunk: &[u8], on_event: &mut dyn FnMut(&Self, usize)) {
        match self.sse.take() {
            None => self.scan.push(chunk),
            Some(mut sse) => {
                let mut sink = EventSink {
                    reader: self,
                    on_event,
                };
                sse.push(chunk, &mut sink);
                self.sse = Some(sse);
            }
        }
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
                    _ => self.reported.model = string(&text),
                }
            }
            if let Some(u) = usage.filter(Value::is_object) {
                self.reported.tokens = Some(normalize(self.api, &u));
            }
        }
    }

    pub(crate) fn reported(&self) -> &Reported {
        &self.reported
    }

    pub(crate) fn last_was_usage_chunk(&self) -> bool {
        self.last_was_usage_chunk
    }

    /// More of the current event's data.
    fn event_data(&mut self, bytes: &[u8]) {
        match self.read {
            EventRead::Scan => self.scan.push(bytes),
            EventRead::Hold if self.held.len() + bytes.len() > MAX_HELD_EVENT => {
                // Too long to hold: read it as it streams after all.
                self.read = EventRead::Scan;
                self.scan.push(&self.held);
                self.held.clear();
                self.scan.push(bytes);
            }
            EventRead::Hold => self.held.extend_from_slice(bytes),
        }
    }

    /// The current event ended: read it (unless it was held and cannot
    /// carry usage), and choose how to read the next.
    fn event_end(&mut self) {
        let scanned = match self.read {
            EventRead::Scan => true,
            EventRead::Hold => {
                let may = may_carry_usage(&self.held);
                if may {
                    self.scan.push(&self.held);
                }
                self.held.clear();
                may
            }
        };
        if scanned {
            #[cfg(test)]
            {
                self.scanned += 1;
            }
            self.event();
        } else {
            self.last_was_usage_chunk = false;
        }
        // Until the id and model are known, every event is read whole.
        self.read = if self.reported.id.is_some() && self.reported.model.is_some() {
            EventRead::Hold
        } else {
            EventRead::Scan
        };
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
                if let Some(u) = object(0) {
                    self.reported.tokens = Some(normalize(self.api, &u));
                    self.last_was_usage_chunk = get(3).is_some_and(is_empty_array);
                }
            }
            Api::Responses => {
                first(&mut self.reported.id, get(2));
                first(&mut self.reported.model, get(3));
                let kind = get(0).and_then(string);
                let done = matches!(
                    kind.as_deref(),
                    Some("response.completed" | "response.incomplete" | "response.failed")
                );
                if let (true, Some(u)) = (done, object(1)) {
                    self.reported.tokens = Some(normalize(Api::Responses, &u));
                }
            }
            Api::Messages => {
                first(&mut self.reported.id, get(2));
                first(&mut self.reported.model, get(3));
                match get(0).and_then(string).as_deref() {
                    Some("message_start") => {
                        if let Some(u) = object(1) {
                            self.anthropic.update(&u);
                        }
                    }
                    Some("message_delta") => {
                        if let Some(u) = object(4) {
                            self.anthropic.update(&u);
                            // The delta's usage is the final, cumulative one.
                            self.reported.tokens = Some(self.anthropic.tokens());
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

/// Whether one event's data has a `"usage"` key whose value is not `null`
/// (or may be: anything but `null` after the colon counts). False only when
/// the event cannot report usage.
fn may_carry_usage(data: &[u8]) -> bool {
    fn skip_space(mut s: &[u8]) -> &[u8] {
        while let [b' ' | b'\t' | b'\n' | b'\r', rest @ ..] = s {
            s = rest;
        }
        s
    }
    USAGE_KEY.find_iter(data).any(|at| {
        match skip_space(&data[at + USAGE_KEY.needle().len()..]) {
            [b':', value @ ..] => !skip_space(value).starts_with(b"null"),
            // Not a key (a string value `"usage"`).
            _ => false,
        }
    })
}

fn is_empty_array(text: &[u8]) -> bool {
    text.iter()
        .filter(|b| !b.is_ascii_whitespace())
        .eq(b"[]".iter())
}

struct EventSink<'a, 'b> {
    reader: &'a mut UsageReader,
    on_event: &'b mut dyn FnMut(&UsageReader, usize),
}

impl SseSink for EventSink<'_, '_> {
    fn data(&mut self, bytes: &[u8]) {
        self.reader.event_data(bytes);
    }
    fn dispatch(&mut self, end: usize) {
        self.reader.event_end();
        (self.on_event)(self.reader, end);
    }
}

#[cfg(test)]
mod tests;
