//! The sending side of CDC: one replicator task per target.
//!
//! A replicator connects to the target's `uri` (from the configuration), asks the target
//! with `GetReplicateInfo{source_cluster_id: self, target_pchannel: <its pchannel i>}` where
//! each of our pchannels stands, then opens `CreateReplicateStream` (metadata `cluster-id`,
//! and `authorization` when the configuration has a token) and sends the log in order from
//! there, skipping what the target already has. The target confirms each message with its
//! time tick. On any error the stream is dropped and, after a backoff (50 ms doubling to
//! 1 s), the replicator asks again and resumes: nothing is lost, and the target drops what
//! it has already applied. Faults are read before every message: paused or frozen, nothing
//! is sent (the stream stays open); down, the stream is dropped until `/fault/up`; with a
//! delay, a message is sent no sooner than that long after it was written. With one pchannel
//! paused (`/fault/replication/pause-pchannel`), its messages are passed over and the others
//! go on; when it is resumed the session restarts and resends from the target's checkpoints,
//! which on that pchannel are still before what was passed over (a drain instead waits).
//!
//! Only log entries are sent (client writes and fences): never a time tick, on a busy or an
//! idle cluster, as Milvus 2.6 CDC does not replicate WAL time ticks. Its replicate stream
//! client (milvus `internal/cdc/replication/replicatestream/replicate_stream_client_impl.go`)
//! returns `ErrReplicateIgnored` for self-controlled messages (TimeTick, CreateSegment, Flush:
//! `pkg/streaming/util/message/specialized_message.go`), and the secondary's replicate
//! interceptor (`internal/streamingnode/server/wal/interceptors/replicate/replicates/impl.go`)
//! moves its checkpoint only on replicated data, DDL and transaction-commit messages. So here
//! too, a target's checkpoint on an idle pchannel stays at the last message replicated there.
//!
//! A replicator of a former target ("drain") stops once its last entry (the fence) is
//! confirmed. [`reconcile`] starts and stops replicators to match the state; each is owned
//! by a [`ReplicatorHandle`], and dropping the handle stops the task.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prost::Message;
use tokio::sync::mpsc;

