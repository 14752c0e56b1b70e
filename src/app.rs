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

use crate::config::Config;
use crate::control::{Control, ControlError};
use crate::proxy::{Proxy, server};

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
    /// The control side.
    pub control: Arc<Control>,
    /// The data path.
    pub proxy: Arc<Proxy>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    background: TaskTracker,
}

impl App {
    /// Binds the listeners and starts serving.
    pub async fn start(config: Config) -> Result<App, AppError> {
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
        let max_message_size = config.listener.max_message_size;
        let control = Control::new(config)?;
        let listener = TcpListener::bind(addr).await.map_err(|source| AppError::Bind { addr, source })?;
        let grpc_addr = server::local_addr(&listener);
        let proxy = Proxy::new(control.clone(), max_message_size);

        control.start_monitor();
        let background = TaskTracker::new();
        background.spawn(
            crate::control::discovery::run(Arc::downgrade(&control)).instrument(tracing::info_span!("discovery")),
        );
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(server::serve(listener, proxy.clone(), settings, tls, shutdown.clone(), tracker.clone()));
        Ok(App { grpc_addr, control, proxy, shutdown, tracker, background })
    }

    /// Stops accepting, sends GOAWAY, and waits up to `grace` for calls in flight.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.control.ready.store(false, std::sync::atomic::Ordering::SeqCst);
        self.shutdown.cancel();
        self.tracker.close();
        let clean = tokio::time::timeout(grace, self.tracker.wait()).await.is_ok();
        self.background.close();
        clean
    }
}
