//! Sends `POST /v1/chat/completions` straight to its handler and every other request through the axum router.
//!
//! The chat route carries most of a gateway's traffic. Through the router
//! each of its requests also pays for path matching, the URL-parameter
//! extension, the boxed route future and the layers wrapped around every
//! route. The direct path runs what the router runs for this route, in the
//! same order: the `/v1` client check (key, then `client_rpm_limit`) when
//! it is on, the body limit (`server.max_body_bytes`, 413), a body that
//! stopped arriving (408), then the same handler code
//! ([`routes::chat::answer`]). With the response cache on, the cache's
//! middleware sits in front of the route, so the chat route goes through
//! the router like everything else.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::{Bytes, HttpBody};
use axum::http::{Method, Request};
use axum::response::Response;
use futures_util::FutureExt;
use futures_util::future::Either;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::app::{AppState, client_gate_on, gate_client};
use crate::error::{ApiError, Shape};
use crate::routes::{self, RequestMeta};

/// The path served directly.
const CHAT_PATH: &str = "/v1/chat/completions";

/// What a connection calls for each request.
#[derive(Clone)]
pub(crate) struct Dispatch {
    router: Router,
    chat: Option<DirectChat>,
    /// Requests being answered, on every connection.
    in_flight: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct DirectChat {
    state: AppState,
    /// Whether the `/v1` client-key layer is on.
    gate: bool,
}

impl Dispatch {
    /// Dispatch for `state`, whose router is `router`.
    pub(crate) fn new(state: &AppState, router: Router) -> Self {
        let chat = (!state.response_cache.is_enabled()).then(|| DirectChat {
            state: state.clone(),
            gate: client_gate_on(state),
        });
        Self {
            router,
            chat,
            in_flight: Arc::default(),
        }
    }

    /// The response to `request`.
    pub(crate) fn call<B>(
        &self,
        request: Request<B>,
    ) -> impl Future<Output = Result<Response, Infallible>> + Send + 'static + use<B>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let in_flight = InFlight::enter(&self.in_flight);
        let answer = match &self.chat {
            Some(chat) if request.method() == Method::POST && request.uri().path() == CHAT_PATH => {
                Either::Left(direct_chat(chat.clone(), request).map(Ok))
            }
            // A Router is always ready, so it is called without `poll_ready`.
            _ => Either::Right(tower_service::Service::call(
                &mut self.router.clone(),
                request,
            )),
        };
        // Combinators rather than async blocks around `answer`: a block
        // that awaits a captured future holds it twice (captured and
        // awaited), and hyper moves this future into place with its size.
        answer.then(move |response| {
            let others = in_flight.leave();
            async move {
                if others > 0 && response.as_ref().is_ok_and(waits_for_the_batch) {
                    tokio::task::yield_now().await;
                }
                response
            }
        })
    }
}

/// One request counted in [`Dispatch`]'s requests in flight until it is
/// answered or dropped unanswered.
struct InFlight {
    count: Arc<AtomicUsize>,
}

impl InFlight {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self {
            count: Arc::clone(count),
        }
    }

    /// Counts the request out; how many others are still being answered.
    fn leave(self) -> usize {
        // `self` drops here, after the read: the others are the rest.
        self.count.load(Ordering::Relaxed).saturating_sub(1)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether a response waits, with one yield, for the connections whose
/// requests are ready to run before it is written, so that responses
/// leave in bursts. A loopback write wakes its reader when the reader
/// sleeps, and the waking costs the writer: written one by one, with a
/// handler's work between two of them, each response woke the bench's
/// client anew. With this one yield a plain request through the gateway
/// woke a local peer 0.26 times instead of 0.39, and took 9.0 instead of
/// 10.6 µs of system time and 9.3 instead of 10.3 µs of user time (wrk,
/// 64 connections, one core); head to head it served 5-12% more requests
/// a second. A response waits only while other requests are being
/// answered: alone, there is nothing to wait for, and the yield cost one
/// more scheduler turn (an `epoll_wait` a request) before each answer
/// left. Only a response whose body is complete waits: a
/// stream's head did not gain from it, and its chunks cost 2.3 µs more
/// user time a request.
fn waits_for_the_batch(response: &Response) -> bool {
    response.body().size_hint().exact().is_some()
}

/// The chat route's response. The head is read before the future starts,
/// so the future holds only what the body read and the handler need.
fn direct_chat<B>(
    chat: DirectChat,
    mut request: Request<B>,
) -> impl Future<Output = Response> + Send + 'static
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    if chat.gate {
        if let Err(refused) = gate_client(&chat.state, &mut request) {
            return Either::Left(std::future::ready(refused));
        }
    }
    let (parts, body) = request.into_parts();
    let meta = RequestMeta::from_headers(&parts.headers);
    Either::Right(async move {
        let limit = chat.state.server.max_body_bytes;
        let body = match Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(error) if error.is::<LengthLimitError>() => {
                Err(ApiError::too_large(limit).with_shape(Shape::OpenAi))
            }
            Err(error) => Err(routes::unread_body(
                &*error,
                &format!("Failed to buffer the request body: {error}"),
                Shape::OpenAi,
            )),
        };
        routes::chat::answer(chat.state, meta, body).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_counts_as_in_flight_until_answered_or_dropped() {
        let count = Arc::new(AtomicUsize::new(0));
        let first = InFlight::enter(&count);
        assert_eq!(first.leave(), 0, "alone: no other request");
        assert_eq!(count.load(Ordering::SeqCst), 0);

        let first = InFlight::enter(&count);
        let second = InFlight::enter(&count);
        let third = InFlight::enter(&count);
        assert_eq!(second.leave(), 2);
        drop(third);
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert_eq!(first.leave(), 0);
        assert_eq!(count.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_complete_answer_waits_one_turn_only_while_others_are_answered() {
        let dispatch = Dispatch {
            router: Router::new().route("/ok", axum::routing::get(|| async { "ok" })),
            chat: None,
            in_flight: Arc::default(),
        };
        let request = || Request::get("/ok").body(axum::body::Body::empty()).unwrap();
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);

        let mut alone = std::pin::pin!(dispatch.call(request()));
        assert!(
            alone.as_mut().poll(&mut cx).is_ready(),
            "alone: answered at once"
        );

        let other = InFlight::enter(&dispatch.in_flight);
        let mut batched = std::pin::pin!(dispatch.call(request()));
        assert!(
            batched.as_mut().poll(&mut cx).is_pending(),
            "one turn for the others"
        );
        let std::task::Poll::Ready(Ok(response)) = batched.as_mut().poll(&mut cx) else {
            panic!("answered on the next turn");
        };
        assert_eq!(response.status(), 200);
        drop(other);
        assert_eq!(dispatch.in_flight.load(Ordering::SeqCst), 0);
    }
}
