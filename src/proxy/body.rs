//! Request bodies on their way to a cluster: streamed, checked frame by frame, never
//! buffered whole unless switchyard must read or hold them.
//!
//! [`RequestBody`] replays whatever was read ahead (the first frame header, or the whole
//! first message of a read whose consistency level matters), then streams the rest. A
//! [`FrameScan`] follows the gRPC frame boundaries as bytes pass, so a message larger than
//! `listener.max_message_size` is refused the moment its header is seen.
//!
//! Three guards keep a slow or hostile client from costing anyone but itself:
//! - every wait for the next piece of the body is bounded by `listener.body_timeout`; a
//!   stalled body ends the call with "not sent" and resets the stream to the cluster, which
//!   never had the whole message;
//! - a streamed write is counted in flight (for a switchover's drain) only at the moment its
//!   first message is complete ([`RequestBody::count_when_complete`]): a body still arriving
//!   when a drain begins is cut instead, so the drain waits only for writes a cluster could
//!   apply;
//! - bytes held for a write are reserved from `max_held_bytes` by the frame's declared length
//!   before they are read ([`RequestBody::buffer_all_reserved`]).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body::BoxError;
use crate::error::ProxyError;
use crate::gate::{Held, WriteGate, Writing};
use crate::grpc::frame::HEADER_LEN;

/// Follows gRPC frame boundaries in a byte stream and enforces the size limit.
#[derive(Debug, Clone)]
pub struct FrameScan {
    limit: usize,
    header: [u8; HEADER_LEN],
    have: usize,
    remaining: usize,
    /// Messages whose header has been seen.
    pub messages: usize,
    /// Bytes the headers seen so far declare, their own 5-byte headers included.
    pub declared: u64,
    /// The first message's compression flag and length, once its header is seen.
    pub first: Option<(u8, usize)>,
}

impl FrameScan {
    /// A scanner refusing messages above `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { limit, header: [0; HEADER_LEN], have: 0, remaining: 0, messages: 0, declared: 0, first: None }
    }

    /// Feeds bytes; fails on the first oversized message.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), ProxyError> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                self.remaining -= n;
                data = &data[n..];
                continue;
            }
            let n = (HEADER_LEN - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == HEADER_LEN {
                let len = u32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]]) as usize;
                if len > self.limit {
                    return Err(ProxyError::MessageTooLarge { len, limit: self.limit });
                }
                self.have = 0;
                self.remaining = len;
                self.messages += 1;
                self.declared += (HEADER_LEN + len) as u64;
                self.first.get_or_insert((self.header[0], len));
            }
        }
        Ok(())
    }

    /// Whether the stream stopped inside a frame.
    pub fn mid_frame(&self) -> bool {
        self.have > 0 || self.remaining > 0
    }

    /// Whether the first message has arrived whole.
    pub fn first_complete(&self) -> bool {
        self.messages >= 2 || (self.messages == 1 && !self.mid_frame())
    }
}

/// Why switchyard cut a body it was streaming to a cluster, for the call's answer.
pub type AbortSlot = Arc<Mutex<Option<ProxyError>>>;

/// Where a streamed write's in-flight count lives once its message is complete.
pub type WritingSlot = Arc<Mutex<Option<Writing>>>;

/// Counting a streamed write in flight when its first message completes.
#[derive(Debug)]
struct CountWhenComplete {
    gate: Arc<WriteGate>,
    slot: WritingSlot,
}

/// A request body: read-ahead frames first, then the rest of the client's stream.
#[derive(Debug)]
pub struct RequestBody {
    buffered: VecDeque<Frame<Bytes>>,
    rest: Option<Incoming>,
    scan: FrameScan,
    buffered_len: usize,
    /// Longest wait for the next frame.
    timeout: Duration,
    /// Armed while the client's body is pending during streaming.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    abort: AbortSlot,
    count: Option<CountWhenComplete>,
    /// A share of the peek budget, held as long as the read-ahead bytes are.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// A body being kept (held, peeked): its data so far, in one allocation of the size its
    /// frame headers declare, instead of the frames (slices of the connection's read buffers).
    /// Turned back into one frame by [`RequestBody::compact`].
    joined: Option<BytesMut>,
}

/// What reading ahead found.
#[derive(Debug, Default)]
pub struct ReadAhead {
    /// The first message, when it was asked for and is complete.
    pub first_message: Option<Bytes>,
}

impl RequestBody {
    /// Wraps a client body. Nothing is read yet. `timeout` bounds each wait for more.
    pub fn new(body: Incoming, limit: usize, timeout: Duration) -> Self {
        Self::with(VecDeque::new(), Some(body), FrameScan::new(limit), timeout)
    }

    fn with(buffered: VecDeque<Frame<Bytes>>, rest: Option<Incoming>, scan: FrameScan, timeout: Duration) -> Self {
        let buffered_len = buffered.iter().filter_map(|f| f.data_ref()).map(Bytes::len).sum();
        Self {
            buffered,
            rest,
            scan,
            buffered_len,
            timeout,
            idle: None,
            abort: AbortSlot::default(),
            count: None,
            permit: None,
            joined: None,
        }
    }

