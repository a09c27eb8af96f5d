//! Accepts client connections and serves HTTP/1.1 on them with the limits a public listener needs.
//!
//! Built on hyper's connection builder rather than `axum::serve` because
//! axum's loop sets no timer: a client that sends half a request head, or
//! opens connections and sends nothing, held them open forever
//! (slowloris). Here every connection gets `server.header_read_timeout`
//! to deliver each request head, the idle wait between keep-alive requests
//! included, as nginx's `client_header_timeout` and `keepalive_timeout` do.
//! A request body gets `server.body_read_timeout` between two of its
//! parts (nginx's `client_body_timeout`): a body that stops arriving fails
//! the read, and the handler answers 408 ([`BodyStalled`]).
//! Shutdown stops accepting, lets each connection finish the request it
//! is serving and closes the idle ones at once.

use std::{
    collections::HashMap,
    future::Future,
    io,
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker, ready},
    time::Duration,
};

use axum::body::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::dispatch::Dispatch;

/// How long a client may pause while sending a request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientLimits {
    /// For each request head, from when the server starts waiting for it.
    pub header_read: Duration,
    /// Between two parts of a request body.
    pub body_read: Duration,
}

/// Serves `dispatch` on every connection `listener` accepts until `shutdown`
/// completes, then waits for the open connections to finish their
/// in-flight requests.
pub(crate) async fn serve<F>(
    listener: TcpListener,
    dispatch: Dispatch,
    limits: ClientLimits,
    shutdown: F,
) where
    F: Future<Output = ()>,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read);
    let open = Arc::new(OpenConnections::default());
    tokio::pin!(shutdown);
    loop {
        let connection = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let connection = match connection {
            Ok((connection, _peer)) => connection,
            Err(error) => {
                pause_after_accept_error(error).await;
                continue;
            }
        };
        set_nodelay(&connection);
        let dispatch = dispatch.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            dispatch.call(request.map(|body| PacedBody::new(body, limits.body_read)))
        });
        let connection = http.serve_connection(TokioIo::new(connection), service);
        let entry = OpenConnections::enter(&open);
        tokio::spawn(async move {
            if let Err(error) = entry.serve(connection).await {
                tracing::debug!(%error, "client connection ended with an error");
            }
        });
    }
    drop(listener);
    open.close_all().await;
}

/// The open connections, told to finish at shutdown. Each checks one flag
/// when polled and registers its task's waker only when the waker
/// changes (once, for a tokio task). hyper-util's `GracefulShutdown`,
/// used before, polled a `watch` channel on every poll of every
/// connection, which locks the channel's waiter list: about 350
/// instructions a plain request (callgrind).
#[derive(Default)]
struct OpenConnections {
    closing: AtomicBool,
    count: AtomicUsize,
    next_id: AtomicU64,
    wakers: Mutex<HashMap<u64, Waker>>,
    all_closed: Notify,
}

/// One open connection's place in [`OpenConnections`], left on drop.
struct Entry {
    open: Arc<OpenConnections>,
    id: u64,
}

