//! Reading a write's answer before passing it on: whether the cluster refused it as not
//! primary (so it was not applied and may go to the real primary), and the primary's
//! timestamp for it (for lag and read-your-writes).

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prost::Message;

use crate::grpc::GrpcStatus;
use crate::method::Reply;
use crate::proto::common::Status;
use crate::proto::milvus::MutationResult;

/// A response message reduced to its status (field 1), for `Reply::Wrapped` answers.
#[derive(Clone, PartialEq, Message)]
struct StatusOnly {
    #[prost(message, optional, tag = "1")]
    status: Option<Status>,
}

/// A write's answer, read whole (it is small) or partly when it is not.
#[derive(Debug)]
pub struct BufferedReply {
    /// Frames read, in order, trailers included when reached.
    pub frames: VecDeque<Frame<Bytes>>,
    /// The rest of the body when the answer was larger than the limit.
    pub rest: Option<Incoming>,
    /// The gRPC status from the trailers, when reached.
    pub trailer_status: Option<GrpcStatus>,
    data: BytesMut,
}

/// Reads up to `limit` bytes of a response body.
pub async fn buffer(mut body: Incoming, limit: usize) -> Result<BufferedReply, hyper::Error> {
    let mut out = BufferedReply { frames: VecDeque::new(), rest: None, trailer_status: None, data: BytesMut::new() };
    loop {
        if out.data.len() > limit {
            out.rest = Some(body);
            return Ok(out);
        }
        match body.frame().await {
            None => return Ok(out),
            Some(Err(e)) => return Err(e),
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    out.data.extend_from_slice(d);
                }
                if let Some(t) = frame.trailers_ref() {
                    out.trailer_status = GrpcStatus::from_headers(t);
                }
                out.frames.push_back(frame);
            }
        }
    }
}

impl BufferedReply {
    fn first_message(&self) -> Option<&[u8]> {
        let (flag, len) = crate::grpc::frame::declared_len(&self.data)?;
        (flag == 0 && self.data.len() >= 5 + len).then(|| &self.data[5..5 + len])
    }

    /// The `common.Status` in the answer, per the method's reply shape.
    pub fn status(&self, reply: Reply) -> Option<Status> {
        let msg = self.first_message()?;
        match reply {
            Reply::Status => Status::decode(msg).ok(),
            Reply::Wrapped => StatusOnly::decode(msg).ok().and_then(|s| s.status),
            Reply::Other => None,
        }
    }

    /// `MutationResult.timestamp` and the rows written, of a DML answer.
    pub fn mutation(&self) -> Option<(u64, u64)> {
        MutationResult::decode(self.first_message()?)
            .ok()
            .map(|m| (m.timestamp, (m.insert_cnt.max(0) + m.upsert_cnt.max(0)) as u64))
    }
}

/// Milvus's reason when a standby refuses a client's DML (streaming node, WAL replicate
/// interceptor: `internal/streamingnode/server/wal/interceptors/replicate/replicates/impl.go`,
/// text built by `internal/util/streamingutil/status/streaming_error.go`).
pub const DML_NOT_PRIMARY: &str =
    "code: STREAMING_CODE_REPLICATE_VIOLATION, cause: non-replicate message cannot be received in secondary role";
/// Milvus's reason when a standby refuses a client's DDL or DCL (`broadcaster.ErrNotPrimary`,
/// `internal/streamingcoord/server/broadcaster/broadcaster.go`).
pub const DDL_NOT_PRIMARY: &str = "cluster is not primary, cannot do any DDL/DCL";
/// The status code both refusals carry: they are not `merr` errors, so Milvus's proxy maps
/// them to its "unexpected" code, `(1 << 16) - 1` (`pkg/util/merr/utils.go`).
pub const NOT_PRIMARY_CODE: i32 = 65535;

/// Whether a status is a standby's refusal of a write because it is not the primary. Such a
/// write was not applied (Milvus rejects it before its WAL), so it may go to the real primary.
///
/// Matched by the code and the whole reason, never by a substring: Milvus echoes user input
/// (collection names, filter expressions) in its reasons, and a substring match would let a
/// crafted name close the global write gate. A refusal worded differently (a future Milvus
/// that wraps the text) is then passed to the client as it is, which is safe: nothing is
/// resent, and the SDKs recognise Milvus's refusal themselves.
pub fn is_not_primary(status: &Status) -> bool {
    status.code == NOT_PRIMARY_CODE && (status.reason == DML_NOT_PRIMARY || status.reason == DDL_NOT_PRIMARY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_both_standby_refusals_exactly() {
        let status = |code: i32, reason: &str| Status { code, reason: reason.into(), ..Default::default() };
        assert!(is_not_primary(&status(65535, DML_NOT_PRIMARY)));
        assert!(is_not_primary(&status(65535, DDL_NOT_PRIMARY)));
        assert!(!is_not_primary(&status(100, "collection not found")));
        // User input echoed in a reason never matches, whatever it contains.
        let echoed = format!("collection not found[collection={DDL_NOT_PRIMARY}]");
        assert!(!is_not_primary(&status(100, &echoed)));
        assert!(!is_not_primary(&status(65535, &echoed)));
        let expr = format!("cannot parse expression: {DML_NOT_PRIMARY}, error: syntax");
        assert!(!is_not_primary(&status(1100, &expr)));
        assert!(!is_not_primary(&status(65535, &expr)));
        // The text with another code is not Milvus's refusal.
        assert!(!is_not_primary(&status(5, DML_NOT_PRIMARY)));
    }
}
