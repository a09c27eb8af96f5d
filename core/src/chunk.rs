//! Stream chunks on their way from an adapter to a writer: the upstream's event data, read only as far as the gateway needs it, or a parsed chunk.
//!
//! Every chunk of an OpenAI-format stream used to be parsed into a
//! [`ChatChunk`] (strings copied, maps built) although the gateway only
//! needs a few facts from most of them: whether it carries content, its
//! `finish_reason`, its text (kept for resumption), its `usage` and its
//! `model`; the writer then sends the upstream's bytes. A chunk of the
//! usual shape ([`StreamChunk::pass_through`]) is read into those facts by
//! a borrowing parse that copies nothing, and parsed in full only when
//! someone looks at its fields (through `Deref`), which the paths taken by
//! an ordinary stream never do. Any other chunk is parsed in full at once.
//! An adapter reads a stream's chunks through [`UsualChunks`], which does
//! not read again what repeats from chunk to chunk.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::LazyLock;

use bytestring::ByteString;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use crate::types::{BoxedChatChunk, ChatChunk, Usage};

/// One chunk of a [`ChatStream`](crate::types::ChatStream).
///
/// Methods of its own answer what the stream layers ask of every chunk
/// without parsing it; every other question goes to the [`ChatChunk`] it
/// derefs to, parsed on first use. Changing it through `DerefMut` parses
/// it for good; as with any [`ChatChunk`], whoever changes a field must
/// [`clear`](crate::types::ChunkSource::clear) its source.
pub struct StreamChunk {
    /// The parsed chunk, when it was made from one or changed since.
    owned: Option<Box<ChatChunk>>,
    /// The upstream's event data while nothing changed it.
    raw: Option<RawChunk>,
}

/// Event data of the usual shape and what a stream needs from it.
struct RawChunk {
    data: ByteString,
    facts: Facts,
    parsed: OnceCell<Box<ChatChunk>>,
}

/// Byte ranges into the data of a [`RawChunk`] (string values, quotes
/// excluded), and what else the borrowing parse saw.
#[derive(Clone, Debug)]
struct Facts {
    model: Span,
    /// No choice at all (the final usage chunk) rather than one.
    no_choices: bool,
    content: Option<Span>,
    /// Whether the text has escapes (read unescaped when asked for).
    content_escaped: bool,
    /// The reasoning text, under either of its names (a chunk naming both
    /// is parsed in full).
    reasoning: Option<Span>,
    /// Whether the delta carries a tool-call fragment (one: more are
    /// parsed in full).
    tool_call: bool,
    /// That fragment's piece of the arguments.
    arguments: Option<Span>,
    finish_reason: Option<Span>,
    /// The `usage` object: parsed, being small and owning no strings.
    usage: Option<Box<Usage>>,
    null_usage: bool,
}

/// Offsets into a chunk's data. Two bytes each: every chunk moves through
/// half a dozen stream layers by value, so its facts are kept small, and
/// data of 64 KiB or more (no usual chunk) is parsed in full instead.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: u16,
    end: u16,
}

impl Span {
    /// Where `value`, borrowed from `data`, sits in it.
    fn of(data: &str, value: &str) -> Option<Self> {
        let start = (value.as_ptr() as usize).checked_sub(data.as_ptr() as usize)?;
        let end = start.checked_add(value.len())?;
        (end <= data.len()).then_some(())?;
        Some(Self {
            start: u16::try_from(start).ok()?,
            end: u16::try_from(end).ok()?,
        })
    }

    /// [`of`](Self::of) `value` borrowed from `base`, whose byte `at` is
    /// the chunk's byte `at + shift`.
    fn shifted(base: &str, value: &str, shift: usize) -> Option<Self> {
        let Self { start, end } = Self::of(base, value)?;
        let shift = u16::try_from(shift).ok()?;
        Some(Self {
            start: start.checked_add(shift)?,
            end: end.checked_add(shift)?,
        })
    }

    fn get(self, data: &str) -> &str {
        data.get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }
}

/// What a chunk looks like when it can travel as its bytes: the fields a
/// [`ChatChunk`] parses typed as it types them (so that the full parse,
/// when it comes, succeeds), one choice at index 0 whose delta has only a
/// role and a text, a reasoning text or one tool-call fragment (or no
/// choice, as in the final usage chunk), and no `error`. Strings are borrowed: the texts as their JSON
/// tokens (escapes other than `\u` allowed, decoded when asked for), the
/// others as they are, so an escaped one fails this parse and the chunk is
/// parsed in full instead; members of other names are checked as JSON and
/// skipped (a [`ChatChunk`] keeps them in `extra`, whatever their type).
#[derive(Deserialize)]
struct UsualChunk<'a> {
    #[serde(default, borrow)]
    #[allow(dead_code, reason = "parsed to check its type")]
    id: &'a str,
    #[serde(default, borrow)]
    #[allow(dead_code, reason = "parsed to check its type")]
    object: &'a str,
    #[serde(default)]
    #[allow(dead_code, reason = "parsed to check its type")]
    created: u64,
    #[serde(default, borrow)]
    model: &'a str,
    #[serde(borrow)]
    choices: UsualChoices<'a>,
    #[serde(default)]
    usage: UsageMember,
    #[serde(default)]
    #[allow(dead_code, reason = "parsed to refuse a non-null one")]
    error: NullOnly,
}

#[derive(Default, Deserialize)]
struct UsualChoice<'a> {
    #[serde(default)]
    index: u32,
    #[serde(default, borrow)]
    delta: UsualDelta<'a>,
    #[serde(default, borrow)]
    finish_reason: Option<&'a str>,
    #[serde(default)]
    #[allow(dead_code, reason = "parsed to refuse a non-null one")]
    logprobs: NullOnly,
}

/// A delta of a text, a reasoning text or one tool-call fragment: more
/// fragments or a refusal send the chunk to the full parse (a null one is
/// what some servers put on every chunk).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsualDelta<'a> {
    #[serde(default, borrow)]
    #[allow(dead_code, reason = "parsed to check its type")]
    role: Option<&'a str>,
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
    /// One fragment; none (an empty array) refuses the chunk.
    #[serde(default, borrow)]
    tool_calls: Option<AtMostOne<UsualToolCallFields<'a>>>,
    #[serde(default, borrow)]
    reasoning_content: Option<&'a RawValue>,
    #[serde(default, borrow)]
    reasoning: Option<&'a RawValue>,
    #[serde(default)]
    #[allow(dead_code, reason = "parsed to refuse a non-null one")]
    refusal: NullOnly,
}

/// A delta's tool-call fragment, typed as [`ToolCallDelta`]
/// types it (its other members, which that type drops, skipped).
///
/// [`ToolCallDelta`]: crate::types::ToolCallDelta
#[derive(Deserialize)]
struct UsualToolCallFields<'a> {
    #[serde(default)]
    #[allow(dead_code, reason = "parsed to check its type")]
    index: u32,
    #[serde(default, borrow)]
    #[allow(dead_code, reason = "parsed to check its type")]
    id: Option<&'a str>,
    #[serde(default, borrow, rename = "type")]
    #[allow(dead_code, reason = "parsed to check its type")]
    kind: Option<&'a str>,
    #[serde(default, borrow)]
    function: Option<UsualFunction<'a>>,
}

