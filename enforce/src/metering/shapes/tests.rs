//! Usage read from every shape, streamed and not, with the body cut into
//! pieces at every offset; normalization checked against the receipts
//! crate's golden cost files.

use super::*;

/// Reads `body` pushed in two pieces cut at `cut`; returns what was
/// reported and the offsets where events ended (in the whole body), with
/// whether each was a Chat usage chunk.
fn read(api: Api, stream: bool, body: &[u8], cut: usize) -> (Reported, Vec<(usize, bool)>) {
    let mut r = UsageReader::new(api, stream);
    let mut ends = Vec::new();
    let mut base = 0;
    for piece in [&body[..cut], &body[cut..]] {
        r.push(piece, &mut |reader, end| {
            ends.push((base + end, reader.last_was_usage_chunk()));
        });
        base += piece.len();
    }
    r.finish();
    (r.reported().clone(), ends)
}

/// The same result whatever the cut; returns it.
fn read_every_cut(api: Api, stream: bool, body: &[u8]) -> (Reported, Vec<(usize, bool)>) {
    let whole = read(api, stream, body, body.len());
    for cut in 0..body.len() {
        assert_eq!(read(api, stream, body, cut), whole, "cut at {cut}");
    }
    // And byte by byte.
    let mut r = UsageReader::new(api, stream);
    for b in body {
        r.push(std::slice::from_ref(b), &mut |_, _| {});
    }
    r.finish();
    assert_eq!(r.reported(), &whole.0, "byte by byte");
    whole
}

const CHAT_STREAM: &str = concat!(
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",",
    "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,",
    "\"delta\":{\"content\":\"usage: {\\\"prompt_tokens\\\": 1}\"}}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,",
    "\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],",
    "\"usage\":{\"prompt_tokens\":2007,\"completion_tokens\":300,\"total_tokens\":2307,",
    "\"prompt_tokens_details\":{\"cached_tokens\":1920},",
    "\"completion_tokens_details\":{\"reasoning_tokens\":192}}}\n\n",
    "data: [DONE]\n\n",
);

#[test]
fn chat_stream_usage_chunk() {
    let (r, ends) = read_every_cut(Api::Chat, true, CHAT_STREAM.as_bytes());
    assert_eq!(
        r.tokens,
        Some(UsageTokens {
            input: 87,
            cached_input: 1920,
            output: 300,
            reasoning: 192,
            ..UsageTokens::default()
        })
    );
    assert_eq!(r.id.as_deref(), Some("chatcmpl-1"));
    assert_eq!(r.model.as_deref(), Some("gpt-4o-2024-08-06"));
    let flags: Vec<bool> = ends.iter().map(|e| e.1).collect();
    assert_eq!(flags, vec![false, false, false, true, false]);
    // The usage chunk ends where the [DONE] event begins.
    let usage_end = CHAT_STREAM.find("data: [DONE]").expect("done");
    assert_eq!(ends[3].0, usage_end);
}

#[test]
fn chat_stream_without_usage_chunk_or_cut_reports_nothing() {
    let without = CHAT_STREAM.replace(
        &CHAT_STREAM[CHAT_STREAM
            .find("data: {\"id\":\"chatcmpl-1\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],")
            .expect("usage chunk")
            ..CHAT_STREAM.find("data: [DONE]").expect("done")],
        "",
    );
    let (r, _) = read_every_cut(Api::Chat, true, without.as_bytes());
    assert_eq!(r.tokens, None);
    assert_eq!(r.id.as_deref(), Some("chatcmpl-1"));
    // Cut in the middle of the usage chunk: no usage.
    let at = CHAT_STREAM.find("\"completion_tokens\"").expect("in usage");
    let (r, _) = read_every_cut(Api::Chat, true, &CHAT_STREAM.as_bytes()[..at]);
    assert_eq!(r.tokens, None);
}

const RESPONSES_STREAM: &str = concat!(
    "event: response.created\n",
    "data: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"model\":\"o4-mini\",",
    "\"status\":\"in_progress\",\"usage\":null}}\n\n",
    "event: response.output_text.delta\n",
    "data: {\"type\":\"response.output_text.delta\",\"delta\":\"{\\\"usage\\\":{}}\"}\n\n",
    "event: response.completed\n",
    "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"model\":\"o4-mini\",",
    "\"output\":[{\"type\":\"message\",\"content\":[{\"type\":\"output_text\",\"text\":\"hi\"}]}],",
    "\"usage\":{\"input_tokens\":1234,\"input_tokens_details\":{\"cached_tokens\":1024},",
    "\"output_tokens\":567,\"output_tokens_details\":{\"reasoning_tokens\":448},\"total_tokens\":1801}}}\n\n",
);

#[test]
fn responses_stream_usage_in_completed() {
    let (r, ends) = read_every_cut(Api::Responses, true, RESPONSES_STREAM.as_bytes());
    assert_eq!(ends.len(), 3);
    assert_eq!(
        r.tokens,
        Some(UsageTokens {
            input: 210,
            cached_input: 1024,
            output: 567,
            reasoning: 448,
            ..UsageTokens::default()
        })
    );
    assert_eq!(r.id.as_deref(), Some("resp_1"));
    for kind in ["response.incomplete", "response.failed"] {
        let body = RESPONSES_STREAM.replace("response.completed", kind);
        let (r, _) = read(Api::Responses, true, body.as_bytes(), 17);
        assert_eq!(r.tokens.map(|t| t.output), Some(567), "{kind}");
    }
    let body = RESPONSES_STREAM.replace("response.completed", "response.in_progress");
    assert_eq!(
        read(Api::Responses, true, body.as_bytes(), 5).0.tokens,
        None
    );
}

