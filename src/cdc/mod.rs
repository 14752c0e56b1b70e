//! The CDC seam: the three Milvus calls that change or read replication roles, behind one
//! object-safe trait.
//!
//! Every control call of switchover, failover, drill, readmit and role discovery goes
//! through a cluster's [`Cdc`] ([`crate::routing::Cluster::cdc`]):
//! `GetReplicateConfiguration` ([`Cdc::read_config`]), `UpdateReplicateConfiguration`
//! ([`Cdc::update_config`]) and `GetReplicateInfo` ([`Cdc::replicate_info`]). The monitor's
//! checkpoint probe uses it too. The monitor's health probes (`CheckHealth`/`GetVersion`),
//! the data path's `DescribeCollection` and the drill's scratch-database calls stay on the
//! small unary client in [`crate::grpc::client`]: they are not CDC calls.
//!
//! [`TonicCdc`] is the real implementation: generated tonic client stubs over switchyard's
//! own pooled HTTP/2 connections ([`crate::upstream::Upstream`]), so control calls share the
//! data path's connections and TLS settings; see [`tonic_cdc`] for its tower stack. Tests
//! inject in-memory clusters (`fake::FakeNet`) through [`CdcFactory`].
//!
//! Policy stays with the callers: [`crate::switchover::plan::send`] retries an update until
//! its deadline; a `Cdc` makes one attempt (reads retry once when the request was not sent).

#[cfg(test)]
pub mod fake;
pub mod tonic_cdc;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::config::ClusterConfig;
use crate::grpc::{Code, GrpcStatus};
use crate::proto::common::ReplicateConfiguration;
use crate::proto::milvus::GetReplicateInfoResponse;
use crate::upstream::Upstream;
pub use tonic_cdc::TonicCdc;

/// A boxed, sendable future of a CDC call (keeps [`Cdc`] object-safe).
pub type CdcFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, CdcError>> + Send + 'a>>;

/// A standby's replication position on one pchannel (`GetReplicateInfo`).
pub type ReplicateInfo = GetReplicateInfoResponse;

/// One cluster's replicate configuration, as Milvus exposes it.
///
/// Each method makes one attempt bounded by `timeout` (also sent as `grpc-timeout`). The
/// bearer token is fixed when the implementation is built, never looked up per call.
pub trait Cdc: Send + Sync + std::fmt::Debug {
    /// `GetReplicateConfiguration`. `Ok(None)`: the cluster has no CDC support (the RPC is
    /// unimplemented); a cluster without a configuration answers an empty one.
    fn read_config(&self, timeout: Duration) -> CdcFuture<'_, Option<ReplicateConfiguration>>;

    /// `UpdateReplicateConfiguration`, with `force_promote` for a failover. On a standby it
    /// returns only once the cluster holds `config` (it has promoted), so `timeout` bounds
    /// the wait for its CDC backlog.
    fn update_config<'a>(
        &'a self,
        config: &'a ReplicateConfiguration,
        force_promote: bool,
        timeout: Duration,
    ) -> CdcFuture<'a, ()>;

    /// `GetReplicateInfo`: the checkpoint (and salvage checkpoint) of `source`'s log applied
    /// on `target_pchannel` of this cluster.
    fn replicate_info<'a>(
        &'a self,
        source: &'a str,
        target_pchannel: &'a str,
        timeout: Duration,
    ) -> CdcFuture<'a, ReplicateInfo>;
}

/// Why a CDC call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CdcError {
    /// The call could not be made or its answer not read.
    #[error("transport: {message}")]
    Transport {
        /// What went wrong.
        message: String,
        /// Whether the request may have reached the cluster.
        sent: bool,
    },
    /// No answer within the call's timeout (it may or may not have been applied).
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The cluster answered with a non-OK gRPC status.
    #[error("{0}")]
    Grpc(GrpcStatus),
    /// The cluster answered with a Milvus status that is not success.
    #[error("{reason} (milvus code {code})")]
    Milvus {
        /// `Status.code`, or the legacy `error_code` when `code` is 0.
        code: i32,
        /// `Status.reason`.
        reason: String,
    },
}

impl CdcError {
    /// Whether a retry with the same request could succeed (transport trouble, timeouts,
    /// `UNAVAILABLE`, `DEADLINE_EXCEEDED`).
    pub fn is_transient(&self) -> bool {
        match self {
            CdcError::Transport { .. } | CdcError::Timeout(_) => true,
            CdcError::Grpc(s) => matches!(s.code, Code::Unavailable | Code::DeadlineExceeded),
            CdcError::Milvus { .. } => false,
        }
    }

    /// A Milvus `Status` that is not success, as an error.
    pub fn from_status(st: &crate::proto::common::Status) -> Option<Self> {
        (st.code != 0 || st.error_code != 0).then(|| CdcError::Milvus {
            code: if st.code != 0 { st.code } else { st.error_code },
            reason: st.reason.clone(),
        })
    }
}

/// Builds a cluster's [`Cdc`] from its config and its connection pool.
pub type CdcFactory = Arc<dyn Fn(&ClusterConfig, &Arc<Upstream>) -> Arc<dyn Cdc> + Send + Sync>;

/// The production factory: a [`TonicCdc`] over the cluster's pool, with its `token`.
pub fn tonic_factory() -> CdcFactory {
    Arc::new(|config: &ClusterConfig, upstream: &Arc<Upstream>| -> Arc<dyn Cdc> {
        Arc::new(TonicCdc::new(upstream.clone(), config.token.as_ref().map(|t| t.expose())))
    })
}
