//! Errors switchyard itself produces on the gRPC endpoint, and their one mapping to an
//! answer.
//!
//! Every message starts with `switchyard:`, names the cluster when there is one, and says
//! whether the request was sent, so the client knows whether a retry is safe.
//!
//! # Answers are chosen by what the SDKs do next
//!
//! The Milvus SDKs retry on their own, so the answer decides what happens to the request:
//! - pymilvus 2.6 (`decorators.py`, `retry_on_rpc_failure`) retries every gRPC code except
//!   `DEADLINE_EXCEEDED`, `PERMISSION_DENIED`, `UNAUTHENTICATED`, `INVALID_ARGUMENT`,
//!   `ALREADY_EXISTS`, `RESOURCE_EXHAUSTED` and `UNIMPLEMENTED` (`IGNORE_RETRY_CODES`), up to
//!   75 times; on `UNAVAILABLE` its connection manager (`client/connection_manager.py`,
//!   `handle_error` → `_recover`) also closes and reopens the channel that every client of
//!   the address in the process shares, cancelling their calls in flight. A reply whose
//!   Milvus status is `RateLimit` (code 8, legacy `error_code` 49) is retried with backoff and
//!   leaves the channel alone.
//! - The Node SDK (`@zilliz/milvus2-sdk-node`, `milvus/utils/Grpc.ts` `getRetryInterceptor`)
//!   retries, up to 3 times, every gRPC code outside the same list (`isInIgnoreRetryCodes`,
//!   plus `OK`); it does not look at the Milvus status in a reply (`isInvalidMessage` is called
//!   with no codes), so a `RateLimit` reply reaches its caller as an error that says "not sent,
//!   safe to retry", and `DEADLINE_EXCEEDED` is never retried. Both are safe.
//!
//! So, per [`ProxyError::answer`]:
//! | what happened | answer |
//! |---|---|
//! | not sent anywhere; or sent but changes nothing on a repeat (reads, idempotent writes) | the method's own reply with a `RateLimit` status: retried with backoff, channel untouched |
//! | a non-idempotent write that may have been applied | `DEADLINE_EXCEEDED`: never retried blindly |
//! | a client `UpdateReplicateConfiguration`, a CDC-internal RPC | `PERMISSION_DENIED` |
//! | a message over the size limit | `RESOURCE_EXHAUSTED` |
//! | malformed body, unknown or fenced cluster named by the operator header | `INVALID_ARGUMENT` |
//!
//! `UNAVAILABLE` is never produced here: it is left to the transport, for connections that
//! are unusable. Methods whose reply has no `common.Status` at field 1 (a few control calls,
//! and paths outside the method table) cannot carry `RateLimit`; for them "retry" is
//! `ABORTED`, which both SDKs retry without touching the channel.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response};
use http_body::Frame;
use prost::Message;

use crate::body::{self, Body};
use crate::grpc::{Code, GrpcStatus};
use crate::method::{Method, Reply};
use crate::proto::common::{ErrorCode, Status};

/// Milvus's status code for "rate limited, retry later" (`merr` code 8).
pub const MILVUS_RATE_LIMIT: i32 = 8;