const MESSAGES_STREAM: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",",
    "\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[],",
    "\"usage\":{\"input_tokens\":50,\"cache_creation_input_tokens\":1000,",
    "\"cache_read_input_tokens\":4000,\"cache_creation\":{\"ephemeral_5m_input_tokens\":0,",
    "\"ephemeral_1h_input_tokens\":1000},\"output_tokens\":1}}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: ping\ndata: {\"type\": \"ping\"}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},",
    "\"usage\":{\"output_tokens\":120}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
);

#[test]
fn messages_stream_start_then_cumulative_delta() {
    let (r, ends) = read_every_cut(Api::Messages, true, MESSAGES_STREAM.as_bytes());
    assert_eq!(ends.len(), 7);
    let expected = UsageTokens {
        input: 50,
        cached_input: 4000,
        cache_write_1h: 1000,
        output: 120,
        ..UsageTokens::default()
    };
    assert_eq!(r.tokens, Some(expected));
    assert_eq!(r.id.as_deref(), Some("msg_1"));
    assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    // A delta that repeats the input side (cumulative) replaces it, never adds.
    let body = MESSAGES_STREAM.replace(
        "\"usage\":{\"output_tokens\":120}",
        "\"usage\":{\"input_tokens\":50,\"cache_read_input_tokens\":4000,\"output_tokens\":120}",
    );
    assert_eq!(
        read(Api::Messages, true, body.as_bytes(), 100).0.tokens,
        Some(expected)
    );
    // Cut before message_delta: only the start's partial counts, so no usage.
    let at = MESSAGES_STREAM.find("event: message_delta").expect("delta");
    let (r, _) = read_every_cut(Api::Messages, true, &MESSAGES_STREAM.as_bytes()[..at]);
    assert_eq!(r.tokens, None);
}

#[test]
fn only_events_that_may_carry_usage_are_scanned() {
    // With include_usage, every content chunk carries `"usage":null`.
    let (_, ends) = read_every_cut(Api::Chat, true, CHAT_STREAM.as_bytes());
    assert_eq!(ends.len(), 5);
    let mut r = UsageReader::new(Api::Chat, true);
    r.push(CHAT_STREAM.as_bytes(), &mut |_, _| {});
    // The first (id and model unknown until read) and the usage chunk.
    assert_eq!(r.scanned, 2);
    let mut r = UsageReader::new(Api::Messages, true);
    r.push(MESSAGES_STREAM.as_bytes(), &mut |_, _| {});
    // message_start and message_delta.
    assert_eq!(r.scanned, 2);
    let mut r = UsageReader::new(Api::Responses, true);
    r.push(RESPONSES_STREAM.as_bytes(), &mut |_, _| {});
    // response.created (the first) and response.completed.
    assert_eq!(r.scanned, 2);
}

#[test]
fn usage_spelled_inside_content_is_not_usage() {
    // Content events that spell `"usage"` in their text (escaped quotes, a
    // string ending in a backslash, a value that is the word itself), or as
    // a key with a null value, and a usage key nested in content.
    let stream = concat!(
        "data: {\"id\":\"c-1\",\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c-1\",\"model\":\"m\",\"choices\":[{\"delta\":",
        "{\"content\":\"\\\"usage\\\": {\\\"prompt_tokens\\\": 5}\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c-1\",\"choices\":[{\"delta\":{\"content\":\"a\\\\\"}}],",
        "\"usage\" :\r\n null}\n\n",
        "data: {\"id\":\"c-1\",\"choices\":[{\"delta\":{\"content\":\"usage\",\"x\":\"usage\"}}]}\n\n",
        "data: {\"id\":\"c-1\",\"choices\":[{\"delta\":{\"usage\":{\"prompt_tokens\":6}}}]}\n\n",
        "data: [DONE]\n\n",
    );
    let (r, ends) = read_every_cut(Api::Chat, true, stream.as_bytes());
    assert_eq!(r.tokens, None);
    assert_eq!(ends.len(), 6);
    assert!(ends.iter().all(|e| !e.1));
    // The same stream with a real usage chunk reports exactly it.
    let with_usage = stream.replace(
        "data: [DONE]",
        "data: {\"id\":\"c-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\ndata: [DONE]",
    );
    let (r, ends) = read_every_cut(Api::Chat, true, with_usage.as_bytes());
    assert_eq!(
        r.tokens,
        Some(UsageTokens {
            input: 3,
            output: 4,
            ..UsageTokens::default()
        })
    );
    assert_eq!(ends.iter().filter(|e| e.1).count(), 1);
}

