//! The control port (HTTP/1.1, `--control`): fault injection, `GET /state`, `GET /metrics`.
//!
//! | request | effect |
//! |---|---|
//! | `POST /fault/replication/pause` · `/resume` | stop / restart sending to targets (`resume` also ends every pchannel pause) |
//! | `POST /fault/replication/pause-pchannel?index=N` · `/resume-pchannel?index=N` | stop / restart sending this cluster's pchannel N only; the others go on (one stuck pchannel, Milvus #53382, #52727) |
//! | `POST /fault/replication/delay?ms=N` | a message is sent no sooner than N ms after it was written |
//! | `POST /fault/unhealthy` · `/healthy` | `CheckHealth` answers not healthy / healthy |
//! | `POST /fault/freeze` · `/thaw` | requests are held unanswered / released |
//! | `POST /fault/down` · `/up` | the gRPC listener and its connections close / the same address is bound again |
//! | `POST /fault/latency?ms=N` | N ms added to every client request |
//! | `POST /fault/lose-answers?n=N` | the next N client writes are applied and logged, then their stream is reset: the answer is lost |
//! | `GET /state` | role, configuration, pending configuration, log length, checkpoints, counters, faults |
//! | `GET /metrics` | `milvus_wal_last_confirmed_time_tick`, `milvus_cdc_last_replicated_time_tick` |
//!
//! Fault endpoints answer 200 with the faults now in force (any HTTP method works), once
//! the change is in effect (`down`/`up` wait for the listener).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use super::config::shown;
use super::core::{Core, lock};
use super::faults::FaultState;
use super::log::tick_seconds;
use super::persist::Checkpoint;
use super::server::ListenerState;

#[derive(Clone)]
struct Ctl {
    core: Arc<Core>,
    listener: watch::Receiver<ListenerState>,
    grpc_addr: String,
}

/// The control routes.
pub(crate) fn router(core: Arc<Core>, listener: watch::Receiver<ListenerState>, grpc_addr: String) -> Router {
    let fault =
        |f: fn(&mut FaultState)| any(move |State(c): State<Ctl>| async move { axum::Json(c.core.faults.update(f)) });
    Router::new()
        .route("/fault/replication/pause", fault(|f| f.replication_paused = true))
        .route(
            "/fault/replication/resume",
            fault(|f| {
                f.replication_paused = false;
                f.paused_pchannels.clear();
            }),
        )
        .route("/fault/replication/pause-pchannel", any(pause_pchannel))
        .route("/fault/replication/resume-pchannel", any(resume_pchannel))
        .route("/fault/replication/delay", any(delay))
        .route("/fault/unhealthy", fault(|f| f.unhealthy = true))
        .route("/fault/healthy", fault(|f| f.unhealthy = false))
        .route("/fault/freeze", fault(|f| f.frozen = true))
        .route("/fault/thaw", fault(|f| f.frozen = false))
        .route("/fault/latency", any(latency))
        .route("/fault/lose-answers", any(lose_answers))
        .route("/fault/down", any(|s: State<Ctl>| updown(s, true)))
        .route("/fault/up", any(|s: State<Ctl>| updown(s, false)))
        .route("/state", get(state))
        .route("/metrics", get(metrics))
        .with_state(Ctl { core, listener, grpc_addr })
}

#[derive(Debug, Deserialize)]
struct Ms {
    ms: u64,
}

async fn delay(State(c): State<Ctl>, Query(q): Query<Ms>) -> impl IntoResponse {
    axum::Json(c.core.faults.update(|f| f.replication_delay_ms = q.ms))
}

#[derive(Debug, Deserialize)]
struct Index {
    index: usize,
}

async fn pause_pchannel(State(c): State<Ctl>, Query(q): Query<Index>) -> Response {
    if q.index >= c.core.pchannels.len() {
        let msg = format!("no pchannel {} (this cluster has {})", q.index, c.core.pchannels.len());
        return (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": msg }))).into_response();
    }
    axum::Json(c.core.faults.update(|f| {
        if !f.paused_pchannels.contains(&q.index) {
            f.paused_pchannels.push(q.index);
            f.paused_pchannels.sort_unstable();
        }
    }))
    .into_response()
}

async fn resume_pchannel(State(c): State<Ctl>, Query(q): Query<Index>) -> impl IntoResponse {
    axum::Json(c.core.faults.update(|f| f.paused_pchannels.retain(|p| *p != q.index)))
}

async fn latency(State(c): State<Ctl>, Query(q): Query<Ms>) -> impl IntoResponse {
    axum::Json(c.core.faults.update(|f| f.latency_ms = q.ms))
}

#[derive(Debug, Deserialize)]
struct Count {
    n: u64,
}

async fn lose_answers(State(c): State<Ctl>, Query(q): Query<Count>) -> impl IntoResponse {
    axum::Json(c.core.faults.update(|f| f.lose_answers = q.n))
}

async fn updown(State(c): State<Ctl>, down: bool) -> Response {
    let mut rx = c.listener.clone();
    let before = rx.borrow().clone();
    if before.up != down && before.error.is_none() {
        return axum::Json(c.core.faults.get()).into_response();
    }
    c.core.faults.update(|f| f.down = down);
    let wait = rx.wait_for(|s| s.generation > before.generation && (s.up != down || s.error.is_some()));
    match tokio::time::timeout(Duration::from_secs(10), wait).await {
        Ok(Ok(s)) if s.error.is_none() => axum::Json(c.core.faults.get()).into_response(),
        Ok(Ok(s)) => {
            let msg = s.error.clone().unwrap_or_default();
            (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({ "error": msg }))).into_response()
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({ "error": "listener did not change state" })))
            .into_response(),
    }
}

