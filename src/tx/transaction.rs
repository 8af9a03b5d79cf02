//! [`Tx`]: a transaction in progress, as a transactor's closure sees it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

use crate::cache::SqlCache;
use crate::error::Error;
use crate::exec::{ParamTypes, typed};
use crate::outcome::{Link, Stage, failure};
use crate::pool::prepare_cached;
use crate::sync::lock;
use crate::xact::{Flavour, Mark, mark_if_assigned_sql, mark_sql, parse_mark};

/// A transaction in progress, handed to the closure of [`Transactor::run`](crate::Transactor::run). Its methods return
/// [`Error`]s classified for a transaction: a lost connection inside it is safe to re-run.
pub struct Tx<'a> {
    pub(super) inner: deadpool_postgres::Transaction<'a>,
    pub(super) server: &'a str,
    /// The connection's statement cache.
    pub(super) statements: &'a SqlCache<Statement>,
    /// Behind a transaction pooler: the pool's parameter types, for unnamed statements.
    pub(super) unnamed: Option<&'a ParamTypes>,
    /// `SET LOCAL statement_timeout`, still to be sent (pipelined with the first statement).
    pub(super) prelude: Mutex<Option<String>>,
    /// For a marked transaction, until its id is read: the server's functions for it.
    pub(super) marking: Mutex<Option<Flavour>>,
    /// Where the id is kept once read (see `RunState` in `mod.rs`).
    pub(super) mark: &'a Mutex<Option<Option<Mark>>>,
    /// A statement's failure ended the connection.
    pub(super) gone: AtomicBool,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// Parameters of a statement.
pub type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

impl Tx<'_> {
    fn err(&self, e: tokio_postgres::Error) -> Error {
        let failed = failure(e, Stage::InTransaction, Link::Own, self.server);
        if failed.gone {
            self.gone.store(true, Ordering::Relaxed);
        }
        failed.error
    }

    /// Runs `statement`, with the pending `SET LOCAL` pipelined in front of it the first time.
    /// Sends `statement`, with what must go first pipelined before it: the prelude (`SET LOCAL`) and,
    /// for a marked transaction, the select of its id (one round trip for all).
    async fn send<T>(
        &self,
        statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, Error> {
        let prelude = lock(&self.prelude).take();
        let marking = lock(&self.marking).take();
        match (prelude, marking) {
            (None, None) => statement.await.map_err(|e| self.err(e)),
            (Some(set), None) => {
                let (set, result) =
                    futures_util::future::join(self.inner.batch_execute(&set), statement).await;
                set.map_err(|e| self.err(e))?;
                result.map_err(|e| self.err(e))
            }
            (prelude, Some(flavour)) => {
                let head = match prelude {
                    Some(set) => format!("{set}; {}", mark_sql(flavour)),
                    None => mark_sql(flavour).to_owned(),
                };
                let (head, result) =
                    futures_util::future::join(self.inner.simple_query(&head), statement).await;
                let replies = head.map_err(|e| self.err(e))?;
                *lock(self.mark) = Some(parse_mark(&replies, flavour));
                result.map_err(|e| self.err(e))
            }
        }
    }

    /// Before `COMMIT` of a marked transaction (`marking`) whose id was not read with a statement (the
    /// closure used only [`Tx::client`]): read it now, if one was assigned — one round trip, in that
    /// case only.
    pub(super) async fn before_commit(&self) -> Result<(), Error> {
        let Some(flavour) = lock(&self.marking).take() else {
            return Ok(());
        };
        let replies = self
            .inner
            .simple_query(mark_if_assigned_sql(flavour))
            .await
            .map_err(|e| self.err(e))?;
        *lock(self.mark) = Some(parse_mark(&replies, flavour));
        Ok(())
    }

    /// Runs a statement and returns its rows (statements are prepared once per connection and cached;
    /// behind a transaction pooler they are sent unnamed).
    pub async fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        self.send(async {
            match self.unnamed {
                Some(cache) => {
                    let types = cache.learn(&*self.inner, sql).await?;
                    let params = typed(params.iter().copied(), &types);
                    self.inner.query_typed(sql, &params).await
                }
                None => {
                    let statement = prepare_cached(&*self.inner, self.statements, sql).await?;
                    self.inner.query(&statement, params).await
                }
            }
        })
        .await
    }

    /// Runs a statement that returns exactly one row.
    pub async fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row, Error> {
        self.send(async {
            match self.unnamed {
                Some(cache) => {
                    let types = cache.learn(&*self.inner, sql).await?;
                    let params = typed(params.iter().copied(), &types);
                    self.inner.query_typed_one(sql, &params).await
                }
                None => {
                    let statement = prepare_cached(&*self.inner, self.statements, sql).await?;
                    self.inner.query_one(&statement, params).await
                }
            }
        })
        .await
    }

    /// Runs a statement and returns the number of rows it affected.
    pub async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, Error> {
        self.send(async {
            match self.unnamed {
                Some(cache) => {
                    let types = cache.learn(&*self.inner, sql).await?;
                    let params = typed(params.iter().copied(), &types);
                    self.inner.execute_typed(sql, &params).await
                }
                None => {
                    let statement = prepare_cached(&*self.inner, self.statements, sql).await?;
                    self.inner.execute(&statement, params).await
                }
            }
        })
        .await
    }

    /// The underlying tokio-postgres transaction, for anything else ([`crate::postgres`] has its types).
    /// Errors from it are yours to map; behind a transaction pooler, prepare nothing on it: see
    /// [`PoolerMode::Transaction`](crate::PoolerMode::Transaction).
    pub fn client(&self) -> &tokio_postgres::Transaction<'_> {
        &self.inner
    }
}

/// The boxed future a transaction closure returns: `|tx| Box::pin(async move { ... })`.
pub type TxFuture<'t, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 't>>;