#[test]
fn the_prefilter_skips_only_what_cannot_be_usage() {
    for (data, may) in [
        (r#"{"usage":null}"#, false),
        ("{\"usage\" : \tnull}", false),
        // Raw bytes: at a line break the value may go on in a later `data`
        // line, so the event is read in full.
        ("{\"usage\" : \n\tnull}", true),
        ("{\"usage\"\r\ndata: :{}", true),
        (r#"{"a":"\"usage\":{\"x\":1}"}"#, false),
        (r#"{"a":"usage","b":"\"usage\""}"#, false),
        (r#"{"a":"x\\","usage":null}"#, false),
        (r#"{"usage""#, false),
        (r#"{"usage":{"prompt_tokens":1}}"#, true),
        (r#"{"usage":null,"response":{"usage":{}}}"#, true),
        (r#"{"usage": 5}"#, true),
        (r#"{"usage":"#, true),
        // Not a usage member, but spelled like one: scanned (the scanner
        // then finds no usage at its path).
        (r#"{"a":{"usage":1}}"#, true),
        (r#"{"k \"usage":1}"#, true),
    ] {
        assert_eq!(raw_may_carry_usage(data.as_bytes()), may, "{data}");
    }
}

#[test]
fn an_event_too_long_to_hold_is_read_as_it_streams() {
    let text = "x".repeat(MAX_HELD_EVENT + 100);
    let body = format!(
        "{}event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"delta\":\"{text}\"}}\n\n\
         event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"id\":\"resp_1\",\
         \"output\":[{{\"type\":\"output_text\",\"text\":\"{text}\"}}],\"usage\":{{\"input_tokens\":9,\"output_tokens\":8}}}}}}\n\n",
        &RESPONSES_STREAM[..RESPONSES_STREAM.find("event: response.output_text").expect("delta")],
    );
    let whole = read(Api::Responses, true, body.as_bytes(), body.len());
    assert_eq!(whole.0.tokens.map(|t| (t.input, t.output)), Some((9, 8)));
    assert_eq!(whole.1.len(), 3);
    let step = 997;
    for cut in (0..body.len()).step_by(step) {
        assert_eq!(
            read(Api::Responses, true, body.as_bytes(), cut),
            whole,
            "cut at {cut}"
        );
    }
    let mut r = UsageReader::new(Api::Responses, true);
    for piece in body.as_bytes().chunks(100) {
        r.push(piece, &mut |_, _| {});
        // Bounded: never more than the limit held.
        assert!(r.held.len() <= MAX_HELD_EVENT);
    }
    assert_eq!(r.reported().tokens, whole.0.tokens);
}

#[test]
fn whole_json_bodies_of_every_shape() {
    let cases: [(Api, &str, UsageTokens); 4] = [
        (
            Api::Chat,
            r#"{"id":"chatcmpl-2","object":"chat.completion","model":"gpt-4o-mini",
               "choices":[{"index":0,"message":{"role":"assistant","content":"{\"usage\":1}"}}],
               "usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}"#,
            UsageTokens {
                input: 10,
                output: 5,
                ..UsageTokens::default()
            },
        ),
        (
            Api::Responses,
            r#"{"id":"resp_2","object":"response","model":"o4-mini","output":[],
               "usage":{"input_tokens":1234,"input_tokens_details":{"cached_tokens":1024},
               "output_tokens":567,"output_tokens_details":{"reasoning_tokens":448}}}"#,
            UsageTokens {
                input: 210,
                cached_input: 1024,
                output: 567,
                reasoning: 448,
                ..UsageTokens::default()
            },
        ),
        (
            Api::Messages,
            r#"{"id":"msg_2","type":"message","model":"claude-haiku-4-5","content":[{"type":"text","text":"x"}],
               "usage":{"input_tokens":7,"cache_creation_input_tokens":333,"cache_read_input_tokens":0,"output_tokens":1}}"#,
            UsageTokens {
                input: 7,
                cache_write_5m: 333,
                output: 1,
                ..UsageTokens::default()
            },
        ),
        (
            Api::Embeddings,
            r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,-0.2,3e-5]}],
               "model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#,
            UsageTokens {
                input: 8,
                ..UsageTokens::default()
            },
        ),
    ];
    for (api, body, tokens) in cases {
        let (r, ends) = read_every_cut(api, false, body.as_bytes());
        assert!(ends.is_empty());
        assert_eq!(r.tokens, Some(tokens), "{api:?}");
        assert!(r.id.is_some() || api == Api::Embeddings, "{api:?}");
        assert!(r.model.is_some(), "{api:?}");
        // A body cut short reports no usage.
        let cut = &body.as_bytes()[..body.find("\"usage\"").expect("usage")];
        let mut reader = UsageReader::new(api, false);
        reader.push(cut, &mut |_, _| {});
        reader.finish();
        assert_eq!(reader.reported().tokens, None);
    }
}

#[test]
fn golden_cost_files_normalize_to_their_tokens() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../receipts/tests/fixtures/costs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("cost fixtures") {
        let path = entry.expect("entry").path();
        let case: Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        let api = match case["api"].as_str() {
            Some("openai.chat") => Api::Chat,
            Some("openai.responses") => Api::Responses,
            Some("openai.embeddings") => Api::Embeddings,
            Some("anthropic.messages") => Api::Messages,
            other => panic!("{}: api {other:?}", path.display()),
        };
        assert_eq!(
            Api::from_path(match api {
                Api::Chat => "/v1/chat/completions",
                Api::Responses => "/v1/responses",
                Api::Embeddings => "/v1/embeddings",
                Api::Messages => "/v1/messages",
            }),
            Some(api)
        );
        assert_eq!(case["api"], api.name());
        let expected: UsageTokens = serde_json::from_value(case["tokens"].clone()).expect("tokens");
        assert_eq!(
            normalize(api, &case["provider_usage"]),
            expected,
            "{}",
            path.display()
        );
        // The same usage inside a whole response body reads the same.
        let body = serde_json::json!({"id": "x", "model": "m", "usage": case["provider_usage"]});
        let mut r = UsageReader::new(api, false);
        r.push(body.to_string().as_bytes(), &mut |_, _| {});
        r.finish();
        assert_eq!(r.reported().tokens, Some(expected));
        seen += 1;
    }
    assert!(seen >= 4);
}

#[test]
fn paths_name_their_shapes() {
    assert_eq!(Api::from_path("/v1/chat/completions"), Some(Api::Chat));
    assert_eq!(
        Api::from_path("/openai/v1/chat/completions/"),
        Some(Api::Chat)
    );
    assert_eq!(Api::from_path("/v1/completions"), Some(Api::Chat));
    assert_eq!(Api::from_path("/v1/messages"), Some(Api::Messages));
    assert_eq!(Api::from_path("/v1/models"), None);
}

/// Reads `body` cut at `cuts` (ascending offsets), fast or in full only;
/// returns what was reported and where events ended, as [`read`] does.
fn read_cuts(
    api: Api,
    body: &[u8],
    cuts: &[usize],
    full_only: bool,
) -> (Reported, Vec<(usize, bool)>) {
    let mut r = UsageReader::new(api, true);
    r.full_only = full_only;
    let mut ends = Vec::new();
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&body.len())) {
        let base = at;
        r.push(&body[at..cut], &mut |reader, end| {
            ends.push((base + end, reader.last_was_usage_chunk()));
        });
        at = cut;
    }
    r.finish();
    (r.reported().clone(), ends)
}

/// The stream with its line breaks spelled `brk`.
fn with_breaks(stream: &str, brk: &str) -> String {
    stream.replace('\n', brk)
}

#[test]
fn the_fast_read_equals_the_full_read_at_every_cut_of_every_shape() {
    let tricky = concat!(
        "data: {\"id\":\"c-1\",\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"\"}}],\"usage\":null}\n\n",
        ": \"usage\":{\"prompt_tokens\":1}\n\n",
        "data: {\"id\":\"c-1\",\"choices\":[{\"delta\":{\"content\":\"\\\"usage\\\": {\\\"prompt_tokens\\\": 5}\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c-1\",\"choices\":[{\"delta\":{\"content\":\"x\\\\\"}}],\"usage\"\n",
        "data: :{\"prompt_tokens\":2,\"completion_tokens\":1}}\n\n",
        "data: {\"id\":\"c-1\",\"choices\":[{\"delta\":{\"content\":\"y\"}}],\"usage\":\n",
        "data: null}\n\n",
        "data: {\"id\":\"c-1\",\"choices\":[],\"usage\":  {\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n",
        "data: [DONE]\n\n",
    );
    for (api, stream) in [
        (Api::Chat, CHAT_STREAM),
        (Api::Responses, RESPONSES_STREAM),
        (Api::Messages, MESSAGES_STREAM),
        (Api::Chat, tricky),
    ] {
        for brk in ["\n", "\r\n", "\r"] {
            let body = with_breaks(stream, brk);
            let body = body.as_bytes();
            let full = read_cuts(api, body, &[], true);
            assert!(full.0.tokens.is_some(), "{api:?} {brk:?}");
            for a in 0..=body.len() {
                assert_eq!(
                    read_cuts(api, body, &[a], false),
                    full,
                    "{api:?} {brk:?} cut at {a}"
                );
                assert_eq!(
                    read_cuts(api, body, &[a], true),
                    full,
                    "{api:?} {brk:?} cut at {a}"
                );
            }
            let bytes: Vec<usize> = (1..body.len()).collect();
            assert_eq!(
                read_cuts(api, body, &bytes, false),
                full,
                "{api:?} {brk:?} byte by byte"
            );
        }
    }
    // The tricky stream's usage is its last, real usage chunk; the one
    // whose key and value sit on two `data` lines was read too.
    let (r, ends) = read_cuts(Api::Chat, tricky.as_bytes(), &[], false);
    assert_eq!(r.tokens.map(|t| (t.input, t.output)), Some((3, 4)));
    assert_eq!(ends.iter().filter(|e| e.1).count(), 1);
    let before_last = &tricky[..tricky
        .find("data: {\"id\":\"c-1\",\"choices\":[]")
        .expect("last")];
    let (r, _) = read_cuts(Api::Chat, before_last.as_bytes(), &[], false);
    assert_eq!(r.tokens.map(|t| (t.input, t.output)), Some((2, 1)));
}

/// A small deterministic generator (xorshift), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).expect("small")
    }
}

/// A random Chat stream: content events whose text spells the key in
/// every way content can, comments and other fields that spell it raw,
/// data split over lines (also right after the key), a usage chunk or not,
/// long events, and one kind of line break.
fn random_chat_stream(rng: &mut Rng) -> String {
    const TEXTS: &[&str] = &[
        "hi",
        "\"usage\":{\"prompt_tokens\":9}",
        "usage",
        "a\\",
        "\\\"usage\\\": {}",
        "\"usage\"",
        "data: \"usage\":{}",
    ];
    let brk = ["\n", "\r\n", "\r"][rng.below(3)];
    let mut s = String::new();
    for _ in 0..rng.below(8) {
        let text = if rng.below(20) == 0 {
            "z".repeat(MAX_HELD_EVENT + rng.below(100))
        } else {
            TEXTS[rng.below(TEXTS.len())].to_owned()
        };
        let text = serde_json::to_string(&text).expect("json");
        let usage = ["", ",\"usage\":null", ",\"usage\" : null"][rng.below(3)];
        let data = format!(
            "{{\"id\":\"c-{}\",\"model\":\"m\",\"choices\":[{{\"delta\":{{\"content\":{text}}}}}]{usage}}}",
            rng.below(3)
        );
        match rng.below(6) {
            0 => s.push_str(&format!(": \"usage\":{{\"prompt_tokens\":7}}{brk}")),
            1 => s.push_str(&format!("event: \"usage\": 1{brk}")),
            _ => {}
        }
        // Split the data over two lines at a comma (JSON whitespace once
        // joined), or not.
        match data.rfind(',').filter(|_| rng.below(3) == 0) {
            Some(at) => s.push_str(&format!(
                "data: {}{brk}data:{}{brk}{brk}",
                &data[..=at],
                &data[at + 1..]
            )),
            None => s.push_str(&format!("data: {data}{brk}{brk}")),
        }
    }
    if rng.below(4) != 0 {
        let (p, c) = (rng.below(1000), rng.below(1000));
        let usage = match rng.below(3) {
            0 => format!("\"usage\":{{\"prompt_tokens\":{p},\"completion_tokens\":{c}}}"),
            // The key and its value on two data lines.
            1 => {
                format!("\"usage\"{brk}data: :{{\"prompt_tokens\":{p},\"completion_tokens\":{c}}}")
            }
            _ => {
                format!("\"usage\" :{brk}data:{{\"prompt_tokens\":{p},\"completion_tokens\":{c}}}")
            }
        };
        s.push_str(&format!(
            "data: {{\"id\":\"c-9\",\"choices\":[],{usage}}}{brk}{brk}"
        ));
    }
    s.push_str(&format!("data: [DONE]{brk}{brk}"));
    s
}

#[test]
fn random_streams_cut_at_random_read_the_same_fast_as_in_full() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut with_usage = 0;
    for case in 0..400 {
        let stream = random_chat_stream(&mut rng);
        let body = stream.as_bytes();
        let full = read_cuts(Api::Chat, body, &[], true);
        with_usage += usize::from(full.0.tokens.is_some());
        for _ in 0..10 {
            let mut cuts: Vec<usize> = (0..rng.below(6))
                .map(|_| rng.below(body.len() + 1))
                .collect();
            cuts.sort_unstable();
            assert_eq!(
                read_cuts(Api::Chat, body, &cuts, false),
                full,
                "case {case}, cuts {cuts:?}: {stream:?}"
            );
        }
        // Small pieces, as a slow upstream sends them.
        let step = 1 + rng.below(40);
        let cuts: Vec<usize> = (step..body.len()).step_by(step).collect();
        assert_eq!(
            read_cuts(Api::Chat, body, &cuts, false),
            full,
            "case {case}, every {step}"
        );
    }
    // The generator made both kinds.
    assert!((100..400).contains(&with_usage), "{with_usage}");
}

