//! The `anthropic` adapter (Messages API) and the OpenAI ⇄ Anthropic translation the server also uses for `/v1/messages`.
//!
//! Two ways through this adapter:
//! - **native** ([`Provider::messages`] / [`Provider::messages_stream`]):
//!   the client's Anthropic body (model already rewritten) is forwarded
//!   untouched and the upstream's JSON / events come back untouched, so
//!   `cache_control`, thinking and citations survive;
//! - **translated** ([`Provider::chat`] / [`Provider::chat_stream`]): an
//!   OpenAI chat request becomes a Messages request and the answer (or its
//!   events) becomes OpenAI's shape.
//!
//! The translation functions are public so the server can offer
//! `/v1/messages` in front of any provider:
//! [`anthropic_request_to_chat`], [`chat_response_to_anthropic`] and
//! [`chat_stream_to_anthropic`] (OpenAI chunks → Anthropic events); the
//! adapter uses the reverse ones: [`chat_request_to_anthropic`],
//! [`anthropic_response_to_chat`] and [`AnthropicToChunks`].
//!
//! What has no counterpart is dropped, not guessed: OpenAI's `n`,
//! `logprobs`, `seed`, penalties, `logit_bias` and `response_format` have
//! no Messages equivalent; Anthropic's `thinking`, `top_k`, server tools,
//! citations and documents other than PDFs have no OpenAI one — the server
//! routes requests using them only to Anthropic deployments
//! ([`uses_anthropic_only_features`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_core::Stream;
use serde_json::{Map, Value, json};
use switchyard_core::config::HealthCheckMode;
use switchyard_core::stream::TimedStream;
use switchyard_core::{
    ByteString, CallContext, Capabilities, ChatChoice, ChatChunk, ChatMessage, ChatRequest,
    ChatResponse, ChatStream, ChunkChoice, ChunkDelta, ChunkItem, ContentPart, FunctionCall,
    FunctionCallDelta, FunctionDefinition, MessageContent, ModelConfig, ModelInfo, Provider,
    ProviderError, RawEvent, RawEventStream, Secret, StreamChunk, TimeoutPhase, Tool, ToolCall,
    ToolCallDelta, UpstreamError, UsualChunks, reasoning_text,
};

use crate::http::{Upstream, parse_json};
use crate::openai::{health_check, open_stream};
use crate::sse::SseEvent;
use crate::stream::{
    DRAIN_LIMIT, Expired, RawTimer, ResponseEvents, count_malformed, in_band_error,
    response_events, source_failure,
};
use crate::wire::anthropic::{AnthropicUsage, DEFAULT_MAX_TOKENS, finish_reason, stop_reason};

/// A request or response that cannot be expressed in the other shape.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TranslationError {
    /// What could not be translated.
    pub message: String,
}

impl TranslationError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// As a 400 `invalid_request_error`, the way an upstream would reject it.
    pub fn into_provider_error(self) -> ProviderError {
        ProviderError::Upstream(Box::new(UpstreamError::from_status(
            400,
            self.message,
            Some("invalid_request_error".to_owned()),
            None,
        )))
    }
}

type Result<T, E = TranslationError> = std::result::Result<T, E>;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn without(object: &Map<String, Value>, keys: &[&str]) -> Map<String, Value> {
    object
        .iter()
        .filter(|(k, _)| !keys.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

// ---------------------------------------------------------------------------
// Requests: Anthropic → OpenAI
// ---------------------------------------------------------------------------

/// Whether an Anthropic request uses features only Anthropic serves
/// (`thinking`, `top_k`, `cache_control`, server tools, documents,
/// citations, `container`, `mcp_servers`): such requests should go to
/// Anthropic deployments natively.
pub fn uses_anthropic_only_features(body: &Value) -> bool {
    let Some(object) = body.as_object() else {
        return false;
    };
    if [
        "thinking",
        "top_k",
        "container",
        "mcp_servers",
        "context_management",
    ]
    .iter()
    .any(|k| object.get(*k).is_some_and(|v| !v.is_null()))
    {
        return true;
    }
    if object
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|tools| tools.iter().any(|t| t.get("input_schema").is_none()))
    {
        return true;
    }
    fn walk(value: &Value) -> bool {
        match value {
            Value::Object(map) => {
                map.contains_key("cache_control")
                    || map.contains_key("citations")
                    || map.get("type").and_then(Value::as_str).is_some_and(|t| {
                        matches!(
                            t,
                            "search_result"
                                | "server_tool_use"
                                | "web_search_tool_result"
                                | "redacted_thinking"
                                | "container_upload"
                                | "mcp_tool_use"
                                | "mcp_tool_result"
                        )
                    })
                    || map.get("type").and_then(Value::as_str) == Some("document")
                        && map.get("source").and_then(|s| s.get("media_type"))
                            != Some(&json!("application/pdf"))
                    || map.values().any(walk)
            }
            Value::Array(items) => items.iter().any(walk),
            _ => false,
        }
    }
    ["system", "messages", "tools"]
        .iter()
        .any(|k| object.get(*k).is_some_and(walk))
}

/// An Anthropic content block as an OpenAI content part.
fn block_to_part(block: &Value) -> Result<ContentPart> {
    let object = block
        .as_object()
        .ok_or_else(|| TranslationError::new("content blocks must be objects"))?;
    let kind = object.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "text" => Ok(ContentPart {
            kind: "text".to_owned(),
            text: Some(
                object
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            ),
            image_url: None,
            extra: without(object, &["type", "text"]),
        }),
        "image" | "document" => {
            let source = object.get("source").cloned().unwrap_or(Value::Null);
            let url = match source.get("type").and_then(Value::as_str) {
                Some("base64") => format!(
                    "data:{};base64,{}",
                    source
                        .get("media_type")
                        .and_then(Value::as_str)
                        .unwrap_or("application/octet-stream"),
                    source.get("data").and_then(Value::as_str).unwrap_or("")
                ),
                Some("url") => source
                    .get("url")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                _ => {
                    return Err(TranslationError::new(format!(
                        "{kind} sources other than base64 and url need an anthropic provider"
                    )));
                }
            };
            let extra = without(object, &["type", "source"]);
            if kind == "image" {
                Ok(ContentPart {
                    kind: "image_url".to_owned(),
                    text: None,
                    image_url: Some(json!({ "url": url })),
                    extra,
                })
            } else {
                let mut file = Map::new();
                file.insert("file_data".into(), Value::String(url));
                if let Some(title) = object.get("title") {
                    file.insert("filename".into(), title.clone());
                }
                let mut extra = Map::new();
                extra.insert("file".into(), Value::Object(file));
                Ok(ContentPart {
                    kind: "file".to_owned(),
                    text: None,
                    image_url: None,
                    extra,
                })
            }
        }
        other => Err(TranslationError::new(format!(
            "content block type '{other}' needs an anthropic provider"
        ))),
    }
}

/// Blocks as message content: a single plain text block is plain text.
fn blocks_to_content(blocks: &[Value]) -> Result<MessageContent> {
    let parts = blocks
        .iter()
        .map(block_to_part)
        .collect::<Result<Vec<_>>>()?;
    Ok(collapse(parts))
}