impl OpenConnections {
    /// Counts a connection in (before its task starts, so that a
    /// shutdown waits for it).
    fn enter(open: &Arc<Self>) -> Entry {
        open.count.fetch_add(1, Ordering::AcqRel);
        Entry {
            open: Arc::clone(open),
            id: open.next_id.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Tells every connection to finish (an idle one closes at once, a
    /// busy one after its response) and waits until all have.
    async fn close_all(&self) {
        self.closing.store(true, Ordering::Release);
        let wakers: Vec<Waker> = self.wakers.lock().drain().map(|(_, waker)| waker).collect();
        for waker in wakers {
            waker.wake();
        }
        loop {
            let mut closed = pin!(self.all_closed.notified());
            closed.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            closed.await;
        }
    }
}

impl Entry {
    /// Serves `connection` until it ends, shutting it down gracefully once
    /// the server closes. Boxed and polled from a closure: an async fn
    /// would hold the connection twice (see `routes::chat::answer`).
    fn serve<C>(self, connection: C) -> impl Future<Output = Result<(), hyper::Error>>
    where
        C: Future<Output = Result<(), hyper::Error>> + GracefulShutdownable,
    {
        let mut connection = Box::pin(connection);
        let mut registered: Option<Waker> = None;
        let mut draining = false;
        std::future::poll_fn(move |cx| {
            if !draining {
                if !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    let waker = cx.waker().clone();
                    self.open.wakers.lock().insert(self.id, waker.clone());
                    registered = Some(waker);
                }
                // Read after registering: a shutdown that began meanwhile
                // either woke the waker just stored or is seen here.
                if self.open.closing.load(Ordering::Acquire) {
                    connection.as_mut().shut_down_gracefully();
                    draining = true;
                }
            }
            connection.as_mut().poll(cx)
        })
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.open.wakers.lock().remove(&self.id);
        if self.open.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.open.all_closed.notify_waiters();
        }
    }
}

/// A connection that can be told to finish its in-flight request and close.
trait GracefulShutdownable {
    fn shut_down_gracefully(self: Pin<&mut Self>);
}

impl<I, S, B> GracefulShutdownable for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shut_down_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Nagle's algorithm off, as nginx (`tcp_nodelay`) and Envoy do: a stream
/// writes one small event at a time, and with Nagle on an event written
/// while the previous one waits for its (delayed) ACK is held back up to
/// 40 ms.
fn set_nodelay(connection: &TcpStream) {
    if let Err(error) = connection.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY on a connection");
    }
}

