//! Writes: through the gate, to the primary, never sent twice unless refused unapplied.
//!
//! A write is read into memory when it is small (up to [`REPLAY_LIMIT`]) or when the gate
//! is closed and it must be held. Its answer is read before it is passed on, so that a
//! refusal by a cluster that is no longer primary (`STREAMING_CODE_REPLICATE_VIOLATION`,
//! `cluster is not primary`) can be held, the roles rediscovered, and the write sent to the
//! real primary: Milvus refuses such writes before they reach its WAL, so nothing was
//! applied. Any other failure after sending is reported, never retried.

use std::sync::Arc;

use http::{Request, Response};

use super::body::RequestBody;
use super::reply::{self, BufferedReply};
use super::response::{Outcome, ResponseBody};
use super::{Call, ConnInfo, Proxy};
use crate::body::{self as b, Body};
use crate::error::ProxyError;
use crate::gate::HoldKey;
use crate::method::{Kind, Reply, WriteClass};
use crate::routing::{Cluster, InFlight, RoutingTable};
use crate::upstream::SendError;

/// Writes up to this size are kept in memory, so a refusal as not primary can be replayed.
pub(crate) const REPLAY_LIMIT: usize = 256 << 10;
/// Answers up to this size are read whole before being passed on.
const REPLY_LIMIT: usize = 4 << 20;
/// Times a write refused as not primary is sent again, to the rediscovered primary.
const NOT_PRIMARY_RETRIES: usize = 3;

pub(super) async fn write(
    proxy: &Proxy,
    parts: http::request::Parts,
    mut body: RequestBody,
    call: &Call,
    conn: &ConnInfo,
) -> Result<Response<Body>, ProxyError> {
    let control = &proxy.control;
    let gate = &control.gate;
    let replayable = body.buffer_up_to(REPLAY_LIMIT).await?;
    let mut body = Some(body);
    let mut refusals = 0;
    loop {
        // Counted in flight before the gate is looked at: a switchover that closes the gate
        // after this point waits for this write in its drain, and one that closed it before
        // is seen here. (Checking first and counting later let a write slip past a drain
        // that had already found nothing in flight, to a primary being demoted.)
        let writing = gate.write_started();
        if gate.closed_reason().is_some() {
            drop(writing);
            let mut held = gate.reserve()?;
            let b = body.as_mut().ok_or_else(|| ProxyError::BadBody("write body already sent".into()))?;
            let room = held.room() as usize;
            b.buffer_all(room).await?;
            held.add_bytes(b.buffered_len() as u64)?;
            gate.wait_open(&held).await?;
            // The gate may have closed again already: look again, counted this time.
            continue;
        }
        // Loaded once the gate is seen open, so never older than the last role change's
        // swap (the table of the request's start may predate a whole switchover).
        let table = control.routing().load_full();
        let primary = write_target(&table)?;
        let send_body = if replayable || body.as_ref().is_some_and(RequestBody::is_buffered) {
            body.as_ref().and_then(RequestBody::clone_buffered)
        } else {
            body.take()
        };
        let send_body = send_body.ok_or_else(|| ProxyError::BadBody("write body already sent".into()))?;
        let mut req = Request::from_parts(parts.clone(), b::boxed(send_body));
        super::strip_foreign_identifier(&mut req, &table, &primary);

        tracing::Span::current().record("upstream.cluster", &*primary.id);
        let in_flight = InFlight::new(primary.clone());
        let _writing = writing;
        call.sending_to(&primary);
        let resp = match primary.upstream.send(req).await {
            Ok(r) => r,
            Err(e @ SendError::NotSent(..)) | Err(e @ SendError::Sent(_)) => {
                return Err(proxy.send_error(&primary, e));
            }
        };
        primary.signals.transport_ok();
        let mut outcome = Outcome::new(in_flight, call.label, call.start);
        let (rparts, incoming) = resp.into_parts();
        if let Some(st) = crate::grpc::GrpcStatus::from_headers(&rparts.headers) {
            // Trailers-only: a gRPC error from the cluster; nothing to read.
            outcome.finish_trailers_only(st.code);
            return Ok(Response::from_parts(rparts, b::boxed(ResponseBody::new(incoming, outcome))));
        }
        let buffered =
            reply::buffer(incoming, REPLY_LIMIT).await.map_err(|e| proxy.send_error(&primary, SendError::Sent(e)))?;
        let shape = call.method.map(|m| m.reply).unwrap_or(Reply::Other);
        let status = buffered.status(shape);

        if let Some(st) = status.as_ref().filter(|s| reply::is_not_primary(s))
            && body.is_some()
            && replayable
            && refusals < NOT_PRIMARY_RETRIES
        {
            refusals += 1;
            tracing::warn!(cluster = %primary.id, reason = %st.reason, "write refused as not primary; rediscovering roles");
            gate.hold(
                HoldKey::Discovery,
                format!("{} refused a write as not primary; rediscovering roles", primary.id),
            );
            control.rediscover.notify_one();
            control.publish();
            drop(outcome);
            continue;
        }
        if status.as_ref().is_some_and(|s| s.code == 0 && s.error_code == 0) {
            acknowledged(proxy, &primary, call, &buffered, body.as_ref(), &parts, conn);
        }
        return Ok(Response::from_parts(
            rparts,
            b::boxed(ResponseBody::replay(buffered.frames, buffered.rest, outcome)),
        ));
    }
}

/// Learns from an acknowledged write: the primary's timestamp (lag, read-your-writes) and
/// whether cached collection facts are now stale.
fn acknowledged(
    proxy: &Proxy,
    primary: &Arc<Cluster>,
    call: &Call,
    reply: &BufferedReply,
    body: Option<&RequestBody>,
    parts: &http::request::Parts,
    conn: &ConnInfo,
) {
    match call.kind {
        Kind::Write(WriteClass::Dml) => {
            let Some((tick, rows)) = reply.mutation().filter(|(t, _)| *t != 0) else { return };
            primary.signals.write_acked(tick);
            primary.signals.rows_acked(tick, rows);
            if let Some((db, coll)) = body.and_then(|b| b.first_message()).and_then(target_collection) {
                let db = super::db_of(parts, Some(&db));
                primary.signals.collection_write_acked(&db, &coll, tick);
                conn.writes.note((db, coll), tick);
            }
        }
        Kind::Write(_) => proxy.levels.clear(),
        _ => {}
    }
}

/// `(db_name, collection_name)` of an Insert, Upsert or Delete (fields 2 and 3 in all three).
fn target_collection(msg: bytes::Bytes) -> Option<(String, String)> {
    use prost::Message;
    crate::proto::milvus::InsertRequest::decode(msg).ok().map(|r| (r.db_name, r.collection_name))
}

/// The primary for a write, or why there is none.
pub(super) fn write_target(table: &RoutingTable) -> Result<Arc<Cluster>, ProxyError> {
    if let Some(reason) = &table.abnormal_reason {
        return Err(ProxyError::NoPrimary { reason: reason.clone() });
    }
    table.primary.clone().ok_or_else(|| ProxyError::NoPrimary { reason: "no primary in the topology".into() })
}
