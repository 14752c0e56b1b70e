//! Protobuf wire-level helpers and small gRPC response builders.
//!
//! The stand-in forwards Milvus messages it never fully decodes (the proto subset in `proto/`
//! lacks most fields, and prost drops unknown fields when re-encoding). So the few edits it
//! makes — setting `MutationResult.timestamp` (field 9), reading `collection_name` (field 3)
//! or a response's `common.Status` (field 1) — work on the raw protobuf bytes, keeping every
//! other field byte for byte.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response};
use http_body::Frame;
use prost::Message;
use tokio::sync::mpsc;

use switchyard::body::{self, Body, BoxError};
use switchyard::grpc::{self, Code, GrpcStatus};
use switchyard::method::Reply;
use switchyard::proto::common::{ErrorCode, Status};

/// One field of a protobuf message: its number, wire type and the bytes of its value
/// (for length-delimited fields, the payload without its length prefix).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Field<'a> {
    pub(crate) number: u32,
    pub(crate) wire_type: u8,
    /// The whole field, tag included.
    pub(crate) raw: &'a [u8],
    /// The value (payload for length-delimited fields).
    pub(crate) value: &'a [u8],
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        out |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(out);
        }
    }
    None
}

/// Splits a message into its fields; `None` if the bytes are not well-formed protobuf
/// (groups, wire types 3 and 4, are refused too).
pub(crate) fn fields(buf: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let tag = read_varint(buf, &mut pos)?;
        let number = u32::try_from(tag >> 3).ok()?;
        let wire_type = (tag & 7) as u8;
        let value_start;
        match wire_type {
            0 => {
                value_start = pos;
                read_varint(buf, &mut pos)?;
            }
            1 => {
                value_start = pos;
                pos = pos.checked_add(8)?;
            }
            2 => {
                let len = usize::try_from(read_varint(buf, &mut pos)?).ok()?;
                value_start = pos;
                pos = pos.checked_add(len)?;
            }
            5 => {
                value_start = pos;
                pos = pos.checked_add(4)?;
            }
            _ => return None,
        }
        if pos > buf.len() || number == 0 {
            return None;
        }
        out.push(Field { number, wire_type, raw: &buf[start..pos], value: &buf[value_start..pos] });
    }
    Some(out)
}

/// The first varint field `number`.
pub(crate) fn varint_field(buf: &[u8], number: u32) -> Option<u64> {
    let f = fields(buf)?.into_iter().find(|f| f.number == number && f.wire_type == 0)?;
    let mut pos = 0;
    read_varint(f.value, &mut pos)
}

/// The first length-delimited field `number`, as UTF-8 text.
pub(crate) fn string_field(buf: &[u8], number: u32) -> Option<String> {
    fields(buf)?
        .into_iter()
        .find(|f| f.number == number && f.wire_type == 2)
        .and_then(|f| std::str::from_utf8(f.value).ok().map(str::to_string))
}

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// Sets varint field `number` to `value`: every other field is kept as it is, earlier
/// occurrences of the field are removed. `None` if `buf` is not well-formed.
pub(crate) fn set_varint_field(buf: &[u8], number: u32, value: u64) -> Option<Bytes> {
    let parsed = fields(buf)?;
    let mut out = BytesMut::with_capacity(buf.len() + 11);
    for f in parsed.iter().filter(|f| f.number != number) {
        out.put_slice(f.raw);
    }
    put_varint(&mut out, u64::from(number) << 3);
    put_varint(&mut out, value);
    Some(out.freeze())
}

/// Sets repeated string field `number` to `values`: every other field is kept as it is,
/// earlier occurrences of the field are removed. `None` if `buf` is not well-formed.
pub(crate) fn set_string_fields(buf: &[u8], number: u32, values: &[String]) -> Option<Bytes> {
    let parsed = fields(buf)?;
    let mut out = BytesMut::with_capacity(buf.len() + values.iter().map(|v| v.len() + 6).sum::<usize>());
    for f in parsed.iter().filter(|f| f.number != number) {
        out.put_slice(f.raw);
    }
    for v in values {
        put_varint(&mut out, (u64::from(number) << 3) | 2);
        put_varint(&mut out, v.len() as u64);
        out.put_slice(v.as_bytes());
    }
    Some(out.freeze())
}

/// The `common.Status` a response message carries, per the method's reply shape.
/// `None` when the shape has no status or the bytes do not decode.
pub(crate) fn reply_status(reply: Reply, msg: &[u8]) -> Option<Status> {
    match reply {
        Reply::Status => Status::decode(msg).ok(),
        Reply::Wrapped => {
            let parsed = fields(msg)?;
            // An absent status field means a default (successful) status.
            match parsed.iter().rev().find(|f| f.number == 1 && f.wire_type == 2) {
                Some(f) => Status::decode(f.value).ok(),
                None => Some(Status::default()),
            }
        }
        Reply::Other => None,
    }
}

