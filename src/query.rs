//! Requests and responses of [`PgService`](crate::PgService).

use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use rampart_layers::classify::Idempotence;
use rampart_layers::deadline::Deadlined;
use tokio::time::Instant;
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, ToSql};

use crate::error::Error;
use crate::param::IntoParam;
use crate::row::{self, FromRow};
use crate::xact::Counts;
use crate::xact::Mark;

/// A bound parameter: any `ToSql` value, shared so that cloning a query for a retry copies no data.
pub type Param = Arc<dyn ToSql + Send + Sync>;

/// One SQL statement with its parameters, whether replaying it is harmless, and its deadline.
///
/// Cloning is cheap (two reference counts), so retry layers clone it per attempt.
///
/// The safe choice is the default: [`Query::write`] (and [`Query::new`]) is **not** idempotent, so after
/// a connection is lost mid-statement it is reported as "outcome unknown" rather than replayed. Mark it
/// idempotent when a replay is harmless: [`Query::read`] for statements that change nothing,
/// [`Query::idempotent`] for writes that are naturally idempotent (`UPDATE ... SET x = 5`), or
/// [`Query::idempotency_key`] for inserts deduplicated by a key (`ON CONFLICT (key) DO UPDATE SET key =
/// EXCLUDED.key RETURNING id`, which answers a replay with the row the first run made; `DO NOTHING`
/// would answer it with no row).
///
/// ```
/// use rampart::Query;
///
/// let signup = Query::write(
///     "INSERT INTO users (email, request_id) VALUES ($1, $2) \
///      ON CONFLICT (request_id) DO UPDATE SET request_id = EXCLUDED.request_id RETURNING id",
/// )
/// .bind("ada@example.com")
/// .bind("req-7f3a")
/// .idempotency_key("req-7f3a");
/// assert!(signup.is_idempotent());
/// assert!(!rampart::Query::write("INSERT INTO audit DEFAULT VALUES").is_idempotent());
/// ```
#[derive(Clone)]
pub struct Query {
    sql: Arc<str>,
    /// `None` until the first parameter is bound: a statement without parameters allocates no list.
    params: Option<Arc<Vec<Param>>>,
    idempotent: bool,
    /// Made with [`Query::read`]: it changes nothing, so whether an attempt ran says nothing about data.
    read: bool,
    idempotency_key: Option<Arc<str>>,
    deadline: Option<Instant>,
    /// The time the caller granted with [`Query::timeout`].
    granted: Option<Duration>,
    exclusive: bool,
    /// A read that must see the caller's own writes: never sent to a replica.
    primary: bool,
    /// What a ready-made stack learns of this request's attempts, shared by its clones (see
    /// [`Tracking`]); `None` outside a stack.
    tracking: Option<Arc<Tracking>>,
}

impl fmt::Debug for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Parameters may hold personal data or secrets: show how many, not what.
        f.debug_struct("Query")
            .field("sql", &self.sql)
            .field("params", &self.params().len())
            .field("idempotent", &self.idempotent)
            .field("idempotency_key", &self.idempotency_key)
            .field("deadline", &self.deadline)
            .field("exclusive", &self.exclusive)
            .field("primary", &self.primary)
            .finish()
    }
}

impl Query {
    /// A statement that is not idempotent (the safe default).
    pub fn new(sql: impl Into<Arc<str>>) -> Self {
        Self {
            sql: sql.into(),
            params: None,
            idempotent: false,
            read: false,
            idempotency_key: None,
            deadline: None,
            granted: None,
            exclusive: false,
            primary: false,
            tracking: None,
        }
    }

    /// A statement that changes nothing (a `SELECT`): replaying it is harmless, so it is idempotent.
    pub fn read(sql: impl Into<Arc<str>>) -> Self {
        let mut query = Self::new(sql).idempotent();
        query.read = true;
        query
    }

    /// A statement that changes data and is not idempotent: never replayed after an unknown outcome.
    pub fn write(sql: impl Into<Arc<str>>) -> Self {
        Self::new(sql)
    }

    /// Binds the next parameter (`$1`, `$2`, ... in order).
    ///
    /// Owned values are moved in; borrowed ones (`&str`, `&[u8]`, `&String`, `Cow`, a `&i64`, a slice
    /// for an array) are copied into an owned value, one allocation for a string or a byte slice: the
    /// query is kept, and may be sent again on a retry, after the caller's borrow has ended. See
    /// [`IntoParam`] for the types accepted; any other `ToSql` type (your own `#[derive(ToSql)]` enum,
    /// the driver's `uuid` or `chrono` types) binds with [`Query::bind_value`].
    ///
    /// ```
    /// fn lookup(email: &str) -> rampart::Query {
    ///     rampart::Query::read("SELECT id FROM users WHERE email = $1").bind(email)
    /// }
    /// assert_eq!(lookup("ada@example.com").params().len(), 1);
    /// ```
    pub fn bind(self, value: impl IntoParam) -> Self {
        self.bind_param(Arc::new(value.into_owned()))
    }

