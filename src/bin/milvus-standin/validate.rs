//! Validation of `UpdateReplicateConfiguration`, with Milvus's own error texts.
//!
//! The checks and their order follow Milvus 2.6's replicate configuration validator
//! (`pkg/util/replicateutil/config_validator.go`) [§4.5]: the cluster list, each cluster's
//! id, uri and pchannels, equal pchannel counts, the current cluster and its pchannels, the
//! topology edges, the star shape, and the comparison with the current configuration
//! (existing pchannels, uri and token cannot change). Texts are the validator's, so clients
//! and switchyard can match them. Where Go iterates a map (star checks), clusters are taken
//! in configuration order so the reported cluster is deterministic.

use std::collections::{HashMap, HashSet};

use switchyard::proto::common::{MilvusCluster, ReplicateConfiguration};

/// Why a force promote was refused, with the texts of Milvus's streaming coordinator. They
/// are streaming errors (`InvalidArgument`), which reach clients as
/// `code: STREAMING_CODE_INVAILD_ARGUMENT, cause: <text>` (Milvus spells it so).
pub(crate) mod force {
    /// The request carried clusters or topology of another shape.
    pub(crate) const BAD_SHAPE: &str =
        "force promote requires empty cluster and topology fields; it promotes the cluster to primary automatically";
    /// The cluster is a primary.
    pub(crate) const ON_PRIMARY: &str =
        "force promote can only be used on secondary clusters, current cluster is primary";
    /// The cluster has no configuration.
    pub(crate) const NO_CONFIG: &str =
        "force promote requires existing replicate configuration; current cluster has no configuration";

    /// The reason as a client sees it.
    pub(crate) fn reason(text: &str) -> String {
        format!("code: STREAMING_CODE_INVAILD_ARGUMENT, cause: {text}")
    }
}

/// Whether a force-promote request has one of the two shapes Milvus has shipped: empty
/// clusters and topology, or only the current cluster and no topology.
pub(crate) fn force_promote_shape_ok(config: &ReplicateConfiguration, me: &str) -> bool {
    config.cross_cluster_topology.is_empty()
        && (config.clusters.is_empty() || (config.clusters.len() == 1 && config.clusters[0].cluster_id == me))
}

/// Validates `incoming` for cluster `me` (whose pchannels are `pchannels`) against the
/// current configuration. The error is the text Milvus returns.
pub(crate) fn validate(
    incoming: &ReplicateConfiguration,
    current: Option<&ReplicateConfiguration>,
    me: &str,
    pchannels: &[String],
) -> Result<(), String> {
    if incoming.clusters.is_empty() {
        return Err("clusters list cannot be empty".into());
    }
    let by_id = clusters(&incoming.clusters)?;
    relevance(&by_id, me, pchannels)?;
    edges(incoming, &by_id)?;
    star(incoming)?;
    if let Some(current) = current {
        compare(incoming, current)?;
    }
    Ok(())
}

fn clusters(list: &[MilvusCluster]) -> Result<HashMap<&str, &MilvusCluster>, String> {
    let mut by_id = HashMap::new();
    let mut uris: HashMap<&str, &str> = HashMap::new();
    let (mut expected, mut first) = (0, "");
    for (i, c) in list.iter().enumerate() {
        let id = c.cluster_id.as_str();
        if id.is_empty() {
            return Err(format!("cluster at index {i} has empty clusterID"));
        }
        if id.contains([' ', '\t', '\n', '\r']) {
            return Err(format!("cluster at index {i} has clusterID '{id}' containing whitespace characters"));
        }
        let Some(param) = c.connection_param.as_ref() else {
            return Err(format!("cluster '{id}' has nil connection_param"));
        };
        let uri = param.uri.as_str();
        if uri.is_empty() {
            return Err(format!("cluster '{id}' has empty URI"));
        }
        if !request_uri_ok(uri) {
            return Err(format!("cluster '{id}' has invalid URI format: '{uri}'"));
        }
        if let Some(other) = uris.insert(uri, id) {
            return Err(format!("duplicate URI found: '{uri}' is used by both cluster '{other}' and cluster '{id}'"));
        }
        if c.pchannels.is_empty() {
            return Err(format!("cluster '{id}' has empty pchannels"));
        }
        let mut seen = HashSet::new();
        for (j, p) in c.pchannels.iter().enumerate() {
            if p.is_empty() {
                return Err(format!("cluster '{id}' has empty pchannel at index {j}"));
            }
            if !seen.insert(p.as_str()) {
                return Err(format!("cluster '{id}' has duplicate pchannel: '{p}'"));
            }
        }
        if i == 0 {
            (expected, first) = (c.pchannels.len(), id);
        } else if c.pchannels.len() != expected {
            return Err(format!(
                "cluster '{id}' has {} pchannels, but expected {expected} (same as cluster '{first}')",
                c.pchannels.len()
            ));
        }
        if by_id.insert(id, c).is_some() {
            return Err(format!("duplicate clusterID found: '{id}'"));
        }
    }
    Ok(by_id)
}

