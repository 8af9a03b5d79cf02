//! Multiplexing: many independent statements pipelined over a few shared connections.
//!
//! What users read is on [`MuxConfig`] (the module is private: the flat list in `lib.rs` is the one public path).
//!
//! The files: `config` (the settings), `conn` (a shared connection and its slot), `connect` (opening
//! them in the background), `stats`; this
//! one routes and runs.

mod config;
mod conn;
mod connect;
mod stats;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rampart_layers::Classification;
use rampart_layers::deadline::Deadlined;
use rampart_layers::rng::SplitMix64;
use rampart_layers::validate::ValidationPolicy;
use tokio::time::Instant;

pub use self::config::{MuxConfig, MuxConfigBuilder};
pub use self::stats::MuxStats;

use self::config::DEFAULT_STATEMENT_TIMEOUT;
use self::conn::{Busy, Conn, Slot};
use self::stats::{Counters, bump};
use crate::config::{PgConfig, PoolerMode};
use crate::error::{ConfigError, Error, ErrorKind};
use crate::exec;
use crate::outcome::{Link, Stage, cut_leaves_outcome_unknown, failure, takes_no_writes};
use crate::pool::PoolConfig;
use crate::query::{Query, Response};
use crate::session::Effect;
use crate::sync::write;
use crate::tls::Connector;

/// Where the multiplexer sent a request.
pub(crate) enum Routed {
    /// It ran on a shared connection: its outcome.
    Done(Result<Response, Error>),
    /// It goes to an exclusive connection from the pool.
    ToPool(Query),
}

/// What became of one try on a shared connection.
enum Tried {
    /// Answered, or failed in a way that is the request's own outcome.
    Done(Result<Response, Error>),
    /// The connection failed before the statement was sent: try another.
    NotSent,
}

/// The shared connections of a multiplexed [`PgService`](crate::PgService).
pub(crate) struct Mux {
    slots: Box<[Slot]>,
    config: MuxConfig,
    statement_timeout: Duration,
    pg: Arc<PgConfig>,
    connector: Connector,
    server: Arc<str>,
    /// When a connection is checked before use: the pool's policy.
    validation: ValidationPolicy,
    /// The pool's settings: its max lifetime and jitter apply to shared connections too.
    pool: PoolConfig,
    epoch: Instant,
    counters: Counters,
    rng: Mutex<SplitMix64>,
    /// This multiplexer, for the background tasks it spawns (they hold it weakly).
    me: Weak<Mux>,
}

impl fmt::Debug for Mux {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mux")
            .field("server", &self.server)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Mux {
    pub(crate) fn new(
        pg: Arc<PgConfig>,
        pool: &PoolConfig,
        server: Arc<str>,
        config: MuxConfig,
    ) -> Result<Arc<Mux>, ConfigError> {
        if pg.pooler_mode() == PoolerMode::Transaction {
            return Err(ConfigError::new(
                "multiplex",
                "cannot multiplex behind a pooler in transaction mode: named statements and pipelined \
                 implicit transactions do not survive it; use the pool",
            ));
        }
        let connector = Connector::new(&pg)?;
        let statement_timeout = config
            .statement_timeout
            .unwrap_or(DEFAULT_STATEMENT_TIMEOUT);
        Ok(Arc::new_cyclic(|me| Mux {
            slots: (0..config.connections).map(|_| Slot::default()).collect(),
            config,
            statement_timeout,
            pg,
            connector,
            server,
            validation: pool.validation(),
            pool: pool.clone(),
            epoch: Instant::now(),
            counters: Counters::default(),
            rng: Mutex::new(SplitMix64::from_entropy()),
            me: me.clone(),
        }))
    }

    fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// Milliseconds from the multiplexer's creation to `at`.
    fn ms_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Statistics now.
    pub(crate) fn stats(&self) -> MuxStats {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MuxStats {
            connections: self.slots.len(),
            ready: self
                .slots
                .iter()
                .filter(|s| s.ready.load(Ordering::Acquire))
                .count(),
            in_flight: self
                .slots
                .iter()
                .map(|s| s.in_flight.load(Ordering::Relaxed))
                .sum(),
            shared: load(&c.shared),
            exclusive: load(&c.exclusive),
            spilled: load(&c.spilled),
            connects: load(&c.connects),
            connect_failures: load(&c.connect_failures),
            lost: load(&c.lost),
            validated: load(&c.validated),
            retired: load(&c.retired),
        }
    }

    /// Whether `query` must run on a connection of its own (see the routing rules in the
    /// [module docs](self)).
    fn is_exclusive(&self, query: &Query, effect: Effect) -> bool {
        effect != Effect::None
            || query.is_exclusive()
            // A marked write is a transaction: it cannot share a pipelined connection.
            || crate::resolve::applies(query, effect)
            || query.granted().is_some_and(|t| t > self.statement_timeout)
    }

    /// Marks the connection of slot `index` dead (if it is still the slot's) and replaces it.
    fn lost(&self, index: usize, conn: &Arc<Conn>, why: &str) {
        let slot = &self.slots[index];
        {
            let mut current = write(&slot.conn);
            if !current.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
                return;
            }
            *current = None;
            slot.ready.store(false, Ordering::Release);
        }
        bump(&self.counters.lost);
        tracing::warn!(target: "rampart::mux", server = %self.server, slot = index, reason = why, "shared connection lost, replacing it");
        self.connect_in_background(index);
    }

