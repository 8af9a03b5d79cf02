//! What the pool has done: counters bumped as it works, read as [`PoolStats`].

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) created: AtomicU64,
    pub(super) connect_failures: AtomicU64,
    pub(super) recycled: AtomicU64,
    pub(super) validated: AtomicU64,
    pub(super) evicted_closed: AtomicU64,
    pub(super) evicted_validation: AtomicU64,
    pub(super) evicted_suspect: AtomicU64,
    pub(super) evicted_lifetime: AtomicU64,
    pub(super) evicted_idle: AtomicU64,
    pub(super) evicted_read_only: AtomicU64,
    pub(super) discarded: AtomicU64,
    pub(super) checkout_timeouts: AtomicU64,
    /// The host (`host:port`) the latest connection was made to.
    pub(super) latest_host: std::sync::Mutex<Option<std::sync::Arc<str>>>,
}

pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Pool statistics at one moment; see [`Pool::stats`](crate::Pool::stats). Serializable for health documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PoolStats {
    /// The most connections the pool opens.
    pub max_size: usize,
    /// Connections open now.
    pub size: usize,
    /// Open connections sitting idle in the pool.
    pub idle: usize,
    /// Open connections checked out.
    pub in_use: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
    /// Connections created since the pool was built.
    pub created: u64,
    /// Connect attempts that failed.
    pub connect_failures: u64,
    /// Checkouts of an existing connection.
    pub recycled: u64,
    /// Checkouts that ran a validation round trip (and passed).
    pub validated: u64,
    /// Connections dropped at checkout because they were closed.
    pub evicted_closed: u64,
    /// Connections dropped at checkout because validation failed.
    pub evicted_validation: u64,
    /// Connections dropped at checkout without a check, because a connection idle as long did not answer
    /// its check in time (a black-holed link: checking each would cost the check timeout, one after
    /// another).
    pub evicted_suspect: u64,
    /// Connections replaced because they reached their max lifetime.
    pub evicted_lifetime: u64,
    /// Connections closed by the background task after sitting idle.
    pub evicted_idle: u64,
    /// Connections dropped because their server no longer takes writes: one request met `25006`
    /// (read-only transaction) on a connection as old (a failover demoted the writer, or left it a
    /// standby), so every connection made before then is on a server that refuses writes.
    pub evicted_read_only: u64,
    /// Connections discarded after a request on them was abandoned or failed with the link.
    pub discarded: u64,
    /// Checkouts that gave up waiting for a free connection.
    pub checkout_timeouts: u64,
}

impl Counters {
    /// The statistics now, with deadpool's `status` for the sizes.
    pub(super) fn snapshot(&self, status: deadpool::Status) -> PoolStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PoolStats {
            max_size: status.max_size,
            size: status.size,
            idle: status.available,
            in_use: status.size.saturating_sub(status.available),
            waiting: status.waiting,
            created: load(&self.created),
            connect_failures: load(&self.connect_failures),
            recycled: load(&self.recycled),
            validated: load(&self.validated),
            evicted_closed: load(&self.evicted_closed),
            evicted_validation: load(&self.evicted_validation),
            evicted_suspect: load(&self.evicted_suspect),
            evicted_lifetime: load(&self.evicted_lifetime),
            evicted_idle: load(&self.evicted_idle),
            evicted_read_only: load(&self.evicted_read_only),
            discarded: load(&self.discarded),
            checkout_timeouts: load(&self.checkout_timeouts),
        }
    }
}
