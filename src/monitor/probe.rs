//! Active probes of one cluster: `CheckHealth` (or `GetVersion` where it is not
//! implemented) and, on standbys, the replication checkpoint of each pchannel
//! (`GetReplicateInfo`, through the cluster's [`crate::cdc::Cdc`]); on the primary, the
//! pchannels of written collections (`DescribeCollection`). Health and `DescribeCollection`
//! stay on the small unary client of [`crate::grpc::client`].

use std::time::Duration;

use super::writes::{CollectionKey, Resolution};
use crate::grpc::Code;
use crate::grpc::client::{CallError, CallOptions, unary};
use crate::proto::milvus::{
    CheckHealthRequest, CheckHealthResponse, DescribeCollectionRequest, DescribeCollectionResponse, GetVersionRequest,
    GetVersionResponse,
};
use crate::routing::Cluster;

/// Probes health once. `Err` carries a short reason.
pub async fn health(cluster: &Cluster, timeout: Duration) -> Result<(), String> {
    let opts = CallOptions::timeout(timeout).with_token(cluster.token());
    match unary::<_, CheckHealthResponse>(&cluster.upstream, "CheckHealth", &CheckHealthRequest {}, &opts).await {
        Ok(r) => {
            if let Some(st) = r.status.as_ref().filter(|s| s.code != 0 || s.error_code != 0) {
                return Err(format!("CheckHealth status {}: {}", st.code, st.reason));
            }
            if r.is_healthy { Ok(()) } else { Err(format!("CheckHealth: not healthy ({})", r.reasons.join("; "))) }
        }
        Err(CallError::Status(s)) if s.code == Code::Unimplemented => {
            unary::<_, GetVersionResponse>(&cluster.upstream, "GetVersion", &GetVersionRequest {}, &opts)
                .await
                .map(|_| ())
                .map_err(|e| format!("GetVersion: {e}"))
        }
        Err(e) => Err(format!("CheckHealth: {e}")),
    }
}

/// A standby's checkpoint from `source` on each of its pchannels, in its configured order
/// (`None`: none reported there). Each pchannel's value is kept, never folded into a max:
/// the newest over pchannels hides one that is stuck (Milvus #53382, #52727). `Err`:
/// checkpoints unavailable (no CDC support, or a call failed).
pub async fn checkpoints(cluster: &Cluster, source: &str, timeout: Duration) -> Result<Vec<Option<u64>>, String> {
    let calls = cluster.config.pchannels.iter().map(|pch| cluster.cdc.replicate_info(source, pch, timeout));
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| match r {
            Ok(resp) => Ok(resp.checkpoint.map(|cp| cp.time_tick).filter(|t| *t != 0)),
            Err(e) => Err(format!("GetReplicateInfo: {e}")),
        })
        .collect()
}

/// Metadata on the monitor's own reads of a cluster.
pub const MONITOR_HEADER: &str = "x-switchyard-monitor";

/// A collection's pchannels on `primary`, from `DescribeCollection` (`physical_channel_names`),
/// as indices into its configured `pchannels`.
pub async fn collection_pchannels(primary: &Cluster, key: &CollectionKey, timeout: Duration) -> Resolution {
    let mut opts = CallOptions::timeout(timeout).with_token(primary.token());
    opts.metadata.push(("dbname", key.0.clone()));
    // Names the caller (Milvus ignores metadata it does not know; milvus-standin counts such
    // calls apart from its clients').
    opts.metadata.push((MONITOR_HEADER, "pchannels".into()));
    let req =
        DescribeCollectionRequest { db_name: key.0.clone(), collection_name: key.1.clone(), ..Default::default() };
    match unary::<_, DescribeCollectionResponse>(&primary.upstream, "DescribeCollection", &req, &opts).await {
        Ok(r) => match r.status {
            // Milvus: code 100 (collection not found), legacy error code 4 (CollectionNotExists).
            Some(s) if s.code == 100 || s.error_code == 4 => Resolution::Missing,
            Some(s) if s.code != 0 || s.error_code != 0 => Resolution::Failed,
            _ => {
                let idx: Option<Vec<usize>> = r
                    .physical_channel_names
                    .iter()
                    .map(|n| primary.config.pchannels.iter().position(|p| p == n))
                    .collect();
                match idx {
                    Some(mut v) if !v.is_empty() => {
                        v.sort_unstable();
                        v.dedup();
                        Resolution::Pchannels(v)
                    }
                    _ => Resolution::Failed,
                }
            }
        },
        Err(_) => Resolution::Failed,
    }
}
