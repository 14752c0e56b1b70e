//! Making one HTTP/2 connection: TCP, optional TLS with ALPN `h2`, then the handshake.

use std::sync::Arc;

use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{UpstreamError, UpstreamSettings};
use crate::body::Body;

/// TLS options for an `https://` upstream.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// PEM file with the CA certificates to trust; the webpki roots when absent.
    pub ca_file: Option<std::path::PathBuf>,
    /// Overrides the name checked against the server certificate.
    pub server_name: Option<String>,
}

pub(super) struct Connector {
    host: String,
    port: u16,
    tls: Option<(TlsConnector, rustls::pki_types::ServerName<'static>)>,
    settings: UpstreamSettings,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").field("addr", &self.addr()).field("tls", &self.tls.is_some()).finish()
    }
}

impl Connector {
    pub(super) fn new(
        host: String,
        port: u16,
        https: bool,
        tls: TlsSettings,
        settings: UpstreamSettings,
    ) -> Result<Self, String> {
        let tls = if https {
            let cfg = client_config(&tls)?;
            let name = tls.server_name.clone().unwrap_or_else(|| host.clone());
            let name =
                rustls::pki_types::ServerName::try_from(name).map_err(|e| format!("bad TLS server name: {e}"))?;
            Some((TlsConnector::from(Arc::new(cfg)), name))
        } else {
            None
        };
        Ok(Self { host, port, tls, settings })
    }

    pub(super) fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub(super) async fn connect(&self) -> Result<SendRequest<Body>, UpstreamError> {
        let addr = self.addr();
        let fail = |reason: String| UpstreamError::Connect { addr: addr.clone(), reason };
        let tcp =
            tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect((self.host.as_str(), self.port)))
                .await
                .map_err(|_| fail(format!("timed out after {:?}", self.settings.connect_timeout)))?
                .map_err(|e| fail(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.handshake(TokioIo::new(tcp), addr.clone()).await,
            Some((connector, name)) => {
                let stream = tokio::time::timeout(self.settings.connect_timeout, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| fail("TLS handshake timed out".into()))?
                    .map_err(|e| fail(format!("TLS: {e}")))?;
                self.handshake(TokioIo::new(stream), addr.clone()).await
            }
        }
    }

    async fn handshake<T>(&self, io: T, addr: String) -> Result<SendRequest<Body>, UpstreamError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let mut b = http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .initial_stream_window_size(self.settings.stream_window)
            .initial_connection_window_size(self.settings.connection_window)
            .max_frame_size(64 * 1024)
            .max_send_buf_size(1 << 20);
        if let Some(k) = self.settings.keepalive {
            b.keep_alive_interval(k).keep_alive_timeout(k).keep_alive_while_idle(false);
        }
        let (sender, conn) =
            b.handshake(io).await.map_err(|source| UpstreamError::Handshake { addr: addr.clone(), source })?;
        // The connection task ends when every sender is dropped and its streams are done,
        // or when the peer closes it; the pool notices through `is_closed`.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(upstream = %addr, error = %e, "upstream connection closed");
            }
        });
        Ok(sender)
    }
}

fn client_config(tls: &TlsSettings) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("cannot read tls_ca {}: {e}", path.display()))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
                roots.add(cert).map_err(|e| format!("bad CA certificate in {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("no certificates in {}", path.display()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}
