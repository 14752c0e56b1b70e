//! Role changes: `UpdateReplicateConfiguration`, force promote, fences, and the two read
//! calls that show the result (`GetReplicateConfiguration`, `GetReplicateInfo`).
//!
//! The rules [§4.3, §4.4], refined for the stand-in:
//! - The same configuration again succeeds at once on any role (and clears a pending one:
//!   this is how a rollback reaches a waiting secondary).
//! - A primary that receives a valid configuration takes it at once. It appends a fence
//!   carrying it on every pchannel; former targets keep getting the log up to and including
//!   that fence ("drains"), then stop. If the configuration makes another cluster the
//!   centre, the primary is demoted: client writes are refused from the moment the call
//!   returns (the write gate makes in-flight writes land before the fence).
//! - A secondary that receives a configuration takes it once it has applied its source's
//!   fence for it (on all pchannels; a write after a fence that demoted the source voids
//!   it, since the source is primary again). Until then the configuration is
//!   `pending` and the call waits, until the caller's deadline; then it fails and the
//!   cluster stays secondary. A fence that arrives while its configuration is pending
//!   applies it; other fences are recorded and ignored.
//! - Taking a configuration that makes this cluster the centre is a promotion: targets
//!   start at the current end of the log (their floor) and the new primary appends a fence
//!   of its own, which tells its new secondaries it has taken over.
//! - A demoted cluster asked to be the centre again is a secondary like any other: the call
//!   waits until the cluster's configuration equals the one sent, which happens only when its
//!   new source, once primary, sends it (a switch back). Milvus has no other way back: a
//!   non-force configuration sent to a secondary fails its broadcast with `ErrNotPrimary`
//!   (`internal/streamingcoord/server/broadcaster/broadcaster.go`) and waits
//!   (`waitUntilPrimaryChangeOrConfigurationSame`, `internal/streamingcoord/server/service/assignment.go`).
//!   Its new source promotes by itself once it has applied this cluster's log up to the fence.
//! - Force promote makes a secondary the only cluster of its configuration at once, and
//!   keeps the last checkpoints from its old source as salvage checkpoints.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::config::{Role, cluster, redacted, role_of, targets};
use super::core::{Core, FenceProgress, State};
use super::persist::{Checkpoint, Drain};
use super::replicator::reconcile;
use super::validate::{force, force_promote_shape_ok, validate};
use super::wire::failed_status;
use switchyard::grpc::{Code, GrpcStatus};
use switchyard::proto::common::{MessageId, ReplicateCheckpoint, ReplicateConfiguration, Status, WalName};
use switchyard::proto::milvus::{
    GetReplicateConfigurationResponse, GetReplicateInfoRequest, GetReplicateInfoResponse,
    UpdateReplicateConfigurationRequest,
};

/// How long a configuration change waits for client writes in flight (a hung backend).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a waiting call may block when the caller sent no deadline.
pub(crate) const DEFAULT_WAIT_CAP: Duration = Duration::from_secs(600);

/// Handles `UpdateReplicateConfiguration`; `deadline` is the caller's `grpc-timeout`.
pub(crate) async fn update_configuration(
    core: &Arc<Core>,
    req: UpdateReplicateConfigurationRequest,
    deadline: Option<Duration>,
) -> Status {
    let started = Instant::now();
    let cfg = req.replicate_configuration.unwrap_or_default();
    if req.force_promote {
        return force_promote(core, &cfg).await;
    }
    // Config changes one at a time; no client write and no replicated message in flight.
    let config_guard = core.config_lock.lock().await;
    let Ok(gate) = tokio::time::timeout(DRAIN_TIMEOUT, core.write_gate.write()).await else {
        return failed_status(format!(
            "milvus-standin: client writes in flight did not finish within {DRAIN_TIMEOUT:?}; configuration not changed"
        ));
    };
    let apply_guard = core.apply_lock.lock().await;
    let outcome = core.update(|st| {
        if st.config.as_ref() == Some(&cfg) {
            if st.pending.take().is_some() {
                st.save_or_log(true);
            }
            return Outcome::Done;
        }
        if let Err(text) = validate(&cfg, st.config.as_ref(), &st.me, &st.pchannels) {
            tracing::info!(reason = %text, "replicate configuration refused");
            return Outcome::Failed(failed_status(text));
        }
        let res = match st.role() {
            Role::Primary => take_as_primary(st, &cfg).map(|()| Outcome::Done),
            Role::Secondary { source } => {
                take_as_secondary(st, &cfg).map(|taken| if taken { Outcome::Done } else { Outcome::Wait(source) })
            }
        };
        res.unwrap_or_else(|e| Outcome::Failed(io_failed(e)))
    });
    drop(apply_guard);
    drop(gate);
    reconcile(core);
    drop(config_guard);
    match outcome {
        Outcome::Done => Status::default(),
        Outcome::Failed(status) => status,
        Outcome::Wait(source) => wait_for(core, &cfg, &source, answer_by(started, deadline)).await,
    }
}

