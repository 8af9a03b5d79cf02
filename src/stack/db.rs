//! [`Db`]: the built stack, and where its current service is read from.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use rampart_layers::breaker::BreakerHandle;
use rampart_layers::recreate::RecreateHandle;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;
use tracing::Instrument;
use tracing::instrument::Instrumented;

use crate::config::PgConfig;
use crate::error::{ConfigError, Error};
use crate::health::{HealthReport, Outcomes};
use crate::mux::MuxConfig;
use crate::pool::{Pool, PoolConfig};
use crate::query::{Query, Response};
use crate::service::PgService;
use crate::tx::Transactor;

/// A service over a new pool: the stack's first, and each one the pool rebuilds make.
pub(super) fn new_service(
    pg: &PgConfig,
    pool: &PoolConfig,
    mux: Option<&MuxConfig>,
) -> Result<PgService, ConfigError> {
    let pool = Pool::new(pg.clone(), pool.clone())?;
    match mux {
        Some(config) => PgService::multiplexed(pool, config.clone()),
        None => Ok(PgService::new(pool)),
    }
}

/// What makes a new service when the pool is rebuilt.
pub(super) type Factory = BoxCloneSyncService<(), PgService, ConfigError>;

/// Where the current service is read from: the rebuilding layer holds it, if the stack has one.
#[derive(Clone)]
pub(super) enum Services {
    Fixed(PgService),
    Rebuilt(RecreateHandle<PgService, Factory>),
}

impl Services {
    fn current(&self) -> PgService {
        match self {
            Services::Fixed(service) => service.clone(),
            Services::Rebuilt(handle) => handle.current(),
        }
    }

    fn rebuilds(&self) -> u64 {
        match self {
            Services::Fixed(_) => 0,
            Services::Rebuilt(handle) => handle.generation(),
        }
    }
}

/// The first keyword of a statement (`SELECT`, `insert`, ...) as written, for logs; at most 16 bytes.
fn statement_verb(sql: &str) -> &str {
    let sql = sql.trim_start();
    let end = sql
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(sql.len())
        .min(16);
    &sql[..end]
}

/// The ready-made stack: a cloneable `tower::Service<Query>` whose every error is a [`rampart::Error`](Error).
#[derive(Clone)]
pub struct Db {
    pub(super) inner: BoxCloneSyncService<Query, Response, Error>,
    pub(super) services: Services,
    pub(super) outcomes: Arc<Outcomes>,
    pub(super) breaker: Option<BreakerHandle>,
    pub(super) retries: Arc<AtomicU64>,
    pub(super) attempt_timeout: Duration,
    pub(super) deadline: Duration,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field("service", &self.service())
            .field("breaker", &self.breaker)
            .finish()
    }
}

impl Db {
    /// The Postgres service at the bottom of the stack (the current one, if the pool was rebuilt).
    pub fn service(&self) -> PgService {
        self.services.current()
    }

    /// The current pool.
    pub fn pool(&self) -> Pool {
        self.service().pool().clone()
    }

    /// The circuit breaker's handle (to read its state or force it), if the stack has one.
    pub fn breaker(&self) -> Option<&BreakerHandle> {
        self.breaker.as_ref()
    }

    /// How many retries the stack has made (attempts after the first), since it was built.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// A [`Transactor`] over the current pool, whose runs are bounded by the stack's attempt timeout:
    /// for transactions re-run whole on serialization failures and deadlocks.
    pub fn transactor(&self) -> Transactor {
        // Like the stack's own retries, re-runs are bounded by the deadline rather than a small count, so a
        // restart that takes a second is ridden out.
        Transactor::new(self.pool())
            .attempt_timeout(Some(self.attempt_timeout))
            .max_elapsed(Some(self.deadline))
            .max_attempts(100)
    }

    /// How many times the pool has been rebuilt after consecutive connection failures.
    pub fn pool_rebuilds(&self) -> u64 {
        self.services.rebuilds()
    }

    /// A health report; with `probe`, also times a `SELECT 1`, all of it (checkout, validation, connect)
    /// bounded by it. On the serverless preset no probe is made (a probe wakes a suspended compute):
    /// the report gives the last known state and says so ([`HealthReport::probe_skipped`]); use
    /// [`health_waking`](Self::health_waking) to probe anyway.
    pub async fn health(&self, probe: Option<Duration>) -> HealthReport {
        HealthReport::gather(
            &self.service(),
            &self.outcomes,
            self.breaker.as_ref(),
            probe,
            false,
        )
        .await
    }

    /// A health report with a probe bounded by `probe`, whatever the preset: on a serverless host it
    /// wakes a suspended compute.
    pub async fn health_waking(&self, probe: Duration) -> HealthReport {
        HealthReport::gather(
            &self.service(),
            &self.outcomes,
            self.breaker.as_ref(),
            Some(probe),
            true,
        )
        .await
    }

    /// Runs one query through the stack.
    pub async fn run(&self, query: Query) -> Result<Response, Error> {
        self.clone().oneshot(query).await
    }
}

impl tower::Service<Query> for Db {
    type Response = Response;
    type Error = Error;
    type Future = Instrumented<
        <BoxCloneSyncService<Query, Response, Error> as tower::Service<Query>>::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    /// Every request runs in a `rampart.query` span (target `rampart::query`, level debug), so the
    /// events of its attempts, retries, validation and breaker decisions can be followed together. The
    /// span names the statement's verb, never its text or parameters, which may hold data.
    fn call(&mut self, query: Query) -> Self::Future {
        let span = tracing::debug_span!(
            target: "rampart::query",
            "rampart.query",
            verb = statement_verb(query.sql()),
            idempotent = query.is_idempotent(),
            keyed = query.key().is_some(),
        );
        self.inner.call(query).instrument(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_verb_of_a_statement_is_logged() {
        assert_eq!(statement_verb("  SELECT secret FROM t"), "SELECT");
        assert_eq!(statement_verb("insert into t values ('pw')"), "insert");
        assert_eq!(statement_verb("ALTER ROLE x PASSWORD 'pw'"), "ALTER");
        assert_eq!(statement_verb("(SELECT 1)"), "");
        assert_eq!(statement_verb("é"), "");
        assert_eq!(statement_verb(&"A".repeat(40)), "A".repeat(16));
    }
}
