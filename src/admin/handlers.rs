//! Admin handlers and their JSON shapes.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AdminState;
use crate::config::units::parse_duration;
use crate::topology::ProxyState;

/// An admin error: a status, a stable code and a message.
#[derive(Debug)]
pub(super) struct AdminError(StatusCode, &'static str, String);

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.2, "code": self.1}))).into_response()
    }
}

type Result<T> = std::result::Result<T, AdminError>;

/// Compares in constant time, so the token cannot be guessed byte by byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<()> {
    let Some(token) = state.token() else { return Ok(()) };
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if same(g.trim().as_bytes(), token.expose().as_bytes()) => Ok(()),
        Some(_) => Err(AdminError(StatusCode::UNAUTHORIZED, "unauthorized", "wrong admin token".into())),
        None => Err(AdminError(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing admin token (Authorization: Bearer <token>)".into(),
        )),
    }
}

pub(super) async fn not_found() -> AdminError {
    AdminError(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint".into())
}

pub(super) async fn livez() -> &'static str {
    "ok\n"
}

pub(super) async fn readyz(State(s): State<AdminState>) -> (StatusCode, &'static str) {
    let c = s.orch.control();
    if !c.ready.load(std::sync::atomic::Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    if c.routing().load().primary.is_none() && c.routing().load().readable.is_empty() {
        return (StatusCode::SERVICE_UNAVAILABLE, "no cluster can serve\n");
    }
    (StatusCode::OK, "ready\n")
}

pub(super) async fn metrics(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response> {
    if !(s.loopback && peer.ip().is_loopback()) {
        authorize(&s, &headers)?;
    }
    let body = crate::metrics::render(s.orch.control(), &s.proxy);
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}

fn topology_json(s: &AdminState) -> Value {
    let c = s.orch.control();
    let t = c.topology();
    let table = c.routing().load_full();
    json!({
        "epoch": t.epoch,
        "state": table.state.as_str(),
        "reason": table.abnormal_reason,
        "held_writes_reason": c.gate.closed_reason(),
        "primary": t.primary,
        "standbys": t.standbys,
        "fenced": t.fenced,
        "rebuild": t.rebuild,
        "readable": table.readable.iter().map(|c| c.id.to_string()).collect::<Vec<_>>(),
        "job": s.orch.jobs.running(),
    })
}

pub(super) async fn topology(State(s): State<AdminState>, headers: HeaderMap) -> Result<Json<Value>> {
    authorize(&s, &headers)?;
    Ok(Json(topology_json(&s)))
}

pub(super) async fn clusters(State(s): State<AdminState>, headers: HeaderMap) -> Result<Json<Value>> {
    authorize(&s, &headers)?;
    let c = s.orch.control();
    let t = c.topology();
    let list: Vec<Value> = c
        .clusters()
        .iter()
        .map(|cl| {
            let id = cl.id.to_string();
            let role = if t.fenced.contains(&id) {
                "fenced"
            } else if t.primary.as_deref() == Some(id.as_str()) {
                "primary"
            } else if t.rebuild.contains(&id) {
                "rebuild"
            } else {
                "standby"
            };
            let v = c.view(&id).unwrap_or_default();
            json!({
                "id": id,
                "uri": cl.config.uri,
                "role": role,
                "health": if v.up { "up" } else { "down" },
                "last_error": v.last_error,
                "lag_ms": v.lag.map(|l| l.as_millis() as u64),
                "serves_reads": c.routing().load().readable.iter().any(|r| r.id == cl.id),
                "in_flight": cl.in_flight(),
                "reads_total": cl.stats.total(crate::routing::KindLabel::Read),
                "writes_total": cl.stats.total(crate::routing::KindLabel::Write),
                "control_total": cl.stats.total(crate::routing::KindLabel::Control),
            })
        })
        .collect();
    Ok(Json(Value::Array(list)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SwitchoverBody {
    target: String,
    expected_primary: Option<String>,
}

pub(super) async fn switchover(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Json(b): Json<SwitchoverBody>,
) -> Result<(StatusCode, Json<Value>)> {
    authorize(&s, &headers)?;
    match s.orch.switchover(&b.target, b.expected_primary.as_deref()).await {
        Ok(id) => Ok((StatusCode::ACCEPTED, Json(json!({"job_id": id})))),
        Err(e) => Err(AdminError(StatusCode::CONFLICT, "precondition_failed", e.0)),
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)] // a misspelt `target` must not mean "any standby"
pub(super) struct TargetBody {
    target: Option<String>,
}

pub(super) async fn failover(
    State(s): State<AdminState>,
    headers: HeaderMap,
    body: Option<Json<TargetBody>>,
) -> Result<(StatusCode, Json<Value>)> {
    authorize(&s, &headers)?;
    let target = body.and_then(|Json(b)| b.target);
    match s.orch.failover(target.as_deref()).await {
        Ok(id) => Ok((StatusCode::ACCEPTED, Json(json!({"job_id": id})))),
        Err(e) => Err(AdminError(StatusCode::CONFLICT, "precondition_failed", e.0)),
    }
}

pub(super) async fn drill(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Json(b): Json<SwitchoverBody>,
) -> Result<(StatusCode, Json<Value>)> {
    authorize(&s, &headers)?;
    match s.orch.drill(&b.target).await {
        Ok(id) => Ok((StatusCode::ACCEPTED, Json(json!({"job_id": id})))),
        Err(e) => Err(AdminError(StatusCode::CONFLICT, "precondition_failed", e.0)),
    }
}

pub(super) async fn jobs(State(s): State<AdminState>, headers: HeaderMap) -> Result<Json<Value>> {
    authorize(&s, &headers)?;
    Ok(Json(serde_json::to_value(s.orch.jobs.all()).unwrap_or_default()))
}

pub(super) async fn job(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    authorize(&s, &headers)?;
    match s.orch.jobs.get(&id) {
        Some(j) => Ok(Json(serde_json::to_value(j).unwrap_or_default())),
        None => Err(AdminError(StatusCode::NOT_FOUND, "not_found", format!("no job {id:?}"))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PauseBody {
    timeout: String,
}

pub(super) async fn pause(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Json(b): Json<PauseBody>,
) -> Result<Json<Value>> {
    authorize(&s, &headers)?;
    let st: ProxyState = s.orch.pause_writes(pause_timeout(&b.timeout)?).await;
    Ok(Json(json!({"state": st.as_str()})))
}

/// A pause's `timeout`: a duration from 1ms to 24h.
fn pause_timeout(timeout: &str) -> Result<Duration> {
    let d = parse_duration(timeout).map_err(|e| AdminError(StatusCode::BAD_REQUEST, "bad_request", e))?;
    if d < Duration::from_millis(1) || d > Duration::from_secs(24 * 3600) {
        return Err(AdminError(StatusCode::BAD_REQUEST, "bad_request", "timeout must be between 1ms and 24h".into()));
    }
    Ok(d)
}

pub(super) async fn resume(State(s): State<AdminState>, headers: HeaderMap) -> Result<Json<Value>> {
    authorize(&s, &headers)?;
    let st = s.orch.resume_writes().await;
    Ok(Json(json!({"state": st.as_str()})))
}

pub(super) async fn readmit(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    authorize(&s, &headers)?;
    s.orch.readmit(&id).await.map_err(|e| AdminError(StatusCode::CONFLICT, "precondition_failed", e.0))?;
    Ok(Json(json!({"topology": topology_json(&s)})))
}

pub(super) async fn reload(State(s): State<AdminState>, headers: HeaderMap) -> Result<(StatusCode, Json<Value>)> {
    authorize(&s, &headers)?;
    let Some(path) = s.config_path.clone() else {
        return Err(AdminError(
            StatusCode::CONFLICT,
            "no_config_file",
            "switchyard was started without a config file".into(),
        ));
    };
    let _guard = s.reload_lock.lock().await;
    match crate::control::reload::reload(s.orch.control(), &path) {
        Ok(epoch) => Ok((StatusCode::OK, Json(json!({"epoch": epoch})))),
        Err(errors) => Ok((StatusCode::BAD_REQUEST, Json(json!({"errors": errors, "code": "invalid_config"})))),
    }
}

/// The Milvus SDKs' global-cluster topology format: capability bits READABLE=1, WRITABLE=2.
///
/// Only clusters that serve are listed: the primary (3) and the standbys that may serve reads
/// (1); fenced clusters and those waiting for a rebuild are left out. The SDKs assume a
/// writable cluster in every topology (pymilvus's `GlobalTopology.primary` raises
/// `ValueError` otherwise, and its refresher adopts any higher version), so while no cluster
/// takes writes (during a failover, between the fence of the old primary and the promotion
/// of the new one) the answer is `503 {code, message}`, which the SDKs retry, keeping the
/// topology they have.
pub(super) async fn sdk_topology(State(s): State<AdminState>) -> Response {
    let c = s.orch.control();
    let t = c.topology();
    let writable = t.primary.as_deref().filter(|p| !t.fenced.iter().any(|f| f == p) && c.cluster(p).is_some());
    let Some(primary) = writable else {
        let why = match t.primary.as_deref() {
            None => "there is no primary".to_string(),
            Some(p) if t.fenced.iter().any(|f| f == p) => format!("{p} is fenced; a failover is running"),
            Some(p) => format!("{p} is not configured"),
        };
        let message = format!("switchyard: no cluster takes writes now ({why}); retry shortly");
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"code": 503, "message": message}))).into_response();
    };
    let clusters: Vec<Value> = c
        .clusters()
        .iter()
        .filter(|cl| &*cl.id == primary || t.is_serving_standby(&cl.id))
        .map(|cl| {
            let cap = if &*cl.id == primary { 3 } else { 1 };
            json!({"clusterId": cl.id.to_string(), "endpoint": cl.config.uri, "capability": cap})
        })
        .collect();
    Json(json!({"code": 0, "data": {"version": t.epoch.to_string(), "clusters": clusters}})).into_response()
}

#[cfg(test)]
mod fuzz;