/// Why switchyard answered a call itself.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// No primary can take writes now.
    #[error("no usable primary ({reason}); write not sent, safe to retry")]
    NoPrimary {
        /// Why.
        reason: String,
    },
    /// No cluster at all can serve a read.
    #[error("no cluster can serve this read ({reason}); not sent, safe to retry")]
    NoReadTarget {
        /// Why.
        reason: String,
    },
    /// A cluster could not be reached and the request never left switchyard.
    #[error("cluster {cluster} unreachable: {detail}; request not sent, safe to retry")]
    NotSent {
        /// The cluster.
        cluster: String,
        /// The transport error.
        detail: String,
    },
    /// A cluster failed after the request may have reached it.
    #[error(
        "cluster {cluster} failed mid-request ({detail}); may have been applied on {cluster}; check before retrying"
    )]
    MaybeSent {
        /// The cluster.
        cluster: String,
        /// The transport error.
        detail: String,
    },
    /// A read failed after it may have reached the cluster. Reads change nothing, so unlike
    /// [`ProxyError::MaybeSent`] the client may simply retry.
    #[error("cluster {cluster} failed mid-request: {detail}; a read changes nothing, safe to retry")]
    ReadFailed {
        /// The cluster.
        cluster: String,
        /// The transport error.
        detail: String,
    },
    /// A fenced cluster acknowledged a write after the failover that fenced it had been
    /// decided: the new primary does not have it.
    #[error(
        "write acknowledged by the fenced cluster {cluster} after the failover; not on the new primary; may have been applied on {cluster}; check before retrying"
    )]
    FencedAck {
        /// The fenced cluster.
        cluster: String,
    },
    /// The message is larger than `listener.max_message_size`.
    #[error("message of {len} bytes exceeds listener.max_message_size ({limit} bytes); not sent")]
    MessageTooLarge {
        /// The declared message length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The request body could not be read.
    #[error("malformed request body: {0}")]
    BadBody(String),
    /// The client stopped sending its request body.
    #[error("request body stalled for {0:?} (listener.body_timeout); not sent, safe to retry")]
    BodyTimeout(Duration),
    /// Clients may not change the replicate configuration through switchyard.
    #[error(
        "UpdateReplicateConfiguration is refused: switchyard owns the replication topology; use its admin API (POST /v1/switchover, POST /v1/failover) or `switchyard ctl`"
    )]
    ReplicateConfigRefused,
    /// A CDC-internal RPC: clusters' replication intake is never reachable through switchyard.
    #[error("{0} is internal to Milvus CDC between clusters and is refused through switchyard")]
    CdcInternal(&'static str),
    /// `x-switchyard-cluster` names a cluster that is not configured.
    #[error("x-switchyard-cluster names unknown cluster {0:?}")]
    UnknownCluster(String),
    /// A named cluster is fenced.
    #[error("cluster {0} is fenced after a failover; it serves nothing until readmitted")]
    Fenced(String),
    /// A held write waited longer than allowed.
    #[error("write held {held:?} during {during}; not sent, safe to retry")]
    HeldTooLong {
        /// How long it was held.
        held: Duration,
        /// What it waited for.
        during: String,
    },
    /// The write gate is full.
    #[error("write not held: {0}; not sent, safe to retry")]
    GateFull(String),
    /// The operation the write was held for failed and writes cannot go anywhere.
    #[error("write held during {during} not released: {reason}; not sent, safe to retry")]
    HoldFailed {
        /// The operation.
        during: String,
        /// Why.
        reason: String,
    },
    /// A write whose body was still arriving when a switchover began draining: the cluster
    /// never had the whole message, so it cannot have applied it.
    #[error("write body still arriving when {during} began; not sent, safe to retry")]
    CutMidBody {
        /// The operation.
        during: String,
    },
    /// switchyard is shutting down.
    #[error("shutting down; request not sent, safe to retry (against another proxy)")]
    ShuttingDown,
    /// The shutdown grace period ended while the call waited for its cluster's answer.
    #[error(
        "shutting down; {cluster} had not answered when the shutdown grace period ended; {}",
        if *may_be_applied { format!("may have been applied on {cluster}; check before retrying") } else { "safe to retry".to_string() }
    )]
    CutOff {
        /// The cluster the call was sent to.
        cluster: String,
        /// Whether it was a write (which the cluster may have applied).
        may_be_applied: bool,
    },
}

/// What switchyard sends back for an error.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A trailers-only gRPC status.
    Status(GrpcStatus),
    /// A successful gRPC call whose reply carries this Milvus status (`RateLimit`): the SDK
    /// reads it as a Milvus error and backs off.
    Reply {
        /// The encoded reply message.
        message: Bytes,
        /// The Milvus status in it.
        status: Status,
    },
}

/// Whether a retry of the call is safe, which decides the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Safe: nothing was applied, or a repeat changes nothing.
    Safe,
    /// The outcome is unknown and a repeat may apply the call twice.
    Unknown,
    /// A fixed gRPC code: retrying cannot help.
    Refused(Code),
}

impl ProxyError {
    /// The same error for a read: "may have been applied" becomes "safe to retry".
    pub fn for_read(self) -> Self {
        match self {
            ProxyError::MaybeSent { cluster, detail } => ProxyError::ReadFailed { cluster, detail },
            other => other,
        }
    }

