//! Accepts client connections and serves HTTP/1.1 on them with the limits a public listener needs.
//!
//! Built on hyper's connection builder rather than `axum::serve` because
//! axum's loop sets no timer: a client that sends half a request head, or
//! opens connections and sends nothing, held them open forever
//! (slowloris). Here every connection gets `server.header_read_timeout`
//! to deliver each request head, the idle wait between keep-alive requests
//! included, as nginx's `client_header_timeout` and `keepalive_timeout` do.
//! Shutdown stops accepting, lets each connection finish the request it
//! is serving and closes the idle ones at once.

use std::{future::Future, io, time::Duration};

use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::net::{TcpListener, TcpStream};

/// Serves `router` on every connection `listener` accepts until `shutdown`
/// completes, then waits for the open connections to finish their
/// in-flight requests.
pub(crate) async fn serve<F>(
    listener: TcpListener,
    router: axum::Router,
    header_read_timeout: Duration,
    shutdown: F,
) where
    F: Future<Output = ()>,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let open = GracefulShutdown::new();
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
        let service = TowerToHyperService::new(router.clone());
        let connection = open.watch(http.serve_connection(TokioIo::new(connection), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "client connection ended with an error");
            }
        });
    }
    drop(listener);
    open.shutdown().await;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

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
}
