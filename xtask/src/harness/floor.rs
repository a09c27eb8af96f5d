//! `xtask-harness floor-proxy`: the bench's Rust floor, a bare hyper reverse proxy with no gateway logic.
//!
//! What any Rust gateway on hyper pays before doing anything: hyper's
//! HTTP/1 server and client, `TCP_NODELAY` both ways, and tokio's
//! single-thread scheduler (what switchyard runs with one worker). Each
//! client connection gets one kept-alive upstream connection of its own,
//! opened on its first request: HTTP/1 answers one request at a time, so
//! when the next request arrives the last response has been read to its
//! end and the upstream connection is free again. That is the least a
//! proxy can do per request (no pool to search, no URI to rewrite); the
//! request and response bodies stream through untouched.

use std::sync::{Arc, Mutex, PoisonError};

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

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
    loop {
        let (connection, _) = listener
            .accept()
            .await
            .map_err(|e| format!("accept: {e}"))?;
        let _ = connection.set_nodelay(true);
        tokio::spawn(async move {
            let upstream_connection = Arc::new(Mutex::new(None));
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                forward(Arc::clone(&upstream_connection), upstream, request)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(connection), service)
                .await;
        });
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The upstream connection of one client connection, while it is idle.
type UpstreamSlot = Arc<Mutex<Option<SendRequest<Incoming>>>>;

/// Sends `request` to the upstream and answers with its response as is.
async fn forward(
    slot: UpstreamSlot,
    upstream: u16,
    request: Request<Incoming>,
) -> Result<Response<Incoming>, BoxError> {
    let idle = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    let mut sender = match idle {
        Some(sender) if !sender.is_closed() => sender,
        _ => connect(upstream).await?,
    };
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(sender);
    Ok(response)
}

/// A new kept-alive HTTP/1 connection to the upstream, its task spawned.
async fn connect(upstream: u16) -> Result<SendRequest<Incoming>, BoxError> {
    let stream = TcpStream::connect(("127.0.0.1", upstream)).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}
