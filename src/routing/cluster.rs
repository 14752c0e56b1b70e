//! A cluster as the data path sees it: its identity, its connection pool and its counters.
//!
//! A [`Cluster`] lives as long as it is configured; routing snapshots hold `Arc`s to it, so
//! counters and connections survive every snapshot swap.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::cdc::{Cdc, CdcFactory};
use crate::config::ClusterConfig;
use crate::grpc::Code;
use crate::upstream::{TlsSettings, Upstream, UpstreamError, UpstreamSettings};

/// Request classes used as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindLabel {
    /// DML, DDL, DCL and unknown methods.
    Write = 0,
    /// Data and metadata reads.
    Read = 1,
    /// Control and streaming calls.
    Control = 2,
}

impl KindLabel {
    /// All labels, in index order.
    pub const ALL: [KindLabel; 3] = [KindLabel::Write, KindLabel::Read, KindLabel::Control];

    /// The label text.
    pub fn as_str(self) -> &'static str {
        ["write", "read", "control"][self as usize]
    }
}

/// Latency histogram bucket bounds, in seconds.
pub const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Lock-free request counters and latency histograms, by kind and gRPC code.
#[derive(Debug, Default)]
pub struct RequestStats {
    /// Requests in flight.
    pub in_flight: AtomicUsize,
    counts: [[AtomicU64; 17]; 3],
    buckets: [[AtomicU64; BUCKETS.len() + 1]; 3],
    sum_micros: [AtomicU64; 3],
}