fn collapse(parts: Vec<ContentPart>) -> MessageContent {
    match parts.as_slice() {
        [only] if only.kind == "text" && only.extra.is_empty() && only.image_url.is_none() => {
            MessageContent::Text(only.text.clone().unwrap_or_default())
        }
        _ => MessageContent::Parts(parts),
    }
}

fn content_value_to_content(value: &Value) -> Result<MessageContent> {
    match value {
        Value::String(text) => Ok(MessageContent::Text(text.clone())),
        Value::Array(blocks) => blocks_to_content(blocks),
        Value::Null => Ok(MessageContent::Text(String::new())),
        _ => Err(TranslationError::new(
            "content must be a string or an array of blocks",
        )),
    }
}

fn anthropic_message_to_chat(message: &Value, out: &mut Vec<ChatMessage>) -> Result<()> {
    let role = message
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslationError::new("every message needs a role"))?;
    let content = message.get("content").unwrap_or(&Value::Null);
    let blocks = match content {
        Value::Array(blocks) => blocks.as_slice(),
        other => {
            out.push(ChatMessage {
                role: role.to_owned(),
                content: Some(content_value_to_content(other)?),
                ..ChatMessage::default()
            });
            return Ok(());
        }
    };
    match role {
        "assistant" => {
            let mut text = String::new();
            let mut reasoning = String::new();
            let mut calls = Vec::new();
            for block in blocks {
                match block.get("type").and_then(Value::as_str).unwrap_or("") {
                    "text" => {
                        text.push_str(block.get("text").and_then(Value::as_str).unwrap_or(""))
                    }
                    "thinking" => reasoning
                        .push_str(block.get("thinking").and_then(Value::as_str).unwrap_or("")),
                    "redacted_thinking" => {}
                    "tool_use" => calls.push(ToolCall {
                        id: block
                            .get("id")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        kind: "function".to_owned(),
                        function: FunctionCall {
                            name: block
                                .get("name")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_owned(),
                            arguments: block
                                .get("input")
                                .map_or_else(|| "{}".to_owned(), Value::to_string),
                        },
                    }),
                    other => {
                        return Err(TranslationError::new(format!(
                            "content block type '{other}' needs an anthropic provider"
                        )));
                    }
                }
            }
            let mut message = ChatMessage {
                role: "assistant".to_owned(),
                content: (!text.is_empty() || calls.is_empty())
                    .then_some(MessageContent::Text(text)),
                tool_calls: (!calls.is_empty()).then_some(calls),
                ..ChatMessage::default()
            };
            if !reasoning.is_empty() {
                message
                    .extra
                    .insert("reasoning_content".into(), Value::String(reasoning));
            }
            out.push(message);
        }
        _ => {
            let mut rest = Vec::new();
            for block in blocks {
                if block.get("type").and_then(Value::as_str) == Some("tool_result") {
                    let content = match block.get("content") {
                        Some(value) => content_value_to_content(value)?,
                        None => MessageContent::Text(String::new()),
                    };
                    out.push(ChatMessage {
                        role: "tool".to_owned(),
                        content: Some(content),
                        tool_call_id: Some(
                            block
                                .get("tool_use_id")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_owned(),
                        ),
                        ..ChatMessage::default()
                    });
                } else {
                    rest.push(block.clone());
                }
            }
            if !rest.is_empty() {
                out.push(ChatMessage {
                    role: role.to_owned(),
                    content: Some(blocks_to_content(&rest)?),
                    ..ChatMessage::default()
                });
            }
        }
    }
    Ok(())
}

fn anthropic_tool_choice(choice: &Value, extra: &mut Map<String, Value>) -> Option<Value> {
    if choice
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        == Some(true)
    {
        extra.insert("parallel_tool_calls".into(), Value::Bool(false));
    }
    match choice.get("type").and_then(Value::as_str)? {
        "auto" => Some(json!("auto")),
        "any" => Some(json!("required")),
        "none" => Some(json!("none")),
        "tool" => Some(json!({
            "type": "function",
            "function": { "name": choice.get("name").cloned().unwrap_or(Value::Null) }
        })),
        _ => None,
    }
}

/// An Anthropic Messages request as an OpenAI chat request (for
/// `/v1/messages` served by a non-Anthropic provider).
pub fn anthropic_request_to_chat(body: &Value) -> Result<ChatRequest> {
    let object = body
        .as_object()
        .ok_or_else(|| TranslationError::new("the request body must be a JSON object"))?;
    let mut messages = Vec::new();
    match object.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => messages.push(ChatMessage::text("system", text.clone())),
        Some(Value::Array(blocks)) => messages.push(ChatMessage {
            role: "system".to_owned(),
            content: Some(blocks_to_content(blocks)?),
            ..ChatMessage::default()
        }),
        Some(_) => return Err(TranslationError::new("system must be a string or blocks")),
    }
    let list = object
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslationError::new("messages must be an array"))?;
    for message in list {
        anthropic_message_to_chat(message, &mut messages)?;
    }
    let mut extra = Map::new();
    let tools = match object.get("tools").and_then(Value::as_array) {
        Some(tools) => Some(
            tools
                .iter()
                .map(|tool| {
                    let schema = tool.get("input_schema").ok_or_else(|| {
                        TranslationError::new("server tools need an anthropic provider")
                    })?;
                    let mut tool_extra = Map::new();
                    if let Some(cache) = tool.get("cache_control") {
                        tool_extra.insert("cache_control".into(), cache.clone());
                    }
                    Ok(Tool {
                        kind: "function".to_owned(),
                        function: FunctionDefinition {
                            name: tool
                                .get("name")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_owned(),
                            description: tool
                                .get("description")
                                .and_then(Value::as_str)
                                .map(str::to_owned),
                            parameters: Some(schema.clone()),
                            extra: Map::new(),
                        },
                        extra: tool_extra,
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        ),
        None => None,
    };
    let tool_choice = object
        .get("tool_choice")
        .and_then(|c| anthropic_tool_choice(c, &mut extra));
    if let Some(user) = object
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        extra.insert("user".into(), Value::String(user.to_owned()));
    }
    let number = |key: &str| object.get(key).and_then(Value::as_f64);
    Ok(ChatRequest {
        model: object
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        messages,
        stream: object.get("stream").and_then(Value::as_bool) == Some(true),
        max_tokens: object
            .get("max_tokens")
            .and_then(Value::as_u64)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        max_completion_tokens: None,
        stream_options: None,
        temperature: number("temperature"),
        top_p: number("top_p"),
        stop: object
            .get("stop_sequences")
            .filter(|s| s.as_array().is_some_and(|a| !a.is_empty()))
            .cloned(),
        tools,
        tool_choice,
        extra,
    })
}

// ---------------------------------------------------------------------------
// Requests: OpenAI → Anthropic
// ---------------------------------------------------------------------------

fn part_to_block(part: &ContentPart) -> Result<Value> {
    match part.kind.as_str() {
        "text" => {
            let mut block = part.extra.clone();
            block.insert("type".into(), json!("text"));
            block.insert(
                "text".into(),
                Value::String(part.text.clone().unwrap_or_default()),
            );
            Ok(Value::Object(block))
        }
        "image_url" => {
            let url = part
                .image_url
                .as_ref()
                .and_then(|i| i.get("url").or(Some(i)))
                .and_then(Value::as_str)
                .ok_or_else(|| TranslationError::new("image_url parts need a url"))?;
            let mut block = part.extra.clone();
            block.insert("type".into(), json!("image"));
            block.insert("source".into(), url_source(url)?);
            Ok(Value::Object(block))
        }
        "file" => {
            let data = part
                .extra
                .get("file")
                .and_then(|f| f.get("file_data"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    TranslationError::new("file parts need inline file_data for anthropic")
                })?;
            let mut block = Map::new();
            block.insert("type".into(), json!("document"));
            block.insert("source".into(), url_source(data)?);
            if let Some(name) = part.extra.get("file").and_then(|f| f.get("filename")) {
                block.insert("title".into(), name.clone());
            }
            Ok(Value::Object(block))
        }
        other => Err(TranslationError::new(format!(
            "content part type '{other}' is not supported by anthropic"
        ))),
    }
}

fn url_source(url: &str) -> Result<Value> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or_else(|| TranslationError::new("malformed data URL"))?;
        let media_type = meta
            .strip_suffix(";base64")
            .ok_or_else(|| TranslationError::new("data URLs must be base64"))?;
        Ok(json!({ "type": "base64", "media_type": media_type, "data": data }))
    } else {
        Ok(json!({ "type": "url", "url": url }))
    }
}

