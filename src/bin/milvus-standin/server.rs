//! The gRPC listener: HTTP/2 with prior knowledge (h2c), a task per connection, and the
//! `/fault/down` · `/fault/up` switch.
//!
//! A supervisor task owns the listener. On `down` it stops accepting, drops the listener and
//! tells every connection task to drop its connection (closing the socket; a graceful
//! GOAWAY would let clients finish, which a dead cluster does not). On `up` it binds the
//! same address again. [`ListenerState`] reports each transition, so the control port can
//! answer once the change is in effect.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::core::Core;
use super::service;

/// What the listener is doing; `generation` counts transitions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct ListenerState {
    pub(crate) generation: u64,
    pub(crate) up: bool,
    pub(crate) error: Option<String>,
}

/// Starts the supervisor on an already bound listener.
pub(crate) fn spawn(core: Arc<Core>, listener: TcpListener, addr: SocketAddr) -> watch::Receiver<ListenerState> {
    let (tx, rx) = watch::channel(ListenerState::default());
    tokio::spawn(supervise(core, listener, addr, tx));
    rx
}

async fn supervise(core: Arc<Core>, first: TcpListener, addr: SocketAddr, state: watch::Sender<ListenerState>) {
    let mut faults = core.faults.watch();
    let mut listener = Some(first);
    let publish = |up: bool, error: Option<String>| {
        state.send_modify(|s| {
            s.generation += 1;
            s.up = up;
            s.error = error;
        })
    };
    loop {
        if let Some(l) = listener.take() {
            publish(true, None);
            tracing::info!(%addr, "gRPC listener up");
            let (kill_tx, kill_rx) = watch::channel(false);
            loop {
                tokio::select! {
                    accepted = l.accept() => match accepted {
                        Ok((stream, _)) => {
                            tokio::spawn(connection(core.clone(), stream, kill_rx.clone()));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    },
                    down = until(&mut faults, true) => {
                        if !down { return; }
                        break;
                    }
                }
            }
            drop(l);
            let _ = kill_tx.send(true);
            publish(false, None);
            tracing::info!(%addr, "gRPC listener down (fault)");
        }
        if !until(&mut faults, false).await {
            return;
        }
        match bind(addr).await {
            Ok(l) => listener = Some(l),
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot bind the gRPC address again");
                core.faults.update(|f| f.down = true);
                publish(false, Some(format!("cannot bind {addr}: {e}")));
            }
        }
    }
}

/// Waits until the `down` fault is `down`; false if the stand-in is shutting down.
async fn until(faults: &mut watch::Receiver<super::faults::FaultState>, down: bool) -> bool {
    faults.wait_for(|f| f.down == down).await.is_ok()
}

/// Binds `addr`, retrying for a while (the old socket may linger).
async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let mut last = None;
    for _ in 0..50 {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("bind failed")))
}

async fn connection(core: Arc<Core>, stream: TcpStream, mut kill: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let svc = service_fn(move |req| {
        let core = core.clone();
        async move { Ok::<_, Infallible>(service::serve(core, req).await) }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(2 << 20)
        .initial_connection_window_size(8 << 20)
        .max_concurrent_streams(1024)
        .max_send_buf_size(1 << 20);
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        res = conn => if let Err(e) = res {
            tracing::debug!(error = %e, "client connection ended");
        },
        // Dropping the connection future closes the socket at once.
        _ = kill.wait_for(|k| *k) => {}
    }
}