#[derive(Deserialize)]
struct UsualFunction<'a> {
    #[serde(default, borrow)]
    #[allow(dead_code, reason = "parsed to check its type")]
    name: Option<&'a str>,
    #[serde(default, borrow)]
    arguments: Option<&'a RawValue>,
}

/// A JSON array of no element or one: more fail the parse.
struct AtMostOne<T>(Option<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for AtMostOne<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SeqVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for SeqVisitor<T> {
            type Value = AtMostOne<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of no element or one")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<AtMostOne<T>, A::Error> {
                let first = seq.next_element()?;
                if first.is_some() && seq.next_element::<IgnoredAny>()?.is_some() {
                    return Err(serde::de::Error::custom("more than one element"));
                }
                Ok(AtMostOne(first))
            }
        }
        deserializer.deserialize_seq(SeqVisitor(std::marker::PhantomData))
    }
}

/// No choice or one.
type UsualChoices<'a> = AtMostOne<UsualChoice<'a>>;

/// A chunk's `usage`: absent, `null` (OpenAI's on every chunk but the last
/// once usage is asked for) or an object.
#[derive(Default)]
enum UsageMember {
    #[default]
    Absent,
    Null,
    Object(Box<Usage>),
}

impl<'de> Deserialize<'de> for UsageMember {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Option::<Box<Usage>>::deserialize(deserializer)? {
            None => Self::Null,
            Some(usage) => Self::Object(usage),
        })
    }
}

/// A member that is absent or `null`; any other value fails the parse.
#[derive(Default)]
enum NullOnly {
    #[default]
    Absent,
    Null,
}

impl<'de> Deserialize<'de> for NullOnly {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Option::<IgnoredAny>::deserialize(deserializer)? {
            None => Ok(Self::Null),
            Some(_) => Err(serde::de::Error::custom(
                "a value the pass-through does not read",
            )),
        }
    }
}

impl RawChunk {
    fn read(data: &ByteString) -> Option<Facts> {
        let text: &str = data;
        let usual: UsualChunk<'_> = serde_json::from_str(text).ok()?;
        // An absent model reads as the empty default, not from `text`.
        let model = if usual.model.is_empty() {
            Span { start: 0, end: 0 }
        } else {
            Span::of(text, usual.model)?
        };
        facts(text, 0, model, &usual.choices, usual.usage)
    }

    fn str(&self, span: Span) -> &str {
        span.get(&self.data)
    }

    /// The string at `span`, escapes decoded (read checked it decodes).
    fn unescaped(&self, span: Span) -> String {
        let quoted = self
            .data
            .get(span.start.saturating_sub(1) as usize..span.end as usize + 1)
            .unwrap_or_default();
        serde_json::from_str(quoted).unwrap_or_default()
    }

    fn parsed(&self) -> &ChatChunk {
        self.parsed.get_or_init(|| parse(&self.data))
    }

    fn into_parsed(self) -> Box<ChatChunk> {
        match self.parsed.into_inner() {
            Some(chunk) => chunk,
            None => parse(&self.data),
        }
    }
}

/// The facts of a chunk whose `choices` and `usage` were read from `base`,
/// whose byte `at` is the chunk's byte `at + shift`.
fn facts(
    base: &str,
    shift: usize,
    model: Span,
    choices: &UsualChoices<'_>,
    usage: UsageMember,
) -> Option<Facts> {
    let none = UsualChoice::default();
    let choice = choices.0.as_ref().unwrap_or(&none);
    if choice.index != 0 {
        return None;
    }
    // `Some(None)` for an absent value, `None` for one not in `base`.
    let span = |value: Option<&str>| match value {
        None => Some(None),
        Some(value) => Span::shifted(base, value, shift).map(Some),
    };
    let text = |value: Option<&RawValue>| match value {
        None => Some(None),
        Some(value) => {
            let (text, escaped) = string_token(value)?;
            Some(Some((Span::shifted(base, text, shift)?, escaped)))
        }
    };
    let reasoning = match (choice.delta.reasoning_content, choice.delta.reasoning) {
        (Some(_), Some(_)) => return None,
        (one, None) | (None, one) => text(one)?.map(|(span, _)| span),
    };
    let content = text(choice.delta.content)?;
    let call = match &choice.delta.tool_calls {
        None => None,
        Some(AtMostOne(None)) => return None,
        Some(AtMostOne(Some(call))) => Some(call),
    };
    let arguments = call
        .and_then(|call| call.function.as_ref())
        .and_then(|function| function.arguments);
    let arguments = text(arguments)?.map(|(span, _)| span);
    Some(Facts {
        model,
        no_choices: choices.0.is_none(),
        content: content.map(|(span, _)| span),
        content_escaped: content.is_some_and(|(_, escaped)| escaped),
        reasoning,
        tool_call: call.is_some(),
        arguments,
        finish_reason: span(choice.finish_reason)?,
        null_usage: matches!(usage, UsageMember::Null),
        usage: match usage {
            UsageMember::Object(usage) => Some(usage),
            UsageMember::Absent | UsageMember::Null => None,
        },
    })
}

/// The content of the JSON string token `value` (quotes excluded) and
/// whether it has escapes; `None` for any other value, and for a string
/// with a `\u` escape: the full parse decodes those and refuses a lone
/// surrogate, which this read would not see.
fn string_token(value: &RawValue) -> Option<(&str, bool)> {
    let text = value.get().strip_prefix('"')?.strip_suffix('"')?;
    let Some(first) = memchr::memchr(b'\\', text.as_bytes()) else {
        return Some((text, false));
    };
    if text.get(first..)?.contains("\\u") {
        return None;
    }
    Some((text, true))
}

/// Where the JSON string whose content `bytes` begin ends (the index of
/// its closing quote), and whether it has escapes. `None` when a control
/// character, a `\u` escape or an unknown one comes first, or nothing
/// closes it: the same strings [`string_token`] takes.
fn string_end(bytes: &[u8]) -> Option<(usize, bool)> {
    let mut escaped = false;
    let mut at = 0;
    loop {
        let rest = bytes.get(at..)?;
        let next = memchr::memchr2(b'"', b'\\', rest)?;
        if rest.get(..next)?.iter().any(|&b| b < 0x20) {
            return None;
        }
        if rest.get(next) == Some(&b'"') {
            return Some((at + next, escaped));
        }
        match rest.get(next + 1)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
            _ => return None,
        }
        escaped = true;
        at += next + 2;
    }
}

/// The members of a chunk from its `choices` on, read as an object of
/// their own once its leading members are known ([`UsualChunks`]). A
/// leading member met again here fails the parse: the chunk then takes
/// the full one.
#[derive(Deserialize)]
struct UsualRest<'a> {
    #[serde(borrow)]
    choices: UsualChoices<'a>,
    #[serde(default)]
    usage: UsageMember,
    #[serde(default)]
    #[allow(dead_code, reason = "parsed to refuse a non-null one")]
    error: NullOnly,
    #[serde(default)]
    #[allow(dead_code, reason = "parsed to refuse it")]
    id: Repeated,
    #[serde(default)]
    #[allow(dead_code, reason = "parsed to refuse it")]
    object: Repeated,
    #[serde(default)]
    #[allow(dead_code, reason = "parsed to refuse it")]
    created: Repeated,
    #[serde(default)]
    #[allow(dead_code, reason = "parsed to refuse it")]
    model: Repeated,
}

