//! Client writes: rejected on a secondary, applied and logged on a primary.
//!
//! On a secondary a write is not passed on; it is answered with gRPC OK and the RPC's own
//! response type holding a failed `common.Status` [§4.2]: DML gets Milvus's streaming
//! replicate-violation text, DDL and DCL get "cluster is not primary, cannot do any
//! DDL/DCL". A path outside the method table (treated as a write) has no known response
//! type, so it gets a gRPC `FAILED_PRECONDITION` with the DDL text instead.
//!
//! On a primary the request is buffered, sent to the backend, and its answer buffered. If
//! the backend acknowledged it (grpc-status 0 and a successful `common.Status`), it is
//! appended to the log with a new time tick and the pchannel of its collection; for
//! Insert/Upsert/Delete, `MutationResult.timestamp` in the answer is set to that tick, as
//! Milvus returns the WAL timestamp there.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::core::Core;
use super::faults::bump;
use super::wire;
use switchyard::body::{self, Body};
use switchyard::grpc::{Code, GrpcStatus};
use switchyard::method::{Kind, Method, Reply, WriteClass};
use switchyard::proto::common::{ErrorCode, Status};

/// The reasons a write gets on a secondary: Milvus's own texts, shared with the proxy that matches them.
pub(crate) use switchyard::proxy::reply::{DDL_NOT_PRIMARY as DDL_ON_SECONDARY, DML_NOT_PRIMARY as DML_ON_SECONDARY};

/// Handles a client write (`method` is `None` for a path outside the table).
pub(crate) async fn handle(
    core: &Arc<Core>,
    method: Option<&'static Method>,
    req: Request<Incoming>,
) -> Response<Body> {
    // Read the request first: a slow client must not hold the gate a demotion waits for.
    let (parts, body) = req.into_parts();
    let raw = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => return wire::grpc_error(Code::Cancelled, format!("milvus-standin: reading the request: {e}")),
    };
    let gate = core.write_gate.read().await;
    if !core.read(|st| st.is_primary()) {
        drop(gate);
        bump(&core.counters.writes_rejected);
        return reject(method);
    }
    bump(&core.counters.writes_served);
    let payload = wire::unframe(&raw);
    let collection = payload.as_deref().and_then(|p| wire::string_field(p, 3)).unwrap_or_default();
    let pchannel = core.pchannel_for(&collection);
    let dbname = parts.headers.get("dbname").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let rpc = method.map(|m| m.name.to_string()).unwrap_or_else(|| parts.uri.path().to_string());

    let _pchannel_order = core.pch_locks[pchannel].lock().await;
    let resp = match core.backend.send(Request::from_parts(parts, body::full(raw))).await {
        Ok(r) => r,
        Err(e) => return wire::grpc_error(Code::Unavailable, format!("milvus-standin: backend: {e}")),
    };
    let (mut parts, body) = resp.into_parts();
    let collected = match body.collect().await {
        Ok(c) => c,
        Err(e) => return wire::grpc_error(Code::Unavailable, format!("milvus-standin: backend answer: {e}")),
    };
    let trailers = collected.trailers().cloned();
    let mut data = collected.to_bytes();
    let grpc_ok = GrpcStatus::from_headers(&parts.headers)
        .or_else(|| trailers.as_ref().and_then(GrpcStatus::from_headers))
        .is_some_and(|s| s.code == Code::Ok);
    let msg = wire::unframe(&data);
    let acked = grpc_ok
        && match (method.map(|m| m.reply), msg.as_deref()) {
            (Some(Reply::Other) | None, _) => true,
            (Some(reply), Some(m)) => wire::reply_status(reply, m).is_some_and(|s| wire::status_ok(&s)),
            (Some(_), None) => false,
        };
    if acked {
        let Some(payload) = payload else {
            tracing::warn!(method = %rpc, "write is not one uncompressed gRPC message; applied here but not replicated");
            return rebuild(parts, data, trailers);
        };
        core.levels.learn(&rpc, &dbname, &payload);
        let tick = match core.update(|st| st.append_write(rpc.clone(), dbname, pchannel, payload)) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot append to the log");
                return wire::grpc_error(
                    Code::Internal,
                    format!("milvus-standin: the write was applied but not logged: {e}"),
                );
            }
        };
        if core.faults.take_lost_answer() {
            tracing::info!(method = %rpc, tick, "write applied and logged; its answer is lost (fault)");
            return Response::from_parts(parts, wire::broken_body());
        }
        if matches!(rpc.as_str(), "Insert" | "Upsert" | "Delete")
            && let Some(out) = msg.as_deref().and_then(|m| wire::set_varint_field(m, 9, tick))
        {
            data = switchyard::grpc::frame::frame_bytes(&out);
            parts.headers.remove(http::header::CONTENT_LENGTH);
        }
    }
    rebuild(parts, data, trailers)
}

pub(crate) fn rebuild(parts: http::response::Parts, data: Bytes, trailers: Option<HeaderMap>) -> Response<Body> {
    let mut frames = Vec::with_capacity(2);
    if !data.is_empty() {
        frames.push(Frame::data(data));
    }
    if let Some(t) = trailers {
        frames.push(Frame::trailers(t));
    }
    Response::from_parts(parts, wire::frames_body(frames))
}

/// The answer a write gets on a secondary.
pub(crate) fn reject(method: Option<&'static Method>) -> Response<Body> {
    let Some(m) = method else {
        return wire::grpc_error(Code::FailedPrecondition, DDL_ON_SECONDARY);
    };
    let reason = match m.kind {
        Kind::Write(WriteClass::Dml) => DML_ON_SECONDARY,
        _ => DDL_ON_SECONDARY,
    };
    let status = Status {
        error_code: ErrorCode::UnexpectedError as i32,
        reason: reason.to_string(),
        code: 65535,
        retriable: false,
        ..Status::default()
    };
    match wire::reply_with_status(m.reply, &status) {
        Some(msg) => wire::unary_ok(msg),
        None => wire::grpc_error(Code::FailedPrecondition, reason),
    }
}