fn content_to_blocks(content: &MessageContent) -> Result<Vec<Value>> {
    match content {
        MessageContent::Text(text) if text.is_empty() => Ok(Vec::new()),
        MessageContent::Text(text) => Ok(vec![json!({ "type": "text", "text": text })]),
        MessageContent::Parts(parts) => parts.iter().map(part_to_block).collect(),
    }
}

fn is_plain_text_block(block: &Value) -> bool {
    block.as_object().is_some_and(|b| {
        b.len() == 2 && b.get("type") == Some(&json!("text")) && b.contains_key("text")
    })
}

/// A single plain text block is sent as a string.
fn blocks_value(blocks: Vec<Value>) -> Value {
    if let [only] = blocks.as_slice() {
        if is_plain_text_block(only) {
            return only.get("text").cloned().unwrap_or_default();
        }
    }
    Value::Array(blocks)
}

fn push_turn(turns: &mut Vec<(String, Vec<Value>)>, role: &str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some((last, existing)) if last == role => existing.extend(blocks),
        _ => turns.push((role.to_owned(), blocks)),
    }
}

fn tool_input(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(value @ Value::Object(_)) => value,
        _ => {
            tracing::debug!("tool call arguments are not a JSON object; sending {{}}");
            json!({})
        }
    }
}

fn openai_tool_choice(choice: &Value, parallel: Option<bool>) -> Option<Value> {
    let mut value = match choice {
        Value::String(s) => match s.as_str() {
            "auto" => json!({ "type": "auto" }),
            "required" => json!({ "type": "any" }),
            "none" => json!({ "type": "none" }),
            _ => return None,
        },
        Value::Object(o) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .cloned()
                .unwrap_or(Value::Null);
            json!({ "type": "tool", "name": name })
        }
        _ => return None,
    };
    if parallel == Some(false) {
        if let Some(map) = value.as_object_mut() {
            map.insert("disable_parallel_tool_use".into(), Value::Bool(true));
        }
    }
    Some(value)
}

