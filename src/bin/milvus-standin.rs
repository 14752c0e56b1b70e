//! `milvus-standin`: one Milvus 2.6 cluster with CDC, for tests, demos and drills.
//!
//! Thin: parses the flags and runs [`switchyard::standin::run`]. Logs go to stderr
//! (`RUST_LOG`, default `info`; `SWITCHYARD_LOG_FORMAT=json` for JSON); stdout gets one line once the ports are bound.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use switchyard::standin::{Options, parse_duration, run};

/// One Milvus 2.6 cluster with CDC, storing data in a Milvus-protocol backend (milvus-lite).
#[derive(Debug, Parser)]
#[command(name = "milvus-standin", version)]
struct Cli {
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
    let cli = Cli::parse();
    switchyard::telemetry::init();
    let opts = Options {
        cluster_id: cli.cluster_id,
        listen: cli.listen,
        backend: cli.backend,
        pchannels: cli.pchannels,
        control: cli.control,
        replication_delay: cli.replication_delay,
        state_dir: cli.state_dir,
        token: cli.token,
    };
    match run(opts).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("milvus-standin: {e}");
            ExitCode::FAILURE
        }
    }
}
