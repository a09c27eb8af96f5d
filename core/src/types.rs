//! Vendor-neutral request and response types: the OpenAI chat shape, open at the edges.
//!
//! Every struct keeps the fields the gateway reads as typed fields and
//! everything else in a flattened `extra` map, so unknown and future fields
//! pass through untouched in both directions.

use std::fmt;
use std::pin::Pin;

use bytestring::ByteString;
use futures_core::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ProviderError;

/// A JSON object of fields the gateway does not interpret.
pub type Extra = Map<String, Value>;

/// The non-empty reasoning text among a message's or delta's other
/// fields. Servers name it two ways: `reasoning_content` (DeepSeek, vLLM
/// before 0.10, LM Studio) and `reasoning` (OpenRouter, Groq, Ollama,
/// newer vLLM).
pub fn reasoning_text(extra: &Extra) -> Option<&str> {
    ["reasoning_content", "reasoning"].iter().find_map(|key| {
        extra
            .get(*key)
            .and_then(Value::as_str)
            .filter(|text| !text.is_empty())
    })
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// The kinds of request a deployment can serve (SPEC §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum RequestType {
    /// `/v1/chat/completions` (and `/v1/messages`).
    Chat,
    /// `/v1/embeddings`.
    Embeddings,
    /// `/v1/completions` (legacy).
    Completions,
}

impl RequestType {
    /// Every request type, in a fixed order.
    pub const ALL: [RequestType; 3] = [Self::Chat, Self::Embeddings, Self::Completions];

    /// The snake_case name used in config and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Embeddings => "embeddings",
            Self::Completions => "completions",
        }
    }

    pub(crate) fn bit(self) -> u8 {
        match self {
            Self::Chat => 1,
            Self::Embeddings => 2,
            Self::Completions => 4,
        }
    }
}

impl fmt::Display for RequestType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `stream_options` of an OpenAI request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Ask for a final usage chunk.
    #[serde(default, skip_serializing_if = "is_false")]
    pub include_usage: bool,
    /// Anything else.
    #[serde(flatten)]
    pub extra: Extra,
}

/// An OpenAI chat completion request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model the client asked for; rewritten to the upstream name per attempt.
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Whether the client wants server-sent events.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stream: bool,
    /// Output limit (older name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Output limit (newer name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Streaming options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Stop sequence(s): a string or an array of strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Value>,
    /// Tool definitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    /// `"auto" | "none" | "required" | {"type":"function","function":{"name":..}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    /// Every other field, passed through untouched.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ChatRequest {
    /// The output limit the client asked for, under either name.
    pub fn output_limit(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// `metadata.region`, if the client set one (SPEC §4.1).
    pub fn metadata_region(&self) -> Option<&str> {
        self.extra.get("metadata")?.get("region")?.as_str()
    }

    /// A cheap estimate of prompt tokens (about four bytes a token), used
    /// before the call for context checks, cost ranking and TPM limits.
    pub fn estimated_prompt_tokens(&self) -> u32 {
        let bytes: usize = self
            .messages
            .iter()
            .map(|m| {
                m.content
                    .as_ref()
                    .map_or(0, MessageContent::approximate_len)
                    + 4
            })
            .sum();
        u32::try_from(bytes / 4 + 1).unwrap_or(u32::MAX)
    }
}

/// One message of a conversation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system | developer | user | assistant | tool`.
    pub role: String,
    /// Text or content parts; absent on some assistant tool-call messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<MessageContent>,
    /// Optional participant name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tool calls made by the assistant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// For `role = "tool"`: the call this answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ChatMessage {
    /// A message with plain text content.
    pub fn text(role: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: Some(MessageContent::Text(text.into())),
            ..Self::default()
        }
    }

    /// The text of this message when it is plain text or text parts only.
    pub fn text_content(&self) -> Option<String> {
        match self.content.as_ref()? {
            MessageContent::Text(text) => Some(text.clone()),
            MessageContent::Parts(parts) => Some(
                parts
                    .iter()
                    .filter_map(|p| p.text.as_deref())
                    .collect::<Vec<_>>()
                    .join(""),
            ),
        }
    }
}

/// Message content: a string or a list of typed parts.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Multi-part content (text, images, audio ...).
    Parts(Vec<ContentPart>),
}

