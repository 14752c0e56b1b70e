//! Building replicate configurations and sending them to clusters.
//!
//! A new configuration is derived from the one the current primary holds (same clusters, in
//! the same order, with the same uris and pchannels, so Milvus sees an identical message at
//! every cluster), with the real tokens from switchyard's config restored (Milvus redacts
//! them in `GetReplicateConfiguration` and refuses a changed token), and the star re-centred.

use std::time::Duration;

use tokio::time::Instant;

use crate::cdc::CdcError;
use crate::control::Control;
use crate::proto::common::{CrossClusterTopology, MilvusCluster, ReplicateConfiguration};
use crate::routing::Cluster;

/// Re-centres `current` on `centre`, restoring tokens from switchyard's config.
pub fn recentred(control: &Control, current: &ReplicateConfiguration, centre: &str) -> ReplicateConfiguration {
    let clusters: Vec<MilvusCluster> = current
        .clusters
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if let Some(cp) = m.connection_param.as_mut() {
                cp.token =
                    control.cluster(&m.cluster_id).and_then(|c| c.token().map(str::to_string)).unwrap_or_default();
            }
            m
        })
        .collect();
    let edges = clusters
        .iter()
        .filter(|m| m.cluster_id != centre)
        .map(|m| CrossClusterTopology {
            source_cluster_id: centre.to_string(),
            target_cluster_id: m.cluster_id.clone(),
        })
        .collect();
    ReplicateConfiguration { clusters, cross_cluster_topology: edges }
}

/// The configuration that promotes one cluster alone (the second force-promote shape).
pub fn alone(current: &ReplicateConfiguration, control: &Control, id: &str) -> ReplicateConfiguration {
    let me = recentred(control, current, id).clusters.into_iter().filter(|m| m.cluster_id == id).collect();
    ReplicateConfiguration { clusters: me, cross_cluster_topology: Vec::new() }
}

/// Why a configuration call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendConfigError {
    /// The cluster answered and refused (validation, role).
    #[error("{cluster} refused: {reason}")]
    Refused {
        /// The cluster.
        cluster: String,
        /// Milvus's reason.
        reason: String,
    },
    /// No definite answer before the deadline (it may or may not have applied).
    #[error("{cluster} gave no answer within {waited:?}: {last}")]
    NoAnswer {
        /// The cluster.
        cluster: String,
        /// How long we tried.
        waited: Duration,
        /// The last transport error.
        last: String,
    },
}

/// Sends `UpdateReplicateConfiguration` until the cluster answers, retrying only transient
/// errors (the call is idempotent) until `deadline`.
pub async fn send(
    cluster: &Cluster,
    config: &ReplicateConfiguration,
    force_promote: bool,
    deadline: Duration,
) -> Result<(), SendConfigError> {
    let start = Instant::now();
    let mut backoff = Duration::from_millis(50);
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(SendConfigError::NoAnswer {
                cluster: cluster.id.to_string(),
                waited: deadline,
                last: "deadline passed".into(),
            });
        }
        match cluster.cdc.update_config(config, force_promote, left).await {
            Ok(()) => return Ok(()),
            Err(CdcError::Milvus { reason, .. }) => {
                return Err(SendConfigError::Refused { cluster: cluster.id.to_string(), reason });
            }
            Err(e) if e.is_transient() => {
                let left = deadline.saturating_sub(start.elapsed());
                if left < backoff {
                    return Err(SendConfigError::NoAnswer {
                        cluster: cluster.id.to_string(),
                        waited: deadline,
                        last: e.to_string(),
                    });
                }
                tracing::debug!(cluster = %cluster.id, error = %e, "config call failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(CdcError::Grpc(s)) => {
                return Err(SendConfigError::Refused { cluster: cluster.id.to_string(), reason: s.message });
            }
            Err(e) => return Err(SendConfigError::Refused { cluster: cluster.id.to_string(), reason: e.to_string() }),
        }
    }
}

/// Force-promotes a standby, trying the empty shape first and the single-cluster shape when
/// Milvus asks for it (both shapes have shipped in 2.6 patches).
pub async fn force_promote(
    control: &Control,
    cluster: &Cluster,
    current: &ReplicateConfiguration,
    deadline: Duration,
) -> Result<&'static str, SendConfigError> {
    match send(cluster, &ReplicateConfiguration::default(), true, deadline).await {
        Ok(()) => Ok("empty configuration"),
        Err(SendConfigError::Refused { reason, .. })
            if reason.contains("exactly one cluster") || reason.contains("current cluster only") =>
        {
            send(cluster, &alone(current, control, &cluster.id), true, deadline)
                .await
                .map(|()| "single-cluster configuration")
        }
        Err(SendConfigError::Refused { reason, .. }) if reason.contains("current cluster is primary") => {
            Ok("already primary")
        }
        Err(e) => Err(e),
    }
}