/// A member that must not be there: present, it fails the parse.
#[derive(Default)]
struct Repeated;

impl<'de> Deserialize<'de> for Repeated {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "a leading member again after `choices`",
        ))
    }
}

/// Reads the chunks of one stream as [`StreamChunk::pass_through`] does,
/// for less, from what the stream's earlier chunks were:
/// - Most chunks of a stream are the same bytes around a different text:
///   a chunk that is the last text chunk's bytes with only the text
///   changed (to a JSON string's content: no unescaped quote, no control
///   character, no escape but the short ones) is valid JSON of the same
///   members, and is not parsed at all. When that chunk ends with a
///   string member after its text (OpenAI's random `obfuscation`
///   padding, different on every chunk), that value may change too, to
///   a plain string (no quote, escape or control character).
/// - The chunks of a stream begin with the same members (`id`, `object`,
///   `created`, `model`, often `system_fingerprint`) byte for byte; once
///   one chunk's were read, a chunk whose bytes up to its `choices` key
///   are the same is read from that key on. JSON is read left to right,
///   so equal leading bytes parse to equal members and leave the parse at
///   the same point: just before a key.
#[derive(Default)]
pub struct UsualChunks {
    text_chunk: Option<TextChunk>,
    leading: Option<Leading>,
    /// `{` and the rest of the chunk being read, reused chunk after chunk.
    scratch: String,
}

/// The last chunk read that carried text or reasoning text and nothing
/// else the stream layers look at (no `finish_reason`, no `usage`
/// object). Its bytes are copied: a chunk's data is a slice of an
/// upstream read, which it would keep alive for the whole stream. Its
/// `model` may sit before the text (OpenAI, vLLM, Ollama) or after it
/// (llama.cpp's server writes `choices` first): what sits after the text
/// moves with the text's length.
struct TextChunk {
    data: ByteString,
    /// Its facts; the hole's span is where the text sits.
    facts: Facts,
    /// Which text a later chunk may change.
    hole: Hole,
    /// Where the chunk's last member's string value sits when that value
    /// ends the chunk after the text (`…,"obfuscation":"K2p"}`): a second
    /// place a later chunk may differ. OpenAI pads every chunk of a
    /// stream with a random `obfuscation` string of its own.
    last_value: Option<Span>,
}

/// The text of a [`TextChunk`] that later chunks change: the answer's
/// text, a reasoning model's reasoning before it, or a tool call's
/// arguments, streamed piece by piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hole {
    Content,
    Reasoning,
    Arguments,
}

impl Hole {
    const ALL: [Self; 3] = [Self::Content, Self::Reasoning, Self::Arguments];
}

impl Facts {
    fn hole(&self, hole: Hole) -> Option<Span> {
        match hole {
            Hole::Content => self.content,
            Hole::Reasoning => self.reasoning,
            Hole::Arguments => self.arguments,
        }
    }

    fn hole_mut(&mut self, hole: Hole) -> &mut Option<Span> {
        match hole {
            Hole::Content => &mut self.content,
            Hole::Reasoning => &mut self.reasoning,
            Hole::Arguments => &mut self.arguments,
        }
    }
}

impl TextChunk {
    fn of(data: &ByteString, facts: &Facts) -> Option<Self> {
        let has_text = facts.content.is_some_and(|span| span.end > span.start);
        let hole = if has_text {
            Hole::Content
        } else if facts.reasoning.is_some() {
            Hole::Reasoning
        } else if facts.arguments.is_some() {
            Hole::Arguments
        } else {
            Hole::Content
        };
        let text = facts.hole(hole)?;
        let apart = facts.model.end <= text.start || facts.model.start >= text.end;
        let plain = facts.finish_reason.is_none() && facts.usage.is_none() && apart;
        plain.then(|| Self {
            data: ByteString::from(String::from(&**data)),
            facts: facts.clone(),
            hole,
            last_value: last_string_value(data.as_bytes(), text.end),
        })
    }

    /// The facts of `data` if it is this chunk with only the text (and
    /// the last value, if it has one) changed.
    fn read(&self, data: &ByteString) -> Option<Facts> {
        let text = self.facts.hole(self.hole)?;
        let template = self.data.as_bytes();
        let before = template.get(..text.start as usize)?;
        let bytes = data.as_bytes();
        if !bytes.starts_with(before) {
            return None;
        }
        // The text runs to its closing quote, then the template's bytes
        // follow: to the end, or up to the last value, then a plain value
        // ends the chunk.
        let rest = bytes.get(before.len()..)?;
        let (length, escaped) = match self.last_value {
            None => {
                let after = template.get(text.end as usize..)?;
                let length = rest.len().checked_sub(after.len())?;
                if !rest.ends_with(after) {
                    return None;
                }
                // A plain text (nearly every one) is checked by the
                // cheaper test; the escapes' reading must end it there.
                if is_plain_string(rest.get(..length)?) {
                    (length, false)
                } else {
                    let (end, escaped) = string_end(rest)?;
                    (end == length).then_some((length, escaped))?
                }
            }
            Some(value) => {
                let (length, escaped) = string_end(rest)?;
                let middle = template.get(text.end as usize..value.start as usize)?;
                let tail = rest.get(length..)?.strip_prefix(middle)?;
                if !is_plain_string(tail.strip_suffix(b"\"}")?) {
                    return None;
                }
                (length, escaped)
            }
        };
        let end = u16::try_from(before.len() + length).ok()?;
        let mut facts = self.facts.clone();
        if self.hole == Hole::Content {
            facts.content_escaped = escaped;
        }
        *facts.hole_mut(self.hole) = Some(Span {
            start: text.start,
            end,
        });
        // What sits after the text (the template's bytes) moves with it.
        let moved = |span: Span| -> Option<Span> {
            if span.start < text.end {
                return Some(span);
            }
            let shift = |at: u16| end.checked_add(at.checked_sub(text.end)?);
            Some(Span {
                start: shift(span.start)?,
                end: shift(span.end)?,
            })
        };
        facts.model = moved(facts.model)?;
        for other in Hole::ALL {
            if other != self.hole {
                let other = facts.hole_mut(other);
                *other = match *other {
                    Some(span) => Some(moved(span)?),
                    None => None,
                };
            }
        }
        Some(facts)
    }
}

/// Whether `bytes` stand as a JSON string's content with nothing to
/// unescape: no quote (which would end it), backslash (an escape) or
/// control character (invalid in it). Such text is its JSON string's
/// content as it is, and the only text a chunk of the usual shape takes.
pub fn is_plain_string(bytes: &[u8]) -> bool {
    !bytes.iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20)
}

