//! Replicate configurations: roles, targets, redaction, and their JSON form.
//!
//! A configuration is Milvus's `common.ReplicateConfiguration`: a list of clusters and the
//! edges of a star. A cluster with an incoming edge is a secondary of that edge's source;
//! every other cluster (and a cluster with no configuration at all) is a primary [§4.1].
//! The JSON mirror types here are what `--state-dir` stores and `GET /state` shows.

use serde::{Deserialize, Serialize};

use switchyard::proto::common::{ConnectionParam, CrossClusterTopology, MilvusCluster, ReplicateConfiguration};

/// What this cluster is under a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Role {
    /// Takes client writes.
    Primary,
    /// Rejects client writes and applies what `source` replicates.
    Secondary {
        /// The primary this cluster replicates from.
        source: String,
    },
}

impl Role {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary { .. } => "secondary",
        }
    }
}

/// The role of cluster `me` under `config`.
pub(crate) fn role_of(config: Option<&ReplicateConfiguration>, me: &str) -> Role {
    config
        .and_then(|c| c.cross_cluster_topology.iter().find(|e| e.target_cluster_id == me))
        .map(|e| Role::Secondary { source: e.source_cluster_id.clone() })
        .unwrap_or(Role::Primary)
}

/// The clusters `me` replicates to under `config`, in topology order.
pub(crate) fn targets<'a>(config: &'a ReplicateConfiguration, me: &str) -> Vec<&'a MilvusCluster> {
    config
        .cross_cluster_topology
        .iter()
        .filter(|e| e.source_cluster_id == me)
        .filter_map(|e| cluster(config, &e.target_cluster_id))
        .collect()
}

/// The entry of cluster `id`.
pub(crate) fn cluster<'a>(config: &'a ReplicateConfiguration, id: &str) -> Option<&'a MilvusCluster> {
    config.clusters.iter().find(|c| c.cluster_id == id)
}

/// The configuration with every non-empty token replaced by `***`.
pub(crate) fn redacted(config: &ReplicateConfiguration) -> ReplicateConfiguration {
    let mut c = config.clone();
    for cl in &mut c.clusters {
        if let Some(p) = cl.connection_param.as_mut()
            && !p.token.is_empty()
        {
            p.token = "***".into();
        }
    }
    c
}

/// JSON form of a configuration (tokens included; redact before showing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConfigJson {
    pub(crate) clusters: Vec<ClusterJson>,
    pub(crate) cross_cluster_topology: Vec<EdgeJson>,
}

/// JSON form of one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ClusterJson {
    pub(crate) cluster_id: String,
    /// `None` when the message had no `connection_param`.
    pub(crate) connection_param: Option<ConnectionJson>,
    pub(crate) pchannels: Vec<String>,
}

/// JSON form of a connection parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConnectionJson {
    pub(crate) uri: String,
    pub(crate) token: String,
}

/// JSON form of an edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EdgeJson {
    pub(crate) source_cluster_id: String,
    pub(crate) target_cluster_id: String,
}

impl From<&ReplicateConfiguration> for ConfigJson {
    fn from(c: &ReplicateConfiguration) -> Self {
        Self {
            clusters: c
                .clusters
                .iter()
                .map(|cl| ClusterJson {
                    cluster_id: cl.cluster_id.clone(),
                    connection_param: cl
                        .connection_param
                        .as_ref()
                        .map(|p| ConnectionJson { uri: p.uri.clone(), token: p.token.clone() }),
                    pchannels: cl.pchannels.clone(),
                })
                .collect(),
            cross_cluster_topology: c
                .cross_cluster_topology
                .iter()
                .map(|e| EdgeJson {
                    source_cluster_id: e.source_cluster_id.clone(),
                    target_cluster_id: e.target_cluster_id.clone(),
                })
                .collect(),
        }
    }
}

impl From<&ConfigJson> for ReplicateConfiguration {
    fn from(c: &ConfigJson) -> Self {
        Self {
            clusters: c
                .clusters
                .iter()
                .map(|cl| MilvusCluster {
                    cluster_id: cl.cluster_id.clone(),
                    connection_param: cl
                        .connection_param
                        .as_ref()
                        .map(|p| ConnectionParam { uri: p.uri.clone(), token: p.token.clone() }),
                    pchannels: cl.pchannels.clone(),
                })
                .collect(),
            cross_cluster_topology: c
                .cross_cluster_topology
                .iter()
                .map(|e| CrossClusterTopology {
                    source_cluster_id: e.source_cluster_id.clone(),
                    target_cluster_id: e.target_cluster_id.clone(),
                })
                .collect(),
        }
    }
}

/// The JSON shown by `GET /state`: tokens redacted.
pub(crate) fn shown(config: Option<&ReplicateConfiguration>) -> serde_json::Value {
    match config {
        Some(c) => serde_json::to_value(ConfigJson::from(&redacted(c))).unwrap_or(serde_json::Value::Null),
        None => serde_json::Value::Null,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A star config: `centre` replicates to every other cluster; `n` pchannels each.
    pub(crate) fn star(centre: &str, ids: &[&str], n: usize) -> ReplicateConfiguration {
        ReplicateConfiguration {
            clusters: ids
                .iter()
                .enumerate()
                .map(|(i, id)| MilvusCluster {
                    cluster_id: (*id).into(),
                    connection_param: Some(ConnectionParam {
                        uri: format!("http://127.0.0.1:{}", 19500 + i),
                        token: String::new(),
                    }),
                    pchannels: (0..n).map(|p| format!("{id}-rootcoord-dml_{p}")).collect(),
                })
                .collect(),
            cross_cluster_topology: ids
                .iter()
                .filter(|id| **id != centre)
                .map(|id| CrossClusterTopology { source_cluster_id: centre.into(), target_cluster_id: (*id).into() })
                .collect(),
        }
    }

    #[test]
    fn roles_and_targets() {
        let c = star("a", &["a", "b", "c"], 2);
        assert_eq!(role_of(Some(&c), "a"), Role::Primary);
        assert_eq!(role_of(Some(&c), "b"), Role::Secondary { source: "a".into() });
        assert_eq!(role_of(None, "b"), Role::Primary);
        let t: Vec<_> = targets(&c, "a").iter().map(|c| c.cluster_id.as_str()).collect();
        assert_eq!(t, ["b", "c"]);
        assert!(targets(&c, "b").is_empty());
    }

    #[test]
    fn json_round_trip_and_redaction() {
        let mut c = star("a", &["a", "b"], 1);
        if let Some(p) = c.clusters[1].connection_param.as_mut() {
            p.token = "root:Milvus".into();
        }
        let back = ReplicateConfiguration::from(&ConfigJson::from(&c));
        assert_eq!(back, c);
        assert_eq!(redacted(&c).clusters[1].connection_param.as_ref().map(|p| p.token.as_str()), Some("***"));
        assert_eq!(redacted(&c).clusters[0].connection_param.as_ref().map(|p| p.token.as_str()), Some(""));
    }
}
