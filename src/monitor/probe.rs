//! Active probes of one cluster: `CheckHealth` (or `GetVersion` where it is not
//! implemented) and, on standbys, the replication checkpoints (`GetReplicateInfo`).

use std::time::Duration;

use crate::grpc::Code;
use crate::grpc::client::{CallError, CallOptions, unary};
use crate::proto::milvus::{
    CheckHealthRequest, CheckHealthResponse, GetReplicateInfoRequest, GetReplicateInfoResponse, GetVersionRequest,
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

/// The newest source timestamp a standby has applied from `source`, over all its pchannels.
/// `Ok(None)`: the cluster has nothing from that source. `Err`: checkpoints unavailable
/// (no CDC support, or the call failed).
pub async fn checkpoint(cluster: &Cluster, source: &str, timeout: Duration) -> Result<Option<u64>, String> {
    let opts = CallOptions::timeout(timeout).with_token(cluster.token());
    let calls = cluster.config.pchannels.iter().map(|pch| {
        let req = GetReplicateInfoRequest { source_cluster_id: source.to_string(), target_pchannel: pch.clone() };
        let opts = opts.clone();
        async move { unary::<_, GetReplicateInfoResponse>(&cluster.upstream, "GetReplicateInfo", &req, &opts).await }
    });
    let mut best: Option<u64> = None;
    for r in futures_util::future::join_all(calls).await {
        match r {
            Ok(resp) => {
                if let Some(cp) = resp.checkpoint {
                    best = Some(best.map_or(cp.time_tick, |b: u64| b.max(cp.time_tick)));
                }
            }
            Err(e) => return Err(format!("GetReplicateInfo: {e}")),
        }
    }
    Ok(best)
}
