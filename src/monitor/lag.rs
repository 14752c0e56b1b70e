//! Replication lag of a standby, computed so that it is right in both directions.
//!
//! Inputs, all from the same clocks they are compared in:
//! - the primary's newest acknowledged write: its hybrid timestamp (`MutationResult.timestamp`,
//!   the primary's WAL time) and when switchyard saw it (switchyard's monotonic clock);
//! - the standby's checkpoint: the newest source timestamp it has applied (`GetReplicateInfo`).
//!
//! If the checkpoint has reached the newest write, the lag is zero: an idle primary gives 0,
//! not a growing number. Otherwise the lag is the gap between the two timestamps (both in the
//! primary's clock) plus the time since that write was seen (switchyard's clock): while
//! replication is paused and writes continue, it grows by real time. No two clocks are
//! ever compared, so clock skew between switchyard and Milvus does not enter.

use std::time::Duration;

/// Physical milliseconds of a Milvus hybrid timestamp.
pub fn physical_ms(ts: u64) -> u64 {
    ts >> 18
}

/// The lag of a standby whose checkpoint is `checkpoint` (None: nothing applied from this
/// source yet), given the primary's newest write `(tick, seen_ago)`.
pub fn lag(last_write: Option<(u64, Duration)>, checkpoint: Option<u64>) -> Duration {
    let Some((tick, seen_ago)) = last_write else { return Duration::ZERO };
    let applied = checkpoint.unwrap_or(0);
    if applied >= tick {
        return Duration::ZERO;
    }
    let gap_ms = if applied == 0 { 0 } else { physical_ms(tick).saturating_sub(physical_ms(applied)) };
    Duration::from_millis(gap_ms) + seen_ago
}

/// Whether a standby may serve bounded reads, with hysteresis: it stops above `max` and
/// comes back only below half of it, so a lag hovering at the bound does not flap.
pub fn within_bound(was_ok: bool, lag: Duration, max: Duration) -> bool {
    if was_ok { lag <= max } else { lag <= max / 2 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(ms: u64) -> u64 {
        ms << 18
    }

    #[test]
    fn idle_and_caught_up_is_zero() {
        assert_eq!(lag(None, None), Duration::ZERO);
        assert_eq!(lag(Some((ts(1000), Duration::from_secs(30))), Some(ts(1000))), Duration::ZERO);
    }

    #[test]
    fn paused_replication_grows_with_real_time() {
        // Standby applied up to t=1000ms; the primary's newest write is at t=4000ms, seen 500ms ago.
        let l = lag(Some((ts(4000), Duration::from_millis(500))), Some(ts(1000)));
        assert_eq!(l, Duration::from_millis(3500));
        let later = lag(Some((ts(4000), Duration::from_millis(1500))), Some(ts(1000)));
        assert_eq!(later - l, Duration::from_secs(1));
    }

    #[test]
    fn hysteresis() {
        let max = Duration::from_secs(10);
        assert!(!within_bound(true, Duration::from_secs(11), max));
        assert!(!within_bound(false, Duration::from_secs(9), max));
        assert!(within_bound(false, Duration::from_secs(4), max));
        assert!(within_bound(true, Duration::from_secs(9), max));
    }
}
