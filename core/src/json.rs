//! OpenAI-format JSON bodies forwarded as bytes: where the top-level `model` sits, and swapping it without re-serialising.
//!
//! A gateway mostly forwards bodies unchanged; only `model` differs (the
//! upstream's name going out, the client-facing name coming back).
//! Parsing a body into typed structs and serialising it again costs more
//! than the rest of the request path, so bodies that an adapter can take
//! as they are travel as [`Bytes`] and only the `model` string is spliced.

use std::ops::Range;
use std::sync::LazyLock;

use bytes::{BufMut, Bytes, BytesMut};
use memchr::memmem::Finder;
use serde::Deserialize;

use crate::types::Usage;

/// Parses JSON from bytes. `serde_json::from_slice` checks UTF-8 string by
/// string, which costs more than one check of the whole body when a body
/// has many short strings (keys included); invalid UTF-8 still goes
/// through `from_slice`, which reports where it is.
pub fn from_bytes<'a, T: Deserialize<'a>>(body: &'a [u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(body) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(body),
    }
}

/// The byte range of a JSON object's top-level `"model"` string value,
/// quotes included. `None` when the body is not an object, has no string
/// `model`, or the value has escapes (callers then re-serialise).
pub fn model_span(body: &[u8]) -> Option<Range<usize>> {
    #[derive(Deserialize)]
    struct Peek<'a> {
        #[serde(borrow, default)]
        model: Option<&'a str>,
    }
    let peek: Peek<'_> = from_bytes(body).ok()?;
    span_of(body, peek.model?)
}

/// [`model_span`] of a body already parsed, whose top-level `model` is
/// `model`. When the body names one `model` key and spells it and its
/// value without escapes (nearly always), a byte search finds it; else
/// the body is parsed again. Same answer as [`model_span`] either way;
/// on the bench's body, 0.5k instructions instead of 1.7k (callgrind).
pub fn parsed_model_span(body: &[u8], model: &str) -> Option<Range<usize>> {
    literal_model_span(body, model).or_else(|| model_span(body))
}

/// The byte search of [`parsed_model_span`], `None` unless unambiguous.
fn literal_model_span(body: &[u8], model: &str) -> Option<Range<usize>> {
    // Built once: building a searcher cost more than the search.
    static KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"model\""));
    let (_, start) = lone_key(body, &KEY)?;
    let end = start.checked_add(model.len())?.checked_add(2)?;
    let quoted = body.get(start..end)?;
    let spelled = quoted.first() == Some(&b'"')
        && quoted.last() == Some(&b'"')
        && quoted.get(1..quoted.len() - 1) == Some(model.as_bytes());
    spelled.then_some(start..end)
}

/// Where the one `key` (a searcher for the key with its quotes) of `body`
/// starts and where its value starts. It relies on `body` being valid
/// JSON: a key token followed by a colon is then a key, and without `\u`
/// escapes no other spelling of it exists. `None` when the body has such
/// escapes, the key more than once (nested objects), or a token that
/// could close a string (`\"key"`): callers then parse.
fn lone_key(body: &[u8], key: &Finder<'_>) -> Option<(usize, usize)> {
    static UNICODE_ESCAPE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\\u"));
    if UNICODE_ESCAPE.find(body).is_some() {
        return None;
    }
    let mut found = None;
    for at in key.find_iter(body) {
        if at > 0 && body.get(at - 1) == Some(&b'\\') {
            return None;
        }
        let colon = after_space(body, at + key.needle().len());
        if body.get(colon) != Some(&b':') {
            continue; // a string value that spells the key
        }
        if found.is_some() {
            return None;
        }
        found = Some((at, after_space(body, colon + 1)));
    }
    found
}

/// The first position from `at` that is not JSON whitespace.
fn after_space(body: &[u8], mut at: usize) -> usize {
    while body.get(at).is_some_and(u8::is_ascii_whitespace) {
        at += 1;
    }
    at
}

