//! A minimal unary gRPC client for switchyard's own calls to clusters (probes, replicate
//! configuration, checkpoints, `DescribeCollection`).

use std::time::Duration;

use http::{HeaderValue, Request};
use http_body_util::BodyExt;

use super::{Code, GrpcStatus};
use crate::body;
use crate::method::SERVICE_PREFIX;
use crate::upstream::{SendError, Upstream};

/// Options for one call.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Deadline for the whole call, also sent as `grpc-timeout`.
    pub timeout: Duration,
    /// Milvus credentials (`user:password` or an API key), sent base64-encoded.
    pub token: Option<String>,
    /// Extra metadata.
    pub metadata: Vec<(&'static str, String)>,
}

impl CallOptions {
    /// Options with a timeout and nothing else.
    pub fn timeout(timeout: Duration) -> Self {
        Self { timeout, ..Self::default() }
    }

    /// Adds credentials.
    pub fn with_token(mut self, token: Option<&str>) -> Self {
        self.token = token.filter(|t| !t.is_empty()).map(str::to_string);
        self
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The call could not be made or its answer not read.
    #[error("transport: {message}")]
    Transport {
        /// What went wrong.
        message: String,
        /// Whether the request may have reached the cluster.
        maybe_sent: bool,
    },
    /// The deadline passed.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The cluster answered with a non-OK gRPC status.
    #[error("{0}")]
    Status(GrpcStatus),
    /// The answer is not the expected message.
    #[error("bad response: {0}")]
    Decode(String),
}

impl CallError {
    /// Whether a retry with the same request could succeed (transport trouble, timeouts,
    /// `UNAVAILABLE`).
    pub fn is_transient(&self) -> bool {
        match self {
            CallError::Transport { .. } | CallError::Timeout(_) => true,
            CallError::Status(s) => matches!(s.code, Code::Unavailable | Code::DeadlineExceeded),
            CallError::Decode(_) => false,
        }
    }
}

/// Formats a duration as a `grpc-timeout` value.
pub fn grpc_timeout_value(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 100_000_000 { format!("{}m", ms.max(1)) } else { format!("{}S", d.as_secs().min(99_999_999)) }
}

/// Parses a `grpc-timeout` header value.
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (num, unit) = v.split_at(v.len() - 1);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Builds the HTTP/2 request for a unary call to `MilvusService/<method>`.
pub fn request<Req: prost::Message>(method: &str, req: &Req, opts: &CallOptions) -> Request<body::Body> {
    let path = format!("{SERVICE_PREFIX}{method}");
    let mut r = Request::new(body::full(super::encode_frame(req)));
    *r.method_mut() = http::Method::POST;
    *r.uri_mut() = path.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
    let h = r.headers_mut();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(super::CONTENT_TYPE));
    h.insert("te", HeaderValue::from_static("trailers"));
    if !opts.timeout.is_zero()
        && let Ok(v) = HeaderValue::from_str(&grpc_timeout_value(opts.timeout))
    {
        h.insert("grpc-timeout", v);
    }
    if let Some(token) = &opts.token
        && let Ok(v) = HeaderValue::from_str(&crate::encoding::base64(token.as_bytes()))
    {
        h.insert("authorization", v);
    }
    for (k, v) in &opts.metadata {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(*k, v);
        }
    }
    r
}

/// Makes one unary call and decodes the answer.
pub async fn unary<Req, Resp>(up: &Upstream, method: &str, req: &Req, opts: &CallOptions) -> Result<Resp, CallError>
where
    Req: prost::Message,
    Resp: prost::Message + Default,
{
    let call = async {
        let resp = up.send(request(method, req, opts)).await.map_err(|e| CallError::Transport {
            maybe_sent: matches!(e, SendError::Sent(_)),
            message: e.to_string(),
        })?;
        let (parts, body) = resp.into_parts();
        if let Some(st) = GrpcStatus::from_headers(&parts.headers)
            && st.code != Code::Ok
        {
            return Err(CallError::Status(st));
        }
        let collected =
            body.collect().await.map_err(|e| CallError::Transport { message: e.to_string(), maybe_sent: true })?;
        if let Some(st) = collected.trailers().and_then(GrpcStatus::from_headers)
            && st.code != Code::Ok
        {
            return Err(CallError::Status(st));
        }
        let bytes = collected.to_bytes();
        super::decode_message::<Resp>(&bytes, 64 << 20).map_err(|e| CallError::Decode(e.to_string()))
    };
    if opts.timeout.is_zero() {
        call.await
    } else {
        tokio::time::timeout(opts.timeout, call).await.map_err(|_| CallError::Timeout(opts.timeout))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_round_trip() {
        for d in [Duration::from_millis(1), Duration::from_secs(5), Duration::from_secs(3600)] {
            assert_eq!(parse_grpc_timeout(&grpc_timeout_value(d)), Some(d));
        }
        assert_eq!(parse_grpc_timeout("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout("1000000000m"), None);
    }
}
