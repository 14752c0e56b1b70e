//! switchyard: one gRPC address in front of Milvus clusters replicated with Milvus CDC.
//!
//! (The architecture overview is written as the modules land; see README.md.)
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod body;
pub mod config;
pub mod control;
pub mod ctl;
pub mod encoding;
pub mod error;
pub mod gate;
pub mod grpc;
pub mod method;
pub mod metrics;
pub mod monitor;
pub mod proto;
pub mod proxy;
pub mod routing;
pub mod shutdown;
pub mod state;
pub mod switchover;
pub mod telemetry;
pub mod tls;
pub mod topology;
pub mod upstream;
