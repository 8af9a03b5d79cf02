//! Multiplexing: many independent statements pipelined over a few shared connections.
//!
//! A pool gives each request a connection of its own for the length of the request. For short independent
//! statements that wastes most of the time of both ends: the connection sits idle while its response
//! crosses the network and while the client handles it. tokio-postgres can *pipeline* requests from many
//! tasks over one connection (each is written as soon as it is made; responses come back in order), and on
//! loopback one shared client does several times the throughput of a 16-connection pool (see
//! `BENCHMARKS.md`). Over a WAN link to a hosted database the gain is larger: no request waits for a free
//! connection, so none pays a checkout's queueing on top of its round trip.
//!
//! [`PgService::multiplexed`](crate::PgService::multiplexed) (or
//! [`StackBuilder::multiplex`](crate::StackBuilder::multiplex)) turns it on. The service then keeps a
//! small set of shared connections ([`MuxConfig::connections`], one by default) beside its pool:
//!
//! - **Routing.** A request goes to the least-loaded healthy shared connection (fewest requests in
//!   flight; ties go to the first, so a lone caller keeps one server process warm), skipping a connection
//!   that is *stalled* (requests in flight, none finished for
//!   [`stall_after`](MuxConfigBuilder::stall_after)) and one at its in-flight bound
//!   ([`max_in_flight`](MuxConfigBuilder::max_in_flight)). When no shared connection can take it (all
//!   full or stalled, or none connected yet) it *spills* to an exclusive connection from the pool:
//!   nothing waits for a shared connection.
//! - **Exclusive work.** Whatever needs the session to itself runs on an exclusive pool connection:
//!   statements that change or use session state (`BEGIN`/`COMMIT`, `SET`, `LISTEN`, cursors, `PREPARE`,
//!   `COPY`, `DISCARD`, `LOCK`, session advisory locks, `set_config`, temporary tables), maintenance (`VACUUM`,
//!   `ANALYZE`, `CLUSTER`, `REINDEX`, `CREATE INDEX`, `REFRESH`), requests marked
//!   [`Query::exclusive`], and requests whose own [`Query::timeout`] is longer than the shared
//!   connections' statement timeout (a caller that grants a statement more time says it may be slow).
//!   Transactions ([`Transactor`](crate::tx::Transactor)) always take a pool connection. Both kinds of work
//!   mix safely in one service.
//! - **A slow statement cannot stall the others for long.** Responses on one connection come back in
//!   order, so requests queued behind a slow statement wait for it. Shared connections therefore run with
//!   a session `statement_timeout` ([`statement_timeout`](MuxConfigBuilder::statement_timeout); in a
//!   ready-made stack, its attempt timeout): nothing on them runs longer, and a statement cut by it fails
//!   with [`ErrorKind::Timeout`], `Permanent` (retrying would hit the limit again) and a message saying
//!   to mark it [`Query::exclusive`]. New requests avoid a stalled connection; requests already queued
//!   behind it are bounded by their own deadlines (enforced on the client side when earlier than the
//!   statement timeout, since no per-request `statement_timeout` can be set on a shared session) and
//!   retried elsewhere by the retry layer. Statements known to be slow belong on exclusive connections.
//! - **Failure.** When a shared connection dies, every request in flight on it fails at once, each
//!   classified as over the pool: a request whose statement may have reached the server is
//!   [`Ambiguous`](rampart_layers::Classification::Ambiguous) (the retry layer replays it only if it is
//!   idempotent; a write is reported as outcome unknown), one that was never sent (the connection was
//!   found closed, or its statement could not even be prepared) is moved to another connection
//!   invisibly. The dead connection is replaced in the background, with backoff while connects fail;
//!   meanwhile its share of the traffic goes to the other shared connections or spills to the pool.
//!   These losses do not count toward a stack's pool rebuild: the multiplexer heals its own connections.
//! - **Validation costs nothing on the hot path.** A shared connection that answered within the pool's
//!   bypass window is alive; only one idle for longer is checked (an empty query, bounded by the pool's
//!   check timeout) before use, as the pool does. Shared connections are replaced after the pool's max
//!   lifetime (with its jitter), the new one connected before the old one is retired.
//!
//! A request abandoned on a shared connection (its caller gave up, a timeout fired) cannot be cancelled
//! on the server: a cancel request stops whatever the *connection* is running, which may be another
//! caller's statement. It runs on until it ends or hits the session's statement timeout; its response is
//! discarded.
//!
//! # When to use which
//!
//! Multiplexing for many short independent statements from many concurrent callers (the common web
//! request), the pool for long statements and transactions (which take pool connections either way). Not
//! behind a pooler in transaction mode (PgBouncer and the hosted poolers): it would route each pipelined
//! statement's implicit transaction to any server connection, and named statements do not survive that;
//! building it there is a [`ConfigError`].

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use deadpool_postgres::Connect;
use rampart_layers::Classification;
use rampart_layers::deadline::Deadlined;
use rampart_layers::rng::{Rng, SplitMix64};
use serde::Serialize;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};

