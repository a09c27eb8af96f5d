//! The plain-HTTP upstream pool: hyper's HTTP/1 connections kept per host, lent out and taken back without hashing, spawning or URI rewriting.
//!
//! Local inference servers and sidecars (vLLM, Ollama, an in-cluster
//! OpenAI-compatible proxy) are reached over plain `http://`, and there
//! the gateway's own cost per request is what counts. hyper-util's
//! pooled client pays, on every request, a SipHash of the pool key, clones
//! of the key and the URI, a lazy connect future raced against the
//! checkout, an origin-form rewrite of the URI and — for HTTP/1 — a spawned
//! task that waits for the connection to become idle again. Profiled under
//! the bench that was about 6k instructions and a 25 KB state machine per
//! request. Here the host is looked up once, when a provider is built; a
//! request pops an idle [`SendRequest`] off a short list, and the
//! connection goes back on that list when its response body has been read
//! to the end (a body left unread closes the connection instead, as it
//! must on HTTP/1). TLS upstreams keep hyper-util's client, which
//! negotiates HTTP/2 by ALPN.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::client::TransportError;
use crate::http::HttpOptions;

/// Where a plain-HTTP upstream listens: an IP address or a name resolved
/// at connect time (so DNS changes are followed by new connections).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum HostAddress {
    Ip(SocketAddr),
    Name(String, u16),
}

impl HostAddress {
    /// The address of an `http://` URL, `None` for any other scheme.
    pub(crate) fn of(url: &url::Url) -> Option<Self> {
        if url.scheme() != "http" {
            return None;
        }
        let port = url.port_or_known_default()?;
        Some(match url.host()? {
            url::Host::Ipv4(ip) => Self::Ip(SocketAddr::new(IpAddr::V4(ip), port)),
            url::Host::Ipv6(ip) => Self::Ip(SocketAddr::new(IpAddr::V6(ip), port)),
            url::Host::Domain(name) => Self::Name(name.to_owned(), port),
        })
    }

    async fn connect(&self) -> std::io::Result<TcpStream> {
        match self {
            Self::Ip(address) => TcpStream::connect(address).await,
            Self::Name(name, port) => TcpStream::connect((name.as_str(), *port)).await,
        }
    }
}

impl std::fmt::Display for HostAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip(address) => write!(f, "{address}"),
            Self::Name(name, port) => write!(f, "{name}:{port}"),
        }
    }
}

/// The hosts of one client, so providers on the same upstream share its
/// connections as they would in hyper-util's pool.
#[derive(Default)]
pub(crate) struct HostPools {
    hosts: Mutex<Vec<(HostAddress, Weak<HostPool>)>>,
}

impl HostPools {
    /// The pool of `address`, made on first use.
    pub(crate) fn get(&self, address: HostAddress, options: &HttpOptions) -> Arc<HostPool> {
        let mut hosts = self.hosts.lock();
        hosts.retain(|(_, pool)| pool.strong_count() > 0);
        if let Some(pool) = hosts
            .iter()
            .find(|(known, _)| *known == address)
            .and_then(|(_, pool)| pool.upgrade())
        {
            return pool;
        }
        let pool = Arc::new(HostPool {
            address: address.clone(),
            options: options.clone(),
            idle: Mutex::new(Idle::default()),
        });
        hosts.push((address, Arc::downgrade(&pool)));
        pool
    }
}

/// One host's idle HTTP/1 connections.
pub(crate) struct HostPool {
    address: HostAddress,
    options: HttpOptions,
    idle: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    connections: Vec<IdleConnection>,
    // Whether a reaper task is looking after `connections`; changed only
    // under the lock, so a connection given back as the reaper ends is
    // never left without one.
    reaping: bool,
}

struct IdleConnection {
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

/// A connection lent to one request, given back to its pool by
/// [`Lent::give_back`] once the response body was read to its end.
pub(crate) struct Lent {
    sender: SendRequest<Full<Bytes>>,
    pool: Arc<HostPool>,
}

impl std::fmt::Debug for Lent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lent")
            .field("host", &self.pool.address.to_string())
            .finish_non_exhaustive()
    }
}

impl Lent {
    /// Puts the connection back on its pool's idle list (the most recent
    /// last, so the warmest is lent next), unless it closed or the list is
    /// full.
    pub(crate) fn give_back(self) {
        if self.sender.is_closed() {
            return;
        }
        let pool = self.pool;
        let mut idle = pool.idle.lock();
        if idle.connections.len() >= pool.options.pool_max_idle_per_host {
            return;
        }
        idle.connections.push(IdleConnection {
            sender: self.sender,
            since: Instant::now(),
        });
        if !idle.reaping {
            idle.reaping = spawn_reaper(&pool);
        }
    }
}