impl RequestStats {
    /// Records one finished request.
    pub fn record(&self, kind: KindLabel, code: Code, elapsed: Duration) {
        let k = kind as usize;
        self.counts[k][code as usize].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        let b = BUCKETS.iter().position(|&le| secs <= le).unwrap_or(BUCKETS.len());
        self.buckets[k][b].fetch_add(1, Ordering::Relaxed);
        self.sum_micros[k].fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// Requests of a kind that finished with a code.
    pub fn count(&self, kind: KindLabel, code: Code) -> u64 {
        self.counts[kind as usize][code as usize].load(Ordering::Relaxed)
    }

    /// Requests of a kind, any code.
    pub fn total(&self, kind: KindLabel) -> u64 {
        self.counts[kind as usize].iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Per-bucket (non-cumulative) counts, the `+Inf` bucket last, and the sum in seconds.
    pub fn histogram(&self, kind: KindLabel) -> (Vec<u64>, f64) {
        let k = kind as usize;
        let b = self.buckets[k].iter().map(|c| c.load(Ordering::Relaxed)).collect();
        (b, self.sum_micros[k].load(Ordering::Relaxed) as f64 / 1e6)
    }
}

/// One configured Milvus cluster.
#[derive(Debug)]
pub struct Cluster {
    /// Its id (the Milvus cluster id).
    pub id: Arc<str>,
    /// Its configuration.
    pub config: ClusterConfig,
    /// Its connection pool.
    pub upstream: Arc<Upstream>,
    /// Its replicate configuration calls (over `upstream`, or a fake in tests).
    pub cdc: Arc<dyn Cdc>,
    /// Its request counters.
    pub stats: RequestStats,
    /// What switchyard saw of writes this cluster acknowledged, and failures on real traffic.
    pub signals: Signals,
}

/// Facts the data path learns as calls pass, for the monitor.
#[derive(Debug, Default)]
pub struct Signals {
    /// Hybrid timestamp of the newest acknowledged write (from `MutationResult.timestamp`).
    pub last_write_tick: AtomicU64,
    /// When that write was seen, in microseconds since `origin()`.
    pub last_write_at_us: AtomicU64,
    /// Consecutive transport failures on real traffic.
    pub passive_failures: std::sync::atomic::AtomicU32,
    /// Wakes the health task early (passive ejection).
    pub kick: tokio::sync::Notify,
    /// Lowest checkpoint over this standby's pchannels (0: unknown), from the monitor; shown
    /// only. Read-your-writes uses the per-pchannel checkpoints ([`Signals::applied`]).
    pub checkpoint: AtomicU64,
    /// A failover has decided to fence this cluster: from that moment no answer of its to a
    /// write is passed on as a success (the new primary will not have that write).
    pub fenced: std::sync::atomic::AtomicBool,
    /// Writes this cluster acknowledged after it was fenced (answered as outcome unknown).
    pub late_acks: AtomicU64,
    /// The counter of the failover job that fenced it, which its report shows. Short sections.
    late_ack_sink: std::sync::Mutex<Option<std::sync::Arc<AtomicU64>>>,
    /// On a primary: its acknowledged writes per collection, until every standby applied them.
    pub ledger: crate::monitor::writes::WriteLedger,
    // On a standby: its checkpoint per pchannel (configured order), from the monitor; empty
    // when unknown. Short sections only.
    applied: std::sync::Mutex<Arc<[Option<u64>]>>,
    // Recent acknowledged writes `(timestamp, rows)`, newest last, bounded; for the data
    // loss report of a failover. Short sections only.
    recent: std::sync::Mutex<std::collections::VecDeque<(u64, u64)>>,
}

/// Acknowledged writes remembered per primary for the loss report.
const RECENT_WRITES: usize = 100_000;

/// A process-wide monotonic origin for timestamps kept in atomics.
pub fn origin() -> std::time::Instant {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(std::time::Instant::now)
}

impl Signals {
    /// A failover decided to fence this cluster; late acknowledgements are also counted in
    /// `report` (the job's).
    pub fn fence(&self, report: std::sync::Arc<AtomicU64>) {
        *self.late_ack_sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
        self.fenced.store(true, Ordering::SeqCst);
    }

    /// Counts a write this cluster acknowledged after it was fenced.
    pub fn late_ack(&self) {
        self.late_acks.fetch_add(1, Ordering::Relaxed);
        if let Some(report) = self.late_ack_sink.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            report.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Readmitted: its answers count again.
    pub fn unfence(&self) {
        self.fenced.store(false, Ordering::SeqCst);
    }

    /// Whether a failover has fenced this cluster.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    /// Records an acknowledged write with the primary's timestamp.
    pub fn write_acked(&self, tick: u64) {
        if tick == 0 {
            return;
        }
        let now = origin().elapsed().as_micros() as u64;
        self.last_write_tick.fetch_max(tick, Ordering::Relaxed);
        self.last_write_at_us.store(now, Ordering::Relaxed);
        // Owed on every pchannel until `collection_write_acked` names its collection.
        self.ledger.pending(tick, now);
        self.passive_failures.store(0, Ordering::Relaxed);
    }

    /// Names the collection of an acknowledged write already recorded by [`Self::write_acked`],
    /// so that the monitor owes it only on that collection's pchannels.
    pub fn collection_write_acked(&self, db: &str, collection: &str, tick: u64) {
        if tick != 0 {
            self.ledger.collection(db, collection, tick);
        }
    }

    /// Publishes a standby's checkpoint per pchannel (empty: unknown).
    pub fn set_applied(&self, checkpoints: Arc<[Option<u64>]>) {
        *self.applied.lock().unwrap_or_else(|p| p.into_inner()) = checkpoints;
    }

    /// A standby's checkpoint per pchannel, as last read by the monitor (empty: unknown).
    pub fn applied(&self) -> Arc<[Option<u64>]> {
        self.applied.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Remembers the rows an acknowledged write carried.
    pub fn rows_acked(&self, tick: u64, rows: u64) {
        let mut r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() >= RECENT_WRITES {
            r.pop_front();
        }
        r.push_back((tick, rows));
    }

    /// Rows acknowledged after `tick` (among the remembered writes).
    pub fn rows_after(&self, tick: u64) -> u64 {
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|(t, _)| *t > tick).map(|(_, n)| n).sum()
    }

    /// The newest acknowledged write and how long ago it was seen.
    pub fn last_write(&self) -> Option<(u64, Duration)> {
        let tick = self.last_write_tick.load(Ordering::Relaxed);
        (tick != 0).then(|| {
            let at = Duration::from_micros(self.last_write_at_us.load(Ordering::Relaxed));
            (tick, origin().elapsed().saturating_sub(at))
        })
    }

    /// Counts a transport failure; returns the consecutive count.
    pub fn transport_failed(&self) -> u32 {
        self.passive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Clears the failure count after a success.
    pub fn transport_ok(&self) {
        if self.passive_failures.load(Ordering::Relaxed) != 0 {
            self.passive_failures.store(0, Ordering::Relaxed);
        }
    }
}

impl Cluster {
    /// Builds a cluster and its (lazy) connection pool, with CDC calls over that pool.
    pub fn new(config: ClusterConfig) -> Result<Arc<Self>, UpstreamError> {
        Self::new_with(config, &crate::cdc::tonic_factory())
    }

    /// Builds a cluster whose CDC calls `cdc` makes (tests inject fakes here).
    pub fn new_with(config: ClusterConfig, cdc: &CdcFactory) -> Result<Arc<Self>, UpstreamError> {
        let tls = TlsSettings { ca_file: config.tls_ca.clone(), server_name: config.tls_server_name.clone() };
        let upstream = Upstream::new(&config.uri, tls, UpstreamSettings::default())?;
        let cdc = cdc(&config, &upstream);
        Ok(Arc::new(Self {
            id: Arc::from(config.id.as_str()),
            config,
            upstream,
            cdc,
            stats: RequestStats::default(),
            signals: Signals::default(),
        }))
    }

    /// Requests now in flight to this cluster.
    pub fn in_flight(&self) -> usize {
        self.stats.in_flight.load(Ordering::Relaxed)
    }

    /// The control-call token, if any.
    pub fn token(&self) -> Option<&str> {
        self.config.token.as_ref().map(|t| t.expose())
    }
}

/// Counts a request in flight until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Cluster>);

impl InFlight {
    /// Starts counting.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        cluster.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(cluster)
    }

    /// The cluster counted.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
