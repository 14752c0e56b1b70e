//! switchyard: one gRPC address in front of Milvus clusters replicated with Milvus CDC.
//!
//! (The architecture overview is written as the modules land; see README.md.)
#![warn(missing_docs)]

pub mod body;
pub mod encoding;
pub mod grpc;
pub mod method;
pub mod proto;
pub mod standin;
pub mod upstream;