/// By the JSON type seen, not `#[serde(untagged)]`: that buffers the
/// value (every part of a multi-part message, images included) into an
/// intermediate tree and deserializes it again, and its error names no
/// expected type.
impl<'de> Deserialize<'de> for MessageContent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ContentVisitor;
        impl<'de> serde::de::Visitor<'de> for ContentVisitor {
            type Value = MessageContent;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of content parts")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(MessageContent::Text(text.to_owned()))
            }

            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Self::Value, E> {
                Ok(MessageContent::Text(text))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                parts: A,
            ) -> Result<Self::Value, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(parts))
                    .map(MessageContent::Parts)
            }
        }
        deserializer.deserialize_any(ContentVisitor)
    }
}

impl MessageContent {
    fn approximate_len(&self) -> usize {
        match self {
            Self::Text(text) => text.len(),
            Self::Parts(parts) => parts
                .iter()
                .map(|p| p.text.as_ref().map_or(256, String::len))
                .sum(),
        }
    }
}

/// One part of multi-part content.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ContentPart {
    /// `text | image_url | input_audio | ...`.
    #[serde(rename = "type")]
    pub kind: String,
    /// For text parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// For image parts: `{"url": ..., "detail": ...}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<Value>,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A tool the model may call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// Always `function` today.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function.
    pub function: FunctionDefinition,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A callable function's schema.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionDefinition {
    /// Function name.
    pub name: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON schema of the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Every other field (e.g. `strict`).
    #[serde(flatten)]
    pub extra: Extra,
}

/// A complete tool call in a response or a conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Call id.
    pub id: String,
    /// Always `function` today.
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    /// Name and JSON-encoded arguments.
    pub function: FunctionCall,
}

fn function_kind() -> String {
    "function".to_owned()
}

/// The function part of a tool call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// Function name.
    pub name: String,
    /// Arguments as a JSON string.
    #[serde(default)]
    pub arguments: String,
}

/// Token usage.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Usage {
    /// Input tokens.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Output tokens.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Sum of both.
    #[serde(default)]
    pub total_tokens: u64,
    /// Every other field (`prompt_tokens_details.cached_tokens`, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

impl Usage {
    /// Usage from input and output counts.
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            extra: Extra::new(),
        }
    }

    /// Adds another attempt's usage (a resumed stream's usage is the sum).
    pub fn accumulate(&mut self, other: &Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
    }

    /// Prompt tokens served from the provider's cache, when reported.
    pub fn cached_prompt_tokens(&self) -> u64 {
        self.extra
            .get("prompt_tokens_details")
            .and_then(|d| d.get("cached_tokens"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }
}

/// A non-streaming chat completion.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// Completion id.
    #[serde(default)]
    pub id: String,
    /// `chat.completion`.
    #[serde(default = "chat_completion_object")]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// The model that answered (the client-facing name after the gateway).
    #[serde(default)]
    pub model: String,
    /// Choices.
    #[serde(default)]
    pub choices: Vec<ChatChoice>,
    /// Usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Extra,
}

fn chat_completion_object() -> String {
    "chat.completion".to_owned()
}

fn chat_chunk_object() -> String {
    "chat.completion.chunk".to_owned()
}

/// The default `object` of a chunk that named none, set after the parse
/// so a chunk that does name one (every chunk) allocates it once.
fn fill_chunk_object(chunk: &mut ChatChunk) {
    if chunk.object.is_empty() {
        chunk.object = chat_chunk_object();
    }
}

/// One choice of a chat completion.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    /// Choice index.
    #[serde(default)]
    pub index: u32,
    /// The assistant message.
    pub message: ChatMessage,
    /// `stop | length | tool_calls | content_filter | ...`.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Log probabilities when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Value>,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A map key, borrowed from the input when it has no escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> serde::de::Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// `Deserialize` for a chunk type whose fields all have defaults and whose
/// other fields go to `extra`, as `#[serde(flatten)]` would, but without
/// it: flatten buffers every field of the object before reading any, and
/// chunks are parsed once per streamed token (three nested levels of it
/// were most of a stream's parsing cost).
macro_rules! deserialize_with_extra {
    ($ty:ident, $expecting:literal, $init:expr, { $($name:literal => $field:ident $(then $after:path)?),* $(,)? } $(, then $finish:path)?) => {
        impl $ty {
            /// Sets the fields `map` names on `out` (a default value).
            fn fill_from_map<'de, A: serde::de::MapAccess<'de>>(
                out: &mut $ty,
                mut map: A,
            ) -> Result<(), A::Error> {
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    match key.as_ref() {
                        $($name => {
                            out.$field = map.next_value()?;
                            $($after(out);)?
                        })*
                        _ => {
                            let value: Value = map.next_value()?;
                            out.extra.insert(key.into_owned(), value);
                        }
                    }
                }
                $($finish(out);)?
                Ok(())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct FieldsVisitor;
                impl<'de> serde::de::Visitor<'de> for FieldsVisitor {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        map: A,
                    ) -> Result<$ty, A::Error> {
                        let mut out: $ty = $init;
                        <$ty>::fill_from_map(&mut out, map)?;
                        Ok(out)
                    }
                }
                deserializer.deserialize_map(FieldsVisitor)
            }
        }
    };
}