/// An OpenAI chat request as an Anthropic Messages request. `max_tokens`
/// is the request's (`max_completion_tokens`, else `max_tokens`), else
/// `default_max_tokens`.
pub fn chat_request_to_anthropic(request: &ChatRequest, default_max_tokens: u32) -> Result<Value> {
    let mut system = Vec::new();
    let mut turns: Vec<(String, Vec<Value>)> = Vec::new();
    for message in &request.messages {
        match message.role.as_str() {
            "system" | "developer" => {
                if let Some(content) = &message.content {
                    system.extend(content_to_blocks(content)?);
                }
            }
            "user" => {
                let blocks = match &message.content {
                    Some(content) => content_to_blocks(content)?,
                    None => Vec::new(),
                };
                push_turn(&mut turns, "user", blocks);
            }
            "assistant" => {
                let mut blocks = match &message.content {
                    Some(content) => content_to_blocks(content)?,
                    None => Vec::new(),
                };
                for call in message.tool_calls.iter().flatten() {
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.function.name,
                        "input": tool_input(&call.function.arguments),
                    }));
                }
                push_turn(&mut turns, "assistant", blocks);
            }
            "tool" | "function" => {
                let content = match &message.content {
                    Some(MessageContent::Text(text)) => Value::String(text.clone()),
                    Some(MessageContent::Parts(parts)) => Value::Array(
                        parts
                            .iter()
                            .map(part_to_block)
                            .collect::<Result<Vec<_>>>()?,
                    ),
                    None => Value::String(String::new()),
                };
                let id = message
                    .tool_call_id
                    .clone()
                    .or_else(|| message.name.clone())
                    .unwrap_or_default();
                push_turn(
                    &mut turns,
                    "user",
                    vec![json!({ "type": "tool_result", "tool_use_id": id, "content": content })],
                );
            }
            other => {
                return Err(TranslationError::new(format!(
                    "message role '{other}' is not supported by anthropic"
                )));
            }
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), Value::String(request.model.clone()));
    body.insert(
        "messages".into(),
        Value::Array(
            turns
                .into_iter()
                .map(|(role, blocks)| json!({ "role": role, "content": blocks_value(blocks) }))
                .collect(),
        ),
    );
    body.insert(
        "max_tokens".into(),
        json!(request.output_limit().unwrap_or(default_max_tokens)),
    );
    if !system.is_empty() {
        body.insert("system".into(), blocks_value(system));
    }
    if let Some(t) = request.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = request.top_p {
        body.insert("top_p".into(), json!(p));
    }
    match &request.stop {
        Some(Value::String(s)) => {
            body.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(items)) if !items.is_empty() => {
            body.insert("stop_sequences".into(), Value::Array(items.clone()));
        }
        _ => {}
    }
    if request.stream {
        body.insert("stream".into(), Value::Bool(true));
    }
    if let Some(tools) = &request.tools {
        let tools: Vec<Value> = tools
            .iter()
            .map(|tool| {
                let mut out = Map::new();
                out.insert("name".into(), Value::String(tool.function.name.clone()));
                if let Some(d) = &tool.function.description {
                    out.insert("description".into(), Value::String(d.clone()));
                }
                out.insert(
                    "input_schema".into(),
                    tool.function
                        .parameters
                        .clone()
                        .unwrap_or_else(|| json!({ "type": "object", "properties": {} })),
                );
                if let Some(cache) = tool.extra.get("cache_control") {
                    out.insert("cache_control".into(), cache.clone());
                }
                Value::Object(out)
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    let parallel = request
        .extra
        .get("parallel_tool_calls")
        .and_then(Value::as_bool);
    let choice = match &request.tool_choice {
        Some(choice) => openai_tool_choice(choice, parallel),
        None if parallel == Some(false) && request.tools.is_some() => {
            openai_tool_choice(&json!("auto"), parallel)
        }
        None => None,
    };
    if let Some(choice) = choice {
        body.insert("tool_choice".into(), choice);
    }
    if let Some(user) = request.extra.get("user").and_then(Value::as_str) {
        body.insert("metadata".into(), json!({ "user_id": user }));
    }
    Ok(Value::Object(body))
}

// ---------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------

/// An Anthropic Messages response as an OpenAI chat completion.
pub fn anthropic_response_to_chat(body: &Value) -> Result<ChatResponse> {
    let object = body
        .as_object()
        .ok_or_else(|| TranslationError::new("the response must be a JSON object"))?;
    let blocks: Vec<Value> = object
        .get("content")
        .and_then(Value::as_array)
        .map(|blocks| {
            blocks
                .iter()
                .filter(|b| {
                    matches!(
                        b.get("type").and_then(Value::as_str),
                        Some("text" | "thinking" | "tool_use")
                    )
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let mut converted = Vec::new();
    anthropic_message_to_chat(
        &json!({ "role": "assistant", "content": blocks }),
        &mut converted,
    )?;
    let message = converted.pop().unwrap_or_else(|| ChatMessage {
        role: "assistant".to_owned(),
        ..ChatMessage::default()
    });
    let usage = AnthropicUsage::from_value(object.get("usage")).to_openai();
    Ok(ChatResponse {
        id: object
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        object: "chat.completion".to_owned(),
        created: now_secs(),
        model: object
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        choices: vec![ChatChoice {
            index: 0,
            message,
            finish_reason: object
                .get("stop_reason")
                .and_then(Value::as_str)
                .map(|r| finish_reason(r).to_owned()),
            logprobs: None,
            extra: Map::new(),
        }],
        usage: Some(usage),
        extra: Map::new(),
    })
}

/// An OpenAI chat completion as an Anthropic Messages response (the first
/// choice; for `/v1/messages` served by a non-Anthropic provider).
pub fn chat_response_to_anthropic(response: &ChatResponse) -> Value {
    let choice = response.choices.first();
    let mut content = Vec::new();
    if let Some(message) = choice.map(|c| &c.message) {
        if let Some(reasoning) = reasoning_text(&message.extra) {
            content.push(json!({ "type": "thinking", "thinking": reasoning, "signature": "" }));
        }
        if let Some(text) = message.text_content().filter(|t| !t.is_empty()) {
            content.push(json!({ "type": "text", "text": text }));
        }
        for call in message.tool_calls.iter().flatten() {
            content.push(json!({
                "type": "tool_use",
                "id": call.id,
                "name": call.function.name,
                "input": tool_input(&call.function.arguments),
            }));
        }
    }
    let usage = response
        .usage
        .as_ref()
        .map(AnthropicUsage::from_openai)
        .unwrap_or_default();
    json!({
        "id": response.id,
        "type": "message",
        "role": "assistant",
        "model": response.model,
        "content": content,
        "stop_reason": stop_reason(choice.and_then(|c| c.finish_reason.as_deref()).unwrap_or("stop")),
        "stop_sequence": Value::Null,
        "usage": usage.to_value(),
    })
}

// ---------------------------------------------------------------------------
// Streams: Anthropic events → OpenAI chunks
// ---------------------------------------------------------------------------

/// Translates Anthropic stream events into OpenAI chunks, one event at a time.
#[derive(Debug, Default)]
pub struct AnthropicToChunks {
    id: String,
    model: String,
    created: u64,
    usage: AnthropicUsage,
    tools: HashMap<u64, u32>,
    next_tool: u32,
    finished: bool,
}

impl AnthropicToChunks {
    /// A translator at the start of a stream.
    pub fn new() -> Self {
        Self {
            created: now_secs(),
            ..Self::default()
        }
    }

    /// Whether a `message_delta` with a `stop_reason` was seen.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    fn chunk(&self, delta: ChunkDelta, finish: Option<String>) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".to_owned(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish,
                logprobs: None,
                extra: Map::new(),
            }],
            usage: None,
            extra: Map::new(),
            source: Default::default(),
        }
    }

    /// The final chunk carrying usage (no choices), as OpenAI sends it.
    pub fn usage_chunk(&self) -> ChatChunk {
        let mut chunk = self.chunk(ChunkDelta::default(), None);
        chunk.choices.clear();
        chunk.usage = Some(self.usage.to_openai());
        chunk
    }

    fn text(&self, text: &str) -> ChatChunk {
        self.chunk(
            ChunkDelta {
                content: Some(text.to_owned()),
                ..ChunkDelta::default()
            },
            None,
        )
    }

    fn tool_delta(&self, delta: ToolCallDelta) -> ChatChunk {
        self.chunk(
            ChunkDelta {
                tool_calls: Some(vec![delta]),
                ..ChunkDelta::default()
            },
            None,
        )
    }

    /// The chunks one event gives (often none). `event` is the SSE event
    /// name, or the data's `type` when the name is absent.
    pub fn on_event(&mut self, event: &str, data: &Value) -> Vec<ChatChunk> {
        let str_at = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
        match event {
            "message_start" => {
                let message = data.get("message").unwrap_or(&Value::Null);
                self.id = str_at(message, "id").unwrap_or_default();
                self.model = str_at(message, "model").unwrap_or_default();
                self.usage = AnthropicUsage::from_value(message.get("usage"));
                vec![self.chunk(
                    ChunkDelta {
                        role: Some("assistant".to_owned()),
                        content: Some(String::new()),
                        ..ChunkDelta::default()
                    },
                    None,
                )]
            }
            "content_block_start" => {
                let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                let block = data.get("content_block").unwrap_or(&Value::Null);
                match block.get("type").and_then(Value::as_str) {
                    Some("tool_use") => {
                        let number = self.next_tool;
                        self.next_tool += 1;
                        self.tools.insert(index, number);
                        let input = block
                            .get("input")
                            .filter(|i| i.as_object().is_some_and(|o| !o.is_empty()))
                            .map(Value::to_string)
                            .unwrap_or_default();
                        vec![self.tool_delta(ToolCallDelta {
                            index: number,
                            id: str_at(block, "id"),
                            kind: Some("function".to_owned()),
                            function: Some(FunctionCallDelta {
                                name: str_at(block, "name"),
                                arguments: Some(input),
                            }),
                        })]
                    }
                    Some("text") => match str_at(block, "text").filter(|t| !t.is_empty()) {
                        Some(text) => vec![self.text(&text)],
                        None => Vec::new(),
                    },
                    _ => Vec::new(),
                }
            }
            "content_block_delta" => {
                let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                let delta = data.get("delta").unwrap_or(&Value::Null);
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        vec![self.text(&str_at(delta, "text").unwrap_or_default())]
                    }
                    Some("input_json_delta") => match self.tools.get(&index) {
                        Some(&number) => vec![self.tool_delta(ToolCallDelta {
                            index: number,
                            id: None,
                            kind: None,
                            function: Some(FunctionCallDelta {
                                name: None,
                                arguments: str_at(delta, "partial_json"),
                            }),
                        })],
                        None => Vec::new(),
                    },
                    Some("thinking_delta") => {
                        let mut out = ChunkDelta::default();
                        out.extra.insert(
                            "reasoning_content".into(),
                            Value::String(str_at(delta, "thinking").unwrap_or_default()),
                        );
                        vec![self.chunk(out, None)]
                    }
                    _ => Vec::new(),
                }
            }
            "message_delta" => {
                if let Some(usage) = data.get("usage") {
                    self.usage.merge(usage);
                }
                match data
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                {
                    Some(reason) => {
                        self.finished = true;
                        vec![self.chunk(
                            ChunkDelta::default(),
                            Some(finish_reason(reason).to_owned()),
                        )]
                    }
                    None => Vec::new(),
                }
            }
            "message_stop" => vec![self.usage_chunk()],
            _ => Vec::new(),
        }
    }
}

