//! A connection in use by one request, and what becomes of it when the request ends.

use crate::error::Error;
use crate::outcome::{Failure, Link, Stage, failure, takes_no_writes};

use super::{Pool, PooledConn};

/// A connection in use by one request. If dropped before it is [released](InFlight::release) — the
/// caller gave up, or a timeout above fired — it asks the server to cancel whatever it is running for the
/// request and discards the connection: one with a request of unknown state on it, or on a dead link, is
/// never reused.
pub(crate) struct InFlight {
    pool: Pool,
    conn: Option<PooledConn>,
    /// The request changed session state (a `SET`, a temporary table, ...): the connection is closed
    /// when released, never handed to the next caller with that state on it.
    close_after: bool,
}

impl InFlight {
    pub(crate) fn new(pool: Pool, conn: PooledConn) -> Self {
        Self {
            pool,
            conn: Some(conn),
            close_after: false,
        }
    }

    /// Closes the connection when released, whatever the outcome (see [`crate::session`]).
    pub(crate) fn close_after_use(&mut self) {
        self.close_after = true;
    }

    pub(crate) fn conn(&mut self) -> &mut PooledConn {
        self.conn
            .as_mut()
            .expect("present until released or dropped")
    }

    /// The request ended: the connection goes back to the pool (the validation bypass window starting
    /// again), or is discarded if it is `gone`, found closed, or left with session state.
    pub(crate) fn release(mut self, gone: bool) {
        if let Some(mut conn) = self.conn.take() {
            if gone || conn.client().is_closed() {
                self.pool.discard_dead(conn);
            } else if self.close_after {
                self.pool.discard(conn);
            } else {
                conn.mark_ok();
            }
        }
    }

    /// Ends the request with `result`, met at `stage`: the connection is released as the outcome says
    /// ([`crate::outcome`]) and the error classified.
    pub(crate) fn finish<T>(
        self,
        result: Result<T, tokio_postgres::Error>,
        stage: Stage,
    ) -> Result<T, Error> {
        match result {
            Ok(value) => {
                self.release(false);
                Ok(value)
            }
            Err(e) => Err(self.fail(e, stage)),
        }
    }
}

impl InFlight {
    /// Ends the request with the failure `err`, met at `stage` (see [`finish`](Self::finish)).
    pub(crate) fn fail(self, err: tokio_postgres::Error, stage: Stage) -> Error {
        self.fail_keeping(err, stage, false)
    }

    /// As [`fail`](Self::fail), discarding the connection also when `discard` says so (it may be left
    /// inside a transaction).
    pub(crate) fn fail_keeping(
        self,
        err: tokio_postgres::Error,
        stage: Stage,
        discard: bool,
    ) -> Error {
        let host = self
            .conn
            .as_ref()
            .map(|c| super::host_of(c.host(), self.pool.server()))
            .unwrap_or_else(|| self.pool.server().to_owned());
        let mut failed = failure(err, stage, Link::Own, &host);
        failed.gone |= discard;
        self.settle(failed)
    }

    /// Releases the connection as `failed` says, and tells the pool when its server no longer takes
    /// writes (every connection to it must go, not only this one).
    fn settle(self, failed: Failure) -> Error {
        if takes_no_writes(&failed.error)
            && let Some(conn) = &self.conn
        {
            self.pool.server_takes_no_writes(conn.host());
        }
        self.release(failed.gone);
        failed.error
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            tracing::debug!(
                target: "rampart::pool",
                "request abandoned in flight: cancelling it and discarding its connection"
            );
            self.pool.cancel_in_background(conn.client().cancel_token());
            self.pool.discard(conn);
        }
    }
}