use crate::classify::{Stage, from_pg, link_failed};
use crate::config::{PgConfig, PoolerMode};
use crate::error::{ConfigError, Error, ErrorKind};
use crate::pool::PoolConfig;
use crate::query::{Query, Response};
use crate::tls::Connector;

/// The most statements one shared connection keeps prepared.
const STATEMENT_CACHE: usize = 1024;

/// The statement timeout of shared connections when neither the configuration nor a stack sets one.
const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(3);

/// Settings of the multiplexed mode; build with [`MuxConfig::builder`].
#[derive(Debug, Clone, PartialEq)]
pub struct MuxConfig {
    connections: usize,
    max_in_flight: usize,
    statement_timeout: Option<Duration>,
    stall_after: Duration,
}

impl Default for MuxConfig {
    fn default() -> Self {
        MuxConfig {
            connections: 1,
            max_in_flight: 128,
            statement_timeout: None,
            stall_after: Duration::from_millis(100),
        }
    }
}

impl MuxConfig {
    /// A builder starting from the defaults: 1 shared connection, at most 128 requests in flight on it,
    /// the statement timeout of the stack's attempt timeout (3 s for a service built alone), a connection
    /// with requests in flight and none finished for 100 ms counted as stalled.
    pub fn builder() -> MuxConfigBuilder {
        MuxConfigBuilder {
            config: MuxConfig::default(),
        }
    }

    /// How many shared connections.
    pub fn connections(&self) -> usize {
        self.connections
    }

    /// The most requests in flight on one shared connection.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// The shared connections' statement timeout, if set explicitly.
    pub fn statement_timeout(&self) -> Option<Duration> {
        self.statement_timeout
    }

    /// How long a connection with requests in flight may go without finishing one before new requests
    /// avoid it.
    pub fn stall_after(&self) -> Duration {
        self.stall_after
    }

    /// The settings with the statement timeout filled in where not set explicitly.
    pub(crate) fn or_statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout.get_or_insert(timeout);
        self
    }
}

/// Builds a [`MuxConfig`]; [`build`](Self::build) checks every value.
#[derive(Debug, Clone)]
pub struct MuxConfigBuilder {
    config: MuxConfig,
}

impl MuxConfigBuilder {
    /// How many shared connections (1 to 64). One by default. One pipelined connection carries about as
    /// many short statements as one server process can run (tens of thousands a second); while it is
    /// being replaced, requests spill to the pool, so a second is not needed for availability. A second
    /// adds server-side parallelism: on loopback it lowered the median latency at 32 callers by 45% but
    /// doubled the p99 (4.5 ms against 2.1 ms), because the server shared the client's two cores and a
    /// descheduled server process holds up everything queued on its connection (`BENCHMARKS.md`). Use
    /// more than one when the server has cores to spare and the shared statements keep one busy.
    pub fn connections(mut self, connections: usize) -> Self {
        self.config.connections = connections;
        self
    }

