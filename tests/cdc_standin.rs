//! `TonicCdc` against a real `milvus-standin` process: the generated tonic stubs, running on
//! switchyard's pooled upstream, read and update a cluster's replicate configuration with
//! Milvus's answers (the stand-in is a separate binary, so this is an integration test).

mod support;

use std::time::Duration;

use support::Standin;
use switchyard::cdc::{Cdc, CdcError, TonicCdc};
use switchyard::proto::common::ReplicateConfiguration;
use switchyard::upstream::{TlsSettings, Upstream, UpstreamSettings};

#[tokio::test]
async fn speaks_to_a_standin() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Control calls are answered by the stand-in itself: no backend is needed.
    let s = Standin::start("a", "http://127.0.0.1:1", None, dir.path());
    let up = Upstream::new(&s.uri(), TlsSettings::default(), UpstreamSettings::default()).expect("upstream");
    let c = TonicCdc::new(up, Some("root:Milvus"));
    let config = c.read_config(Duration::from_secs(5)).await.expect("read_config");
    assert_eq!(config, Some(ReplicateConfiguration::default()), "a lone primary has no configuration");
    let err = c.update_config(&ReplicateConfiguration::default(), false, Duration::from_secs(5)).await;
    assert!(
        matches!(&err, Err(CdcError::Milvus { reason, .. }) if reason.contains("clusters list cannot be empty")),
        "{err:?}"
    );
}
