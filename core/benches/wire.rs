//! What reading the wire costs per request and per stream chunk: the parses on the gateway's hot path.
//!
//! - `chunk/content`, `chunk/usage`: one OpenAI stream chunk (as the
//!   public API sends them) into a [`ChatChunk`], as the OpenAI adapter
//!   does for every event;
//! - `chunk/scan_only`: the same content chunk skipped with `IgnoredAny`,
//!   the floor of any parse that reads the whole event;
//! - `chunk/pass_through`: the same chunk read for what the stream layers
//!   ask of it ([`StreamChunk::pass_through`]), which the adapter does for
//!   a stream's first chunk;
//! - `chunk/next_text`, `chunk/next_rest`: a later chunk of the same
//!   stream read by [`UsualChunks`]: one with another text (not parsed),
//!   one with a `finish_reason` (read from its `choices` on);
//! - `chunk/next_text_padded`: the same as `chunk/next_text` with the
//!   random `obfuscation` padding OpenAI adds to every chunk (a second
//!   place where a chunk differs from the one before), two such chunks
//!   read in turns;
//! - `request/chat`: a small chat request into a [`ChatRequest`];
//! - `request/model_span`: finding `model` in the same request's bytes;
//! - `response/raw`: a chat completion read for its model and usage
//!   ([`RawChatResponse::parse`]).
//!
//! Run: `cargo bench -p switchyard-core --bench wire` (or `cargo xtask bench --micro`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use switchyard_core::{
    ByteString, ChatChunk, ChatRequest, RawChatResponse, StreamChunk, UsualChunks, json,
};

const CONTENT_CHUNK: &str = r#"{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{"content":" world"},"logprobs":null,"finish_reason":null}],"usage":null}"#;

const USAGE_CHUNK: &str = r#"{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#;

const NEXT_TEXT_CHUNK: &str = r#"{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{"content":" and all"},"logprobs":null,"finish_reason":null}],"usage":null}"#;

const PADDED_CHUNK: &str = r#"{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{"content":" world"},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"qE3kT"}"#;

/// Two later chunks, each with its own padding: read in turns, neither is
/// the chunk read just before.
const NEXT_PADDED_CHUNKS: [&str; 2] = [
    r#"{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{"content":" and all"},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"Zp"}"#,
    r#"{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{"content":" who"},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"u8Wq1x"}"#,
];

const FINISH_CHUNK: &str = r#"{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}"#;

const REQUEST: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello to the world in one short sentence."}],"temperature":0.7,"max_tokens":64}"#;

const RESPONSE: &str = r#"{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion","created":1741570283,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hello, world! It is nice to meet you.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_06737a9306"}"#;

fn wire(c: &mut Criterion) {
    c.bench_function("chunk/content", |b| {
        b.iter(|| serde_json::from_str::<ChatChunk>(black_box(CONTENT_CHUNK)).unwrap())
    });
    c.bench_function("chunk/usage", |b| {
        b.iter(|| serde_json::from_str::<ChatChunk>(black_box(USAGE_CHUNK)).unwrap())
    });
    c.bench_function("chunk/scan_only", |b| {
        b.iter(|| serde_json::from_str::<serde::de::IgnoredAny>(black_box(CONTENT_CHUNK)).unwrap())
    });
    c.bench_function("chunk/pass_through", |b| {
        b.iter(|| {
            StreamChunk::pass_through(ByteString::from_static(black_box(CONTENT_CHUNK))).unwrap()
        })
    });
    let mut usual = UsualChunks::default();
    usual.read(ByteString::from_static(CONTENT_CHUNK)).unwrap();
    c.bench_function("chunk/next_text", |b| {
        b.iter(|| {
            usual
                .read(ByteString::from_static(black_box(NEXT_TEXT_CHUNK)))
                .unwrap()
        })
    });
    c.bench_function("chunk/next_rest", |b| {
        b.iter(|| {
            usual
                .read(ByteString::from_static(black_box(FINISH_CHUNK)))
                .unwrap()
        })
    });
    let mut padded = UsualChunks::default();
    padded.read(ByteString::from_static(PADDED_CHUNK)).unwrap();
    let mut turn = 0;
    c.bench_function("chunk/next_text_padded", |b| {
        b.iter(|| {
            turn ^= 1;
            padded
                .read(ByteString::from_static(black_box(NEXT_PADDED_CHUNKS[turn])))
                .unwrap()
        })
    });
    c.bench_function("request/chat", |b| {
        b.iter(|| serde_json::from_str::<ChatRequest>(black_box(REQUEST)).unwrap())
    });
    c.bench_function("request/model_span", |b| {
        b.iter(|| json::model_span(black_box(REQUEST.as_bytes())).unwrap())
    });
    let response = Bytes::from_static(RESPONSE.as_bytes());
    c.bench_function("response/raw", |b| {
        b.iter(|| RawChatResponse::parse(black_box(response.clone())).unwrap())
    });
}

criterion_group!(benches, wire);
criterion_main!(benches);
