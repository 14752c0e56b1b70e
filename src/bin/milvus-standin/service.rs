//! One gRPC request: decide who answers it.
//!
//! Every request first waits out a freeze, then (except replication streams) the injected
//! latency. The stand-in answers the CDC control calls itself (`UpdateReplicateConfiguration`,
//! `GetReplicateConfiguration`, `GetReplicateInfo`, `CreateReplicateStream`) and
//! `CheckHealth` and `GetVersion`; writes (by the method table; unknown paths count as
//! writes) go to [`super::writes`]; everything else is passed to the backend as it is —
//! path, metadata and body — and its answer streamed back as it is.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::core::Core;
use super::{faults, receiver, switchover, wire, writes};
use switchyard::body::{self, Body};
use switchyard::grpc::client::parse_grpc_timeout;
use switchyard::grpc::{Code, decode_message};
use switchyard::method::{self, Kind};
use switchyard::proto::common::Status;
use switchyard::proto::milvus::{
    CheckHealthResponse, GetReplicateInfoRequest, GetVersionResponse, UpdateReplicateConfigurationRequest,
};

/// The version `GetVersion` reports.
pub(crate) fn version() -> String {
    format!("milvus-standin-{}", env!("CARGO_PKG_VERSION"))
}

/// Answers one request.
pub(crate) async fn serve(core: Arc<Core>, req: Request<Incoming>) -> Response<Body> {
    core.faults.wait_thawed().await;
    let method = method::lookup(req.uri().path());
    let name = method.map(|m| m.name).unwrap_or("");
    if name != "CreateReplicateStream" {
        let ms = core.faults.get().latency_ms;
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
    if req.headers().contains_key(switchyard::monitor::probe::MONITOR_HEADER) {
        // switchyard's monitor reading for itself: not a client's request.
        faults::bump(&core.counters.monitor);
    } else if let Some(m) = method {
        core.counters.count_kind(m.kind);
    }
    match name {
        "CreateReplicateStream" => receiver::create_replicate_stream(core, req),
        "UpdateReplicateConfiguration" => {
            let deadline = req.headers().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
            match read::<UpdateReplicateConfigurationRequest>(req).await {
                Ok(r) => wire::unary_msg(&switchover::update_configuration(&core, r, deadline).await),
                Err(resp) => resp,
            }
        }
        "GetReplicateConfiguration" => wire::unary_msg(&switchover::get_configuration(&core)),
        "GetReplicateInfo" => match read::<GetReplicateInfoRequest>(req).await {
            Ok(r) => match switchover::get_info(&core, &r) {
                Ok(resp) => wire::unary_msg(&resp),
                Err(st) => st.to_response(),
            },
            Err(resp) => resp,
        },
        "CheckHealth" => {
            let unhealthy = core.faults.get().unhealthy;
            wire::unary_msg(&CheckHealthResponse {
                status: Some(Status::default()),
                is_healthy: !unhealthy,
                reasons: if unhealthy { vec!["milvus-standin: unhealthy (injected fault)".into()] } else { Vec::new() },
            })
        }
        "GetVersion" => wire::unary_msg(&GetVersionResponse { status: Some(Status::default()), version: version() }),
        "DescribeCollection" => describe_collection(&core, req).await,
        _ => match method.map(|m| m.kind) {
            None | Some(Kind::Write(_)) => writes::handle(&core, method, req).await,
            Some(_) => pass(&core, req).await,
        },
    }
}

/// Reads and decodes a unary request message; an error response when it cannot.
async fn read<M: prost::Message + Default>(req: Request<Incoming>) -> Result<M, Response<Body>> {
    let bytes = req
        .into_body()
        .collect()
        .await
        .map_err(|e| wire::grpc_error(Code::Cancelled, format!("milvus-standin: reading the request: {e}")))?
        .to_bytes();
    decode_message::<M>(&bytes, 64 << 20).map_err(|e| wire::grpc_error(Code::InvalidArgument, e.to_string()))
}

/// Passes `DescribeCollection` to the backend and puts the collection's consistency level,
/// which milvus-lite does not keep, into the answer.
async fn describe_collection(core: &Core, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let raw = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => return wire::grpc_error(Code::Cancelled, format!("milvus-standin: reading the request: {e}")),
    };
    let dbname = parts.headers.get("dbname").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let request = wire::unframe(&raw);
    let resp = match core.backend.send(Request::from_parts(parts, body::full(raw))).await {
        Ok(r) => r,
        Err(e) => return wire::grpc_error(Code::Unavailable, format!("milvus-standin: backend: {e}")),
    };
    let (mut rparts, rbody) = resp.into_parts();
    let collected = match rbody.collect().await {
        Ok(c) => c,
        Err(e) => return wire::grpc_error(Code::Unavailable, format!("milvus-standin: backend answer: {e}")),
    };
    let trailers = collected.trailers().cloned();
    let mut data = collected.to_bytes();
    if let (Some(req), Some(mut msg)) = (request.as_deref(), wire::unframe(&data)) {
        let mut changed = false;
        if let Some(patched) = core.levels.patch_describe(req, &dbname, &msg) {
            (msg, changed) = (patched, true);
        }
        if let Some(patched) = patch_channels(core, req, &msg) {
            (msg, changed) = (patched, true);
        }
        if changed {
            data = switchyard::grpc::frame::frame_bytes(&msg);
            rparts.headers.remove(http::header::CONTENT_LENGTH);
        }
    }
    writes::rebuild(rparts, data, trailers)
}

/// Puts the collection's channels into a successful `DescribeCollection` answer: its one
/// pchannel is the one its writes are logged and replicated on ([`Core::pchannel_for`]), as
/// `physical_channel_names` (field 5), and one vchannel on it, `<pchannel>_<id>v0` as Milvus
/// names them, as `virtual_channel_names` (field 4). Whatever the backend put there
/// (milvus-lite's own names) is replaced; an answer with a failed status is left alone.
fn patch_channels(core: &Core, request: &[u8], answer: &[u8]) -> Option<bytes::Bytes> {
    use prost::Message;
    let coll = wire::string_field(request, 3).filter(|c| !c.is_empty())?;
    let status = wire::fields(answer)?.into_iter().find(|f| f.number == 1 && f.wire_type == 2);
    if let Some(f) = status {
        let st = Status::decode(f.value).ok()?;
        if !wire::status_ok(&st) {
            return None;
        }
    }
    let pch = core.pchannels.get(core.pchannel_for(&coll)).cloned()?;
    let id = wire::varint_field(answer, 3).unwrap_or(0);
    let with_v = wire::set_string_fields(answer, 4, &[format!("{pch}_{id}v0")])?;
    wire::set_string_fields(&with_v, 5, &[pch])
}

/// Passes a request to the backend and streams its answer back.
async fn pass(core: &Core, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    match core.backend.send(Request::from_parts(parts, body::boxed(body))).await {
        Ok(resp) => resp.map(body::boxed),
        Err(e) => wire::grpc_error(Code::Unavailable, format!("milvus-standin: backend: {e}")),
    }
}
