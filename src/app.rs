//! Wiring: build the shared state from a config, start every task, own the shutdown order.
//!
//! [`App::start`] binds the listeners and spawns the tasks; [`App::shutdown`] stops them in
//! the written order: readiness off, stop accepting, GOAWAY on every connection, held writes
//! released or failed, in-flight calls given a grace period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::control::{Control, ControlError};
use crate::proxy::{Proxy, server};
use crate::switchover::Orchestrator;

/// How long calls in flight may take to finish at shutdown, unless
/// `SWITCHYARD_SHUTDOWN_GRACE` says otherwise.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The control side could not start.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// Anything else in the config that only shows at start (TLS files).
    #[error("{0}")]
    Setup(String),
}

/// A running proxy.
#[derive(Debug)]
pub struct App {
    /// Where the gRPC endpoint listens.
    pub grpc_addr: SocketAddr,
    /// Where the admin API listens.
    pub admin_addr: SocketAddr,
    /// Jobs and operations.
    pub orch: Arc<Orchestrator>,
    /// The control side.
    pub control: Arc<Control>,
    /// The data path.
    pub proxy: Arc<Proxy>,
    shutdown: CancellationToken,
    admin_stop: CancellationToken,
    tracker: TaskTracker,
    background: TaskTracker,
}

impl App {
    /// Binds the listeners and starts serving. `config_path` is re-read on reload.
    pub async fn start(config: Config, config_path: Option<std::path::PathBuf>) -> Result<App, AppError> {
        let tls = match &config.listener.tls {
            Some(t) => Some(crate::tls::acceptor(t).map_err(AppError::Setup)?),
            None => None,
        };
        let addr = config.listener.address;
        let settings = server::ServerSettings {
            max_concurrent_streams: config.listener.max_concurrent_streams,
            max_header_list_size: config.listener.max_header_list_size,
            ..Default::default()
        };
        let limits = crate::proxy::ProxyLimits::from_config(&config.listener);
        let admin_bind = config.admin.address;
        let control = Control::new(config)?;
        let listener = TcpListener::bind(addr).await.map_err(|source| AppError::Bind { addr, source })?;
        let grpc_addr = server::local_addr(&listener);
        let admin_listener =
            TcpListener::bind(admin_bind).await.map_err(|source| AppError::Bind { addr: admin_bind, source })?;
        let admin_addr = server::local_addr(&admin_listener);
        let proxy = Proxy::new(control.clone(), limits);
        let orch = Orchestrator::new(control.clone());

        control.start_monitor();
        let shutdown = CancellationToken::new();
        let background = TaskTracker::new();
        background.spawn(
            crate::control::discovery::run(Arc::downgrade(&control)).instrument(tracing::info_span!("discovery")),
        );
        let auto = orch.spawn_auto_failover();
        // Before the listener serves: a job cut short by a restart holds writes until done.
        if let Some(task) = orch.recover() {
            background.spawn(async move {
                let _ = task.await;
            });
        }
        let admin_state = AdminState {
            orch: orch.clone(),
            proxy: proxy.clone(),
            config_path: config_path.clone(),
            reload_lock: Arc::new(tokio::sync::Mutex::new(())),
            loopback: admin_addr.ip().is_loopback(),
        };
        // The admin API outlives the data listener at shutdown, so /readyz can say 503.
        let admin_stop = CancellationToken::new();
        background.spawn(admin::serve(admin_listener, admin_state.clone(), admin_stop.clone()));
        background.spawn(reload_on_sighup(admin_state, shutdown.clone()));
        let stop_auto = shutdown.clone();
        background.spawn(async move {
            stop_auto.cancelled().await;
            auto.abort();
        });
        let tracker = TaskTracker::new();
        tracker.spawn(server::serve(listener, proxy.clone(), settings, tls, shutdown.clone(), tracker.clone()));
        Ok(App { grpc_addr, admin_addr, orch, control, proxy, shutdown, admin_stop, tracker, background })
    }

    /// Stops in the written order: `/readyz` turns 503; the listener stops accepting and
    /// every HTTP/2 connection gets GOAWAY; held writes are released (if the gate is held by
    /// a job, they wait for it within their `hold_window`, else they go now) or fail with a
    /// clear error at 80% of `grace`; calls in flight get 90% of `grace` to finish, then those
    /// still waiting for their cluster are answered with a `switchyard:` error. Returns
    /// whether every call finished by itself.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.control.ready.store(false, std::sync::atomic::Ordering::SeqCst);
        tracing::info!("shutdown: readiness off; stopping the listener and sending GOAWAY");
        self.shutdown.cancel();
        self.tracker.close();
        // An operator's pause or a discovery hold would keep held writes waiting past the
        // grace period; lift them so those writes go to the primary now.
        self.control.gate.release(crate::gate::HoldKey::Pause);
        self.control.gate.release(crate::gate::HoldKey::Discovery);
        // Writes held by a job wait for it, but not past most of the grace period: then they
        // fail with "shutting down; not sent", leaving time for the answer to reach the client.
        self.control.gate.shutdown_by(std::time::Instant::now() + grace.mul_f32(0.8));
        // Calls still waiting for a cluster near the end of the grace period are answered
        // with a clear error (saying whether a write may have been applied), not cut off
        // with their connection when the process exits.
        let cut_at = grace.mul_f32(0.9);
        let clean = tokio::time::timeout(cut_at, self.tracker.wait()).await.is_ok();
        if !clean {
            let waiting: usize = self.control.clusters().iter().map(|c| c.in_flight()).sum();
            tracing::warn!(grace = ?grace, waiting, "shutdown: answering calls still waiting for their cluster");
            self.proxy.cut_off_calls();
            if tokio::time::timeout(grace.saturating_sub(cut_at), self.tracker.wait()).await.is_err() {
                tracing::warn!(grace = ?grace, "shutdown: connections still open after the grace period");
            }
        }
        self.admin_stop.cancel();
        self.background.close();
        clean
    }
}

/// Reloads the config file on SIGHUP.
async fn reload_on_sighup(state: AdminState, shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = hup.recv() => if r.is_none() { return },
            }
            let Some(path) = state.config_path.clone() else { continue };
            let _guard = state.reload_lock.lock().await;
            match crate::control::reload::reload(state.orch.control(), &path) {
                Ok(epoch) => tracing::info!(epoch, "SIGHUP: config reloaded"),
                Err(errors) => {
                    tracing::error!(errors = ?errors, "SIGHUP: config not reloaded; the running config stays")
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (state, shutdown);
    }
}
