//! Replication lag of a standby, computed so that it is right in both directions.
//!
//! Milvus CDC replicates no idle time: a standby's checkpoint on a pchannel is the tick of the
//! last data message replicated there (see [`super`]), so an idle pchannel's checkpoint stays
//! old forever and says nothing about lag by itself. The lag is therefore measured against
//! writes the primary acknowledged, per pchannel ([`super::writes`]):
//! - a pchannel's lag is the age of the oldest acknowledged write owed there (attributed to it)
//!   that the standby's checkpoint on it has not reached: zero when it has reached them all,
//!   or when none is owed there;
//! - a standby's lag is its worst pchannel's;
//! - unknown (`None`) when no write was acknowledged since start, or a pchannel that is owed a
//!   write has no checkpoint.
//!
//! Ticks are compared only with ticks (the primary's clock: "has the checkpoint reached this
//! write"), and ages are measured only in switchyard's monotonic clock (since the write's
//! acknowledgement was seen), so no two clocks are ever compared and clock skew between
//! switchyard and Milvus does not enter. An idle primary gives 0, not a growing number; a
//! paused pchannel with writes continuing grows by real time. Using the age of the oldest
//! unapplied write, not "tick gap to the checkpoint + age of the newest write", keeps a
//! pchannel that was idle for a minute from showing a minute of lag the moment a new write
//! lands on it (its checkpoint is still the minute-old message).

use std::time::Duration;

use super::writes::{Mark, Marks, Owed};

/// Physical milliseconds of a Milvus hybrid timestamp.
pub fn physical_ms(ts: u64) -> u64 {
    ts >> 18
}

/// The lag on one pchannel whose checkpoint is `checkpoint` (`None`: none reported), given
/// the writes owed there and the newest write already applied everywhere (`settled`), at
/// `now_us` (switchyard's clock, as the marks).
pub fn pchannel_lag(owed: &[Marks], settled: Option<Mark>, checkpoint: Option<u64>, now_us: u64) -> Option<Duration> {
    if settled.is_none() && owed.iter().all(Marks::is_empty) {
        return Some(Duration::ZERO);
    }
    let applied = checkpoint?;
    let oldest = owed
        .iter()
        .filter_map(|m| m.oldest_after(applied))
        .chain(settled.filter(|s| s.tick > applied))
        .map(|m| m.at_us)
        .min();
    Some(oldest.map_or(Duration::ZERO, |at| Duration::from_micros(now_us.saturating_sub(at))))
}

/// A standby's lag: its worst pchannel's. `checkpoints[i]` is its checkpoint on the pchannel
/// paired with the primary's `i`-th. `None` (unknown) when `owed` is (no write since start)
/// or any pchannel's lag is unknown.
pub fn standby_lag(owed: Option<&Owed>, checkpoints: &[Option<u64>], now_us: u64) -> Option<Duration> {
    let owed = owed?;
    let mut worst = Duration::ZERO;
    for (i, marks) in owed.per_pchannel.iter().enumerate() {
        let settled = owed.settled.get(i).copied().flatten();
        worst = worst.max(pchannel_lag(marks, settled, checkpoints.get(i).copied().flatten(), now_us)?);
    }
    Some(worst)
}

/// Whether a standby's checkpoints prove it is not missing older writes switchyard never saw
/// (from before a restart, or before it was added): on every pchannel owed a write, some
/// write switchyard saw acknowledged there has been applied. Replication is in order per
/// pchannel, so everything before that write is applied too; a lag measured only against the
/// unapplied writes switchyard saw is otherwise a lower bound, not the lag. Pchannels owed
/// nothing need no proof (nothing is known about them either way).
pub fn proven(owed: Option<&Owed>, checkpoints: &[Option<u64>]) -> bool {
    let Some(owed) = owed else { return false };
    owed.per_pchannel.iter().enumerate().all(|(i, marks)| {
        let settled = owed.settled.get(i).copied().flatten();
        if settled.is_none() && marks.iter().all(Marks::is_empty) {
            return true;
        }
        let Some(cp) = checkpoints.get(i).copied().flatten() else { return false };
        settled.is_some_and(|s| s.tick <= cp) || marks.iter().any(|m| m.applied_any(cp))
    })
}

