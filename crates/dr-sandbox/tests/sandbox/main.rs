//! Integration tests of the DR sandbox: real sockets, a sandbox on port 0, reqwest.
//! Every wait is a polling loop under a deadline; nothing sleeps to synchronise.

// why: a test binary has no public API; `pub` only shares helpers between its modules.
#![allow(unreachable_pub)]
// Tests may panic on unexpected shapes: that is the failure report.
#![allow(clippy::unwrap_used)]

mod control;
mod documented_flows;
mod events;
mod faults;
mod fulfillments;
mod helpers;
mod rate_limit;
mod webhooks;
