//! [`TonicCdc`]: the generated tonic client stubs over switchyard's pooled upstream.
//!
//! No tonic transport: a small tower stack turns the stubs' `http::Request`s into calls on
//! the cluster's [`Upstream`], so control calls reuse the data path's HTTP/2 connections
//! and TLS settings. Per call, outermost first:
//!
//! ```text
//! Timeout(timeout)            the whole call, answer included (tower::timeout)
//!  └ Buffered                 the request body (one small message) read into Bytes
//!     └ Retry(RetryNotSent)   reads: once more if the request never left switchyard
//!        └ UpstreamService    Upstream::send, answer collected whole (data + trailers)
//! ```
//!
//! Collecting the answer inside the stack puts the body under the timeout too, and lets the
//! retry policy see every transport failure. Writes (`UpdateReplicateConfiguration`) are not
//! retried here: [`crate::switchover::plan::send`] owns that policy.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use tonic::metadata::AsciiMetadataValue;
use tower::ServiceBuilder;

use super::{Cdc, CdcError, CdcFuture, ReplicateInfo};
use crate::body::BoxError;
use crate::grpc::{Code, GrpcStatus};
use crate::proto::common::ReplicateConfiguration;
use crate::proto::milvus::milvus_service_client::MilvusServiceClient;
use crate::proto::milvus::{
    GetReplicateConfigurationRequest, GetReplicateInfoRequest, UpdateReplicateConfigurationRequest,
};
use crate::upstream::Upstream;

/// [`super::Cdc`] over generated tonic stubs and the cluster's connection pool.
#[derive(Clone)]
pub struct TonicCdc {
    upstream: Arc<Upstream>,
    /// `authorization` metadata (Milvus: base64 of `user:password` or an API key).
    auth: Option<AsciiMetadataValue>,
}

impl std::fmt::Debug for TonicCdc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token never prints.
        f.debug_struct("TonicCdc")
            .field("uri", &self.upstream.uri())
            .field("auth", &self.auth.as_ref().map(|_| "***"))
            .finish()
    }
}

type Stack = tower::timeout::Timeout<Buffered<tower::retry::Retry<RetryNotSent, UpstreamService>>>;

impl TonicCdc {
    /// A client over `upstream`, sending `token` with every call.
    pub fn new(upstream: Arc<Upstream>, token: Option<&str>) -> Self {
        let auth = token
            .filter(|t| !t.is_empty())
            .and_then(|t| AsciiMetadataValue::try_from(crate::encoding::base64(t.as_bytes())).ok());
        Self { upstream, auth }
    }

    fn client(&self, timeout: Duration, retries: u8) -> MilvusServiceClient<Stack> {
        let svc = ServiceBuilder::new()
            .timeout(timeout)
            .layer_fn(|inner| Buffered { inner })
            .retry(RetryNotSent { left: retries })
            .service(UpstreamService { upstream: self.upstream.clone() });
        MilvusServiceClient::new(svc)
    }

    fn request<T>(&self, message: T, timeout: Duration) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        req.set_timeout(timeout);
        if let Some(auth) = &self.auth {
            req.metadata_mut().insert("authorization", auth.clone());
        }
        req
    }
}

impl Cdc for TonicCdc {
    fn read_config(&self, timeout: Duration) -> CdcFuture<'_, Option<ReplicateConfiguration>> {
        Box::pin(async move {
            let req = self.request(GetReplicateConfigurationRequest {}, timeout);
            match self.client(timeout, 1).get_replicate_configuration(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    if let Some(e) = r.status.as_ref().and_then(CdcError::from_status) {
                        return Err(e);
                    }
                    Ok(Some(r.configuration.unwrap_or_default()))
                }
                Err(s) if s.code() == tonic::Code::Unimplemented => Ok(None),
                Err(s) => Err(classify(&s, timeout)),
            }
        })
    }

    fn update_config<'a>(
        &'a self,
        config: &'a ReplicateConfiguration,
        force_promote: bool,
        timeout: Duration,
    ) -> CdcFuture<'a, ()> {
        Box::pin(async move {
            let msg =
                UpdateReplicateConfigurationRequest { replicate_configuration: Some(config.clone()), force_promote };
            let req = self.request(msg, timeout);
            match self.client(timeout, 0).update_replicate_configuration(req).await {
                Ok(st) => CdcError::from_status(st.get_ref()).map_or(Ok(()), Err),
                Err(s) => Err(classify(&s, timeout)),
            }
        })
    }

    fn replicate_info<'a>(
        &'a self,
        source: &'a str,
        target_pchannel: &'a str,
        timeout: Duration,
    ) -> CdcFuture<'a, ReplicateInfo> {
        Box::pin(async move {
            let msg =
                GetReplicateInfoRequest { source_cluster_id: source.into(), target_pchannel: target_pchannel.into() };
            let req = self.request(msg, timeout);
            match self.client(timeout, 1).get_replicate_info(req).await {
                Ok(r) => Ok(r.into_inner()),
                Err(s) => Err(classify(&s, timeout)),
            }
        })
    }
}