    fn retry(&self) -> Retry {
        match self {
            ProxyError::NoPrimary { .. }
            | ProxyError::NoReadTarget { .. }
            | ProxyError::NotSent { .. }
            | ProxyError::ReadFailed { .. }
            | ProxyError::HeldTooLong { .. }
            | ProxyError::GateFull(_)
            | ProxyError::HoldFailed { .. }
            | ProxyError::CutMidBody { .. }
            | ProxyError::BodyTimeout(_)
            | ProxyError::ShuttingDown
            | ProxyError::CutOff { may_be_applied: false, .. } => Retry::Safe,
            ProxyError::MaybeSent { .. } | ProxyError::CutOff { may_be_applied: true, .. } => Retry::Unknown,
            // Never downgraded for idempotent writes: the new primary lacks it, and the
            // client must know that, not have it resent silently.
            ProxyError::FencedAck { .. } => Retry::Refused(Code::DeadlineExceeded),
            ProxyError::MessageTooLarge { .. } => Retry::Refused(Code::ResourceExhausted),
            ProxyError::BadBody(_) | ProxyError::UnknownCluster(_) | ProxyError::Fenced(_) => {
                Retry::Refused(Code::InvalidArgument)
            }
            ProxyError::ReplicateConfigRefused | ProxyError::CdcInternal(_) => Retry::Refused(Code::PermissionDenied),
        }
    }

    /// The answer for this error on a call of `method` (`None`: a path outside the table).
    /// This is the one place where switchyard's errors become what a client sees.
    pub fn answer(&self, method: Option<&Method>) -> Answer {
        let message = format!("switchyard: {self}");
        let retry = match self.retry() {
            // A repeat of an idempotent write, or of a read, changes nothing.
            Retry::Unknown if method.is_some_and(|m| !m.kind.is_write() || m.idempotent()) => Retry::Safe,
            r => r,
        };
        match retry {
            Retry::Refused(code) => Answer::Status(GrpcStatus::new(code, message)),
            Retry::Unknown => Answer::Status(GrpcStatus::new(Code::DeadlineExceeded, message)),
            Retry::Safe => {
                let status = Status {
                    error_code: ErrorCode::RateLimit as i32,
                    reason: message.clone(),
                    code: MILVUS_RATE_LIMIT,
                    retriable: true,
                    ..Default::default()
                };
                match method.and_then(|m| reply_with_status(m.reply, &status)) {
                    Some(message) => Answer::Reply { message, status },
                    None => Answer::Status(GrpcStatus::new(Code::Aborted, message)),
                }
            }
        }
    }

    /// The gRPC status this error is answered with when no method is known (trailers-only).
    pub fn status(&self) -> GrpcStatus {
        match self.answer(None) {
            Answer::Status(s) => s,
            Answer::Reply { status, .. } => GrpcStatus::new(Code::Aborted, status.reason),
        }
    }
}

impl Answer {
    /// The code for metrics and logs: the gRPC code, or `ResourceExhausted` for a
    /// `RateLimit` reply (gRPC's own name for "slow down and retry").
    pub fn metric_code(&self) -> Code {
        match self {
            Answer::Status(s) => s.code,
            Answer::Reply { .. } => Code::ResourceExhausted,
        }
    }

    /// The message, for logs.
    pub fn message(&self) -> &str {
        match self {
            Answer::Status(s) => &s.message,
            Answer::Reply { status, .. } => &status.reason,
        }
    }

    /// The HTTP response.
    pub fn into_response(self) -> Response<Body> {
        match self {
            Answer::Status(s) => s.to_response(),
            Answer::Reply { message, .. } => {
                let mut trailers = http::HeaderMap::new();
                GrpcStatus::new(Code::Ok, "").write_to(&mut trailers);
                let frames = vec![Frame::data(crate::grpc::frame::frame_bytes(&message)), Frame::trailers(trailers)];
                let mut resp = Response::new(body::frames(frames));
                resp.headers_mut()
                    .insert(http::header::CONTENT_TYPE, HeaderValue::from_static(crate::grpc::CONTENT_TYPE));
                resp
            }
        }
    }
}

