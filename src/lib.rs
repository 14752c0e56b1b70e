//! switchyard: one gRPC address in front of Milvus clusters replicated with Milvus CDC.
//!
//! Every Milvus SDK points at switchyard unchanged. Writes (DML, DDL, DCL) go to the current
//! primary; reads are spread over the standbys, honouring consistency level and replication
//! lag. A planned switchover holds writes at the proxy, drives Milvus's
//! `UpdateReplicateConfiguration` in the documented order, swaps the routing table
//! atomically and releases the held writes to the new primary: clients see a pause, never an
//! error. A force failover fences the dead primary and promotes a standby.
//!
//! # A request's life
//!
//! ```text
//!  client ──h2/h2c──▶ proxy::server ──▶ proxy::Proxy::handle
//!                        (TLS, preface        │  method::lookup(":path") → Kind
//!                         check, GOAWAY)      │  routing table: load_full() once
//!                                             ├─ write ──▶ gate (held while closed) ──▶ primary
//!                                             │            answer read: refused as not primary?
//!                                             │            → hold, rediscover, resend (never applied)
//!                                             ├─ read ───▶ routing::policy (level, lag, RYW, P2C) ──▶ standby
//!                                             └─ control ▶ primary, or x-switchyard-cluster
//!                                                           │
//!                                       upstream::Upstream (pooled HTTP/2, TLS) ──▶ Milvus
//! ```
//!
//! The control side never sits on the request path. [`monitor`] tasks probe each cluster
//! and measure lag; [`control`] owns the topology and is the only writer of routing
//! tables; [`switchover`] runs role changes as jobs; [`admin`] exposes all of it.
//!
//! # Layout
//!
//! Data path:
//! - [`proxy`]: the listener and the per-call router ([`proxy::Proxy::handle`] is the whole
//!   life of a call); bodies stream through, frame-checked, never buffered whole unless held.
//! - [`method`]: the static table of all 149 MilvusService RPCs and what each one does.
//! - [`routing`]: the immutable routing snapshot behind one `ArcSwap`, and the read policy.
//! - [`upstream`]: pooled HTTP/2 connections to one cluster; knows whether a failed request
//!   was sent.
//! - [`gate`]: the write gate that holds writes during role changes.
//! - [`error`]: switchyard's own gRPC errors and their single mapping to a status.
//!
//! Control side:
//! - [`control`]: the topology owner; rebuilds and swaps routing tables; role discovery;
//!   hot reload.
//! - [`monitor`]: one health task per cluster; probes, checkpoints, lag with hysteresis.
//! - [`switchover`]: switchover, failover, drill and readmit; restart recovery.
//! - [`cdc`]: the seam to Milvus's replicate configuration calls (a trait; tonic stubs over
//!   the pooled upstream; an in-memory fake for tests).
//! - [`state`]: the persisted topology (atomic file writes).
//! - [`topology`]: roles at an epoch, and the proxy state.
//! - [`admin`], [`metrics`], [`ctl`]: the REST API, Prometheus text, and the CLI.
//!
//! Foundations: [`config`] (raw → validated, every problem at once; diff for reload),
//! [`grpc`] (frames, status codes, a unary client), [`proto`] (prost types from `proto/`),
//! [`body`], [`encoding`], [`tls`], [`telemetry`], [`shutdown`], [`app`] (wiring and the
//! shutdown order).
//!
//! The library is the proxy only. `milvus-standin`, a Milvus 2.6 cluster with CDC for tests,
//! demos and drills (never a replacement for Milvus CDC), is a binary of its own in
//! `src/bin/milvus-standin/`: it builds on [`proto`], [`grpc`], [`body`], [`method`],
//! [`upstream`] and [`encoding`], and nothing here depends on it.
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod body;
pub mod cdc;
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
