//! Streamed reads: rows handed to the caller as they arrive, in bounded memory.
//!
//! A [`RowStream`] is what [`Db::stream`](crate::Db::stream) returns. Its resilience is honest: the
//! request is retried (with the stack's retry policy, attempt timeout and deadline) only until its first
//! row has been read, because until then nothing has reached the caller; once the caller holds a row, a
//! failure is an error item of the stream, never a silent restart (the caller would see rows twice).
//! The stream keeps its pooled connection until it ends; dropped early, its query is cancelled on the
//! server and the connection discarded, like any abandoned request. Streams always take a pooled
//! connection of their own, multiplexed stack or not, and run with no `statement_timeout`: after the
//! first row the caller sets the pace.
//!
//! Memory is bounded by tokio-postgres's own flow control: the connection reads the next rows from the
//! socket only as the stream is polled.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::Stream;
use tokio_postgres::Row;

use crate::error::{Error, ErrorKind};
use crate::exec::{self, statement_timeout_for};
use crate::outcome::{Stage, closed_before_send};
use crate::pool::{InFlight, Pool};
use crate::query::Query;
use rampart_layers::Classification;

/// Rows of a streamed read, in order; see [`Db::stream`](crate::Db::stream). An error item ends it.
pub struct RowStream {
    first: Option<Row>,
    rows: Pin<Box<tokio_postgres::RowStream>>,
    /// The connection, until the stream ends (then released, or discarded if its link failed).
    in_flight: Option<InFlight>,
    server: String,
}

impl std::fmt::Debug for RowStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowStream")
            .field("server", &self.server)
            .field("open", &self.in_flight.is_some())
            .finish_non_exhaustive()
    }
}

impl Stream for RowStream {
    type Item = Result<Row, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(row) = self.first.take() {
            return Poll::Ready(Some(Ok(row)));
        }
        let Some(_) = self.in_flight else {
            return Poll::Ready(None);
        };
        let next = ready!(self.rows.as_mut().poll_next(cx));
        let in_flight = self.in_flight.take();
        Poll::Ready(match (next, in_flight) {
            (Some(Ok(row)), in_flight) => {
                self.in_flight = in_flight;
                Some(Ok(row))
            }
            (None, Some(in_flight)) => {
                in_flight.release(false);
                None
            }
            (Some(Err(e)), Some(in_flight)) => {
                // After rows were handed out: an error of the stream, never a restart.
                Some(Err(in_flight.fail(e, Stage::Sent)))
            }
            (_, None) => None,
        })
    }
}

/// One attempt at a streamed read on `pool`: a connection, the statement, and its first row. Until the
/// first row is read nothing has reached the caller, so the attempt may be retried like any other.
pub(crate) async fn open(pool: Pool, query: Query) -> Result<RowStream, Error> {
    let conn = pool.get_within(None).await?;
    let mut in_flight = InFlight::new(pool.clone(), conn);
    if in_flight.conn().client().is_closed() {
        in_flight.release(true);
        return Err(closed_before_send(pool.server()));
    }
    if pool.pg_config().pooler_mode() == crate::PoolerMode::Transaction {
        in_flight.release(false);
        return Err(Error::new(
            ErrorKind::InvalidRequest,
            Classification::Permanent,
            "a streamed read needs its own server session, which a pooler in transaction mode does not \
             keep between statements; use run",
        ));
    }
    let statement = match in_flight.conn().prepare(query.sql()).await {
        Ok(s) => s,
        Err(e) => return Err(in_flight.fail(e, Stage::NotSent)),
    };
    // No statement_timeout: after the first row the caller sets the pace.
    if let Some(ms) = statement_timeout_for(None, in_flight.conn().statement_timeout_ms()) {
        let set = format!("SET statement_timeout = {ms}");
        if let Err(e) = in_flight.conn().client().simple_query(&set).await {
            return Err(in_flight.fail(e, Stage::NotSent));
        }
        in_flight.conn().set_statement_timeout_ms(ms);
    }
    query.mark_sent();
    let opened = exec::raw(in_flight.conn().client(), &statement, query.params()).await;
    let mut rows = match opened {
        Ok(rows) => Box::pin(rows),
        Err(e) => return Err(in_flight.fail(e, Stage::Sent)),
    };
    let first = match futures_util::StreamExt::next(&mut rows).await {
        Some(Ok(row)) => Some(row),
        Some(Err(e)) => return Err(in_flight.fail(e, Stage::Sent)),
        None => None,
    };
    let server = pool.server().to_owned();
    let in_flight = match first {
        Some(_) => Some(in_flight),
        None => {
            in_flight.release(false);
            None
        }
    };
    Ok(RowStream {
        first,
        rows,
        in_flight,
        server,
    })
}

/// The service the stream's retry layer calls: one attempt at opening a stream.
#[derive(Clone)]
pub(crate) struct OpenStream {
    pool: Pool,
}

impl OpenStream {
    pub(crate) fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

impl tower::Service<Query> for OpenStream {
    type Response = RowStream;
    type Error = Error;
    type Future = futures_util::future::BoxFuture<'static, Result<RowStream, Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, query: Query) -> Self::Future {
        Box::pin(open(self.pool.clone(), query))
    }
}