    /// The most requests in flight on one shared connection (at least 1); beyond it requests go to the
    /// next connection, or spill to the pool.
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.config.max_in_flight = max;
        self
    }

    /// The session `statement_timeout` of shared connections: no statement runs longer on them. Requests
    /// that may need longer go to exclusive connections ([`Query::exclusive`], or a longer
    /// [`Query::timeout`]). Unset, a ready-made stack uses its attempt timeout.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.config.statement_timeout = Some(timeout);
        self
    }

    /// How long a shared connection with requests in flight may go without finishing one before new
    /// requests avoid it (at least 1 ms).
    pub fn stall_after(mut self, stall: Duration) -> Self {
        self.config.stall_after = stall;
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<MuxConfig, ConfigError> {
        let c = &self.config;
        if !(1..=64).contains(&c.connections) {
            return Err(ConfigError::new("connections", "must be between 1 and 64"));
        }
        if c.max_in_flight == 0 {
            return Err(ConfigError::new("max_in_flight", "must be at least 1"));
        }
        if c.statement_timeout
            .is_some_and(|t| t < Duration::from_millis(1))
        {
            return Err(ConfigError::new(
                "statement_timeout",
                "must be at least 1 ms",
            ));
        }
        if c.stall_after < Duration::from_millis(1) {
            return Err(ConfigError::new("stall_after", "must be at least 1 ms"));
        }
        Ok(self.config)
    }
}

/// What the multiplexer has done, for health documents and tests. Counters are totals since it was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
    /// session state, maintenance, [`Query::exclusive`], a long timeout).
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
struct Counters {
    shared: AtomicU64,
    exclusive: AtomicU64,
    spilled: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    lost: AtomicU64,
    validated: AtomicU64,
    retired: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// One open shared connection.
struct Conn {
    client: Client,
    /// Statements prepared on this connection, by SQL text. A read-write lock, not a mutex: every request
    /// reads it, and readers never wait for each other (a mutex held by a thread the OS preempts stalls
    /// the other workers for a time slice: milliseconds of tail latency on a busy machine).
    statements: RwLock<HashMap<Arc<str>, Statement>>,
    expires_at: Option<Instant>,
}

impl Conn {
    fn cached(&self, sql: &str) -> Option<Statement> {
        self.statements
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(sql)
            .cloned()
    }

    /// Keeps `statement` for `sql`. A shared connection lives long and serves every caller, so the cache
    /// is bounded: past [`STATEMENT_CACHE`] distinct texts (SQL built with inlined values, say) it starts
    /// over. Dropping a `Statement` closes it on the server once no request is using it.
    fn cache(&self, sql: Arc<str>, statement: Statement) {
        let mut statements = self.statements.write().unwrap_or_else(|p| p.into_inner());
        if statements.len() >= STATEMENT_CACHE {
            statements.clear();
        }
        statements.insert(sql, statement);
    }
}

/// A place for one shared connection, with its load.
#[derive(Default)]
struct Slot {
    conn: RwLock<Option<Arc<Conn>>>,
    /// A connection is installed and not known to be dead.
    ready: AtomicBool,
    /// A task is opening a connection for this slot.
    connecting: AtomicBool,
    in_flight: AtomicUsize,
    /// Milliseconds since the epoch when a request on this slot last finished (or the first began).
    last_progress_ms: AtomicU64,
    /// Milliseconds since the epoch when the connection last answered.
    last_ok_ms: AtomicU64,
}

impl Slot {
    fn current(&self) -> Option<Arc<Conn>> {
        self.conn.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Counts a request in flight on a slot while it lives.
struct Busy<'a> {
    slot: &'a Slot,
}

impl<'a> Busy<'a> {
    fn enter(slot: &'a Slot, now_ms: u64) -> Self {
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
    bypass_ms: u64,
    check_timeout: Duration,
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
            bypass_ms: pool.validation().bypass_window().as_millis() as u64,
            check_timeout: pool.validation().check_timeout(),
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

    /// Whether `query` may run on a shared connection; counts it as exclusive if not.
    pub(crate) fn shares(&self, query: &Query) -> bool {
        let exclusive = query.is_exclusive()
            || query
                .requested_timeout()
                .is_some_and(|t| t > self.statement_timeout)
            || needs_session(query.sql());
        if exclusive {
            bump(&self.counters.exclusive);
        }
        !exclusive
    }

    /// Opens a connection for slot `index` in the background, unless one is being opened already;
    /// whether this call started it.
    fn connect_in_background(&self, index: usize) -> bool {
        let slot = &self.slots[index];
        if slot
            .connecting
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            slot.connecting.store(false, Ordering::Release);
            return false;
        };
        runtime.spawn(connect_loop(self.me.clone(), index));
        true
    }