/// A `content_block_delta` event as far as a text delta needs it.
#[derive(serde::Deserialize)]
struct TextDeltaEvent<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    delta: TextDelta<'a>,
}

#[derive(serde::Deserialize)]
struct TextDelta<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    text: Cow<'a, str>,
}

/// The text of `event` when it is a text delta (`content_block_delta`,
/// by its SSE name or, without one, by its `type`, with a `text_delta`
/// carrying a string `text`), read without a `Value`. `None` leaves the
/// event to [`AnthropicToChunks::on_event`], which gives the same chunk
/// for every event this reads.
fn text_delta(event: &SseEvent) -> Option<Cow<'_, str>> {
    if event
        .event
        .as_deref()
        .is_some_and(|name| name != "content_block_delta")
    {
        return None;
    }
    let read = serde_json::from_str::<TextDeltaEvent<'_>>(&event.data).ok()?;
    let named = event.event.is_some() || read.kind.as_deref() == Some("content_block_delta");
    (named && read.delta.kind == "text_delta").then_some(read.delta.text)
}

/// A stream's text chunks made as their bytes: the stream's first text
/// chunk serialised once with an empty text, then each text put between
/// the quotes. Read by [`UsualChunks`] for
/// what the stream layers ask, such a chunk is written out as these
/// bytes, not built as a [`ChatChunk`] and serialised, which cost more
/// than the rest of an event's way through the gateway.
#[derive(Default)]
struct TextChunks {
    /// The serialised text chunk before and after its text's quotes.
    frame: Option<(String, String)>,
    usual: UsualChunks,
}

impl TextChunks {
    /// The chunk `translator` makes for `text`, as its bytes when they
    /// can be made.
    fn chunk(&mut self, translator: &AnthropicToChunks, text: &str) -> StreamChunk {
        // A text with a quote, a backslash or a control character is
        // escaped in JSON, which the usual shape does not take: such a
        // chunk is built and serialised, with no attempt first. Any other
        // text is its JSON string's content as it is.
        let plain = switchyard_core::chunk::is_plain_string(text.as_bytes());
        if plain && self.frame.is_none() {
            self.frame = Self::frame(translator);
        }
        if let (true, Some((before, after))) = (plain, &self.frame) {
            let mut data = String::with_capacity(before.len() + text.len() + 2 + after.len());
            data.push_str(before);
            data.push('"');
            data.push_str(text);
            data.push('"');
            data.push_str(after);
            if let Ok(chunk) = self.usual.read(ByteString::from(data)) {
                return chunk;
            }
        }
        translator.text(text).into()
    }

    /// The bytes around the text of `translator`'s text chunk. In JSON a
    /// quote inside a string is escaped, so the first `"content":""` is
    /// the member itself.
    fn frame(translator: &AnthropicToChunks) -> Option<(String, String)> {
        const EMPTY: &str = r#""content":"""#;
        let json = serde_json::to_string(&translator.text("")).ok()?;
        let text_at = memchr::memmem::find(json.as_bytes(), EMPTY.as_bytes())? + EMPTY.len() - 2;
        Some((
            json.get(..text_at)?.to_owned(),
            json.get(text_at + 2..)?.to_owned(),
        ))
    }

    /// The stream's id or model changed (`message_start`): the frame is
    /// made again for the next text.
    fn restart(&mut self) {
        self.frame = None;
    }
}

/// Anthropic events in, OpenAI chunks out, polled directly so a chunk
/// moves no future on its way.
struct AnthropicChunkReader {
    events: ResponseEvents,
    translator: AnthropicToChunks,
    texts: TextChunks,
    pending: VecDeque<StreamChunk>,
    provider: String,
    secret: Option<Secret>,
    chunks: u64,
    usage_sent: bool,
    done: bool,
}

impl AnthropicChunkReader {
    fn end(&mut self) -> Option<ChunkItem> {
        self.done = true;
        if !self.translator.is_finished() {
            return Some(Err(ProviderError::StreamCut {
                chunks: self.chunks,
            }));
        }
        if self.usage_sent {
            None
        } else {
            self.usage_sent = true;
            Some(Ok(self.translator.usage_chunk().into()))
        }
    }

    /// Translates one event into `pending`; an item when the stream ends
    /// with it (an error event, or a `message_stop` before completion).
    fn read(&mut self, event: SseEvent) -> Option<ChunkItem> {
        // Most events of a reply are text deltas: read into borrowed
        // fields, not a `Value` of maps and strings.
        if let Some(text) = text_delta(&event) {
            let chunk = self.texts.chunk(&self.translator, &text);
            self.pending.push_back(chunk);
            return None;
        }
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
            count_malformed(&self.provider);
            return None;
        };
        let name = event
            .event
            .or_else(|| data.get("type").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default();
        if name == "error" {
            self.done = true;
            return Some(Err(in_band_error(&data, self.secret.as_ref())));
        }
        if name == "message_stop" {
            if !self.translator.is_finished() {
                return self.end();
            }
            self.usage_sent = true;
            // The end of input that follows is the end of the stream.
            self.events.end_after_drain(DRAIN_LIMIT);
        }
        if name == "message_start" {
            self.texts.restart();
        }
        self.pending.extend(
            self.translator
                .on_event(&name, &data)
                .into_iter()
                .map(StreamChunk::from),
        );
        None
    }
}