deserialize_with_extra!(
    Usage,
    "token usage",
    Usage::default(),
    {
        "prompt_tokens" => prompt_tokens,
        "completion_tokens" => completion_tokens,
        "total_tokens" => total_tokens,
    }
);

/// One streamed chunk of a chat completion.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ChatChunk {
    /// Completion id.
    #[serde(default)]
    pub id: String,
    /// `chat.completion.chunk`.
    #[serde(default = "chat_chunk_object")]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// The model that answered.
    #[serde(default)]
    pub model: String,
    /// Choice deltas (empty on the final usage chunk).
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    /// Usage, on the final chunk when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Extra,
    /// The event data this chunk was parsed from, when it is exactly that
    /// (adapters set it). Whoever changes a field of the chunk must
    /// [`clear`](ChunkSource::clear) it; a writer may then send these bytes
    /// instead of serialising the chunk again.
    #[serde(skip)]
    pub source: ChunkSource,
}

/// The upstream bytes of a [`ChatChunk`]. It plays no part in equality:
/// two chunks with the same fields are equal wherever they came from.
#[derive(Clone, Default)]
pub struct ChunkSource {
    data: Option<bytes::Bytes>,
    /// The parse met a top-level `"usage": null`.
    null_usage: bool,
}

impl ChunkSource {
    /// The data of the event the chunk was parsed from. Writers take it
    /// at its word: a chunk whose data has a top-level `usage` member must
    /// say so through its fields, as a chunk deserialised from that data
    /// does (a `usage` object in [`ChatChunk::usage`], a null one in
    /// [`has_null_usage`](Self::has_null_usage), which only
    /// deserialisation sets); else clear the source.
    pub fn new(data: bytes::Bytes) -> Self {
        Self {
            data: Some(data),
            null_usage: false,
        }
    }

    /// Attaches the data the chunk was just parsed from, keeping what the
    /// parse noted about it.
    pub fn attach(&mut self, data: bytes::Bytes) {
        self.data = Some(data);
    }

    /// The bytes, while the chunk is unchanged.
    pub fn bytes(&self) -> Option<&bytes::Bytes> {
        self.data.as_ref()
    }

    /// Whether the chunk was parsed from an object with a top-level
    /// `usage` member whose value is `null` (OpenAI sends one on every
    /// chunk but the last once asked for usage).
    pub fn has_null_usage(&self) -> bool {
        self.null_usage
    }

    /// Forgets the bytes: the chunk no longer matches them.
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

impl PartialEq for ChunkSource {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl fmt::Debug for ChunkSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.data {
            Some(bytes) => write!(f, "ChunkSource({} bytes)", bytes.len()),
            None => f.write_str("ChunkSource(none)"),
        }
    }
}

impl ChatChunk {
    /// Whether this chunk carries text, reasoning or a tool-call delta: the
    /// point after which a stream can no longer fail over invisibly.
    pub fn has_content(&self) -> bool {
        self.choices.iter().any(|c| {
            c.delta.content.as_deref().is_some_and(|t| !t.is_empty())
                || c.delta.tool_calls.as_ref().is_some_and(|t| !t.is_empty())
                || reasoning_text(&c.delta.extra).is_some()
        })
    }

    /// Whether any choice carries a tool-call delta.
    pub fn has_tool_calls(&self) -> bool {
        self.choices
            .iter()
            .any(|c| c.delta.tool_calls.as_ref().is_some_and(|t| !t.is_empty()))
    }

    /// The first `finish_reason` in this chunk: the stream is complete.
    pub fn finish_reason(&self) -> Option<&str> {
        self.choices.iter().find_map(|c| c.finish_reason.as_deref())
    }

    /// The concatenated text deltas of this chunk.
    pub fn text(&self) -> String {
        self.choices
            .iter()
            .filter_map(|c| c.delta.content.as_deref())
            .collect()
    }

