//! The `switchyard` binary: the proxy (`run`), config checking (`check-config`), and the
//! control CLI (`ctl`). Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("SWITCHYARD_WORKER_THREADS").ok().and_then(|v| v.parse().ok()) {
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
        let app = match switchyard::app::App::start(config).await {
            Ok(app) => app,
            Err(e) => {
                eprintln!("switchyard: {e}");
                return ExitCode::from(1);
            }
        };
        println!("switchyard listening on {}", app.grpc_addr);
        switchyard::shutdown::signal().await;
        tracing::info!("shutting down");
        let clean = app.shutdown(std::time::Duration::from_secs(30)).await;
        if clean { ExitCode::SUCCESS } else { ExitCode::from(1) }
    })
}
