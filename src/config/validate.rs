//! Semantic checks: raw config in, validated [`Config`] or every problem out.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{RawConfig, RawPchannels};
use super::units::{parse_duration, parse_size};
use super::*;

/// Collects problems while building the validated config.
struct Checker {
    problems: Vec<String>,
}

impl Checker {
    fn dur(&mut self, key: &str, v: &Option<String>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => parse_duration(s).unwrap_or_else(|e| {
                self.problems.push(format!("{key}: {e}"));
                default
            }),
        }
    }

    fn size(&mut self, key: &str, v: &Option<String>, default: u64) -> u64 {
        match v {
            None => default,
            Some(s) => parse_size(s).unwrap_or_else(|e| {
                self.problems.push(format!("{key}: {e}"));
                default
            }),
        }
    }

    fn addr(&mut self, key: &str, v: &Option<String>, default: &str) -> SocketAddr {
        let s = v.as_deref().unwrap_or(default);
        s.parse().unwrap_or_else(|_| {
            self.problems.push(format!("{key}: {s:?} is not an address like 127.0.0.1:19530"));
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    fn read_target(&mut self, key: &str, v: &Option<String>, default: ReadTarget) -> ReadTarget {
        match v.as_deref() {
            None => default,
            Some("standbys") => ReadTarget::Standbys,
            Some("any") => ReadTarget::Any,
            Some("primary") => ReadTarget::Primary,
            Some(o) => {
                self.problems.push(format!("{key}: {o:?} must be \"standbys\", \"any\" or \"primary\""));
                default
            }
        }
    }
}

pub(super) fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let mut c = Checker { problems: Vec::new() };

    let l = &raw.listener;
    let tls = match (&l.tls_cert, &l.tls_key) {
        (Some(cert), Some(key)) => Some(ServerTls {
            cert: PathBuf::from(cert),
            key: PathBuf::from(key),
            client_ca: l.client_ca.as_ref().map(PathBuf::from),
        }),
        (None, None) => {
            if l.client_ca.is_some() {
                c.problems.push("listener.client_ca needs listener.tls_cert and listener.tls_key".into());
            }
            None
        }
        _ => {
            c.problems.push("listener.tls_cert and listener.tls_key must be set together".into());
            None
        }
    };
    if let Some(t) = &tls {
        for (k, p) in [
            ("listener.tls_cert", Some(&t.cert)),
            ("listener.tls_key", Some(&t.key)),
            ("listener.client_ca", t.client_ca.as_ref()),
        ] {
            if let Some(p) = p
                && !p.exists()
            {
                c.problems.push(format!("{k}: {} does not exist", p.display()));
            }
        }
    }
    let max_message_size = c.size("listener.max_message_size", &l.max_message_size, 256 << 20);
    let max_header_list_size = c.size("listener.max_header_list_size", &l.max_header_list_size, 16 << 10);
    let listener = ListenerConfig {
        address: c.addr("listener.address", &l.address, "0.0.0.0:19530"),
        tls,
        max_message_size: max_message_size as usize,
        max_header_list_size: max_header_list_size.min(u32::MAX as u64) as u32,
        max_concurrent_streams: l.max_concurrent_streams.unwrap_or(1024),
        body_timeout: c.dur("listener.body_timeout", &l.body_timeout, Duration::from_secs(30)),
        peek_budget: c.size("listener.peek_budget", &l.peek_budget, 64 << 20) as usize,
    };

    let admin_address = c.addr("admin.address", &raw.admin.address, "127.0.0.1:9100");
    let admin_token = raw.admin.token.clone().filter(|t| !t.is_empty()).map(Redacted::new);
    if admin_token.is_none() && !admin_address.ip().is_loopback() {
        c.problems.push(format!("admin.token is required when admin.address ({admin_address}) is not loopback"));
    }
    let admin = AdminConfig { address: admin_address, token: admin_token };

    let state = match raw.state.backend.as_deref().unwrap_or("file") {
        "file" => {
            StateConfig::File { path: PathBuf::from(raw.state.path.as_deref().unwrap_or("data/switchyard-state.json")) }
        }
        "etcd" => {
            let endpoints = raw.state.endpoints.clone().unwrap_or_default();
            if endpoints.is_empty() {
                c.problems.push("state.endpoints: the etcd backend needs at least one endpoint".into());
            }
            StateConfig::Etcd { endpoints, prefix: raw.state.prefix.clone().unwrap_or_else(|| "/switchyard".into()) }
        }
        o => {
            c.problems.push(format!("state.backend: {o:?} must be \"file\" or \"etcd\""));
            StateConfig::File { path: PathBuf::from("data/switchyard-state.json") }
        }
    };

    let clusters = validate_clusters(&mut c, &raw);

    let r = &raw.routing;
    let reads = c.read_target("routing.reads", &r.reads, ReadTarget::Standbys);
    let metadata_reads = match r.metadata_reads.as_deref() {
        None | Some("primary") => Some(ReadTarget::Primary),
        Some("reads") | Some("follow") => None,
        Some(o) => {
            c.problems.push(format!("routing.metadata_reads: {o:?} must be \"primary\" or \"reads\""));
            Some(ReadTarget::Primary)
        }
    };
    match r.unknown_methods.as_deref() {
        None | Some("primary") => {}
        Some(o) => c.problems.push(format!(
            "routing.unknown_methods: {o:?}: only \"primary\" is supported (an unknown method may write)"
        )),
    }
    let routing = RoutingConfig {
        reads,
        metadata_reads,
        max_read_lag: c.dur("routing.max_read_lag", &r.max_read_lag, Duration::from_secs(10)),
        strong_reads: c.read_target("routing.strong_reads", &r.strong_reads, ReadTarget::Primary),
        session_reads: c.read_target("routing.session_reads", &r.session_reads, ReadTarget::Primary),
        min_serving_standbys: r.min_serving_standbys.unwrap_or(0),
        read_your_writes: c.dur("routing.read_your_writes", &r.read_your_writes, Duration::ZERO),
        level_cache_ttl: c.dur("routing.level_cache_ttl", &r.level_cache_ttl, Duration::from_secs(30)),
    };

    let s = &raw.switchover;
    let switchover = SwitchoverConfig {
        max_lag: c.dur("switchover.max_lag", &s.max_lag, Duration::from_secs(30)),
        drain_timeout: c.dur("switchover.drain_timeout", &s.drain_timeout, Duration::from_secs(10)),
        promote_timeout: c.dur("switchover.promote_timeout", &s.promote_timeout, Duration::from_secs(60)),
        hold_window: c.dur("switchover.hold_window", &s.hold_window, Duration::from_secs(30)),
        max_held_requests: s.max_held_requests.unwrap_or(1000),
        max_held_bytes: c.size("switchover.max_held_bytes", &s.max_held_bytes, 256 << 20),
    };
    let f = &raw.failover;
    let failover = FailoverConfig {
        automatic: f.automatic.unwrap_or(false),
        detect_after: c.dur("failover.detect_after", &f.detect_after, Duration::from_secs(3)),
        min_interval: c.dur("failover.min_interval", &f.min_interval, Duration::from_secs(300)),
    };
    let h = &raw.health;
    let health = HealthConfig {
        interval: c.dur("health.interval", &h.interval, Duration::from_millis(500)),
        timeout: c.dur("health.timeout", &h.timeout, Duration::from_secs(1)),
        rise: h.rise.unwrap_or(2),
        fall: h.fall.unwrap_or(3),
    };
    if health.interval.is_zero() {
        c.problems.push("health.interval must be above zero".into());
    }
    if health.rise == 0 || health.fall == 0 {
        c.problems.push("health.rise and health.fall must be at least 1".into());
    }

    if c.problems.is_empty() {
        Ok(Config { listener, admin, state, clusters, routing, switchover, failover, health })
    } else {
        Err(ConfigError { problems: c.problems })
    }
}

/// Whether a uri's authority carries `user[:password]@`.
fn has_userinfo(uri: &str) -> bool {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    rest.split(['/', '?', '#']).next().is_some_and(|authority| authority.contains('@'))
}

fn validate_clusters(c: &mut Checker, raw: &RawConfig) -> Vec<ClusterConfig> {
    let mut out = Vec::new();
    if raw.clusters.is_empty() {
        c.problems.push("clusters: at least one [[clusters]] entry is required".into());
    }
    let mut ids = HashSet::new();
    let mut uris = HashSet::new();
    for (i, rc) in raw.clusters.iter().enumerate() {
        let at = |k: &str| format!("clusters[{i}].{k}");
        let id = rc.id.clone().unwrap_or_default();
        if id.is_empty() || id.chars().any(char::is_whitespace) {
            c.problems.push(format!("{}: must be set, without spaces", at("id")));
        } else if !ids.insert(id.clone()) {
            c.problems.push(format!("{}: {id:?} is used twice", at("id")));
        }
        let uri = rc.uri.clone().unwrap_or_default();
        match uri.parse::<http::Uri>() {
            // The uri is shown in /v1/clusters, /global-cluster/topology and logs, and the
            // upstream would not send credentials written there anyway: refuse them, without
            // repeating the uri.
            _ if has_userinfo(&uri) => c.problems.push(format!(
                "{}: credentials in the uri (user:password@) are not supported and would be shown wherever the uri is; put them in {}",
                at("uri"),
                at("token")
            )),
            Ok(u) if matches!(u.scheme_str(), Some("http") | Some("https")) && u.host().is_some() => {}
            _ => c.problems.push(format!("{}: {uri:?} must be http://host:port or https://host:port", at("uri"))),
        }
        if !uri.is_empty() && !uris.insert(uri.clone()) {
            // A uri with credentials was refused just above; its password is not repeated here.
            let shown = if has_userinfo(&uri) { String::new() } else { format!("{uri:?} ") };
            c.problems.push(format!("{}: {shown}is used twice", at("uri")));
        }
        let pchannels = match &rc.pchannels {
            None => {
                c.problems.push(format!("{}: required (a count or a list of names)", at("pchannels")));
                Vec::new()
            }
            Some(RawPchannels::Count(n)) if *n > 0 && *n <= 1024 => {
                (0..*n).map(|k| format!("{id}-rootcoord-dml_{k}")).collect()
            }
            Some(RawPchannels::Count(n)) => {
                c.problems.push(format!("{}: {n} must be between 1 and 1024", at("pchannels")));
                Vec::new()
            }
            Some(RawPchannels::Names(v)) => {
                if v.is_empty() {
                    c.problems.push(format!("{}: the list is empty", at("pchannels")));
                }
                v.clone()
            }
        };
        let role = match rc.role.as_deref() {
            Some("primary") => Role::Primary,
            Some("standby") | None => Role::Standby,
            Some(o) => {
                c.problems.push(format!("{}: {o:?} must be \"primary\" or \"standby\"", at("role")));
                Role::Standby
            }
        };
        if rc.tls_ca.is_some() && !uri.starts_with("https://") {
            c.problems.push(format!("{}: set, but the uri is not https://", at("tls_ca")));
        }
        if let Some(p) = &rc.tls_ca
            && !std::path::Path::new(p).exists()
        {
            c.problems.push(format!("{}: {p} does not exist", at("tls_ca")));
        }
        out.push(ClusterConfig {
            id,
            uri,
            token: rc.token.clone().filter(|t| !t.is_empty()).map(Redacted::new),
            pchannels,
            role,
            metrics_uri: rc.metrics_uri.clone(),
            tls_ca: rc.tls_ca.as_ref().map(PathBuf::from),
            tls_server_name: rc.tls_server_name.clone(),
        });
    }
    let primaries = out.iter().filter(|c| c.role == Role::Primary).count();
    if !out.is_empty() && primaries != 1 {
        c.problems.push(format!("clusters: exactly one cluster must have role = \"primary\" (found {primaries})"));
    }
    if let Some(first) = out.first() {
        for cl in &out[1..] {
            if !cl.pchannels.is_empty() && !first.pchannels.is_empty() && cl.pchannels.len() != first.pchannels.len() {
                c.problems.push(format!(
                    "clusters: {:?} has {} pchannels but {:?} has {}; Milvus CDC needs equal counts",
                    cl.id,
                    cl.pchannels.len(),
                    first.id,
                    first.pchannels.len()
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use std::path::Path;

    const GOOD: &str = r#"
[listener]
address = "127.0.0.1:0"
[[clusters]]
id = "a"
uri = "http://127.0.0.1:1"
pchannels = 2
role = "primary"
[[clusters]]
id = "b"
uri = "http://127.0.0.1:2"
pchannels = 2
"#;

    #[test]
    fn good_config_validates() {
        let c = Config::from_toml(GOOD, Path::new(".")).unwrap();
        assert_eq!(c.clusters[0].pchannels, vec!["a-rootcoord-dml_0", "a-rootcoord-dml_1"]);
        assert_eq!(c.clusters[1].role, super::Role::Standby);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let bad = r#"
[listener]
address = "nowhere"
[routing]
reads = "sometimes"
max_read_lag = "10 parsecs"
[[clusters]]
id = "a"
uri = "ftp://x"
pchannels = 2
[[clusters]]
id = "a"
uri = "http://127.0.0.1:2"
pchannels = 3
"#;
        let e = Config::from_toml(bad, Path::new(".")).unwrap_err();
        let all = e.problems.join("\n");
        for needle in [
            "listener.address",
            "routing.reads",
            "routing.max_read_lag",
            "clusters[0].uri",
            "used twice",
            "exactly one cluster",
            "equal counts",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_all_at_once_with_the_other_problems() {
        let text = "[listener]\nadress = \"x\"\n[health]\nintervall = \"1s\"\n[routing]\nreads = \"sometimes\"\n";
        let e = Config::from_toml(text, Path::new(".")).unwrap_err();
        let all = e.problems.join("\n");
        for needle in ["\"adress\"", "\"intervall\"", "routing.reads", "clusters"] {
            assert!(all.contains(needle), "missing {needle} in:\n{all}");
        }
    }

    #[test]
    fn toml_errors_never_quote_the_file() {
        let secret = "root:S3cretPassw0rd";
        for (text, needle) in [
            // an unterminated string on the token line
            (
                GOOD.replace("pchannels = 2\nrole", &format!("token = \"{secret}\npchannels = 2\nrole")),
                "invalid TOML at line 7, column 29: ",
            ),
            // a misspelt key beside a secret
            (GOOD.replace("pchannels = 2\nrole", &format!("tokn = \"{secret}\"\npchannels = 2\nrole")), "\"tokn\""),
            // a value of the wrong type
            (
                GOOD.replace("address = \"127.0.0.1:0\"", &format!("max_concurrent_streams = \"{secret}\"")),
                "invalid value: invalid type: string, expected u32 in `listener.max_concurrent_streams`",
            ),
        ] {
            let e = Config::from_toml(&text, Path::new(".")).unwrap_err();
            let all = e.problems.join("\n");
            assert!(!all.contains("S3cret"), "{all}");
            assert!(all.contains(needle), "{all}");
        }
    }

    #[test]
    fn credentials_in_a_uri_are_refused_without_repeating_them() {
        for uri in ["http://root:S3cret@127.0.0.1:1", "root:S3cret@127.0.0.1:1", "https://S3cret@h:1/x"] {
            let e = Config::from_toml(&GOOD.replace("http://127.0.0.1:1", uri), Path::new(".")).unwrap_err();
            let all = e.problems.join("\n");
            assert!(all.contains("clusters[0].uri: credentials") && all.contains("clusters[0].token"), "{all}");
            assert!(!all.contains("S3cret"), "{all}");
        }
        assert!(Config::from_toml(&GOOD.replace("127.0.0.1:1", "127.0.0.1:1/p?q=a@b"), Path::new(".")).is_ok());
        // Found by tests/fuzz.rs: the same uri twice was quoted in "is used twice".
        let twice = GOOD
            .replace("http://127.0.0.1:1", "https://S3cret@h:1")
            .replace("http://127.0.0.1:2", "https://S3cret@h:1");
        let all = Config::from_toml(&twice, Path::new(".")).unwrap_err().problems.join("\n");
        assert!(all.contains("clusters[1].uri: is used twice") && !all.contains("S3cret"), "{all}");
    }

    #[test]
    fn secrets_never_print() {
        let c = Config::from_toml(
            &GOOD.replace("pchannels = 2\nrole", "token = \"root:Milvus\"\npchannels = 2\nrole"),
            Path::new("."),
        )
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("Milvus\""), "{dbg}");
        assert_eq!(c.clusters[0].token.as_ref().map(|t| t.expose()), Some("root:Milvus"));
    }
}

#[cfg(test)]
mod reference_files {
    use super::super::Config;
    use std::path::Path;

    /// The documented config files parse with the real types: every documented key exists.
    #[test]
    fn shipped_configs_validate() {
        for f in ["config/switchyard.toml", "config/docker.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
            let text = std::fs::read_to_string(&path).unwrap().replace("${SWITCHYARD_ADMIN_TOKEN}", "test-token");
            if let Err(e) = Config::from_toml(&text, Path::new(".")) {
                panic!("{f}: {e}");
            }
        }
    }
}
