//! Wiring: build the shared state from a config, start every task, own the shutdown order.
//!
//! [`App::start`] binds the listeners and spawns the tasks; [`App::shutdown`] stops them in
//! the written order: readiness off, stop accepting, GOAWAY on every connection, held writes
//! released or failed, in-flight calls given a grace period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::proxy::{Proxy, server};
use crate::routing::{Cluster, RoutingTable, SharedRouting};
use crate::topology::{ProxyState, Topology};

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
    /// Anything else in the config that only shows at start (TLS files, uris).
    #[error("{0}")]
    Setup(String),
}

/// A running proxy.
#[derive(Debug)]
pub struct App {
    /// Where the gRPC endpoint listens.
    pub grpc_addr: SocketAddr,
    /// The routing table.
    pub routing: SharedRouting,
    /// The data path.
    pub proxy: Arc<Proxy>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl App {
    /// Binds the listeners and starts serving.
    pub async fn start(config: Config) -> Result<App, AppError> {
        let clusters: Vec<Arc<Cluster>> = config
            .clusters
            .iter()
            .map(|c| Cluster::new(c.clone()).map_err(|e| AppError::Setup(format!("cluster {}: {e}", c.id))))
            .collect::<Result<_, _>>()?;
        let topology = Topology::from_config(&config);
        let table = RoutingTable::build(
            &topology,
            ProxyState::Running,
            None,
            &clusters,
            Arc::new(config.routing.clone()),
            |_| true,
        );
        let routing: SharedRouting = Arc::new(ArcSwap::from_pointee(table));
        let proxy = Proxy::new(routing.clone(), config.listener.max_message_size);

        let tls = match &config.listener.tls {
            Some(t) => Some(crate::tls::acceptor(t).map_err(AppError::Setup)?),
            None => None,
        };
        let addr = config.listener.address;
        let listener = TcpListener::bind(addr).await.map_err(|source| AppError::Bind { addr, source })?;
        let grpc_addr = server::local_addr(&listener);
        let settings = server::ServerSettings {
            max_concurrent_streams: config.listener.max_concurrent_streams,
            max_header_list_size: config.listener.max_header_list_size,
            ..Default::default()
        };
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(server::serve(listener, proxy.clone(), settings, tls, shutdown.clone(), tracker.clone()));
        Ok(App { grpc_addr, routing, proxy, shutdown, tracker })
    }

    /// Stops accepting, sends GOAWAY, and waits up to `grace` for calls in flight.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait()).await.is_ok()
    }
}
