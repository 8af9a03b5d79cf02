//! What the multiplexer has done.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// What the multiplexer has done, for health documents and tests. Counters are totals since it was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MuxStats {
    /// Shared connections configured.
    pub connections: usize,
    /// Shared connections connected and healthy now.
    pub ready: usize,
    /// Requests in flight on shared connections now.
    pub in_flight: usize,
    /// Requests answered (or failed by the server) on shared connections.
    pub shared: u64,
    /// Requests sent to an exclusive pool connection because of what they are (transaction control,
    /// session state, maintenance, [`Query::exclusive`](crate::Query::exclusive), a long timeout).
    pub exclusive: u64,
    /// Requests sent to the pool because no shared connection could take them.
    pub spilled: u64,
    /// Shared connections opened.
    pub connects: u64,
    /// Failed attempts to open one.
    pub connect_failures: u64,
    /// Shared connections found dead (closed, failed validation, lost mid-request).
    pub lost: u64,
    /// Idle shared connections checked with a round trip before use.
    pub validated: u64,
    /// Shared connections replaced at the end of their lifetime.
    pub retired: u64,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) shared: AtomicU64,
    pub(super) exclusive: AtomicU64,
    pub(super) spilled: AtomicU64,
    pub(super) connects: AtomicU64,
    pub(super) connect_failures: AtomicU64,
    pub(super) lost: AtomicU64,
    pub(super) validated: AtomicU64,
    pub(super) retired: AtomicU64,
}

pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