    /// Binds any owned `ToSql` value as the next parameter: for types [`IntoParam`] does not list.
    pub fn bind_value<T: ToSql + Send + Sync + 'static>(self, value: T) -> Self {
        self.bind_param(Arc::new(value))
    }

    /// Binds an already shared parameter.
    pub fn bind_param(mut self, value: Param) -> Self {
        Arc::make_mut(self.params.get_or_insert_default()).push(value);
        self
    }

    /// Declares that running this statement twice has the same effect as once.
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// Declares that the statement is deduplicated by `key` (for example an `ON CONFLICT (request_id) DO
    /// UPDATE SET request_id = EXCLUDED.request_id RETURNING id` insert binding the key, which returns
    /// the row on the first run and on a replay), so replaying it is harmless. The key is shown in logs; the
    /// statement itself must use it — rampart cannot check that.
    pub fn idempotency_key(mut self, key: impl Into<Arc<str>>) -> Self {
        self.idempotency_key = Some(key.into());
        self.idempotent = true;
        self
    }

    /// Gives the query its own overall deadline, `timeout` from now. The service pushes what is left of it
    /// down as `statement_timeout`. In a ready-made stack it overrides the stack's deadline and attempt
    /// timeout, longer or shorter: those are defaults for queries that say nothing, and a query granted
    /// 60 s may run one 60 s attempt ([`Deadlined::granted`]; a bare [`DeadlineLayer`] treats it the same).
    ///
    /// [`DeadlineLayer`]: rampart_layers::deadline::DeadlineLayer
    ///
    /// In a multiplexed service ([`MuxConfig`](crate::MuxConfig)) a timeout longer than the shared connections' statement
    /// timeout sends the query to an exclusive connection: granting more time says it may be slow.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        // A time too long to add to the clock is about 30 years, as tokio does for such durations.
        let now = Instant::now();
        self.deadline = Some(
            now.checked_add(timeout)
                .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30)),
        );
        self.granted = Some(timeout);
        self
    }

    /// Runs a read on the primary even when the stack has replicas ([`StackBuilder::replicas`](crate::StackBuilder::replicas)):
    /// for a read that must see the caller's own write, which a replica shows only once it has replayed
    /// it (its replication lag). Writes and transactions always run on the primary.
    pub fn primary(mut self) -> Self {
        self.primary = true;
        self
    }

    /// Runs the statement on a connection of its own, never on a shared one of a multiplexed service
    /// ([`MuxConfig`](crate::MuxConfig)): for a statement that may be slow, or that uses session state rampart does not
    /// recognise from its first keyword (a function that sets a session variable, say). Without
    /// multiplexing every statement has a connection of its own anyway.
    pub fn exclusive(mut self) -> Self {
        self.exclusive = true;
        self
    }

    /// Whether the statement must run on a connection of its own ([`Query::exclusive`]).
    pub fn is_exclusive(&self) -> bool {
        self.exclusive
    }

    /// The time granted with [`Query::timeout`], if any.
    pub fn granted(&self) -> Option<Duration> {
        self.granted
    }

    /// Whether it was made with [`Query::read`]: it changes nothing.
    /// Whether a read must run on the primary ([`Query::primary`]).
    pub(crate) fn wants_primary(&self) -> bool {
        self.primary
    }

    pub(crate) fn is_read(&self) -> bool {
        self.read
    }

    /// Starts tracking the request's attempts (see [`Tracking`]); `resolve`: where the stack counts the
    /// lost replies of plain writes it resolves, if it does.
    pub(crate) fn track(&mut self, resolve: Option<&Arc<Counts>>) -> Arc<Tracking> {
        self.tracking
            .get_or_insert_with(|| Arc::new(Tracking::new(resolve.cloned())))
            .clone()
    }

    /// The tracking, if this request carries it.
    pub(crate) fn tracking(&self) -> Option<&Arc<Tracking>> {
        self.tracking.as_ref()
    }

    /// The statement is about to be written to the server: from now on it may run.
    pub(crate) fn mark_sent(&self) {
        if let Some(t) = &self.tracking {
            t.sent.store(true, Ordering::Release);
        }
    }

    /// The SQL text, shared.
    pub(crate) fn shared_sql(&self) -> Arc<str> {
        self.sql.clone()
    }

    /// The SQL text.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The bound parameters.
    pub fn params(&self) -> &[Param] {
        self.params.as_deref().map_or(&[], Vec::as_slice)
    }

    /// Whether replaying this query is harmless.
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }

    /// The idempotency key, if one was given.
    pub fn key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }
}