/// What a client gets when usage chunks are removed, as the metering
/// filter removes them (`filter.rs`): the bytes up to each told end go on
/// unless they end a usage chunk, the rest waits for the next end. `coarse`:
/// ends told by [`UsageReader::push_coarse`], else by [`UsageReader::push`].
fn stripped(api: Api, body: &[u8], cuts: &[usize], coarse: bool) -> (Reported, Vec<u8>) {
    let mut r = UsageReader::new(api, true);
    let (mut out, mut held) = (Vec::new(), Vec::new());
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&body.len())) {
        let chunk = &body[at..cut];
        let mut ends = Vec::new();
        let mut tell = |reader: &UsageReader, end| {
            ends.push((end, reader.last_was_usage_chunk()));
        };
        if coarse {
            r.push_coarse(chunk, &mut tell);
        } else {
            r.push(chunk, &mut tell);
        }
        let mut from = 0;
        for (end, usage_chunk) in ends {
            held.extend_from_slice(&chunk[from..end]);
            if !usage_chunk {
                out.extend_from_slice(&held);
            }
            held.clear();
            from = end;
        }
        held.extend_from_slice(&chunk[from..]);
        at = cut;
    }
    out.extend_from_slice(&held);
    r.finish();
    (r.reported().clone(), out)
}