enum Outcome {
    Done,
    Failed(Status),
    Wait(String),
}

fn io_failed(e: std::io::Error) -> Status {
    failed_status(format!("milvus-standin: cannot persist the replicate configuration: {e}"))
}

/// When a blocked call answers at the latest: a little before the caller's deadline, so the
/// caller reads our status rather than its own DEADLINE_EXCEEDED.
fn answer_by(started: Instant, deadline: Option<Duration>) -> Instant {
    let d = deadline.unwrap_or(DEFAULT_WAIT_CAP).min(DEFAULT_WAIT_CAP);
    let margin = (d / 10).min(Duration::from_millis(500));
    started + d.saturating_sub(margin)
}

/// A primary takes `cfg` at once (see the module docs).
fn take_as_primary(st: &mut State, cfg: &ReplicateConfiguration) -> std::io::Result<()> {
    let me = st.me.clone();
    let old_targets: Vec<Drain> = st
        .config
        .as_ref()
        .map(|old| {
            targets(old, &me)
                .into_iter()
                .map(|t| Drain {
                    cluster_id: t.cluster_id.clone(),
                    uri: t.connection_param.as_ref().map(|p| p.uri.clone()).unwrap_or_default(),
                    token: t.connection_param.as_ref().map(|p| p.token.clone()).unwrap_or_default(),
                    pchannels: t.pchannels.clone(),
                    until: 0,
                })
                .collect()
        })
        .unwrap_or_default();
    let stays_primary = role_of(Some(cfg), &me) == Role::Primary;
    // The fence tells the targets (old and new) about the configuration; with none, skip it.
    let last_fence = if stays_primary || !old_targets.is_empty() { st.append_fences(cfg)? } else { 0 };
    // Only a cluster that was the centre of a configuration is "demoted"; a standalone
    // cluster (no configuration) that joins as a secondary is not, so it cannot roll back.
    st.demoted = !stays_primary && st.config.is_some();
    st.config = Some(cfg.clone());
    st.pending = None;
    st.fence = None;
    st.heard_from_source = false;
    let kept: Vec<String> = match st.role() {
        Role::Primary => targets(cfg, &me).iter().map(|t| t.cluster_id.clone()).collect(),
        Role::Secondary { .. } => Vec::new(),
    };
    for d in old_targets.into_iter().filter(|d| !kept.contains(&d.cluster_id)) {
        st.drains.retain(|x| x.cluster_id != d.cluster_id);
        st.drains.push(Drain { until: last_fence, ..d });
    }
    st.drains.retain(|d| !kept.contains(&d.cluster_id));
    tracing::info!(role = st.role().label(), "replicate configuration taken as primary");
    st.save(true)
}

/// A secondary takes `cfg` now if its source's fence for it is applied and returns true;
/// otherwise it makes `cfg` pending and returns false (a demoted cluster included: Milvus
/// does not undo a demotion, see the module doc).
fn take_as_secondary(st: &mut State, cfg: &ReplicateConfiguration) -> std::io::Result<bool> {
    if fence_complete(st, cfg) {
        take_after_fence(st, cfg)?;
        return Ok(true);
    }
    st.pending = Some(cfg.clone());
    tracing::info!("replicate configuration pending until the source's fence arrives");
    st.save(true)?;
    Ok(false)
}

fn fence_complete(st: &State, cfg: &ReplicateConfiguration) -> bool {
    st.fence.as_ref().is_some_and(|f| &f.config == cfg && f.pchannels.len() >= st.pchannels.len())
}

/// Takes `cfg` once the source's fence for it is applied: a promotion or a new source.
fn take_after_fence(st: &mut State, cfg: &ReplicateConfiguration) -> std::io::Result<()> {
    st.config = Some(cfg.clone());
    st.pending = None;
    st.fence = None;
    st.heard_from_source = false;
    st.demoted = false;
    if st.is_primary() {
        let floor = st.log.len() as u64;
        let ids: Vec<String> = targets(cfg, &st.me).iter().map(|t| t.cluster_id.clone()).collect();
        for id in &ids {
            st.floors.insert(id.clone(), floor);
        }
        st.drains.retain(|d| !ids.contains(&d.cluster_id));
        st.append_fences(cfg)?;
        tracing::info!("promoted to primary after the old primary's fence");
    } else {
        tracing::info!(role = st.role().label(), "replicate configuration taken after the source's fence");
    }
    st.save(true)
}

/// Records a fence from the current source on pchannel `index`; takes its configuration if
/// it is pending. Returns whether the configuration changed.
pub(crate) fn record_fence(st: &mut State, cfg: ReplicateConfiguration, index: usize) -> std::io::Result<bool> {
    match st.fence.as_mut() {
        Some(f) if f.config == cfg => {
            f.pchannels.insert(index);
        }
        _ => st.fence = Some(FenceProgress { config: cfg.clone(), pchannels: [index].into() }),
    }
    if fence_complete(st, &cfg) && st.pending.as_ref() == Some(&cfg) {
        take_after_fence(st, &cfg)?;
        return Ok(true);
    }
    Ok(false)
}

