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
use crate::resolve::{self, Opening};
use crate::session::Effect;
use crate::xact::{begin_sql, parse_mark};

/// Runs `query` on `in_flight`'s connection without leaving anything in the server session: see the
/// [module docs](self). Returns the connection to the pool (or discards it) as the outcome says. A plain
/// write of a stack that resolves lost replies runs marked ([`crate::resolve`]): its transaction's
/// opening reads its id, and `COMMIT` follows once that is in.
pub(crate) async fn run(
    pool: &Pool,
    mut in_flight: InFlight,
    query: &Query,
    effect: Effect,
) -> Result<Response, Error> {
    let sql = query.sql();
    let params = query.params();
    let remaining = query
        .deadline()
        .map(|d| d.saturating_duration_since(Instant::now()));
    let cache = pool.param_types();
    let known = cache.get(sql);
    let wanted = resolve::applies(query, effect);
    let flavour = match resolve::marking(pool, in_flight.conn().client(), wanted).await {
        Ok(flavour) => flavour,
        Err(e) => return in_flight.finish(Err(e), Stage::NotSent),
    };
    let marked = flavour.is_some();

    let client: &tokio_postgres::Client = in_flight.conn().client();
    let set_local = match remaining {
        Some(_) => format!("{}; ", set_local_timeout(remaining)),
        None => String::new(),
    };
    let begin = match flavour {
        Some(flavour) => begin_sql(flavour, remaining, &set_local),
        None => format!("BEGIN; {set_local}"),
    };
    let (types, begin, mark) = match (known, remaining) {
        // No deadline and the types known: one unnamed statement, nothing else.
        (Some(types), None) if !marked => {
            query.mark_sent();
            let outcome = unnamed(client, sql, params, &types).await;
            return in_flight.finish(outcome, Stage::Sent);
        }
        // `begin` is `None` once sent (while the types were learned).
        (Some(types), _) => (types, Some(begin), None),
        (None, _) => {
            // First time this SQL is seen: learn its types inside the transaction (a marked one reads
            // its id in the same reply).
            let (began, types) =
                futures_util::future::join(client.simple_query(&begin), cache.learn(client, sql))
                    .await;
            match began.and_then(|replies| types.map(|types| (replies, types))) {
                Ok((replies, types)) => {
                    let mark = flavour.and_then(|flavour| parse_mark(&replies, flavour));
                    if marked && mark.is_none() {
                        in_flight.release(true);
                        return Err(resolve::no_mark(pool.server()));
                    }
                    (types, None, mark)
                }
                Err(e) => {
                    // Nothing of the statement ran; end the (aborted) transaction.
                    let rolled_back =
                        connection_gone(&e) || client.batch_execute("ROLLBACK").await.is_ok();
                    let failed = failure(e, Stage::NotSent, Link::Own, pool.server());
                    in_flight.release(failed.gone || !rolled_back);
                    return Err(failed.error);
                }
            }
        }
    };
    query.mark_sent();
    if let Some(flavour) = flavour {
        let returns_rows = cache.returns_rows(sql).unwrap_or(true);
        let opening = match (mark, begin.as_deref()) {
            (Some(mark), _) => Opening::Known(mark),
            (None, Some(begin)) => Opening::Simple(begin),
            (None, None) => {
                in_flight.release(true);
                return Err(resolve::no_mark(pool.server()));
            }
        };
        let (head, outcome) = resolve::commit_after_mark(
            client,
            query,
            opening,
            flavour,
            returns_rows,
            unnamed(client, sql, params, &types),
        )
        .await;
        return resolve::finish_marked(pool, in_flight, query, head, outcome, false).await;
    }
    let begin = async {
        match &begin {
            Some(sql) => client.batch_execute(sql).await,
            None => Ok(()),
        }
    };
    // One round trip: BEGIN (if not sent yet), the statement and COMMIT, pipelined.
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
