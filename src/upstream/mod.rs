//! Pooled HTTP/2 connections to one Milvus cluster.
//!
//! An [`Upstream`] owns a few HTTP/2 connections (cleartext, or TLS when the cluster `uri`
//! is `https://`). HTTP/2 multiplexes, so a handful carries any load; calls are spread over
//! them round-robin. A connection that fails is replaced on the next call that picks its
//! slot. [`Upstream::send`] tells apart a request that never left switchyard (safe to send
//! elsewhere) from one that may have reached the cluster (never retried).
//!
//! # Slow readers cost only themselves
//!
//! Calls of many clients share these connections, and a response body is pulled from the
//! cluster only as fast as its client reads it. In HTTP/2 a DATA frame is charged to both the
//! stream's and the connection's receive window until it is consumed, so with a connection
//! window of a few stream windows, a handful of clients that never read their (large) answers
//! would exhaust it and stall every call on the connection, writes included (measured before
//! this change: 8 unread 3 MiB Strong queries stalled another client's insert for as long as
//! they stayed open).
//!
//! Envoy bounds what one stream may buffer (its watermark buffers, sized by
//! `initial_stream_window_size` and `per_connection_buffer_limit_bytes`) and pushes back on
//! that stream alone by withholding its stream window. The `h2` crate under hyper releases
//! connection capacity only when data is consumed, so switchyard gets the same per-stream
//! push-back by setting the upstream connection window to the protocol's maximum: a stalled
//! stream then holds at most its own stream window (4 MiB) of switchyard's memory and of the
//! connection's window, never the rest of the connection's calls. The cost is bounded by the
//! streams whose clients are not reading, each at most one stream window; a client that
//! stalls is the one holding it, and closing its connection frees it.

mod connect;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;

use crate::body::Body;
pub use connect::TlsSettings;

/// The largest HTTP/2 flow-control window (2^31 - 1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// How an upstream's connections are made.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Connections kept per cluster.
    pub connections: usize,
    /// Time allowed for TCP (and TLS) connection setup.
    pub connect_timeout: Duration,
    /// HTTP/2 stream window, per stream.
    pub stream_window: u32,
    /// HTTP/2 connection window.
    pub connection_window: u32,
    /// HTTP/2 PING interval on idle connections.
    pub keepalive: Option<Duration>,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            connections: 2,
            connect_timeout: Duration::from_secs(2),
            stream_window: 4 << 20,
            // No connection-level limit: see "Slow readers" in the module doc.
            connection_window: MAX_WINDOW,
            keepalive: Some(Duration::from_secs(20)),
        }
    }
}

/// Why a call could not be made.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The cluster `uri` is not usable.
    #[error("invalid upstream uri {uri:?}: {reason}")]
    InvalidUri {
        /// The uri.
        uri: String,
        /// What is wrong.
        reason: String,
    },
    /// TCP or TLS connection setup failed.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// host:port.
        addr: String,
        /// The cause.
        reason: String,
    },
    /// The HTTP/2 handshake failed.
    #[error("HTTP/2 handshake with {addr} failed: {source}")]
    Handshake {
        /// host:port.
        addr: String,
        /// The cause.
        source: hyper::Error,
    },
}

/// The outcome of a failed [`Upstream::send`].
#[derive(Debug)]
pub enum SendError {
    /// The request never left switchyard: it may be sent elsewhere. The request comes back.
    NotSent(UpstreamError, Box<Request<Body>>),
    /// The request may have reached the cluster. It must not be replayed.
    Sent(hyper::Error),
}

impl SendError {
    /// Whether the request may have reached the cluster.
    pub fn maybe_sent(&self) -> bool {
        matches!(self, SendError::Sent(_))
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::NotSent(e, _) => write!(f, "{e} (request not sent)"),
            SendError::Sent(e) => write!(f, "{e} (request may have been sent)"),
        }
    }
}

