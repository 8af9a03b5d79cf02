//! How a statement is sent on a connection: prepared and cached, or unnamed with its parameter types;
//! with the deadline pushed down as `statement_timeout`. Below every path that runs statements (the
//! pooled service, the transaction-pooler mode, the multiplexer, the transactor); it knows nothing of
//! pools, routing or retries.

use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, GenericClient, Row, Statement};

use crate::cache::SqlCache;
use crate::query::{Param, Response};

/// Slack added above a pushed-down `statement_timeout`, so the session setting is reused across
/// requests with similar deadlines instead of being set for every one.
fn slack(remaining_ms: u64) -> u64 {
    (remaining_ms / 5).max(100)
}

/// The longest `statement_timeout` Postgres accepts, in milliseconds (an `int`): about 24.8 days.
const MAX_STATEMENT_TIMEOUT_MS: u64 = i32::MAX as u64;

/// The statement timeout to set for a request with `remaining` time, or `None` if the session's current
/// setting `current_ms` already fits (at least the remaining time, at most remaining plus slack). Never
/// more than Postgres accepts: a longer deadline is left to the client side past that.
pub(crate) fn statement_timeout_for(remaining: Option<Duration>, current_ms: u64) -> Option<u64> {
    match remaining {
        None => (current_ms != 0).then_some(0),
        Some(remaining) => {
            let want = u64::try_from(remaining.as_millis())
                .unwrap_or(u64::MAX)
                .clamp(1, MAX_STATEMENT_TIMEOUT_MS);
            let most = want
                .saturating_add(slack(want))
                .min(MAX_STATEMENT_TIMEOUT_MS);
            let fits = current_ms >= want && current_ms <= most;
            (!fits).then_some(
                want.saturating_add(slack(want) / 2)
                    .min(MAX_STATEMENT_TIMEOUT_MS),
            )
        }
    }
}

/// `SET LOCAL statement_timeout` for a transaction with `remaining` time (0: none).
pub(crate) fn set_local_timeout(remaining: Option<Duration>) -> String {
    let ms = remaining
        .and_then(|r| statement_timeout_for(Some(r), 0))
        .unwrap_or(0);
    format!("SET LOCAL statement_timeout = {ms}")
}

fn as_sql(params: &[Param]) -> impl ExactSizeIterator<Item = &(dyn ToSql + Sync)> {
    params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync))
}

/// Runs a prepared statement on `client` and collects its rows and affected-row count.
pub(crate) async fn prepared(
    client: &Client,
    statement: &Statement,
    params: &[Param],
) -> Result<Response, tokio_postgres::Error> {
    let stream = client.query_raw(statement, as_sql(params)).await?;
    futures_util::pin_mut!(stream);
    let rows: Vec<Row> = stream.as_mut().try_collect().await?;
    Ok(Response::new(rows, stream.rows_affected().unwrap_or(0)))
}

/// Starts a prepared statement on `client`: its rows as they arrive.
pub(crate) async fn raw(
    client: &Client,
    statement: &Statement,
    params: &[Param],
) -> Result<tokio_postgres::RowStream, tokio_postgres::Error> {
    client.query_raw(statement, as_sql(params)).await
}

/// Runs `sql` as an unnamed statement (parse, bind and execute in one message, nothing left in the
/// session), with parameters of the given `types`.
pub(crate) async fn unnamed(
    client: &Client,
    sql: &str,
    params: &[Param],
    types: &[Type],
) -> Result<Response, tokio_postgres::Error> {
    let stream = client
        .query_typed_raw(sql, typed(as_sql(params), types))
        .await?;
    futures_util::pin_mut!(stream);
    let rows: Vec<Row> = stream.as_mut().try_collect().await?;
    Ok(Response::new(rows, stream.rows_affected().unwrap_or(0)))
}

/// `params` paired with `types`, as `query_typed` takes them. A count mismatch is left for tokio-postgres
/// to report.
pub(crate) fn typed<'a>(
    params: impl IntoIterator<Item = &'a (dyn ToSql + Sync)>,
    types: &[Type],
) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
    let mut types = types.iter();
    params
        .into_iter()
        .map(|p| (p, types.next().cloned().unwrap_or(Type::UNKNOWN)))
        .collect()
}

/// The parameter types of each SQL text, learned once per pool, so later requests are sent unnamed in
/// one message. Shared by every connection of the pool: types depend on the SQL and the schema, not on
/// the server session.
#[derive(Debug, Default)]
pub(crate) struct ParamTypes {
    /// The parameter types, and whether the statement returns rows.
    cache: SqlCache<(Arc<[Type]>, bool)>,
}

impl ParamTypes {
    pub(crate) fn get(&self, sql: &str) -> Option<Arc<[Type]>> {
        self.cache.get(sql).map(|(types, _)| types)
    }

    /// Whether `sql`, once learned, returns rows (has result columns).
    pub(crate) fn returns_rows(&self, sql: &str) -> Option<bool> {
        self.cache.get(sql).map(|(_, rows)| rows)
    }

    /// The parameter types of `sql`, from the cache or by preparing it on `client`, which must be inside
    /// a transaction: the named statement is closed (its `Close` is queued when it is dropped here)
    /// before the transaction ends, so it never outlives the server session it was made on.
    pub(crate) async fn learn<C: GenericClient>(
        &self,
        client: &C,
        sql: &str,
    ) -> Result<Arc<[Type]>, tokio_postgres::Error> {
        if let Some(types) = self.get(sql) {
            return Ok(types);
        }
        let statement = client.prepare(sql).await?;
        let types: Arc<[Type]> = statement.params().into();
        let returns_rows = !statement.columns().is_empty();
        self.cache.insert(sql.into(), (types.clone(), returns_rows));
        Ok(types)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_timeout_is_set_only_when_the_session_setting_does_not_fit() {
        // No deadline: clear a leftover setting, leave a clear one alone.
        assert_eq!(statement_timeout_for(None, 0), None);
        assert_eq!(statement_timeout_for(None, 900), Some(0));
        // A deadline: set remaining plus half the slack...
        assert_eq!(
            statement_timeout_for(Some(Duration::from_millis(1000)), 0),
            Some(1100)
        );
        // ...and keep it while it still fits the next requests' remaining time.
        assert_eq!(
            statement_timeout_for(Some(Duration::from_millis(990)), 1100),
            None
        );
        assert_eq!(
            statement_timeout_for(Some(Duration::from_millis(2000)), 1100),
            Some(2200)
        );
        assert_eq!(
            statement_timeout_for(Some(Duration::from_millis(300)), 1100),
            Some(350)
        );
        // Never past what Postgres accepts, however long the time left.
        assert_eq!(
            statement_timeout_for(Some(Duration::MAX), 0),
            Some(MAX_STATEMENT_TIMEOUT_MS)
        );
        assert_eq!(
            statement_timeout_for(
                Some(Duration::from_secs(30 * 86_400)),
                MAX_STATEMENT_TIMEOUT_MS
            ),
            None
        );
    }
}