/// Where `value`, a string borrowed from `body`, sits in it (quotes included).
fn span_of(body: &[u8], value: &str) -> Option<Range<usize>> {
    let start = (value.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start.checked_add(value.len())?;
    let quoted = start.checked_sub(1)?..end.checked_add(1)?;
    let is_quote = |at: usize| body.get(at) == Some(&b'"');
    (is_quote(quoted.start) && is_quote(end)).then_some(quoted)
}

/// `body` with the string at `span` (see [`model_span`]) replaced by
/// `model`, JSON-escaped. Shares `body` when the name is already `model`.
pub fn with_model(body: &Bytes, span: &Range<usize>, model: &str) -> Bytes {
    let current = body
        .get(span.start + 1..span.end.saturating_sub(1))
        .unwrap_or_default();
    if current == model.as_bytes() {
        return body.clone();
    }
    let (Some(before), Some(after)) = (body.get(..span.start), body.get(span.end..)) else {
        return body.clone();
    };
    let mut out = BytesMut::with_capacity(body.len() + model.len() + 8);
    out.put_slice(before);
    out.put_slice(&quoted(model));
    out.put_slice(after);
    out.freeze()
}

/// `text` as a JSON string, quotes and escapes included: what a splice
/// puts in place of a string value.
pub fn quoted(text: &str) -> Vec<u8> {
    // Serialising a &str into a Vec cannot fail.
    serde_json::to_vec(text).unwrap_or_else(|_| b"\"\"".to_vec())
}

/// [`with_model`] for a stream request that must also ask for usage:
/// `"stream_options":{"include_usage":true}` goes in as the object's
/// first member. For bodies without `stream_options`; `None` when `body`
/// does not start with an object.
pub fn stream_with_model(body: &Bytes, span: &Range<usize>, model: &str) -> Option<Bytes> {
    const ASK_USAGE: &[u8] = br#""stream_options":{"include_usage":true},"#;
    let open = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body.get(open) != Some(&b'{') || open >= span.start {
        return None;
    }
    let renamed = with_model(body, span, model);
    let mut out = BytesMut::with_capacity(renamed.len() + ASK_USAGE.len());
    out.put_slice(renamed.get(..=open)?);
    out.put_slice(ASK_USAGE);
    out.put_slice(renamed.get(open + 1..)?);
    Some(out.freeze())
}

/// The byte range of the `"usage": null` member of a JSON object known
/// to have one at its top level ([`crate::ChunkSource::has_null_usage`]),
/// with the comma before it, to cut out of stream chunk data. Found by a
/// byte search: in valid JSON a `"usage"` token followed by a colon is a
/// key, and when the body has just one such key (and no `\u` escapes that
/// could spell another), it is the top-level one. `None` when that does
/// not hold or the member is the object's first; callers then serialise.
pub fn null_usage_member(body: &[u8]) -> Option<Range<usize>> {
    static KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
    let (key_at, value) = lone_key(body, &KEY)?;
    let next = after_space(body, value + 4);
    if body.get(value..value + 4) != Some(b"null") || !matches!(body.get(next), Some(b',' | b'}')) {
        return None;
    }
    let comma = body
        .get(..key_at)?
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())?;
    (body.get(comma) == Some(&b',')).then(|| comma..value + 4)
}

/// A chat completion answered as the upstream's bytes (OpenAI format).
#[derive(Clone, Debug)]
pub struct RawChatResponse {
    /// The body as the upstream sent it.
    pub body: Bytes,
    /// Where its `model` is (`None`: no plain string `model`).
    pub model_span: Option<Range<usize>>,
    /// Its `usage` token counts, if any (other usage fields stay in `body`).
    pub usage: Option<Usage>,
}

