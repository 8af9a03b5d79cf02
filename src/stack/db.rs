//! [`Db`]: the built stack, and where its current service is read from.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use rampart_layers::breaker::BreakerHandle;
use rampart_layers::recreate::RecreateHandle;
use tokio_postgres::config::Host;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;
use tracing::instrument::Instrumented;
use tracing::{Instrument, Span};

use crate::classify::PgClassifier;
use crate::config::PgConfig;
use crate::error::{ConfigError, Error};
use crate::health::{HealthReport, Outcomes};
use crate::mux::MuxConfig;
use crate::pool::{Pool, PoolConfig};
use crate::query::{Query, Response};
use crate::service::PgService;
use crate::stream::{OpenStream, RowStream};
use crate::tx::Transactor;
use crate::xact::{Counts, Resolved};
use rampart_layers::deadline::{AttemptTimeoutLayer, DeadlineLayer};
use rampart_layers::retry::backoff::Exponential;
use rampart_layers::retry::{RetryLayer, RetryPolicy};
use tower::ServiceBuilder;

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
    pub(super) fn current(&self) -> PgService {
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

/// The verb as OpenTelemetry's `db.operation.name` wants it: upper case, so `insert` and `INSERT` are
/// one operation. Allocates only for a verb written in lower case (and only when the span is enabled).
fn operation_name(sql: &str) -> Cow<'_, str> {
    let verb = statement_verb(sql);
    if verb.bytes().any(|b| b.is_ascii_lowercase()) {
        Cow::Owned(verb.to_ascii_uppercase())
    } else {
        Cow::Borrowed(verb)
    }
}

/// The ready-made stack: a cloneable `tower::Service<Query>` whose every error is a [`rampart::Error`](Error).
#[derive(Clone)]
pub struct Db {
    pub(super) inner: BoxCloneSyncService<Query, Response, Error>,
    pub(super) services: Services,
    pub(super) outcomes: Arc<Outcomes>,
    pub(super) resolved: Arc<Counts>,
    /// Where resolved lost replies are counted, if the stack resolves them.
    pub(super) resolve: Option<Arc<Counts>>,
    pub(super) breaker: Option<BreakerHandle>,
    pub(super) retries: Arc<AtomicU64>,
    pub(super) attempt_timeout: Duration,
    pub(super) deadline: Duration,
    /// Whether the `rampart.query` span carries the statement text ([`Db::record_statements`]).
    pub(super) record_statements: bool,
    /// The stack's retry policy, for streamed reads (which retry only until their first row).
    pub(super) stream_policy: Arc<RetryPolicy<PgClassifier, Exponential>>,
    /// The replicas' pool, if reads go to replicas ([`StackBuilder::replicas`](super::StackBuilder::replicas)).
    pub(super) replica_pool: Option<Pool>,
    /// The replicas' own breaker.
    pub(super) replica_breaker: Option<BreakerHandle>,
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

    /// The replicas' pool, if the stack sends reads to replicas
    /// ([`StackBuilder::replicas`](super::StackBuilder::replicas)): its statistics, its server.
    pub fn replica_pool(&self) -> Option<&Pool> {
        self.replica_pool.as_ref()
    }

    fn replica(&self) -> Option<(&Pool, Option<&BreakerHandle>)> {
        self.replica_pool
            .as_ref()
            .map(|pool| (pool, self.replica_breaker.as_ref()))
    }

    /// The circuit breaker's handle (to read its state or force it), if the stack has one.
    pub fn breaker(&self) -> Option<&BreakerHandle> {
        self.breaker.as_ref()
    }

    /// How many retries the stack has made (attempts after the first), since it was built.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// How many lost replies of plain writes the stack has looked up on the server, by answer (see
    /// [`StackBuilder::resolve_outcomes`](crate::StackBuilder::resolve_outcomes)), since it was built.
    pub fn resolved(&self) -> Resolved {
        self.resolved.snapshot()
    }

