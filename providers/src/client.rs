//! The upstream HTTP client: hyper's HTTP/1 connections pooled per plain-HTTP host, hyper-util's pooled client with rustls for TLS, plus the small request/response types adapters use.
//!
//! Built straight on hyper rather than reqwest: a gateway sends every
//! request to a known, pre-parsed URL and never follows redirects or
//! proxies, so reqwest's per-request layers (redirect policy, proxy
//! matching, URL conversion, connector clones) were pure overhead — about
//! 12 µs a request on the bench machine. Plain `http://` upstreams go
//! through the `pool` module, which does less per request than hyper-util's
//! pool; `https://` ones through hyper-util's client, for ALPN and HTTP/2.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use switchyard_core::ConfigError;

use crate::http::HttpOptions;
use crate::pool::{HostAddress, HostPool, HostPools, Lent};

/// hyper-util's pooled client, for TLS upstreams (HTTP/1.1, and HTTP/2
/// when ALPN negotiates it).
type TlsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The client every provider of a factory shares: one pool of
/// connections per upstream host, whichever provider opened them.
#[derive(Clone)]
pub struct HttpClient {
    tls: TlsClient,
    plain: Arc<HostPools>,
    options: HttpOptions,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// How requests to `url` travel: the host's HTTP/1 pool for `http://`,
    /// the TLS client otherwise.
    pub(crate) fn transport(&self, url: &url::Url) -> Transport {
        match HostAddress::of(url) {
            Some(address) => Transport::Plain(self.plain.get(address, &self.options)),
            None => Transport::Tls(Box::new(self.tls.clone())),
        }
    }
}

/// How one provider's requests reach its upstream.
#[derive(Clone)]
pub(crate) enum Transport {
    /// A plain-HTTP host's pool; requests carry origin-form URIs and an
    /// explicit `Host`.
    Plain(Arc<HostPool>),
    /// hyper-util's client; requests carry absolute URIs.
    Tls(Box<TlsClient>),
}

/// Builds the shared client: TCP_NODELAY, keep-alive, connect timeout,
/// rustls with the platform's roots, ALPN for HTTP/2. It never follows
/// redirects (hyper has no such layer); a 3xx reaches the caller.
pub fn build(settings: &HttpOptions) -> Result<HttpClient, ConfigError> {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(settings.connect_timeout));
    tcp.set_keepalive(Some(settings.tcp_keepalive));
    let tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_platform_verifier(rustls::crypto::aws_lc_rs::default_provider())
        .map_err(|e| ConfigError::single("type", format!("cannot set up TLS: {e}")))?
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(tcp);
    let tls = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(settings.pool_idle_timeout)
        .pool_max_idle_per_host(settings.pool_max_idle_per_host)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(tls);
    Ok(HttpClient {
        tls,
        plain: Arc::new(HostPools::default()),
        options: settings.clone(),
    })
}

/// A request to an upstream, built by [`crate::http::Upstream::request`].
#[derive(Debug)]
pub struct UpstreamRequest {
    /// Boxed: the request travels by value through the nested futures of
    /// a send (the adapter's, the timeout's, the pool's), and an async fn
    /// keeps each argument twice (as captured and as moved in), so 256
    /// bytes inline grew each of those futures by about 512 and were
    /// copied with them: 3.9 kB for `send_and_read` alone.
    pub(crate) inner: Result<Box<Request<Full<Bytes>>>, String>,
}

impl UpstreamRequest {
    pub(crate) fn new(method: Method, uri: Result<Uri, String>, headers: HeaderMap) -> Self {
        let inner = uri.map(|uri| {
            let mut request = Request::new(Full::new(Bytes::new()));
            *request.method_mut() = method;
            *request.uri_mut() = uri;
            *request.headers_mut() = headers;
            Box::new(request)
        });
        Self { inner }
    }

    /// Sets a header (replacing one of the same name).
    #[must_use]
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        if let Ok(request) = &mut self.inner {
            request.headers_mut().insert(name, value);
        }
        self
    }

    /// Sets the body.
    #[must_use]
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        if let Ok(request) = &mut self.inner {
            *request.body_mut() = Full::new(body.into());
        }
        self
    }

    /// The headers the request will carry (tests and debugging).
    pub fn headers(&self) -> Option<&HeaderMap> {
        self.inner.as_ref().ok().map(|request| request.headers())
    }

    /// Sends it over `transport`.
    pub(crate) async fn send(
        self,
        transport: &Transport,
    ) -> Result<UpstreamResponse, TransportError> {
        let request = self.inner.map_err(TransportError::connect)?;
        match transport {
            Transport::Plain(pool) => {
                let (response, lent) = pool.send(request).await?;
                Ok(UpstreamResponse::new(response, Some(lent)))
            }
            Transport::Tls(client) => client
                .request(*request)
                .await
                .map(|response| UpstreamResponse::new(response, None))
                .map_err(TransportError::from),
        }
    }
}

