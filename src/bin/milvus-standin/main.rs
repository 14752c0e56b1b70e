//! `milvus-standin`: one Milvus 2.6 cluster with CDC, on one machine, for tests, demos and
//! switchover drills. It is a test tool shipped with switchyard, never a replacement for
//! Milvus CDC (see `shared/spec/milvus-standin.md`). It is a binary of its own, outside the
//! `switchyard` library: it uses the library's gRPC, body, method-table, upstream and protobuf
//! modules, and the library knows nothing of it.
//!
//! Logs go to stderr (`RUST_LOG`, default `info`; `SWITCHYARD_LOG_FORMAT=json` for JSON);
//! stdout gets one line once the ports are bound.
//!
//! A stand-in speaks the Milvus gRPC protocol on `--listen`, keeps the CDC role state a
//! Milvus 2.6 cluster keeps (primary or secondary, replicate configuration, checkpoints), and
//! stores and searches data in a real Milvus-protocol server behind it (`--backend`,
//! usually milvus-lite). Reads and other calls pass through to the backend unchanged; client
//! writes are refused on a secondary with Milvus's errors, and on a primary applied, logged
//! with a hybrid time tick and replicated to the targets of the configuration over
//! `CreateReplicateStream`, as Milvus CDC does.
//!
//! # Layout
//! - [`mod@self`]: [`Options`] (the flags) and [`run`]: bind, print the ports, serve until a
//!   signal.
//! - `server`: the HTTP/2 (h2c) listener, a task per connection, `/fault/down` and `/up`.
//! - `service`: per request: the CDC control calls, health and version, writes, pass-through.
//! - `writes`: client writes: rejected on a secondary, applied and logged on a primary.
//! - `core`: the shared state (role, configuration, log, checkpoints) and its locks.
//! - `config`: roles and targets of a replicate configuration; its JSON form.
//! - `validate`: `UpdateReplicateConfiguration` validation with Milvus's texts.
//! - `switchover`: configuration changes, fences, promotion, force promote, replicate info.
//! - `replicator`: one task per target sending the log over `CreateReplicateStream`.
//! - `receiver`: the target side of `CreateReplicateStream`: apply, checkpoint, confirm.
//! - `log`: log entries, time ticks, the `log.bin` file; `persist`: `state.json`.
//! - `faults`: injected faults and request counters; `control`: the HTTP control port.
//! - `wire`: protobuf wire-level edits and gRPC response builders.
//!
//! # Known limits
//! - Requests are replayed on targets, not WAL entries: collections with `auto_id` get
//!   different primary keys on the target than on the source.
//! - A new target gets this cluster's whole log from the start; a target added when this
//!   cluster is promoted gets only what was written after the promotion.
//! - Checkpoints move after the backend applied a message; a crash between the two replays
//!   that one message (as Milvus may).
//! - Writes that are not one uncompressed gRPC message are applied but not replicated.
//! - A collection has one pchannel, the one its writes are logged on (FNV-1a of its name);
//!   `DescribeCollection` answers it as `physical_channel_names`, and one vchannel on it.
//! - No time ticks are replicated, busy or idle (as Milvus 2.6 CDC: see `replicator`): a
//!   target's checkpoint on an idle pchannel stays at the last message replicated there.
//! - The log (request payloads included) is kept in memory; `state.json` holds the
//!   configuration's tokens in clear (the stand-in needs them to replicate after a restart).
//!
//! # Choices where Milvus gives no single answer
//! - A replicated fence (Milvus's `AlterReplicateConfig`) changes a target's configuration
//!   only once the same configuration is requested there too; Milvus applies it on arrival.
//! - Force-promote refusals carry Milvus's streaming-error prefix
//!   (`code: STREAMING_CODE_INVAILD_ARGUMENT, cause: ...`) and are checked in the order shape,
//!   no configuration, primary (Milvus checks "primary" first, which hides "no configuration").
//! - A replicated message refused on a primary ends the stream with gRPC `FAILED_PRECONDITION`.
//! - A write on an unknown path, refused on a secondary, gets gRPC `FAILED_PRECONDITION` with
//!   the DDL text: its response type is unknown.
//! - A blocked `UpdateReplicateConfiguration` answers a little before the caller's deadline
//!   (10%, at most 500 ms) so the caller reads the reason, not its own DEADLINE_EXCEEDED.
//! - `--replication-delay` delays each message to its write time plus the delay (a standby
//!   lagging by that much), rather than adding the delay once per message sent.

mod config;
mod control;
mod core;
mod faults;
mod levels;
mod log;
mod persist;
mod receiver;
mod replicator;
mod server;
mod service;
mod switchover;
mod validate;
mod wire;
mod writes;

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use switchyard::upstream::{TlsSettings, Upstream, UpstreamSettings};
use tokio::net::TcpListener;