impl Stream for AnthropicChunkReader {
    type Item = ChunkItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(chunk) = this.pending.pop_front() {
                this.chunks += 1;
                return Poll::Ready(Some(Ok(chunk)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            let event = match ready!(this.events.poll_next_event(cx)) {
                Some(Ok(event)) => event,
                Some(Err(error)) if !this.translator.is_finished() => {
                    this.done = true;
                    return Poll::Ready(Some(Err(source_failure(error, this.chunks))));
                }
                Some(Err(_)) | None => return Poll::Ready(this.end()),
            };
            if let Some(item) = this.read(event) {
                return Poll::Ready(Some(item));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Streams: OpenAI chunks → Anthropic events
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum OpenBlock {
    Text,
    Thinking,
    Tool(u32),
}

/// Translates OpenAI chunks into Anthropic stream events (for
/// `/v1/messages` streams served by a non-Anthropic provider).
#[derive(Debug)]
pub struct ChunksToAnthropic {
    model: String,
    id: Option<String>,
    started: bool,
    block: Option<OpenBlock>,
    next_index: u32,
    stop_reason: Option<&'static str>,
    usage: Option<AnthropicUsage>,
}

fn raw(name: &str, data: Value) -> RawEvent {
    RawEvent {
        event: Some(name.to_owned()),
        data: data.to_string().into(),
    }
}

impl ChunksToAnthropic {
    /// A translator naming `model` in `message_start`.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            id: None,
            started: false,
            block: None,
            next_index: 0,
            stop_reason: None,
            usage: None,
        }
    }

    fn start(&mut self, chunk: &ChatChunk, out: &mut Vec<RawEvent>) {
        if self.started {
            return;
        }
        self.started = true;
        let id = if chunk.id.is_empty() {
            format!("msg_{}", now_secs())
        } else {
            chunk.id.clone()
        };
        self.id = Some(id.clone());
        out.push(raw(
            "message_start",
            json!({
                "type": "message_start",
                "message": {
                    "id": id, "type": "message", "role": "assistant", "model": self.model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": { "input_tokens": 0, "output_tokens": 0 }
                }
            }),
        ));
    }

    fn close_block(&mut self, out: &mut Vec<RawEvent>) {
        if self.block.take().is_some() {
            out.push(raw(
                "content_block_stop",
                json!({ "type": "content_block_stop", "index": self.next_index - 1 }),
            ));
        }
    }

    fn open_block(&mut self, block: OpenBlock, start: Value, out: &mut Vec<RawEvent>) {
        self.close_block(out);
        out.push(raw(
            "content_block_start",
            json!({ "type": "content_block_start", "index": self.next_index, "content_block": start }),
        ));
        self.next_index += 1;
        self.block = Some(block);
    }

    fn delta(&self, delta: Value) -> RawEvent {
        raw(
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": self.next_index.saturating_sub(1), "delta": delta }),
        )
    }

    /// The events one chunk gives.
    pub fn on_chunk(&mut self, chunk: &ChatChunk) -> Vec<RawEvent> {
        let mut out = Vec::new();
        self.start(chunk, &mut out);
        if let Some(usage) = &chunk.usage {
            self.usage = Some(AnthropicUsage::from_openai(usage));
        }
        let Some(choice) = chunk.choices.iter().find(|c| c.index == 0) else {
            return out;
        };
        if let Some(reasoning) = reasoning_text(&choice.delta.extra) {
            if self.block != Some(OpenBlock::Thinking) {
                self.open_block(
                    OpenBlock::Thinking,
                    json!({ "type": "thinking", "thinking": "", "signature": "" }),
                    &mut out,
                );
            }
            out.push(self.delta(json!({ "type": "thinking_delta", "thinking": reasoning })));
        }
        if let Some(text) = choice.delta.content.as_deref().filter(|t| !t.is_empty()) {
            if self.block != Some(OpenBlock::Text) {
                self.open_block(
                    OpenBlock::Text,
                    json!({ "type": "text", "text": "" }),
                    &mut out,
                );
            }
            out.push(self.delta(json!({ "type": "text_delta", "text": text })));
        }
        for call in choice.delta.tool_calls.iter().flatten() {
            let same = self.block == Some(OpenBlock::Tool(call.index));
            if !same || call.id.is_some() {
                let function = call.function.as_ref();
                self.open_block(
                    OpenBlock::Tool(call.index),
                    json!({
                        "type": "tool_use",
                        "id": call.id.clone().unwrap_or_default(),
                        "name": function.and_then(|f| f.name.clone()).unwrap_or_default(),
                        "input": {}
                    }),
                    &mut out,
                );
            }
            if let Some(arguments) = call
                .function
                .as_ref()
                .and_then(|f| f.arguments.as_deref())
                .filter(|a| !a.is_empty())
            {
                out.push(
                    self.delta(json!({ "type": "input_json_delta", "partial_json": arguments })),
                );
            }
        }
        if let Some(reason) = choice.finish_reason.as_deref() {
            self.stop_reason = Some(stop_reason(reason));
        }
        out
    }

    /// The closing events, once the chunk stream ended cleanly.
    pub fn finish(&mut self) -> Vec<RawEvent> {
        let mut out = Vec::new();
        if !self.started {
            self.start(&ChatChunk::default(), &mut out);
        }
        self.close_block(&mut out);
        let usage = self.usage.clone().unwrap_or_default();
        out.push(raw(
            "message_delta",
            json!({
                "type": "message_delta",
                "delta": { "stop_reason": self.stop_reason.unwrap_or("end_turn"), "stop_sequence": null },
                "usage": usage.to_value(),
            }),
        ));
        out.push(raw("message_stop", json!({ "type": "message_stop" })));
        out
    }
}

/// An OpenAI chunk stream as an Anthropic event stream. An error item of
/// the chunk stream is passed through (the caller renders it as an
/// Anthropic `error` event) and ends the stream.
pub fn chat_stream_to_anthropic(stream: ChatStream, model: impl Into<String>) -> RawEventStream {
    Box::pin(ChunksAsEvents {
        stream,
        translator: ChunksToAnthropic::new(model),
        pending: VecDeque::new(),
        done: false,
    })
}

/// [`chat_stream_to_anthropic`]'s stream, polled directly.
struct ChunksAsEvents {
    stream: ChatStream,
    translator: ChunksToAnthropic,
    pending: VecDeque<RawEvent>,
    done: bool,
}

impl Stream for ChunksAsEvents {
    type Item = std::result::Result<RawEvent, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(event) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(event)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match ready!(this.stream.as_mut().poll_next(cx)) {
                Some(Ok(chunk)) => this.pending.extend(this.translator.on_chunk(&chunk)),
                Some(Err(error)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(error)));
                }
                None => {
                    this.done = true;
                    this.pending.extend(this.translator.finish());
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Native pass-through stream
// ---------------------------------------------------------------------------

/// Native Anthropic events, passed through as they come, with the
/// completeness rule and [`RawTimer`]'s timeouts; polled directly, so an
/// event moves no future and arms no timer on its way.
struct RawReader {
    events: ResponseEvents,
    timer: RawTimer,
    provider: String,
    secret: Option<Secret>,
    chunks: u64,
    finished: bool,
    done: bool,
}

impl RawReader {
    fn new(events: ResponseEvents, timed: &CallContext, http: &Upstream) -> Self {
        Self {
            events,
            timer: RawTimer::new(timed),
            provider: http.provider_id().to_owned(),
            secret: http.secret().cloned(),
            chunks: 0,
            finished: false,
            done: false,
        }
    }

    fn cut(&mut self) -> Option<std::result::Result<RawEvent, ProviderError>> {
        self.done = true;
        (!self.finished).then_some(Err(ProviderError::StreamCut {
            chunks: self.chunks,
        }))
    }

    /// What the client gets of one event: `None` to skip a malformed one.
    fn read(&mut self, event: SseEvent) -> Option<std::result::Result<RawEvent, ProviderError>> {
        let Some(facts) = EventFacts::read(&event.data) else {
            self.timer.event();
            count_malformed(&self.provider);
            return None;
        };
        let name = event.event.as_deref().or(facts.kind.as_deref());
        match name.unwrap_or_default() {
            "error" => {
                self.done = true;
                let data = serde_json::from_str::<Value>(&event.data).unwrap_or_default();
                return Some(Err(in_band_error(&data, self.secret.as_ref())));
            }
            "content_block_delta" | "content_block_start" => self.timer.content(),
            "message_delta" if facts.stops => {
                self.finished = true;
                self.timer.finished();
            }
            "message_stop" if !self.finished => return self.cut(),
            // The end of input that follows is the end of the stream.
            "message_stop" => self.events.end_after_drain(DRAIN_LIMIT),
            _ => {}
        }
        self.timer.event();
        self.chunks += 1;
        Some(Ok(RawEvent {
            event: event.event,
            data: event.data,
        }))
    }
}

impl Stream for RawReader {
    type Item = std::result::Result<RawEvent, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let event = match this.events.poll_next_event(cx) {
                // After `message_stop` only the drain's own limit applies.
                Poll::Pending if this.events.is_draining() => return Poll::Pending,
                Poll::Pending => {
                    let expired = ready!(this.timer.poll_expired(cx));
                    this.done = true;
                    return Poll::Ready(match expired {
                        Expired::Finalise => None,
                        Expired::Error(error) => Some(Err(error)),
                    });
                }
                Poll::Ready(None) => return Poll::Ready(this.cut()),
                Poll::Ready(Some(Err(error))) => {
                    this.done = true;
                    if this.finished {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(source_failure(error, this.chunks))));
                }
                Poll::Ready(Some(Ok(event))) => event,
            };
            if let Some(item) = this.read(event) {
                return Poll::Ready(Some(item));
            }
        }
    }
}

/// What the pass-through reads of an event: its `type`, and whether it
/// carries a stop reason (`delta.stop_reason`, not null).
struct EventFacts<'a> {
    kind: Option<std::borrow::Cow<'a, str>>,
    stops: bool,
}