/// Go's `url.ParseRequestURI` accepts an absolute path or a URI with a scheme.
fn request_uri_ok(uri: &str) -> bool {
    if uri.starts_with('/') {
        return !uri.contains(char::is_control);
    }
    let Some((scheme, _)) = uri.split_once(':') else { return false };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !uri.contains(char::is_control)
}

fn relevance(by_id: &HashMap<&str, &MilvusCluster>, me: &str, pchannels: &[String]) -> Result<(), String> {
    let Some(current) = by_id.get(me) else {
        return Err(format!("current Milvus cluster '{me}' must be included in the clusters list"));
    };
    let mut a: Vec<&String> = pchannels.iter().collect();
    let mut b: Vec<&String> = current.pchannels.iter().collect();
    a.sort();
    b.sort();
    if a != b {
        return Err(format!(
            "current pchannels do not match the pchannels in the config, current pchannels: {}, config pchannels: {}",
            go_list(pchannels),
            go_list(&current.pchannels)
        ));
    }
    Ok(())
}

fn edges(config: &ReplicateConfiguration, by_id: &HashMap<&str, &MilvusCluster>) -> Result<(), String> {
    let mut seen = HashSet::new();
    for (i, e) in config.cross_cluster_topology.iter().enumerate() {
        let (s, t) = (e.source_cluster_id.as_str(), e.target_cluster_id.as_str());
        if !by_id.contains_key(s) {
            return Err(format!("topology at index {i} references non-existent source cluster: '{s}'"));
        }
        if !by_id.contains_key(t) {
            return Err(format!("topology at index {i} references non-existent target cluster: '{t}'"));
        }
        let key = format!("{s}->{t}");
        if !seen.insert(key.clone()) {
            return Err(format!("duplicate topology relationship found: '{key}'"));
        }
    }
    Ok(())
}

fn star(config: &ReplicateConfiguration) -> Result<(), String> {
    if config.cross_cluster_topology.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = config.clusters.iter().map(|c| c.cluster_id.as_str()).collect();
    let degree = |id: &str| {
        let topo = &config.cross_cluster_topology;
        let inn = topo.iter().filter(|e| e.target_cluster_id == id).count();
        let out = topo.iter().filter(|e| e.source_cluster_id == id).count();
        (inn, out)
    };
    let mut centre = None;
    for id in &ids {
        if degree(id) == (0, ids.len() - 1) {
            if centre.is_some() {
                return Err("multiple center nodes found, only one center node is allowed in star topology".into());
            }
            centre = Some(*id);
        }
    }
    let Some(centre) = centre else {
        return Err("no center node found, star topology must have exactly one center node".into());
    };
    for id in ids.iter().filter(|id| **id != centre) {
        let (inn, out) = degree(id);
        if inn != 1 || out != 0 {
            return Err(format!(
                "cluster '{id}' does not follow star topology pattern (in-degree={inn}, out-degree={out})"
            ));
        }
    }
    Ok(())
}

fn compare(incoming: &ReplicateConfiguration, current: &ReplicateConfiguration) -> Result<(), String> {
    let mut growing = false;
    for inc in &incoming.clusters {
        let Some(cur) = current.clusters.iter().find(|c| c.cluster_id == inc.cluster_id) else { continue };
        let id = &cur.cluster_id;
        if inc.pchannels.len() < cur.pchannels.len() {
            return Err(format!(
                "cluster '{id}' pchannels cannot decrease: current={}, incoming={}",
                cur.pchannels.len(),
                inc.pchannels.len()
            ));
        }
        if inc.pchannels[..cur.pchannels.len()] != cur.pchannels[..] {
            return Err(format!(
                "cluster '{id}' existing pchannels must be preserved at the same positions: current={}, incoming={}",
                go_list(&cur.pchannels),
                go_list(&inc.pchannels)
            ));
        }
        growing |= inc.pchannels.len() > cur.pchannels.len();
        let (cu, iu) = (uri(cur), uri(inc));
        if cu != iu {
            return Err(format!("cluster '{id}' connection_param.uri cannot be changed: current={cu}, incoming={iu}"));
        }
        if token(cur) != token(inc) {
            return Err(format!("cluster '{id}' connection_param.token cannot be changed"));
        }
    }
    if growing {
        pchannels_growing(incoming, current)?;
    }
    Ok(())
}