/// Turns a tonic status back into what happened: our own timeout or transport failure
/// (found in its source chain), else the cluster's gRPC status.
fn classify(status: &tonic::Status, timeout: Duration) -> CdcError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = cause {
        if e.is::<tower::timeout::error::Elapsed>() {
            return CdcError::Timeout(timeout);
        }
        if let Some(t) = e.downcast_ref::<TransportError>() {
            return CdcError::Transport { message: t.message.clone(), sent: t.sent };
        }
        cause = e.source();
    }
    CdcError::Grpc(GrpcStatus::new(Code::from_u32(status.code() as u32), status.message()))
}

// === impl UpstreamService ===

/// A failed [`Upstream::send`], or an answer that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct TransportError {
    message: String,
    /// Whether the request may have reached the cluster.
    sent: bool,
}

/// One request on the cluster's pool; the answer is collected whole (unary control calls).
#[derive(Debug, Clone)]
struct UpstreamService {
    upstream: Arc<Upstream>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

impl tower::Service<Request<Bytes>> for UpstreamService {
    type Response = Response<crate::body::Body>;
    type Error = BoxError;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let upstream = self.upstream.clone();
        Box::pin(async move {
            let resp = upstream
                .send(req.map(crate::body::full))
                .await
                .map_err(|e| TransportError { sent: e.maybe_sent(), message: e.to_string() })?;
            let (parts, body) = resp.into_parts();
            let collected = body.collect().await.map_err(|e| TransportError { message: e.to_string(), sent: true })?;
            let trailers = collected.trailers().cloned();
            let mut frames = vec![Frame::data(collected.to_bytes())];
            frames.extend(trailers.map(Frame::trailers));
            Ok(Response::from_parts(parts, crate::body::frames(frames)))
        })
    }
}

// === impl Buffered ===

/// Reads the (small, already encoded) request body into `Bytes`, so the retry below can
/// resend it.
#[derive(Debug, Clone)]
struct Buffered<S> {
    inner: S,
}

impl<S> tower::Service<Request<tonic::body::Body>> for Buffered<S>
where
    S: tower::Service<Request<Bytes>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        // See: https://docs.rs/tower/latest/tower/trait.Service.html#be-careful-when-cloning-inner-services
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await?.to_bytes();
            inner.call(Request::from_parts(parts, bytes)).await
        })
    }
}

// === impl RetryNotSent ===

/// Retries a call whose request never left switchyard, at most `left` more times.
#[derive(Debug, Clone)]
struct RetryNotSent {
    left: u8,
}

impl<Res> tower::retry::Policy<Request<Bytes>, Res, BoxError> for RetryNotSent {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, _req: &mut Request<Bytes>, result: &mut Result<Res, BoxError>) -> Option<Self::Future> {
        let not_sent = matches!(result, Err(e) if e.downcast_ref::<TransportError>().is_some_and(|t| !t.sent));
        if not_sent && self.left > 0 {
            self.left -= 1;
            Some(std::future::ready(()))
        } else {
            None
        }
    }

    fn clone_request(&mut self, req: &Request<Bytes>) -> Option<Request<Bytes>> {
        if self.left == 0 {
            return None;
        }
        let mut r = Request::new(req.body().clone());
        *r.method_mut() = req.method().clone();
        *r.uri_mut() = req.uri().clone();
        *r.version_mut() = req.version();
        *r.headers_mut() = req.headers().clone();
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{TlsSettings, UpstreamSettings};

    fn cdc(uri: &str) -> TonicCdc {
        let up = Upstream::new(uri, TlsSettings::default(), UpstreamSettings::default()).expect("upstream");
        TonicCdc::new(up, Some("root:Milvus"))
    }

    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    }

    #[tokio::test]
    async fn refused_connection_is_transport_not_sent() {
        let c = cdc(&format!("http://127.0.0.1:{}", free_port()));
        let err = c.read_config(Duration::from_secs(2)).await.expect_err("nobody listens");
        assert!(matches!(err, CdcError::Transport { sent: false, .. }), "{err:?}");
        assert!(err.is_transient());
    }

    #[tokio::test]
    async fn silent_cluster_is_a_timeout() {
        // Accepts TCP (the kernel's backlog) but never speaks HTTP/2.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let c = cdc(&format!("http://{}", l.local_addr().expect("addr")));
        let t = Duration::from_millis(200);
        let err = c.update_config(&ReplicateConfiguration::default(), false, t).await.expect_err("no answer");
        assert_eq!(err, CdcError::Timeout(t));
    }
}