    /// [`text`](Self::text), borrowed from the chunk when it has at most
    /// one choice (nearly always): no allocation per streamed token.
    pub fn text_ref(&self) -> std::borrow::Cow<'_, str> {
        match self.choices.as_slice() {
            [] => std::borrow::Cow::Borrowed(""),
            [only] => std::borrow::Cow::Borrowed(only.delta.content.as_deref().unwrap_or("")),
            _ => std::borrow::Cow::Owned(self.text()),
        }
    }
}

deserialize_with_extra!(
    ChatChunk,
    "a chat completion chunk",
    ChatChunk::default(),
    {
        "id" => id,
        "object" => object,
        "created" => created,
        "model" => model,
        "choices" => choices,
        "usage" => usage then note_null_usage,
    },
    then fill_chunk_object
);

/// A [`ChatChunk`] parsed straight into the box a [`ChatStream`] carries
/// it in: parsed by value, the 224-byte chunk was copied about five times
/// on its way out of the parser and into its box.
#[derive(Debug)]
pub struct BoxedChatChunk(pub Box<ChatChunk>);

impl<'de> Deserialize<'de> for BoxedChatChunk {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BoxedVisitor;
        impl<'de> serde::de::Visitor<'de> for BoxedVisitor {
            type Value = BoxedChatChunk;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a chat completion chunk")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<BoxedChatChunk, A::Error> {
                let mut out = Box::<ChatChunk>::default();
                ChatChunk::fill_from_map(&mut out, map)?;
                Ok(BoxedChatChunk(out))
            }
        }
        deserializer.deserialize_map(BoxedVisitor)
    }
}

/// Run when a chunk names `usage`: a null one is noted in its source, so a
/// writer can cut the member out of the bytes (see [`ChunkSource::has_null_usage`]).
fn note_null_usage(chunk: &mut ChatChunk) {
    if chunk.usage.is_none() {
        chunk.source.null_usage = true;
    }
}

/// One choice of a streamed chunk.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ChunkChoice {
    /// Choice index.
    #[serde(default)]
    pub index: u32,
    /// What this chunk adds.
    #[serde(default)]
    pub delta: ChunkDelta,
    /// Set on the last content chunk of the choice.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Log probabilities when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Value>,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Extra,
}

deserialize_with_extra!(
    ChunkChoice,
    "a chunk choice",
    ChunkChoice::default(),
    {
        "index" => index,
        "delta" => delta,
        "finish_reason" => finish_reason,
        "logprobs" => logprobs,
    }
);

/// The incremental part of a chunk.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ChunkDelta {
    /// Set on the first chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// New text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Tool-call fragments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
    /// Every other field (`reasoning_content`, `refusal`, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

deserialize_with_extra!(
    ChunkDelta,
    "a chunk delta",
    ChunkDelta::default(),
    {
        "role" => role,
        "content" => content,
        "tool_calls" => tool_calls,
    }
);

/// A fragment of a tool call in a stream.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolCallDelta {
    /// Which tool call this fragment belongs to.
    #[serde(default)]
    pub index: u32,
    /// Call id, on the first fragment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function`, on the first fragment.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name and argument fragments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionCallDelta>,
}

/// Function fragment of a tool-call delta.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionCallDelta {
    /// Function name, on the first fragment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A piece of the JSON arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// A stream of chat chunks. It ends (`None`) only after a chunk carrying
/// `finish_reason`; a stream cut short yields an error item instead.
pub type ChatStream = Pin<Box<dyn Stream<Item = ChunkItem> + Send>>;

/// One item of a [`ChatStream`]. A parsed chunk in it is boxed: a chunk
/// passes through several streams (the adapter's parser, timing, the call
/// guard, resumption) to the writer, and each returned the 224-byte chunk
/// by value; boxed, each moves a pointer (the bench's stream of eight
/// chunks copied 47 kB instead of 61 kB).
pub type ChunkItem = Result<StreamChunk, ProviderError>;

pub use crate::chunk::{StreamChunk, UsualChunks};

/// One raw server-sent event, for native pass-through (Anthropic Messages).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawEvent {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` payload (multi-line data joined with `\n`).
    pub data: ByteString,
}

/// A stream of raw events. Like [`ChatStream`], it ends (`None`) only after
/// the protocol's completion marker (Anthropic: `message_delta` with a
/// `stop_reason`, then `message_stop`); a cut yields an error item.
pub type RawEventStream = Pin<Box<dyn Stream<Item = Result<RawEvent, ProviderError>> + Send>>;