fn pchannels_growing(incoming: &ReplicateConfiguration, current: &ReplicateConfiguration) -> Result<(), String> {
    let (cur, inc) = (current.clusters.len(), incoming.clusters.len());
    if cur != inc {
        return Err(format!(
            "when pchannels are increasing, cluster set must remain identical: current has {cur} clusters, incoming has {inc}"
        ));
    }
    for c in &current.clusters {
        if !incoming.clusters.iter().any(|i| i.cluster_id == c.cluster_id) {
            return Err(format!(
                "when pchannels are increasing, cluster set must remain identical: cluster '{}' missing from incoming config",
                c.cluster_id
            ));
        }
    }
    let (ct, it) = (&current.cross_cluster_topology, &incoming.cross_cluster_topology);
    if ct.len() != it.len() {
        return Err(format!(
            "when pchannels are increasing, topology must remain identical: current has {} edges, incoming has {}",
            ct.len(),
            it.len()
        ));
    }
    for e in it {
        if !ct.iter().any(|c| c == e) {
            return Err(format!(
                "when pchannels are increasing, topology must remain identical: edge '{}->{}' not in current config",
                e.source_cluster_id, e.target_cluster_id
            ));
        }
    }
    Ok(())
}

fn uri(c: &MilvusCluster) -> &str {
    c.connection_param.as_ref().map(|p| p.uri.as_str()).unwrap_or("")
}

fn token(c: &MilvusCluster) -> &str {
    c.connection_param.as_ref().map(|p| p.token.as_str()).unwrap_or("")
}

/// Go's `%v` of a string slice: `[a b c]`.
fn go_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::star as cfg;
    use switchyard::proto::common::CrossClusterTopology;

    fn pch(id: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{id}-rootcoord-dml_{i}")).collect()
    }

    #[test]
    fn accepts_a_star() {
        assert_eq!(validate(&cfg("a", &["a", "b", "c"], 2), None, "b", &pch("b", 2)), Ok(()));
    }

    #[test]
    fn milvus_texts() {
        let me = pch("a", 2);
        let empty = ReplicateConfiguration::default();
        assert_eq!(validate(&empty, None, "a", &me).unwrap_err(), "clusters list cannot be empty");
        let mut c = cfg("a", &["a", "b"], 2);
        c.clusters[1].pchannels.pop();
        assert_eq!(
            validate(&c, None, "a", &me).unwrap_err(),
            "cluster 'b' has 1 pchannels, but expected 2 (same as cluster 'a')"
        );
        let c = cfg("a", &["a", "b"], 2);
        assert_eq!(
            validate(&c, None, "x", &me).unwrap_err(),
            "current Milvus cluster 'x' must be included in the clusters list"
        );
        let mut two = cfg("a", &["a", "b"], 2);
        two.cross_cluster_topology
            .push(CrossClusterTopology { source_cluster_id: "b".into(), target_cluster_id: "a".into() });
        assert_eq!(
            validate(&two, None, "a", &me).unwrap_err(),
            "no center node found, star topology must have exactly one center node"
        );
        let mut tok = cfg("a", &["a", "b"], 2);
        if let Some(p) = tok.clusters[1].connection_param.as_mut() {
            p.token = "x".into();
        }
        assert_eq!(
            validate(&tok, Some(&c), "a", &me).unwrap_err(),
            "cluster 'b' connection_param.token cannot be changed"
        );
        let mut dup = cfg("a", &["a", "b"], 2);
        dup.clusters[1].connection_param = dup.clusters[0].connection_param.clone();
        assert!(validate(&dup, None, "a", &me).unwrap_err().starts_with("duplicate URI found"));
    }

    #[test]
    fn force_promote_shapes() {
        assert!(force_promote_shape_ok(&ReplicateConfiguration::default(), "b"));
        let mut only = cfg("b", &["b"], 1);
        assert!(force_promote_shape_ok(&only, "b"));
        assert!(!force_promote_shape_ok(&only, "a"));
        only.cross_cluster_topology
            .push(CrossClusterTopology { source_cluster_id: "b".into(), target_cluster_id: "b".into() });
        assert!(!force_promote_shape_ok(&only, "b"));
    }
}