/// Where the value of the last member of the JSON object `data` sits, when
/// it is a plain string (see [`is_plain_string`]) that ends the object
/// (`…,"key":"value"}`, no space around the colon) after byte `after`.
/// The closing brace is the object's own, so the value is a member of it,
/// not of anything nested.
fn last_string_value(data: &[u8], after: u16) -> Option<Span> {
    let inner = data.strip_suffix(b"\"}")?;
    let open = memchr::memrchr(b'"', inner)?;
    if open <= after as usize || inner.get(open.checked_sub(1)?) != Some(&b':') {
        return None;
    }
    if !is_plain_string(inner.get(open + 1..)?) {
        return None;
    }
    Some(Span {
        start: u16::try_from(open + 1).ok()?,
        end: u16::try_from(inner.len()).ok()?,
    })
}

/// The leading members of the last chunk read in full, up to (not
/// including) its `"choices":` key, and where its `model` sits (copied,
/// as a [`TextChunk`] is).
struct Leading {
    bytes: ByteString,
    model: Span,
}

/// The top-level `choices` key as the leading members end at it.
static CHOICES_KEY: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(b"\"choices\":"));

impl UsualChunks {
    /// [`StreamChunk::pass_through`] of the stream's next event data.
    pub fn read(&mut self, data: ByteString) -> Result<StreamChunk, ByteString> {
        if let Some(facts) = self.text_chunk.as_ref().and_then(|text| text.read(&data)) {
            return Ok(StreamChunk::unparsed(data, facts));
        }
        let facts = match self.read_after_leading(&data) {
            Some(facts) => facts,
            None => {
                let Some(facts) = RawChunk::read(&data) else {
                    return Err(data);
                };
                self.leading = leading_members(&data, facts.model);
                facts
            }
        };
        if let Some(text_chunk) = TextChunk::of(&data, &facts) {
            self.text_chunk = Some(text_chunk);
        }
        Ok(StreamChunk::unparsed(data, facts))
    }

    fn read_after_leading(&mut self, data: &ByteString) -> Option<Facts> {
        let leading = self.leading.as_ref()?;
        let at = leading.bytes.len();
        let (head, rest) = (data.get(..at)?, data.get(at..)?);
        if head != &*leading.bytes || !rest.starts_with("\"choices\":") {
            return None;
        }
        self.scratch.clear();
        self.scratch.reserve(rest.len() + 1);
        self.scratch.push('{');
        self.scratch.push_str(rest);
        let usual: UsualRest<'_> = serde_json::from_str(&self.scratch).ok()?;
        // The scratch's byte 1 is the chunk's byte `at`.
        let shift = at.checked_sub(1)?;
        facts(
            &self.scratch,
            shift,
            leading.model,
            &usual.choices,
            usual.usage,
        )
    }
}

/// The leading members of `data` when they can stand for the next
/// chunk's: they end at the first `"choices":` (not one closing an escaped
/// quote), hold the `model`, and name no `usage`, `error` or other
/// spelling of `choices`, which the rest is read for.
fn leading_members(data: &ByteString, model: Span) -> Option<Leading> {
    let at = CHOICES_KEY.find(data.as_bytes())?;
    let before_key = *data.as_bytes().get(at.checked_sub(1)?)?;
    if before_key == b'\\' || model.end as usize > at {
        return None;
    }
    let head = data.get(..at)?;
    if ["\"choices\"", "\"usage\"", "\"error\""]
        .iter()
        .any(|name| head.contains(name))
    {
        return None;
    }
    Some(Leading {
        bytes: ByteString::from(head.to_owned()),
        model,
    })
}

/// The full parse of data [`RawChunk::read`] accepted. It cannot fail on
/// such data (the shape was checked with the same types); were it to, the
/// chunk would read as empty fields over its unchanged bytes.
fn parse(data: &ByteString) -> Box<ChatChunk> {
    let mut chunk = match serde_json::from_str::<BoxedChatChunk>(data) {
        Ok(BoxedChatChunk(chunk)) => chunk,
        Err(_) => Box::default(),
    };
    chunk.source.attach(data.clone().into_bytes());
    chunk
}

/// What `Deref` gives for a chunk with neither form, which the
/// constructors never make.
static EMPTY: LazyLock<ChatChunk> = LazyLock::new(ChatChunk::default);

impl StreamChunk {
    /// The chunk in `data` when it has the usual shape (one choice at
    /// index 0 carrying a role, a text, a reasoning text or one tool-call
    /// fragment, a `finish_reason` or neither, or no choice; no `\u` escape in the
    /// texts, no escape elsewhere, no `error`): read
    /// without copying anything, parsed only if someone looks. Otherwise
    /// `data` comes back for a full parse.
    pub fn pass_through(data: ByteString) -> Result<Self, ByteString> {
        match RawChunk::read(&data) {
            Some(facts) => Ok(Self::unparsed(data, facts)),
            None => Err(data),
        }
    }

    fn unparsed(data: ByteString, facts: Facts) -> Self {
        Self {
            owned: None,
            raw: Some(RawChunk {
                data,
                facts,
                parsed: OnceCell::new(),
            }),
        }
    }

    /// Whether the chunk is still the upstream's data, not parsed.
    pub fn is_unparsed(&self) -> bool {
        self.raw
            .as_ref()
            .is_some_and(|raw| raw.parsed.get().is_none())
    }

    /// [`ChatChunk::has_content`].
    pub fn has_content(&self) -> bool {
        match &self.raw {
            Some(raw) => {
                raw.facts.tool_call
                    || [raw.facts.content, raw.facts.reasoning]
                        .iter()
                        .any(|span| span.is_some_and(|span| span.end > span.start))
            }
            None => (**self).has_content(),
        }
    }

    /// [`ChatChunk::finish_reason`].
    pub fn finish_reason(&self) -> Option<&str> {
        match &self.raw {
            Some(raw) => raw.facts.finish_reason.map(|span| raw.str(span)),
            None => (**self).finish_reason(),
        }
    }

    /// [`ChatChunk::text_ref`].
    pub fn text_ref(&self) -> Cow<'_, str> {
        match &self.raw {
            Some(raw) => match raw.facts.content {
                None => Cow::Borrowed(""),
                Some(span) if raw.facts.content_escaped => Cow::Owned(raw.unescaped(span)),
                Some(span) => Cow::Borrowed(raw.str(span)),
            },
            None => (**self).text_ref(),
        }
    }

    /// [`ChatChunk::has_tool_calls`].
    pub fn has_tool_calls(&self) -> bool {
        match &self.raw {
            Some(raw) => raw.facts.tool_call,
            None => (**self).has_tool_calls(),
        }
    }

    /// The chunk's `usage` object, if it has one.
    pub fn usage(&self) -> Option<&Usage> {
        match &self.raw {
            Some(raw) => raw.facts.usage.as_deref(),
            None => self.owned.as_ref()?.usage.as_ref(),
        }
    }

    /// Whether the chunk has no choices (the final usage chunk).
    pub fn has_no_choices(&self) -> bool {
        match &self.raw {
            Some(raw) => raw.facts.no_choices,
            None => self.choices.is_empty(),
        }
    }

    /// Whether the chunk carries more than one choice or one at an index
    /// other than 0.
    pub fn is_multi_choice(&self) -> bool {
        self.raw.is_none() && (self.choices.len() > 1 || self.choices.iter().any(|c| c.index > 0))
    }

    /// The model the chunk names.
    pub fn model(&self) -> &str {
        match &self.raw {
            Some(raw) => raw.str(raw.facts.model),
            None => &self.model,
        }
    }

    /// The event data the chunk is, while unchanged ([`ChunkSource::bytes`](crate::types::ChunkSource::bytes)).
    pub fn source(&self) -> Option<&[u8]> {
        match &self.raw {
            Some(raw) => Some(raw.data.as_bytes()),
            None => self.owned.as_ref()?.source.bytes().map(|bytes| &bytes[..]),
        }
    }

    /// [`ChunkSource::has_null_usage`](crate::types::ChunkSource::has_null_usage) of that data.
    pub fn has_null_usage(&self) -> bool {
        match &self.raw {
            Some(raw) => raw.facts.null_usage,
            None => self.source.has_null_usage(),
        }
    }

    /// The parsed chunk.
    pub fn into_chat_chunk(self) -> Box<ChatChunk> {
        match (self.owned, self.raw) {
            (Some(chunk), _) => chunk,
            (None, Some(raw)) => raw.into_parsed(),
            (None, None) => Box::default(),
        }
    }
}

