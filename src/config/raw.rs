//! The config file as written: serde types with defaults, before any checking.
//!
//! Every section rejects unknown keys, so a typo is an error rather than a silent default.

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) listener: RawListener,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    #[serde(default)]
    pub(super) state: RawState,
    #[serde(default)]
    pub(super) clusters: Vec<RawCluster>,
    #[serde(default)]
    pub(super) routing: RawRouting,
    #[serde(default)]
    pub(super) switchover: RawSwitchover,
    #[serde(default)]
    pub(super) failover: RawFailover,
    #[serde(default)]
    pub(super) health: RawHealth,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) address: Option<String>,
    pub(super) tls_cert: Option<String>,
    pub(super) tls_key: Option<String>,
    pub(super) client_ca: Option<String>,
    pub(super) max_message_size: Option<String>,
    pub(super) max_header_list_size: Option<String>,
    pub(super) max_concurrent_streams: Option<u32>,
    pub(super) body_timeout: Option<String>,
    pub(super) peek_budget: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) address: Option<String>,
    pub(super) token: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub(super) backend: Option<String>,
    pub(super) path: Option<String>,
    pub(super) endpoints: Option<Vec<String>>,
    pub(super) prefix: Option<String>,
}

/// `pchannels` is a count or a list of names.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum RawPchannels {
    Count(i64),
    Names(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) id: Option<String>,
    pub(super) uri: Option<String>,
    pub(super) token: Option<String>,
    pub(super) pchannels: Option<RawPchannels>,
    pub(super) role: Option<String>,
    pub(super) metrics_uri: Option<String>,
    pub(super) tls_ca: Option<String>,
    pub(super) tls_server_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouting {
    pub(super) reads: Option<String>,
    pub(super) metadata_reads: Option<String>,
    pub(super) max_read_lag: Option<String>,
    pub(super) strong_reads: Option<String>,
    pub(super) session_reads: Option<String>,
    pub(super) unknown_methods: Option<String>,
    pub(super) min_serving_standbys: Option<usize>,
    pub(super) read_your_writes: Option<String>,
    pub(super) level_cache_ttl: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSwitchover {
    pub(super) max_lag: Option<String>,
    pub(super) drain_timeout: Option<String>,
    pub(super) promote_timeout: Option<String>,
    pub(super) hold_window: Option<String>,
    pub(super) max_held_requests: Option<usize>,
    pub(super) max_held_bytes: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFailover {
    pub(super) automatic: Option<bool>,
    pub(super) detect_after: Option<String>,
    pub(super) min_interval: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) interval: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) rise: Option<u32>,
    pub(super) fall: Option<u32>,
}

/// Every key the file may hold, by section (`clusters` is an array of tables).
pub const KNOWN: &[(&str, &[&str])] = &[
    (
        "listener",
        &[
            "address",
            "tls_cert",
            "tls_key",
            "client_ca",
            "max_message_size",
            "max_header_list_size",
            "max_concurrent_streams",
            "body_timeout",
            "peek_budget",
        ],
    ),
    ("admin", &["address", "token"]),
    ("state", &["backend", "path", "endpoints", "prefix"]),
    ("clusters", &["id", "uri", "token", "pchannels", "role", "metrics_uri", "tls_ca", "tls_server_name"]),
    (
        "routing",
        &[
            "reads",
            "metadata_reads",
            "max_read_lag",
            "strong_reads",
            "session_reads",
            "unknown_methods",
            "min_serving_standbys",
            "read_your_writes",
            "level_cache_ttl",
        ],
    ),
    (
        "switchover",
        &["max_lag", "drain_timeout", "promote_timeout", "hold_window", "max_held_requests", "max_held_bytes"],
    ),
    ("failover", &["automatic", "detect_after", "min_interval"]),
    ("health", &["interval", "timeout", "rise", "fall"]),
];

/// Removes keys the config does not know and returns one problem per key.
pub(super) fn strip_unknown_keys(table: &mut toml::Table) -> Vec<String> {
    let mut problems = Vec::new();
    table.retain(|section, _| {
        let known = KNOWN.iter().any(|(s, _)| *s == section);
        if !known {
            problems.push(format!("unknown section [{section}]"));
        }
        known
    });
    for (section, keys) in KNOWN {
        let mut check = |t: &mut toml::Table, at: String| {
            t.retain(|k, _| {
                let ok = keys.contains(&k);
                if !ok {
                    problems.push(format!("{at}: unknown key {k:?}"));
                }
                ok
            });
        };
        match table.get_mut(*section) {
            Some(toml::Value::Table(t)) => check(t, section.to_string()),
            Some(toml::Value::Array(items)) => {
                for (i, item) in items.iter_mut().enumerate() {
                    if let toml::Value::Table(t) = item {
                        check(t, format!("{section}[{i}]"));
                    }
                }
            }
            _ => {}
        }
    }
    problems
}