/// A connection that failed between the kernel's accept and ours is the
/// client's business; anything else (out of file descriptors, most often)
/// would fail again at once, so the loop waits a second before retrying
/// instead of spinning a core.
async fn pause_after_accept_error(error: io::Error) {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The error a request body read fails with when no part of the body
/// arrived for `server.body_read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("no part of the request body arrived for {0:?}")]
pub struct BodyStalled(pub Duration);

impl BodyStalled {
    /// The stall that caused `error`, if any error in its source chain is one.
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Self> {
        std::iter::successors(Some(error), |error| error.source())
            .find_map(|error| error.downcast_ref::<Self>())
    }
}

/// A request body that fails with [`BodyStalled`] when it pauses longer
/// than `limit` between two frames. The timer is armed only when the body
/// has nothing ready, so a body that arrives with its head (nearly every
/// API request) never touches the timer wheel.
struct PacedBody<B> {
    body: B,
    limit: Duration,
    /// Kept between pauses so a slow upload allocates it once.
    pause: Option<Pin<Box<Sleep>>>,
    pausing: bool,
}

impl<B> PacedBody<B> {
    fn new(body: B, limit: Duration) -> Self {
        Self {
            body,
            limit,
            pause: None,
            pausing: false,
        }
    }
}

impl<B> Body for PacedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            this.pausing = false;
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let deadline = Instant::now() + this.limit;
        let pause = match &mut this.pause {
            Some(pause) if this.pausing => pause,
            Some(pause) => {
                pause.as_mut().reset(deadline);
                pause
            }
            None => this
                .pause
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        this.pausing = true;
        ready!(pause.as_mut().poll(cx));
        Poll::Ready(Some(Err(Box::new(BodyStalled(this.limit)))))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// A connection that ends once told to shut down, and not before
    /// `busy` is cleared (its in-flight request answered).
    struct FakeConnection {
        told: Arc<AtomicBool>,
        busy: Arc<AtomicBool>,
        wake: Arc<futures_util::task::AtomicWaker>,
    }

    impl Future for FakeConnection {
        type Output = Result<(), hyper::Error>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            self.wake.register(cx.waker());
            if self.told.load(Ordering::SeqCst) && !self.busy.load(Ordering::SeqCst) {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
    }

    impl GracefulShutdownable for FakeConnection {
        fn shut_down_gracefully(self: Pin<&mut Self>) {
            self.told.store(true, Ordering::SeqCst);
        }
    }

    fn fake(busy: bool) -> (FakeConnection, Arc<AtomicBool>, Arc<AtomicBool>) {
        let told = Arc::new(AtomicBool::new(false));
        let busy = Arc::new(AtomicBool::new(busy));
        let connection = FakeConnection {
            told: Arc::clone(&told),
            busy: Arc::clone(&busy),
            wake: Arc::default(),
        };
        (connection, told, busy)
    }

    #[tokio::test]
    async fn closing_ends_idle_connections_at_once_and_waits_for_busy_ones() {
        let open = Arc::new(OpenConnections::default());
        let (idle, idle_told, _) = fake(false);
        let (busy, busy_told, busy_flag) = fake(true);
        let wake_busy = Arc::clone(&busy.wake);
        let idle_task = tokio::spawn(OpenConnections::enter(&open).serve(idle));
        let busy_task = tokio::spawn(OpenConnections::enter(&open).serve(busy));
        // Both run until they wait, registered.
        tokio::task::yield_now().await;
        assert!(!idle_told.load(Ordering::SeqCst));
        assert_eq!(open.count.load(Ordering::SeqCst), 2);

        let closing = {
            let open = Arc::clone(&open);
            tokio::spawn(async move { open.close_all().await })
        };
        idle_task.await.unwrap().unwrap();
        tokio::task::yield_now().await;
        assert!(idle_told.load(Ordering::SeqCst) && busy_told.load(Ordering::SeqCst));
        assert!(!closing.is_finished(), "a busy connection is waited for");
        assert_eq!(open.count.load(Ordering::SeqCst), 1);

        busy_flag.store(false, Ordering::SeqCst);
        wake_busy.wake();
        busy_task.await.unwrap().unwrap();
        closing.await.unwrap();
        assert_eq!(open.count.load(Ordering::SeqCst), 0);
        assert!(open.wakers.lock().is_empty());
    }

    #[tokio::test]
    async fn a_connection_opened_while_closing_is_told_at_its_first_poll() {
        let open = Arc::new(OpenConnections::default());
        open.closing.store(true, Ordering::SeqCst);
        let (connection, told, _) = fake(false);
        OpenConnections::enter(&open)
            .serve(connection)
            .await
            .unwrap();
        assert!(told.load(Ordering::SeqCst));
        open.close_all().await;
    }

    #[tokio::test]
    async fn accepted_connections_send_without_delay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (connection, _) = listener.accept().await.unwrap();
        assert!(
            !connection.nodelay().unwrap(),
            "the kernel default, for contrast"
        );
        set_nodelay(&connection);
        assert!(connection.nodelay().unwrap());
    }

    /// The bytes of a body whose parts come `gaps` apart, read through a
    /// [`PacedBody`] with a 500 ms limit.
    async fn read_paced(gaps: &[u64]) -> Result<Bytes, axum::Error> {
        let parts: Vec<u64> = gaps.to_vec();
        let stream = futures_util::stream::unfold(parts.into_iter(), |mut gaps| async move {
            let gap = gaps.next()?;
            tokio::time::sleep(Duration::from_millis(gap)).await;
            Some((Ok::<_, std::io::Error>(Bytes::from_static(b"part;")), gaps))
        });
        let body = axum::body::Body::from_stream(stream);
        let paced = PacedBody::new(body, Duration::from_millis(500));
        axum::body::to_bytes(axum::body::Body::new(paced), usize::MAX).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_may_take_any_time_in_all_but_not_pause_past_the_limit() {
        // 1.6 s in all, never 500 ms without a part: read whole.
        let bytes = read_paced(&[0, 400, 400, 400, 400]).await.unwrap();
        assert_eq!(&bytes[..], b"part;part;part;part;part;");
        // One pause of 600 ms: the read fails with the stall.
        let error = read_paced(&[0, 400, 600]).await.unwrap_err();
        let stall = BodyStalled::find(&error).expect("a BodyStalled in the chain");
        assert_eq!(stall.0, Duration::from_millis(500));
    }
}