impl Deref for StreamChunk {
    type Target = ChatChunk;

    fn deref(&self) -> &ChatChunk {
        match (&self.owned, &self.raw) {
            (Some(chunk), _) => chunk,
            (None, Some(raw)) => raw.parsed(),
            (None, None) => &EMPTY,
        }
    }
}

impl DerefMut for StreamChunk {
    fn deref_mut(&mut self) -> &mut ChatChunk {
        let chunk = match (self.owned.take(), self.raw.take()) {
            (Some(chunk), _) => chunk,
            (None, Some(raw)) => raw.into_parsed(),
            (None, None) => Box::default(),
        };
        self.owned.insert(chunk)
    }
}

impl From<Box<ChatChunk>> for StreamChunk {
    fn from(chunk: Box<ChatChunk>) -> Self {
        Self {
            owned: Some(chunk),
            raw: None,
        }
    }
}

impl From<ChatChunk> for StreamChunk {
    fn from(chunk: ChatChunk) -> Self {
        Box::new(chunk).into()
    }
}

impl Clone for StreamChunk {
    fn clone(&self) -> Self {
        Self {
            owned: self.owned.clone(),
            raw: self.raw.as_ref().map(|raw| RawChunk {
                data: raw.data.clone(),
                facts: raw.facts.clone(),
                parsed: raw.parsed.clone(),
            }),
        }
    }
}

/// Serialised as its fields (writers send [`source`](StreamChunk::source)
/// instead when they can).
impl serde::Serialize for StreamChunk {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(serializer)
    }
}

impl PartialEq for StreamChunk {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl fmt::Debug for StreamChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.raw {
            Some(raw) => f
                .debug_struct("StreamChunk")
                .field("data", &&*raw.data)
                .field("facts", &raw.facts)
                .finish(),
            None => fmt::Debug::fmt(&**self, f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ChunkChoice, ChunkDelta};

    const TEXT: &str = r#"{"id":"c1","object":"chat.completion.chunk","created":7,"model":"up-1","choices":[{"index":0,"delta":{"content":"Hello "},"finish_reason":null}]}"#;

    fn raw(data: &str) -> StreamChunk {
        StreamChunk::pass_through(ByteString::from(data.to_owned()))
            .unwrap_or_else(|_| panic!("not passed through: {data}"))
    }

    fn refused(data: &str) -> bool {
        StreamChunk::pass_through(ByteString::from(data.to_owned())).is_err()
    }

    fn parsed(data: &str) -> StreamChunk {
        let BoxedChatChunk(mut chunk) = serde_json::from_str(data).unwrap();
        chunk.source.attach(bytes::Bytes::from(data.to_owned()));
        chunk.into()
    }

    /// The facts of `data` read through `usual`'s remembered text chunk
    /// alone (`None`: it does not take the chunk).
    fn remembered_read(usual: &UsualChunks, data: &str) -> Option<Facts> {
        usual.text_chunk.as_ref()?.read(&data.to_owned().into())
    }

    /// Every question a stream layer asks gets the answer the parsed chunk gives.
    fn assert_same_answers(data: &str) {
        let raw = raw(data);
        let full = parsed(data);
        assert_eq!(raw.has_content(), full.has_content(), "{data}");
        assert_eq!(raw.finish_reason(), full.finish_reason(), "{data}");
        assert_eq!(raw.text_ref(), full.text_ref(), "{data}");
        assert_eq!(raw.has_tool_calls(), full.has_tool_calls(), "{data}");
        assert_eq!(raw.usage(), full.usage(), "{data}");
        assert_eq!(raw.has_no_choices(), full.has_no_choices(), "{data}");
        assert_eq!(raw.is_multi_choice(), full.is_multi_choice(), "{data}");
        assert_eq!(raw.model(), full.model(), "{data}");
        assert_eq!(raw.source(), full.source(), "{data}");
        assert_eq!(raw.has_null_usage(), full.has_null_usage(), "{data}");
        assert!(raw.is_unparsed(), "answering parsed it: {data}");
        assert_eq!(raw, full, "{data}");
        assert!(!raw.is_unparsed());
    }