    /// A body made only of bytes already in memory.
    pub fn from_frames(frames: VecDeque<Frame<Bytes>>, limit: usize) -> Self {
        Self::with(frames, None, FrameScan::new(limit), Duration::MAX)
    }

    /// Why switchyard cut this body, if it did (shared with every copy).
    pub fn abort_slot(&self) -> AbortSlot {
        self.abort.clone()
    }

    /// The first message's compression flag and declared length, once its header is read.
    pub fn first_header(&self) -> Option<(u8, usize)> {
        self.scan.first
    }

    /// Whether the first message is entirely read (in memory or already streamed).
    pub fn first_complete(&self) -> bool {
        self.scan.first_complete()
    }

    /// Keeps a share of the peek budget for as long as this body lives.
    pub fn hold_permit(&mut self, permit: tokio::sync::OwnedSemaphorePermit) {
        self.permit = Some(permit);
    }

    /// A streamed write: it is counted in flight (into `slot`) at the moment its first
    /// message is complete, if the gate is open then; if the gate is closed then (a drain
    /// has begun), the body is cut instead and the call answered "not sent".
    pub fn count_when_complete(&mut self, gate: Arc<WriteGate>) -> WritingSlot {
        let slot = WritingSlot::default();
        self.count = Some(CountWhenComplete { gate, slot: slot.clone() });
        slot
    }

    /// Bytes read ahead and held in memory.
    pub fn buffered_len(&self) -> usize {
        self.buffered_len
    }

    /// Reads one more frame of the client's body into memory; `false` once the body has ended.
    async fn pull(&mut self, keep: bool) -> Result<bool, ProxyError> {
        let Some(rest) = self.rest.as_mut() else { return Ok(false) };
        let frame = match tokio::time::timeout(self.timeout, rest.frame()).await {
            Ok(f) => f,
            Err(_) => return Err(ProxyError::BodyTimeout(self.timeout)),
        };
        match frame {
            None => {
                self.rest = None;
                Ok(false)
            }
            Some(Err(e)) => Err(ProxyError::BadBody(e.to_string())),
            Some(Ok(frame)) => {
                match frame.into_data() {
                    Ok(data) => {
                        self.scan.feed(&data)?;
                        self.buffered_len += data.len();
                        if keep || self.joined.is_some() {
                            // A DATA frame is a slice of the connection's read buffer and keeps
                            // it whole: a body kept for long is copied once, into one buffer.
                            let joined = self.joining();
                            joined.extend_from_slice(&data);
                        } else {
                            self.buffered.push_back(Frame::data(data));
                        }
                    }
                    Err(frame) => self.buffered.push_back(frame),
                }
                Ok(true)
            }
        }
    }

    /// Reads until the first frame header has been checked, or, with `whole_first`, until
    /// the whole first message is in memory (small read requests only).
    pub async fn read_ahead(&mut self, whole_first: bool) -> Result<ReadAhead, ProxyError> {
        loop {
            let enough = if whole_first { self.scan.first_complete() } else { self.scan.messages > 0 };
            if enough || !self.pull(whole_first).await? {
                break;
            }
        }
        if whole_first {
            self.compact();
        }
        Ok(ReadAhead { first_message: if whole_first { self.first_message() } else { None } })
    }

    /// Reads the whole body into memory (a held write). Before more is read, the bytes its
    /// frame headers declare (or, past a header not yet seen, the bytes already read) are
    /// reserved in `held`: a write that does not fit is refused before it is read, and N
    /// writes held at once never hold more than `max_held_bytes` together.
    pub async fn buffer_all_reserved(&mut self, held: &mut Held<'_>) -> Result<(), ProxyError> {
        loop {
            let want = self.scan.declared.max(self.buffered_len as u64);
            if want > held.bytes() {
                held.add_bytes(want - held.bytes())?;
            }
            if !self.pull(true).await? {
                self.compact();
                return Ok(());
            }
        }
    }

    /// Joins the data read so far into one allocation of exactly its size, so that the
    /// message can be read in place (no second copy to decode it) and memory held is what
    /// the budgets charge. A trailers frame, if any, stays last.
    fn compact(&mut self) {
        if let Some(joined) = self.joined.take() {
            let rest: VecDeque<_> = self.buffered.drain(..).collect();
            self.buffered.push_back(Frame::data(joined.freeze()));
            self.buffered.extend(rest);
            return;
        }
        if self.buffered.iter().filter(|f| f.is_data()).count() < 2 {
            return;
        }
        let mut joined = BytesMut::with_capacity(self.buffered_len);
        let mut rest = VecDeque::new();
        for f in self.buffered.drain(..) {
            match f.into_data() {
                Ok(d) => joined.extend_from_slice(&d),
                Err(other) => rest.push_back(other),
            }
        }
        self.buffered.push_back(Frame::data(joined.freeze()));
        self.buffered.extend(rest);
    }

