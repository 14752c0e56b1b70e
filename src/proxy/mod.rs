//! The data path: classify a call, pick a cluster, stream the call there and back.
//!
//! [`Proxy::handle`] is the whole life of one gRPC call:
//! 1. reject what is not gRPC (`415`/`405`), and `UpdateReplicateConfiguration` (switchyard
//!    owns the topology);
//! 2. classify the `:path` with the method table ([`crate::method`]);
//! 3. load the routing snapshot once;
//! 4. writes and unknown methods → the primary, through the write gate ([`write`]);
//!    data reads → a standby chosen by consistency level, lag and load ([`Proxy::read`]);
//!    metadata reads and control calls → the primary, unless `x-switchyard-cluster` names one;
//! 5. stream the body to the cluster, and its answer back, recording the outcome.
//!
//! A read whose cluster cannot be reached before anything was sent moves to another
//! cluster. A request that may have been sent is never sent again, except a write the
//! cluster refused as not primary: Milvus refuses those before applying them.

pub mod body;
pub mod consistency;
pub mod read;
pub mod reply;
pub mod response;
pub mod server;
mod write;

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{self as b, Body};
use crate::config::ReadTarget;
use crate::control::Control;
use crate::error::ProxyError;
use crate::method::{self, Kind, Method, ReadClass};
use crate::proto::common::ConsistencyLevel;
use crate::routing::{Cluster, InFlight, KindLabel, RoutingTable, cluster::RequestStats, policy};
use crate::upstream::SendError;
use body::RequestBody;
use consistency::{LevelCache, RecentWrites};
use response::{Outcome, ResponseBody};

/// The metadata header naming a cluster for one call.
pub const CLUSTER_HEADER: &str = "x-switchyard-cluster";

/// Reads tried on this many clusters at most when they cannot be reached.
const READ_ATTEMPTS: usize = 3;

/// The data path's own limits, from `[listener]`.
#[derive(Debug, Clone, Copy)]
pub struct ProxyLimits {
    /// Largest message accepted from a client.
    pub max_message_size: usize,
    /// Longest wait for the next piece of a request body.
    pub body_timeout: std::time::Duration,
    /// Bytes all calls together may read ahead to peek at consistency levels.
    pub peek_budget: usize,
}

impl ProxyLimits {
    /// The limits a `[listener]` section sets.
    pub fn from_config(l: &crate::config::ListenerConfig) -> Self {
        Self { max_message_size: l.max_message_size, body_timeout: l.body_timeout, peek_budget: l.peek_budget }
    }
}

/// What the data path needs, shared by every connection.
#[derive(Debug)]
pub struct Proxy {
    control: Arc<Control>,
    limits: ProxyLimits,
    /// The peek budget, in bytes; a read that cannot take its share is routed as Strong.
    peek: Arc<tokio::sync::Semaphore>,
    levels: LevelCache,
    /// Calls switchyard answered itself (no cluster).
    pub local_stats: RequestStats,
    /// Cancelled near the end of the shutdown grace period: calls still waiting for their
    /// cluster are answered with a clear error instead of being cut off with the connection.
    cut_off: tokio_util::sync::CancellationToken,
}

/// Per-connection state.
#[derive(Debug, Default)]
pub struct ConnInfo {
    /// Connection id, for logs.
    pub id: u64,
    /// Client address.
    pub peer: Option<std::net::SocketAddr>,
    /// This connection's recent writes (read-your-writes).
    pub writes: RecentWrites,
}

/// Where a data read may go.
#[derive(Debug, Clone)]
struct Pick {
    /// Where its kind and level send it.
    target: ReadTarget,
    /// Only the primary may answer it (Strong, Session): no standby fallback.
    only_primary: bool,
    /// Read-your-writes: the collection and the primary timestamp a standby must have
    /// applied on that collection's pchannels.
    required: Option<(consistency::CollectionKey, u64)>,
}

