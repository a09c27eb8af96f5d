//! Round-trip property tests of the OpenAI ⇄ Anthropic translation: requests, responses and streams.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use switchyard_core::{
    ChatChoice, ChatChunk, ChatMessage, ChatRequest, ChatResponse, ChunkChoice, ChunkDelta,
    ContentPart, FunctionCall, FunctionCallDelta, FunctionDefinition, MessageContent, Tool,
    ToolCall, ToolCallDelta, Usage,
};
use switchyard_providers::anthropic::{AnthropicToChunks, ChunksToAnthropic};
use switchyard_providers::wire::anthropic::AnthropicUsage;
use switchyard_providers::{
    anthropic_request_to_chat, anthropic_response_to_chat, chat_request_to_anthropic,
    chat_response_to_anthropic,
};

// ---------------------------------------------------------------- strategies

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 .,!?é✓]{1,24}"
}

fn ident() -> impl Strategy<Value = String> {
    "[a-z_]{1,12}"
}

fn json_object() -> impl Strategy<Value = Value> {
    proptest::collection::btree_map(
        ident(),
        prop_oneof![
            text().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
        ],
        0..4,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect()))
}

fn image_url() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9+/]{4,16}".prop_map(|d| format!("data:image/png;base64,{d}")),
        ident().prop_map(|p| format!("https://img.example.invalid/{p}.jpg")),
    ]
}

fn text_part() -> impl Strategy<Value = ContentPart> {
    (text(), any::<bool>()).prop_map(|(text, cached)| {
        let mut extra = Map::new();
        if cached {
            extra.insert("cache_control".into(), json!({"type": "ephemeral"}));
        }
        ContentPart {
            kind: "text".into(),
            text: Some(text),
            image_url: None,
            extra,
        }
    })
}

fn image_part() -> impl Strategy<Value = ContentPart> {
    image_url().prop_map(|url| ContentPart {
        kind: "image_url".into(),
        text: None,
        image_url: Some(json!({ "url": url })),
        extra: Map::new(),
    })
}

/// User content in the canonical form: plain text, or parts that are not a
/// single plain text part.
fn user_content() -> impl Strategy<Value = MessageContent> {
    prop_oneof![
        text().prop_map(MessageContent::Text),
        proptest::collection::vec(prop_oneof![text_part(), image_part()], 1..4)
            .prop_filter("a single plain text part is plain text", |parts| {
                !(parts.len() == 1 && parts[0].kind == "text" && parts[0].extra.is_empty())
            })
            .prop_map(MessageContent::Parts),
    ]
}

fn tool_call() -> impl Strategy<Value = ToolCall> {
    ("[a-zA-Z0-9]{4,10}", ident(), json_object()).prop_map(|(id, name, args)| ToolCall {
        id: format!("toolu_{id}"),
        kind: "function".into(),
        function: FunctionCall {
            name,
            arguments: args.to_string(),
        },
    })
}

#[derive(Clone, Debug)]
struct Assistant(Option<String>, Vec<ToolCall>);

fn assistant_turn() -> impl Strategy<Value = Assistant> {
    prop_oneof![
        text().prop_map(|t| Assistant(Some(t), Vec::new())),
        (
            proptest::option::of(text()),
            proptest::collection::vec(tool_call(), 1..3)
        )
            .prop_map(|(t, calls)| Assistant(t, calls)),
    ]
}

fn tool_def() -> impl Strategy<Value = Tool> {
    (ident(), proptest::option::of(text()), json_object()).prop_map(|(name, description, props)| {
        Tool {
            kind: "function".into(),
            function: FunctionDefinition {
                name,
                description,
                parameters: Some(json!({"type": "object", "properties": props})),
                extra: Map::new(),
            },
            extra: Map::new(),
        }
    })
}

