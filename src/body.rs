//! The one body type that flows through switchyard, in both directions.
//!
//! Request bodies from clients, response bodies from upstreams, buffered (held) writes and
//! switchyard's own small messages all become a [`Body`]: a boxed `http_body::Body` of
//! `Bytes`. Boxing costs one allocation per message and lets every path share one upstream
//! connection type.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};

/// The error type bodies and services carry across layers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed body of bytes.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> Body {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body holding the given bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// Boxes any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A body made of fixed frames (data, then trailers), e.g. a whole unary gRPC answer.
pub fn frames(frames: Vec<Frame<Bytes>>) -> Body {
    Frames { frames: frames.into() }.boxed_unsync()
}

struct Frames {
    frames: VecDeque<Frame<Bytes>>,
}

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.frames.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }
}
