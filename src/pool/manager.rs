//! deadpool's manager for rampart's connections: connect, validate at checkout, retire by age.

use std::fmt;
use std::sync::{Arc, Mutex};

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use deadpool_postgres::ClientWrapper;
use rampart_layers::rng::SplitMix64;
use rampart_layers::validate::Checked;
use tokio::time::Instant;
use tokio_postgres::{GenericClient, Statement};

use crate::cache::SqlCache;
use crate::error::Error;
use crate::outcome::connect_failed;
use crate::tls::{Connected, Connector, Refused};

use super::config::PoolConfig;
use super::stats::{Counters, bump};
use super::suspect::{Suspicion, Verdict};

/// One pooled connection: deadpool-postgres's client (with its statement cache) and what rampart tracks.
pub(crate) struct PgConn {
    client: ClientWrapper,
    /// The host (`host:port`) it was made to: one of several when the URL names a primary and standbys.
    host: Arc<str>,
    /// Statements prepared on this connection, bounded (see [`crate::cache`]): deadpool-postgres's own
    /// cache keeps every text ever prepared, so SQL built with inlined values grows a backend without
    /// limit.
    statements: SqlCache<Statement>,
    last_ok: Option<Instant>,
    /// When it was made: a connection made before a write was refused with `25006` is retired.
    pub(super) created_at: Instant,
    pub(super) expires_at: Option<Instant>,
    statement_timeout_ms: u64,
    /// The session's `idle_in_transaction_session_timeout` was set for marked writes.
    idle_limit: bool,
}

impl fmt::Debug for PgConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConn")
            .field("closed", &self.client.is_closed())
            .field("last_ok", &self.last_ok)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl PgConn {
    /// The tokio-postgres client.
    pub(crate) fn client(&self) -> &ClientWrapper {
        &self.client
    }

    /// The host it was made to, `host:port`: what its errors name.
    pub(crate) fn host(&self) -> &Arc<str> {
        &self.host
    }

    /// The client, mutably (to start a transaction), and the statement cache beside it.
    pub(crate) fn split(&mut self) -> (&mut ClientWrapper, &SqlCache<Statement>) {
        (&mut self.client, &self.statements)
    }

    /// `sql` prepared on this connection, from its bounded cache or by preparing it (a `Parse`: if the
    /// link fails here the statement never ran).
    pub(crate) async fn prepare(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        prepare_cached(&*self.client, &self.statements, sql).await
    }

    /// Records a successful use: the validation bypass window starts again.
    pub(crate) fn mark_ok(&mut self) {
        self.last_ok = Some(Instant::now());
    }

    /// When the connection was last used successfully.
    pub(super) fn last_ok(&self) -> Option<Instant> {
        self.last_ok
    }

    /// The `statement_timeout` this session has set, in milliseconds (0: none).
    pub(crate) fn statement_timeout_ms(&self) -> u64 {
        self.statement_timeout_ms
    }

    pub(crate) fn set_statement_timeout_ms(&mut self, ms: u64) {
        self.statement_timeout_ms = ms;
    }

    /// Whether the session's `idle_in_transaction_session_timeout` is set ([`crate::resolve`]).
    pub(crate) fn idle_limit_set(&self) -> bool {
        self.idle_limit
    }

    pub(crate) fn idle_limit_was_set(&mut self) {
        self.idle_limit = true;
    }
}

/// `sql` prepared on `client` (a connection, or a transaction on it) through `cache`, the connection's.
pub(crate) async fn prepare_cached<C: GenericClient>(
    client: &C,
    cache: &SqlCache<Statement>,
    sql: &str,
) -> Result<Statement, tokio_postgres::Error> {
    if let Some(statement) = cache.get(sql) {
        return Ok(statement);
    }
    let statement = client.prepare(sql).await?;
    cache.insert(sql.into(), statement.clone());
    Ok(statement)
}

/// How errors name a host of `server` (the redacted URL): `host (of URL)` when the URL names several,
/// the URL alone when it names one.
pub(crate) fn host_of(host: &str, server: &str) -> String {
    if host.is_empty() || !server.contains(',') {
        server.to_owned()
    } else {
        format!("{host} (of {server})")
    }
}

