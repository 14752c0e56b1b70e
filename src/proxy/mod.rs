//! The data path: classify a call, pick a cluster, stream the call there and back.
//!
//! [`Proxy::handle`] is the whole life of one gRPC call:
//! 1. reject what is not gRPC (`415`), and `UpdateReplicateConfiguration` (switchyard owns it);
//! 2. classify the `:path` with the method table ([`crate::method`]);
//! 3. load the routing snapshot once;
//! 4. writes (and unknown methods) → the primary; data reads → a standby (by consistency
//!    level and load); metadata reads and control calls → the primary, unless
//!    `x-switchyard-cluster` names a cluster;
//! 5. stream the body to the cluster, and its answer back, recording the outcome.
//!
//! A read whose cluster cannot be reached before anything was sent moves to another
//! cluster. A request that may have been sent is never sent again.

pub mod body;
pub mod read;
pub mod response;
pub mod server;

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{self as b, Body};
use crate::config::ReadTarget;
use crate::error::ProxyError;
use crate::method::{self, Kind, Method};
use crate::routing::{Cluster, InFlight, KindLabel, RoutingTable, SharedRouting, cluster::RequestStats, policy};
use crate::upstream::SendError;
use body::RequestBody;
use response::{Outcome, ResponseBody};

/// The metadata header naming a cluster for one call.
pub const CLUSTER_HEADER: &str = "x-switchyard-cluster";

/// Reads tried on this many clusters at most when they cannot be reached.
const READ_ATTEMPTS: usize = 3;

/// What the data path needs, shared by every connection.
#[derive(Debug)]
pub struct Proxy {
    routing: SharedRouting,
    max_message_size: usize,
    /// Calls switchyard answered itself (no cluster).
    pub local_stats: RequestStats,
}

/// Per-connection facts a call may use.
#[derive(Debug, Default)]
pub struct ConnInfo {
    /// Connection id, for logs.
    pub id: u64,
    /// Client address.
    pub peer: Option<std::net::SocketAddr>,
}

impl Proxy {
    /// A data path over a routing table.
    pub fn new(routing: SharedRouting, max_message_size: usize) -> Arc<Self> {
        Arc::new(Self { routing, max_message_size, local_stats: RequestStats::default() })
    }

    /// The routing table handle.
    pub fn routing(&self) -> &SharedRouting {
        &self.routing
    }