/// One cluster's connection pool.
#[derive(Debug)]
pub struct Upstream {
    uri: String,
    scheme: Scheme,
    authority: Authority,
    connector: connect::Connector,
    slots: Box<[Slot]>,
    next: AtomicUsize,
}

#[derive(Debug, Default)]
struct Slot {
    // Short critical sections only (clone or replace); never held across an await.
    sender: std::sync::Mutex<Option<SendRequest<Body>>>,
    connecting: tokio::sync::Mutex<()>,
}

impl Upstream {
    /// A pool for `uri` (`http://host:port` or `https://host:port`). Connects lazily.
    pub fn new(uri: &str, tls: TlsSettings, settings: UpstreamSettings) -> Result<Arc<Self>, UpstreamError> {
        let bad = |reason: &str| UpstreamError::InvalidUri { uri: uri.to_string(), reason: reason.into() };
        let parsed: Uri = uri.parse().map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let scheme = parsed.scheme().cloned().ok_or_else(|| bad("missing scheme (http:// or https://)"))?;
        let https = match scheme.as_str() {
            "http" => false,
            "https" => true,
            _ => return Err(bad("scheme must be http or https")),
        };
        let authority = parsed.authority().cloned().ok_or_else(|| bad("missing host"))?;
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        let connector =
            connect::Connector::new(host, port, https, tls, settings.clone()).map_err(|reason| bad(&reason))?;
        let slots = (0..settings.connections.max(1)).map(|_| Slot::default()).collect();
        Ok(Arc::new(Self { uri: uri.to_string(), scheme, authority, connector, slots, next: AtomicUsize::new(0) }))
    }

    /// The cluster uri this pool connects to.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Rewrites a request's URI to point at this cluster, keeping path and query.
    pub fn target(&self, req: &mut Request<Body>) {
        let pq = req.uri().path_and_query().cloned();
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = pq.or_else(|| Some(http::uri::PathAndQuery::from_static("/")));
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }

    /// Sends one request on a pooled connection.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<Incoming>, SendError> {
        self.target(&mut req);
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let mut sender = match self.ready_sender(slot).await {
            Ok(s) => s,
            Err(e) => return Err(SendError::NotSent(e, Box::new(req))),
        };
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(resp),
            Err(mut e) => {
                Self::forget(slot, &sender);
                match e.take_message() {
                    Some(req) => {
                        let err =
                            UpstreamError::Connect { addr: self.connector.addr(), reason: e.into_error().to_string() };
                        Err(SendError::NotSent(err, Box::new(req)))
                    }
                    None => Err(SendError::Sent(e.into_error())),
                }
            }
        }
    }

    /// Opens (or checks) a connection now, for health probes and warm-up.
    pub async fn connect(&self) -> Result<(), UpstreamError> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        self.ready_sender(slot).await.map(|_| ())
    }

    /// Drops every pooled connection (after `/fault/down`-like events or on reload).
    pub fn reset(&self) {
        for slot in self.slots.iter() {
            *lock(&slot.sender) = None;
        }
    }

    async fn ready_sender(&self, slot: &Slot) -> Result<SendRequest<Body>, UpstreamError> {
        if let Some(s) = Self::live(slot) {
            return Ok(s);
        }
        let _guard = slot.connecting.lock().await;
        if let Some(s) = Self::live(slot) {
            return Ok(s);
        }
        let sender = self.connector.connect().await?;
        *lock(&slot.sender) = Some(sender.clone());
        Ok(sender)
    }

    fn live(slot: &Slot) -> Option<SendRequest<Body>> {
        let mut g = lock(&slot.sender);
        match g.as_ref() {
            Some(s) if !s.is_closed() && s.is_ready() => Some(s.clone()),
            Some(s) if !s.is_closed() => Some(s.clone()),
            _ => {
                *g = None;
                None
            }
        }
    }

    fn forget(slot: &Slot, failed: &SendRequest<Body>) {
        let mut g = lock(&slot.sender);
        if g.as_ref().is_some_and(|s| s.is_closed() || failed.is_closed()) {
            *g = None;
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
