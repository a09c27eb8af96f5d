//! Anthropic Messages wire vocabulary: event names, stop reasons, usage and error types.
//!
//! Request and response bodies stay `serde_json::Value` (Anthropic adds
//! block types often, and native pass-through must not lose any); this
//! module names the fields and maps the enumerations to OpenAI's.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchyard_core::Usage;

/// The API version sent as `anthropic-version`.
pub const API_VERSION: &str = "2023-06-01";

/// Default output limit when neither the request nor the model config sets one.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// OpenAI `finish_reason` → Anthropic `stop_reason`.
pub fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic's `usage` object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnthropicUsage {
    /// Input tokens not read from or written to the cache.
    #[serde(default)]
    pub input_tokens: u64,
    /// Output tokens.
    #[serde(default)]
    pub output_tokens: u64,
    /// Input tokens written to the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_tokens: Option<u64>,
    /// Input tokens read from the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// Reads a usage object leniently (absent fields are zero / none).
    pub fn from_value(value: Option<&Value>) -> Self {
        value
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }

    /// Updates from a later report (`message_delta` carries cumulative counts).
    pub fn merge(&mut self, later: &Value) {
        let get = |key: &str| later.get(key).and_then(Value::as_u64);
        if let Some(v) = get("input_tokens") {
            self.input_tokens = v;
        }
        if let Some(v) = get("output_tokens") {
            self.output_tokens = v;
        }
        if let Some(v) = get("cache_creation_input_tokens") {
            self.cache_creation_input_tokens = Some(v);
        }
        if let Some(v) = get("cache_read_input_tokens") {
            self.cache_read_input_tokens = Some(v);
        }
    }

    /// OpenAI usage: `prompt_tokens` counts every input token (cached or
    /// not), `prompt_tokens_details.cached_tokens` the cache reads; the
    /// Anthropic cache counts are kept as extra fields.
    pub fn to_openai(&self) -> Usage {
        let created = self.cache_creation_input_tokens.unwrap_or(0);
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let mut usage = Usage::new(self.input_tokens + created + read, self.output_tokens);
        if let Some(read) = self.cache_read_input_tokens {
            usage.extra.insert(
                "prompt_tokens_details".into(),
                json!({ "cached_tokens": read }),
            );
            usage
                .extra
                .insert("cache_read_input_tokens".into(), json!(read));
        }
        if let Some(created) = self.cache_creation_input_tokens {
            usage
                .extra
                .insert("cache_creation_input_tokens".into(), json!(created));
        }
        usage
    }

    /// The inverse of [`Self::to_openai`].
    pub fn from_openai(usage: &Usage) -> Self {
        let extra_u64 = |key: &str| usage.extra.get(key).and_then(Value::as_u64);
        let read = extra_u64("cache_read_input_tokens")
            .or_else(|| Some(usage.cached_prompt_tokens()).filter(|&n| n > 0));
        let created = extra_u64("cache_creation_input_tokens");
        let cached = read.unwrap_or(0) + created.unwrap_or(0);
        Self {
            input_tokens: usage.prompt_tokens.saturating_sub(cached),
            output_tokens: usage.completion_tokens,
            cache_creation_input_tokens: created,
            cache_read_input_tokens: read,
        }
    }

    /// As JSON, with the cache fields only when known.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| json!({}))
    }
}

/// Anthropic's error `type` for an HTTP status (for error bodies and events
/// the gateway writes in the Anthropic shape).
pub fn error_type_for_status(status: u16) -> &'static str {
    match status {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 | 503 => "overloaded_error",
        _ => "api_error",
    }
}

/// An Anthropic error body: `{"type": "error", "error": {"type", "message"}}`.
pub fn error_body(status: u16, message: &str) -> Value {
    json!({
        "type": "error",
        "error": { "type": error_type_for_status(status), "message": message }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_converts_both_ways_with_cache_tokens() {
        let usage = AnthropicUsage {
            input_tokens: 10,
            output_tokens: 7,
            cache_creation_input_tokens: Some(3),
            cache_read_input_tokens: Some(20),
        };
        let openai = usage.to_openai();
        assert_eq!(openai.prompt_tokens, 33);
        assert_eq!(openai.total_tokens, 40);
        assert_eq!(openai.cached_prompt_tokens(), 20);
        assert_eq!(AnthropicUsage::from_openai(&openai), usage);
    }

    #[test]
    fn stop_reasons_map_both_ways() {
        for reason in ["end_turn", "max_tokens", "tool_use", "refusal"] {
            assert_eq!(stop_reason(finish_reason(reason)), reason);
        }
        assert_eq!(finish_reason("stop_sequence"), "stop");
    }
}
