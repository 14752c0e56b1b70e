//! The gRPC listener: accept, optional TLS, HTTP/2 per connection, GOAWAY on shutdown.
//!
//! Each connection runs in its own task under a `TaskTracker`, so shutdown can wait for all
//! of them. Before HTTP/2 starts, the first bytes are checked against the HTTP/2 connection
//! preface: a client speaking HTTP/1.x gets a plain `505` that says what this endpoint
//! speaks, instead of a silent close.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::{ConnInfo, Proxy};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP/2 settings of the listener.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Streams per connection.
    pub max_concurrent_streams: u32,
    /// Largest header list accepted.
    pub max_header_list_size: u32,
    /// Per-stream receive window.
    pub stream_window: u32,
    /// Per-connection receive window.
    pub connection_window: u32,
    /// Time a client has to send the connection preface (and TLS handshake).
    pub handshake_timeout: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 1024,
            max_header_list_size: 16 << 10,
            stream_window: 4 << 20,
            // Bounds what one connection can hold in switchyard at once, whatever its
            // stream count: at 16 MiB, eight concurrent 8 MiB inserts took RSS past 64 MiB.
            connection_window: 8 << 20,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Accepts connections until `shutdown` is cancelled, then lets each connection finish
/// gracefully (GOAWAY, then in-flight streams complete).
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    settings: ServerSettings,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let next_id = AtomicU64::new(1);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(ConnInfo { id, peer: Some(peer), ..Default::default() });
        let span = tracing::debug_span!("conn", conn.id = id, client.addr = %peer);
        let (proxy, settings, tls, shutdown) = (proxy.clone(), settings.clone(), tls.clone(), shutdown.clone());
        tracker.spawn(
            async move {
                let result = match tls {
                    None => serve_conn(stream, conn, proxy, &settings, shutdown).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(settings.handshake_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(tls_stream)) => serve_conn(tls_stream, conn, proxy, &settings, shutdown).await,
                            Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
                            Err(_) => Err("TLS handshake timed out".into()),
                        }
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            .instrument(span),
        );
    }
    drop(listener);
}

async fn serve_conn<S>(
    mut io: S,
    conn: Arc<ConnInfo>,
    proxy: Arc<Proxy>,
    settings: &ServerSettings,
    shutdown: CancellationToken,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let prefix = match tokio::time::timeout(settings.handshake_timeout, read_preface(&mut io)).await {
        Err(_) => return Err("no HTTP/2 preface before the handshake timeout".into()),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(Preface::Http2(prefix))) => prefix,
        Ok(Ok(Preface::Other(first))) => {
            let text = "switchyard: this endpoint speaks gRPC over HTTP/2 (prior knowledge or TLS with ALPN h2); HTTP/1.x and other protocols are not supported\n";
            if first.starts_with(b"GET ")
                || first.starts_with(b"POST ")
                || first.starts_with(b"PUT ")
                || first.starts_with(b"HEAD ")
                || first.windows(5).any(|w| w == b"HTTP/")
            {
                let resp = format!(
                    "HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = io.write_all(resp.as_bytes()).await;
                let _ = io.shutdown().await;
            }
            return Err("not an HTTP/2 client (bad connection preface)".into());
        }
    };
    let io = Rewind { prefix, inner: io };
    let svc_conn = conn.clone();
    let svc = service_fn(move |req| {
        let (proxy, conn) = (proxy.clone(), svc_conn.clone());
        async move { Ok::<_, Infallible>(proxy.handle(req, conn).await) }
    });
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(settings.max_header_list_size)
        .initial_stream_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_frame_size(64 * 1024)
        .max_send_buf_size(1 << 20)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let served = b.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(served);
    tokio::select! {
        r = served.as_mut() => r.map_err(|e| e.to_string()),
        _ = shutdown.cancelled() => {
            served.as_mut().graceful_shutdown();
            served.await.map_err(|e| e.to_string())
        }
    }
}

enum Preface {
    Http2(Bytes),
    Other(Vec<u8>),
}

/// Reads the first bytes and checks them against the HTTP/2 preface.
async fn read_preface<S: AsyncRead + Unpin>(io: &mut S) -> io::Result<Preface> {
    let mut buf = vec![0u8; PREFACE.len()];
    let mut have = 0;
    while have < PREFACE.len() {
        let n = io.read(&mut buf[have..]).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before the HTTP/2 preface"));
        }
        have += n;
        if buf[..have] != PREFACE[..have] {
            buf.truncate(have);
            return Ok(Preface::Other(buf));
        }
    }
    Ok(Preface::Http2(Bytes::from(buf)))
}

/// Replays bytes already read, then reads from the stream.
struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Address of a bound listener, for logs.
pub fn local_addr(l: &TcpListener) -> SocketAddr {
    l.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}
