//! When and how long to wait before retrying an idempotent DR call.

use std::time::Duration;

use crate::defaults;
use rand::Rng;

use super::Error;

/// Exponential backoff with full jitter, bounded by attempts and by the call's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included (1 = no retry).
    pub max_attempts: u32,
    /// Backoff before the first retry; doubles each time.
    pub base_delay: Duration,
    /// Upper bound of one backoff.
    pub max_delay: Duration,
    /// Longest `Retry-After` waited out; DR asking for longer ends the call with its
    /// error (and DR's delay in `RetryInfo`) instead.
    pub max_retry_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: defaults::UPSTREAM_ATTEMPTS,
            base_delay: defaults::RETRY_BASE_DELAY,
            max_delay: defaults::RETRY_MAX_DELAY,
            max_retry_wait: defaults::UPSTREAM_MAX_RETRY_WAIT,
        }
    }
}

impl RetryPolicy {
    /// Whether `error` on an idempotent call is worth another attempt.
    pub fn is_retryable(error: &Error) -> bool {
        match error {
            Error::Api { status, .. } => matches!(status, 429 | 502 | 503 | 504),
            Error::Connect { .. } | Error::Connection { .. } => true,
            Error::Timeout { .. }
            | Error::Decode { .. }
            | Error::Request { .. }
            | Error::RateLimited { .. } => false,
        }
    }

    /// How long to wait before attempt number `attempt + 1` (attempt counts from 1);
    /// `None`: do not retry. DR's `Retry-After` wins over the computed backoff
    /// (docs/digital-river.md §5.2), up to [`Self::max_retry_wait`]: a longer one is
    /// not waited out (the caller gets DR's delay in `RetryInfo`).
    pub fn delay(&self, attempt: u32, error: &Error) -> Option<Duration> {
        if let Error::Api {
            retry_after: Some(wait),
            ..
        } = error
        {
            return (*wait <= self.max_retry_wait).then_some(*wait);
        }
        let exp = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
        let cap = exp.min(self.max_delay);
        // why: full jitter keeps many gateways retrying at once from syncing up.
        let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        Some(Duration::from_millis(rand::rng().random_range(0..=millis)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, retry_after: Option<Duration>) -> Error {
        Error::Api {
            status,
            method: "GET",
            path: "/x".into(),
            body: None,
            retry_after,
            request_id: None,
            resource: None,
        }
    }

    #[test]
    fn retries_only_transient_statuses() {
        for s in [429, 502, 503, 504] {
            assert!(RetryPolicy::is_retryable(&api(s, None)), "{s}");
        }
        for s in [400, 401, 404, 409, 500] {
            assert!(!RetryPolicy::is_retryable(&api(s, None)), "{s}");
        }
    }

    #[test]
    fn retry_after_wins_and_backoff_is_capped() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.delay(1, &api(429, Some(Duration::from_secs(4)))),
            Some(Duration::from_secs(4))
        );
        for attempt in 1..20 {
            assert!(p
                .delay(attempt, &api(503, None))
                .is_some_and(|d| d <= p.max_delay));
        }
    }

    #[test]
    fn a_retry_after_beyond_the_maximum_is_not_waited_out() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.delay(1, &api(429, Some(p.max_retry_wait))),
            Some(p.max_retry_wait)
        );
        assert_eq!(
            p.delay(
                1,
                &api(429, Some(p.max_retry_wait + Duration::from_secs(1)))
            ),
            None
        );
        assert_eq!(p.delay(1, &api(503, Some(Duration::from_secs(120)))), None);
    }
}
