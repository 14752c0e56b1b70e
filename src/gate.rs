//! The write gate: while it is closed, new writes are held in memory, in arrival order,
//! and released when it opens.
//!
//! Several things close it, each under its own [`HoldKey`]: a switchover, a failover, an
//! operator's pause, or role discovery when clusters disagree for a moment. Writes pass
//! only when no key holds it. Limits: `hold_window` per write, `max_held_requests` and
//! `max_held_bytes` in total. A held write's body is read into memory first, so it never
//! stalls its connection's HTTP/2 flow-control window: reads on the same connection keep
//! flowing while writes wait.
//!
//! Release order: waiters are woken one at a time in arrival order. Each client's own
//! writes therefore leave in the order they arrived; writes of different clients, which
//! Milvus never ordered relative to each other, may interleave once sent.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
// tokio's clock (the same as std's unless paused): hold windows hold under paused time.
use tokio::time::Instant;

use crate::error::ProxyError;

/// Who holds the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HoldKey {
    /// A planned switchover.
    Switchover,
    /// A force failover.
    Failover,
    /// An operator's pause.
    Pause,
    /// Role discovery while clusters disagree, or after a write was refused as not primary.
    Discovery,
}

/// Limits of the gate.
#[derive(Debug, Clone, Copy)]
pub struct GateLimits {
    /// Longest one write may be held.
    pub hold_window: Duration,
    /// Held writes at most.
    pub max_requests: usize,
    /// Held bytes at most.
    pub max_bytes: u64,
}

#[derive(Debug)]
struct Inner {
    holds: BTreeMap<HoldKey, String>,
    waiters: VecDeque<(u64, oneshot::Sender<()>)>,
    held_requests: usize,
    held_bytes: u64,
    limits: GateLimits,
}

/// The gate.
#[derive(Debug)]
pub struct WriteGate {
    // Short critical sections, never across an await.
    inner: Mutex<Inner>,
    next_ticket: AtomicU64,
    /// Writes held since start, and the longest hold seen (µs), for reports and metrics.
    pub held_total: AtomicU64,
    /// Longest hold, in microseconds.
    pub longest_hold_us: AtomicU64,
    /// Hold durations histogram (same buckets as request latency).
    pub hold_histogram: crate::routing::cluster::RequestStats,
    writes_in_flight: std::sync::atomic::AtomicUsize,
    drained: tokio::sync::Notify,
    /// Set at shutdown: held writes still held at this instant fail with a clear error.
    shutdown_at: Mutex<Option<Instant>>,
}

/// Counts a write in flight to a cluster until dropped.
#[derive(Debug)]
pub struct Writing(Arc<WriteGate>);

impl Drop for Writing {
    fn drop(&mut self) {
        if self.0.writes_in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

/// A held write's reservation; releases its share of the limits when dropped.
#[derive(Debug)]
pub struct Held<'a> {
    gate: &'a WriteGate,
    bytes: u64,
    since: Instant,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut g = self.gate.lock();
        g.held_requests = g.held_requests.saturating_sub(1);
        g.held_bytes = g.held_bytes.saturating_sub(self.bytes);
    }
}

