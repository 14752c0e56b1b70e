//! A stand-in restarted with the same `--state-dir` comes back with its role, its
//! configuration and its replication position (issue 2, last "Done when" item).

mod support;

use std::time::Duration;

use support::{Lite, Standin, wait_for};
use switchyard::grpc::client::{CallOptions, unary};
use switchyard::proto::common::{ConnectionParam, CrossClusterTopology, MilvusCluster, ReplicateConfiguration, Status};
use switchyard::proto::milvus::{
    GetReplicateConfigurationRequest, GetReplicateConfigurationResponse, UpdateReplicateConfigurationRequest,
};
use switchyard::upstream::{TlsSettings, Upstream, UpstreamSettings};

fn cluster(s: &Standin, token: &str) -> MilvusCluster {
    MilvusCluster {
        cluster_id: s.cluster_id.clone(),
        connection_param: Some(ConnectionParam { uri: s.uri(), token: token.into() }),
        pchannels: s.pchannels(),
    }
}

async fn call<Req: prost::Message, Resp: prost::Message + Default>(s: &Standin, method: &str, req: &Req) -> Resp {
    let up = Upstream::new(&s.uri(), TlsSettings::default(), UpstreamSettings::default()).expect("upstream");
    unary(&up, method, req, &CallOptions::timeout(Duration::from_secs(30))).await.expect(method)
}

fn role(s: &Standin) -> String {
    s.state()["role"].as_str().unwrap_or_default().to_string()
}

#[test]
fn restarted_standin_keeps_role_configuration_and_checkpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (Some(lite_a), Some(lite_b)) =
        (Lite::start(&dir.path().join("lite-a")), Lite::start(&dir.path().join("lite-b")))
    else {
        eprintln!("SKIPPED: milvus-lite is not installed in {}", support::venv().display());
        return;
    };
    let mut a = Standin::start("cluster-a", &lite_a.uri(), Some(&dir.path().join("state-a")), dir.path());
    let mut b = Standin::start("cluster-b", &lite_b.uri(), Some(&dir.path().join("state-b")), dir.path());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");

    let config = ReplicateConfiguration {
        clusters: vec![cluster(&a, "root:Milvus"), cluster(&b, "root:Milvus")],
        cross_cluster_topology: vec![CrossClusterTopology {
            source_cluster_id: "cluster-a".into(),
            target_cluster_id: "cluster-b".into(),
        }],
    };
    let req =
        UpdateReplicateConfigurationRequest { replicate_configuration: Some(config.clone()), force_promote: false };
    for s in [&a, &b] {
        let st: Status = rt.block_on(call(s, "UpdateReplicateConfiguration", &req));
        assert_eq!((st.code, st.reason.as_str()), (0, ""), "config on {}", s.cluster_id);
    }
    assert_eq!((role(&a), role(&b)), ("primary".to_string(), "secondary".to_string()));
    // A's fences reach B: one checkpoint per pchannel.
    let checkpoints = wait_for("B's checkpoints", Duration::from_secs(10), || {
        let cps = b.state()["checkpoints"].clone();
        (cps.as_array().map(Vec::len) == Some(4)).then_some(cps)
    });
    let log_len = a.state()["log_len"].clone();

    b.restart();
    a.restart();

    assert_eq!((role(&a), role(&b)), ("primary".to_string(), "secondary".to_string()));
    let mut redacted = config.clone();
    for c in &mut redacted.clusters {
        if let Some(p) = c.connection_param.as_mut() {
            p.token = "***".into();
        }
    }
    for s in [&a, &b] {
        let got: GetReplicateConfigurationResponse =
            rt.block_on(call(s, "GetReplicateConfiguration", &GetReplicateConfigurationRequest {}));
        assert_eq!(got.configuration.as_ref(), Some(&redacted), "configuration of {} after restart", s.cluster_id);
    }
    assert_eq!(b.state()["checkpoints"], checkpoints);
    assert_eq!(a.state()["log_len"], log_len);
    // The same configuration again is still a no-op success on both.
    for s in [&a, &b] {
        let st: Status = rt.block_on(call(s, "UpdateReplicateConfiguration", &req));
        assert_eq!(st.code, 0);
    }
    assert_eq!(a.state()["log_len"], log_len);
    // Replication resumes from B's checkpoints: nothing is applied twice.
    wait_for("A's replicator reconnected", Duration::from_secs(10), || {
        let st = a.state();
        (st["replication"].as_array().map(Vec::len) == Some(4)).then_some(())
    });
    assert_eq!(b.state()["counters"]["replicated_applied"], 0);
}