/// A reply message of shape `reply` holding only `status`: the bare `common.Status`, or a
/// message whose field 1 is it. `None` for replies without a status at field 1.
pub fn reply_with_status(reply: Reply, status: &Status) -> Option<Bytes> {
    /// Any `Reply::Wrapped` response, reduced to its field 1.
    #[derive(Clone, PartialEq, Message)]
    struct Wrapped {
        #[prost(message, optional, tag = "1")]
        status: Option<Status>,
    }
    match reply {
        Reply::Status => Some(Bytes::from(status.encode_to_vec())),
        Reply::Wrapped => Some(Bytes::from(Wrapped { status: Some(status.clone()) }.encode_to_vec())),
        Reply::Other => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::by_name;

    fn reply_status(a: &Answer) -> &Status {
        match a {
            Answer::Reply { status, .. } => status,
            other => panic!("expected a RateLimit reply, got {other:?}"),
        }
    }

    fn code(a: &Answer) -> Code {
        match a {
            Answer::Status(s) => s.code,
            other => panic!("expected a gRPC status, got {other:?}"),
        }
    }

    #[test]
    fn not_sent_is_a_rate_limit_reply_in_the_methods_own_shape() {
        let e = ProxyError::HeldTooLong { held: Duration::from_secs(30), during: "switchover to cluster-b".into() };
        let insert = by_name("Insert").unwrap();
        let a = e.answer(Some(insert));
        let st = reply_status(&a);
        assert_eq!((st.code, st.error_code), (8, ErrorCode::RateLimit as i32));
        assert_eq!(st.reason, "switchyard: write held 30s during switchover to cluster-b; not sent, safe to retry");
        // MutationResult: field 1 is the status.
        let Answer::Reply { message, .. } = &a else { unreachable!() };
        let decoded = crate::proto::milvus::MutationResult::decode(message.clone()).unwrap();
        assert_eq!(decoded.status.as_ref(), Some(st));
        // CreateCollection answers a bare Status.
        let a = e.answer(by_name("CreateCollection"));
        let Answer::Reply { message, .. } = &a else { panic!("{a:?}") };
        assert_eq!(Status::decode(message.clone()).unwrap().code, 8);
        // No status field to carry it: ABORTED, which the SDKs retry without resetting.
        assert_eq!(code(&e.answer(by_name("GetReplicateInfo"))), Code::Aborted);
        assert_eq!(code(&e.answer(None)), Code::Aborted);
    }

    #[test]
    fn maybe_applied_depends_on_idempotency() {
        let e = ProxyError::MaybeSent { cluster: "cluster-a".into(), detail: "connection reset".into() };
        let a = e.answer(by_name("Insert"));
        assert_eq!(code(&a), Code::DeadlineExceeded);
        assert_eq!(
            a.message(),
            "switchyard: cluster cluster-a failed mid-request (connection reset); may have been applied on cluster-a; check before retrying"
        );
        assert_eq!(code(&e.answer(by_name("Import"))), Code::DeadlineExceeded);
        assert_eq!(code(&e.answer(None)), Code::DeadlineExceeded);
        assert_eq!(reply_status(&e.answer(by_name("Upsert"))).code, 8);
        assert_eq!(reply_status(&e.answer(by_name("Delete"))).code, 8);
        assert_eq!(reply_status(&e.answer(by_name("CreateIndex"))).code, 8);
        assert_eq!(reply_status(&e.answer(by_name("Search"))).code, 8);
        let cut = ProxyError::CutOff { cluster: "cluster-a".into(), may_be_applied: true };
        assert_eq!(code(&cut.answer(by_name("Insert"))), Code::DeadlineExceeded);
        assert!(
            cut.answer(by_name("Insert"))
                .message()
                .ends_with("may have been applied on cluster-a; check before retrying")
        );
    }

    #[test]
    fn refusals_are_not_retried_by_the_sdks() {
        let u = by_name("UpdateReplicateConfiguration");
        assert_eq!(code(&ProxyError::ReplicateConfigRefused.answer(u)), Code::PermissionDenied);
        let c = by_name("CreateReplicateStream");
        assert_eq!(code(&ProxyError::CdcInternal("CreateReplicateStream").answer(c)), Code::PermissionDenied);
        let fenced = ProxyError::FencedAck { cluster: "cluster-a".into() };
        assert_eq!(code(&fenced.answer(by_name("Upsert"))), Code::DeadlineExceeded);
        assert_eq!(
            fenced.answer(by_name("Insert")).message(),
            "switchyard: write acknowledged by the fenced cluster cluster-a after the failover; not on the new primary; may have been applied on cluster-a; check before retrying"
        );
        let big = ProxyError::MessageTooLarge { len: 10, limit: 1 };
        assert_eq!(code(&big.answer(by_name("Insert"))), Code::ResourceExhausted);
    }

    #[test]
    fn nothing_answers_unavailable() {
        let all = [
            ProxyError::NoPrimary { reason: "x".into() },
            ProxyError::NoReadTarget { reason: "x".into() },
            ProxyError::NotSent { cluster: "a".into(), detail: "x".into() },
            ProxyError::MaybeSent { cluster: "a".into(), detail: "x".into() },
            ProxyError::ShuttingDown,
            ProxyError::CutOff { cluster: "a".into(), may_be_applied: false },
            ProxyError::GateFull("x".into()),
        ];
        for e in all {
            for m in [None, by_name("Insert"), by_name("Search"), by_name("GetReplicateInfo")] {
                assert_ne!(e.answer(m).metric_code(), Code::Unavailable, "{e:?} on {m:?}");
            }
        }
    }
}
