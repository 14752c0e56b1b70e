//! Configuration: read the TOML file, check everything, and report every problem at once.
//!
//! `raw` holds the file as written (serde, unknown keys refused). [`Config::from_toml`]
//! turns it into the validated [`Config`] or a [`ConfigError`] listing every problem, so
//! `switchyard check-config` and a rejected reload can show them all together.
//! Secrets are [`Redacted`]: their `Debug` and `Display` print `***`.

pub mod diff;
mod raw;

/// Every key a config file may hold, by section, in the order of the reference file.
pub use raw::KNOWN as KNOWN_KEYS;
pub mod units;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A secret string that never prints.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Redacted(String);

impl Redacted {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The gRPC endpoint.
    pub listener: ListenerConfig,
    /// The admin API.
    pub admin: AdminConfig,
    /// Where the topology is persisted.
    pub state: StateConfig,
    /// The clusters, in file order.
    pub clusters: Vec<ClusterConfig>,
    /// Read and write routing.
    pub routing: RoutingConfig,
    /// Planned switchover and the write gate.
    pub switchover: SwitchoverConfig,
    /// Force failover.
    pub failover: FailoverConfig,
    /// Health probes.
    pub health: HealthConfig,
}

/// `[listener]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Address of the gRPC endpoint.
    pub address: SocketAddr,
    /// TLS identity and client CA, when TLS is on.
    pub tls: Option<ServerTls>,
    /// Largest gRPC message accepted from a client.
    pub max_message_size: usize,
    /// Largest header list accepted from a client.
    pub max_header_list_size: u32,
    /// HTTP/2 streams per client connection.
    pub max_concurrent_streams: u32,
    /// Longest wait for the next piece of a request body; a call whose client stops
    /// sending for longer is answered "not sent" and its stream reset.
    pub body_timeout: Duration,
    /// Bytes all calls together may hold in memory to peek at a read's consistency level;
    /// a read that does not fit is routed as Strong without being peeked.
    pub peek_budget: usize,
}

/// Server TLS files.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerTls {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// Address of the admin API.
    pub address: SocketAddr,
    /// Bearer token; required unless the address is loopback.
    pub token: Option<Redacted>,
}

/// `[state]`.
#[derive(Debug, Clone, PartialEq)]
pub enum StateConfig {
    /// A JSON file, for one proxy.
    File {
        /// Its path.
        path: PathBuf,
    },
    /// etcd, for a tier of proxies.
    Etcd {
        /// Endpoints.
        endpoints: Vec<String>,
        /// Key prefix.
        prefix: String,
    },
}

/// A cluster's role at first start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Takes writes.
    Primary,
    /// Replicates from the primary; serves reads.
    Standby,
}

/// One `[[clusters]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// The Milvus cluster id used in the replicate configuration.
    pub id: String,
    /// The cluster's own endpoint.
    pub uri: String,
    /// Credentials for switchyard's control calls.
    pub token: Option<Redacted>,
    /// pchannel names.
    pub pchannels: Vec<String>,
    /// First-start role.
    pub role: Role,
    /// Prometheus endpoint of the cluster, for lag.
    pub metrics_uri: Option<String>,
    /// CA for an `https://` uri.
    pub tls_ca: Option<PathBuf>,
    /// Name to verify in the cluster's certificate, when it differs from the uri host.
    pub tls_server_name: Option<String>,
}

/// Where a class of reads goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadTarget {
    /// Standbys, with the primary as fallback.
    Standbys,
    /// Any cluster, primary included.
    Any,
    /// The primary only.
    Primary,
}

/// `[routing]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingConfig {
    /// Data reads.
    pub reads: ReadTarget,
    /// Metadata reads: primary, or follow `reads` (`None`).
    pub metadata_reads: Option<ReadTarget>,
    /// A standby further behind serves no reads.
    pub max_read_lag: Duration,
    /// Where Strong reads go.
    pub strong_reads: ReadTarget,
    /// Where Session reads go.
    pub session_reads: ReadTarget,
    /// At least this many standbys keep serving reads even when lagging.
    pub min_serving_standbys: usize,
    /// Read-your-writes window (zero = off).
    pub read_your_writes: Duration,
    /// How long a collection's default consistency level is trusted once learnt.
    pub level_cache_ttl: Duration,
}