/// What the router knows about one call.
#[derive(Debug)]
struct Call {
    method: Option<&'static Method>,
    kind: Kind,
    label: KindLabel,
    start: Instant,
    /// The cluster the call was last sent to (for the error if shutdown cuts it off).
    sent_to: std::sync::Mutex<Option<Arc<str>>>,
}

impl Call {
    fn sending_to(&self, cluster: &Cluster) {
        *self.sent_to.lock().unwrap_or_else(|p| p.into_inner()) = Some(cluster.id.clone());
    }
}

impl Proxy {
    /// A data path driven by a control side.
    pub fn new(control: Arc<Control>, limits: ProxyLimits) -> Arc<Self> {
        let budget = limits.peek_budget.min(tokio::sync::Semaphore::MAX_PERMITS);
        Arc::new(Self {
            control,
            limits,
            peek: Arc::new(tokio::sync::Semaphore::new(budget)),
            levels: LevelCache::default(),
            local_stats: RequestStats::default(),
            cut_off: tokio_util::sync::CancellationToken::new(),
        })
    }

    /// Shutdown, at the end of the grace period: every call still waiting for its cluster
    /// is answered now with a `switchyard:` error saying whether it may have been applied.
    pub fn cut_off_calls(&self) {
        self.cut_off.cancel();
    }

