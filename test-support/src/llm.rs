//! The test upstream's LLM provider answers, in the shapes the real client
//! libraries read: OpenAI Chat Completions and Anthropic Messages, streamed
//! (SSE) or not, with fixed usage figures that tests read back from usage
//! receipts and the ledger.

use serde_json::{json, Value};

/// The text every answer carries (streamed in [`REPLY_PIECES`]).
pub const REPLY_TEXT: &str = "Hello from the test provider";
/// How a streamed answer splits [`REPLY_TEXT`].
pub const REPLY_PIECES: [&str; 3] = ["Hello", " from the", " test provider"];

/// The model the Chat answers name.
pub const CHAT_MODEL: &str = "gpt-4o-mini";
/// The Chat usage: 120 prompt tokens (20 of them cached), 30 completion
/// tokens (10 of them reasoning).
pub const CHAT_USAGE: ChatUsage = ChatUsage {
    prompt: 120,
    cached: 20,
    completion: 30,
    reasoning: 10,
};

/// The model the Messages answers name.
pub const MESSAGES_MODEL: &str = "claude-sonnet-4-5";
/// The Messages usage: 40 input tokens, 8 read from the cache, 5 written to
/// it, 25 output tokens.
pub const MESSAGES_USAGE: MessagesUsage = MessagesUsage {
    input: 40,
    cache_read: 8,
    cache_write: 5,
    output: 25,
};

/// OpenAI Chat usage figures.
#[derive(Clone, Copy, Debug)]
pub struct ChatUsage {
    pub prompt: u64,
    pub cached: u64,
    pub completion: u64,
    pub reasoning: u64,
}

/// The tier the Messages answers say served the call (`usage.service_tier`,
/// as Anthropic's do): the standard one, so the calls are priced at it.
pub const MESSAGES_SERVICE_TIER: &str = "standard";

/// Anthropic Messages usage figures.
#[derive(Clone, Copy, Debug)]
pub struct MessagesUsage {
    pub input: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    pub output: u64,
}

/// A provider's answer: one JSON body, or SSE events (each a complete
/// `event:`/`data:` block, sent as one frame).
#[derive(Clone, Debug)]
pub enum LlmAnswer {
    Json(String),
    Events(Vec<String>),
}

/// The answer to a request `body` at `path`, or `None` for a path that is
/// not a provider endpoint. A Chat stream carries its usage chunk only when
/// the request asks (`stream_options.include_usage`), as OpenAI's does.
pub fn llm_answer(path: &str, body: &[u8]) -> Option<LlmAnswer> {
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let stream = request["stream"] == true;
    match path {
        "/v1/chat/completions" if stream => Some(LlmAnswer::Events(chat_events(
            request["stream_options"]["include_usage"] == true,
        ))),
        "/v1/chat/completions" => Some(LlmAnswer::Json(chat_completion())),
        "/v1/messages" if stream => Some(LlmAnswer::Events(messages_events())),
        "/v1/messages" => Some(LlmAnswer::Json(message().to_string())),
        _ => None,
    }
}

fn chat_usage() -> Value {
    let u = CHAT_USAGE;
    json!({"prompt_tokens": u.prompt, "completion_tokens": u.completion,
        "total_tokens": u.prompt + u.completion,
        "prompt_tokens_details": {"cached_tokens": u.cached},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning}})
}

/// The non-streamed Chat Completions answer.
pub fn chat_completion() -> String {
    json!({"id": "chatcmpl-test", "object": "chat.completion", "created": 1_764_806_400,
        "model": CHAT_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY_TEXT},
            "finish_reason": "stop"}],
        "usage": chat_usage()})
    .to_string()
}

fn chat_events(include_usage: bool) -> Vec<String> {
    let chunk = |choices: Value, usage: Value| {
        let mut c = json!({"id": "chatcmpl-test", "object": "chat.completion.chunk",
            "created": 1_764_806_400, "model": CHAT_MODEL, "choices": choices});
        if include_usage {
            c["usage"] = usage;
        }
        format!("data: {c}\n\n")
    };
    let mut events = vec![chunk(
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}}]),
        Value::Null,
    )];
    for piece in REPLY_PIECES {
        events.push(chunk(
            json!([{"index": 0, "delta": {"content": piece}}]),
            Value::Null,
        ));
    }
    events.push(chunk(
        json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
        Value::Null,
    ));
    if include_usage {
        events.push(chunk(json!([]), chat_usage()));
    }
    events.push("data: [DONE]\n\n".to_owned());
    events
}

fn message() -> Value {
    let u = MESSAGES_USAGE;
    json!({"id": "msg_test", "type": "message", "role": "assistant", "model": MESSAGES_MODEL,
        "content": [{"type": "text", "text": REPLY_TEXT}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": u.input, "cache_read_input_tokens": u.cache_read,
            "cache_creation_input_tokens": u.cache_write, "output_tokens": u.output,
            "service_tier": MESSAGES_SERVICE_TIER}})
}

fn messages_events() -> Vec<String> {
    let u = MESSAGES_USAGE;
    let event = |v: Value| format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap_or(""));
    // message_start carries the input side (and a first output count);
    // message_delta's usage is cumulative, as Anthropic's is.
    let mut start = message();
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    start["usage"]["output_tokens"] = json!(1);
    let mut events = vec![
        event(json!({"type": "message_start", "message": start})),
        event(json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}})),
    ];
    for piece in REPLY_PIECES {
        events.push(event(json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": piece}})));
    }
    events.push(event(json!({"type": "content_block_stop", "index": 0})));
    events.push(event(json!({"type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": null},
        "usage": {"output_tokens": u.output}})));
    events.push(event(json!({"type": "message_stop"})));
    events
}
