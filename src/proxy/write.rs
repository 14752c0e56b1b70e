//! Writes: through the gate, to the primary, never sent twice unless refused unapplied.
//!
//! A write is read into memory when it is small (up to [`REPLAY_LIMIT`]) or when the gate
//! is closed and it must be held (its bytes reserved from `max_held_bytes` before they are
//! read). Its answer is read before it is passed on, so that:
//! - a refusal by a cluster that is no longer primary (Milvus's exact standby refusals, see
//!   [`reply::is_not_primary`]) can be held, the roles rediscovered, and the write sent to the
//!   real primary: Milvus refuses such writes before they reach its WAL, so nothing was
//!   applied;
//! - an acknowledgement from a cluster a failover has fenced in the meantime is not passed on
//!   as a success: the promoted cluster does not have that write, so the client is told the
//!   outcome is unknown ([`ProxyError::FencedAck`]) and the failover's report counts it.
//!
//! Any other failure after sending is reported, never retried.
//!
//! # Counting writes in flight for a drain
//!
//! A switchover closes the gate and then waits until no write is in flight. A buffered write
//! is counted before it looks at the gate. A streamed write (larger than [`REPLAY_LIMIT`],
//! still arriving) is counted only when its message is complete
//! ([`RequestBody::count_when_complete`]): until then the cluster cannot have applied it, so a
//! drain need not wait for a client that sends slowly, or never finishes; if the gate has
//! closed by then, the body is cut and the write answered "not sent".

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
/// A DML message names its database and collection within this many bytes of its start
/// (only the small `MsgBase` comes before them); past it, the write counts on every pchannel.
const NAMES_WITHIN: usize = 4 << 10;
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
    let abort = body.abort_slot();
    // Read now, while the message's start is in memory: a streamed write's body is gone by
    // the time its answer comes.
    let target = match call.kind {
        Kind::Write(WriteClass::Dml) => target_collection(&body.first_bytes(NAMES_WITHIN)),
        _ => None,
    };
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
            b.buffer_all_reserved(&mut held).await?;
            gate.wait_open(&held).await?;
            // The gate may have closed again already: look again, counted this time.
            continue;
        }
        // Loaded once the gate is seen open, so never older than the last role change's
        // swap (the table of the request's start may predate a whole switchover).
        let table = control.routing().load_full();
        let primary = write_target(&table)?;
        let buffered = replayable || body.as_ref().is_some_and(RequestBody::is_buffered);
        let mut send_body = if buffered { body.as_ref().and_then(RequestBody::clone_buffered) } else { body.take() }
            .ok_or_else(|| ProxyError::BadBody("write body already sent".into()))?;
        // A streamed write whose message is still arriving is counted by its body, when the
        // message completes (see the module doc); until then it is not in flight.
        let (_writing, _late_count) = if buffered || send_body.first_complete() {
            (Some(writing), None)
        } else {
            drop(writing);
            (None, Some(send_body.count_when_complete(gate.clone())))
        };
        let mut req = Request::from_parts(parts.clone(), b::boxed(send_body));
        super::strip_foreign_identifier(&mut req, &table, &primary);

        tracing::Span::current().record("upstream.cluster", &*primary.id);
        let in_flight = InFlight::new(primary.clone());
        call.sending_to(&primary);
        let resp = match primary.upstream.send(req).await {
            Ok(r) => r,
            Err(e) => return Err(super::cut_reason(&abort).unwrap_or_else(|| proxy.send_error(&primary, e))),
        };
        primary.signals.transport_ok();
        let mut outcome = Outcome::new(in_flight, call.label, call.start);
        let (rparts, incoming) = resp.into_parts();
        if let Some(st) = crate::grpc::GrpcStatus::from_headers(&rparts.headers) {
            // Trailers-only: a gRPC error from the cluster; nothing to read, nothing applied.
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
        if fenced_since_sent(&primary, control) {
            // Whatever it answered, the promoted cluster does not have this write.
            primary.signals.late_ack();
            tracing::warn!(cluster = %primary.id, "write answered by a cluster fenced after it was sent");
            drop(outcome);
            return Err(ProxyError::FencedAck { cluster: primary.id.to_string() });
        }
        if status.as_ref().is_some_and(|s| s.code == 0 && s.error_code == 0) {
            acknowledged(proxy, &primary, call, &buffered, target.clone(), &parts, conn);
        }
        return Ok(Response::from_parts(
            rparts,
            b::boxed(ResponseBody::replay(buffered.frames, buffered.rest, outcome)),
        ));
    }
}

