//! Where a call goes: the primary, a standby picked by load, or a named cluster.
//!
//! Data reads pick the less loaded of two random candidates (by requests in flight), the
//! "power of two choices": nearly as good as least-loaded, with no global scan or lock.

use std::sync::Arc;

use super::{Cluster, RoutingTable};
use crate::config::{ReadTarget, RoutingConfig};
use crate::method::{Kind, ReadClass};
use crate::proto::common::ConsistencyLevel;

/// Where the router sends a read of a given kind and consistency level.
pub fn read_target(kind: Kind, level: Option<ConsistencyLevel>, cfg: &RoutingConfig) -> ReadTarget {
    match kind {
        Kind::Read(ReadClass::Metadata) => cfg.metadata_reads.unwrap_or(cfg.reads),
        Kind::Read(ReadClass::Data) => match level {
            Some(ConsistencyLevel::Strong) => cfg.strong_reads,
            Some(ConsistencyLevel::Session) => cfg.session_reads,
            _ => cfg.reads,
        },
        _ => ReadTarget::Primary,
    }
}

/// Whether a read may be answered by the primary only, never by a standby as a fallback: a
/// data read whose consistency level (Strong, Session) is routed to the primary. A standby
/// may be behind, so answering such a read there would silently break the level it asked for;
/// when the primary cannot serve it, the read fails instead. Other reads routed to the primary
/// (metadata reads, `reads = "primary"`) may still fall back to a standby.
pub fn primary_only(kind: Kind, level: Option<ConsistencyLevel>, cfg: &RoutingConfig) -> bool {
    matches!(kind, Kind::Read(ReadClass::Data))
        && match level {
            Some(ConsistencyLevel::Strong) => cfg.strong_reads == ReadTarget::Primary,
            Some(ConsistencyLevel::Session) => cfg.session_reads == ReadTarget::Primary,
            _ => false,
        }
}

/// Picks a cluster for a read. `skip` lists clusters already tried (never sent).
/// Returns `None` only when no cluster at all can serve.
pub fn pick_read(table: &RoutingTable, target: ReadTarget, skip: &[Arc<Cluster>]) -> Option<Arc<Cluster>> {
    pick_read_where(table, target, skip, |_| true)
}

/// Like [`pick_read`], with standbys further limited by `ok` (read-your-writes).
pub fn pick_read_where(
    table: &RoutingTable,
    target: ReadTarget,
    skip: &[Arc<Cluster>],
    ok: impl Fn(&Cluster) -> bool,
) -> Option<Arc<Cluster>> {
    let skipped = |c: &Arc<Cluster>| skip.iter().any(|s| Arc::ptr_eq(s, c)) || !ok(c);
    let primary = table.primary.as_ref().filter(|p| !skip.iter().any(|s| Arc::ptr_eq(s, p)));
    match target {
        ReadTarget::Primary => primary.cloned().or_else(|| p2c(table.readable.iter().filter(|c| !skipped(c)))),
        ReadTarget::Standbys => p2c(table.readable.iter().filter(|c| !skipped(c))).or_else(|| primary.cloned()),
        ReadTarget::Any => p2c(table.readable.iter().chain(primary).filter(|c| !skipped(c))),
    }
}

/// Power of two choices over an iterator of candidates, without allocating.
pub fn p2c<'a>(candidates: impl Iterator<Item = &'a Arc<Cluster>> + Clone) -> Option<Arc<Cluster>> {
    let n = candidates.clone().count();
    match n {
        0 => None,
        1 => candidates.into_iter().next().cloned(),
        _ => {
            let i = fastrand::usize(..n);
            let mut j = fastrand::usize(..n - 1);
            if j >= i {
                j += 1;
            }
            let a = candidates.clone().nth(i)?;
            let b = candidates.clone().nth(j)?;
            Some(if b.in_flight() < a.in_flight() { b.clone() } else { a.clone() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClusterConfig, Role};
    use crate::topology::{ProxyState, Topology};

    fn cluster(id: &str, port: u16) -> Arc<Cluster> {
        Cluster::new(ClusterConfig {
            id: id.into(),
            uri: format!("http://127.0.0.1:{port}"),
            token: None,
            pchannels: vec![format!("{id}-rootcoord-dml_0")],
            role: Role::Standby,
            metrics_uri: None,
            tls_ca: None,
            tls_server_name: None,
        })
        .unwrap()
    }

    fn table() -> RoutingTable {
        let policy = crate::config::Config::from_toml(
            "[[clusters]]\nid=\"a\"\nuri=\"http://h:1\"\npchannels=1\nrole=\"primary\"\n",
            std::path::Path::new("."),
        )
        .unwrap()
        .routing;
        let cs = vec![cluster("a", 1), cluster("b", 2), cluster("c", 3)];
        let topo = Topology {
            epoch: 1,
            primary: Some("a".into()),
            standbys: vec!["b".into(), "c".into()],
            fenced: vec![],
            rebuild: vec![],
        };
        RoutingTable::build(&topo, ProxyState::Running, None, &cs, Arc::new(policy), |_| true)
    }

    #[test]
    fn reads_prefer_standbys_and_fall_back_to_primary() {
        let t = table();
        let got = pick_read(&t, ReadTarget::Standbys, &[]).unwrap();
        assert_ne!(&*got.id, "a");
        let skip = t.readable.clone();
        assert_eq!(&*pick_read(&t, ReadTarget::Standbys, &skip).unwrap().id, "a");
        assert_eq!(&*pick_read(&t, ReadTarget::Primary, &[]).unwrap().id, "a");
    }

    #[test]
    fn p2c_prefers_the_less_loaded() {
        let t = table();
        let _busy: Vec<_> = (0..5).map(|_| crate::routing::InFlight::new(t.readable[0].clone())).collect();
        for _ in 0..50 {
            assert_eq!(&*pick_read(&t, ReadTarget::Standbys, &[]).unwrap().id, &*t.readable[1].id);
        }
    }

    #[test]
    fn strong_reads_go_to_the_primary_by_default() {
        let cfg = crate::config::Config::from_toml(
            "[[clusters]]\nid=\"a\"\nuri=\"http://h:1\"\npchannels=1\nrole=\"primary\"\n",
            std::path::Path::new("."),
        )
        .unwrap()
        .routing;
        let data = Kind::Read(ReadClass::Data);
        assert_eq!(read_target(data, Some(ConsistencyLevel::Strong), &cfg), ReadTarget::Primary);
        assert_eq!(read_target(data, Some(ConsistencyLevel::Bounded), &cfg), ReadTarget::Standbys);
        assert_eq!(read_target(Kind::Read(ReadClass::Metadata), None, &cfg), ReadTarget::Primary);
        assert!(primary_only(data, Some(ConsistencyLevel::Strong), &cfg));
        assert!(primary_only(data, Some(ConsistencyLevel::Session), &cfg));
        assert!(!primary_only(data, Some(ConsistencyLevel::Bounded), &cfg));
        assert!(!primary_only(Kind::Read(ReadClass::Metadata), None, &cfg));
    }
}
