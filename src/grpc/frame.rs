//! The gRPC message frame: one compressed-flag byte, a 4-byte big-endian length, the message.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Length of the frame header.
pub const HEADER_LEN: usize = 5;

/// Encodes one message as a gRPC frame.
pub fn encode_frame<M: prost::Message>(msg: &M) -> Bytes {
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(HEADER_LEN + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    // Encoding into a buffer with enough capacity cannot fail.
    let _ = msg.encode(&mut buf);
    buf.freeze()
}

/// Wraps an already-encoded message body in a gRPC frame.
pub fn frame_bytes(body: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(HEADER_LEN + body.len());
    buf.put_u8(0);
    buf.put_u32(body.len() as u32);
    buf.put_slice(body);
    buf.freeze()
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The compressed flag is set; switchyard does not decompress what it must read.
    #[error("compressed gRPC message (flag {0}) cannot be read")]
    Compressed(u8),
    /// The message is larger than allowed.
    #[error("gRPC message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Declared length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The body ended inside a frame.
    #[error("gRPC body ended inside a frame ({0} bytes left over)")]
    Truncated(usize),
    /// The message bytes are not valid protobuf for the expected type.
    #[error("gRPC message does not decode: {0}")]
    Decode(String),
}

/// The most [`FrameDecoder`] reserves ahead of the bytes that have arrived.
const MAX_RESERVE: usize = 64 << 10;

/// Reassembles gRPC frames from body chunks of any size.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    limit: usize,
}

impl FrameDecoder {
    /// A decoder that refuses messages longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { buf: BytesMut::new(), limit }
    }

    /// Appends received bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete message, if one has arrived.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let flag = self.buf[0];
        if flag != 0 {
            return Err(FrameError::Compressed(flag));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.limit {
            return Err(FrameError::TooLarge { len, limit: self.limit });
        }
        if self.buf.len() < HEADER_LEN + len {
            // The length is the peer's claim (up to 4 GiB under a `usize::MAX` limit): reserve
            // a bounded step, not the claim; the buffer grows by doubling as bytes arrive.
            self.buf.reserve((HEADER_LEN + len - self.buf.len()).min(MAX_RESERVE));
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Checks that no partial frame is left once the body has ended.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() { Ok(()) } else { Err(FrameError::Truncated(self.buf.len())) }
    }
}

/// Decodes the first message of a complete, buffered gRPC body.
pub fn decode_message<M: prost::Message + Default>(body: &[u8], limit: usize) -> Result<M, FrameError> {
    let mut dec = FrameDecoder::new(limit);
    dec.push(body);
    let msg = dec.next_message()?.ok_or(FrameError::Truncated(body.len()))?;
    M::decode(msg).map_err(|e| FrameError::Decode(e.to_string()))
}

/// Reads just the length a frame header declares, when at least 5 bytes are at hand.
pub fn declared_len(header: &[u8]) -> Option<(u8, usize)> {
    if header.len() < HEADER_LEN {
        return None;
    }
    Some((header[0], u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::milvus::GetVersionResponse;

    #[test]
    fn round_trip_in_pieces() {
        let msg = GetVersionResponse { status: None, version: "v2.6.9".into() };
        let framed = encode_frame(&msg);
        let mut dec = FrameDecoder::new(1024);
        for b in framed.iter() {
            assert!(dec.next_message().unwrap().is_none());
            dec.push(&[*b]);
        }
        let got = dec.next_message().unwrap().unwrap();
        assert_eq!(<GetVersionResponse as prost::Message>::decode(got).unwrap(), msg);
        dec.finish().unwrap();
    }

    #[test]
    fn refuses_oversized_and_compressed() {
        let mut dec = FrameDecoder::new(4);
        dec.push(&[0, 0, 0, 0, 9]);
        assert_eq!(dec.next_message(), Err(FrameError::TooLarge { len: 9, limit: 4 }));
        let mut dec = FrameDecoder::new(4);
        dec.push(&[1, 0, 0, 0, 1]);
        assert_eq!(dec.next_message(), Err(FrameError::Compressed(1)));
    }

    /// Found by tests/fuzz.rs: a 5-byte header claiming 4 GiB made the decoder reserve 4 GiB.
    #[test]
    fn fuzz_declared_length_reserves_nothing_proportional_to_it() {
        use proptest::prelude::*;
        let cases = std::env::var("SWITCHYARD_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
        let config = proptest::test_runner::Config { cases, failure_persistence: None, ..Default::default() };
        let mut runner = proptest::test_runner::TestRunner::new(config);
        let case = (any::<u32>(), prop_oneof![Just(usize::MAX), 0usize..=(64 << 20)], 0usize..64);
        runner
            .run(&case, |(len, limit, extra)| {
                let mut dec = FrameDecoder::new(limit);
                dec.push(&[&[0u8][..], &len.to_be_bytes(), &vec![7; extra]].concat());
                let got = dec.next_message();
                if len as usize > limit {
                    prop_assert_eq!(got, Err(FrameError::TooLarge { len: len as usize, limit }));
                } else if extra < len as usize {
                    prop_assert_eq!(got, Ok(None));
                }
                prop_assert!(dec.buf.capacity() <= HEADER_LEN + extra + MAX_RESERVE, "{}", dec.buf.capacity());
                Ok(())
            })
            .unwrap();
    }
}
