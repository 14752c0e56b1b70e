//! How long does routing a call by its `:path` take, alone and with every core doing it?
//!
//! `switchyard::method::lookup` runs once per proxied RPC: a prefix strip and a binary search
//! over the static method table. Groups:
//! - `lookup`: one hit (`Search`), two misses (an unknown method, and another service), and one
//!   pass over every path in `method::all()` (throughput in lookups);
//! - `lookup_contended`: N threads each looking up every path in the table, all at once,
//!   measured by wall time with `iter_custom` (throughput in lookups over all threads). A table
//!   without locks or shared writes should scale with the cores until they run out.
//!
//! Run: `cargo bench --bench method_lookup` (about 30 s; add `-- --quick` for a rough pass).
//!
//! Last results (criterion's middle estimate), 2026-11-22: AMD EPYC, 2 cores, Linux 6.18,
//! rustc 1.95.0, bench profile (release, thin LTO). The machine was shared with other builds
//! (load average about 4 on 2 cores), so the times are inflated and the 2- and 4-thread runs
//! found no free core; rerun on a quiet machine before drawing conclusions about scaling.
//!
//! | bench | time | throughput |
//! |---|---|---|
//! | lookup/hit Search | 99.9 ns | 10.0 M lookups/s |
//! | lookup/miss unknown method | 128 ns | 7.8 M lookups/s |
//! | lookup/miss other service | 0.72 ns | (prefix check only) |
//! | lookup/all 149 paths | 12.5 µs per pass | 11.9 M lookups/s |
//! | lookup_contended/threads/1 | 11.9 µs per pass | 12.6 M lookups/s |
//! | lookup_contended/threads/2 | 24.7 µs per pass | 12.1 M lookups/s |
//! | lookup_contended/threads/4 | 53.3 µs per pass | 11.2 M lookups/s |
//!
//! An earlier run the same day gave 83 ns for the hit and 14.1 M lookups/s with 2 threads:
//! expect ±25% between runs on this machine.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use switchyard::method::{self, SERVICE_PREFIX};

const HIT: &str = "/milvus.proto.milvus.MilvusService/Search";
const MISS_METHOD: &str = "/milvus.proto.milvus.MilvusService/NoSuchMethodInThisTable";
const MISS_SERVICE: &str = "/grpc.health.v1.Health/Check";

fn all_paths() -> Vec<String> {
    method::all().iter().map(|m| format!("{SERVICE_PREFIX}{}", m.name)).collect()
}

/// Looks up every path once; returns how many were found, so nothing is optimised away.
fn pass(paths: &[String]) -> usize {
    paths.iter().filter(|p| method::lookup(black_box(p.as_str())).is_some()).count()
}

fn single_thread(c: &mut Criterion) {
    let paths = all_paths();
    assert_eq!(pass(&paths), paths.len(), "every table path is found");
    assert!(method::lookup(HIT).is_some());
    assert!(method::lookup(MISS_METHOD).is_none() && method::lookup(MISS_SERVICE).is_none());

    let mut g = c.benchmark_group("lookup");
    g.throughput(Throughput::Elements(1));
    g.bench_function("hit Search", |b| b.iter(|| method::lookup(black_box(HIT))));
    g.bench_function("miss unknown method", |b| b.iter(|| method::lookup(black_box(MISS_METHOD))));
    g.bench_function("miss other service", |b| b.iter(|| method::lookup(black_box(MISS_SERVICE))));
    g.throughput(Throughput::Elements(paths.len() as u64));
    g.bench_function(format!("all {} paths", paths.len()), |b| b.iter(|| pass(&paths)));
    g.finish();
}

fn contended(c: &mut Criterion) {
    let paths = all_paths();
    let mut g = c.benchmark_group("lookup_contended");
    for threads in [1usize, 2, 4] {
        g.throughput(Throughput::Elements((threads * paths.len()) as u64));
        g.bench_with_input(BenchmarkId::new("threads", threads), &threads, |b, &threads| {
            b.iter_custom(|iters| hammer(&paths, threads, iters))
        });
    }
    g.finish();
}

/// `threads` threads each run `iters` passes over `paths`, released together by a barrier;
/// the result is the wall time from the release until the last one finishes.
fn hammer(paths: &[String], threads: usize, iters: u64) -> Duration {
    let start = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    let mut found = 0;
                    for _ in 0..iters {
                        found += pass(paths);
                    }
                    black_box(found)
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        for w in workers {
            w.join().expect("lookup thread panicked");
        }
        t0.elapsed()
    })
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .noise_threshold(0.02);
    targets = single_thread, contended
}
criterion_main!(benches);