/// An embeddings request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingsRequest {
    /// Requested model.
    pub model: String,
    /// A string, array of strings, or token arrays.
    pub input: Value,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Extra,
}

/// An embeddings response.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingsResponse {
    /// `list`.
    #[serde(default = "list_object")]
    pub object: String,
    /// One embedding object per input.
    #[serde(default)]
    pub data: Vec<Value>,
    /// The model that answered.
    #[serde(default)]
    pub model: String,
    /// Usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Extra,
}

fn list_object() -> String {
    "list".to_owned()
}

/// A legacy completions request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    /// Requested model.
    pub model: String,
    /// A string or array of prompts.
    #[serde(default)]
    pub prompt: Value,
    /// Output limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Whether the client wants server-sent events.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stream: bool,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A legacy completions response.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionResponse {
    /// Completion id.
    #[serde(default)]
    pub id: String,
    /// `text_completion`.
    #[serde(default = "text_completion_object")]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// The model that answered.
    #[serde(default)]
    pub model: String,
    /// Choices, each with `text`, `index`, `finish_reason`.
    #[serde(default)]
    pub choices: Vec<Value>,
    /// Usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Extra,
}

fn text_completion_object() -> String {
    "text_completion".to_owned()
}

/// One entry of a models list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Model id.
    pub id: String,
    /// `model`.
    #[serde(default = "model_object")]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// Owner.
    #[serde(default)]
    pub owned_by: String,
}

fn model_object() -> String {
    "model".to_owned()
}