/// `[switchover]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SwitchoverConfig {
    /// Refuse when the target is further behind.
    pub max_lag: Duration,
    /// In-flight writes must finish within this.
    pub drain_timeout: Duration,
    /// Promotion must finish within this.
    pub promote_timeout: Duration,
    /// The longest one write may be held.
    pub hold_window: Duration,
    /// Held writes at most.
    pub max_held_requests: usize,
    /// Held bytes at most.
    pub max_held_bytes: u64,
}

/// `[failover]`.
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverConfig {
    /// Fail over by itself.
    pub automatic: bool,
    /// The primary must fail every probe this long.
    pub detect_after: Duration,
    /// No second automatic failover sooner.
    pub min_interval: Duration,
}

/// `[health]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// Probe period.
    pub interval: Duration,
    /// Probe timeout.
    pub timeout: Duration,
    /// Consecutive successes to turn up.
    pub rise: u32,
    /// Consecutive failures to turn down.
    pub fall: u32,
}

/// Every problem found in a config, reported together.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    /// One line per problem.
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(p: impl Into<String>) -> Self {
        Self { problems: vec![p.into()] }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text, path.parent().unwrap_or(Path::new(".")))
    }

    /// Parses and validates config text. Relative paths are kept as written.
    pub fn from_toml(text: &str, _base: &Path) -> Result<Config, ConfigError> {
        let expanded = expand_env(text)?;
        let mut table: toml::Table =
            toml::from_str(&expanded).map_err(|e| ConfigError::one(toml_problem(&expanded, &e)))?;
        // Unknown keys are all reported (not just the first), and validation goes on
        // without them so the other problems show too.
        let unknown = raw::strip_unknown_keys(&mut table);
        let raw: raw::RawConfig = match table.try_into() {
            Ok(r) => r,
            Err(e) => {
                let mut problems = unknown;
                problems.push(value_problem(&e));
                return Err(ConfigError { problems });
            }
        };
        match validate::validate(raw) {
            Ok(c) if unknown.is_empty() => Ok(c),
            Ok(_) => Err(ConfigError { problems: unknown }),
            Err(mut e) => {
                let mut problems = unknown;
                problems.append(&mut e.problems);
                Err(ConfigError { problems })
            }
        }
    }

    /// The cluster with this id.
    pub fn cluster(&self, id: &str) -> Option<&ClusterConfig> {
        self.clusters.iter().find(|c| c.id == id)
    }
}

/// A TOML error as one line: where, and what, but never the text of the file. The toml
/// crate's own `Display` quotes the offending line, and serde quotes an offending value; on a
/// `token` line (or one whose `${VAR}` was just expanded) either would print a secret in
/// `check-config` output, reload answers and logs.
fn toml_problem(text: &str, e: &toml::de::Error) -> String {
    let at = e
        .span()
        .map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!(" at line {line}, column {column}")
        })
        .unwrap_or_default();
    format!("invalid TOML{at}: {}", hide_values(e.message().trim()))
}

/// A value of the wrong type, with the key it is in (`... in `listener.max_concurrent_streams``)
/// but not the value itself.
fn value_problem(e: &toml::de::Error) -> String {
    let text = e.to_string();
    let key = text.strip_prefix(e.message()).unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" ");
    let sep = if key.is_empty() { "" } else { " " };
    format!("invalid value: {}{sep}{key}", hide_values(e.message().trim()))
}

/// serde's "invalid type: string \"…\", expected …" and "unknown variant `…`" quote a value;
/// keep its kind and what was expected.
fn hide_values(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let kind = rest.split([' ', ',']).next().unwrap_or("value");
            let expected = rest.rfind(", expected").map_or("", |i| &rest[i..]);
            return format!("{prefix}{kind}{expected}");
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let expected = rest.rfind(", expected").map_or("", |i| &rest[i..]);
        return format!("unknown variant{expected}");
    }
    message.to_string()
}

/// Replaces `${VAR}` with the environment's value; an unset variable is an error.
/// Comment lines are left alone, so documentation may mention `${VAR}` freely.
fn expand_env(text: &str) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            match after.find('}') {
                Some(end) => {
                    let name = &after[..end];
                    match std::env::var(name) {
                        Ok(v) => out.push_str(&v),
                        Err(_) => {
                            problems.push(format!("environment variable {name} is not set (used as ${{{name}}})"))
                        }
                    }
                    rest = &after[end + 1..];
                }
                None => {
                    out.push_str(&rest[start..]);
                    rest = "";
                }
            }
        }
        out.push_str(rest);
    }
    if problems.is_empty() { Ok(out) } else { Err(ConfigError { problems }) }
}
