//! Response bodies on their way back to the client: streamed as they come, with the call's
//! outcome (gRPC code, duration) recorded when the trailers pass or the stream is dropped.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use crate::body::BoxError;
use crate::grpc::{Code, GrpcStatus};
use crate::routing::{InFlight, KindLabel};

/// Records one call's outcome exactly once: at the trailers, at the end, or when dropped.
#[derive(Debug)]
pub struct Outcome {
    in_flight: Option<InFlight>,
    kind: KindLabel,
    start: Instant,
    code: Option<Code>,
}

impl Outcome {
    /// Starts tracking a call to a cluster.
    pub fn new(in_flight: InFlight, kind: KindLabel, start: Instant) -> Self {
        Self { in_flight: Some(in_flight), kind, start, code: None }
    }

    /// Sets the code if the headers already carry one (trailers-only responses).
    pub fn set_code(&mut self, code: Code) {
        self.code.get_or_insert(code);
    }

    /// Records a trailers-only answer now, before it is handed to the client, so counters
    /// never lag behind what the client has seen.
    pub fn finish_trailers_only(&mut self, code: Code) {
        self.set_code(code);
        self.finish(code);
    }

    fn finish(&mut self, fallback: Code) {
        if let Some(guard) = self.in_flight.take() {
            let code = *self.code.get_or_insert(fallback);
            guard.cluster().stats.record(self.kind, code, self.start.elapsed());
        }
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        // Dropped before the end: the client went away or the stream broke.
        self.finish(Code::Cancelled);
    }
}

/// The upstream's response body, passed through frame by frame, after any frames that
/// were read ahead.
#[derive(Debug)]
pub struct ResponseBody {
    front: VecDeque<Frame<Bytes>>,
    inner: Option<Incoming>,
    outcome: Outcome,
}

impl ResponseBody {
    /// Wraps an upstream body.
    pub fn new(inner: Incoming, outcome: Outcome) -> Self {
        Self { front: VecDeque::new(), inner: Some(inner), outcome }
    }

    /// A body that replays `front`, then streams `rest` if any.
    pub fn replay(front: VecDeque<Frame<Bytes>>, rest: Option<Incoming>, mut outcome: Outcome) -> Self {
        if let Some(code) = front.iter().filter_map(|f| f.trailers_ref()).find_map(GrpcStatus::from_headers) {
            outcome.set_code(code.code);
        }
        Self { front, inner: rest, outcome }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(f) = this.front.pop_front() {
            if this.front.is_empty() && this.inner.is_none() {
                this.outcome.finish(Code::Ok);
            }
            return Poll::Ready(Some(Ok(f)));
        }
        let Some(inner) = this.inner.as_mut() else {
            this.outcome.finish(Code::Ok);
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.outcome.finish(Code::Ok);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.outcome.finish(Code::Unavailable);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = frame.trailers_ref() {
                    let code = GrpcStatus::from_headers(t).map(|s| s.code).unwrap_or(Code::Unknown);
                    this.outcome.set_code(code);
                    this.outcome.finish(code);
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.front.is_empty() && self.inner.as_ref().is_none_or(|i| i.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.inner, self.front.is_empty()) {
            (Some(i), true) => i.size_hint(),
            _ => SizeHint::default(),
        }
    }
}
