//! The `dr_gateway_dr_requests_total` and `dr_gateway_dr_request_duration_seconds`
//! series of each DR route, registered with the installed recorder on first use.
//!
//! why: `metrics::counter!` with labels builds, hashes and looks up its key on every
//! call (~4 k instructions per DR request, crates/dr-gateway/benches/README.md,
//! Optimisation 9); the series of a route and status are registered once here and
//! then found by comparing two `&'static str`s and a status. The set is bounded: a
//! route is a template from the code, a status one of DR's HTTP statuses or one of
//! four ways a request fails without one.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use metrics::{Counter, Histogram};

use crate::telemetry::metrics::names;

/// How a request to DR ended, as its `status` label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// DR answered with this HTTP status.
    Status(u16),
    /// No answer within the request's time budget.
    Timeout,
    /// No connection to DR.
    ConnectError,
    /// The connection failed during the request.
    ConnectionError,
    /// The request was never sent (refused before it left, or rate-limited).
    NotSent,
}

impl Outcome {
    fn label(self) -> String {
        match self {
            Self::Status(status) => status.to_string(),
            Self::Timeout => "timeout".to_owned(),
            Self::ConnectError => "connect_error".to_owned(),
            Self::ConnectionError => "connection_error".to_owned(),
            Self::NotSent => "not_sent".to_owned(),
        }
    }
}

/// The series of one (method, route).
struct RouteSeries {
    method: &'static str,
    route: &'static str,
    seconds: Histogram,
    requests: RwLock<Vec<(Outcome, Counter)>>,
}

impl RouteSeries {
    fn requests(&self, outcome: Outcome) -> Counter {
        let find = |requests: &[(Outcome, Counter)]| {
            requests
                .iter()
                .find(|(o, _)| *o == outcome)
                .map(|(_, counter)| counter.clone())
        };
        let known = find(&self.requests.read().unwrap_or_else(PoisonError::into_inner));
        if let Some(counter) = known {
            return counter;
        }
        let mut requests = self
            .requests
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(counter) = find(&requests) {
            return counter;
        }
        let counter = metrics::counter!(
            names::DR_REQUESTS,
            "method" => self.method,
            "route" => self.route,
            "status" => outcome.label()
        );
        requests.push((outcome, counter.clone()));
        counter
    }
}

/// Every (method, route) seen so far.
static ROUTES: RwLock<Vec<Arc<RouteSeries>>> = RwLock::new(Vec::new());

fn series_of(method: &'static str, route: &'static str) -> Arc<RouteSeries> {
    let find = |routes: &[Arc<RouteSeries>]| {
        routes
            .iter()
            .find(|s| s.method == method && s.route == route)
            .cloned()
    };
    if let Some(series) = find(&ROUTES.read().unwrap_or_else(PoisonError::into_inner)) {
        return series;
    }
    let mut routes = ROUTES.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(series) = find(&routes) {
        return series;
    }
    let series = Arc::new(RouteSeries {
        method,
        route,
        seconds: metrics::histogram!(
            names::DR_REQUEST_SECONDS,
            "method" => method,
            "route" => route
        ),
        requests: RwLock::new(Vec::new()),
    });
    routes.push(series.clone());
    series
}

/// Counts one request to DR by `method`, `route` and `outcome`, and times it.
pub(super) fn record(method: &'static str, route: &'static str, outcome: Outcome, took: Duration) {
    let series = series_of(method, route);
    series.requests(outcome).increment(1);
    series.seconds.record(took.as_secs_f64());
}