/// Reads `body` cut at `cuts` with [`UsageReader::push_quiet`].
fn read_quietly(api: Api, body: &[u8], cuts: &[usize]) -> (Reported, usize) {
    let mut r = UsageReader::new(api, true);
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&body.len())) {
        r.push_quiet(&body[at..cut]);
        at = cut;
    }
    r.finish();
    (r.reported().clone(), r.skipped_chunks)
}

/// The offsets where each event of `stream` ends (as [`UsageReader::push`]
/// tells them): one chunk per event, as providers send them.
fn one_chunk_per_event(api: Api, body: &[u8]) -> Vec<usize> {
    let (_, ends) = read_cuts(api, body, &[], true);
    let mut cuts: Vec<usize> = ends.iter().map(|e| e.0).collect();
    cuts.retain(|&c| c < body.len());
    cuts
}

#[test]
fn quiet_and_coarse_reads_equal_the_event_by_event_read_at_every_cut() {
    for (api, stream) in [
        (Api::Chat, CHAT_STREAM),
        (Api::Responses, RESPONSES_STREAM),
        (Api::Messages, MESSAGES_STREAM),
    ] {
        for brk in ["\n", "\r\n", "\r"] {
            let body = with_breaks(stream, brk);
            let body = body.as_bytes();
            let full = read_cuts(api, body, &[], true).0;
            let exact = stripped(api, body, &[], false);
            assert_eq!(exact.0, full);
            for a in 0..=body.len() {
                for cuts in [vec![a], (a..body.len()).step_by(7).collect()] {
                    let what = format!("{api:?} {brk:?} cuts {cuts:?}");
                    assert_eq!(read_quietly(api, body, &cuts).0, full, "{what}");
                    assert_eq!(
                        stripped(api, body, &cuts, true),
                        stripped(api, body, &cuts, false),
                        "{what}"
                    );
                }
            }
            let bytes: Vec<usize> = (1..body.len()).collect();
            assert_eq!(read_quietly(api, body, &bytes).0, full);
            assert_eq!(
                stripped(api, body, &bytes, true),
                stripped(api, body, &bytes, false)
            );
            // One event per chunk: every chunk is passed over whole but the
            // first (read in full for the id and model) and the one with the
            // final usage.
            let cuts = one_chunk_per_event(api, body);
            let (reported, skipped) = read_quietly(api, body, &cuts);
            assert_eq!(reported, full);
            let events = read_cuts(api, body, &[], true).1.len();
            assert_eq!(skipped, events - 2, "{api:?} {brk:?}");
        }
    }
}