/// An upstream's response: status and headers in hand, body still unread.
/// A pooled plain-HTTP connection goes back to its pool when the body has
/// been read to its end.
#[derive(Debug)]
pub struct UpstreamResponse {
    head: http::response::Parts,
    // `None` once handed to `bytes_stream`.
    body: Option<Incoming>,
    lent: Option<Lent>,
}

impl Drop for UpstreamResponse {
    fn drop(&mut self) {
        // A body with nothing left to read (read whole, or empty) leaves
        // the connection reusable even when nobody asked for its end.
        if self.body.as_ref().is_some_and(Incoming::is_end_stream)
            && let Some(lent) = self.lent.take()
        {
            lent.give_back();
        }
    }
}

impl UpstreamResponse {
    fn new(response: Response<Incoming>, lent: Option<Lent>) -> Self {
        let (head, body) = response.into_parts();
        Self {
            head,
            body: Some(body),
            lent,
        }
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.head.status
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.head.headers
    }

    /// The whole body. Nearly every answer arrives in one frame, which is
    /// handed on as it is, without a queue of frames to gather first.
    pub async fn bytes(mut self) -> Result<Bytes, TransportError> {
        let Some(first) = self.chunk().await? else {
            return Ok(Bytes::new());
        };
        let Some(second) = self.chunk().await? else {
            return Ok(first);
        };
        let mut whole = BytesMut::with_capacity(first.len() + second.len());
        whole.extend_from_slice(&first);
        whole.extend_from_slice(&second);
        while let Some(more) = self.chunk().await? {
            whole.extend_from_slice(&more);
        }
        Ok(whole.freeze())
    }

    /// The next chunk of the body, `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, TransportError> {
        let Some(body) = self.body.as_mut() else {
            return Ok(None);
        };
        let lent = &mut self.lent;
        std::future::poll_fn(|cx| poll_data(body, lent, cx))
            .await
            .transpose()
    }

    /// The body as a stream of chunks.
    pub fn bytes_stream(mut self) -> impl Stream<Item = Result<Bytes, TransportError>> + Send {
        BodyChunks {
            body: self.body.take(),
            lent: self.lent.take(),
        }
    }
}

/// A response body as a stream of its data chunks, giving the connection
/// back at the end.
struct BodyChunks {
    body: Option<Incoming>,
    lent: Option<Lent>,
}

impl Stream for BodyChunks {
    type Item = Result<Bytes, TransportError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.body.as_mut() {
            Some(body) => poll_data(body, &mut this.lent, cx),
            None => Poll::Ready(None),
        }
    }
}

/// The next data chunk of `body` (trailers skipped), giving the lent
/// connection back at the body's end.
fn poll_data(
    body: &mut Incoming,
    lent: &mut Option<Lent>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Bytes, TransportError>>> {
    loop {
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                if let Some(lent) = lent.take() {
                    lent.give_back();
                }
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    return Poll::Ready(Some(Ok(data)));
                }
            }
        }
    }
}

/// A failure to reach the upstream or to read its answer: `connect` when
/// no connection was made (refused, DNS, TLS, connect timeout).
#[derive(Debug)]
pub struct TransportError {
    connect: bool,
    message: String,
}

impl TransportError {
    /// A failure to make a connection.
    pub(crate) fn connect(message: String) -> Self {
        Self {
            connect: true,
            message,
        }
    }

    /// Whether no connection was made.
    pub fn is_connect(&self) -> bool {
        self.connect
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TransportError {}

/// The error and its causes, each once (hyper nests "connection error"
/// around "connection reset by peer" and the like).
fn chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

impl From<hyper_util::client::legacy::Error> for TransportError {
    fn from(error: hyper_util::client::legacy::Error) -> Self {
        Self {
            connect: error.is_connect(),
            message: chain(&error),
        }
    }
}

impl From<hyper::Error> for TransportError {
    fn from(error: hyper::Error) -> Self {
        Self {
            connect: false,
            message: chain(&error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unparsable_url_fails_at_send_as_a_connect_error() {
        let request =
            UpstreamRequest::new(Method::GET, Err("bad url".to_owned()), HeaderMap::new());
        assert!(request.headers().is_none());
        let client = build(&HttpOptions::default()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let transport = client.transport(&url::Url::parse("http://127.0.0.1:9/").unwrap());
        let error = runtime.block_on(request.send(&transport)).unwrap_err();
        assert!(error.is_connect());
        assert_eq!(error.to_string(), "bad url");
    }
}
