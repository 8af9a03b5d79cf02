//! Settings of the multiplexed mode.

use std::time::Duration;

use crate::error::ConfigError;

/// The statement timeout of shared connections when neither the configuration nor a stack sets one.
pub(super) const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(3);

/// Settings of the multiplexed mode; build with [`MuxConfig::builder`].
///
/// A pool gives each request a connection of its own for the length of the request. For short independent
/// statements that wastes most of the time of both ends: the connection sits idle while its response
/// crosses the network and while the client handles it. tokio-postgres can *pipeline* requests from many
/// tasks over one connection (each is written as soon as it is made; responses come back in order), and on
/// loopback one shared client does several times the throughput of a 16-connection pool (see
/// `BENCHMARKS.md`). Over a WAN link to a hosted database the gain is larger: no request waits for a free
/// connection, so none pays a checkout's queueing on top of its round trip.
///
/// [`PgService::multiplexed`](crate::PgService::multiplexed) (or
/// [`StackBuilder::multiplex`](crate::StackBuilder::multiplex)) turns it on. The service then keeps a
/// small set of shared connections ([`MuxConfig::connections`], one by default) beside its pool:
///
/// - **Routing.** A request goes to the least-loaded healthy shared connection (fewest requests in
///   flight; ties go to the first, so a lone caller keeps one server process warm), skipping a connection
///   that is *stalled* (requests in flight, none finished for
///   [`stall_after`](MuxConfigBuilder::stall_after)) and one at its in-flight bound
///   ([`max_in_flight`](MuxConfigBuilder::max_in_flight)). When no shared connection can take it (all
///   full or stalled, or none connected yet) it *spills* to an exclusive connection from the pool:
///   nothing waits for a shared connection.
/// - **Exclusive work.** Whatever needs the session to itself runs on an exclusive pool connection:
///   statements that change or use session state (`BEGIN`/`COMMIT`, `SET`, `LISTEN`, cursors, `PREPARE`,
///   `COPY`, `DISCARD`, `LOCK`, session advisory locks, `set_config`, temporary tables), maintenance (`VACUUM`,
///   `ANALYZE`, `CLUSTER`, `REINDEX`, `CREATE INDEX`, `REFRESH`), requests marked
///   [`Query::exclusive`](crate::Query::exclusive), and requests whose own [`Query::timeout`](crate::Query::timeout) is longer than the shared
///   connections' statement timeout (a caller that grants a statement more time says it may be slow).
///   Transactions ([`Transactor`](crate::Transactor)) always take a pool connection, and so do the plain
///   writes of a stack that resolves lost replies
///   ([`StackBuilder::resolve_outcomes`](crate::StackBuilder::resolve_outcomes), on by default): each runs
///   in a transaction of its own, which cannot share a pipelined connection. Reads and idempotent writes
///   stay shared. Both kinds of work mix safely in one service.
/// - **A slow statement cannot stall the others for long.** Responses on one connection come back in
///   order, so requests queued behind a slow statement wait for it. Shared connections therefore run with
///   a session `statement_timeout` ([`statement_timeout`](MuxConfigBuilder::statement_timeout); in a
///   ready-made stack, its attempt timeout): nothing on them runs longer, and a statement cut by it fails
///   with [`ErrorKind::Timeout`](crate::ErrorKind::Timeout), `Permanent` (retrying would hit the limit again) and a message saying
///   to mark it [`Query::exclusive`](crate::Query::exclusive). New requests avoid a stalled connection; requests already queued
///   behind it are bounded by their own deadlines (enforced on the client side when earlier than the
///   statement timeout, since no per-request `statement_timeout` can be set on a shared session) and
///   retried elsewhere by the retry layer. Statements known to be slow belong on exclusive connections.
/// - **Failure.** When a shared connection dies, every request in flight on it fails at once, each
///   classified as over the pool: a request whose statement may have reached the server is
///   [`Ambiguous`](rampart_layers::Classification::Ambiguous) (the retry layer replays it only if it is
///   idempotent; a write is reported as outcome unknown), one that was never sent (the connection was
///   found closed, or its statement could not even be prepared) is moved to another connection
///   invisibly. The dead connection is replaced in the background, with backoff while connects fail;
///   meanwhile its share of the traffic goes to the other shared connections or spills to the pool.
///   These losses do not count toward a stack's pool rebuild: the multiplexer heals its own connections.
/// - **Validation costs nothing on the hot path.** A shared connection that answered within the pool's
///   bypass window is alive; only one idle for longer is checked (an empty query, bounded by the pool's
///   check timeout) before use, as the pool does. Shared connections are replaced after the pool's max
///   lifetime (with its jitter), the new one connected before the old one is retired.
///
/// A request abandoned on a shared connection (its caller gave up, a timeout fired) cannot be cancelled
/// on the server: a cancel request stops whatever the *connection* is running, which may be another
/// caller's statement. It runs on until it ends or hits the session's statement timeout; its response is
/// discarded.
///
/// # When to use which
///
/// Multiplexing for many short independent statements from many concurrent callers (the common web
/// request), the pool for long statements and transactions (which take pool connections either way). Not
/// behind a pooler in transaction mode (PgBouncer and the hosted poolers): it would route each pipelined
/// statement's implicit transaction to any server connection, and named statements do not survive that;
/// building it there is a [`ConfigError`].

#[derive(Debug, Clone, PartialEq)]
pub struct MuxConfig {
    pub(super) connections: usize,
    pub(super) max_in_flight: usize,
    pub(super) statement_timeout: Option<Duration>,
    pub(super) stall_after: Duration,
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
    /// that may need longer go to exclusive connections ([`Query::exclusive`](crate::Query::exclusive), or a longer
    /// [`Query::timeout`](crate::Query::timeout)). Unset, a ready-made stack uses its attempt timeout.
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

#[cfg(test)]
mod tests {
    use super::*;

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