impl<'a> EventFacts<'a> {
    /// `None` when `data` is not JSON. The events Anthropic sends are read
    /// without building a `Value` (one allocation per field, most of the
    /// cost of an event); anything else valid is read as a `Value`.
    fn read(data: &'a str) -> Option<Self> {
        #[derive(serde::Deserialize)]
        struct Delta {
            #[serde(default)]
            stop_reason: Option<serde::de::IgnoredAny>,
        }
        #[derive(serde::Deserialize)]
        struct Event<'a> {
            #[serde(rename = "type", borrow, default)]
            kind: Option<std::borrow::Cow<'a, str>>,
            #[serde(default)]
            delta: Option<Delta>,
        }
        // Only objects: a derived struct would also take `["message_stop"]`
        // as one, by position.
        if data.trim_start().starts_with('{') {
            if let Ok(event) = serde_json::from_str::<Event<'a>>(data) {
                return Some(Self {
                    kind: event.kind,
                    stops: event.delta.is_some_and(|d| d.stop_reason.is_some()),
                });
            }
        }
        let value = serde_json::from_str::<Value>(data).ok()?;
        Some(Self {
            kind: value
                .get("type")
                .and_then(Value::as_str)
                .map(|kind| std::borrow::Cow::Owned(kind.to_owned())),
            stops: value
                .get("delta")
                .and_then(|d| d.get("stop_reason"))
                .is_some_and(|r| !r.is_null()),
        })
    }
}

// ---------------------------------------------------------------------------
// The adapter
// ---------------------------------------------------------------------------

/// An Anthropic Messages upstream.
pub struct AnthropicProvider {
    http: Upstream,
    health: HealthCheckMode,
    models: BTreeMap<String, ModelConfig>,
}