/// Whether a status means success (`code == 0` and `error_code == Success`).
pub(crate) fn status_ok(s: &Status) -> bool {
    s.code == 0 && s.error_code == ErrorCode::Success as i32
}

/// A failed status as Milvus builds it for errors without a Milvus code: 65535, UnexpectedError.
pub(crate) fn failed_status(reason: impl Into<String>) -> Status {
    Status {
        error_code: ErrorCode::UnexpectedError as i32,
        reason: reason.into(),
        code: 65535,
        retriable: false,
        ..Status::default()
    }
}

/// Encodes a response message holding `status`, in the shape `reply` names.
pub(crate) fn reply_with_status(reply: Reply, status: &Status) -> Option<Bytes> {
    switchyard::error::reply_with_status(reply, status)
}

/// The unframed message of a complete unary gRPC body; `None` unless it is exactly one
/// uncompressed frame.
pub(crate) fn unframe(body: &[u8]) -> Option<Bytes> {
    let mut dec = grpc::FrameDecoder::new(usize::MAX);
    dec.push(body);
    let msg = dec.next_message().ok()??;
    match dec.next_message() {
        Ok(None) if dec.finish().is_ok() => Some(msg),
        _ => None,
    }
}

/// Trailers carrying a gRPC status.
pub(crate) fn status_trailers(status: &GrpcStatus) -> HeaderMap {
    let mut t = HeaderMap::new();
    status.write_to(&mut t);
    t
}

/// A successful unary gRPC response carrying one already-encoded message.
pub(crate) fn unary_ok(msg: Bytes) -> Response<Body> {
    let frames = vec![
        Frame::data(grpc::frame::frame_bytes(&msg)),
        Frame::trailers(status_trailers(&GrpcStatus::new(Code::Ok, ""))),
    ];
    grpc_response(frames_body(frames))
}

/// A successful unary gRPC response carrying `msg`.
pub(crate) fn unary_msg<M: Message>(msg: &M) -> Response<Body> {
    unary_ok(Bytes::from(msg.encode_to_vec()))
}

/// A response with gRPC headers and the given body.
pub(crate) fn grpc_response(body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(grpc::CONTENT_TYPE));
    resp
}

/// A trailers-only gRPC error response.
pub(crate) fn grpc_error(code: Code, message: impl Into<String>) -> Response<Body> {
    GrpcStatus::new(code, message).to_response::<Body>()
}

/// A body made of fixed frames (data, then trailers).
pub(crate) fn frames_body(frames: Vec<Frame<Bytes>>) -> Body {
    body::frames(frames)
}

/// A body fed frame by frame through a channel; it ends when every sender is dropped.
pub(crate) fn channel_body(capacity: usize) -> (mpsc::Sender<Frame<Bytes>>, Body) {
    let (tx, rx) = mpsc::channel(capacity);
    (tx, body::boxed(ChannelBody { rx }))
}

struct ChannelBody {
    rx: mpsc::Receiver<Frame<Bytes>>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|f| f.map(Ok))
    }
}

/// A body that fails at once: the server resets the stream, so the answer never arrives.
pub(crate) fn broken_body() -> Body {
    struct Broken;
    impl http_body::Body for Broken {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(Some(Err("milvus-standin: answer lost (fault)".into())))
        }
    }
    body::boxed(Broken)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard::proto::milvus::MutationResult;

    #[test]
    fn sets_timestamp_and_keeps_unknown_fields() {
        // A MutationResult with a field the subset does not know (IDs = 2) and a timestamp.
        let mut raw = MutationResult { insert_cnt: 3, timestamp: 7, ..Default::default() }.encode_to_vec();
        raw.extend_from_slice(&[0x12, 0x02, 0x08, 0x01]); // field 2, 2 bytes
        let out = set_varint_field(&raw, 9, 1 << 40).expect("well-formed");
        let decoded = MutationResult::decode(out.clone()).expect("decodes");
        assert_eq!(decoded.timestamp, 1 << 40);
        assert_eq!(decoded.insert_cnt, 3);
        assert!(fields(&out).expect("fields").iter().any(|f| f.number == 2 && f.value == [0x08, 0x01]));
    }

    #[test]
    fn wrapped_status_round_trip() {
        let st = failed_status("nope");
        let msg = reply_with_status(Reply::Wrapped, &st).expect("wrapped");
        assert_eq!(reply_status(Reply::Wrapped, &msg), Some(st.clone()));
        let bare = reply_with_status(Reply::Status, &st).expect("bare");
        assert_eq!(reply_status(Reply::Status, &bare), Some(st));
        assert_eq!(reply_status(Reply::Wrapped, &[]), Some(Status::default()));
    }

    #[test]
    fn reads_collection_name() {
        let req = switchyard::proto::milvus::InsertRequest { collection_name: "books".into(), ..Default::default() };
        assert_eq!(string_field(&req.encode_to_vec(), 3).as_deref(), Some("books"));
        assert!(fields(&[0x0b]).is_none());
    }
}