#[test]
fn the_chat_usage_chunk_is_removed_the_same_from_coarse_ends() {
    let body = CHAT_STREAM.as_bytes();
    let cuts = one_chunk_per_event(Api::Chat, body);
    let (reported, out) = stripped(Api::Chat, body, &cuts, true);
    assert_eq!(reported.tokens.map(|t| t.output), Some(300));
    let usage_at = CHAT_STREAM
        .find("data: {\"id\":\"chatcmpl-1\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[]")
        .expect("usage");
    let done_at = CHAT_STREAM.find("data: [DONE]").expect("done");
    let without = [&body[..usage_at], &body[done_at..]].concat();
    assert_eq!(out, without);
    // Several whole content events in one chunk are told as one.
    let (_, ends) = {
        let mut r = UsageReader::new(Api::Chat, true);
        let mut ends = Vec::new();
        for piece in [
            &body[..cuts[0]],
            &body[cuts[0]..usage_at],
            &body[usage_at..],
        ] {
            r.push_coarse(piece, &mut |reader, end| {
                ends.push((end, reader.last_was_usage_chunk()));
            });
        }
        (r, ends)
    };
    assert_eq!(ends.len(), 1 + 1 + 2, "{ends:?}");
    assert_eq!(ends[1], (usage_at - cuts[0], false));
}

#[test]
fn random_streams_read_quietly_and_coarsely_the_same_as_event_by_event() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for case in 0..300 {
        let stream = random_chat_stream(&mut rng);
        let body = stream.as_bytes();
        let full = read_cuts(Api::Chat, body, &[], true).0;
        let mut cuts = one_chunk_per_event(Api::Chat, body);
        for _ in 0..rng.below(4) {
            cuts.push(rng.below(body.len() + 1));
        }
        cuts.sort_unstable();
        cuts.dedup();
        assert_eq!(
            read_quietly(Api::Chat, body, &cuts).0,
            full,
            "case {case}, cuts {cuts:?}: {stream:?}"
        );
        assert_eq!(
            stripped(Api::Chat, body, &cuts, true),
            stripped(Api::Chat, body, &cuts, false),
            "case {case}, cuts {cuts:?}: {stream:?}"
        );
    }
}

#[test]
fn what_may_pass_before_it_is_read_holds_no_usage_chunk() {
    let tricky = "data: {\"id\":\"c\",\"choices\":[],\"usage\"\ndata: :{\"prompt_tokens\":2}}\n\ndata: [DONE]\n\n";
    let mut passed = 0;
    for (api, stream) in [
        (Api::Chat, CHAT_STREAM),
        (Api::Responses, RESPONSES_STREAM),
        (Api::Messages, MESSAGES_STREAM),
        (Api::Chat, tricky),
        (
            Api::Chat,
            &CHAT_STREAM[CHAT_STREAM
                .find("data: {\"id\":\"chatcmpl-1\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[]")
                .expect("usage")..],
        ),
    ] {
        for brk in ["\n", "\r\n", "\r"] {
            let body = with_breaks(stream, brk);
            let body = body.as_bytes();
            for cut in 0..=body.len() {
                let head = &body[..cut];
                if !UsageReader::new(api, true).may_pass_before_read(head) {
                    continue;
                }
                passed += 1;
                let (_, ends) = read_cuts(api, head, &[], true);
                assert!(!ends.is_empty() && ends.iter().all(|e| !e.1), "{head:?}");
                // Whole events: the last ends at the cut (or just before a
                // CRLF blank line's `\n`).
                let last = ends.last().expect("an event").0;
                assert!(last == cut || (last + 1 == cut && head.ends_with(b"\r\n")));
            }
        }
    }
    assert!(passed > 0);
    // Once the first event was read, chunks are read before they go on.
    let body = CHAT_STREAM.as_bytes();
    let first_end = CHAT_STREAM.find("\n\n").expect("end") + 2;
    let second_end = first_end + CHAT_STREAM[first_end..].find("\n\n").expect("end") + 2;
    let second = &body[first_end..second_end];
    assert!(UsageReader::new(Api::Chat, true).may_pass_before_read(second));
    let mut r = UsageReader::new(Api::Chat, true);
    r.push_quiet(&body[..first_end]);
    assert!(!r.may_pass_before_read(second));
}

#[test]
fn the_key_search_finds_what_memmem_finds() {
    let search = KeySearch::new();
    let mut rng = Rng(0x853c_49e6_748f_ea9b);
    for _ in 0..20_000 {
        // The key's own bytes, so near misses abound; lengths on both sides
        // of the AVX2 search's minimum.
        let len = rng.below(300);
        let mut hay: Vec<u8> = (0..len).map(|_| b"\"usage x"[rng.below(8)]).collect();
        if len >= USAGE_KEY.len() && rng.below(2) == 0 {
            let at = rng.below(len - USAGE_KEY.len() + 1);
            hay[at..at + USAGE_KEY.len()].copy_from_slice(USAGE_KEY);
        }
        assert_eq!(
            search.find(&hay),
            memchr::memmem::find(&hay, USAGE_KEY),
            "{:?}",
            String::from_utf8_lossy(&hay)
        );
    }
}

