//! One shared connection, and the slot that holds it with its load.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use tokio::time::Instant;
use tokio_postgres::{Client, Statement};

use crate::cache::SqlCache;
use crate::sync::read;

/// One open shared connection.
pub(super) struct Conn {
    pub(super) client: Client,
    /// The host (`host:port`) it was made to.
    pub(super) host: Arc<str>,
    /// What its errors call it: its host among several (`host (of URL)`), or the URL.
    pub(super) named: String,
    /// Statements prepared on this connection, by SQL text, bounded (see [`crate::cache`]).
    pub(super) statements: SqlCache<Statement>,
    pub(super) expires_at: Option<Instant>,
}

/// A place for one shared connection, with its load.
#[derive(Default)]
pub(super) struct Slot {
    pub(super) conn: RwLock<Option<Arc<Conn>>>,
    /// A connection is installed and not known to be dead.
    pub(super) ready: AtomicBool,
    /// A task is opening a connection for this slot.
    pub(super) connecting: AtomicBool,
    pub(super) in_flight: AtomicUsize,
    /// Milliseconds since the multiplexer's epoch when a request on this slot last finished (or the
    /// first began).
    pub(super) last_progress_ms: AtomicU64,
    /// Milliseconds since the multiplexer's epoch when the connection last answered.
    pub(super) last_ok_ms: AtomicU64,
    /// Connects failed in a row (0 once one succeeds): the position in the backoff schedule.
    pub(super) failed_connects: AtomicU32,
    /// After a permanent connect failure, no new connect before this (milliseconds since the epoch).
    pub(super) connect_not_before_ms: AtomicU64,
}

impl Slot {
    pub(super) fn current(&self) -> Option<Arc<Conn>> {
        read(&self.conn).clone()
    }

    /// A request on this slot finished (or the connection answered) at `now_ms`.
    pub(super) fn progress(&self, now_ms: u64) {
        self.last_progress_ms.store(now_ms, Ordering::Relaxed);
        self.last_ok_ms.store(now_ms, Ordering::Relaxed);
    }
}

/// Counts a request in flight on a slot while it lives.
pub(super) struct Busy<'a> {
    slot: &'a Slot,
}

impl<'a> Busy<'a> {
    pub(super) fn enter(slot: &'a Slot, now_ms: u64) -> Self {
        if slot.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            // An idle connection starting work has made no progress yet, and is not stalled.
            slot.last_progress_ms.store(now_ms, Ordering::Relaxed);
        }
        Busy { slot }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.slot.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