impl HostPool {
    /// Sends `request` on an idle connection, or on a new one when none is
    /// idle. A request an idle connection could not start (the upstream
    /// had closed it) moves on to the next; one that fails on a fresh
    /// connection is an error.
    pub(crate) async fn send(
        self: &Arc<Self>,
        mut request: Box<Request<Full<Bytes>>>,
    ) -> Result<(Response<Incoming>, Lent), TransportError> {
        while let Some(mut sender) = self.take_idle() {
            // Ready unless it was given back a moment before its connection
            // task saw the end of the last response.
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(*request).await {
                Ok(response) => return Ok((response, self.lend(sender))),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => *request = unsent,
                    None => return Err(error.into_error().into()),
                },
            }
        }
        // Boxed: the connect and handshake futures would otherwise sit in
        // this future and in every one around it, and be copied with
        // them on each request, though connections are rarely new.
        Box::pin(self.send_on_new_connection(*request)).await
    }

    /// Sends `request` on a connection opened for it.
    async fn send_on_new_connection(
        self: &Arc<Self>,
        request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Lent), TransportError> {
        let mut sender = self.connect().await?;
        let response = sender.send_request(request).await?;
        Ok((response, self.lend(sender)))
    }

    fn lend(self: &Arc<Self>, sender: SendRequest<Full<Bytes>>) -> Lent {
        Lent {
            sender,
            pool: Arc::clone(self),
        }
    }

    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock();
        while let Some(connection) = idle.connections.pop() {
            if !connection.sender.is_closed() {
                return Some(connection.sender);
            }
        }
        None
    }

    /// A new connection: TCP with `TCP_NODELAY` and keep-alive probes,
    /// within the connect timeout, its HTTP/1 task spawned. Its errors do
    /// not name the address: they may reach clients, to whom the
    /// upstream's address is none of their business.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, TransportError> {
        let stream = tokio::time::timeout(self.options.connect_timeout, self.address.connect())
            .await
            .map_err(|_| {
                TransportError::connect(format!(
                    "tcp connect timed out after {:?}",
                    self.options.connect_timeout
                ))
            })?
            .map_err(|e| TransportError::connect(format!("tcp connect error: {e}")))?;
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(self.options.tcp_keepalive);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| TransportError::connect(format!("http handshake error: {e}")))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Closes the connections idle for longer than the idle timeout;
    /// whether the reaper should go on (any are left).
    fn close_expired(&self) -> bool {
        let timeout = self.options.pool_idle_timeout;
        let mut idle = self.idle.lock();
        idle.connections
            .retain(|c| !c.sender.is_closed() && c.since.elapsed() < timeout);
        idle.reaping = !idle.connections.is_empty();
        idle.reaping
    }
}

/// Closes idle connections past the idle timeout while any are idle; it
/// ends when the list empties or the pool is dropped, and the next
/// connection given back starts another. Whether one was started (not
/// outside a tokio runtime).
fn spawn_reaper(pool: &Arc<HostPool>) -> bool {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    let pool = Arc::downgrade(pool);
    runtime.spawn(async move {
        loop {
            let Some(period) = pool.upgrade().map(|p| reap_period(&p.options)) else {
                return;
            };
            tokio::time::sleep(period).await;
            match pool.upgrade() {
                Some(pool) if pool.close_expired() => {}
                _ => return,
            }
        }
    });
    true
}

/// How often the reaper looks: a quarter of the idle timeout, so a
/// connection outlives it by at most a quarter.
fn reap_period(options: &HttpOptions) -> Duration {
    (options.pool_idle_timeout / 4).max(Duration::from_millis(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_have_a_host_address() {
        let address = |url: &str| HostAddress::of(&url::Url::parse(url).unwrap());
        assert_eq!(
            address("http://127.0.0.1:8000/v1"),
            Some(HostAddress::Ip("127.0.0.1:8000".parse().unwrap()))
        );
        assert_eq!(
            address("http://[::1]/v1"),
            Some(HostAddress::Ip("[::1]:80".parse().unwrap()))
        );
        assert_eq!(
            address("http://vllm.internal:8000"),
            Some(HostAddress::Name("vllm.internal".into(), 8000))
        );
        assert_eq!(address("https://api.openai.com/v1"), None);
    }

    #[test]
    fn providers_of_one_client_on_one_host_share_a_pool() {
        let pools = HostPools::default();
        let options = HttpOptions::default();
        let local = HostAddress::Name("localhost".into(), 8000);
        let first = pools.get(local.clone(), &options);
        let second = pools.get(local.clone(), &options);
        assert!(Arc::ptr_eq(&first, &second));
        let other = pools.get(HostAddress::Name("localhost".into(), 8001), &options);
        assert!(!Arc::ptr_eq(&first, &other));
        drop((first, second));
        // A host nobody uses any more is forgotten; the next provider on
        // it starts a new pool.
        let again = pools.get(local, &options);
        assert_eq!(Arc::strong_count(&again), 1);
        assert_eq!(pools.hosts.lock().len(), 2);
    }
}