    /// A statement on a connection to `host` (shared, or the pool's) met `25006`: that server no longer
    /// takes writes (a failover demoted it). Every shared connection to it is replaced; new ones go
    /// through `target_session_attrs` to the server that takes writes now.
    pub(crate) fn server_takes_no_writes(&self, host: &str) {
        for (index, slot) in self.slots.iter().enumerate() {
            if let Some(conn) = slot.current().filter(|c| &*c.host == host) {
                self.lost(index, &conn, "its server no longer takes writes (25006)");
            }
        }
    }

    /// The slot to send the next request to: the least-loaded ready one that is neither full nor stalled;
    /// `None` if none can take it (the request then goes to the pool, which a stall on a shared
    /// connection does not hold up). Starts connecting empty slots it passes.
    fn pick(&self, now_ms: u64) -> Option<usize> {
        // Always scanned from the first: at low concurrency the same connection takes every request and
        // its server process stays warm (alternating between idle connections costs a wake-up of a cold
        // backend per request, measurable at one caller); under load the counts differ and spread it.
        let stall_ms = self.config.stall_after.as_millis() as u64;
        let mut best: Option<(usize, usize)> = None;
        for (index, slot) in self.slots.iter().enumerate() {
            if !slot.ready.load(Ordering::Acquire) {
                if !slot.connecting.load(Ordering::Acquire) {
                    self.connect_in_background(index);
                }
                continue;
            }
            let load = slot.in_flight.load(Ordering::Relaxed);
            if load >= self.config.max_in_flight {
                continue;
            }
            let stalled = load > 0
                && now_ms.saturating_sub(slot.last_progress_ms.load(Ordering::Relaxed)) > stall_ms;
            if stalled {
                continue;
            }
            if best.is_none_or(|(_, least)| load < least) {
                best = Some((index, load));
                if load == 0 {
                    break;
                }
            }
        }
        best.map(|(index, _)| index)
    }

    /// Runs `query` on a shared connection, moving it to another if the first is found dead before the
    /// statement is sent; [`Routed::ToPool`] if it must have a connection of its own (`effect` is what it
    /// does to its session), or if no shared
    /// connection could take it.
    pub(crate) async fn run(&self, query: Query, effect: Effect) -> Routed {
        if self.is_exclusive(&query, effect) {
            bump(&self.counters.exclusive);
            return Routed::ToPool(query);
        }
        for _ in 0..self.slots.len() {
            let now = Instant::now();
            let now_ms = self.ms_at(now);
            let Some(index) = self.pick(now_ms) else {
                break;
            };
            let slot = &self.slots[index];
            let _busy = Busy::enter(slot, now_ms);
            let Some(conn) = slot.current() else { continue };
            match self.try_on(index, &conn, &query, now).await {
                Tried::Done(result) => return Routed::Done(result),
                Tried::NotSent => continue,
            }
        }
        bump(&self.counters.spilled);
        Routed::ToPool(query)
    }