    /// Serves one call.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, _conn: Arc<ConnInfo>) -> Response<Body> {
        if let Some(resp) = not_grpc(&req) {
            return resp;
        }
        let start = Instant::now();
        let method = method::lookup(req.uri().path());
        let kind = method.map(|m| m.kind).unwrap_or(Kind::Write(method::WriteClass::Ddl));
        let label = label(kind);
        let result = self.route(req, method, kind, label, start).await;
        match result {
            Ok(resp) => resp,
            Err(e) => {
                let st = e.status();
                tracing::debug!(error = %st.message, "answered by switchyard");
                self.local_stats.record(label, st.code, start.elapsed());
                st.to_response()
            }
        }
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        method: Option<&'static Method>,
        kind: Kind,
        label: KindLabel,
        start: Instant,
    ) -> Result<Response<Body>, ProxyError> {
        if method.is_some_and(|m| m.name == "UpdateReplicateConfiguration") {
            return Err(ProxyError::ReplicateConfigRefused);
        }
        let table = self.routing.load_full();
        let (mut parts, incoming) = req.into_parts();
        let named = parts.headers.remove(CLUSTER_HEADER).and_then(|v| v.to_str().ok().map(str::to_string));
        parts.headers.remove(http::header::HOST);
        let mut body = RequestBody::new(incoming, self.max_message_size);

        let method_name = method.map(|m| m.name).unwrap_or("");
        let level = if matches!(kind, Kind::Read(method::ReadClass::Data)) && read::has_level(method_name) {
            let ahead = body.read_ahead(true).await?;
            ahead.first_message.and_then(|m| read::decode(method_name, m)).map(|f| f.level)
        } else {
            body.read_ahead(false).await?;
            None
        };

        match kind {
            Kind::Write(_) => {
                let primary = write_target(&table)?;
                self.forward(primary, &table, parts, body, label, start).await
            }
            Kind::Control | Kind::Streaming => {
                let target = match named {
                    Some(n) => named_cluster(&table, &n)?,
                    None => table
                        .primary
                        .clone()
                        .or_else(|| table.readable.first().cloned())
                        .ok_or_else(|| ProxyError::NoReadTarget { reason: "no cluster is up".into() })?,
                };
                self.forward(target, &table, parts, body, label, start).await
            }
            Kind::Read(_) => {
                if let Some(n) = named {
                    let target = named_cluster(&table, &n)?;
                    return self.forward(target, &table, parts, body, label, start).await;
                }
                let target = policy::read_target(kind, level, &table.policy);
                self.read(&table, target, parts, body, label, start).await
            }
        }
    }

    /// Sends a read, moving to another cluster while attempts are never sent.
    async fn read(
        &self,
        table: &RoutingTable,
        target: ReadTarget,
        parts: http::request::Parts,
        body: RequestBody,
        label: KindLabel,
        start: Instant,
    ) -> Result<Response<Body>, ProxyError> {
        let mut tried: Vec<Arc<Cluster>> = Vec::new();
        let mut req = Request::from_parts(parts, b::boxed(body));
        loop {
            let Some(cluster) = policy::pick_read(table, target, &tried) else {
                return Err(match tried.last() {
                    Some(c) => {
                        ProxyError::NotSent { cluster: c.id.to_string(), detail: "no other cluster to try".into() }
                    }
                    None => ProxyError::NoReadTarget { reason: "no primary and no serving standby".into() },
                });
            };
            strip_foreign_identifier(&mut req, table, &cluster);
            match self.send(&cluster, req, label, start).await {
                Ok(resp) => return Ok(resp),
                Err(SendError::NotSent(e, back)) if tried.len() + 1 < READ_ATTEMPTS => {
                    tracing::warn!(cluster = %cluster.id, error = %e, "read not sent; trying another cluster");
                    tried.push(cluster);
                    req = *back;
                }
                Err(SendError::NotSent(e, _)) => {
                    return Err(ProxyError::NotSent { cluster: cluster.id.to_string(), detail: e.to_string() });
                }
                Err(SendError::Sent(e)) => {
                    return Err(ProxyError::MaybeSent { cluster: cluster.id.to_string(), detail: e.to_string() });
                }
            }
        }
    }

    /// Sends to one cluster, with no second attempt.
    async fn forward(
        &self,
        cluster: Arc<Cluster>,
        table: &RoutingTable,
        parts: http::request::Parts,
        body: RequestBody,
        label: KindLabel,
        start: Instant,
    ) -> Result<Response<Body>, ProxyError> {
        let mut req = Request::from_parts(parts, b::boxed(body));
        strip_foreign_identifier(&mut req, table, &cluster);
        self.send(&cluster, req, label, start).await.map_err(|e| match e {
            SendError::NotSent(e, _) => ProxyError::NotSent { cluster: cluster.id.to_string(), detail: e.to_string() },
            SendError::Sent(e) => ProxyError::MaybeSent { cluster: cluster.id.to_string(), detail: e.to_string() },
        })
    }

    async fn send(
        &self,
        cluster: &Arc<Cluster>,
        req: Request<Body>,
        label: KindLabel,
        start: Instant,
    ) -> Result<Response<Body>, SendError> {
        let in_flight = InFlight::new(cluster.clone());
        let resp = cluster.upstream.send(req).await?;
        let mut outcome = Outcome::new(in_flight, label, start);
        if let Some(st) = crate::grpc::GrpcStatus::from_headers(resp.headers()) {
            outcome.set_code(st.code);
        }
        Ok(resp.map(|inc| b::boxed(ResponseBody::new(inc, outcome))))
    }
}

/// The primary for a write, or why there is none.
fn write_target(table: &RoutingTable) -> Result<Arc<Cluster>, ProxyError> {
    if let Some(reason) = &table.abnormal_reason {
        return Err(ProxyError::NoPrimary { reason: reason.clone() });
    }
    table.primary.clone().ok_or_else(|| ProxyError::NoPrimary { reason: "no primary in the topology".into() })
}

fn named_cluster(table: &RoutingTable, name: &str) -> Result<Arc<Cluster>, ProxyError> {
    if table.is_fenced(name) {
        return Err(ProxyError::Fenced(name.to_string()));
    }
    table.cluster(name).cloned().ok_or_else(|| ProxyError::UnknownCluster(name.to_string()))
}

/// `Connect` is answered by the primary, so the `identifier` a client sends belongs to it.
/// Milvus uses it only to track client connections, but it means nothing to another
/// cluster, so it is not sent there.
fn strip_foreign_identifier(req: &mut Request<Body>, table: &RoutingTable, target: &Arc<Cluster>) {
    let is_primary = table.primary.as_ref().is_some_and(|p| Arc::ptr_eq(p, target));
    if !is_primary {
        req.headers_mut().remove("identifier");
    }
}

fn label(kind: Kind) -> KindLabel {
    match kind {
        Kind::Write(_) => KindLabel::Write,
        Kind::Read(_) => KindLabel::Read,
        Kind::Control | Kind::Streaming => KindLabel::Control,
    }
}

/// An HTTP answer for requests that are not gRPC at all.
fn not_grpc(req: &Request<Incoming>) -> Option<Response<Body>> {
    let ct = req.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let is_grpc =
        ct == "application/grpc" || ct.starts_with("application/grpc+") || ct.starts_with("application/grpc;");
    let problem = if !is_grpc {
        Some((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "switchyard: not a gRPC request (content-type {ct:?}); this endpoint speaks gRPC (application/grpc) over HTTP/2\n"
            ),
        ))
    } else if req.method() != http::Method::POST {
        Some((StatusCode::METHOD_NOT_ALLOWED, format!("switchyard: gRPC calls use POST, not {}\n", req.method())))
    } else {
        None
    };
    problem.map(|(status, text)| {
        let mut resp = Response::new(b::full(text));
        *resp.status_mut() = status;
        resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        resp
    })
}
