//! Serde wire types of the upstream APIs, kept apart from the adapters' logic.
//!
//! Only the shapes the adapters read are typed; bodies the gateway passes
//! through stay `serde_json::Value` so nothing unknown is lost.

pub mod anthropic;
pub mod openai;

use serde_json::Value;

/// An upstream error body, reduced to the fields every provider shares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorFields {
    /// `error.message` (or the closest thing the body has).
    pub message: String,
    /// `error.type`.
    pub error_type: Option<String>,
    /// `error.code` (numbers are rendered as text).
    pub code: Option<String>,
    /// `error.param`.
    pub param: Option<String>,
}

fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl ErrorFields {
    /// Reads an error from a parsed body. Understands the OpenAI and
    /// Anthropic shapes (`{"error": {"message", "type", "code", "param"}}`,
    /// with Anthropic's top-level `"type": "error"`), `{"error": "text"}`
    /// (Ollama), vLLM's flat `{"object": "error", "message", "type", "code"}`
    /// and FastAPI's `{"detail": ...}`.
    pub fn from_value(body: &Value) -> Option<Self> {
        let object = body.as_object()?;
        match object.get("error") {
            Some(Value::Object(error)) => {
                return Some(Self {
                    message: text(error.get("message")).unwrap_or_default(),
                    error_type: text(error.get("type")),
                    code: text(error.get("code")),
                    param: text(error.get("param")),
                });
            }
            Some(Value::String(message)) => {
                return Some(Self {
                    message: message.clone(),
                    error_type: text(object.get("type")).filter(|t| t != "error"),
                    code: text(object.get("code")),
                    param: None,
                });
            }
            _ => {}
        }
        if let Some(message) = text(object.get("message")) {
            return Some(Self {
                message,
                error_type: text(object.get("type")).filter(|t| t != "error"),
                code: text(object.get("code")),
                param: text(object.get("param")),
            });
        }
        match object.get("detail") {
            Some(Value::String(detail)) => Some(Self {
                message: detail.clone(),
                ..Self::default()
            }),
            Some(detail @ (Value::Array(_) | Value::Object(_))) => Some(Self {
                message: detail.to_string(),
                ..Self::default()
            }),
            _ => None,
        }
    }

    /// The same fields with `secret` redacted from each.
    pub fn redacted(self, secret: Option<&switchyard_core::Secret>) -> Self {
        let clean = |s: String| crate::http::redact(&s, secret);
        Self {
            message: clean(self.message),
            error_type: self.error_type.map(clean),
            code: self.code.map(clean),
            param: self.param.map(clean),
        }
    }

    /// Reads an error from raw body bytes; a body that is not a known error
    /// shape gives its text, cut to a few hundred characters.
    pub fn from_body(body: &[u8]) -> Self {
        if let Ok(value) = serde_json::from_slice::<Value>(body) {
            if let Some(fields) = Self::from_value(&value) {
                return fields;
            }
        }
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let mut message: String = text.chars().take(300).collect();
        if message.len() < text.len() {
            message.push('…');
        }
        Self {
            message,
            ..Self::default()
        }
    }
}

/// The HTTP status an error type implies when none was sent (in-band
/// stream errors): Anthropic's documented types, OpenAI's common ones.
pub fn status_for_error_type(error_type: Option<&str>, code: Option<&str>) -> u16 {
    if let Some(status) = code.and_then(|c| c.parse::<u16>().ok()) {
        if (400..=599).contains(&status) {
            return status;
        }
    }
    let mentions = |needle: &str| {
        error_type.is_some_and(|t| t.contains(needle)) || code.is_some_and(|c| c.contains(needle))
    };
    if mentions("overloaded") {
        529
    } else if mentions("rate_limit") {
        429
    } else if mentions("authentication") || mentions("invalid_api_key") {
        401
    } else if mentions("permission") {
        403
    } else if mentions("not_found") {
        404
    } else if mentions("request_too_large") {
        413
    } else if mentions("context_length")
        || mentions("content_filter")
        || mentions("content_policy")
        || mentions("invalid_request")
    {
        400
    } else if mentions("timeout") {
        504
    } else {
        500
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_known_error_shape_is_read() {
        let openai = json!({"error": {"message": "too long", "type": "invalid_request_error",
            "param": "messages", "code": "context_length_exceeded"}});
        assert_eq!(
            ErrorFields::from_value(&openai).unwrap(),
            ErrorFields {
                message: "too long".into(),
                error_type: Some("invalid_request_error".into()),
                code: Some("context_length_exceeded".into()),
                param: Some("messages".into()),
            }
        );
        let anthropic = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
        let fields = ErrorFields::from_value(&anthropic).unwrap();
        assert_eq!(fields.error_type.as_deref(), Some("overloaded_error"));
        let ollama = json!({"error": "model 'x' not found"});
        assert_eq!(
            ErrorFields::from_value(&ollama).unwrap().message,
            "model 'x' not found"
        );
        let vllm =
            json!({"object": "error", "message": "bad", "type": "BadRequestError", "code": 400});
        assert_eq!(
            ErrorFields::from_value(&vllm).unwrap().code.as_deref(),
            Some("400")
        );
        let fastapi = json!({"detail": "Not Found"});
        assert_eq!(
            ErrorFields::from_value(&fastapi).unwrap().message,
            "Not Found"
        );
        let html = ErrorFields::from_body(b"<html>bad gateway</html>");
        assert_eq!(html.message, "<html>bad gateway</html>");
    }

    #[test]
    fn in_band_types_imply_statuses() {
        assert_eq!(status_for_error_type(Some("overloaded_error"), None), 529);
        assert_eq!(status_for_error_type(Some("rate_limit_error"), None), 429);
        assert_eq!(status_for_error_type(Some("api_error"), None), 500);
        assert_eq!(
            status_for_error_type(
                Some("invalid_request_error"),
                Some("context_length_exceeded")
            ),
            400
        );
        assert_eq!(status_for_error_type(None, Some("503")), 503);
    }
}