    /// One try of `query` on slot `index`'s connection `conn`; `now` is when the try began.
    async fn try_on(&self, index: usize, conn: &Arc<Conn>, query: &Query, now: Instant) -> Tried {
        let slot = &self.slots[index];
        if conn.client.is_closed() {
            self.lost(index, conn, "closed");
            return Tried::NotSent;
        }
        // Past its lifetime: a replacement is opened while this one keeps serving.
        if conn.expires_at.is_some_and(|at| now >= at)
            && !slot.connecting.load(Ordering::Acquire)
            && self.connect_in_background(index)
        {
            bump(&self.counters.retired);
            tracing::debug!(target: "rampart::mux", server = %self.server, slot = index, "shared connection reached its max lifetime, replacing it");
        }
        let last_ok = self.epoch + Duration::from_millis(slot.last_ok_ms.load(Ordering::Relaxed));
        if self.validation.needs_check(Some(last_ok)) {
            bump(&self.counters.validated);
            let check = conn.client.simple_query("");
            match tokio::time::timeout(self.validation.check_timeout(), check).await {
                Ok(Ok(_)) => slot.last_ok_ms.store(self.now_ms(), Ordering::Relaxed),
                _ => {
                    self.lost(index, conn, "validation failed");
                    return Tried::NotSent;
                }
            }
        }

        let statement = match conn.statements.get(query.sql()) {
            Some(statement) => statement,
            // Preparing sends only a Parse: if the link fails here the statement never ran.
            None => match conn.client.prepare(query.sql()).await {
                Ok(statement) => {
                    conn.statements
                        .insert(query.shared_sql(), statement.clone());
                    statement
                }
                Err(e) => {
                    let failed = failure(e, Stage::NotSent, self.link(), &conn.named);
                    if failed.gone {
                        self.lost(index, conn, "lost while preparing");
                        return Tried::NotSent;
                    }
                    slot.progress(self.now_ms());
                    return Tried::Done(Err(failed.error));
                }
            },
        };

        query.mark_sent();
        let running = exec::prepared(&conn.client, &statement, query.params());
        // The session's statement timeout bounds every statement; a request with an earlier deadline
        // is held to it here (no per-request `statement_timeout` can be set on a shared session). Under
        // a stack the deadline and attempt-timeout layers already do this, and the stack's deadline is
        // later than the statement timeout, so the common case sets no timer.
        let limit = query
            .deadline()
            .filter(|d| *d < now + self.statement_timeout);
        let result = match limit {
            Some(deadline) => match tokio::time::timeout_at(deadline, running).await {
                Ok(result) => result,
                Err(_) => return Tried::Done(Err(self.deadline_passed(query))),
            },
            None => running.await,
        };
        Tried::Done(match result {
            Ok(response) => {
                slot.progress(self.now_ms());
                bump(&self.counters.shared);
                Ok(response)
            }
            Err(e) => {
                let failed = failure(e, Stage::Sent, self.link(), &conn.named);
                if takes_no_writes(&failed.error) {
                    self.server_takes_no_writes(&conn.host);
                } else if failed.gone {
                    self.lost(index, conn, "lost with requests in flight");
                } else {
                    slot.progress(self.now_ms());
                    bump(&self.counters.shared);
                }
                Err(failed.error)
            }
        })
    }

    /// What the outcome function needs to know of a shared connection.
    fn link(&self) -> Link {
        Link::Shared {
            statement_timeout: self.statement_timeout,
        }
    }

    fn deadline_passed(&self, query: &Query) -> Error {
        // The statement was sent and may still run (until the session's statement timeout): for
        // anything but a read, whether it was applied is unknown (a keyed write is still retried).
        let class = if cut_leaves_outcome_unknown(query.is_read(), true) {
            Classification::Ambiguous
        } else {
            Classification::Transient
        };
        Error::new(
            ErrorKind::DeadlineExceeded,
            class,
            "deadline passed while the statement was running on a shared connection",
        )
    }
}