    #[test]
    fn usual_chunks_answer_as_their_full_parse_without_being_parsed() {
        assert_same_answers(TEXT);
        assert_same_answers(
            r#"{"id":"c1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
        );
        assert_same_answers(
            r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#,
        );
        assert_same_answers(
            r#"{"id":"c1","model":"m","system_fingerprint":"fp","choices":[{"index":0,"delta":{"content":"é ✓","refusal":null,"reasoning_content":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        );
        assert_same_answers(r#"{"choices":[{"delta":{"content":"x"}}]}"#);
        assert_same_answers(
            r#"{"model":"m","choices":[{"index":0,"delta":{"content":"x","reasoning":null}}]}"#,
        );
        // Tool-call fragments: the first (id, type, name), arguments
        // escaped or not, another call's, with other members skipped.
        for call in [
            r#"{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}"#,
            r#"{"index":0,"function":{"arguments":"{\"city\": \"Par"}}"#,
            r#"{"index":0,"function":{"arguments":"is"}}"#,
            r#"{"index":1,"id":null,"function":{"name":null,"arguments":"}"},"x":[1]}"#,
        ] {
            assert_same_answers(&format!(
                r#"{{"id":"c1","model":"m","choices":[{{"index":0,"delta":{{"content":null,"tool_calls":[{call}]}},"finish_reason":null}}]}}"#
            ));
        }
        // Escaped text: the usual read keeps it, decoded when asked.
        assert_same_answers(
            r#"{"model":"m","choices":[{"index":0,"delta":{"content":"a\n\"b\"\t\\"}}]}"#,
        );
        assert_same_answers(
            r#"{"model":"m","choices":[{"index":0,"delta":{"reasoning_content":"a\nb"}}]}"#,
        );
        // Reasoning text under either name, empty, beside an empty text.
        for delta in [
            r#"{"content":null,"reasoning_content":"Let me see"}"#,
            r#"{"reasoning":"Let me see"}"#,
            r#"{"reasoning":""}"#,
            r#"{"role":"assistant","content":"","reasoning_content":"hm"}"#,
            r#"{"reasoning_content":null,"reasoning":"hm"}"#,
        ] {
            assert_same_answers(&format!(
                r#"{{"id":"c1","model":"m","choices":[{{"index":0,"delta":{delta},"finish_reason":null}}]}}"#
            ));
        }
        // The final usage chunk, and a chunk with no choice at all.
        assert_same_answers(
            r#"{"id":"c1","model":"m","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":6,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":2}}}"#,
        );
        assert_same_answers(r#"{"id":"c1","model":"m","choices":[]}"#);
    }

    #[test]
    fn chunks_of_other_shapes_are_left_to_the_full_parse() {
        // Text with a `\u` escape (a lone surrogate among them) or not a
        // string; tool calls: none, two, arguments not a string or with a
        // `\u` escape, an id not a string, an escaped name, a negative
        // index; reasoning under both names or with a `\u` escape, a usage object of the wrong shape, an error, two
        // choices, a choice at index 1, a typed field of the wrong type,
        // malformed JSON, log probabilities.
        for data in [
            r#"{"model":"m","choices":[{"index":0,"delta":{"content":"caf\u00e9"}}]}"#,
            r#"{"model":"m","choices":[{"index":0,"delta":{"content":"\ud800"}}]}"#,
            r#"{"model":"m","choices":[{"index":0,"delta":{"content":7}}]}"#,
            r#"{"model":"m","choices":[{"index":0,"delta":{"tool_calls":[]}}]}"#,
            r#"{"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0},{"index":1}]}}]}"#,
            r#"{"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":{"a":1}}}]}}]}"#,
            r#"{"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\u0041"}}]}}]}"#,
            r#"{"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":7}]}}]}"#,
            r#"{"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"name":"a\"b"}}]}}]}"#,
            r#"{"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":-1}]}}]}"#,
            r#"{"model":"m","choices":[{"index":0,"delta":{"reasoning_content":"hm","reasoning":"hm"}}]}"#,
            r#"{"model":"m","choices":[{"index":0,"delta":{"reasoning":"\u0041"}}]}"#,
            r#"{"model":"m","choices":[{"index":0,"delta":{"reasoning_content":{"text":"hm"}}}]}"#,
            r#"{"model":"m","choices":[],"usage":{"prompt_tokens":"one"}}"#,
            r#"{"model":"m","choices":[{"index":0,"delta":{"content":"x"}}],"error":{"message":"no"}}"#,
            r#"{"model":"m","choices":[{"index":0,"delta":{"content":"x"}},{"index":1,"delta":{"content":"y"}}]}"#,
            r#"{"model":"m","choices":[{"index":1,"delta":{"content":"y"}}]}"#,
            r#"{"model":"m","choices":[{"index":0,"delta":{}},{"index":0,"delta":{}},{"index":0,"delta":{}}]}"#,
            r#"{"model":"m","created":"yesterday","choices":[{"index":0,"delta":{"content":"x"}}]}"#,
            r#"{"model":"m","choices":[{"index":0,"delta":{"content":"x"}}]"#,
            r#"{"model":"m","choices":[{"index":0,"delta":{"content":"x"},"logprobs":{"content":[]}}]}"#,
        ] {
            assert!(refused(data), "passed through: {data}");
        }
        // Data too long for the facts' offsets.
        let long = format!(
            r#"{{"model":"m","choices":[{{"index":0,"delta":{{"content":"{}"}}}}]}}"#,
            "a".repeat(70_000)
        );
        assert!(refused(&long));
        let mut usual = UsualChunks::default();
        usual
            .read(r#"{"model":"m","choices":[{"index":0,"delta":{"content":"a"}}]}"#.into())
            .unwrap();
        assert!(usual.read(long.into()).is_err());
    }

    /// The bench's stream: the same leading members on every chunk.
    fn stream_of(lead: &str) -> Vec<String> {
        [
            r#"{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}"#,
            r#"{"index":0,"delta":{"content":"Hello "},"finish_reason":null}"#,
            r#"{"index":0,"delta":{"content":"from é "},"finish_reason":null}"#,
            r#"{"index":0,"delta":{},"finish_reason":"stop"}"#,
        ]
        .iter()
        .map(|choice| format!(r#"{lead}"choices":[{choice}]}}"#))
        .chain([format!(
            r#"{lead}"choices":[],"usage":{{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}}}"#
        )])
        .collect()
    }

    const LEAD: &str = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"up-1","system_fingerprint":"fp",""#;

    #[test]
    fn after_the_first_chunk_the_rest_of_each_is_read_and_answers_the_same() {
        let lead = LEAD.trim_end_matches('"');
        let mut usual = UsualChunks::default();
        for (at, data) in stream_of(lead).iter().enumerate() {
            let data = ByteString::from(data.clone());
            let fast = usual.read_after_leading(&data).is_some();
            assert_eq!(fast, at > 0, "chunk {at} read from its choices on: {data}");
            let text_only = remembered_read(&usual, &data).is_some();
            assert_eq!(
                text_only,
                at == 2,
                "chunk {at} read as a text change: {data}"
            );
            let chunk = usual.read(data.clone()).unwrap();
            let full = parsed(&data);
            assert_eq!(chunk.has_content(), full.has_content());
            assert_eq!(chunk.finish_reason(), full.finish_reason());
            assert_eq!(chunk.text_ref(), full.text_ref());
            assert_eq!(chunk.usage(), full.usage());
            assert_eq!(chunk.has_no_choices(), full.has_no_choices());
            assert_eq!(chunk.model(), "up-1");
            assert!(chunk.is_unparsed());
            assert_eq!(chunk, full);
        }
    }

    #[test]
    fn the_rest_is_read_alone_only_after_the_same_leading_members() {
        let lead = LEAD.trim_end_matches('"');
        let first = stream_of(lead).remove(1);
        let fast = |next: &str| {
            let mut usual = UsualChunks::default();
            usual.read(first.clone().into()).unwrap();
            usual.read_after_leading(&next.to_owned().into()).is_some()
        };
        let choice = r#""choices":[{"index":0,"delta":{"content":"x"}}]"#;
        assert!(fast(&format!("{lead}{choice}}}")));
        // Other leading bytes, a member the first chunk did not have
        // before `choices`, a leading member again, a non-null error, a
        // broken rest, two choices.
        for next in [
            format!(r#"{lead}"x":1,{choice}}}"#),
            format!(
                r#"{{"id":"chatcmpl-2","object":"chat.completion.chunk","created":7,"model":"up-1","system_fingerprint":"fp",{choice}}}"#
            ),
            format!(r#"{lead}{choice},"model":"other"}}"#),
            format!(r#"{lead}{choice},"error":{{"message":"no"}}}}"#),
            format!(r#"{lead}{choice}"#),
            format!(r#"{lead}"choices":[{{"delta":{{}}}},{{"delta":{{}}}}]}}"#),
        ] {
            assert!(!fast(&next), "read from its choices on: {next}");
        }
        // Leading members that cannot stand for the next chunk's: one
        // naming `usage`, a `choices` key spelled with a space, a model
        // after the choices, a key ending in an escaped quote.
        for first in [
            format!(r#"{{"usage":null,"model":"m",{choice}}}"#),
            format!(r#"{{"model":"m","choices" :[],"x":{{{choice}}}}}"#),
            format!(r#"{{"id":"a",{choice},"model":"m"}}"#),
            format!(r#"{{"a\"choices":[],{choice}}}"#),
        ] {
            let data = ByteString::from(first.clone());
            let facts = RawChunk::read(&data).unwrap_or_else(|| panic!("not usual: {first}"));
            let leading = leading_members(&data, facts.model);
            assert!(leading.is_none(), "kept as leading members: {first}");
        }
    }

    #[test]
    fn only_a_text_in_the_same_bytes_is_taken_without_a_read() {
        let lead = LEAD.trim_end_matches('"');
        let text = |content: &str, finish: &str| {
            format!(
                r#"{lead}"choices":[{{"index":0,"delta":{{"content":"{content}"}},"finish_reason":{finish}}}]}}"#
            )
        };
        let mut usual = UsualChunks::default();
        usual.read(text("Hello", "null").into()).unwrap();
        let taken = |data: String| {
            remembered_read(&usual, &data)
                .map(|facts| facts.content.map(|span| (span.start, span.end)))
        };
        let start = text("", "null").find(r#""}"#).unwrap() as u16;
        assert_eq!(taken(text("ça va", "null")), Some(Some((start, start + 6))));
        assert_eq!(taken(text("", "null")), Some(Some((start, start))));
        // Escaped texts are taken too, and read unescaped.
        for (escaped, unescaped) in [
            (r"a\nb", "a\nb"),
            (r#"say \"hi\""#, r#"say "hi""#),
            (r"back\\slash \/ \t\r\b\f", "back\\slash / \t\r\u{8}\u{c}"),
            (r"\\", "\\"),
        ] {
            let data = text(escaped, "null");
            let end = start + escaped.len() as u16;
            assert_eq!(taken(data.clone()), Some(Some((start, end))), "{data}");
            let mut reader = UsualChunks::default();
            reader.read(text("Hello", "null").into()).unwrap();
            let read = reader.read(data.clone().into()).unwrap();
            assert!(read.is_unparsed());
            assert_eq!(read.text_ref(), unescaped, "{data}");
            assert!(read.has_content());
            assert_eq!(read, parsed(&data));
        }
        // An unescaped quote, a `\u` escape, an unknown escape, an escaped
        // closing quote, a control character, another finish_reason
        // (longer, and shorter than `null`), other leading bytes.
        for other in [
            text("ab", r#""x""#),
            text(r#"a","x":"b"#, "null"),
            text(r"\u00e9", "null"),
            text(r"a\qb", "null"),
            text("a\\", "null"),
            text("a\u{1}b", "null"),
            text("a", r#""stop""#),
            text("a", "null").replace("chatcmpl-1", "chatcmpl-2"),
        ] {
            assert_eq!(taken(other.clone()), None, "taken: {other}");
        }
        // Chunks with text that cannot stand for the next: a finish_reason,
        // a usage object.
        for data in [
            text("a", r#""stop""#),
            text("a", "null").replace("]}", r#"],"usage":{"total_tokens":1}}"#),
        ] {
            let mut usual = UsualChunks::default();
            usual.read(data.clone().into()).unwrap();
            assert!(usual.text_chunk.is_none(), "kept as a text chunk: {data}");
        }
    }

    #[test]
    fn a_model_after_the_text_moves_with_the_texts_length() {
        // llama.cpp's server order: `choices` first, the model after them.
        let chunk = |content: &str, model: &str| {
            format!(
                r#"{{"choices":[{{"finish_reason":null,"index":0,"delta":{{"content":"{content}"}}}}],"created":1732770000,"id":"chatcmpl-l","model":"{model}","system_fingerprint":"b4000","object":"chat.completion.chunk"}}"#
            )
        };
        let mut usual = UsualChunks::default();
        usual.read(chunk("Hello", "llama-3").into()).unwrap();
        let taken = |usual: &UsualChunks, data: &str| remembered_read(usual, data).is_some();
        for content in ["", "a", "Hello", "ça va, a longer text than the first"] {
            let data = chunk(content, "llama-3");
            assert!(taken(&usual, &data), "not taken: {data}");
            let read = usual.read(data.clone().into()).unwrap();
            assert!(read.is_unparsed());
            assert_eq!(read.model(), "llama-3", "{data}");
            assert_eq!(read.text_ref(), content);
            assert_eq!(read, parsed(&data));
        }
        // Another model after the text is other bytes: read in full, and
        // it names its own model.
        let other = chunk("a", "llama-4");
        assert!(!taken(&usual, &other));
        let read = usual.read(other.clone().into()).unwrap();
        assert_eq!(read.model(), "llama-4");
        assert_eq!(read, parsed(&other));
        // With OpenAI's pad last, a model between the text and the pad.
        let padded = |content: &str, pad: &str| {
            format!(
                r#"{{"choices":[{{"index":0,"delta":{{"content":"{content}"}}}}],"model":"m-1","obfuscation":"{pad}"}}"#
            )
        };
        let mut usual = UsualChunks::default();
        usual.read(padded("Hi", "K2").into()).unwrap();
        for (content, pad) in [("", "x"), ("a much longer text", "p9xQm")] {
            let data = padded(content, pad);
            assert!(taken(&usual, &data), "not taken: {data}");
            let read = usual.read(data.clone().into()).unwrap();
            assert_eq!(read.model(), "m-1", "{data}");
            assert_eq!(read, parsed(&data));
        }
    }

    #[test]
    fn reasoning_text_is_a_hole_and_what_follows_it_moves() {
        // A reasoning model's stream: reasoning deltas (DeepSeek's shape,
        // and one with an empty text after the reasoning and the model
        // after the choices), then text.
        let deepseek = |reasoning: &str| {
            format!(
                r#"{{"id":"c1","object":"chat.completion.chunk","created":7,"model":"r-1","choices":[{{"index":0,"delta":{{"content":null,"reasoning_content":"{reasoning}"}},"logprobs":null,"finish_reason":null}}]}}"#
            )
        };
        let trailing = |reasoning: &str| {
            format!(
                r#"{{"choices":[{{"index":0,"delta":{{"reasoning":"{reasoning}","content":""}},"finish_reason":null}}],"model":"r-2","obfuscation":"K2"}}"#
            )
        };
        for (chunk, model) in [
            (&deepseek as &dyn Fn(&str) -> String, "r-1"),
            (&trailing, "r-2"),
        ] {
            let mut usual = UsualChunks::default();
            usual.read(chunk("First").into()).unwrap();
            let template = usual
                .text_chunk
                .as_ref()
                .expect("a reasoning chunk is a template");
            assert_eq!(template.hole, Hole::Reasoning);
            for reasoning in ["", "so", "ça, and a longer thought than the first"] {
                let data = chunk(reasoning);
                let facts =
                    remembered_read(&usual, &data).unwrap_or_else(|| panic!("not taken: {data}"));
                // An empty text after the reasoning keeps its place.
                if let Some(content) = facts.content {
                    let key = r#""content":""#;
                    let at = (data.find(key).unwrap() + key.len()) as u16;
                    assert_eq!((content.start, content.end), (at, at), "{data}");
                }
                let read = usual.read(data.clone().into()).unwrap();
                assert!(read.is_unparsed());
                assert_eq!(read.has_content(), !reasoning.is_empty(), "{data}");
                assert_eq!(read.text_ref(), "", "{data}");
                assert_eq!(read.model(), model, "{data}");
                assert!(read.is_unparsed());
                assert_eq!(read, parsed(&data));
            }
        }
        // The text after the reasoning is another hole: a new template.
        let mut usual = UsualChunks::default();
        usual.read(deepseek("First").into()).unwrap();
        let text = deepseek("x").replace(
            r#""content":null,"reasoning_content":"x""#,
            r#""content":"Hello","reasoning_content":null"#,
        );
        let read = usual.read(text.clone().into()).unwrap();
        assert_eq!(read.text_ref(), "Hello");
        assert_eq!(read, parsed(&text));
        assert_eq!(
            usual.text_chunk.as_ref().map(|t| t.hole),
            Some(Hole::Content)
        );
    }

    #[test]
    fn tool_call_arguments_are_a_hole() {
        // OpenAI's shape: the call's first fragment, then argument pieces,
        // most of them with escaped quotes, the usage null after them.
        let piece = |arguments: &str| {
            format!(
                r#"{{"id":"c1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":0,"function":{{"arguments":"{arguments}"}}}}]}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#
            )
        };
        let mut usual = UsualChunks::default();
        let first = piece("").replace(
            r#"{"index":0,"function":{"arguments":""}}"#,
            r#"{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}"#,
        );
        let read = usual.read(first.clone().into()).unwrap();
        assert!(read.has_tool_calls() && read.has_content());
        assert_eq!(read, parsed(&first));
        usual.read(piece(r#"{\""#).into()).unwrap();
        assert_eq!(
            usual.text_chunk.as_ref().map(|t| t.hole),
            Some(Hole::Arguments)
        );
        for arguments in [r#"city\":"#, r#" \"Paris\""#, "", "}"] {
            let data = piece(arguments);
            assert!(
                remembered_read(&usual, &data).is_some(),
                "not taken: {data}"
            );
            let read = usual.read(data.clone().into()).unwrap();
            assert!(read.is_unparsed());
            assert!(read.has_tool_calls() && read.has_content(), "{data}");
            assert_eq!(read.text_ref(), "");
            assert!(read.is_unparsed());
            assert_eq!(read, parsed(&data));
        }
        // A piece of another call is other bytes: read, and still a call.
        let other = piece("x").replace(r#""index":0,"function""#, r#""index":1,"function""#);
        let read = usual.read(other.clone().into()).unwrap();
        assert!(read.has_tool_calls());
        assert_eq!(read, parsed(&other));
    }

    #[test]
    fn a_last_string_value_is_a_second_place_a_text_chunk_may_differ() {
        let lead = LEAD.trim_end_matches('"');
        let chunk = |content: &str, pad: &str| {
            format!(
                r#"{lead}"choices":[{{"index":0,"delta":{{"content":"{content}"}},"finish_reason":null}}],"usage":null,"obfuscation":"{pad}"}}"#
            )
        };
        let mut usual = UsualChunks::default();
        usual.read(chunk("Hello", "K2").into()).unwrap();
        let taken = |usual: &UsualChunks, data: &str| {
            remembered_read(usual, data)
                .and_then(|facts| facts.content)
                .map(|span| (span.start, span.end))
        };
        let start = chunk("", "").find(r#""}"#).unwrap() as u16;
        for (content, pad) in [
            ("ça va", "p9xQm"),
            ("", ""),
            ("a", "K2"),
            ("a longer text", "z"),
            (r#"an \"escaped\"\ntext"#, "Qm"),
        ] {
            let data = chunk(content, pad);
            let end = start + content.len() as u16;
            assert_eq!(taken(&usual, &data), Some((start, end)), "{data}");
            let read = usual.read(data.clone().into()).unwrap();
            assert!(read.is_unparsed());
            assert_eq!(read.text_ref(), parsed(&data).text_ref());
            assert_eq!(read, parsed(&data));
        }
        // A pad with a quote, an escape or a control character, a text
        // with an unescaped quote;
        // another last key; no last member; another usage; other leading
        // bytes; a space before the closing brace.
        for other in [
            chunk("a", r#"b","x":"c"#),
            chunk("a", r"b\nc"),
            chunk("a", "b\u{1}c"),
            chunk(r#"a","x":"b"#, "K2"),
            chunk("a", "K2").replace("obfuscation", "padding"),
            chunk("a", "K2").replace(r#","obfuscation":"K2""#, ""),
            chunk("a", "K2").replace(r#""usage":null"#, r#""usage":{"total_tokens":1}"#),
            chunk("a", "K2").replace("chatcmpl-1", "chatcmpl-2"),
            chunk("a", "K2").replace(r#""K2"}"#, r#""K2" }"#),
        ] {
            assert_eq!(taken(&usual, &other), None, "taken: {other}");
        }
        // No second place where the chunk does not end in a plain string
        // value: a space around the colon, an escape in it, no string.
        for data in [
            r#"{"model":"m","choices":[{"index":0,"delta":{"content":"a"}}],"obfuscation" : "x"}"#,
            r#"{"model":"m","choices":[{"index":0,"delta":{"content":"a"}}],"obfuscation":"x\"y"}"#,
            r#"{"model":"m","choices":[{"index":0,"delta":{"content":"a"}}],"usage":null}"#,
        ] {
            let mut usual = UsualChunks::default();
            usual.read(data.to_owned().into()).unwrap();
            let template = usual.text_chunk.as_ref().expect("a text chunk");
            assert!(template.last_value.is_none(), "{data}");
        }
    }

    #[test]
    fn a_change_parses_the_chunk_and_its_answers_follow_the_fields() {
        let mut chunk = raw(TEXT);
        if let Some(choice) = chunk.choices.first_mut() {
            choice.delta.content = Some("changed".to_owned());
        }
        chunk.source.clear();
        assert!(!chunk.is_unparsed());
        assert_eq!(chunk.text_ref(), "changed");
        assert_eq!(chunk.source(), None);
        assert_eq!(chunk.model(), "up-1");
        assert_eq!(chunk.into_chat_chunk().created, 7);
    }

    #[test]
    fn a_parsed_chunk_answers_from_its_fields() {
        let chunk: StreamChunk = ChatChunk {
            model: "m".to_owned(),
            choices: vec![ChunkChoice {
                index: 1,
                delta: ChunkDelta {
                    content: Some("x".to_owned()),
                    ..ChunkDelta::default()
                },
                ..ChunkChoice::default()
            }],
            ..ChatChunk::default()
        }
        .into();
        assert!(chunk.has_content());
        assert!(chunk.is_multi_choice());
        assert_eq!(chunk.source(), None);
        assert!(!chunk.is_unparsed());
        assert_eq!(chunk.clone(), chunk);
    }
}
