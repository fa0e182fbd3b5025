//! Keeps the gateway's own calls under DR's per-key rate limit.
//!
//! why: DR allows 250 req/s per live key and 25 per test key, and answers 429 past
//! that (docs/digital-river.md §5.2); many services share the gateway's one key, so their bursts
//! add up. Pacing calls here turns a 429 storm into short, bounded waits.
//!
//! GCRA (a token bucket kept as one "theoretical arrival time"): a call may start
//! once `tat - burst_tolerance <= now`; each call pushes `tat` one interval further.
//! A call reserves its slot before sleeping, so waiters are served in order.

use std::sync::Mutex;
use std::time::{Duration, Instant};

// why: the schedule runs on tokio's clock, so tests can pause and advance it.
use tokio::time::Instant as TokioInstant;

use crate::telemetry::metrics::names;

/// Paces calls to `rate` per second with bursts of up to `burst` calls.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    burst_tolerance: Duration,
    tat: Mutex<TokioInstant>,
}

/// The limiter cannot start the call before the caller's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WouldExceedDeadline {
    /// How long until the call could start.
    pub retry_after: Duration,
}

impl RateLimiter {
    /// A limiter for `rate` calls per second (≥ 1) and bursts of `burst` (≥ 1).
    pub fn new(rate: u32, burst: u32) -> Self {
        let interval = Duration::from_secs(1) / rate.max(1);
        Self {
            interval,
            burst_tolerance: interval * (burst.max(1) - 1),
            tat: Mutex::new(TokioInstant::now()),
        }
    }

    /// Waits for the call's slot; refuses at once when the slot comes after `deadline`.
    pub async fn acquire(&self, deadline: Option<Instant>) -> Result<(), WouldExceedDeadline> {
        let start_at = {
            let mut tat = self.tat.lock().unwrap_or_else(|p| p.into_inner());
            let now = TokioInstant::now();
            let base = (*tat).max(now);
            let start_at = base
                .checked_sub(self.burst_tolerance)
                .unwrap_or(now)
                .max(now);
            if let Some(deadline) = deadline.map(TokioInstant::from_std) {
                if start_at >= deadline {
                    metrics::counter!(names::DR_RATE_LIMIT_REFUSALS).increment(1);
                    return Err(WouldExceedDeadline {
                        retry_after: start_at - now,
                    });
                }
            }
            *tat = base + self.interval;
            if start_at > now {
                metrics::counter!(names::DR_RATE_LIMIT_WAITS).increment(1);
                metrics::histogram!(names::DR_RATE_LIMIT_WAIT_SECONDS)
                    .record((start_at - now).as_secs_f64());
            }
            start_at
        };
        tokio::time::sleep_until(start_at).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_passes_at_once_and_the_next_call_is_refused_past_the_deadline() {
        let limiter = RateLimiter::new(1, 3);
        let deadline = Some(Instant::now() + Duration::from_millis(200));
        for _ in 0..3 {
            limiter.acquire(deadline).await.unwrap();
        }
        let refused = limiter.acquire(deadline).await.unwrap_err();
        assert!(refused.retry_after > Duration::from_millis(500));
    }

    #[tokio::test]
    async fn a_refused_call_does_not_use_up_a_slot() {
        let limiter = RateLimiter::new(1, 1);
        limiter.acquire(None).await.unwrap();
        let soon = Some(Instant::now() + Duration::from_millis(10));
        let first = limiter.acquire(soon).await.unwrap_err();
        let second = limiter.acquire(soon).await.unwrap_err();
        // the second refusal names the same slot, not one further away
        assert!(second.retry_after <= first.retry_after);
    }

    #[tokio::test(start_paused = true)]
    async fn a_paced_call_waits_exactly_for_its_slot() {
        use tokio_test::{assert_pending, assert_ready};
        let limiter = RateLimiter::new(10, 1);
        limiter.acquire(None).await.unwrap();
        let mut next = tokio_test::task::spawn(limiter.acquire(None));
        assert_pending!(next.poll());
        tokio::time::advance(Duration::from_millis(99)).await;
        assert_pending!(next.poll());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(next.is_woken());
        assert_ready!(next.poll()).unwrap();
    }
}