/// The deadpool manager: deadpool-postgres's, plus validation, lifetime and counters.
pub(crate) struct Manager {
    pub(super) inner: deadpool_postgres::Manager,
    /// Connects one host at a time, so each connection knows its host (`tls/connector.rs`).
    pub(super) connector: Connector,
    pub(super) pg: tokio_postgres::Config,
    pub(super) config: PoolConfig,
    pub(super) server: String,
    pub(super) counters: Arc<Counters>,
    pub(super) rng: Mutex<SplitMix64>,
    pub(super) suspicion: Arc<Suspicion>,
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Manager {
    fn expiry(&self) -> Option<Instant> {
        self.config.expiry(&self.rng)
    }
}

impl managed::Manager for Manager {
    type Type = PgConn;
    /// Converted where it is made, naming the host that answered.
    type Error = Error;

    async fn create(&self) -> Result<PgConn, Error> {
        match self.connector.connect_to(&self.pg).await {
            Ok(Connected { client, task, host }) => {
                bump(&self.counters.created);
                *crate::sync::lock(&self.counters.latest_host) = Some(host.clone());
                tracing::info!(target: "rampart::pool", server = %self.server, host = %host, "connection created");
                Ok(PgConn {
                    client: ClientWrapper::new(client, task),
                    host,
                    statements: SqlCache::default(),
                    last_ok: Some(Instant::now()),
                    created_at: Instant::now(),
                    expires_at: self.expiry(),
                    statement_timeout_ms: 0,
                    idle_limit: false,
                })
            }
            Err(Refused { error, host }) => {
                bump(&self.counters.connect_failures);
                let error = connect_failed(error, &host_of(&host, &self.server));
                tracing::info!(target: "rampart::pool", server = %self.server, error = %error, "connect failed");
                Err(error)
            }
        }
    }

    async fn recycle(&self, conn: &mut PgConn, _: &Metrics) -> RecycleResult<Error> {
        if conn.client.is_closed() {
            bump(&self.counters.evicted_closed);
            self.suspicion.found_dead(conn.last_ok);
            tracing::info!(target: "rampart::pool", server = %self.server, "closed connection dropped");
            return Err(RecycleError::message("connection closed"));
        }
        if self.suspicion.retired(&conn.host, conn.created_at) {
            bump(&self.counters.evicted_read_only);
            tracing::info!(
                target: "rampart::pool", server = %self.server,
                "connection made before a write was refused as read-only (25006): dropped"
            );
            return Err(RecycleError::message(
                "its server no longer takes writes (25006)",
            ));
        }
        if conn.expires_at.is_some_and(|at| Instant::now() >= at) {
            bump(&self.counters.evicted_lifetime);
            tracing::debug!(target: "rampart::pool", server = %self.server, "connection reached its max lifetime");
            return Err(RecycleError::message("connection reached its max lifetime"));
        }
        let policy = self.config.validation;
        let client = &conn.client;
        let check = || async { client.simple_query("").await.map(drop) };
        let checked = match self.suspicion.verdict(conn.last_ok) {
            Verdict::Doomed => {
                bump(&self.counters.evicted_suspect);
                tracing::debug!(
                    target: "rampart::pool", server = %self.server,
                    "connection idle as long as one that did not answer its check: dropped unchecked"
                );
                return Err(RecycleError::message(
                    "idle as long as a black-holed connection",
                ));
            }
            Verdict::Suspect => policy.check(check()).await,
            Verdict::Trusted => policy.validate(conn.last_ok, check).await,
        };
        match checked {
            Ok(Checked::Bypassed) => {}
            Ok(_) => {
                bump(&self.counters.validated);
                conn.mark_ok();
            }
            Err(e) => {
                bump(&self.counters.evicted_validation);
                if e.is_timeout() {
                    self.suspicion.found_black_holed(conn.last_ok);
                } else {
                    self.suspicion.found_dead(conn.last_ok);
                }
                // `rampart::validate` has said it at warn; this line adds the server and the replacement.
                tracing::info!(
                    target: "rampart::pool", server = %self.server, outcome = e.outcome(),
                    "validation failed, connection replaced"
                );
                return Err(RecycleError::message("validation failed"));
            }
        }
        bump(&self.counters.recycled);
        Ok(())
    }

    fn detach(&self, conn: &mut PgConn) {
        managed::Manager::detach(&self.inner, &mut conn.client);
    }
}