    /// A [`Transactor`] over the current pool, for transactions re-run whole on serialization failures
    /// and deadlocks. Each run is bounded by the stack's attempt timeout; the runs together by the
    /// stack's deadline ([`Transactor::max_elapsed`]), not by a small count.
    pub fn transactor(&self) -> Transactor {
        // Like the stack's own retries, re-runs are bounded by the deadline rather than a small count, so a
        // restart that takes a second is ridden out.
        let transactor = Transactor::new(self.pool())
            .attempt_timeout(Some(self.attempt_timeout))
            .max_elapsed(Some(self.deadline))
            .max_attempts(100);
        // Its lost COMMITs are looked up as the stack's plain writes are, and counted with them.
        match &self.resolve {
            Some(counts) => transactor.counting_resolved(counts.clone()),
            None => transactor.resolve_outcomes(false),
        }
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
            self.replica(),
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
            self.replica(),
        )
        .await
    }

    /// Whether the `rampart.query` span records the statement's text as `db.query.text` (off by default).
    /// The text is the SQL as written, with its `$1` placeholders; bound parameters are never recorded.
    /// Turn it on only when no statement embeds data in its text (a literal email, a password in `ALTER
    /// ROLE`): the text goes wherever the spans go.
    pub fn record_statements(mut self, record: bool) -> Self {
        self.record_statements = record;
        self
    }

    /// The `rampart.query` span of one request (see [`Db::call`](tower::Service::call)).
    fn span(&self, query: &Query) -> Span {
        // Built only when someone listens: reading the server from the current pool is not free.
        if !tracing::enabled!(target: "rampart::query", tracing::Level::DEBUG) {
            return Span::none();
        }
        let service = self.service();
        let config = service.pool().pg_config().pg_config();
        let address = match config.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            Some(Host::Unix(path)) => path.display().to_string(),
            None => String::from("localhost"),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let operation = operation_name(query.sql());
        let span = tracing::debug_span!(
            target: "rampart::query",
            "rampart.query",
            otel.name = %operation,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            db.system.name = "postgresql",
            db.operation.name = %operation,
            // As libpq, the database defaults to the user's name.
            db.namespace = config.get_dbname().or(config.get_user()).unwrap_or_default(),
            db.query.text = tracing::field::Empty,
            db.response.status_code = tracing::field::Empty,
            server.address = address,
            server.port = port,
            error.type = tracing::field::Empty,
            idempotent = query.is_idempotent(),
            keyed = query.key().is_some(),
        );
        if self.record_statements {
            span.record("db.query.text", query.sql());
        }
        span
    }

    /// Runs one query through the stack.
    pub async fn run(&self, query: Query) -> Result<Response, Error> {
        self.clone().oneshot(query).await
    }

    /// Runs a query and streams its rows as they arrive, in bounded memory (for results too big to
    /// buffer). It is retried with the stack's policy, attempt timeout and deadline **only until its
    /// first row has been read**; after that a failure is an error item of the stream, never a silent
    /// restart. Always on a pooled connection of its own, held until the stream ends; dropping the stream
    /// early cancels the query. The breaker does not take part (a stream is not one call).
    ///
    /// ```no_run
    /// use futures_util::TryStreamExt;
    /// # async fn demo(db: rampart::Db) -> Result<(), rampart::Error> {
    /// let mut rows = db.stream(rampart::Query::read("SELECT id FROM events")).await?;
    /// while let Some(row) = rows.try_next().await? {
    ///     let id: Result<i64, _> = row.try_get(0);
    ///     # let _ = id;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn stream(&self, query: Query) -> Result<RowStream, Error> {
        let attempts = ServiceBuilder::new()
            .layer(DeadlineLayer::new(self.deadline))
            .layer(RetryLayer::new(RetryPolicy::clone(&self.stream_policy)))
            .layer(AttemptTimeoutLayer::new(self.attempt_timeout).honouring_grants())
            .service(OpenStream::new(self.pool()));
        attempts
            .oneshot(query)
            .await
            .map_err(|e| Error::from_layers(e, false))
    }
}

impl tower::Service<Query> for Db {
    type Response = Response;
    type Error = Error;
    type Future = DbFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    /// Every request runs in a `rampart.query` span (target `rampart::query`, level debug), so the
    /// events of its attempts, retries, validation and breaker decisions can be followed together.
    ///
    /// The span carries OpenTelemetry's database attributes, so a `tracing-opentelemetry` exporter shows
    /// it as every OTel backend expects: `db.system.name` (`postgresql`), `db.operation.name` (the
    /// statement's first keyword, upper case), `db.namespace` (the database), `server.address`,
    /// `server.port`, and on failure `error.type` (the [`ErrorKind`](crate::ErrorKind) name),
    /// `db.response.status_code` (the SQLSTATE, for a server error) and `otel.status_code = "ERROR"`;
    /// `otel.name` and `otel.kind = "client"` name it. Also `idempotent` and `keyed`. Never the
    /// statement's text ([`Db::record_statements`] opts in) nor its parameters, which may hold data.
    fn call(&mut self, query: Query) -> Self::Future {
        let span = self.span(&query);
        DbFuture {
            inner: self.inner.call(query).instrument(span),
        }
    }
}

type Inner = <BoxCloneSyncService<Query, Response, Error> as tower::Service<Query>>::Future;

pin_project_lite::pin_project! {
    /// The future of [`Db`]'s `call`: the stack's, in its `rampart.query` span, which it marks with the
    /// error when the request fails.
    pub struct DbFuture {
        #[pin]
        inner: Instrumented<Inner>,
    }
}

impl fmt::Debug for DbFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbFuture").finish_non_exhaustive()
    }
}

impl Future for DbFuture {
    type Output = Result<Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut inner = self.project().inner;
        let output = ready!(inner.as_mut().poll(cx));
        if let Err(err) = &output {
            let span = inner.span();
            span.record("error.type", err.kind().as_str());
            span.record("otel.status_code", "ERROR");
            if let Some(code) = err.code() {
                span.record("db.response.status_code", code.code());
            }
        }
        Poll::Ready(output)
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

    #[test]
    fn the_operation_name_is_the_verb_in_upper_case() {
        assert_eq!(operation_name("insert into t values (1)"), "INSERT");
        assert!(matches!(
            operation_name("SELECT 1"),
            Cow::Borrowed("SELECT")
        ));
        assert_eq!(operation_name("WiTh x AS (SELECT 1) SELECT 2"), "WITH");
    }
}