impl ModelInfo {
    /// A model entry owned by `owned_by`.
    pub fn new(id: impl Into<String>, owned_by: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            object: model_object(),
            created: 0,
            owned_by: owned_by.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_content_is_text_or_parts_and_names_what_it_expected() {
        let message: ChatMessage = serde_json::from_str(
            r#"{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"},"x":1}]}"#,
        )
        .unwrap();
        let Some(MessageContent::Parts(parts)) = &message.content else {
            panic!("{message:?}");
        };
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].text.as_deref(), Some("hi"));
        assert_eq!(parts[1].kind, "image_url");
        assert_eq!(
            parts[1].image_url.as_ref().unwrap()["url"],
            "data:image/png;base64,AAAA"
        );
        assert_eq!(parts[1].extra["x"], 1);
        let text: ChatMessage =
            serde_json::from_str(r#"{"role":"user","content":"a \"quoted\" line"}"#).unwrap();
        assert_eq!(
            text.content,
            Some(MessageContent::Text("a \"quoted\" line".into()))
        );
        let null: ChatMessage =
            serde_json::from_str(r#"{"role":"assistant","content":null}"#).unwrap();
        assert_eq!(null.content, None);
        let error = serde_json::from_str::<ChatMessage>(r#"{"role":"user","content":5}"#)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("expected a string or an array of content parts"),
            "{error}"
        );
        // Through a `Value` too (the typed paths convert from one).
        let from_value: MessageContent = serde_json::from_value(serde_json::json!("hi")).unwrap();
        assert_eq!(from_value, MessageContent::Text("hi".into()));
        // And back out unchanged.
        let again: ChatMessage =
            serde_json::from_value(serde_json::to_value(&message).unwrap()).unwrap();
        assert_eq!(again, message);
    }

    #[test]
    fn chunks_keep_every_field_without_flatten() {
        let text = r#"{"id":"c1","model":"m","created":5,"system_fingerprint":"fp",
            "choices":[{"index":1,"delta":{"role":"assistant","con\u0074ent":"hi","reasoning_content":"r"},
            "finish_reason":null,"logprobs":null,"extra_choice":[1,2]}],"usage":null}"#;
        let chunk: ChatChunk = serde_json::from_str(text).unwrap();
        assert_eq!(chunk.object, "chat.completion.chunk");
        assert_eq!((chunk.id.as_str(), chunk.created), ("c1", 5));
        assert_eq!(chunk.extra["system_fingerprint"], "fp");
        let choice = &chunk.choices[0];
        assert_eq!(choice.index, 1);
        assert_eq!(choice.finish_reason, None);
        assert_eq!(choice.extra["extra_choice"], serde_json::json!([1, 2]));
        assert_eq!(choice.delta.content.as_deref(), Some("hi"));
        assert_eq!(choice.delta.extra["reasoning_content"], "r");
        // The same through a `Value`, and back out with nothing lost.
        let value: Value = serde_json::from_str(text).unwrap();
        let via_value: ChatChunk = serde_json::from_value(value).unwrap();
        assert_eq!(via_value, chunk);
        let again: ChatChunk =
            serde_json::from_str(&serde_json::to_string(&chunk).unwrap()).unwrap();
        assert_eq!(again, chunk);
        assert!(serde_json::from_str::<ChatChunk>(r#"{"choices":[{"delta":7}]}"#).is_err());
        assert!(serde_json::from_str::<ChatChunk>("[]").is_err());
    }

    #[test]
    fn chunk_text_is_borrowed_for_one_choice_and_joined_for_several() {
        let one: ChatChunk =
            serde_json::from_str(r#"{"choices":[{"index":0,"delta":{"content":"hi"}}]}"#).unwrap();
        assert!(matches!(one.text_ref(), std::borrow::Cow::Borrowed("hi")));
        let none: ChatChunk = serde_json::from_str(r#"{"choices":[]}"#).unwrap();
        assert_eq!(none.text_ref(), "");
        let two: ChatChunk = serde_json::from_str(
            r#"{"choices":[{"index":0,"delta":{"content":"a"}},{"index":1,"delta":{"content":"b"}}]}"#,
        )
        .unwrap();
        assert_eq!(two.text_ref(), "ab");
        assert_eq!(two.text_ref(), two.text());
    }

    #[test]
    fn unknown_fields_round_trip_untouched() {
        let raw = serde_json::json!({
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "hi", "x_custom": 1}],
            "seed": 7, "logprobs": true, "n": 2,
            "response_format": {"type": "json_object"},
            "future_field": {"a": [1, 2]}
        });
        let req: ChatRequest = serde_json::from_value(raw.clone()).unwrap();
        assert_eq!(req.extra["seed"], 7);
        assert_eq!(serde_json::to_value(&req).unwrap(), raw);
    }

    #[test]
    fn chunk_content_and_completion_are_detected() {
        let role_only: ChatChunk = serde_json::from_value(serde_json::json!({
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]
        }))
        .unwrap();
        assert!(!role_only.has_content());
        let text: ChatChunk = serde_json::from_value(serde_json::json!({
            "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": null}]
        }))
        .unwrap();
        assert!(text.has_content());
        assert_eq!(text.finish_reason(), None);
        let tool: ChatChunk = serde_json::from_value(serde_json::json!({
            "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c1",
                "type": "function", "function": {"name": "f", "arguments": ""}}]}}]
        }))
        .unwrap();
        assert!(tool.has_content() && tool.has_tool_calls());
        // Reasoning under either of its names is content; an empty or
        // non-string one is not.
        for (key, value, content) in [
            ("reasoning_content", serde_json::json!("Let me"), true),
            ("reasoning", serde_json::json!("Let me"), true),
            ("reasoning", serde_json::json!(""), false),
            ("reasoning", serde_json::json!(null), false),
            ("reasoning_details", serde_json::json!("Let me"), false),
        ] {
            let chunk: ChatChunk = serde_json::from_value(serde_json::json!({
                "choices": [{"index": 0, "delta": {key: value}}]
            }))
            .unwrap();
            assert_eq!(chunk.has_content(), content, "{key}: {value}");
        }
        let done: ChatChunk = serde_json::from_value(serde_json::json!({
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]
        }))
        .unwrap();
        assert_eq!(done.finish_reason(), Some("stop"));
    }

    #[test]
    fn usage_accumulates_and_reads_cache_tokens() {
        let mut total = Usage::new(10, 5);
        let mut cached = Usage::new(3, 2);
        cached.extra.insert(
            "prompt_tokens_details".into(),
            serde_json::json!({"cached_tokens": 2}),
        );
        total.accumulate(&cached);
        assert_eq!(
            (
                total.prompt_tokens,
                total.completion_tokens,
                total.total_tokens
            ),
            (13, 7, 20)
        );
        assert_eq!(cached.cached_prompt_tokens(), 2);
    }

    #[test]
    fn region_and_limits_are_read_from_the_request() {
        let req: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "m", "messages": [], "max_tokens": 10, "max_completion_tokens": 20,
            "metadata": {"region": "eu-west"}
        }))
        .unwrap();
        assert_eq!(req.output_limit(), Some(20));
        assert_eq!(req.metadata_region(), Some("eu-west"));
    }
}
