//! Server-sent events out: the response headers of a stream, and the upstream-time probe on a stream's first item.
//!
//! Handlers turn a stream of already-framed SSE text (`data: ...\n\n`,
//! `event: ...\ndata: ...\n\n`) into a response with [`response`]. Headers
//! are committed only when the handler builds the response, which it does
//! after the manager returned the first content (SPEC §5).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::{BufMut, BytesMut};
use futures_core::Stream;
use futures_util::StreamExt;

use crate::routes::UpstreamSpan;

/// The headers a streamed answer carries (see [`response`]).
const STREAM_HEADERS: usize = 7;

/// A `200 text/event-stream` response over `events`.
pub fn response<S, T>(events: S) -> Response
where
    S: Stream<Item = T> + Send + 'static,
    T: Into<Bytes>,
{
    // Built once: a `&str` name is parsed and validated on every insert.
    static ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");
    let body = Body::from_stream(events.map(|text| Ok::<Bytes, Infallible>(text.into())));
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    // Room for these three, the `x-switchyard-*` three and the request id:
    // an empty map first takes room for six, and the seventh regrew it.
    let headers = response.headers_mut();
    *headers = HeaderMap::with_capacity(STREAM_HEADERS);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(ACCEL_BUFFERING.clone(), HeaderValue::from_static("no"));
    response
}

/// Appends `data: <value as JSON>\n\n` to `out`; on error `out` is as it was.
pub fn put_json_data<T: serde::Serialize>(out: &mut BytesMut, value: &T) -> serde_json::Result<()> {
    let start = out.len();
    out.extend_from_slice(b"data: ");
    if let Err(error) = serde_json::to_writer((&mut *out).writer(), value) {
        out.truncate(start);
        return Err(error);
    }
    out.extend_from_slice(b"\n\n");
    Ok(())
}