impl Held<'_> {
    /// Adds body bytes to this reservation, refusing past `max_held_bytes`.
    pub fn add_bytes(&mut self, n: u64) -> Result<(), ProxyError> {
        let mut g = self.gate.lock();
        if g.held_bytes + n > g.limits.max_bytes {
            return Err(ProxyError::GateFull(format!(
                "it needs {n} more bytes, {} are held already and max_held_bytes is {}",
                g.held_bytes, g.limits.max_bytes
            )));
        }
        g.held_bytes += n;
        self.bytes += n;
        Ok(())
    }

    /// Bytes reserved by this write.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl WriteGate {
    /// An open gate.
    pub fn new(limits: GateLimits) -> Self {
        Self {
            inner: Mutex::new(Inner {
                holds: BTreeMap::new(),
                waiters: VecDeque::new(),
                held_requests: 0,
                held_bytes: 0,
                limits,
            }),
            next_ticket: AtomicU64::new(0),
            held_total: AtomicU64::new(0),
            longest_hold_us: AtomicU64::new(0),
            hold_histogram: Default::default(),
            writes_in_flight: Default::default(),
            drained: tokio::sync::Notify::new(),
            shutdown_at: Mutex::new(None),
        }
    }

    /// Shutdown: writes still held at `deadline` fail with a "shutting down, not sent" error
    /// instead of being cut off with their connection.
    pub fn shutdown_by(&self, deadline: std::time::Instant) {
        *self.shutdown_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::from_std(deadline));
        self.wake_all();
    }

    /// Marks a write as in flight (past the gate, sent or being sent).
    pub fn write_started(self: &Arc<Self>) -> Writing {
        self.writes_in_flight.fetch_add(1, Ordering::AcqRel);
        Writing(self.clone())
    }

    /// Counts a write in flight only if the gate is open at that moment. The count comes
    /// first and the look second, so a drain that closed the gate and then found no write
    /// in flight cannot miss this one: either it is counted before the drain looks, or it
    /// sees the gate closed and stays out.
    pub fn write_started_if_open(self: &Arc<Self>) -> Result<Writing, String> {
        let writing = self.write_started();
        match self.closed_reason() {
            None => Ok(writing),
            Some(why) => Err(why),
        }
    }

    /// Writes in flight now.
    pub fn writes_in_flight(&self) -> usize {
        self.writes_in_flight.load(Ordering::Acquire)
    }

    /// Waits until no write is in flight, or `timeout` passes. Returns whether drained.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.drained.notified();
            if self.writes_in_flight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.writes_in_flight() == 0;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the limits (reload).
    pub fn set_limits(&self, limits: GateLimits) {
        self.lock().limits = limits;
    }

    /// The limits.
    pub fn limits(&self) -> GateLimits {
        self.lock().limits
    }

    /// Closes the gate under `key`.
    pub fn hold(&self, key: HoldKey, why: impl Into<String>) {
        self.lock().holds.insert(key, why.into());
    }

    /// Removes `key`'s hold; when no hold is left, wakes the waiters in arrival order.
    pub fn release(&self, key: HoldKey) {
        let mut g = self.lock();
        g.holds.remove(&key);
        if g.holds.is_empty() {
            while let Some((_, tx)) = g.waiters.pop_front() {
                let _ = tx.send(());
            }
        }
    }

    /// Wakes every waiter without opening (they re-check and fail if writes cannot go).
    pub fn wake_all(&self) {
        let mut g = self.lock();
        while let Some((_, tx)) = g.waiters.pop_front() {
            let _ = tx.send(());
        }
    }

    /// Whether `key` holds the gate.
    pub fn is_held_by(&self, key: HoldKey) -> bool {
        self.lock().holds.contains_key(&key)
    }

    /// Whether writes must wait now, and why.
    pub fn closed_reason(&self) -> Option<String> {
        let g = self.lock();
        (!g.holds.is_empty()).then(|| g.holds.values().cloned().collect::<Vec<_>>().join("; "))
    }

    /// Writes held now, and their bytes.
    pub fn held(&self) -> (usize, u64) {
        let g = self.lock();
        (g.held_requests, g.held_bytes)
    }

    /// Reserves a place for a write that must wait. Fails when the gate is full.
    pub fn reserve(&self) -> Result<Held<'_>, ProxyError> {
        let mut g = self.lock();
        if g.held_requests >= g.limits.max_requests {
            return Err(ProxyError::GateFull(format!("max_held_requests ({}) reached", g.limits.max_requests)));
        }
        g.held_requests += 1;
        drop(g);
        self.held_total.fetch_add(1, Ordering::Relaxed);
        Ok(Held { gate: self, bytes: 0, since: Instant::now() })
    }

    /// Waits until no hold is left, or the write's `hold_window` (from `held.since`) ends.
    pub async fn wait_open(&self, held: &Held<'_>) -> Result<(), ProxyError> {
        let window_end = held.since + self.limits().hold_window;
        loop {
            let shutdown = *self.shutdown_at.lock().unwrap_or_else(|p| p.into_inner());
            let deadline = shutdown.map_or(window_end, |s| s.min(window_end));
            let rx = {
                let mut g = self.lock();
                if g.holds.is_empty() {
                    drop(g);
                    self.record_hold(held.since.elapsed());
                    return Ok(());
                }
                let (tx, rx) = oneshot::channel();
                let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
                g.waiters.push_back((ticket, tx));
                rx
            };
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(_) => continue,
                Err(_) if shutdown.is_some_and(|s| s <= window_end) => {
                    self.record_hold(held.since.elapsed());
                    return Err(ProxyError::ShuttingDown);
                }
                Err(_) => {
                    let during = self.closed_reason().unwrap_or_else(|| "a role change".into());
                    self.record_hold(held.since.elapsed());
                    return Err(ProxyError::HeldTooLong { held: self.limits().hold_window, during });
                }
            }
        }
    }

    fn record_hold(&self, d: Duration) {
        self.longest_hold_us.fetch_max(d.as_micros() as u64, Ordering::Relaxed);
        self.hold_histogram.record(crate::routing::KindLabel::Write, crate::grpc::Code::Ok, d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> Arc<WriteGate> {
        Arc::new(WriteGate::new(GateLimits {
            hold_window: Duration::from_millis(200),
            max_requests: 2,
            max_bytes: 100,
        }))
    }

    #[tokio::test]
    async fn held_writes_wait_for_release() {
        let g = gate();
        g.hold(HoldKey::Switchover, "switchover to b");
        let g2 = g.clone();
        let waiter = tokio::spawn(async move {
            let h = g2.reserve().unwrap();
            g2.wait_open(&h).await
        });
        while g.held().0 == 0 {
            tokio::task::yield_now().await;
        }
        g.release(HoldKey::Switchover);
        assert!(waiter.await.unwrap().is_ok());
        assert_eq!(g.held(), (0, 0));
    }

    #[tokio::test]
    async fn a_write_held_past_its_window_fails_safely() {
        let g = gate();
        g.hold(HoldKey::Pause, "writes paused by an operator");
        let h = g.reserve().unwrap();
        let e = g.wait_open(&h).await.unwrap_err();
        assert!(e.status().message.contains("not sent, safe to retry"), "{e}");
    }

    #[tokio::test]
    async fn limits_are_enforced() {
        let g = gate();
        g.hold(HoldKey::Pause, "p");
        let mut a = g.reserve().unwrap();
        let _b = g.reserve().unwrap();
        assert!(g.reserve().is_err());
        a.add_bytes(60).unwrap();
        assert!(a.add_bytes(60).is_err());
    }

    #[tokio::test]
    async fn two_holders_both_must_release() {
        let g = gate();
        g.hold(HoldKey::Pause, "p");
        g.hold(HoldKey::Switchover, "s");
        g.release(HoldKey::Pause);
        assert!(g.closed_reason().is_some());
        g.release(HoldKey::Switchover);
        assert!(g.closed_reason().is_none());
    }
}