async fn wait_for(core: &Arc<Core>, cfg: &ReplicateConfiguration, source: &str, by: Instant) -> Status {
    let mut rx = core.subscribe();
    loop {
        let (taken, pending) = core.read(|st| (st.config.as_ref() == Some(cfg), st.pending.as_ref() == Some(cfg)));
        if taken {
            return Status::default();
        }
        if !pending {
            return failed_status(
                "the replicate configuration was replaced by another one while waiting for the fence of the current primary",
            );
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep_until(by) => break,
        }
    }
    failed_status(format!(
        "timeout waiting for the fence of the current primary '{source}': the cluster stays secondary and the \
         configuration stays pending until the fence is applied or another configuration replaces it"
    ))
}

async fn force_promote(core: &Arc<Core>, cfg: &ReplicateConfiguration) -> Status {
    if !force_promote_shape_ok(cfg, &core.id) {
        return failed_status(force::reason(force::BAD_SHAPE));
    }
    let _config_guard = core.config_lock.lock().await;
    let _apply_guard = core.apply_lock.lock().await;
    let res = core.update(|st| -> Result<(), String> {
        let current = st.config.clone().ok_or_else(|| force::reason(force::NO_CONFIG))?;
        let Role::Secondary { source } = st.role() else { return Err(force::reason(force::ON_PRIMARY)) };
        let mine = cluster(&current, &st.me).cloned().ok_or_else(|| {
            force::reason(&format!(
                "force promote requires current cluster in existing configuration; cluster {} not found in config",
                st.me
            ))
        })?;
        for i in 0..st.pchannels.len() {
            if let Some(cp) = st.checkpoints.get(&(source.clone(), i)).cloned() {
                st.salvage.insert((source.clone(), i), cp);
            }
        }
        st.config = Some(ReplicateConfiguration { clusters: vec![mine], cross_cluster_topology: Vec::new() });
        st.pending = None;
        st.fence = None;
        st.heard_from_source = false;
        st.demoted = false;
        st.drains.clear();
        tracing::warn!(old_source = %source, "force promoted to primary");
        st.save(true).map_err(|e| format!("milvus-standin: cannot persist the replicate configuration: {e}"))
    });
    reconcile(core);
    match res {
        Ok(()) => Status::default(),
        Err(reason) => failed_status(reason),
    }
}

/// `GetReplicateConfiguration`: the configuration with tokens redacted.
pub(crate) fn get_configuration(core: &Core) -> GetReplicateConfigurationResponse {
    GetReplicateConfigurationResponse {
        status: Some(Status::default()),
        configuration: core.read(|st| st.config.as_ref().map(redacted)),
    }
}

/// `GetReplicateInfo`: on a secondary, the checkpoint of the source pchannel at the index of
/// `target_pchannel` (this cluster's pchannel; the source's name is accepted too), unset
/// until something arrived from that source; on a primary none. The salvage checkpoint is
/// there after a force promote.
pub(crate) fn get_info(core: &Core, req: &GetReplicateInfoRequest) -> Result<GetReplicateInfoResponse, GrpcStatus> {
    core.read(|st| {
        let source = match (req.source_cluster_id.as_str(), st.role()) {
            ("", Role::Secondary { source }) => source,
            (s, _) => s.to_string(),
        };
        let source_pchannels: Vec<String> =
            st.config.as_ref().and_then(|c| cluster(c, &source)).map(|c| c.pchannels.clone()).unwrap_or_default();
        let index = st
            .pchannels
            .iter()
            .position(|p| *p == req.target_pchannel)
            .or_else(|| source_pchannels.iter().position(|p| *p == req.target_pchannel))
            .ok_or_else(|| {
                GrpcStatus::new(Code::InvalidArgument, format!("pchannel '{}' not found", req.target_pchannel))
            })?;
        // Unset on a primary, and on a secondary that has nothing from `source` yet.
        let checkpoint = match st.role() {
            Role::Primary => None,
            Role::Secondary { .. } => st.checkpoints.get(&(source.clone(), index)).map(to_proto),
        };
        let salvage_checkpoint = st.salvage.get(&(source, index)).map(to_proto);
        Ok(GetReplicateInfoResponse { checkpoint, salvage_checkpoint })
    })
}

fn to_proto(cp: &Checkpoint) -> ReplicateCheckpoint {
    ReplicateCheckpoint {
        cluster_id: cp.source_cluster_id.clone(),
        pchannel: cp.pchannel.clone(),
        message_id: Some(MessageId { id: cp.message_id.clone(), wal_name: WalName::Test as i32 }),
        time_tick: cp.time_tick,
    }
}