    async fn connect(&self) -> Result<Conn, Error> {
        let limit = self
            .pg
            .pg_config()
            .get_connect_timeout()
            .map_or(Duration::from_secs(30), |t| *t + Duration::from_secs(1));
        let connecting = async {
            let (client, _task) = self
                .connector
                .connect(self.pg.pg_config())
                .await
                .map_err(|e| from_pg(e, Stage::Connect, &self.server))?;
            let ms = self.statement_timeout.as_millis().max(1);
            client
                .simple_query(&format!("SET statement_timeout = {ms}"))
                .await
                .map_err(|e| from_pg(e, Stage::Connect, &self.server))?;
            Ok(client)
        };
        let client = tokio::time::timeout(limit, connecting)
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Connect,
                    Classification::Transient,
                    format!("could not connect to {}: timed out", self.server),
                )
            })??;
        Ok(Conn {
            client,
            statements: RwLock::default(),
            expires_at: self.expiry(),
        })
    }

    fn expiry(&self) -> Option<Instant> {
        crate::pool::expiry(&self.pool, &self.rng)
    }

    fn install(&self, index: usize, conn: Conn) {
        let slot = &self.slots[index];
        let old = slot
            .conn
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .replace(Arc::new(conn));
        let now = self.now_ms();
        slot.last_ok_ms.store(now, Ordering::Relaxed);
        slot.last_progress_ms.store(now, Ordering::Relaxed);
        slot.ready.store(true, Ordering::Release);
        slot.connecting.store(false, Ordering::Release);
        bump(&self.counters.connects);
        tracing::info!(target: "rampart::mux", server = %self.server, slot = index, "shared connection ready");
        // A connection retired for its age finishes what is in flight on it, then closes.
        drop(old);
    }

    /// Marks the connection of slot `index` dead (if it is still the slot's) and replaces it.
    fn lost(&self, index: usize, conn: &Arc<Conn>, why: &str) {
        let slot = &self.slots[index];
        {
            let mut current = slot.conn.write().unwrap_or_else(|p| p.into_inner());
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
    /// statement is sent; `Err(query)` if no shared connection could take it (the caller spills it to the
    /// pool).
    pub(crate) async fn run(&self, query: Query) -> Result<Result<Response, Error>, Query> {
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
                Tried::Done(result) => return Ok(result),
                Tried::NotSent => continue,
            }
        }
        bump(&self.counters.spilled);
        Err(query)
    }

    /// One try of `query` on slot `index`'s connection `conn`; `now` is when the try began.
    async fn try_on(&self, index: usize, conn: &Arc<Conn>, query: &Query, now: Instant) -> Tried {
        let slot = &self.slots[index];
        let now_ms = self.ms_at(now);
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
        if now_ms.saturating_sub(slot.last_ok_ms.load(Ordering::Relaxed)) > self.bypass_ms {
            bump(&self.counters.validated);
            match tokio::time::timeout(self.check_timeout, conn.client.simple_query("")).await {
                Ok(Ok(_)) => slot.last_ok_ms.store(self.now_ms(), Ordering::Relaxed),
                _ => {
                    self.lost(index, conn, "validation failed");
                    return Tried::NotSent;
                }
            }
        }

        let statement = match conn.cached(query.sql()) {
            Some(statement) => statement,
            // Preparing sends only a Parse: if the link fails here the statement never ran.
            None => match conn.client.prepare(query.sql()).await {
                Ok(statement) => {
                    conn.cache(query.shared_sql(), statement.clone());
                    statement
                }
                Err(e) if e.code().is_some() => {
                    self.progress(slot);
                    return Tried::Done(Err(from_pg(e, Stage::BeforeSend, &self.server)));
                }
                Err(_) => {
                    self.lost(index, conn, "lost while preparing");
                    return Tried::NotSent;
                }
            },
        };

        let running = crate::service::execute(&conn.client, &statement, query.params());
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
                self.progress(slot);
                bump(&self.counters.shared);
                Ok(response)
            }
            Err(e) if e.code() == Some(&SqlState::QUERY_CANCELED) => {
                // Nothing sends cancel requests to a shared connection: this is its statement timeout.
                // Retrying would only hit it again (and hold up the requests queued behind each try).
                self.progress(slot);
                bump(&self.counters.shared);
                Err(Error::new(
                    ErrorKind::Timeout,
                    Classification::Permanent,
                    format!(
                        "statement ran longer than the shared connections' statement timeout ({:?}); \
                         mark it Query::exclusive() or grant it a longer Query::timeout",
                        self.statement_timeout
                    ),
                )
                .with_code(SqlState::QUERY_CANCELED)
                .with_source(e))
            }
            Err(e) if !link_failed(&e) => {
                self.progress(slot);
                bump(&self.counters.shared);
                Err(from_pg(e, Stage::InFlight, &self.server))
            }
            Err(e) => {
                self.lost(index, conn, "lost with requests in flight");
                Err(from_pg(e, Stage::InFlight, &self.server).on_shared_connection())
            }
        })
    }

    fn progress(&self, slot: &Slot) {
        let now = self.now_ms();
        slot.last_progress_ms.store(now, Ordering::Relaxed);
        slot.last_ok_ms.store(now, Ordering::Relaxed);
    }

    fn deadline_passed(&self, query: &Query) -> Error {
        // The statement was sent and may still run (until the session's statement timeout): for a write,
        // whether it was applied is unknown.
        let class = if query.is_idempotent() {
            Classification::Transient
        } else {
            Classification::Ambiguous
        };
        Error::new(
            ErrorKind::DeadlineExceeded,
            class,
            "deadline passed while the statement was running on a shared connection",
        )
    }
}