/// Whether a standby may serve bounded reads, with hysteresis: it stops above `max` and
/// comes back only below half of it, so a lag hovering at the bound does not flap.
/// An unknown lag is never within.
pub fn within_bound(was_ok: bool, lag: Option<Duration>, max: Duration) -> bool {
    match lag {
        None => false,
        Some(lag) if was_ok => lag <= max,
        Some(lag) => lag <= max / 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::writes::{Resolution, WriteLedger};

    const MS: u64 = 1000;

    /// A ledger with writes at `(collection, pchannel index, tick, seen at ms)`.
    fn ledger(writes: &[(&str, usize, u64, u64)]) -> WriteLedger {
        let l = WriteLedger::default();
        for (c, p, tick, at) in writes {
            l.pending(*tick, at * MS);
            l.collection("default", c, *tick);
            l.resolved(&("default".into(), (*c).into()), Resolution::Pchannels(vec![*p]));
        }
        l
    }

    #[test]
    fn idle_and_caught_up_is_zero() {
        let l = ledger(&[("a", 0, 1000, 10)]);
        // Caught up on pchannel 0; pchannel 1 was never written (its checkpoint is old).
        let cps = [Some(1000), Some(3)];
        for now in [11, 30_000, 3_600_000] {
            assert_eq!(standby_lag(l.owed(2).as_ref(), &cps, now * MS), Some(Duration::ZERO));
        }
    }

    #[test]
    fn a_stuck_pchannel_grows_with_time_while_others_are_caught_up() {
        // Writes continue on both pchannels; pchannel 1 stopped at tick 2000.
        let l = ledger(&[("a", 0, 1000, 0), ("b", 1, 2000, 0), ("b", 1, 3000, 1000), ("a", 0, 4000, 2000)]);
        let cps = [Some(4000), Some(2000)];
        let at = |now_ms| standby_lag(l.owed(2).as_ref(), &cps, now_ms * MS).unwrap();
        // Owed since the write at tick 3000, seen at 1 s.
        assert_eq!(at(1500), Duration::from_millis(500));
        assert_eq!(at(4500), Duration::from_millis(3500));
        // The old max-over-pchannels checkpoint (4000) would have said caught up.
        assert_eq!(standby_lag(l.owed(2).as_ref(), &[Some(4000), Some(4000)], 4500 * MS), Some(Duration::ZERO));
    }

    #[test]
    fn a_write_after_a_long_idle_is_not_a_spike() {
        let l = ledger(&[("a", 0, 1000, 0)]);
        l.prune(&[1000, 0]);
        // A minute idle, then a write; the checkpoint is still the minute-old message.
        l.pending(60_000 << 18, 60_000 * MS);
        l.collection("default", "a", 60_000 << 18);
        assert_eq!(standby_lag(l.owed(2).as_ref(), &[Some(1000), None], 60_010 * MS), Some(Duration::from_millis(10)));
    }

    #[test]
    fn unknown_cases() {
        // No write since start.
        assert_eq!(standby_lag(WriteLedger::default().owed(2).as_ref(), &[Some(5), Some(5)], 0), None);
        // A pchannel owed a write has no checkpoint.
        let l = ledger(&[("a", 1, 1000, 0)]);
        assert_eq!(standby_lag(l.owed(2).as_ref(), &[Some(5), None], 0), None);
        // A pchannel owed nothing may have none.
        assert_eq!(standby_lag(l.owed(2).as_ref(), &[None, Some(1000)], 0), Some(Duration::ZERO));
        // Fewer checkpoints than pchannels (a mismatched standby): unknown.
        assert_eq!(standby_lag(l.owed(2).as_ref(), &[Some(1000)], 0), None);
        assert!(!within_bound(true, None, Duration::from_secs(10)));
    }

    #[test]
    fn an_unresolved_collection_counts_on_every_pchannel() {
        let l = WriteLedger::default();
        l.pending(1000, 0);
        l.collection("default", "a", 1000);
        // Only pchannel 0 got it, but switchyard does not know where it went: pchannel 1 too.
        assert_eq!(standby_lag(l.owed(2).as_ref(), &[Some(1000), Some(3)], 2000 * MS), Some(Duration::from_secs(2)));
        l.resolved(&("default".into(), "a".into()), Resolution::Pchannels(vec![0]));
        assert_eq!(standby_lag(l.owed(2).as_ref(), &[Some(1000), Some(3)], 2000 * MS), Some(Duration::ZERO));
    }

    #[test]
    fn a_new_standby_is_measured_against_settled_writes() {
        let l = ledger(&[("a", 0, 1000, 0)]);
        l.prune(&[1000, 0]);
        assert_eq!(standby_lag(l.owed(2).as_ref(), &[Some(1000), Some(1)], 5000 * MS), Some(Duration::ZERO));
        assert_eq!(standby_lag(l.owed(2).as_ref(), &[Some(999), Some(1)], 5000 * MS), Some(Duration::from_secs(5)));
        assert_eq!(standby_lag(l.owed(2).as_ref(), &[None, Some(1)], 5000 * MS), None);
    }

    #[test]
    fn a_nonzero_lag_from_unknown_is_not_proof() {
        // After a restart, one write switchyard saw, not applied: its age is only a lower bound.
        let l = ledger(&[("a", 0, 1000, 0)]);
        assert!(!proven(l.owed(2).as_ref(), &[Some(900), None]));
        // Applied: everything before it on that pchannel is too.
        assert!(proven(l.owed(2).as_ref(), &[Some(1000), None]));
        l.pending(2000, 1000 * MS);
        l.collection("default", "a", 2000);
        assert!(proven(l.owed(2).as_ref(), &[Some(1500), None]));
        assert!(!proven(None, &[Some(1500), None]));
    }

    #[test]
    fn hysteresis() {
        let max = Duration::from_secs(10);
        assert!(!within_bound(true, Some(Duration::from_secs(11)), max));
        assert!(!within_bound(false, Some(Duration::from_secs(9)), max));
        assert!(within_bound(false, Some(Duration::from_secs(4)), max));
        assert!(within_bound(true, Some(Duration::from_secs(9)), max));
    }
}