fn openai_request() -> impl Strategy<Value = ChatRequest> {
    (
        proptest::option::of(text()),
        proptest::collection::vec((user_content(), assistant_turn(), any::<bool>()), 1..4),
        proptest::option::of(user_content()),
        proptest::option::of(proptest::collection::vec(tool_def(), 1..3)),
        proptest::option::of(prop_oneof![
            Just(json!("auto")),
            Just(json!("required")),
            Just(json!("none")),
            ident().prop_map(|n| json!({"type": "function", "function": {"name": n}})),
        ]),
        (
            1u32..100_000,
            proptest::option::of(prop_oneof![Just(0.0), Just(0.5), Just(1.0), Just(0.73)]),
            proptest::option::of(proptest::collection::vec(text(), 1..3)),
            any::<bool>(),
            proptest::option::of(ident()),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(system, turns, last, tools, tool_choice, (max, temp, stop, stream, user, serial))| {
                let mut messages = Vec::new();
                if let Some(system) = system {
                    messages.push(ChatMessage::text("system", system));
                }
                let mut pending_calls: Vec<ToolCall> = Vec::new();
                for (user, assistant, with_user_text) in turns {
                    // Tool results for the previous assistant's calls, then
                    // (optionally, when there were results) the user's text.
                    let had_results = !pending_calls.is_empty();
                    for call in pending_calls.drain(..) {
                        messages.push(ChatMessage {
                            role: "tool".into(),
                            content: Some(MessageContent::Text(format!("result of {}", call.id))),
                            tool_call_id: Some(call.id),
                            ..ChatMessage::default()
                        });
                    }
                    if !had_results || with_user_text {
                        messages.push(ChatMessage {
                            role: "user".into(),
                            content: Some(user),
                            ..ChatMessage::default()
                        });
                    }
                    let Assistant(text, calls) = assistant;
                    pending_calls = calls.clone();
                    messages.push(ChatMessage {
                        role: "assistant".into(),
                        content: text.map(MessageContent::Text),
                        tool_calls: (!calls.is_empty()).then_some(calls),
                        ..ChatMessage::default()
                    });
                }
                let had_results = !pending_calls.is_empty();
                for call in pending_calls.drain(..) {
                    messages.push(ChatMessage {
                        role: "tool".into(),
                        content: Some(MessageContent::Text("ok".into())),
                        tool_call_id: Some(call.id),
                        ..ChatMessage::default()
                    });
                }
                if let Some(last) = last {
                    messages.push(ChatMessage {
                        role: "user".into(),
                        content: Some(last),
                        ..ChatMessage::default()
                    });
                } else if !had_results {
                    messages.push(ChatMessage::text("user", "go on"));
                }
                let mut extra = Map::new();
                if let Some(user) = user {
                    extra.insert("user".into(), Value::String(user));
                }
                if serial && tool_choice.is_some() {
                    extra.insert("parallel_tool_calls".into(), Value::Bool(false));
                }
                ChatRequest {
                    model: "claude-test".into(),
                    messages,
                    stream,
                    max_tokens: Some(max),
                    temperature: temp,
                    stop: stop.map(|s| json!(s)),
                    tools,
                    tool_choice,
                    extra,
                    ..ChatRequest::default()
                }
            },
        )
}

fn anthropic_usage() -> impl Strategy<Value = AnthropicUsage> {
    (
        0u64..100_000,
        0u64..10_000,
        proptest::option::of(0u64..5_000),
        proptest::option::of(0u64..50_000),
    )
        .prop_map(|(input, output, created, read)| AnthropicUsage {
            input_tokens: input,
            output_tokens: output,
            cache_creation_input_tokens: created,
            cache_read_input_tokens: read,
        })
}

// ---------------------------------------------------------------- helpers

/// `[{"type":"text","text":x}]` and `"x"` mean the same to Anthropic.
fn normalize_anthropic(value: &mut Value) {
    fn collapse(content: &mut Value) {
        if let Some([only]) = content.as_array().map(Vec::as_slice) {
            let plain = only.as_object().is_some_and(|o| {
                o.len() == 2 && o.get("type") == Some(&json!("text")) && o.contains_key("text")
            });
            if plain {
                *content = only["text"].clone();
            }
        }
    }
    if let Some(system) = value.get_mut("system") {
        collapse(system);
    }
    if let Some(messages) = value.get_mut("messages").and_then(Value::as_array_mut) {
        for message in messages {
            if let Some(content) = message.get_mut("content") {
                collapse(content);
            }
        }
    }
}

/// An Anthropic request built from the OpenAI generator, so both
/// directions start from valid, canonical input.
fn anthropic_request() -> impl Strategy<Value = Value> {
    openai_request().prop_map(|r| chat_request_to_anthropic(&r, 4096).unwrap())
}

#[derive(Debug, PartialEq, Default)]
struct Summary {
    text: String,
    tools: Vec<(String, String, String)>,
    finish: Option<String>,
    prompt_tokens: u64,
    completion_tokens: u64,
}

fn summarize(chunks: &[ChatChunk]) -> Summary {
    let mut summary = Summary::default();
    for chunk in chunks {
        summary.text.push_str(&chunk.text());
        for choice in &chunk.choices {
            for call in choice.delta.tool_calls.iter().flatten() {
                let index = call.index as usize;
                if summary.tools.len() <= index {
                    summary.tools.resize(index + 1, Default::default());
                }
                let entry = &mut summary.tools[index];
                if let Some(id) = &call.id {
                    entry.0 = id.clone();
                }
                if let Some(function) = &call.function {
                    if let Some(name) = &function.name {
                        entry.1 = name.clone();
                    }
                    if let Some(arguments) = &function.arguments {
                        entry.2.push_str(arguments);
                    }
                }
            }
            if let Some(reason) = &choice.finish_reason {
                summary.finish = Some(reason.clone());
            }
        }
        if let Some(usage) = &chunk.usage {
            summary.prompt_tokens = usage.prompt_tokens;
            summary.completion_tokens = usage.completion_tokens;
        }
    }
    summary
}

fn chunk(delta: ChunkDelta, finish: Option<&str>) -> ChatChunk {
    ChatChunk {
        id: "chatcmpl-1".into(),
        model: "m".into(),
        choices: vec![ChunkChoice {
            index: 0,
            delta,
            finish_reason: finish.map(str::to_owned),
            ..ChunkChoice::default()
        }],
        ..ChatChunk::default()
    }
}

#[derive(Clone, Debug)]
struct Script {
    texts: Vec<String>,
    tools: Vec<(String, String, Vec<String>)>,
    finish: &'static str,
    usage: AnthropicUsage,
}

fn script() -> impl Strategy<Value = Script> {
    (
        proptest::collection::vec(text(), 0..5),
        proptest::collection::vec(
            (
                "[a-zA-Z0-9]{4,8}",
                ident(),
                proptest::collection::vec("[a-z{}\":, 0-9]{1,8}", 0..4),
            ),
            0..3,
        ),
        prop_oneof![
            Just("stop"),
            Just("length"),
            Just("tool_calls"),
            Just("content_filter")
        ],
        anthropic_usage(),
    )
        .prop_map(|(texts, tools, finish, usage)| Script {
            texts,
            tools: tools
                .into_iter()
                .map(|(id, name, args)| (format!("call_{id}"), name, args))
                .collect(),
            finish,
            usage,
        })
}

fn openai_chunks(script: &Script) -> Vec<ChatChunk> {
    let mut chunks = vec![chunk(
        ChunkDelta {
            role: Some("assistant".into()),
            content: Some(String::new()),
            ..ChunkDelta::default()
        },
        None,
    )];
    for text in &script.texts {
        chunks.push(chunk(
            ChunkDelta {
                content: Some(text.clone()),
                ..ChunkDelta::default()
            },
            None,
        ));
    }
    for (index, (id, name, args)) in script.tools.iter().enumerate() {
        let index = index as u32;
        chunks.push(chunk(
            ChunkDelta {
                tool_calls: Some(vec![ToolCallDelta {
                    index,
                    id: Some(id.clone()),
                    kind: Some("function".into()),
                    function: Some(FunctionCallDelta {
                        name: Some(name.clone()),
                        arguments: Some(String::new()),
                    }),
                }]),
                ..ChunkDelta::default()
            },
            None,
        ));
        for piece in args {
            chunks.push(chunk(
                ChunkDelta {
                    tool_calls: Some(vec![ToolCallDelta {
                        index,
                        function: Some(FunctionCallDelta {
                            name: None,
                            arguments: Some(piece.clone()),
                        }),
                        ..ToolCallDelta::default()
                    }]),
                    ..ChunkDelta::default()
                },
                None,
            ));
        }
    }
    chunks.push(chunk(ChunkDelta::default(), Some(script.finish)));
    let mut last = chunk(ChunkDelta::default(), None);
    last.choices.clear();
    last.usage = Some(script.usage.to_openai());
    chunks.push(last);
    chunks
}

// ---------------------------------------------------------------- properties

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn openai_requests_survive_a_trip_through_anthropic(request in openai_request()) {
        let anthropic = chat_request_to_anthropic(&request, 4096).unwrap();
        let back = anthropic_request_to_chat(&anthropic).unwrap();
        prop_assert_eq!(back, request);
    }

    #[test]
    fn anthropic_requests_survive_a_trip_through_openai(request in anthropic_request()) {
        let openai = anthropic_request_to_chat(&request).unwrap();
        let mut back = chat_request_to_anthropic(&openai, 1).unwrap();
        let mut want = request.clone();
        normalize_anthropic(&mut back);
        normalize_anthropic(&mut want);
        prop_assert_eq!(back, want);
    }

    #[test]
    fn anthropic_responses_survive_a_trip_through_openai(
        text in proptest::option::of(text()),
        calls in proptest::collection::vec(tool_call(), 0..3),
        stop in prop_oneof![Just("end_turn"), Just("max_tokens"), Just("tool_use"), Just("refusal")],
        usage in anthropic_usage(),
    ) {
        let mut content = Vec::new();
        if let Some(text) = text {
            content.push(json!({"type": "text", "text": text}));
        }
        for call in &calls {
            content.push(json!({"type": "tool_use", "id": call.id, "name": call.function.name,
                "input": serde_json::from_str::<Value>(&call.function.arguments).unwrap()}));
        }
        let original = json!({
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x",
            "content": content, "stop_reason": stop, "stop_sequence": null,
            "usage": usage.to_value(),
        });
        let openai = anthropic_response_to_chat(&original).unwrap();
        prop_assert_eq!(chat_response_to_anthropic(&openai), original);
    }

    #[test]
    fn openai_responses_survive_a_trip_through_anthropic(
        text in proptest::option::of(text()),
        calls in proptest::collection::vec(tool_call(), 0..3),
        reasoning in proptest::option::of(text()),
        finish in prop_oneof![Just("stop"), Just("length"), Just("tool_calls"), Just("content_filter")],
        usage in anthropic_usage(),
    ) {
        let mut message = ChatMessage {
            role: "assistant".into(),
            content: match (&text, calls.is_empty()) {
                (Some(t), _) => Some(MessageContent::Text(t.clone())),
                (None, true) => Some(MessageContent::Text(String::new())),
                (None, false) => None,
            },
            tool_calls: (!calls.is_empty()).then_some(calls),
            ..ChatMessage::default()
        };
        if let Some(r) = reasoning {
            message.extra.insert("reasoning_content".into(), Value::String(r));
        }
        let original = ChatResponse {
            id: "chatcmpl-1".into(),
            object: "chat.completion".into(),
            created: 0,
            model: "gpt-x".into(),
            choices: vec![ChatChoice {
                index: 0,
                message,
                finish_reason: Some(finish.into()),
                ..ChatChoice::default()
            }],
            usage: Some(usage.to_openai()),
            extra: Map::new(),
        };
        let mut back = anthropic_response_to_chat(&chat_response_to_anthropic(&original)).unwrap();
        back.created = 0;
        prop_assert_eq!(back, original);
    }

    #[test]
    fn streams_survive_a_trip_through_anthropic_events(script in script()) {
        let chunks = openai_chunks(&script);
        let mut to_events = ChunksToAnthropic::new("m");
        let mut events = Vec::new();
        for c in &chunks {
            events.extend(to_events.on_chunk(c));
        }
        events.extend(to_events.finish());

        // The event sequence is well formed.
        let names: Vec<&str> = events.iter().map(|e| e.event.as_deref().unwrap()).collect();
        prop_assert_eq!(names.first().copied(), Some("message_start"));
        prop_assert_eq!(names.last().copied(), Some("message_stop"));
        let starts = names.iter().filter(|n| **n == "content_block_start").count();
        let stops = names.iter().filter(|n| **n == "content_block_stop").count();
        prop_assert_eq!(starts, stops);

        let mut to_chunks = AnthropicToChunks::new();
        let mut back = Vec::new();
        for event in &events {
            let data: Value = serde_json::from_str(&event.data).unwrap();
            back.extend(to_chunks.on_event(event.event.as_deref().unwrap(), &data));
        }
        prop_assert!(to_chunks.is_finished());
        let want = summarize(&chunks);
        let got = summarize(&back);
        prop_assert_eq!(got, want);
    }
}

#[test]
fn usage_round_trips_through_openai() {
    let usage = Usage::new(10, 2);
    assert_eq!(
        AnthropicUsage::from_openai(&usage).to_openai(),
        usage,
        "no cache fields appear from nowhere"
    );
}