/// Opens a connection for slot `index`, retrying with backoff (50 ms doubling to 5 s, full jitter) while
/// connects fail, until it succeeds or the multiplexer is dropped.
async fn connect_loop(mux: Weak<Mux>, index: usize) {
    let mut ceiling = Duration::from_millis(50);
    loop {
        let Some(strong) = mux.upgrade() else { return };
        match strong.connect().await {
            Ok(conn) => {
                strong.install(index, conn);
                return;
            }
            Err(e) => {
                bump(&strong.counters.connect_failures);
                tracing::warn!(target: "rampart::mux", server = %strong.server, slot = index, error = %e, "shared connection failed to connect");
            }
        }
        let wait = ceiling.mul_f64(
            strong
                .rng
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .next_f64(),
        );
        drop(strong);
        tokio::time::sleep(wait).await;
        ceiling = (ceiling * 2).min(Duration::from_secs(5));
    }
}

/// Whether a statement changes or depends on session state, or is maintenance that should not hold up
/// a shared connection. Looks at the first keyword (and, for `CREATE`, the next), case-insensitively,
/// and at session-level advisory lock functions anywhere.
pub(crate) fn needs_session(sql: &str) -> bool {
    let mut words = sql
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty());
    let Some(first) = words.next() else {
        return false;
    };
    const SESSION: &[&str] = &[
        "BEGIN",
        "START",
        "COMMIT",
        "END",
        "ROLLBACK",
        "ABORT",
        "SAVEPOINT",
        "RELEASE",
        "SET",
        "RESET",
        "LISTEN",
        "UNLISTEN",
        "DECLARE",
        "FETCH",
        "MOVE",
        "CLOSE",
        "PREPARE",
        "EXECUTE",
        "DEALLOCATE",
        "DISCARD",
        "LOCK",
        "COPY",
        "VACUUM",
        "ANALYZE",
        "ANALYSE",
        "CLUSTER",
        "REINDEX",
        "REFRESH",
        "CHECKPOINT",
        "LOAD",
    ];
    if SESSION.iter().any(|k| first.eq_ignore_ascii_case(k)) {
        return true;
    }
    if first.eq_ignore_ascii_case("CREATE") {
        let rest: Vec<&str> = words.take(3).collect();
        if rest.iter().any(|w| {
            w.eq_ignore_ascii_case("TEMP")
                || w.eq_ignore_ascii_case("TEMPORARY")
                || w.eq_ignore_ascii_case("INDEX")
        }) {
            return true;
        }
    }
    // Session-level advisory locks (`pg_advisory_lock`, `pg_try_advisory_lock_shared`, ...) outlive the
    // statement (the `_xact_` variants end with its implicit transaction and are fine), and so may a
    // setting made with `set_config(..., false)`. Scanned without allocating: this runs for every request.
    let bytes = sql.as_bytes();
    (0..bytes.len()).any(|at| {
        let first = bytes[at] | 0x20;
        if first != b'a' && first != b's' {
            return false;
        }
        let tail = &bytes[at..];
        let starts =
            |word: &[u8]| tail.len() >= word.len() && tail[..word.len()].eq_ignore_ascii_case(word);
        starts(b"advisory_lock") || starts(b"advisory_unlock") || starts(b"set_config")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_statements_are_recognised() {
        for sql in [
            "BEGIN",
            "  begin isolation level serializable",
            "SET search_path = x",
            "set local statement_timeout = 5",
            "LISTEN jobs",
            "DECLARE c CURSOR FOR SELECT 1",
            "COPY t FROM STDIN",
            "VACUUM ANALYZE t",
            "CREATE TEMP TABLE t (x int)",
            "create temporary table t (x int)",
            "CREATE UNIQUE INDEX i ON t (x)",
            "SELECT pg_advisory_lock(1)",
            "select pg_try_advisory_lock_shared(1)",
            "SELECT pg_advisory_unlock_all()",
            "SELECT set_config('search_path', 'x', false)",
        ] {
            assert!(needs_session(sql), "{sql} needs a session");
        }
        for sql in [
            "SELECT 1",
            "select * from settings",
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET x = 1",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "CREATE TABLE t (x int)",
            "SELECT pg_advisory_xact_lock(1)",
            "",
        ] {
            assert!(!needs_session(sql), "{sql} can be shared");
        }
    }

    #[test]
    fn bad_settings_are_typed_errors() {
        let err = MuxConfig::builder().connections(0).build().unwrap_err();
        assert_eq!(err.field(), "connections");
        let err = MuxConfig::builder().connections(65).build().unwrap_err();
        assert_eq!(err.field(), "connections");
        let err = MuxConfig::builder().max_in_flight(0).build().unwrap_err();
        assert_eq!(err.field(), "max_in_flight");
        let err = MuxConfig::builder()
            .statement_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "statement_timeout");
        let err = MuxConfig::builder()
            .stall_after(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "stall_after");
        assert_eq!(MuxConfig::builder().build().unwrap(), MuxConfig::default());
    }
}