impl Idempotence for Query {
    fn is_idempotent(&self) -> bool {
        self.idempotent
    }
}

impl Deadlined for Query {
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = Some(deadline);
    }

    fn granted(&self) -> Option<Duration> {
        self.granted
    }
}

/// What a ready-made stack learns of one request's attempts, shared by the clones the retry layer sends.
#[derive(Debug, Default)]
pub(crate) struct Tracking {
    /// The current attempt's statement may be on the server without an answer yet: set by the service as
    /// it sends the statement, cleared when an attempt ends with an answer, read when an attempt timeout
    /// or the deadline cuts it.
    sent: AtomicBool,
    /// Attempts started.
    attempts: AtomicU32,
    /// Some attempt of this request that changes data ended with its outcome unknown: it may have been
    /// applied, whatever later attempts report.
    unknown: AtomicBool,
    /// The last failed attempt's error, as shown (for a deadline error, which ends the request while the
    /// retry layer holds that error).
    last_failure: Mutex<Option<String>>,
    /// Where the stack counts the lost replies of plain writes it resolves ([`crate::resolve`]); `None`:
    /// it does not resolve them.
    resolve: Option<Arc<Counts>>,
    /// Whether the current attempt runs as a marked write, and how far it got.
    marked: Mutex<Marked>,
}

impl Tracking {
    /// Tracking for a stack that resolves lost replies of plain writes (counting them in `resolve`), or
    /// not.
    pub(crate) fn new(resolve: Option<Arc<Counts>>) -> Self {
        Self {
            resolve,
            ..Self::default()
        }
    }

    /// A new attempt starts: nothing of it is sent yet.
    pub(crate) fn attempt(&self) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        self.sent.store(false, Ordering::Release);
        *crate::sync::lock(&self.marked) = Marked::No;
    }

    /// Whether the stack resolves lost replies of plain writes.
    pub(crate) fn resolves(&self) -> bool {
        self.resolve.is_some()
    }

    /// The current attempt runs as a marked write: its opening is about to be written.
    pub(crate) fn opening(&self, returns_rows: bool) {
        *crate::sync::lock(&self.marked) = Marked::Opening { returns_rows };
    }

    /// The marked transaction's `COMMIT` is about to be written.
    pub(crate) fn committing(&self, mark: Mark) {
        let mut marked = crate::sync::lock(&self.marked);
        let returns_rows = marked.returns_rows();
        *marked = Marked::Committing { returns_rows, mark };
    }

    /// How far the current attempt's marked write got.
    pub(crate) fn marked(&self) -> Marked {
        crate::sync::lock(&self.marked).clone()
    }

    /// A lost reply of this request was looked up, with this answer (`committed`, `aborted`, `unknown`).
    pub(crate) fn resolved(&self, label: &'static str) {
        if let Some(counts) = &self.resolve {
            counts.record(label);
        }
    }

    /// The attempt ended with an answer: nothing of it is left running.
    pub(crate) fn answered(&self) {
        self.sent.store(false, Ordering::Release);
    }

    /// The attempt failed with `error`.
    pub(crate) fn failed(&self, error: &dyn std::fmt::Display) {
        *crate::sync::lock(&self.last_failure) = Some(error.to_string());
    }

    /// An attempt ended with its outcome unknown.
    pub(crate) fn outcome_unknown(&self) {
        self.unknown.store(true, Ordering::Release);
    }

    pub(crate) fn was_ever_unknown(&self) -> bool {
        self.unknown.load(Ordering::Acquire)
    }

    pub(crate) fn was_sent(&self) -> bool {
        self.sent.load(Ordering::Acquire)
    }

    pub(crate) fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::Relaxed)
    }

    pub(crate) fn last_failure(&self) -> Option<String> {
        crate::sync::lock(&self.last_failure).clone()
    }
}

