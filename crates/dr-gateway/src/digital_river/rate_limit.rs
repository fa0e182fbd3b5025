//! Keeps the gateway's own calls under DR's per-key rate limit.
//!
//! why: DR allows 250 req/s per live key and 25 per test key, and answers 429 past
//! that (docs/digital-river.md §5.2); many services share the gateway's one key, so their bursts
//! add up. Pacing calls here turns a 429 storm into short, bounded waits.
//!
//! GCRA (a token bucket kept as one "theoretical arrival time"): a call may start
//! once `tat - burst_tolerance <= now`; each call pushes `tat` one interval further.
//! A call reserves its slot before sleeping, so waiters are served in order.
//!
//! The budget is "at most N calls in any one-second window" (the strictest reading
//! of DR's limit). A GCRA with rate `r` and burst `b` lets at most `r + b - 1` calls
//! start in any second, so [`replica_share`] picks `r` and `b` within the budget;
//! replicas sharing a key each get a share, resized while running
//! ([`RateLimiter::set_rate`]) as replicas come and go (`bus::pacing`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

// why: the schedule runs on tokio's clock, so tests can pause and advance it.
use tokio::time::Instant as TokioInstant;

use crate::telemetry::metrics::names;

/// (rate per second, burst) for one of `replicas` replicas sharing a budget of
/// `per_second` calls in any one-second window: together they never exceed it.
pub fn replica_share(per_second: u32, replicas: u32) -> (u32, u32) {
    let share = (per_second / replicas.max(1)).max(1);
    // A tenth of a second's worth may go at once; the rest is evenly paced.
    let burst = (share / 10).max(1);
    (share - burst + 1, burst)
}

/// Paces calls to `rate` per second with bursts of up to `burst` calls.
#[derive(Debug)]
pub struct RateLimiter {
    schedule: Mutex<Schedule>,
}

#[derive(Debug)]
struct Schedule {
    rate: u32,
    burst: u32,
    interval: Duration,
    burst_tolerance: Duration,
    tat: TokioInstant,
}

impl Schedule {
    fn new(rate: u32, burst: u32, tat: TokioInstant) -> Self {
        let interval = Duration::from_secs(1) / rate.max(1);
        Self {
            rate: rate.max(1),
            burst: burst.max(1),
            interval,
            burst_tolerance: interval * (burst.max(1) - 1),
            tat,
        }
    }
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
        Self {
            schedule: Mutex::new(Schedule::new(rate, burst, TokioInstant::now())),
        }
    }

    fn schedule(&self) -> std::sync::MutexGuard<'_, Schedule> {
        // why: nothing panics while holding it; a poisoned schedule is still consistent.
        self.schedule.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current (rate per second, burst).
    pub fn rate(&self) -> (u32, u32) {
        let schedule = self.schedule();
        (schedule.rate, schedule.burst)
    }

    /// Changes the pace from the next call on. Slots already handed out stay; when
    /// the rate drops, the burst allowance is spent first, so a replica that just
    /// lost share cannot start a fresh burst on top of its last one.
    pub fn set_rate(&self, rate: u32, burst: u32) {
        let mut schedule = self.schedule();
        if (schedule.rate, schedule.burst) == (rate.max(1), burst.max(1)) {
            return;
        }
        let now = TokioInstant::now();
        let lowered = rate < schedule.rate;
        let mut next = Schedule::new(rate, burst, schedule.tat.max(now));
        if lowered {
            next.tat = next.tat.max(now + next.burst_tolerance);
        }
        *schedule = next;
    }

    /// Waits for the call's slot; refuses at once when the slot comes after `deadline`.
    pub async fn acquire(&self, deadline: Option<Instant>) -> Result<(), WouldExceedDeadline> {
        let start_at = {
            let mut schedule = self.schedule();
            let now = TokioInstant::now();
            let base = schedule.tat.max(now);
            let start_at = base
                .checked_sub(schedule.burst_tolerance)
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
            schedule.tat = base + schedule.interval;
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

    /// Starts calls as fast as the limiter lets them for `run` (paused clock) and
    /// returns the most that started within any one second.
    async fn most_in_any_second(limiter: &RateLimiter, run: Duration) -> usize {
        let start = tokio::time::Instant::now();
        let mut starts = Vec::new();
        while tokio::time::Instant::now() - start < run {
            limiter.acquire(None).await.unwrap();
            starts.push(tokio::time::Instant::now());
        }
        let mut most = 0;
        for (i, first) in starts.iter().enumerate() {
            let within = starts[i..]
                .iter()
                .take_while(|t| **t - *first < Duration::from_secs(1))
                .count();
            most = most.max(within);
        }
        most
    }

    #[tokio::test(start_paused = true)]
    async fn a_replicas_share_never_exceeds_its_part_of_the_budget_in_any_second() {
        for (budget, replicas) in [(225, 1), (225, 3), (22, 1), (22, 3), (22, 7), (1, 1)] {
            let (rate, burst) = replica_share(budget, replicas);
            let limiter = RateLimiter::new(rate, burst);
            let most = most_in_any_second(&limiter, Duration::from_secs(3)).await;
            let share = (budget / replicas).max(1) as usize;
            assert!(most <= share, "{budget}/{replicas}: {most} > {share}");
            // and it uses (nearly) all of it
            assert!(
                most + 1 >= share,
                "{budget}/{replicas}: only {most} of {share}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lowering_the_rate_takes_effect_without_a_fresh_burst() {
        let (rate, burst) = replica_share(30, 1);
        let limiter = RateLimiter::new(rate, burst);
        most_in_any_second(&limiter, Duration::from_secs(1)).await;
        let (rate, burst) = replica_share(30, 3);
        limiter.set_rate(rate, burst);
        assert_eq!(limiter.rate(), (rate, burst));
        let most = most_in_any_second(&limiter, Duration::from_secs(3)).await;
        assert!(most <= 10, "{most}");
    }
}