impl RawChatResponse {
    /// Reads what the gateway needs from a chat completion body, checking
    /// it is one (an object with `choices`); `Err` names what is wrong.
    pub fn parse(body: Bytes) -> Result<Self, serde_json::Error> {
        // Only the counts the gateway meters: `Usage`'s flattened map of
        // every other field makes serde buffer the whole object first.
        #[derive(Deserialize)]
        struct Counts {
            #[serde(default)]
            prompt_tokens: u64,
            #[serde(default)]
            completion_tokens: u64,
            #[serde(default)]
            total_tokens: u64,
        }
        #[derive(Deserialize)]
        struct Peek<'a> {
            #[serde(borrow, default)]
            model: Option<&'a str>,
            #[serde(default)]
            usage: Option<Counts>,
            #[allow(dead_code)]
            choices: serde::de::IgnoredAny,
        }
        let peek: Peek<'_> = from_bytes(&body)?;
        let model_span = peek.model.and_then(|m| span_of(&body, m));
        let usage = peek.usage.map(|c| Usage {
            total_tokens: c.total_tokens,
            ..Usage::new(c.prompt_tokens, c.completion_tokens)
        });
        Ok(Self {
            body,
            model_span,
            usage,
        })
    }

    /// A typed answer as bytes (adapters that do not speak the format).
    pub fn from_response(
        response: &crate::types::ChatResponse,
    ) -> Result<Self, crate::error::ProviderError> {
        let body =
            serde_json::to_vec(response).map_err(|e| crate::error::ProviderError::Protocol {
                message: format!("cannot serialise the chat completion: {e}"),
            })?;
        let body = Bytes::from(body);
        Ok(Self {
            model_span: model_span(&body),
            usage: response.usage.clone(),
            body,
        })
    }

    /// The body with `model` as its model name.
    pub fn body_with_model(&self, model: &str) -> Bytes {
        match &self.model_span {
            Some(span) => with_model(&self.body, span, model),
            None => self.body.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn a_lone_null_usage_member_is_found_with_its_comma_wherever_it_sits() {
        let cut = |body: &str| {
            null_usage_member(body.as_bytes()).map(|range| {
                let mut out = body.to_owned();
                out.replace_range(range, "");
                out
            })
        };
        // Last, between members, spaced out; a string that merely says
        // "usage" is no key.
        assert_eq!(
            cut(r#"{"choices":[],"usage":null}"#).as_deref(),
            Some(r#"{"choices":[]}"#)
        );
        assert_eq!(
            cut(r#"{"model":"m","usage":null,"obfuscation":"x"}"#).as_deref(),
            Some(r#"{"model":"m","obfuscation":"x"}"#)
        );
        assert_eq!(
            cut("{\"a\":\"usage\" ,\n \"usage\" :\tnull }").as_deref(),
            Some("{\"a\":\"usage\"  }")
        );
        // Not cut: a second `usage` key (which is the top-level one is then
        // unknown), the member first, a value that is not null, a `\u`
        // escape anywhere, a key ending in an escaped quote.
        for body in [
            r#"{"choices":[{"usage":null}],"usage":null}"#,
            r#"{"usage":null,"choices":[]}"#,
            r#"{"choices":[],"usage":nullx}"#,
            r#"{"choices":[],"usage":{"total_tokens":3}}"#,
            r#"{"content":"\u00e9","usage":null}"#,
            r#"{"x\"usage":1,"usage":null}"#,
        ] {
            assert_eq!(cut(body), None, "{body}");
        }
    }

    #[test]
    fn bytes_parse_as_json_and_invalid_utf8_is_an_error_at_its_position() {
        let value: serde_json::Value = from_bytes("{\"a\":\"é\",\"b\":[1]}".as_bytes()).unwrap();
        assert_eq!(value["a"], "é");
        assert_eq!(value["b"][0], 1);
        let error = from_bytes::<serde_json::Value>(b"{\"a\":\"\xff\"}").unwrap_err();
        assert!(error.is_syntax(), "{error}");
        assert_eq!((error.line(), error.column()), (1, 7), "{error}");
        let error = from_bytes::<serde_json::Value>(b"{\"a\":}").unwrap_err();
        assert_eq!((error.line(), error.column()), (1, 6), "{error}");
    }

    #[test]
    fn the_model_is_found_and_swapped_without_touching_the_rest() {
        let body = Bytes::from_static(
            br#"{"messages":[{"role":"user","content":"model \"x\""}], "model" : "gpt-4o","n":1}"#,
        );
        let span = model_span(&body).unwrap();
        assert_eq!(&body[span.clone()], br#""gpt-4o""#);
        let swapped = with_model(&body, &span, "up/\"quoted\"");
        assert_eq!(
            &swapped[..],
            br#"{"messages":[{"role":"user","content":"model \"x\""}], "model" : "up/\"quoted\"","n":1}"#
        );
        let value: serde_json::Value = serde_json::from_slice(&swapped).unwrap();
        assert_eq!(value["model"], "up/\"quoted\"");
        // Same name: the very same bytes, shared.
        let same = with_model(&body, &span, "gpt-4o");
        assert_eq!(same.as_ptr(), body.as_ptr());
    }

    #[test]
    fn a_stream_request_gains_the_usage_option_and_the_new_model() {
        let body = Bytes::from_static(b" \n{\"model\":\"m\",\"stream\":true,\"messages\":[]}");
        let span = model_span(&body).unwrap();
        let out = stream_with_model(&body, &span, "up-m").unwrap();
        assert_eq!(
            &out[..],
            &b" \n{\"stream_options\":{\"include_usage\":true},\"model\":\"up-m\",\"stream\":true,\"messages\":[]}"[..]
        );
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["stream_options"]["include_usage"], true);
        assert_eq!(value["model"], "up-m");
        // Same model: only the option goes in.
        let out = stream_with_model(&body, &span, "m").unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (value["model"].as_str(), value["stream"].as_bool()),
            (Some("m"), Some(true))
        );
        // Not an object at the start: refused.
        assert_eq!(
            stream_with_model(&Bytes::from_static(b"[1]"), &(0..1), "m"),
            None
        );
    }

    #[test]
    fn a_parsed_bodys_model_span_is_the_full_parses_answer() {
        let bodies: [&[u8]; 10] = [
            br#"{"model":"gpt-4o","messages":[]}"#,
            br#"{ "messages" : [ {"role":"model","content":"x"} ] , "model"  :  "m" }"#,
            br#"{"metadata":{"model":"m"},"model":"m"}"#,
            br#"{"model":"m","tools":[{"parameters":{"properties":{"model":{"type":"string"}}}}]}"#,
            br#"{"x \"model":1,"model":"m"}"#,
            br#"{"mod\u0065l":"m","metadata":{"model":"other"}}"#,
            br#"{"model":"a\"b"}"#,
            br#"{"messages":[{"content":"say \"model\": no"}],"model":"m"}"#,
            br#"{"model":"m\/n"}"#,
            b"{\"model\"\n:\t\"tabbed\"}",
        ];
        for body in bodies {
            let parsed: serde_json::Value = serde_json::from_slice(body).unwrap();
            let model = parsed["model"].as_str().unwrap();
            assert_eq!(
                parsed_model_span(body, model),
                model_span(body),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // The fast path answers the plain cases by itself.
        assert_eq!(literal_model_span(bodies[1], "m"), model_span(bodies[1]));
        assert_eq!(
            literal_model_span(bodies[9], "tabbed"),
            model_span(bodies[9])
        );
        assert!(literal_model_span(bodies[9], "tabbed").is_some());
        // And declines what it cannot be sure of.
        for ambiguous in [bodies[2], bodies[3], bodies[4], bodies[5], bodies[6]] {
            let parsed: serde_json::Value = serde_json::from_slice(ambiguous).unwrap();
            let model = parsed["model"].as_str().unwrap();
            assert_eq!(literal_model_span(ambiguous, model), None);
        }
    }

    #[test]
    fn escaped_missing_or_nested_models_have_no_span() {
        assert_eq!(model_span(br#"{"model":"a\u0062c"}"#), None);
        assert_eq!(model_span(br#"{"messages":[]}"#), None);
        assert_eq!(model_span(br#"{"x":{"model":"inner"}}"#), None);
        assert_eq!(model_span(br#"{"model":7}"#), None);
        assert_eq!(model_span(b"not json"), None);
    }

    #[test]
    fn responses_give_usage_and_must_be_completions() {
        let body = Bytes::from_static(
            br#"{"id":"c1","model":"up-model","choices":[{"index":0}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
        );
        let raw = RawChatResponse::parse(body).unwrap();
        assert_eq!(raw.usage.as_ref().map(|u| u.total_tokens), Some(7));
        let relabelled = raw.body_with_model("alias");
        let value: serde_json::Value = serde_json::from_slice(&relabelled).unwrap();
        assert_eq!(value["model"], "alias");
        assert_eq!(value["choices"][0]["index"], 0);
        assert!(RawChatResponse::parse(Bytes::from_static(br#"{"model":"m"}"#)).is_err());
        assert!(RawChatResponse::parse(Bytes::from_static(b"[]")).is_err());
    }
}