    /// The buffer a kept body's data goes into: sized by the declared messages (so it is
    /// allocated once), and holding whatever data was read before it.
    fn joining(&mut self) -> &mut BytesMut {
        if self.joined.is_none() {
            let size = (self.scan.declared as usize).max(self.buffered_len);
            let mut joined = BytesMut::with_capacity(size);
            let mut rest = VecDeque::new();
            for f in self.buffered.drain(..) {
                match f.into_data() {
                    Ok(d) => joined.extend_from_slice(&d),
                    Err(other) => rest.push_back(other),
                }
            }
            self.buffered = rest;
            self.joined = Some(joined);
        }
        self.joined.get_or_insert_with(BytesMut::new)
    }

    /// Reads ahead until the body ends or more than `limit` bytes are in memory; returns
    /// whether the whole body is now in memory.
    pub async fn buffer_up_to(&mut self, limit: usize) -> Result<bool, ProxyError> {
        while self.buffered_len <= limit && self.pull(false).await? {}
        Ok(self.rest.is_none())
    }

    /// Up to `max` bytes of what is in memory, from the start (frame headers included).
    pub fn first_bytes(&self, max: usize) -> Bytes {
        let mut acc = BytesMut::new();
        for d in self.buffered.iter().filter_map(|f| f.data_ref()) {
            if acc.len() >= max {
                break;
            }
            acc.extend_from_slice(&d[..d.len().min(max - acc.len())]);
        }
        acc.freeze()
    }

    /// The first message, when it is entirely in the read-ahead buffer (a slice of it, not a
    /// copy, once the buffer is compacted).
    pub fn first_message(&self) -> Option<Bytes> {
        if let Some(d) = self.buffered.front().and_then(|f| f.data_ref())
            && let Some((0, len)) = crate::grpc::frame::declared_len(d)
            && d.len() >= HEADER_LEN + len
        {
            return Some(d.slice(HEADER_LEN..HEADER_LEN + len));
        }
        let mut acc = BytesMut::new();
        for d in self.buffered.iter().filter_map(|f| f.data_ref()) {
            acc.extend_from_slice(d);
            if let Some((0, len)) = crate::grpc::frame::declared_len(&acc)
                && acc.len() >= HEADER_LEN + len
            {
                return Some(acc.freeze().slice(HEADER_LEN..HEADER_LEN + len));
            }
        }
        None
    }

    /// Whether the whole body is in memory.
    pub fn is_buffered(&self) -> bool {
        self.rest.is_none()
    }

    /// Copies the buffered frames (the body must be fully buffered), for a resend.
    pub fn clone_buffered(&self) -> Option<Self> {
        self.rest.is_none().then(|| {
            let mut copy = Self::with(
                self.buffered.iter().filter_map(clone_frame).collect(),
                None,
                self.scan.clone(),
                self.timeout,
            );
            copy.abort = self.abort.clone();
            copy
        })
    }
}

impl RequestBody {
    /// Ends the stream to the cluster with `e`, remembering why for the call's answer.
    fn cut(&mut self, e: ProxyError) -> BoxError {
        *self.abort.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
        self.rest = None;
        Box::new(e)
    }
}

fn clone_frame(f: &Frame<Bytes>) -> Option<Frame<Bytes>> {
    if let Some(d) = f.data_ref() {
        Some(Frame::data(d.clone()))
    } else {
        f.trailers_ref().map(|t| Frame::trailers(t.clone()))
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(f) = this.buffered.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        let Some(rest) = this.rest.as_mut() else { return Poll::Ready(None) };
        match Pin::new(rest).poll_frame(cx) {
            Poll::Pending => {
                let timeout = this.timeout;
                let idle = this.idle.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if idle.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(this.cut(ProxyError::BodyTimeout(timeout)))));
                }
                Poll::Pending
            }
            Poll::Ready(None) => {
                this.rest = None;
                this.idle = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(Some(Ok(frame))) => {
                this.idle = None;
                if let Some(data) = frame.data_ref() {
                    if let Err(e) = this.scan.feed(data) {
                        return Poll::Ready(Some(Err(this.cut(e))));
                    }
                    if this.scan.first_complete()
                        && let Some(count) = this.count.take()
                    {
                        match count.gate.write_started_if_open() {
                            Ok(writing) => *count.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(writing),
                            Err(during) => return Poll::Ready(Some(Err(this.cut(ProxyError::CutMidBody { during })))),
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.buffered.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self.buffered.iter().filter_map(|f| f.data_ref()).map(|d| d.len() as u64).sum();
        match &self.rest {
            None => SizeHint::with_exact(buffered),
            Some(r) => {
                let h = r.size_hint();
                let mut s = SizeHint::new();
                s.set_lower(h.lower() + buffered);
                if let Some(u) = h.upper() {
                    s.set_upper(u + buffered);
                }
                s
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_follows_frames_split_anywhere() {
        let mut s = FrameScan::new(10);
        let stream = [0u8, 0, 0, 0, 3, 1, 2, 3, 0, 0, 0, 0, 2, 9, 9];
        for b in stream {
            s.feed(&[b]).unwrap();
        }
        assert_eq!(s.messages, 2);
        assert!(!s.mid_frame());
        let mut s = FrameScan::new(10);
        assert!(matches!(s.feed(&[0, 0, 0, 0, 11]), Err(ProxyError::MessageTooLarge { len: 11, limit: 10 })));
    }
}