    /// The control side.
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// Serves one call.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, conn: Arc<ConnInfo>) -> Response<Body> {
        if let Some(resp) = not_grpc(&req) {
            drain_briefly(req.into_body()).await;
            return resp;
        }
        let method = method::lookup(req.uri().path());
        let kind = method.map(|m| m.kind).unwrap_or(Kind::Write(method::WriteClass::Ddl));
        let call = Call { method, kind, label: label(kind), start: Instant::now(), sent_to: Default::default() };
        let (label, start) = (call.label, call.start);
        let span = tracing::debug_span!(
            "rpc",
            rpc.method = method.map(|m| m.name).unwrap_or("unknown"),
            rpc.kind = label.as_str(),
            route.epoch = tracing::field::Empty,
            upstream.cluster = tracing::field::Empty,
        );
        // Boxed: the routing future is large, and hyper moves the per-stream future into a
        // task; a pointer moves cheaper than the whole state machine.
        let routed = tracing::Instrument::instrument(Box::pin(self.route(req, &call, &conn)), span);
        let result = tokio::select! {
            biased;
            r = routed => r,
            _ = self.cut_off.cancelled() => Err(cut_off_error(&call)),
        };
        match result {
            Ok(resp) => resp,
            Err(e) => {
                let answer = e.answer(method);
                tracing::debug!(error = %answer.message(), "answered by switchyard");
                self.local_stats.record(label, answer.metric_code(), start.elapsed());
                answer.into_response()
            }
        }
    }

    async fn route(&self, req: Request<Incoming>, call: &Call, conn: &ConnInfo) -> Result<Response<Body>, ProxyError> {
        if let Some(m) = call.method {
            if m.name == "UpdateReplicateConfiguration" {
                return Err(ProxyError::ReplicateConfigRefused);
            }
            if m.is_cdc_internal() {
                return Err(ProxyError::CdcInternal(m.name));
            }
        }
        let table = self.control.routing().load_full();
        tracing::Span::current().record("route.epoch", table.epoch);
        let (mut parts, incoming) = req.into_parts();
        let named = parts.headers.remove(CLUSTER_HEADER).and_then(|v| v.to_str().ok().map(str::to_string));
        parts.headers.remove(http::header::HOST);
        let mut body = RequestBody::new(incoming, self.limits.max_message_size, self.limits.body_timeout);
        let method_name = call.method.map(|m| m.name).unwrap_or("");

        match call.kind {
            Kind::Write(_) => write::write(self, parts, body, call, conn).await,
            Kind::Control | Kind::Streaming => {
                body.read_ahead(false).await?;
                let target = match named {
                    Some(n) => named_cluster(&table, &n)?,
                    None => table
                        .primary
                        .clone()
                        .or_else(|| table.readable.first().cloned())
                        .ok_or_else(|| ProxyError::NoReadTarget { reason: "no cluster is up".into() })?,
                };
                self.forward(target, &table, parts, body, call).await
            }
            Kind::Read(class) => {
                let peeked = class == ReadClass::Data && read::has_level(method_name);
                let fields = if peeked {
                    self.peek_fields(&mut body, method_name).await?
                } else {
                    body.read_ahead(false).await?;
                    None
                };
                if let Some(n) = named {
                    let target = named_cluster(&table, &n)?;
                    return self.forward(target, &table, parts, body, call).await.map_err(ProxyError::for_read);
                }
                let db = db_of(&parts, fields.as_ref().map(|f| f.db_name.as_str()));
                // Unknown is unsafe: a level that cannot be read routes the read as Strong.
                let level = match &fields {
                    Some(f) if f.use_default => Some(self.default_level(&table, &parts, &db, &f.collection).await),
                    Some(f) => Some(f.level),
                    None if peeked => Some(ConsistencyLevel::Strong),
                    None => None,
                };
                let required = fields.as_ref().and_then(|f| {
                    let window = table.policy.read_your_writes;
                    let key = (db.clone(), f.collection.clone());
                    (!window.is_zero()).then(|| conn.writes.required(&key, window).map(|t| (key, t))).flatten()
                });
                let target = policy::read_target(call.kind, level, &table.policy);
                let only_primary = policy::primary_only(call.kind, level, &table.policy);
                self.read(&table, Pick { target, only_primary, required }, parts, body, call).await
            }
        }
    }

    /// Reads a data read's first message to learn its routing fields, within the peek
    /// budget. `None` when they cannot be read: compressed, unparsable, or no share of the
    /// budget left (the read is then routed as Strong, never as a guess).
    async fn peek_fields(
        &self,
        body: &mut RequestBody,
        method_name: &str,
    ) -> Result<Option<read::ReadFields>, ProxyError> {
        body.read_ahead(false).await?;
        let Some((0, len)) = body.first_header() else { return Ok(None) };
        // Charged twice its size: the one buffer it is read into, and the connection's read
        // buffers it arrives through, so the budget bounds what peeking really holds.
        let share = u32::try_from(2 * (len + crate::grpc::frame::HEADER_LEN)).unwrap_or(u32::MAX);
        let Ok(permit) = self.peek.clone().try_acquire_many_owned(share) else {
            tracing::debug!(len, "peek budget spent; routing the read as Strong");
            return Ok(None);
        };
        body.hold_permit(permit);
        let ahead = body.read_ahead(true).await?;
        Ok(ahead.first_message.and_then(|m| read::decode(method_name, m)))
    }

    /// The collection's own consistency level, from the cache (`routing.level_cache_ttl`) or
    /// `DescribeCollection` on the primary. When it cannot be learnt, Strong: unknown is unsafe.
    async fn default_level(
        &self,
        table: &RoutingTable,
        parts: &http::request::Parts,
        db: &str,
        collection: &str,
    ) -> ConsistencyLevel {
        let key = (db.to_string(), collection.to_string());
        if let Some(l) = self.levels.get(&key, table.policy.level_cache_ttl) {
            return l;
        }
        let Some(primary) = table.primary.clone() else { return ConsistencyLevel::Strong };
        let mut opts = crate::grpc::client::CallOptions::timeout(std::time::Duration::from_secs(2));
        opts.metadata.push(("dbname", db.to_string()));
        match parts.headers.get("authorization").and_then(|v| v.to_str().ok()) {
            // The client's own credentials: it may read what it asks to search.
            Some(a) => opts.metadata.push(("authorization", a.to_string())),
            None => opts = opts.with_token(primary.token()),
        }
        let req = crate::proto::milvus::DescribeCollectionRequest {
            db_name: db.to_string(),
            collection_name: collection.to_string(),
            ..Default::default()
        };
        match crate::grpc::client::unary::<_, crate::proto::milvus::DescribeCollectionResponse>(
            &primary.upstream,
            "DescribeCollection",
            &req,
            &opts,
        )
        .await
        {
            Ok(r) if r.status.as_ref().is_none_or(|s| s.code == 0 && s.error_code == 0) => {
                let l = ConsistencyLevel::try_from(r.consistency_level).unwrap_or(ConsistencyLevel::Strong);
                self.levels.put(key, l);
                l
            }
            other => {
                tracing::debug!(collection, result = ?other.err(), "default consistency level unknown; routing as Strong");
                ConsistencyLevel::Strong
            }
        }
    }

    /// Sends a read, moving to another cluster while attempts are never sent (except for a
    /// read only the primary may answer: it fails with the primary).
    async fn read(
        &self,
        table: &RoutingTable,
        pick: Pick,
        parts: http::request::Parts,
        body: RequestBody,
        call: &Call,
    ) -> Result<Response<Body>, ProxyError> {
        let Pick { target, only_primary, required } = pick;
        let mut tried: Vec<Arc<Cluster>> = Vec::new();
        let abort = body.abort_slot();
        let mut req = Request::from_parts(parts, b::boxed(body));
        let primary = table.primary.clone();
        // Read-your-writes: a standby serves this read only once it has applied the write on
        // each of the collection's pchannels (see `monitor::applied`).
        let caught_up = |c: &Cluster| {
            let is_primary = primary.as_ref().is_some_and(|p| std::ptr::eq(&**p, c));
            is_primary
                || required
                    .as_ref()
                    .is_none_or(|(key, t)| primary.as_ref().is_some_and(|p| crate::monitor::applied(p, c, key, *t)))
        };
        // Why the last cluster tried could not be reached, for the error if none can.
        let mut last_error = String::new();
        loop {
            let picked = if only_primary {
                if primary.is_none() {
                    return Err(ProxyError::NoReadTarget {
                        reason: "a Strong or Session read is served by the primary only, and there is none".into(),
                    });
                }
                primary.clone().filter(|p| !tried.iter().any(|t| Arc::ptr_eq(t, p)))
            } else {
                policy::pick_read_where(table, target, &tried, caught_up)
            };
            let Some(cluster) = picked else {
                return Err(match tried.last() {
                    Some(c) => ProxyError::NotSent {
                        cluster: c.id.to_string(),
                        detail: format!("{last_error}; no other cluster to try"),
                    },
                    None => ProxyError::NoReadTarget { reason: "no primary and no serving standby".into() },
                });
            };
            strip_foreign_identifier(&mut req, table, &cluster);
            match self.send(&cluster, req, call).await {
                Ok(resp) => return Ok(resp),
                Err(SendError::NotSent(e, back)) if !only_primary && tried.len() + 1 < READ_ATTEMPTS => {
                    tracing::warn!(cluster = %cluster.id, error = %e, "read not sent; trying another cluster");
                    self.count_transport_failure(&cluster);
                    last_error = e.to_string();
                    tried.push(cluster);
                    req = *back;
                }
                Err(e) => return Err(cut_reason(&abort).unwrap_or_else(|| self.send_error(&cluster, e).for_read())),
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
        call: &Call,
    ) -> Result<Response<Body>, ProxyError> {
        let abort = body.abort_slot();
        let mut req = Request::from_parts(parts, b::boxed(body));
        strip_foreign_identifier(&mut req, table, &cluster);
        self.send(&cluster, req, call)
            .await
            .map_err(|e| cut_reason(&abort).unwrap_or_else(|| self.send_error(&cluster, e)))
    }

    /// Sends and wraps the answer so the outcome is recorded when it ends.
    async fn send(&self, cluster: &Arc<Cluster>, req: Request<Body>, call: &Call) -> Result<Response<Body>, SendError> {
        call.sending_to(cluster);
        tracing::Span::current().record("upstream.cluster", &*cluster.id);
        let in_flight = InFlight::new(cluster.clone());
        let resp = cluster.upstream.send(req).await?;
        cluster.signals.transport_ok();
        let mut outcome = Outcome::new(in_flight, call.label, call.start);
        if let Some(st) = crate::grpc::GrpcStatus::from_headers(resp.headers()) {
            outcome.finish_trailers_only(st.code);
        }
        Ok(resp.map(|inc| b::boxed(ResponseBody::new(inc, outcome))))
    }

    /// Counts a transport failure on client traffic; wakes the health task at `fall` in a row.
    fn count_transport_failure(&self, cluster: &Cluster) {
        let fails = cluster.signals.transport_failed();
        if fails >= self.control.config().health.fall {
            cluster.signals.kick.notify_one();
        }
    }

    /// Maps a transport failure to switchyard's error, counting it for passive ejection.
    fn send_error(&self, cluster: &Arc<Cluster>, e: SendError) -> ProxyError {
        self.count_transport_failure(cluster);
        match e {
            SendError::NotSent(e, _) => ProxyError::NotSent { cluster: cluster.id.to_string(), detail: e.to_string() },
            SendError::Sent(e) => ProxyError::MaybeSent { cluster: cluster.id.to_string(), detail: e.to_string() },
        }
    }
}

/// Why switchyard cut a request body it was streaming, if it did: the call then failed
/// because of that (a stalled or oversized body, a drain), not because of the cluster.
fn cut_reason(abort: &body::AbortSlot) -> Option<ProxyError> {
    abort.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The answer for a call still waiting for its cluster when shutdown cuts calls off.
fn cut_off_error(call: &Call) -> ProxyError {
    match call.sent_to.lock().unwrap_or_else(|p| p.into_inner()).clone() {
        None => ProxyError::ShuttingDown,
        Some(cluster) => {
            ProxyError::CutOff { cluster: cluster.to_string(), may_be_applied: call.label == KindLabel::Write }
        }
    }
}

/// The database a call addresses: the request's own field, else the `dbname` header.
fn db_of(parts: &http::request::Parts, field: Option<&str>) -> String {
    match field.filter(|d| !d.is_empty()) {
        Some(d) => d.to_string(),
        None => parts.headers.get("dbname").and_then(|v| v.to_str().ok()).unwrap_or("default").to_string(),
    }
}

fn named_cluster(table: &RoutingTable, name: &str) -> Result<Arc<Cluster>, ProxyError> {
    if table.is_fenced(name) {
        return Err(ProxyError::Fenced(name.to_string()));
    }
    table.cluster(name).cloned().ok_or_else(|| ProxyError::UnknownCluster(name.to_string()))
}

/// `Connect` is answered by the primary, so the `identifier` a client sends belongs to it.
/// Milvus reads it only in its `KeepActiveInterceptor` (milvus `internal/proxy/connection`),
/// asynchronously, to refresh that client's last-active time; an id it does not know is
/// ignored. A foreign one would be harmless, but it would refresh a stranger's entry if ids
/// collided, so it is not sent to another cluster.
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

/// Reads and drops a little of a refused request's body (at most 64 KiB, for at most a
/// second), so that the answer is not followed by a reset of a stream the client is still
/// sending on: HTTP clients (curl among them) report such a reset as an error, sometimes
/// before they have read the answer that says what was wrong.
async fn drain_briefly(mut body: Incoming) {
    use http_body_util::BodyExt;
    let drain = async {
        let mut read = 0usize;
        while read <= 64 << 10 {
            match body.frame().await {
                Some(Ok(f)) => read += f.data_ref().map_or(0, |d| d.len()),
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
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