/// Where the SSE reader dispatches events in `raw` read from its start.
fn dispatches(raw: &[u8]) -> Vec<usize> {
    struct Ends(Vec<usize>);
    impl SseSink for Ends {
        fn data(&mut self, _: &[u8]) {}
        fn dispatch(&mut self, end: usize) {
            self.0.push(end);
        }
    }
    let mut ends = Ends(Vec::new());
    SseReader::default().push(raw, &mut ends);
    ends.0
}

#[test]
fn a_blank_line_at_the_end_is_told_from_the_last_three_bytes() {
    // Every string of up to 7 bytes of `a`, `\n`, `\r`: the end is an
    // event's end exactly when the SSE reader dispatched there, or just
    // before the `\n` of a CRLF there.
    let alphabet = [b'a', b'\n', b'\r'];
    for len in 0..=7u32 {
        for mut n in 0..3usize.pow(len) {
            let mut raw = Vec::new();
            for _ in 0..len {
                raw.push(alphabet[n % 3]);
                n /= 3;
            }
            let last = dispatches(&raw).last().copied();
            let at_end = last == Some(raw.len())
                || (last == Some(raw.len().wrapping_sub(1)) && raw.ends_with(b"\r\n"));
            // A string too short to tell is never taken for an end.
            let expected = at_end && raw.len() >= 2 && !(raw.len() == 2 && raw == b"\r\n");
            assert_eq!(ends_with_blank_line(&raw), expected, "{raw:?}");
        }
    }
}

#[test]
fn refusals_are_shaped_like_each_provider() {
    let wait = Duration::from_secs(42);
    let (status, h, body) = Api::Chat.quota_refusal("usd_per_day", "x", wait);
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(h[http::header::RETRY_AFTER], "42");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["error"]["code"], "insufficient_quota");
    assert!(v["error"]["message"]
        .as_str()
        .expect("msg")
        .contains("usd_per_day"));
    let (_, _, body) = Api::Messages.quota_refusal("llm_tokens_per_day", "x", wait);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "rate_limit_error");
}