use super::config::{Role, targets};
use super::core::{Core, lock};
use super::log::{Entry, tick_ms};
use super::wire;
use switchyard::body::Body;
use switchyard::grpc::client::{CallOptions, unary};
use switchyard::grpc::{self, Code, FrameDecoder, GrpcStatus};
use switchyard::method::SERVICE_PREFIX;
use switchyard::proto::milvus::{
    GetReplicateInfoRequest, GetReplicateInfoResponse, ReplicateMessage, ReplicateRequest, ReplicateResponse,
    replicate_request, replicate_response,
};
use switchyard::upstream::{TlsSettings, Upstream, UpstreamSettings};

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What a replicator does: where it sends, and where it stops (drains only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spec {
    pub(crate) target: String,
    pub(crate) uri: String,
    pub(crate) token: String,
    pub(crate) target_pchannels: Vec<String>,
    pub(crate) until: Option<u64>,
}

/// Owns a replicator task; dropping it stops the task.
#[derive(Debug)]
pub(crate) struct ReplicatorHandle {
    spec: Spec,
    task: tokio::task::AbortHandle,
}

impl Drop for ReplicatorHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts and stops replicators so that they match the state: every target while primary,
/// plus every drain.
pub(crate) fn reconcile(core: &Arc<Core>) {
    let desired: BTreeMap<String, Spec> = core.read(|st| {
        let mut m = BTreeMap::new();
        if let (Role::Primary, Some(cfg)) = (st.role(), st.config.as_ref()) {
            for t in targets(cfg, &st.me) {
                let p = t.connection_param.clone().unwrap_or_default();
                m.insert(
                    t.cluster_id.clone(),
                    Spec {
                        target: t.cluster_id.clone(),
                        uri: p.uri,
                        token: p.token,
                        target_pchannels: t.pchannels.clone(),
                        until: None,
                    },
                );
            }
        }
        for d in &st.drains {
            m.entry(d.cluster_id.clone()).or_insert_with(|| Spec {
                target: d.cluster_id.clone(),
                uri: d.uri.clone(),
                token: d.token.clone(),
                target_pchannels: d.pchannels.clone(),
                until: Some(d.until),
            });
        }
        m
    });
    let mut reps = lock(&core.replicators);
    reps.retain(|id, h| desired.get(id) == Some(&h.spec));
    lock(&core.cdc).retain(|(id, _), _| desired.contains_key(id));
    for (id, spec) in desired {
        if let std::collections::hash_map::Entry::Vacant(slot) = reps.entry(id) {
            tracing::info!(target_cluster = %slot.key(), uri = %spec.uri, until = ?spec.until, "starting replicator");
            let task = tokio::spawn(run(core.clone(), spec.clone()));
            slot.insert(ReplicatorHandle { spec, task: task.abort_handle() });
        }
    }
}

async fn run(core: Arc<Core>, spec: Spec) {
    let settings = UpstreamSettings { connections: 1, connect_timeout: Duration::from_secs(1), ..Default::default() };
    let up = match Upstream::new(&spec.uri, TlsSettings::default(), settings) {
        Ok(up) => up,
        Err(e) => {
            tracing::error!(target_cluster = %spec.target, error = %e, "cannot replicate to this target");
            return;
        }
    };
    let mut backoff = MIN_BACKOFF;
    let mut last_error = String::new();
    let mut faults = core.faults.watch();
    loop {
        // A dead cluster sends nothing: wait for `/fault/up`.
        if faults.wait_for(|f| !f.down).await.is_err() {
            return;
        }
        match session(&core, &spec, &up).await {
            Ok(()) => {
                finish_drain(&core, &spec);
                return;
            }
            Err(e) => {
                if e.progress {
                    backoff = MIN_BACKOFF;
                }
                if e.message != last_error {
                    tracing::warn!(target_cluster = %spec.target, error = %e.message, "replication stream failed; resuming");
                    last_error = e.message;
                } else {
                    tracing::debug!(target_cluster = %spec.target, error = %last_error, "replication stream failed again");
                }
                up.reset();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

fn finish_drain(core: &Arc<Core>, spec: &Spec) {
    tracing::info!(target_cluster = %spec.target, "former target has the fence; replication to it stops");
    core.update(|st| {
        st.drains.retain(|d| !(d.cluster_id == spec.target && Some(d.until) == spec.until));
        st.save_or_log(true);
    });
    reconcile(core);
}

#[derive(Debug)]
struct SessionError {
    message: String,
    /// Whether the session got at least one confirmation (resets the backoff).
    progress: bool,
}

fn fail(message: impl Into<String>) -> SessionError {
    SessionError { message: message.into(), progress: false }
}

enum Step {
    Idle,
    Skip,
    /// An entry of a paused pchannel: not sent now, resent once the pchannel is resumed.
    PassOver(usize),
    Wait(Duration),
    Send(Entry),
}

/// One connection: resume from the target's checkpoints, send until an error (or, for a
/// drain, until the fence is confirmed: `Ok`).
async fn session(core: &Arc<Core>, spec: &Spec, up: &Upstream) -> Result<(), SessionError> {
    let cps = checkpoints(core, spec, up).await?;
    let floor = core.read(|st| st.floors.get(&spec.target).copied().unwrap_or(0));
    let min_cp = cps.iter().copied().min().unwrap_or(0);
    let mut next = floor.max(core.read(|st| st.first_after(min_cp)));

    let (tx, body) = wire::channel_body(16);
    let resp = up.send(stream_request(core, spec, body)).await.map_err(|e| fail(format!("connect: {e}")))?;
    if let Some(st) = GrpcStatus::from_headers(resp.headers()).filter(|s| s.code != Code::Ok) {
        return Err(fail(format!("stream refused: {st}")));
    }
    let (conf_tx, mut conf_rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_confirmations(resp.into_body(), conf_tx));
    let _reader = AbortOnDrop(reader.abort_handle());

    let mut inflight: VecDeque<(u64, usize)> = VecDeque::new();
    let mut progress = false;
    let mut changes = core.subscribe();
    let mut faults = core.faults.watch();
    let err = |m: String, progress: bool| SessionError { message: m, progress };
    // Pchannels whose messages this session passed over while they were paused.
    let mut passed_over: Vec<usize> = Vec::new();
    loop {
        while let Ok(c) = conf_rx.try_recv() {
            let tick = c.map_err(|m| err(m, progress))?;
            progress |= confirm(core, spec, &mut inflight, tick);
        }
        if spec.until.is_some_and(|u| next > u) && inflight.is_empty() {
            return Ok(());
        }
        let f = core.faults.get();
        if f.down {
            return Err(SessionError { message: "this cluster is down (fault)".into(), progress });
        }
        if passed_over.iter().any(|p| !f.paused_pchannels.contains(p)) {
            // Resend what was passed over, from the target's checkpoints.
            return Err(SessionError { message: "a paused pchannel was resumed".into(), progress: true });
        }
        let step = if f.replication_paused || f.frozen || spec.until.is_some_and(|u| next > u) {
            Step::Idle
        } else {
            let paused = Paused { pchannels: &f.paused_pchannels, drain: spec.until.is_some() };
            fetch(core, spec, next, &cps, Duration::from_millis(f.replication_delay_ms), paused)
        };
        match step {
            Step::Skip => next += 1,
            Step::PassOver(p) => {
                if !passed_over.contains(&p) {
                    passed_over.push(p);
                }
                next += 1;
            }
            Step::Send(entry) => {
                let msg = ReplicateRequest {
                    request: Some(replicate_request::Request::ReplicateMessage(ReplicateMessage {
                        source_cluster_id: core.id.clone(),
                        message: Some(entry.to_message(&core.pchannels)),
                    })),
                };
                inflight.push_back((entry.tick, entry.pchannel));
                tx.send(http_body::Frame::data(grpc::encode_frame(&msg)))
                    .await
                    .map_err(|_| err("stream closed by the target".into(), progress))?;
                next += 1;
            }
            Step::Wait(d) => tokio::select! {
                c = conf_rx.recv() => progress |= on_confirmation(core, spec, &mut inflight, c).map_err(|m| err(m, progress))?,
                _ = faults.changed() => {}
                _ = tokio::time::sleep(d) => {}
            },
            Step::Idle => tokio::select! {
                c = conf_rx.recv() => progress |= on_confirmation(core, spec, &mut inflight, c).map_err(|m| err(m, progress))?,
                _ = faults.changed() => {}
                _ = changes.changed() => {}
            },
        }
    }
}

fn on_confirmation(
    core: &Core,
    spec: &Spec,
    inflight: &mut VecDeque<(u64, usize)>,
    c: Option<Result<u64, String>>,
) -> Result<bool, String> {
    let tick = c.unwrap_or_else(|| Err("stream reader stopped".into()))?;
    Ok(confirm(core, spec, inflight, tick))
}

/// Pchannels paused by the fault, and whether this session is a drain (which must not
/// pass anything over: it ends at its fence).
struct Paused<'a> {
    pchannels: &'a [usize],
    drain: bool,
}

/// Takes the entry at `next`, or says why not yet. Marks it fetched when it is to be sent
/// (rollback reads the marks, under the same lock, to tell which fences are still unsent).
fn fetch(core: &Core, spec: &Spec, next: u64, cps: &[u64], delay: Duration, paused: Paused<'_>) -> Step {
    core.modify(|st| {
        let Some(e) = st.log.get(next as usize) else { return Step::Idle };
        if st.cancelled.contains(&next) || e.tick <= cps.get(e.pchannel).copied().unwrap_or(0) {
            return Step::Skip;
        }
        if paused.pchannels.contains(&e.pchannel) {
            return if paused.drain { Step::Idle } else { Step::PassOver(e.pchannel) };
        }
        if !delay.is_zero() {
            let due = tick_ms(e.tick) + delay.as_millis() as u64;
            let now = tick_ms(super::log::next_tick(0));
            if due > now {
                return Step::Wait(Duration::from_millis(due - now));
            }
        }
        let e = e.clone();
        st.fetched.insert(spec.target.clone(), next + 1);
        Step::Send(e)
    })
}

/// Records a confirmation; returns whether it confirmed anything.
fn confirm(core: &Core, spec: &Spec, inflight: &mut VecDeque<(u64, usize)>, tick: u64) -> bool {
    let mut any = false;
    while inflight.front().is_some_and(|(t, _)| *t <= tick) {
        if let Some((t, p)) = inflight.pop_front() {
            set_cdc(core, spec, p, t);
            any = true;
        }
    }
    any
}

fn set_cdc(core: &Core, spec: &Spec, pchannel: usize, tick: u64) {
    let name = spec.target_pchannels.get(pchannel).cloned().unwrap_or_default();
    let mut cdc = lock(&core.cdc);
    let slot = cdc.entry((spec.target.clone(), pchannel)).or_insert((name, 0));
    slot.1 = slot.1.max(tick);
}

/// The target's checkpoint tick for each of our pchannels (0 when it has none from us).
async fn checkpoints(core: &Core, spec: &Spec, up: &Upstream) -> Result<Vec<u64>, SessionError> {
    let opts = CallOptions::timeout(CALL_TIMEOUT).with_token(Some(&spec.token));
    let mut out = vec![0; core.pchannels.len()];
    for (i, slot) in out.iter_mut().enumerate() {
        let Some(target_pchannel) = spec.target_pchannels.get(i) else { break };
        let req =
            GetReplicateInfoRequest { source_cluster_id: core.id.clone(), target_pchannel: target_pchannel.clone() };
        let resp: GetReplicateInfoResponse =
            unary(up, "GetReplicateInfo", &req, &opts).await.map_err(|e| fail(format!("GetReplicateInfo: {e}")))?;
        if let Some(cp) = resp.checkpoint.filter(|cp| cp.cluster_id == core.id) {
            *slot = cp.time_tick;
            if cp.time_tick > 0 {
                set_cdc(core, spec, i, cp.time_tick);
            }
        }
    }
    Ok(out)
}

fn stream_request(core: &Core, spec: &Spec, body: Body) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = http::Uri::try_from(format!("{SERVICE_PREFIX}CreateReplicateStream"))
        .unwrap_or_else(|_| http::Uri::from_static("/"));
    let h = req.headers_mut();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(grpc::CONTENT_TYPE));
    h.insert("te", HeaderValue::from_static("trailers"));
    if let Ok(v) = HeaderValue::from_str(&core.id) {
        h.insert("cluster-id", v);
    }
    if !spec.token.is_empty()
        && let Ok(v) = HeaderValue::from_str(&switchyard::encoding::base64(spec.token.as_bytes()))
    {
        h.insert("authorization", v);
    }
    req
}

/// Reads `ReplicateConfirmedMessageInfo`s until the stream ends; the last item is the reason.
async fn read_confirmations(mut body: Incoming, tx: mpsc::UnboundedSender<Result<u64, String>>) {
    let mut dec = FrameDecoder::new(16 << 20);
    let end = loop {
        match body.frame().await {
            None => break "stream ended by the target".to_string(),
            Some(Err(e)) => break format!("stream: {e}"),
            Some(Ok(frame)) => {
                if let Some(t) = frame.trailers_ref() {
                    match GrpcStatus::from_headers(t) {
                        Some(st) if st.code != Code::Ok => break format!("target: {st}"),
                        _ => break "stream ended by the target".to_string(),
                    }
                }
                if let Ok(data) = frame.into_data() {
                    dec.push(&data);
                }
                loop {
                    match dec.next_message() {
                        Ok(Some(msg)) => {
                            let tick = decode_confirmation(msg);
                            if let Some(tick) = tick {
                                let _ = tx.send(Ok(tick));
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = tx.send(Err(format!("bad response frame: {e}")));
                            return;
                        }
                    }
                }
            }
        }
    };
    let _ = tx.send(Err(end));
}

fn decode_confirmation(msg: Bytes) -> Option<u64> {
    match ReplicateResponse::decode(msg).ok()?.response? {
        replicate_response::Response::ReplicateConfirmedMessageInfo(i) => Some(i.confirmed_time_tick),
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