/// One Milvus 2.6 cluster with CDC, storing data in a Milvus-protocol backend (milvus-lite).
#[derive(Debug, Parser)]
#[command(name = "milvus-standin", version)]
struct Options {
    /// The cluster id; pchannels are named `<id>-rootcoord-dml_<i>`.
    #[arg(long)]
    cluster_id: String,
    /// The gRPC address (port 0: any free port; the chosen one is printed).
    #[arg(long)]
    listen: SocketAddr,
    /// The backend uri, e.g. http://127.0.0.1:19531 (a milvus-lite server).
    #[arg(long)]
    backend: String,
    /// The number of pchannels.
    #[arg(long)]
    pchannels: usize,
    /// The control HTTP address (faults, /state, /metrics).
    #[arg(long)]
    control: Option<SocketAddr>,
    /// Send each replicated message no sooner than this after it was written (e.g. 500ms).
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    replication_delay: Duration,
    /// Keep role, configuration, log and checkpoints here across restarts.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Credentials (user:password or API key) for the stand-in's own calls to its backend.
    #[arg(long, env = "MILVUS_STANDIN_TOKEN")]
    token: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let opts = Options::parse();
    switchyard::telemetry::init();
    match run(opts).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("milvus-standin: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Why a stand-in could not start.
#[derive(Debug, thiserror::Error)]
enum StandinError {
    /// A flag is unusable.
    #[error("{0}")]
    Usage(String),
    /// An address could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The state directory could not be read or written.
    #[error("state dir: {0}")]
    State(String),
}

/// Runs a stand-in until SIGINT or SIGTERM.
async fn run(opts: Options) -> Result<(), StandinError> {
    run_until(opts, shutdown_signal()).await
}

/// Runs a stand-in until `shutdown` completes. Prints one line to stdout once both
/// listeners are bound: `milvus-standin <id> listening on <addr> control on <addr|->`.
async fn run_until(opts: Options, shutdown: impl Future<Output = ()>) -> Result<(), StandinError> {
    if opts.pchannels == 0 {
        return Err(StandinError::Usage("--pchannels must be at least 1".into()));
    }
    if opts.cluster_id.is_empty() || opts.cluster_id.contains(char::is_whitespace) {
        return Err(StandinError::Usage("--cluster-id must be non-empty and without whitespace".into()));
    }
    let backend = Upstream::new(&opts.backend, TlsSettings::default(), UpstreamSettings::default())
        .map_err(|e| StandinError::Usage(format!("--backend: {e}")))?;
    let store = match &opts.state_dir {
        Some(dir) => {
            Some(persist::Store::open(dir).map_err(|e| StandinError::State(format!("{}: {e}", dir.display())))?)
        }
        None => None,
    };
    let core = core::Core::new(core::CoreParts {
        id: opts.cluster_id.clone(),
        pchannels: opts.pchannels,
        backend,
        backend_token: opts.token.clone().filter(|t| !t.is_empty()),
        faults: faults::Faults::new(opts.replication_delay),
        store,
    })
    .map_err(StandinError::State)?;

    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr).await.map_err(|source| StandinError::Bind { addr, source })
    };
    let grpc = bind(opts.listen).await?;
    let grpc_addr = grpc.local_addr().map_err(|source| StandinError::Bind { addr: opts.listen, source })?;
    let listener_state = server::spawn(core.clone(), grpc, grpc_addr);
    let control_addr = match opts.control {
        Some(addr) => {
            let l = bind(addr).await?;
            let local = l.local_addr().map_err(|source| StandinError::Bind { addr, source })?;
            let app = control::router(core.clone(), listener_state, grpc_addr.to_string());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(l, app).await {
                    tracing::error!(error = %e, "control port stopped");
                }
            });
            local.to_string()
        }
        None => "-".to_string(),
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "milvus-standin {} listening on {grpc_addr} control on {control_addr}", opts.cluster_id);
        let _ = out.flush();
    }
    tracing::info!(cluster_id = %opts.cluster_id, role = core.role().label(), backend = %opts.backend, "milvus-standin started");
    replicator::reconcile(&core);
    shutdown.await;
    tracing::info!("milvus-standin stopping");
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Parses a duration written like `0ms`, `250ms`, `2s`, `1m` (a bare number is milliseconds).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?} (use e.g. 0ms, 500ms, 2s, 1m)"))?;
    match unit {
        "" | "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("invalid duration unit in {s:?} (use ms, s or m)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_millis(15)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn flags() {
        use clap::CommandFactory as _;
        Options::command().debug_assert();
        let o = Options::try_parse_from([
            "milvus-standin",
            "--cluster-id=a",
            "--listen=127.0.0.1:0",
            "--backend=http://127.0.0.1:19531",
            "--pchannels=2",
            "--replication-delay=2s",
        ])
        .expect("flags parse");
        assert_eq!((o.cluster_id.as_str(), o.pchannels), ("a", 2));
        assert_eq!(o.replication_delay, Duration::from_secs(2));
        assert_eq!((o.control, o.state_dir), (None, None));
    }
}
