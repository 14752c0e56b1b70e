//! The `switchyard` binary: the proxy (`run`), config checking (`check-config`), and the
//! control CLI (`ctl`). Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// A proxy allocates and frees small buffers per request on every core; mimalloc's per-thread
// free lists cost less there than glibc's malloc (measured in BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about = "A global gRPC endpoint for Milvus clusters replicated with CDC")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Config file.
        #[arg(long, env = "SWITCHYARD_CONFIG", default_value = "config/switchyard.toml")]
        config: PathBuf,
    },
    /// Drive a running switchyard through its admin API.
    Ctl {
        /// Admin API base URL.
        #[arg(long, default_value = "http://127.0.0.1:9100")]
        admin: String,
        /// Admin token.
        #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[command(subcommand)]
        command: switchyard::ctl::CtlCommand,
    },
    /// Validate a config file and print every problem at once.
    CheckConfig {
        /// Config file.
        #[arg(long, env = "SWITCHYARD_CONFIG", default_value = "config/switchyard.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match switchyard::config::Config::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {} problem(s):", config.display(), e.problems.len());
                for p in &e.problems {
                    eprintln!("  - {p}");
                }
                ExitCode::from(1)
            }
        },
        Command::Run { config } => run(config),
        Command::Ctl { admin, token, command } => {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::from(2);
                }
            };
            ExitCode::from(rt.block_on(switchyard::ctl::run(&admin, token, command)))
        }
    }
}

fn run(path: PathBuf) -> ExitCode {
    switchyard::telemetry::init();
    let config = match switchyard::config::Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {} problem(s):", path.display(), e.problems.len());
            for p in &e.problems {
                eprintln!("  - {p}");
            }
            return ExitCode::from(2);
        }
    };
    // One worker means one thread doing everything: a current-thread runtime does that
    // without the work-stealing machinery (no cross-thread wake-ups).
    let workers: Option<usize> = std::env::var("SWITCHYARD_WORKER_THREADS").ok().and_then(|v| v.parse().ok());
    let mut rt = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if let Some(n) = workers.filter(|n| *n > 1) {
        rt.worker_threads(n);
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let app = match switchyard::app::App::start(config, Some(path.clone())).await {
            Ok(app) => app,
            Err(e) => {
                eprintln!("switchyard: {e}");
                return ExitCode::from(1);
            }
        };
        println!("switchyard listening on {} admin on {}", app.grpc_addr, app.admin_addr);
        use std::io::Write;
        let _ = std::io::stdout().flush();
        switchyard::shutdown::signal().await;
        tracing::info!("shutting down");
        let grace = std::env::var("SWITCHYARD_SHUTDOWN_GRACE")
            .ok()
            .and_then(|v| switchyard::config::units::parse_duration(&v).ok())
            .unwrap_or(switchyard::app::DEFAULT_SHUTDOWN_GRACE);
        let clean = app.shutdown(grace).await;
        if clean { ExitCode::SUCCESS } else { ExitCode::from(1) }
    })
}
