//! The receiving side of CDC: `CreateReplicateStream` on a secondary [§2.4].
//!
//! The stream must carry `cluster-id` metadata (else `InvalidArgument` "cluster id not
//! found in context"). Each `ReplicateMessage` is handled in order, one at a time across
//! all streams (the apply lock):
//! - On a primary, or from a cluster that is not this cluster's source, the stream ends with
//!   `code: STREAMING_CODE_REPLICATE_VIOLATION, cause: replicate message cannot be received
//!   in primary role` (gRPC `FAILED_PRECONDITION`). One exception keeps a rollback quiet: a
//!   fence carrying the configuration the primary already has is confirmed and dropped.
//! - A message at or below the checkpoint of its (source, pchannel) is dropped and confirmed.
//! - A write is applied to the backend as a unary call to `MilvusService/<method>` with the
//!   `dbname` metadata; then the checkpoint moves and the message is confirmed. A backend
//!   that cannot be reached (or answers `UNAVAILABLE`) ends the stream without moving the
//!   checkpoint, so the source sends the message again. Any other backend answer counts as
//!   applied (Milvus, too, keeps a replicated message that fails to execute), with a warning.
//! - A fence moves the checkpoint and is recorded (see [`super::switchover`]).
//!
//! The stream's work runs in its own task, so a dropped connection (`/fault/down`) never
//! interrupts a message between its backend call and its checkpoint.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prost::Message;
use tokio::sync::mpsc;

use super::config::{Role, cluster, role_of};
use super::core::Core;
use super::faults::bump;
use super::log::{Entry, EntryKind};
use super::persist::Checkpoint;
use super::switchover::record_fence;
use super::wire;
use switchyard::body::{self, Body};
use switchyard::grpc::{self, Code, FrameDecoder, GrpcStatus};
use switchyard::method::SERVICE_PREFIX;
use switchyard::proto::milvus::{
    ReplicateConfirmedMessageInfo, ReplicateMessage, ReplicateRequest, ReplicateResponse, replicate_request,
    replicate_response,
};

/// The error a replicated message gets on a primary or from a cluster that is not the source.
pub(crate) const PRIMARY_ROLE: &str =
    "code: STREAMING_CODE_REPLICATE_VIOLATION, cause: replicate message cannot be received in primary role";

const APPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Handles `CreateReplicateStream`.
pub(crate) fn create_replicate_stream(core: Arc<Core>, req: Request<Incoming>) -> Response<Body> {
    let source =
        req.headers().get("cluster-id").and_then(|v| v.to_str().ok()).filter(|s| !s.is_empty()).map(str::to_string);
    let Some(source) = source else {
        return wire::grpc_error(Code::InvalidArgument, "cluster id not found in context");
    };
    let (tx, body) = wire::channel_body(64);
    tokio::spawn(serve(core, source, req.into_body(), tx));
    wire::grpc_response(body)
}