/// How far an attempt's marked write got (see [`crate::resolve`]).
#[derive(Debug, Clone, Default)]
pub(crate) enum Marked {
    /// Not a marked write.
    #[default]
    No,
    /// Its opening was sent; `COMMIT` was not: it cannot commit.
    Opening { returns_rows: bool },
    /// `COMMIT` was sent for the transaction `mark`.
    Committing { returns_rows: bool, mark: Mark },
}

impl Marked {
    /// Whether the statement returns rows (which a lost reply loses).
    pub(crate) fn returns_rows(&self) -> bool {
        match self {
            Marked::No => false,
            Marked::Opening { returns_rows } | Marked::Committing { returns_rows, .. } => {
                *returns_rows
            }
        }
    }

    /// The transaction whose `COMMIT` was sent.
    pub(crate) fn mark(&self) -> Option<&Mark> {
        match self {
            Marked::Committing { mark, .. } => Some(mark),
            _ => None,
        }
    }
}

/// What a statement returned: its rows (empty for statements without `RETURNING`) and the number of
/// rows it affected.
///
/// A write whose reply was lost after it committed, in a stack that resolves lost replies, is a
/// `Response` too: [`reply_lost`](Response::reply_lost) says so, and it has no rows and no count (a
/// statement that returns rows is an [`ErrorKind::ReplyLost`](crate::ErrorKind::ReplyLost) error
/// instead, so that lost rows are never taken for no rows).
#[derive(Debug, Default)]
pub struct Response {
    rows: Vec<Row>,
    rows_affected: u64,
    reply_lost: bool,
}

impl Response {
    pub(crate) fn new(rows: Vec<Row>, rows_affected: u64) -> Self {
        Self {
            rows,
            rows_affected,
            reply_lost: false,
        }
    }

    /// A write that was applied, whose reply (and so its affected-row count) was lost.
    pub(crate) fn applied_reply_lost() -> Self {
        Self {
            rows: Vec::new(),
            rows_affected: 0,
            reply_lost: true,
        }
    }

    /// `true` when the write was applied for certain — the server said its transaction committed — but
    /// its reply was lost with the connection: [`rows_affected`](Response::rows_affected) is then not
    /// known (0). See [`crate::Stack`] on resolving lost replies.
    pub fn reply_lost(&self) -> bool {
        self.reply_lost
    }

    /// The rows returned.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// The rows returned, owned.
    pub fn into_rows(self) -> Vec<Row> {
        self.rows
    }

    /// The first row, if any.
    pub fn first(&self) -> Option<&Row> {
        self.rows.first()
    }

    /// The one row, mapped (see [`FromRow`]): an [`ErrorKind::RowCount`](crate::ErrorKind::RowCount)
    /// error if there are zero or several, [`ErrorKind::Decode`](crate::ErrorKind::Decode) if it does
    /// not map.
    ///
    /// ```no_run
    /// # async fn demo(db: rampart::Db) -> Result<(), rampart::Error> {
    /// let (id, email): (i64, String) = db
    ///     .run(rampart::Query::read("SELECT id, email FROM users WHERE id = $1").bind(7i64))
    ///     .await?
    ///     .one()?;
    /// # let _ = (id, email); Ok(()) }
    /// ```
    pub fn one<T: FromRow>(&self) -> Result<T, Error> {
        match self.rows.as_slice() {
            [row] => row::decode(row),
            rows => Err(row::row_count("one row", rows.len())),
        }
    }

    /// The row if there is one, mapped: `None` for none, an
    /// [`ErrorKind::RowCount`](crate::ErrorKind::RowCount) error for several.
    pub fn opt<T: FromRow>(&self) -> Result<Option<T>, Error> {
        match self.rows.as_slice() {
            [] => Ok(None),
            [row] => row::decode(row).map(Some),
            rows => Err(row::row_count("at most one row", rows.len())),
        }
    }

    /// The single column of the one row (`SELECT count(*)`, `INSERT ... RETURNING id`): an error if
    /// there are zero or several rows, or the row has another number of columns or another type.
    pub fn scalar<T: for<'a> FromSql<'a>>(&self) -> Result<T, Error> {
        match self.rows.as_slice() {
            [row] => row::scalar(row),
            rows => Err(row::row_count("one row", rows.len())),
        }
    }

    /// Every row, mapped; the first that does not map is the error.
    pub fn all<T: FromRow>(&self) -> Result<Vec<T>, Error> {
        self.rows.iter().map(row::decode).collect()
    }

    /// Rows inserted, updated, deleted, or selected, as the server's command tag says (0, not known, when
    /// the [reply was lost](Response::reply_lost)).
    pub fn rows_affected(&self) -> u64 {
        self.rows_affected
    }
}