/// A count that is not a non-negative integer makes the report untrusted:
/// no tokens (the call is charged its reservation, estimated), never zero;
/// `null` counts and `null` detail objects are absent, not malformed.
#[test]
fn a_count_that_is_not_an_integer_leaves_the_call_unsettled() {
    let bad_counts = ["\"12\"", "-1", "1.5", "true", "{}"];
    for bad in bad_counts {
        let bodies = [
            (
                Api::Chat,
                format!(r#"{{"usage":{{"prompt_tokens":{bad},"completion_tokens":3}}}}"#),
            ),
            (
                Api::Chat,
                format!(
                    r#"{{"usage":{{"prompt_tokens":5,"completion_tokens":3,"completion_tokens_details":{{"reasoning_tokens":{bad}}}}}}}"#
                ),
            ),
            (
                Api::Responses,
                format!(r#"{{"usage":{{"input_tokens":5,"output_tokens":{bad}}}}}"#),
            ),
            (
                Api::Embeddings,
                format!(r#"{{"usage":{{"prompt_tokens":{bad}}}}}"#),
            ),
            (
                Api::Messages,
                format!(
                    r#"{{"usage":{{"input_tokens":5,"output_tokens":3,"cache_read_input_tokens":{bad}}}}}"#
                ),
            ),
        ];
        for (api, body) in bodies {
            let (reported, _) = read_every_cut(api, false, body.as_bytes());
            assert!(reported.malformed, "{body}");
            assert_eq!(reported.tokens, None, "{body}");
        }
    }
    // A detail object that is a number is malformed too.
    let body = br#"{"usage":{"prompt_tokens":5,"completion_tokens":3,"prompt_tokens_details":7}}"#;
    assert_eq!(read_every_cut(Api::Chat, false, body).0.tokens, None);
    // Nulls are absent counts.
    let body = br#"{"usage":{"prompt_tokens":5,"completion_tokens":3,"prompt_tokens_details":null,"completion_tokens_details":{"reasoning_tokens":null}}}"#;
    let (reported, _) = read_every_cut(Api::Chat, false, body);
    assert!(!reported.malformed);
    assert_eq!(reported.tokens.map(|t| (t.input, t.output)), Some((5, 3)));
}

/// Streamed: a malformed `message_start` is not repaired by a well-formed
/// `message_delta` after it, nor a malformed Chat usage chunk by a later one.
#[test]
fn a_malformed_usage_event_is_not_repaired_by_a_later_one() {
    let messages = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"claude\",\"usage\":{\"input_tokens\":\"900\",\"output_tokens\":1}}}\n\n\
        event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n";
    let (reported, _) = read_every_cut(Api::Messages, true, messages.as_bytes());
    assert!(reported.malformed);
    assert_eq!(reported.tokens, None);
    let chat = "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":-4,\"completion_tokens\":2}}\n\n\
        data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
    let (reported, _) = read_every_cut(Api::Chat, true, chat.as_bytes());
    assert_eq!(reported.tokens, None);
}

/// The tier that served a call, as OpenAI names it: top level in a JSON
/// answer, in Chat chunks (the usage chunk too, read when content chunks are
/// skipped), in `response.completed` (after `response.created` names the
/// tier asked for). Once any part says `"priority"`, a later cheaper name
/// does not lower it; a `null` names none.
#[test]
fn the_service_tier_that_served_the_call_is_read_from_every_openai_shape() {
    let usage_chunk = "\"choices\":[],";
    let tiered = |stream: &str, at: &str, tier: &str| {
        let i = stream.find(at).expect("marker") + at.len();
        format!("{}\"service_tier\":{tier},{}", &stream[..i], &stream[i..])
    };
    // Only the usage chunk names it: read though content chunks are not.
    let chat = tiered(CHAT_STREAM, usage_chunk, "\"priority\"");
    let (r, _) = read_every_cut(Api::Chat, true, chat.as_bytes());
    assert_eq!(r.priority, Some(true));
    assert!(r.tokens.is_some());
    // Priority in the first chunk, `default` in the usage chunk: priority.
    let first = "\"object\":\"chat.completion.chunk\",";
    let chat = tiered(
        &tiered(CHAT_STREAM, usage_chunk, "\"default\""),
        first,
        "\"priority\"",
    );
    assert_eq!(
        read_every_cut(Api::Chat, true, chat.as_bytes()).0.priority,
        Some(true)
    );
    let chat = tiered(CHAT_STREAM, usage_chunk, "\"default\"");
    assert_eq!(
        read_every_cut(Api::Chat, true, chat.as_bytes()).0.priority,
        Some(false)
    );
    let chat = tiered(CHAT_STREAM, usage_chunk, "null");
    assert_eq!(
        read_every_cut(Api::Chat, true, chat.as_bytes()).0.priority,
        None
    );
    assert_eq!(
        read_every_cut(Api::Chat, true, CHAT_STREAM.as_bytes())
            .0
            .priority,
        None
    );

    // Responses: `auto` asked for, `priority` served.
    let responses = tiered(
        &tiered(RESPONSES_STREAM, "\"status\":\"in_progress\",", "\"auto\""),
        "\"type\":\"response.completed\",\"response\":{",
        "\"priority\"",
    );
    let (r, _) = read_every_cut(Api::Responses, true, responses.as_bytes());
    assert_eq!(
        (r.priority, r.tokens.is_some()),
        (Some(true), true),
        "{responses}"
    );
    let auto_only = tiered(RESPONSES_STREAM, "\"status\":\"in_progress\",", "\"auto\"");
    let (r, _) = read_every_cut(Api::Responses, true, auto_only.as_bytes());
    assert_eq!(r.priority, Some(false));

    // Whole JSON answers.
    for (api, body, priority) in [
        (
            Api::Chat,
            r#"{"id":"c","model":"gpt-4o","service_tier":"priority","usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
            Some(true),
        ),
        (
            Api::Responses,
            r#"{"id":"r","model":"gpt-4o","usage":{"input_tokens":1,"output_tokens":2},"service_tier":"priority"}"#,
            Some(true),
        ),
        (
            Api::Chat,
            r#"{"id":"c","model":"gpt-4o","service_tier":"default","usage":{"prompt_tokens":1}}"#,
            Some(false),
        ),
        (
            Api::Chat,
            r#"{"id":"c","model":"gpt-4o","service_tier":null,"usage":{"prompt_tokens":1}}"#,
            None,
        ),
        (
            Api::Chat,
            r#"{"id":"c","model":"gpt-4o","choices":[{"service_tier":"priority"}],"usage":{"prompt_tokens":1}}"#,
            None,
        ),
    ] {
        let (r, _) = read_every_cut(api, false, body.as_bytes());
        assert_eq!(r.priority, priority, "{body}");
    }
}

/// The tier that served a call, as Anthropic names it: `usage.service_tier`
/// (`standard`, `priority`, `batch`) in a JSON answer, in `message_start`'s
/// `message.usage` and, if a server sends it there, `message_delta`'s
/// `usage`. Once any part says `"priority"`, a later cheaper name does not
/// lower it; a `null` names none.
#[test]
fn the_service_tier_that_served_the_call_is_read_from_anthropic_usage() {
    let tiered = |stream: &str, at: &str, tier: &str| {
        let i = stream.find(at).expect("marker") + at.len();
        format!("{}\"service_tier\":{tier},{}", &stream[..i], &stream[i..])
    };
    let start_usage = "\"content\":[],\"usage\":{";
    let delta_usage = "\"stop_sequence\":null},\"usage\":{";
    for (stream, priority) in [
        (
            tiered(MESSAGES_STREAM, start_usage, "\"priority\""),
            Some(true),
        ),
        (
            tiered(MESSAGES_STREAM, start_usage, "\"standard\""),
            Some(false),
        ),
        (
            tiered(MESSAGES_STREAM, start_usage, "\"batch\""),
            Some(false),
        ),
        (
            tiered(MESSAGES_STREAM, delta_usage, "\"priority\""),
            Some(true),
        ),
        (
            tiered(
                &tiered(MESSAGES_STREAM, start_usage, "\"priority\""),
                delta_usage,
                "\"standard\"",
            ),
            Some(true),
        ),
        (tiered(MESSAGES_STREAM, start_usage, "null"), None),
        (MESSAGES_STREAM.to_owned(), None),
    ] {
        let (r, _) = read_every_cut(Api::Messages, true, stream.as_bytes());
        assert_eq!(r.priority, priority, "{stream}");
        assert!(r.tokens.is_some(), "{stream}");
    }
    for (body, priority) in [
        (
            r#"{"id":"m","model":"claude-sonnet-4","usage":{"input_tokens":1,"output_tokens":2,"service_tier":"priority"}}"#,
            Some(true),
        ),
        (
            r#"{"id":"m","model":"claude-sonnet-4","usage":{"input_tokens":1,"output_tokens":2,"service_tier":"standard"}}"#,
            Some(false),
        ),
    ] {
        let (r, _) = read_every_cut(Api::Messages, false, body.as_bytes());
        assert_eq!(r.priority, priority, "{body}");
    }
}