/// Appends `data: <data>\n\n` for event data that is already one line of JSON.
pub fn put_data(out: &mut BytesMut, data: &[u8]) {
    out.reserve(data.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
}

/// [`put_data`] of data that is `parts` joined.
pub fn put_data_parts(out: &mut BytesMut, parts: &[&[u8]]) {
    out.reserve(parts.iter().map(|part| part.len()).sum::<usize>() + 8);
    out.extend_from_slice(b"data: ");
    for part in parts {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(b"\n\n");
}

/// Events ready together go out as one body frame, up to this size: each
/// frame costs a chunk header and a trip through the body layers, and one
/// upstream read usually holds several events.
pub const COALESCE_BYTES: usize = 16 * 1024;

/// The block frames are carved from: room for a few events, so appending
/// them does not grow a buffer step by step.
const FRAME_BLOCK_BYTES: usize = 2 * 1024;

/// Below this much room left in the block, the next frame starts a new one.
const FRAME_MIN_ROOM_BYTES: usize = 512;

/// A source of SSE events that writes each one straight into a body frame.
pub trait EventWriter {
    /// Appends the next event to `out` (`Ready(true)`), reports the end
    /// (`Ready(false)`) or that nothing is ready.
    fn poll_event(&mut self, cx: &mut Context<'_>, out: &mut BytesMut) -> Poll<bool>;
}

/// The body frames of an [`EventWriter`]. Every event ready now is taken
/// into the frame, and nothing waits to be joined: a frame goes out as
/// soon as no other event is ready. Frames are carved one after another
/// from a block of memory rather than each allocated and grown; a new
/// block reuses the old one when its frames have all been written.
pub struct Frames<W> {
    writer: W,
    buffer: BytesMut,
}

impl<W> Frames<W> {
    /// Frames of `writer`'s events.
    pub fn new(writer: W) -> Self {
        Self {
            writer,
            buffer: BytesMut::new(),
        }
    }
}

impl<W: EventWriter + Unpin> Stream for Frames<W> {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let Self { writer, buffer } = &mut *self;
        if buffer.capacity() - buffer.len() < FRAME_MIN_ROOM_BYTES {
            buffer.reserve(FRAME_BLOCK_BYTES);
        }
        let mut ended = false;
        while buffer.len() < COALESCE_BYTES {
            match writer.poll_event(cx, buffer) {
                Poll::Ready(true) => {}
                Poll::Ready(false) => {
                    ended = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        if !buffer.is_empty() {
            Poll::Ready(Some(buffer.split().freeze()))
        } else if ended {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

/// `event: <name>\ndata: <json>\n\n` (`data:` alone when there is no name).
pub fn event(name: Option<&str>, data: &str) -> String {
    let mut out = BytesMut::with_capacity(data.len() + 32);
    put_event(&mut out, name, data);
    String::from_utf8_lossy(&out).into_owned()
}

/// Appends [`event`]'s text to `out`, for writers that build body frames.
pub fn put_event(out: &mut BytesMut, name: Option<&str>, data: &str) {
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.put_u8(b'\n');
    }
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
}

/// The OpenAI stream terminator.
pub const DONE: &str = "data: [DONE]\n\n";

/// Wraps a stream so that the time until its first item counts as upstream
/// time (the span is dropped, adding its duration, at the first item).
pub struct UntilFirstItem<S> {
    inner: S,
    span: Option<UpstreamSpan<'static>>,
}

impl<S> UntilFirstItem<S> {
    /// Times `inner` until its first item with `span`.
    pub fn new(inner: S, span: UpstreamSpan<'static>) -> Self {
        Self {
            inner,
            span: Some(span),
        }
    }
}

impl<S: Stream + Unpin> Stream for UntilFirstItem<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.poll_next_unpin(cx);
        if polled.is_ready() {
            self.span = None;
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// Writes the events in `ready`, then is `Pending` until more are
    /// added, and ends once `ended` is set and none are left.
    struct Script {
        ready: Vec<&'static str>,
        ended: bool,
    }

    impl EventWriter for Script {
        fn poll_event(&mut self, _: &mut Context<'_>, out: &mut BytesMut) -> Poll<bool> {
            if self.ready.is_empty() {
                return if self.ended {
                    Poll::Ready(false)
                } else {
                    Poll::Pending
                };
            }
            put_data(out, self.ready.remove(0).as_bytes());
            Poll::Ready(true)
        }
    }

    #[test]
    fn events_ready_together_leave_as_one_frame_carved_from_one_block() {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut frames = Frames::new(Script {
            ready: vec!["1", "2", "3"],
            ended: false,
        });
        let Poll::Ready(Some(first)) = Pin::new(&mut frames).poll_next(&mut cx) else {
            panic!("three ready events make a frame");
        };
        assert_eq!(&first[..], b"data: 1\n\ndata: 2\n\ndata: 3\n\n");
        assert!(Pin::new(&mut frames).poll_next(&mut cx).is_pending());
        // The next frame follows the first in the same block.
        frames.writer.ready.push("4");
        frames.writer.ended = true;
        let Poll::Ready(Some(second)) = Pin::new(&mut frames).poll_next(&mut cx) else {
            panic!("a frame with the last event");
        };
        assert_eq!(&second[..], b"data: 4\n\n");
        assert_eq!(second.as_ptr(), first[first.len()..].as_ptr());
        assert_eq!(Pin::new(&mut frames).poll_next(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn framing() {
        let mut out = BytesMut::new();
        put_json_data(&mut out, &serde_json::json!({"a": 1})).unwrap();
        put_data(&mut out, b"{}");
        assert_eq!(&out[..], b"data: {\"a\":1}\n\ndata: {}\n\n");
        // A value that cannot be serialised leaves the buffer as it was.
        let mut map = std::collections::HashMap::new();
        map.insert((1, 2), 3);
        assert!(put_json_data(&mut out, &map).is_err());
        assert_eq!(&out[..], b"data: {\"a\":1}\n\ndata: {}\n\n");
        assert_eq!(event(Some("ping"), "{}"), "event: ping\ndata: {}\n\n");
        assert_eq!(event(None, "a\nb"), "data: a\ndata: b\n\n");
    }

    #[tokio::test]
    async fn headers_are_those_of_an_event_stream() {
        let response = response(futures_util::stream::iter(vec![Bytes::from_static(
            b"data: {}\n\n",
        )]));
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-cache");
    }
}