async fn serve(core: Arc<Core>, source: String, mut body: Incoming, tx: mpsc::Sender<Frame<Bytes>>) {
    let mut dec = FrameDecoder::new(512 << 20);
    let result: Result<(), GrpcStatus> = async {
        loop {
            let frame = match body.frame().await {
                None => return Ok(()),
                Some(Err(e)) => return Err(GrpcStatus::new(Code::Cancelled, format!("stream: {e}"))),
                Some(Ok(f)) => f,
            };
            if let Ok(data) = frame.into_data() {
                dec.push(&data);
            }
            while let Some(msg) =
                dec.next_message().map_err(|e| GrpcStatus::new(Code::InvalidArgument, e.to_string()))?
            {
                core.faults.wait_thawed().await;
                let req =
                    ReplicateRequest::decode(msg).map_err(|e| GrpcStatus::new(Code::InvalidArgument, e.to_string()))?;
                let Some(replicate_request::Request::ReplicateMessage(m)) = req.request else { continue };
                let tick = handle(&core, &source, m).await?;
                let resp = ReplicateResponse {
                    response: Some(replicate_response::Response::ReplicateConfirmedMessageInfo(
                        ReplicateConfirmedMessageInfo { confirmed_time_tick: tick },
                    )),
                };
                if tx.send(Frame::data(grpc::encode_frame(&resp))).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
    .await;
    if let Err(st) = &result {
        tracing::info!(source_cluster = %source, status = %st, "replication stream closed");
    }
    let status = result.err().unwrap_or_else(|| GrpcStatus::new(Code::Ok, ""));
    let _ = tx.send(Frame::trailers(wire::status_trailers(&status))).await;
}

enum Decision {
    Drop,
    Done,
    Apply { index: usize, pchannel: String },
}

/// Handles one message; returns the tick to confirm.
async fn handle(core: &Arc<Core>, stream_source: &str, m: ReplicateMessage) -> Result<u64, GrpcStatus> {
    let source = if m.source_cluster_id.is_empty() { stream_source.to_string() } else { m.source_cluster_id };
    let msg = m.message.ok_or_else(|| GrpcStatus::new(Code::InvalidArgument, "replicate message has no message"))?;
    let entry = Entry::from_message(&msg).map_err(|e| GrpcStatus::new(Code::InvalidArgument, e))?;
    let message_id = msg.id.as_ref().map(|i| i.id.clone()).unwrap_or_default();
    let name = msg.properties.get("pchannel").cloned().unwrap_or_default();

    let _apply = core.apply_lock.lock().await;
    let mut reconfigured = false;
    let decision = core.update(|st| -> Result<Decision, GrpcStatus> {
        match st.role() {
            Role::Primary => {
                return match &entry.kind {
                    EntryKind::Fence { config } if st.config.as_ref() == Some(config) => Ok(Decision::Drop),
                    _ => Err(GrpcStatus::new(Code::FailedPrecondition, PRIMARY_ROLE)),
                };
            }
            Role::Secondary { source: s } if s != source => {
                return Err(GrpcStatus::new(Code::FailedPrecondition, PRIMARY_ROLE));
            }
            Role::Secondary { .. } => {}
        }
        let index = st
            .config
            .as_ref()
            .and_then(|c| cluster(c, &source))
            .and_then(|c| c.pchannels.iter().position(|p| *p == name))
            .unwrap_or(entry.pchannel);
        if index >= st.pchannels.len() {
            return Err(GrpcStatus::new(Code::InvalidArgument, format!("pchannel '{name}' has no counterpart here")));
        }
        let key = (source.clone(), index);
        if st.checkpoints.get(&key).is_some_and(|cp| entry.tick <= cp.time_tick) {
            return Ok(Decision::Drop);
        }
        let EntryKind::Fence { config } = &entry.kind else {
            return Ok(Decision::Apply { index, pchannel: name.clone() });
        };
        st.checkpoints.insert(key, checkpoint(&source, &name, index, entry.tick, &message_id));
        st.heard_from_source = true;
        reconfigured = record_fence(st, config.clone(), index)
            .map_err(|e| GrpcStatus::new(Code::Internal, format!("cannot persist state: {e}")))?;
        st.save_or_log(!reconfigured);
        Ok(Decision::Done)
    })?;
    if reconfigured {
        super::replicator::reconcile(core);
    }
    match decision {
        Decision::Drop => bump(&core.counters.replicated_dropped),
        Decision::Done => bump(&core.counters.replicated_applied),
        Decision::Apply { index, pchannel } => {
            let EntryKind::Write { method, dbname } = &entry.kind else { return Ok(entry.tick) };
            apply(core, method, dbname, entry.payload.clone()).await?;
            core.update(|st| {
                st.checkpoints
                    .insert((source.clone(), index), checkpoint(&source, &pchannel, index, entry.tick, &message_id));
                st.heard_from_source = true;
                // A write after a fence that demoted the source means the source is primary
                // again (a rollback): that fence no longer counts.
                if st.fence.as_ref().is_some_and(|f| role_of(Some(&f.config), &source) != Role::Primary) {
                    st.fence = None;
                }
                st.save_or_log(false);
            });
            bump(&core.counters.replicated_applied);
        }
    }
    Ok(entry.tick)
}

fn checkpoint(source: &str, pchannel: &str, index: usize, tick: u64, message_id: &str) -> Checkpoint {
    Checkpoint {
        source_cluster_id: source.to_string(),
        pchannel: pchannel.to_string(),
        pchannel_index: index,
        time_tick: tick,
        message_id: message_id.to_string(),
    }
}

/// Applies one replicated write to the backend.
async fn apply(core: &Core, method: &str, dbname: &str, payload: Bytes) -> Result<(), GrpcStatus> {
    let path = if method.starts_with('/') { method.to_string() } else { format!("{SERVICE_PREFIX}{method}") };
    let mut req = Request::new(body::full(grpc::frame::frame_bytes(&payload)));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = http::Uri::try_from(path.as_str())
        .map_err(|e| GrpcStatus::new(Code::InvalidArgument, format!("bad method {method:?}: {e}")))?;
    let h = req.headers_mut();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(grpc::CONTENT_TYPE));
    h.insert("te", HeaderValue::from_static("trailers"));
    if !dbname.is_empty()
        && let Ok(v) = HeaderValue::from_str(dbname)
    {
        h.insert("dbname", v);
    }
    if let Some(token) = &core.backend_token
        && let Ok(v) = HeaderValue::from_str(&switchyard::encoding::base64(token.as_bytes()))
    {
        h.insert("authorization", v);
    }
    let unavailable = |e: String| GrpcStatus::new(Code::Unavailable, format!("milvus-standin: backend: {e}"));
    let call = async {
        let resp = core.backend.send(req).await.map_err(|e| unavailable(e.to_string()))?;
        let (parts, body) = resp.into_parts();
        let collected = body.collect().await.map_err(|e| unavailable(e.to_string()))?;
        let status = GrpcStatus::from_headers(&parts.headers)
            .or_else(|| collected.trailers().and_then(GrpcStatus::from_headers))
            .unwrap_or_else(|| GrpcStatus::new(Code::Unknown, "no grpc-status"));
        Ok::<_, GrpcStatus>((status, collected.to_bytes()))
    };
    let (status, data) = tokio::time::timeout(APPLY_TIMEOUT, call)
        .await
        .map_err(|_| unavailable(format!("{method} timed out after {APPLY_TIMEOUT:?}")))??;
    if status.code == Code::Unavailable {
        return Err(unavailable(status.message));
    }
    if status.code != Code::Ok {
        tracing::warn!(method, status = %status, "replicated write failed on the backend; counted as applied");
        return Ok(());
    }
    let reply = switchyard::method::by_name(method).map(|m| m.reply).unwrap_or(switchyard::method::Reply::Other);
    if let Some(st) = wire::unframe(&data).and_then(|m| wire::reply_status(reply, &m))
        && !wire::status_ok(&st)
    {
        tracing::warn!(method, code = st.code, reason = %st.reason, "replicated write refused by the backend; counted as applied");
        return Ok(());
    }
    core.levels.learn(method, dbname, &payload);
    Ok(())
}
