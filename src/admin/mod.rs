//! The admin API: JSON over HTTP on its own listener, with a bearer token.
//!
//! | endpoint | what |
//! |---|---|
//! | `GET /livez`, `GET /readyz` | liveness; readiness (503 while shutting down or with no primary) |
//! | `GET /metrics` | Prometheus text (no token needed when bound to loopback) |
//! | `GET /v1/topology`, `GET /v1/clusters` | roles, state, health, lag, counters |
//! | `POST /v1/switchover`, `POST /v1/failover`, `POST /v1/drill` | start a job → `202 {job_id}` |
//! | `GET /v1/jobs`, `GET /v1/jobs/{id}` | job records with step timings |
//! | `POST /v1/writes/pause`, `POST /v1/writes/resume` | hold writes for a while / release them |
//! | `POST /v1/clusters/{id}/readmit` | take a fenced or rebuilt cluster back |
//! | `POST /v1/reload` | re-read the config file: validate, diff, apply |
//! | `GET /global-cluster/topology` | the topology as the Milvus SDKs' global-cluster client reads it |
//!
//! Errors are `{error, code}` with a fitting HTTP status; a missing or wrong token is 401.

mod handlers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use crate::config::Redacted;
use crate::proxy::Proxy;
use crate::switchover::Orchestrator;

/// What the admin handlers share.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Jobs and operations.
    pub orch: Arc<Orchestrator>,
    /// The data path (for its counters).
    pub proxy: Arc<Proxy>,
    /// The config file, for reloads.
    pub config_path: Option<PathBuf>,
    /// Serialises reloads.
    pub reload_lock: Arc<tokio::sync::Mutex<()>>,
    /// Whether the admin listener is on loopback (metrics need no token there).
    pub loopback: bool,
}

impl AdminState {
    fn token(&self) -> Option<Redacted> {
        self.orch.control().config().admin.token.clone()
    }
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/livez", get(handlers::livez))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .route("/global-cluster/topology", get(handlers::sdk_topology))
        .route("/v1/topology", get(handlers::topology))
        .route("/v1/clusters", get(handlers::clusters))
        .route("/v1/switchover", post(handlers::switchover))
        .route("/v1/failover", post(handlers::failover))
        .route("/v1/drill", post(handlers::drill))
        .route("/v1/jobs", get(handlers::jobs))
        .route("/v1/jobs/{id}", get(handlers::job))
        .route("/v1/writes/pause", post(handlers::pause))
        .route("/v1/writes/resume", post(handlers::resume))
        .route("/v1/clusters/{id}/readmit", post(handlers::readmit))
        .route("/v1/reload", post(handlers::reload))
        .fallback(handlers::not_found)
        .with_state(state)
}

/// Serves the admin API until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let app = router(state);
    let result = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin listener failed");
    }
}
