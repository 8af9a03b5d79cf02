//! Which preset a configuration started from, and what sits in front of Postgres.

/// Which preset a configuration started from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Preset {
    /// [`PgConfig::server`](crate::PgConfig::server): an always-on host.
    Server,
    /// [`PgConfig::serverless`](crate::PgConfig::serverless): a host that suspends when idle and takes seconds to wake.
    Serverless,
}

/// What sits between the application and Postgres, as far as session state is concerned.
///
/// In [`Transaction`](PoolerMode::Transaction) mode rampart keeps no state in the server session
/// between transactions; see [`PoolerMode::Transaction`](crate::PoolerMode::Transaction) for what changes and what it costs.
///
/// When one server's connections are not enough for a fleet of application instances, a pooler in
/// transaction mode shares a few server sessions among many client connections: a client holds a server
/// session only for the length of a transaction (or of one statement outside a transaction), and its next
/// transaction may run on another. What lives in a *session* then stops working, silently:
///
/// | session state | what goes wrong in transaction mode | what rampart does with [`PoolerMode::Transaction`] |
/// |---|---|---|
/// | `SET statement_timeout` outside a transaction | set on one server session, the statement runs on another, and the setting leaks to whichever client gets that session next | `BEGIN; SET LOCAL statement_timeout = ...; <statement>; COMMIT`, pipelined: the setting lives and dies with the statement's own transaction |
/// | named prepared statements (`prepare_cached`, tokio-postgres's `prepare`) | prepared on one server session, executed on another: `26000 prepared statement "s3" does not exist`, or `42P05 ... already exists` when another process's names collide | statements are sent **unnamed** (tokio-postgres's `query_typed`): parse, bind and execute in one message, nothing left behind |
/// | SQL `PREPARE`, advisory locks, `LISTEN`, temporary tables, `SET` | the same | not used by rampart; don't use them through a transaction pooler (use transaction-scoped forms: `SET LOCAL`, `pg_advisory_xact_lock`) |
///
/// Named protocol-level prepared statements are unsafe through **PgBouncer before 1.21** (Debian 12 ships
/// 1.18) and through 1.21 or later unless `max_prepared_statements` is set above 0; the session `SET` is
/// unsafe through every version. [`PoolerMode::Transaction`] is safe with all of them.
///
/// Unnamed statements need the parameters' types up front. rampart learns them once per SQL text and pool
/// (a `Parse`/`Describe` of a named statement *inside* a transaction, closed before the transaction ends,
/// so the statement never outlives the server session it was made on) and sends every later request as a
/// single `Parse`/`Bind`/`Execute`.
///
/// # What the pool's checks mean behind a pooler
///
/// The socket is to the pooler, not to Postgres, so:
///
/// - **Validation** at checkout (an empty query) proves the pooler answers and could give the client a
///   server session *now*; it does not prove the next transaction gets the same one, and it need not: no
///   state is kept in it. A Postgres restart behind the pooler does not close the client's connections to
///   the pooler, so validation does not fail and rampart's connections stay; the pooler replaces its
///   server connections (tested in `tests/pgbouncer`).
/// - The **keepalive pinger** keeps the link to the pooler alive through NATs and load balancers; each
///   ping borrows a server session for one empty query (and so wakes a suspended serverless compute:
///   leave it off there, as the serverless preset does).
/// - **Max lifetime** and **idle eviction** age rampart's connections to the pooler, which is useful to
///   spread clients over several pooler instances behind a load balancer; server sessions are aged by the
///   pooler (PgBouncer's `server_lifetime`, `server_idle_timeout`). Keep rampart's idle timeout below the
///   pooler's `client_idle_timeout` if that is set.
/// - A cancel request (a deadline passed, the caller gave up) goes to the pooler, which forwards it to the
///   server session the client is using.
/// - `DISCARD ALL` is never needed: rampart leaves no session state behind.
///
/// # The cost
///
/// A request with a deadline (every request through the ready-made stack) runs as `BEGIN; SET LOCAL` +
/// statement + `COMMIT`, pipelined: still one round trip, but three more commands for the server, and
/// an unnamed statement is parsed and planned every time. Measured sequentially on loopback (one caller,
/// `SELECT $1::int`, a loaded 2-core machine, so rough): about 80-110 µs a request straight to Postgres
/// in session mode, 150-250 µs in transaction mode; without a deadline the two are within noise of each
/// other (one unnamed statement against one cached one). Over a real network the round trip dominates
/// and the difference shrinks to the server's work.
///
/// # Limits
///
/// - A statement that cannot run inside a transaction block (`VACUUM`, `CREATE INDEX CONCURRENTLY`,
///   `CREATE DATABASE`) fails with `25001` when it has a deadline; run it on a direct connection.
/// - tokio-postgres looks up *custom* types (enums, composites, extension types such as `citext`) in
///   results through a named statement it caches per connection, which fails through a pooler that does
///   not track prepared statements: cast such columns to a built-in type (`mood::text`), or use PgBouncer
///   1.21+ with `max_prepared_statements`.
/// - rampart leaves no session state behind, but cannot stop other clients of the same pooler from doing
///   so; a pushed-down deadline overrides a leaked `statement_timeout` for its own transaction.
///
/// # The pooler's own errors
///
/// PgBouncer reports its own failures as SQLSTATE `08P01` with a message; [`PgClassifier`](crate::PgClassifier) tells them
/// apart (`server conn crashed?` is an unknown outcome, `no such database` is permanent, the rest are
/// transient).
///
/// ```no_run
/// use rampart::{Query, Stack};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// // PgBouncer in transaction mode on port 6432, or Neon's `-pooler` host, or Supabase's port 6543.
/// let db = Stack::pooler("postgres://app@pgbouncer.internal:6432/app").build()?;
/// let n = db.run(Query::read("SELECT $1::int + 1").bind(41i32)).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PoolerMode {
    /// Postgres itself, or a pooler in session mode: one server session per connection, for as long as
    /// the connection lives. Statements are prepared once per connection and cached, and a deadline is
    /// pushed down as a session `SET statement_timeout`.
    #[default]
    Session,
    /// A pooler in transaction mode (PgBouncer `pool_mode = transaction`, Neon's `-pooler` endpoints,
    /// Supabase's pooler on port 6543): consecutive transactions on one connection may run on different
    /// server sessions. Statements are sent unnamed (no prepared statement outlives its request), and a
    /// deadline is pushed down as `SET LOCAL statement_timeout` inside the statement's own transaction.
    Transaction,
}