impl fmt::Debug for AnthropicProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicProvider")
            .field("http", &self.http)
            .field("health", &self.health)
            .field("models", &self.models.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl AnthropicProvider {
    /// An adapter over `http` (which must send `x-api-key` and
    /// `anthropic-version`); `models` gives `max_output_tokens` defaults.
    pub fn new(
        http: Upstream,
        health: HealthCheckMode,
        models: BTreeMap<String, ModelConfig>,
    ) -> Self {
        Self {
            http,
            health,
            models,
        }
    }

    /// The output limit when the request sets none: the model entry's
    /// `max_output_tokens` (matched by upstream name or key), else 4096.
    pub fn default_max_tokens(&self, upstream_model: &str) -> u32 {
        self.models
            .iter()
            .find(|(_, m)| m.upstream_name.as_deref() == Some(upstream_model))
            .or_else(|| self.models.get_key_value(upstream_model))
            .and_then(|(_, m)| m.max_output_tokens)
            .unwrap_or(DEFAULT_MAX_TOKENS)
    }

    fn body(value: &Value) -> std::result::Result<Vec<u8>, ProviderError> {
        serde_json::to_vec(value).map_err(|e| ProviderError::Protocol {
            message: format!("cannot serialise the request: {e}"),
        })
    }

    async fn open_events(
        &self,
        body: &Value,
        ctx: &CallContext,
    ) -> std::result::Result<(crate::client::UpstreamResponse, CallContext), ProviderError> {
        let builder = self
            .http
            .post_json("/messages", Self::body(body)?, ctx)
            .header(
                ::http::header::ACCEPT,
                ::http::HeaderValue::from_static("text/event-stream"),
            );
        open_stream(&self.http, builder, ctx).await
    }
}

#[async_trait]
impl Provider for AnthropicProvider {
    fn kind(&self) -> &str {
        "anthropic"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            chat: true,
            chat_stream: true,
            embeddings: false,
            completions: false,
            models: true,
            anthropic_native: true,
        }
    }

    fn times_streams(&self) -> bool {
        // `chat_stream` (the default `chat_stream_json` goes through it)
        // wraps the translated chunks in `TimedStream`.
        true
    }

    async fn chat(
        &self,
        mut request: ChatRequest,
        ctx: &CallContext,
    ) -> std::result::Result<ChatResponse, ProviderError> {
        request.stream = false;
        let body = chat_request_to_anthropic(&request, self.default_max_tokens(&request.model))
            .map_err(TranslationError::into_provider_error)?;
        let value = self.messages(body, ctx).await?;
        anthropic_response_to_chat(&value).map_err(|e| ProviderError::Protocol {
            message: format!("unexpected Messages response: {e}"),
        })
    }

    async fn chat_stream(
        &self,
        mut request: ChatRequest,
        ctx: &CallContext,
    ) -> std::result::Result<ChatStream, ProviderError> {
        request.stream = true;
        let body = chat_request_to_anthropic(&request, self.default_max_tokens(&request.model))
            .map_err(TranslationError::into_provider_error)?;
        let (response, timed) = self.open_events(&body, ctx).await?;
        let stream: ChatStream = Box::pin(AnthropicChunkReader {
            events: response_events(response),
            translator: AnthropicToChunks::new(),
            texts: TextChunks::default(),
            pending: VecDeque::new(),
            provider: self.http.provider_id().to_owned(),
            secret: self.http.secret().cloned(),
            chunks: 0,
            usage_sent: false,
            done: false,
        });
        Ok(TimedStream::boxed(stream, &timed))
    }

    async fn messages(
        &self,
        mut body: Value,
        ctx: &CallContext,
    ) -> std::result::Result<Value, ProviderError> {
        // Untouched, except that a non-stream call cannot ask for a stream.
        if let Some(object) = body.as_object_mut() {
            if object.get("stream") == Some(&Value::Bool(true)) {
                object.remove("stream");
            }
        }
        let request = self.http.post_json("/messages", Self::body(&body)?, ctx);
        let bytes = self
            .http
            .send_and_read(request, ctx, ctx.response_timeout, TimeoutPhase::Response)
            .await?;
        let value: Value = parse_json(&bytes, "Messages response")?;
        if value.get("type").and_then(Value::as_str) == Some("error") {
            return Err(match in_band_error(&value, self.http.secret()) {
                ProviderError::InBand(e) => ProviderError::Upstream(e),
                other => other,
            });
        }
        Ok(value)
    }

    async fn messages_stream(
        &self,
        mut body: Value,
        ctx: &CallContext,
    ) -> std::result::Result<RawEventStream, ProviderError> {
        if let Some(object) = body.as_object_mut() {
            object.insert("stream".into(), Value::Bool(true));
        }
        let (response, timed) = self.open_events(&body, ctx).await?;
        Ok(Box::pin(RawReader::new(
            response_events(response),
            &timed,
            &self.http,
        )))
    }

    async fn list_models(
        &self,
        ctx: &CallContext,
    ) -> std::result::Result<Vec<ModelInfo>, ProviderError> {
        let request = self
            .http
            .request(::http::Method::GET, "/models?limit=1000", ctx);
        let bytes = self
            .http
            .send_and_read(request, ctx, ctx.response_timeout, TimeoutPhase::Response)
            .await?;
        let list: Value = parse_json(&bytes, "model list")?;
        Ok(list
            .get("data")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|m| {
                        let id = m.get("id")?.as_str()?;
                        let created = m
                            .get("created_at")
                            .and_then(Value::as_str)
                            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                            .map_or(0, |d| d.as_secs());
                        Some(ModelInfo {
                            id: id.to_owned(),
                            object: "model".to_owned(),
                            created,
                            owned_by: "anthropic".to_owned(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn health_check(&self, ctx: &CallContext) -> std::result::Result<(), ProviderError> {
        match &self.health {
            HealthCheckMode::Named(switchyard_core::config::NamedHealthCheck::Models) => {
                self.list_models(ctx).await.map(|_| ())
            }
            other => health_check(&self.http, other, ctx, "anthropic").await,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn facts(data: &str) -> Option<(Option<String>, bool)> {
        EventFacts::read(data).map(|f| (f.kind.map(|k| k.into_owned()), f.stops))
    }

    #[test]
    fn text_chunks_are_the_bytes_the_translators_chunks_serialise_to() {
        let start = |id: &str, model: &str| json!({"type": "message_start", "message": {"id": id, "model": model, "usage": {"input_tokens": 3, "output_tokens": 1}}});
        let mut translator = AnthropicToChunks::new();
        let mut texts = TextChunks::default();
        // A new message starts a new frame; an id with an escape is not
        // of the usual shape, so its chunks are built and serialised.
        for (id, model, usual_id) in [
            ("msg_1", "claude-x", true),
            ("msg_\"2\"", "claude-y", false),
            ("msg_3", "claude-z", true),
        ] {
            translator.on_event("message_start", &start(id, model));
            texts.restart();
            for (text, plain) in [
                ("Hello", true),
                ("", true),
                ("é ✓ more", true),
                // Escaped text is not of the usual shape: built and
                // serialised as before.
                ("say \"hi\"\n", false),
                // Put between the quotes unescaped, this would be JSON
                // with another member: it must be escaped.
                (r#"a","role":"assistant"#, false),
            ] {
                let chunk = texts.chunk(&translator, text);
                let expected = translator.text(text);
                let serialised = serde_json::to_vec(&expected).unwrap();
                let as_bytes = usual_id && plain;
                assert_eq!(chunk.is_unparsed(), as_bytes, "{id} {text:?}");
                if as_bytes {
                    assert_eq!(chunk.source(), Some(serialised.as_slice()), "{text:?}");
                    assert_eq!(chunk.text_ref(), text);
                    assert_eq!(chunk.has_content(), !text.is_empty());
                    assert_eq!(chunk.model(), model);
                    assert_eq!(chunk.finish_reason(), None);
                }
                assert_eq!(chunk, StreamChunk::from(expected), "{text:?}");
            }
        }
    }

    #[test]
    fn text_deltas_read_without_a_value_give_the_translators_chunk() {
        let event = |name: Option<&str>, data: &str| SseEvent {
            event: name.map(str::to_owned),
            data: data.to_owned().into(),
        };
        let text = r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi \"there\"\n"}}"#;
        let untyped = r#"{"index":0,"delta":{"type":"text_delta","text":"x"}}"#;
        for (event, read) in [
            (event(Some("content_block_delta"), text), true),
            (event(None, text), true),
            // Named by its SSE event; without a name or a type, no delta.
            (event(Some("content_block_delta"), untyped), true),
            (event(None, untyped), false),
            // Another SSE name wins over the type.
            (event(Some("message_delta"), text), false),
            // A thinking delta, a text that is not a string, no text.
            (
                event(
                    None,
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hm"}}"#,
                ),
                false,
            ),
            (
                event(
                    None,
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":7}}"#,
                ),
                false,
            ),
            (
                event(
                    None,
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta"}}"#,
                ),
                false,
            ),
        ] {
            let fast = text_delta(&event);
            assert_eq!(fast.is_some(), read, "{event:?}");
            if let Some(fast) = fast {
                let value: Value = serde_json::from_str(&event.data).unwrap();
                let name = event
                    .event
                    .clone()
                    .or_else(|| value.get("type").and_then(Value::as_str).map(str::to_owned))
                    .unwrap_or_default();
                let mut translator = AnthropicToChunks::new();
                let general = translator.on_event(&name, &value);
                assert_eq!(general, vec![translator.text(&fast)], "{event:?}");
            }
        }
    }

    #[test]
    fn event_facts_read_the_type_and_the_stop_reason() {
        let kind = |k: &str| Some(k.to_owned());
        assert_eq!(
            facts(
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi \"there\""}}"#
            ),
            Some((kind("content_block_delta"), false))
        );
        assert_eq!(
            facts(
                r#"{"type":"message_delta","delta":{"stop_reason":null,"stop_sequence":null},"usage":{"output_tokens":3}}"#
            ),
            Some((kind("message_delta"), false))
        );
        assert_eq!(
            facts(
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":3}}"#
            ),
            Some((kind("message_delta"), true))
        );
        // An escaped type is still read.
        assert_eq!(
            facts(r#"{"type":"pi\u006eg"}"#),
            Some((kind("ping"), false))
        );
        // Shapes the typed read refuses fall back to a `Value`: still JSON.
        assert_eq!(facts(r#"{"type":5,"delta":"x"}"#), Some((None, false)));
        assert_eq!(facts(r#"["message_stop"]"#), Some((None, false)));
        assert_eq!(
            facts(r#"{"delta":{"stop_reason":{"odd":true}}}"#),
            Some((None, true))
        );
        // Not JSON at all.
        assert_eq!(facts(r#"{"type":"ping""#), None);
        assert_eq!(facts("ping"), None);
    }

    #[test]
    fn reasoning_under_either_name_becomes_thinking() {
        for key in ["reasoning_content", "reasoning"] {
            let response: ChatResponse = serde_json::from_value(json!({
                "id": "c1", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "4", key: "2 and 2"}}]
            }))
            .unwrap();
            let message = chat_response_to_anthropic(&response);
            assert_eq!(
                message["content"][0],
                json!({"type": "thinking", "thinking": "2 and 2", "signature": ""}),
                "{key}"
            );
            assert_eq!(message["content"][1], json!({"type": "text", "text": "4"}));

            let chunk: ChatChunk = serde_json::from_value(json!({
                "id": "c1", "model": "m",
                "choices": [{"index": 0, "delta": {key: "2 and 2"}, "finish_reason": null}]
            }))
            .unwrap();
            let mut to_events = ChunksToAnthropic::new("m");
            let events = to_events.on_chunk(&chunk);
            let thinking = events
                .iter()
                .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok())
                .find(|data| data["delta"]["type"] == "thinking_delta");
            assert_eq!(
                thinking.map(|data| data["delta"]["thinking"].clone()),
                Some(json!("2 and 2")),
                "{key}"
            );
        }
    }
}
