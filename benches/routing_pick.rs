//! Question: what does routing one call cost — loading the routing snapshot and picking a
//! standby by power of two choices — alone and with every core loading it at once?
//!
//! Run: `cargo bench --bench routing_pick`. Results are recorded in BENCHMARKS.md with the
//! machine they ran on.
//!
//! Last results (2026-11-22, AMD EPYC, 2 cores shared with other builds, `--measurement-time 3`):
//! load_full + P2C with 1 / 2 / 4 / 8 standbys on one thread: 35 / 40 / 42 / 82 ns;
//! 2 standbys with both cores loading the table at once: 37 ns per pick (no contention cost:
//! `ArcSwap::load_full` is a reference-count increment, P2C reads two atomics).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{Criterion, criterion_group, criterion_main};
use switchyard::config::{ClusterConfig, ReadTarget, Role, RoutingConfig};
use switchyard::routing::{Cluster, RoutingTable, policy};
use switchyard::topology::{ProxyState, Topology};

fn table(standbys: usize) -> RoutingTable {
    let mk = |id: String, port: u16| {
        Cluster::new(ClusterConfig {
            id: id.clone(),
            uri: format!("http://127.0.0.1:{port}"),
            token: None,
            pchannels: vec![format!("{id}-rootcoord-dml_0")],
            role: Role::Standby,
            metrics_uri: None,
            tls_ca: None,
            tls_server_name: None,
        })
        .expect("cluster")
    };
    let mut clusters = vec![mk("p".into(), 1)];
    clusters.extend((0..standbys).map(|i| mk(format!("s{i}"), 2 + i as u16)));
    let topo = Topology {
        epoch: 1,
        primary: Some("p".into()),
        standbys: (0..standbys).map(|i| format!("s{i}")).collect(),
        fenced: vec![],
        rebuild: vec![],
    };
    let policy = RoutingConfig {
        reads: ReadTarget::Standbys,
        metadata_reads: Some(ReadTarget::Primary),
        max_read_lag: Duration::from_secs(10),
        strong_reads: ReadTarget::Primary,
        session_reads: ReadTarget::Primary,
        min_serving_standbys: 0,
        read_your_writes: Duration::ZERO,
        level_cache_ttl: Duration::from_secs(30),
    };
    RoutingTable::build(&topo, ProxyState::Running, None, &clusters, Arc::new(policy), |_| true)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing_pick");
    for n in [1usize, 2, 4, 8] {
        let shared = Arc::new(ArcSwap::from_pointee(table(n)));
        g.bench_function(format!("load_full+p2c/{n}_standbys/1_thread"), |b| {
            b.iter(|| {
                let t = shared.load_full();
                policy::pick_read(&t, ReadTarget::Standbys, &[])
            })
        });
    }
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let shared = Arc::new(ArcSwap::from_pointee(table(2)));
    g.bench_function(format!("load_full+p2c/2_standbys/{threads}_threads_contended"), |b| {
        b.iter_custom(|iters| {
            let per = iters / threads as u64 + 1;
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    let shared = shared.clone();
                    s.spawn(move || {
                        for _ in 0..per {
                            let t = shared.load_full();
                            std::hint::black_box(policy::pick_read(&t, ReadTarget::Standbys, &[]));
                        }
                    });
                }
            });
            start.elapsed() / threads as u32
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
