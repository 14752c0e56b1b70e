//! Prometheus text exposition of switchyard's metrics.
//!
//! Names are fixed by the interface (`switchyard_*`); labels come from the method table
//! (`kind`), the configured cluster ids and gRPC code names — never from raw paths or
//! client data, so their number is bounded.

use std::fmt::Write;

use crate::control::{ChangeKind, ChangeResult, Control};
use crate::grpc::Code;
use crate::proxy::Proxy;
use crate::routing::KindLabel;
use crate::routing::cluster::{BUCKETS, RequestStats};
use crate::topology::ProxyState;

/// Metric names.
pub mod names {
    /// Requests by kind, cluster and code.
    pub const REQUESTS: &str = "switchyard_requests_total";
    /// Request latency by kind and cluster.
    pub const DURATION: &str = "switchyard_request_duration_seconds";
    /// Writes held now.
    pub const HELD: &str = "switchyard_held_writes";
    /// How long writes were held.
    pub const HOLD_DURATION: &str = "switchyard_hold_duration_seconds";
    /// Role changes by kind and result.
    pub const ROLE_CHANGES: &str = "switchyard_role_changes_total";
    /// The routing epoch.
    pub const EPOCH: &str = "switchyard_routing_epoch";
    /// Cluster health.
    pub const UP: &str = "switchyard_cluster_up";
    /// Cluster replication lag.
    pub const LAG: &str = "switchyard_cluster_lag_seconds";
    /// The proxy state (1 for the current one).
    pub const STATE: &str = "switchyard_state";
}

/// The gRPC code name used as a label.
pub fn code_name(code: Code) -> &'static str {
    const N: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    N[code as usize]
}

fn requests(out: &mut String, cluster: &str, stats: &RequestStats) {
    for kind in KindLabel::ALL {
        for c in 0..17u32 {
            let code = Code::from_u32(c);
            let n = stats.count(kind, code);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "{}{{kind=\"{}\",cluster=\"{cluster}\",code=\"{}\"}} {n}",
                    names::REQUESTS,
                    kind.as_str(),
                    code_name(code)
                );
            }
        }
    }
}

fn histogram(out: &mut String, name: &str, labels: &str, stats: &RequestStats, kind: KindLabel) {
    let (buckets, sum) = stats.histogram(kind);
    let total: u64 = buckets.iter().sum();
    let sep = if labels.is_empty() { "" } else { "," };
    let mut acc = 0;
    for (i, le) in BUCKETS.iter().enumerate() {
        acc += buckets[i];
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {acc}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
    let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
    let _ = writeln!(out, "{name}_sum{braces} {sum}");
    let _ = writeln!(out, "{name}_count{braces} {total}");
}

/// Renders every metric.
pub fn render(control: &Control, proxy: &Proxy) -> String {
    let mut out = String::with_capacity(8 << 10);
    let table = control.routing().load_full();
    let clusters = control.clusters();

    let _ = writeln!(
        out,
        "# HELP {} gRPC calls by kind, cluster and code.\n# TYPE {} counter",
        names::REQUESTS,
        names::REQUESTS
    );
    for c in clusters.iter() {
        requests(&mut out, &c.id, &c.stats);
    }
    requests(&mut out, "switchyard", &proxy.local_stats);

    let _ = writeln!(
        out,
        "# HELP {} Call latency by kind and cluster.\n# TYPE {} histogram",
        names::DURATION,
        names::DURATION
    );
    for c in clusters.iter() {
        for kind in KindLabel::ALL {
            if c.stats.total(kind) > 0 {
                histogram(
                    &mut out,
                    names::DURATION,
                    &format!("kind=\"{}\",cluster=\"{}\"", kind.as_str(), c.id),
                    &c.stats,
                    kind,
                );
            }
        }
    }

    let (held, _) = control.gate.held();
    let _ = writeln!(
        out,
        "# HELP {} Writes held at the gate now.\n# TYPE {} gauge\n{} {held}",
        names::HELD,
        names::HELD,
        names::HELD
    );
    let _ = writeln!(
        out,
        "# HELP {} How long held writes waited.\n# TYPE {} histogram",
        names::HOLD_DURATION,
        names::HOLD_DURATION
    );
    histogram(&mut out, names::HOLD_DURATION, "", &control.gate.hold_histogram, KindLabel::Write);

    let _ = writeln!(
        out,
        "# HELP {} Role changes by kind and result.\n# TYPE {} counter",
        names::ROLE_CHANGES,
        names::ROLE_CHANGES
    );
    for kind in [ChangeKind::Switchover, ChangeKind::Failover, ChangeKind::Discovered] {
        for result in [ChangeResult::Succeeded, ChangeResult::Failed, ChangeResult::RolledBack] {
            let _ = writeln!(
                out,
                "{}{{kind=\"{}\",result=\"{}\"}} {}",
                names::ROLE_CHANGES,
                kind.as_str(),
                result.as_str(),
                control.role_changes(kind, result)
            );
        }
    }

    let _ = writeln!(
        out,
        "# HELP {} Routing table epoch.\n# TYPE {} gauge\n{} {}",
        names::EPOCH,
        names::EPOCH,
        names::EPOCH,
        table.epoch
    );
    let _ =
        writeln!(out, "# HELP {} 1 when the cluster passes its health probes.\n# TYPE {} gauge", names::UP, names::UP);
    let topo = control.topology();
    for c in clusters.iter() {
        let up = control.view(&c.id).is_some_and(|v| v.up) && !table.is_fenced(&c.id);
        let id = c.id.to_string();
        let role = if topo.fenced.contains(&id) {
            "fenced"
        } else if topo.primary.as_deref() == Some(&*id) {
            "primary"
        } else if topo.rebuild.contains(&id) {
            "rebuild"
        } else {
            "standby"
        };
        let _ = writeln!(out, "{}{{cluster=\"{id}\",role=\"{role}\"}} {}", names::UP, u8::from(up));
    }
    let _ = writeln!(
        out,
        "# HELP {} Replication lag of each standby (0 for the primary).\n# TYPE {} gauge",
        names::LAG,
        names::LAG
    );
    for c in clusters.iter() {
        if let Some(lag) = control.view(&c.id).and_then(|v| v.lag) {
            let _ = writeln!(out, "{}{{cluster=\"{}\"}} {}", names::LAG, c.id, lag.as_secs_f64());
        }
    }
    let _ = writeln!(
        out,
        "# HELP {} The proxy state (1 for the current one).\n# TYPE {} gauge",
        names::STATE,
        names::STATE
    );
    for st in
        [ProxyState::Running, ProxyState::Switching, ProxyState::FailingOver, ProxyState::Holding, ProxyState::Abnormal]
    {
        let _ = writeln!(out, "{}{{state=\"{}\"}} {}", names::STATE, st.as_str(), u8::from(table.state == st));
    }
    out
}
