//! `xtask-harness floor-proxy`: the bench's Rust floor, a bare hyper reverse proxy with no gateway logic.
//!
//! What any Rust gateway on hyper pays before doing anything: hyper's
//! HTTP/1 server, its pooled client (one connection per upstream
//! request in flight, kept alive), `TCP_NODELAY` both ways, and tokio's
//! single-thread scheduler (what switchyard runs with one worker). The
//! request and the response bodies stream through untouched; only the
//! URI is pointed at the upstream.

use hyper::body::Incoming;
use hyper::http::uri::{Authority, Scheme, Uri};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Proxies `127.0.0.1:listen` to `127.0.0.1:upstream` until killed.
pub fn run(listen: u16, upstream: u16) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start tokio: {e}"))?;
    runtime.block_on(serve(listen, upstream))
}

async fn serve(listen: u16, upstream: u16) -> Result<(), String> {
    let listener = TcpListener::bind(("127.0.0.1", listen))
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let authority: Authority = format!("127.0.0.1:{upstream}")
        .parse()
        .map_err(|e| format!("bad upstream port: {e}"))?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    loop {
        let (connection, _) = listener
            .accept()
            .await
            .map_err(|e| format!("accept: {e}"))?;
        let _ = connection.set_nodelay(true);
        let client = client.clone();
        let authority = authority.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                forward(client.clone(), authority.clone(), request)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(connection), service)
                .await;
        });
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Sends `request` to the upstream and answers with its response as is.
async fn forward(
    client: Client<HttpConnector, Incoming>,
    authority: Authority,
    mut request: Request<Incoming>,
) -> Result<Response<Incoming>, BoxError> {
    let mut parts = request.uri().clone().into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    *request.uri_mut() = Uri::from_parts(parts)?;
    Ok(client.request(request).await?)
}
