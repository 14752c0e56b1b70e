//! Injected faults and request counters, both shown by `GET /state`.
//!
//! Faults live in one `watch` channel so that whoever they affect (the listener for
//! down/up, request handlers for freeze and latency, replicators for pause and delay)
//! notices a change at once instead of polling.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use switchyard::method::{Kind, ReadClass};

/// The faults in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct FaultState {
    /// Requests are accepted and held, unanswered.
    pub(crate) frozen: bool,
    /// The gRPC listener and its connections are closed.
    pub(crate) down: bool,
    /// `CheckHealth` answers not healthy.
    pub(crate) unhealthy: bool,
    /// Added to every client request.
    pub(crate) latency_ms: u64,
    /// Replicators send nothing.
    pub(crate) replication_paused: bool,
    /// Replicators send nothing on these pchannels (indices); the others go on.
    pub(crate) paused_pchannels: Vec<usize>,
    /// A message is sent no sooner than this long after it was written.
    pub(crate) replication_delay_ms: u64,
    /// The next this many client writes are applied and logged, then their answer is lost
    /// (the stream is reset): the client cannot know they were applied.
    pub(crate) lose_answers: u64,
}

/// The faults, with change notification.
#[derive(Debug)]
pub(crate) struct Faults {
    tx: watch::Sender<FaultState>,
}

impl Faults {
    pub(crate) fn new(replication_delay: Duration) -> Self {
        let st = FaultState { replication_delay_ms: replication_delay.as_millis() as u64, ..FaultState::default() };
        Self { tx: watch::channel(st).0 }
    }

    /// The faults now.
    pub(crate) fn get(&self) -> FaultState {
        self.tx.borrow().clone()
    }

    /// Changes the faults and tells every watcher.
    pub(crate) fn update(&self, f: impl FnOnce(&mut FaultState)) -> FaultState {
        self.tx.send_modify(f);
        self.get()
    }

    /// A receiver that sees every change.
    pub(crate) fn watch(&self) -> watch::Receiver<FaultState> {
        self.tx.subscribe()
    }

    /// Whether this applied write's answer is to be lost (and counts it).
    pub(crate) fn take_lost_answer(&self) -> bool {
        let mut lost = false;
        self.tx.send_if_modified(|f| {
            lost = f.lose_answers > 0;
            f.lose_answers = f.lose_answers.saturating_sub(1);
            lost
        });
        lost
    }

    /// Waits while the stand-in is frozen.
    pub(crate) async fn wait_thawed(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives as long as the stand-in, so `wait_for` only fails at shutdown.
        let _ = rx.wait_for(|f| !f.frozen).await;
    }
}

/// Requests served, by kind (from the method table).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) writes_served: AtomicU64,
    pub(crate) writes_rejected: AtomicU64,
    pub(crate) reads_data: AtomicU64,
    pub(crate) reads_metadata: AtomicU64,
    pub(crate) control: AtomicU64,
    pub(crate) replicated_applied: AtomicU64,
    pub(crate) replicated_dropped: AtomicU64,
    /// Reads by switchyard's monitor (metadata `x-switchyard-monitor`), kept apart from clients'.
    pub(crate) monitor: AtomicU64,
}

impl Counters {
    /// Counts a request that is not a write (writes are counted where they are decided).
    pub(crate) fn count_kind(&self, kind: Kind) {
        let c = match kind {
            Kind::Read(ReadClass::Data) => &self.reads_data,
            Kind::Read(ReadClass::Metadata) => &self.reads_metadata,
            Kind::Control | Kind::Streaming => &self.control,
            Kind::Write(_) => return,
        };
        bump(c);
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "writes_served": g(&self.writes_served),
            "writes_rejected": g(&self.writes_rejected),
            "reads_data": g(&self.reads_data),
            "reads_metadata": g(&self.reads_metadata),
            "control": g(&self.control),
            "replicated_applied": g(&self.replicated_applied),
            "replicated_dropped": g(&self.replicated_dropped),
            "monitor": g(&self.monitor),
        })
    }
}

/// Adds one.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