/// Whether a failover has fenced `cluster` (decided, or already in the routing table)
/// while a write to it was on its way.
fn fenced_since_sent(cluster: &Cluster, control: &crate::control::Control) -> bool {
    cluster.signals.is_fenced() || control.routing().load().is_fenced(&cluster.id)
}

/// Learns from an acknowledged write: the primary's timestamp (lag, read-your-writes) and
/// whether cached collection facts are now stale.
fn acknowledged(
    proxy: &Proxy,
    primary: &Arc<Cluster>,
    call: &Call,
    reply: &BufferedReply,
    target: Option<(String, String)>,
    parts: &http::request::Parts,
    conn: &ConnInfo,
) {
    match call.kind {
        Kind::Write(WriteClass::Dml) => {
            let Some((tick, rows)) = reply.mutation().filter(|(t, _)| *t != 0) else { return };
            primary.signals.write_acked(tick);
            primary.signals.rows_acked(tick, rows);
            if let Some((db, coll)) = target {
                let db = super::db_of(parts, Some(&db));
                primary.signals.collection_write_acked(&db, &coll, tick);
                conn.writes.note((db, coll), tick);
            }
        }
        Kind::Write(_) => proxy.levels.clear(),
        _ => {}
    }
}

/// `(db_name, collection_name)` of an Insert, Upsert or Delete (fields 2 and 3 in all three),
/// from the start of its gRPC body, which may stop anywhere after them: the fields are read
/// in order and reading stops at the first field past 3 (the rows), so a message larger than
/// what is in memory still names its collection.
fn target_collection(framed: &[u8]) -> Option<(String, String)> {
    let (0, _) = crate::grpc::frame::declared_len(framed)? else { return None };
    let mut msg = framed.get(crate::grpc::frame::HEADER_LEN..)?;
    let (mut db, mut coll) = (String::new(), None);
    while !msg.is_empty() {
        let (key, n) = varint(msg)?;
        msg = &msg[n..];
        let (field, wire) = (key >> 3, key & 7);
        if field > 3 {
            break;
        }
        match wire {
            0 => msg = &msg[varint(msg)?.1..],
            2 => {
                let (len, n) = varint(msg)?;
                let value = msg.get(n..n.checked_add(usize::try_from(len).ok()?)?)?;
                match field {
                    2 => db = String::from_utf8(value.to_vec()).ok()?,
                    3 => coll = Some(String::from_utf8(value.to_vec()).ok()?),
                    _ => {}
                }
                msg = &msg[n + value.len()..];
            }
            _ => return None,
        }
    }
    coll.map(|c| (db, c))
}

/// A protobuf varint and its length in bytes.
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().take(10).enumerate() {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// The primary for a write, or why there is none.
pub(super) fn write_target(table: &RoutingTable) -> Result<Arc<Cluster>, ProxyError> {
    if let Some(reason) = &table.abnormal_reason {
        return Err(ProxyError::NoPrimary { reason: reason.clone() });
    }
    table.primary.clone().ok_or_else(|| ProxyError::NoPrimary { reason: "no primary in the topology".into() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn collection_is_read_from_a_truncated_insert() {
        let req = crate::proto::milvus::InsertRequest {
            db_name: "db1".into(),
            collection_name: "books".into(),
            num_rows: 3,
            ..Default::default()
        };
        let mut framed = crate::grpc::frame::frame_bytes(&req.encode_to_vec()).to_vec();
        assert_eq!(target_collection(&framed), Some(("db1".into(), "books".into())));
        // Rows after the names, cut anywhere: still named.
        framed.extend_from_slice(&[0x2a, 0xff, 0xff, 0x03, 1, 2, 3]);
        assert_eq!(target_collection(&framed), Some(("db1".into(), "books".into())));
        // Cut inside the collection name: unknown.
        assert_eq!(target_collection(&framed[..12]), None);
        assert_eq!(target_collection(&[1, 0, 0, 0, 9, 0x1a]), None, "compressed");
        assert_eq!(target_collection(&[]), None);
    }
}
