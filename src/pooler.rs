//! Behind a pooler in transaction mode: the statement sent unnamed, with its deadline in its own transaction.
//!
//! What users read is on [`PoolerMode`] (the module is private: the flat list in `lib.rs` is the one public path).

use rampart_layers::deadline::Deadlined;
use tokio::time::Instant;

use crate::error::Error;
use crate::exec::{set_local_timeout, unnamed};
use crate::outcome::{Link, Stage, connection_gone, failure};
use crate::pool::{InFlight, Pool};
use crate::query::{Query, Response};

/// Runs `query` on `in_flight`'s connection without leaving anything in the server session: see the
/// [module docs](self). Returns the connection to the pool (or discards it) as the outcome says.
pub(crate) async fn run(
    pool: &Pool,
    mut in_flight: InFlight,
    query: &Query,
) -> Result<Response, Error> {
    let sql = query.sql();
    let params = query.params();
    let remaining = query
        .deadline()
        .map(|d| d.saturating_duration_since(Instant::now()));
    let cache = pool.param_types();
    let known = cache.get(sql);

    let client: &tokio_postgres::Client = in_flight.conn().client();
    let (types, begin) = match (known, remaining) {
        // No deadline and the types known: one unnamed statement, nothing else.
        (Some(types), None) => {
            query.mark_sent();
            let outcome = unnamed(client, sql, params, &types).await;
            return in_flight.finish(outcome, Stage::Sent);
        }
        (known, remaining) => {
            let begin = match remaining {
                Some(_) => format!("BEGIN; {}", set_local_timeout(remaining)),
                None => "BEGIN".to_owned(),
            };
            match known {
                // `begin` is `None` once sent (while the types were learned).
                Some(types) => (types, Some(begin)),
                None => {
                    // First time this SQL is seen: learn its types inside the transaction.
                    let (began, types) = futures_util::future::join(
                        client.batch_execute(&begin),
                        cache.learn(client, sql),
                    )
                    .await;
                    match began.and(types) {
                        Ok(types) => (types, None),
                        Err(e) => {
                            // Nothing of the statement ran; end the (aborted) transaction.
                            let rolled_back = connection_gone(&e)
                                || client.batch_execute("ROLLBACK").await.is_ok();
                            let failed = failure(e, Stage::NotSent, Link::Own, pool.server());
                            in_flight.release(failed.gone || !rolled_back);
                            return Err(failed.error);
                        }
                    }
                }
            }
        }
    };
    let begin = async {
        match &begin {
            Some(sql) => client.batch_execute(sql).await,
            None => Ok(()),
        }
    };
    // One round trip: BEGIN (if not sent yet), the statement and COMMIT, pipelined.
    query.mark_sent();
    let (began, outcome, committed) = futures_util::future::join3(
        begin,
        unnamed(client, sql, params, &types),
        client.batch_execute("COMMIT"),
    )
    .await;
    // A failure of any of the three can end the connection, not only the one reported.
    let gone = [
        began.as_ref().err(),
        outcome.as_ref().err(),
        committed.as_ref().err(),
    ]
    .into_iter()
    .flatten()
    .any(connection_gone);
    // The first failure is the one to report: after a failed BEGIN or statement, COMMIT only rolls back.
    let outcome = match (began, outcome) {
        (Err(e), _) | (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(rows)) => committed.map(|()| rows),
    };
    match outcome {
        Ok(response) if !gone => in_flight.finish(Ok(response), Stage::Sent),
        Ok(response) => {
            in_flight.release(true);
            Ok(response)
        }
        Err(e) => {
            let failed = failure(e, Stage::Sent, Link::Own, pool.server());
            in_flight.release(failed.gone || gone);
            Err(failed.error)
        }
    }
}
