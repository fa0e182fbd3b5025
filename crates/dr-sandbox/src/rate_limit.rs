//! DR's per-key rate limit on the DR surface: at most N requests per secret key in
//! any one-second window, 429 `too_many_requests` with `Retry-After` past it
//! (docs/digital-river.md §5.2). Off unless configured ([`RateLimit`]), so tests of
//! other behaviour are not paced.
//!
//! DR documents the numbers (250/s live, 25/s test) but not the algorithm. The
//! sandbox takes the strictest reading, a sliding one-second window: a client that
//! never draws a 429 here stays under any bucket or fixed-window limiter with the
//! same numbers.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The window the limits count over.
const WINDOW: Duration = Duration::from_secs(1);

/// Most keys tracked before idle ones are forgotten (bounds memory).
const MAX_TRACKED_KEYS: usize = 1024;

/// Requests per second allowed per secret key, by the key's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Per live-mode key (any key not starting with `sk_test_`).
    pub live_per_second: u32,
    /// Per test-mode key (`sk_test_…`).
    pub test_per_second: u32,
}

impl RateLimit {
    /// DR's documented limits: 250/s per live key, 25/s per test key.
    pub const fn documented() -> Self {
        Self {
            live_per_second: 250,
            test_per_second: 25,
        }
    }

    fn for_mode(&self, live: bool) -> u32 {
        if live {
            self.live_per_second
        } else {
            self.test_per_second
        }
    }
}

/// The limiter's state: the limits in force and one window per key.
#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    limit: Option<RateLimit>,
    /// Per key: when its admitted requests of the last second arrived, oldest first.
    windows: HashMap<String, VecDeque<Instant>>,
    admitted: u64,
    limited: u64,
}

impl RateLimiter {
    /// A limiter enforcing `limit` (`None`: admits everything).
    pub(crate) fn new(limit: Option<RateLimit>) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    /// The limits in force.
    pub(crate) fn limit(&self) -> Option<RateLimit> {
        self.limit
    }

    /// Changes the limits; the windows are kept.
    pub(crate) fn set_limit(&mut self, limit: Option<RateLimit>) {
        self.limit = limit;
    }

    /// (requests admitted, requests answered 429) since start.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.admitted, self.limited)
    }

    /// Admits a request by `key` at `now`, or says how many whole seconds to wait.
    pub(crate) fn check(&mut self, key: &str, live: bool, now: Instant) -> Result<(), u64> {
        let Some(limit) = self.limit else {
            self.admitted += 1;
            return Ok(());
        };
        let allowed = limit.for_mode(live) as usize;
        if self.windows.len() >= MAX_TRACKED_KEYS && !self.windows.contains_key(key) {
            self.windows
                .retain(|_, w| w.back().is_some_and(|t| now.duration_since(*t) < WINDOW));
        }
        let window = self.windows.entry(key.to_owned()).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            window.pop_front();
        }
        if window.len() >= allowed {
            self.limited += 1;
            let frees_at = window.front().map_or(now, |oldest| *oldest + WINDOW);
            let wait = frees_at.saturating_duration_since(now);
            // why: DR sends whole seconds (docs/digital-river.md §5.2); round up, at least 1.
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(seconds.max(1));
        }
        window.push_back(now);
        self.admitted += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_modes_limit_per_sliding_second() {
        let mut limiter = RateLimiter::new(Some(RateLimit {
            live_per_second: 3,
            test_per_second: 2,
        }));
        let t0 = Instant::now();
        assert_eq!(limiter.check("sk_test_a", false, t0), Ok(()));
        assert_eq!(
            limiter.check("sk_test_a", false, t0 + Duration::from_millis(600)),
            Ok(())
        );
        // A third test-mode request inside the same second is refused ...
        assert_eq!(
            limiter.check("sk_test_a", false, t0 + Duration::from_millis(900)),
            Err(1)
        );
        // ... until the first one leaves the window.
        assert_eq!(
            limiter.check("sk_test_a", false, t0 + Duration::from_millis(1000)),
            Ok(())
        );
        assert_eq!(
            limiter.check("sk_test_a", false, t0 + Duration::from_millis(1100)),
            Err(1)
        );
        // Other keys have their own windows and their own mode's limit.
        for ms in [0, 10, 20] {
            assert_eq!(
                limiter.check("sk_live_b", true, t0 + Duration::from_millis(ms)),
                Ok(())
            );
        }
        assert_eq!(
            limiter.check("sk_live_b", true, t0 + Duration::from_millis(30)),
            Err(1)
        );
        assert_eq!(limiter.counts(), (6, 3));
    }

    #[test]
    fn without_limits_everything_is_admitted() {
        let mut limiter = RateLimiter::new(None);
        let now = Instant::now();
        for _ in 0..1000 {
            assert_eq!(limiter.check("sk_test_a", false, now), Ok(()));
        }
        assert_eq!(limiter.counts(), (1000, 0));
    }

    #[test]
    fn idle_keys_are_forgotten_past_the_bound() {
        let mut limiter = RateLimiter::new(Some(RateLimit::documented()));
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED_KEYS {
            limiter.check(&format!("k{i}"), true, t0).unwrap();
        }
        limiter
            .check("late", true, t0 + Duration::from_secs(2))
            .unwrap();
        assert_eq!(limiter.windows.len(), 1);
    }
}
