//! gRPC on the wire, without a framework: message framing, status codes and trailers.
//!
//! switchyard forwards gRPC calls as HTTP/2 streams and never decodes them, except for a
//! handful of small messages (read routing fields, control calls). This module holds the
//! few pieces of the gRPC wire format it needs: the 5-byte length-prefixed frame
//! ([`frame`]), status codes and their HTTP/2 trailers ([`status`]), and a unary client
//! for control calls ([`client`]).

pub mod client;
pub mod frame;
pub mod status;

pub use frame::{FrameDecoder, decode_message, encode_frame};
pub use status::{Code, GrpcStatus};

/// The content type of every gRPC request and response.
pub const CONTENT_TYPE: &str = "application/grpc";
