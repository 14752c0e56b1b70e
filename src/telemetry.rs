//! Logs and spans: `tracing` with an `EnvFilter` from `RUST_LOG` (default `info`), as text,
//! or JSON when `SWITCHYARD_LOG_FORMAT=json`. Logs go to stderr; stdout carries only the
//! one-line readiness messages scripts wait for.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call twice (the second call does nothing).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("SWITCHYARD_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