fn checkpoints_json<'a>(cps: impl Iterator<Item = &'a Checkpoint>) -> serde_json::Value {
    cps.map(|c| {
        json!({
            "source_cluster_id": c.source_cluster_id,
            "pchannel": c.pchannel,
            "pchannel_index": c.pchannel_index,
            "time_tick": c.time_tick,
            "message_id": c.message_id,
        })
    })
    .collect()
}

async fn state(State(c): State<Ctl>) -> impl IntoResponse {
    let core = &c.core;
    let mut body = core.read(|st| {
        let role = st.role();
        json!({
            "cluster_id": st.me,
            "role": role.label(),
            "source": match &role { super::config::Role::Secondary { source } => Some(source.clone()), _ => None },
            "pchannels": st.pchannels,
            "config": shown(st.config.as_ref()),
            "pending": shown(st.pending.as_ref()),
            "demoted": st.demoted,
            "fence": st.fence.as_ref().map(|f| json!({
                "config": shown(Some(&f.config)),
                "pchannels": f.pchannels.iter().collect::<Vec<_>>(),
            })),
            "log_len": st.log.len(),
            "last_time_tick": st.last_tick,
            "checkpoints": checkpoints_json(st.checkpoints.values()),
            "salvage_checkpoints": checkpoints_json(st.salvage.values()),
            "drains": st.drains.iter().map(|d| json!({"cluster_id": d.cluster_id, "until": d.until})).collect::<Vec<_>>(),
        })
    });
    let replication: Vec<_> = lock(&core.cdc)
        .iter()
        .map(|((target, i), (tp, tick))| {
            json!({
                "target_cluster_id": target,
                "channel_name": core.pchannels.get(*i),
                "target_channel_name": tp,
                "confirmed_time_tick": tick,
            })
        })
        .collect();
    if let Some(o) = body.as_object_mut() {
        o.insert("replication".into(), json!(replication));
        o.insert("replicators".into(), json!(lock(&core.replicators).keys().collect::<Vec<_>>()));
        o.insert("counters".into(), core.counters.to_json());
        o.insert("faults".into(), json!(core.faults.get()));
        o.insert("listen".into(), json!(c.grpc_addr));
        o.insert("listener".into(), json!(*c.listener.borrow()));
        o.insert("version".into(), json!(super::service::version()));
    }
    axum::Json(body)
}

async fn metrics(State(c): State<Ctl>) -> impl IntoResponse {
    let core = &c.core;
    let mut out = String::new();
    out.push_str(
        "# HELP milvus_wal_last_confirmed_time_tick The time tick of the last message of a pchannel, in seconds.\n",
    );
    out.push_str("# TYPE milvus_wal_last_confirmed_time_tick gauge\n");
    let ticks = core.read(|st| {
        st.pch_ticks
            .iter()
            .enumerate()
            .map(|(i, own)| {
                let replicated = st.checkpoints.values().filter(|c| c.pchannel_index == i).map(|c| c.time_tick).max();
                (*own).max(replicated.unwrap_or(0))
            })
            .collect::<Vec<_>>()
    });
    for (name, tick) in core.pchannels.iter().zip(ticks) {
        let _ = writeln!(out, "milvus_wal_last_confirmed_time_tick{{channel_name=\"{name}\"}} {}", tick_seconds(tick));
    }
    out.push_str("# HELP milvus_cdc_last_replicated_time_tick The time tick of the last message a target confirmed, in seconds.\n");
    out.push_str("# TYPE milvus_cdc_last_replicated_time_tick gauge\n");
    for ((_, i), (target_pchannel, tick)) in lock(&core.cdc).iter() {
        let name = core.pchannels.get(*i).map(String::as_str).unwrap_or("");
        let _ = writeln!(
            out,
            "milvus_cdc_last_replicated_time_tick{{channel_name=\"{name}\",target_channel_name=\"{target_pchannel}\"}} {}",
            tick_seconds(*tick)
        );
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
