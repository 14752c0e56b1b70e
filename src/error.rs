//! Errors switchyard itself produces on the gRPC endpoint, and their one mapping to a
//! gRPC status.
//!
//! Every message starts with `switchyard:`, names the cluster when there is one, and says
//! whether the request was sent, so the client knows whether a retry is safe.

use std::time::Duration;

use crate::grpc::{Code, GrpcStatus};

/// Why switchyard answered a call itself.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// No primary can take writes now.
    #[error("no usable primary ({reason}); write not sent, retry when the topology is healthy")]
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
    #[error("cluster {cluster} failed mid-request: {detail}; the request may have been applied, check before retrying")]
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
    /// Clients may not change the replicate configuration through switchyard.
    #[error(
        "UpdateReplicateConfiguration is refused: switchyard owns the replication topology; use its admin API (POST /v1/switchover, POST /v1/failover) or `switchyard ctl`"
    )]
    ReplicateConfigRefused,
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
    /// switchyard is shutting down.
    #[error("shutting down; request not sent, retry against another proxy")]
    ShuttingDown,
    /// The shutdown grace period ended while the call waited for its cluster's answer.
    #[error(
        "shutting down; {cluster} had not answered when the shutdown grace period ended; {}",
        if *may_be_applied { "the write may have been applied, check before retrying" } else { "safe to retry" }
    )]
    CutOff {
        /// The cluster the call was sent to.
        cluster: String,
        /// Whether it was a write (which the cluster may have applied).
        may_be_applied: bool,
    },
}

impl ProxyError {
    /// The same error for a read: "may have been applied" becomes "safe to retry".
    pub fn for_read(self) -> Self {
        match self {
            ProxyError::MaybeSent { cluster, detail } => ProxyError::ReadFailed { cluster, detail },
            other => other,
        }
    }

    /// The gRPC status for this error.
    pub fn status(&self) -> GrpcStatus {
        let code = match self {
            ProxyError::NoPrimary { .. }
            | ProxyError::NoReadTarget { .. }
            | ProxyError::NotSent { .. }
            | ProxyError::MaybeSent { .. }
            | ProxyError::ReadFailed { .. }
            | ProxyError::HeldTooLong { .. }
            | ProxyError::HoldFailed { .. }
            | ProxyError::ShuttingDown
            | ProxyError::CutOff { .. } => Code::Unavailable,
            ProxyError::MessageTooLarge { .. } | ProxyError::GateFull(_) => Code::ResourceExhausted,
            ProxyError::BadBody(_) => Code::InvalidArgument,
            ProxyError::ReplicateConfigRefused | ProxyError::Fenced(_) => Code::FailedPrecondition,
            ProxyError::UnknownCluster(_) => Code::NotFound,
        };
        GrpcStatus::new(code, format!("switchyard: {self}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_start_with_switchyard_and_say_if_sent() {
        let e = ProxyError::HeldTooLong { held: Duration::from_secs(30), during: "switchover to cluster-b".into() };
        let st = e.status();
        assert_eq!(st.code, Code::Unavailable);
        assert_eq!(st.message, "switchyard: write held 30s during switchover to cluster-b; not sent, safe to retry");
        assert_eq!(ProxyError::ReplicateConfigRefused.status().code, Code::FailedPrecondition);
        let cut = ProxyError::CutOff { cluster: "cluster-a".into(), may_be_applied: true }.status();
        assert_eq!(cut.code, Code::Unavailable);
        assert_eq!(
            cut.message,
            "switchyard: shutting down; cluster-a had not answered when the shutdown grace period ended; the write may have been applied, check before retrying"
        );
        let read = ProxyError::MaybeSent { cluster: "cluster-c".into(), detail: "connection error".into() }.for_read();
        assert_eq!(read.status().code, Code::Unavailable);
        assert_eq!(
            read.status().message,
            "switchyard: cluster cluster-c failed mid-request: connection error; a read changes nothing, safe to retry"
        );
    }
}
