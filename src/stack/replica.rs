//! Reads on replicas: a [`Query::read`] goes to the replica pool, everything else (writes, reads marked
//! [`Query::primary`], transactions, streams) to the primary; a read the replica fails falls back to the
//! primary in the same attempt.
//!
//! Sits at the bottom of the stack, under the attempt timeout and above the primary's pool, so one
//! attempt of a read is "the replica, or else the primary". The replica has a circuit breaker of its own
//! (the primary's counts only what reaches the primary): once a dead replica has opened it, reads go
//! straight to the primary, and its half-open probes bring the replica back when it answers. A caller's
//! mistake (bad SQL, a wrong parameter) is answered as it is: the primary would refuse it too.
//!
//! A replica is behind its primary by its replication lag; a read that must see the caller's own write
//! says so with [`Query::primary`].
//!
//! A tower service of its own, since neither tower nor the layers route by request; its future is
//! boxed (the fallback is an `async` block whose type cannot be named), only for reads sent to a replica.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use rampart_layers::Classification;
use rampart_layers::breaker::CircuitOpen;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceExt};

use crate::error::{Error, ErrorKind};
use crate::query::{Query, Response};

/// The replica's service: its pool under its own breaker.
pub(super) type ReplicaService = BoxCloneSyncService<Query, Response, BoxError>;

/// Routes reads to a replica, the rest to `primary` (see the [module docs](self)).
#[derive(Clone)]
pub(super) struct Replicated<S> {
    primary: S,
    replica: ReplicaService,
}

impl<S> Replicated<S> {
    pub(super) fn new(primary: S, replica: ReplicaService) -> Self {
        Self { primary, replica }
    }
}

/// Whether a read the replica failed is worth sending to the primary: every failure but the caller's
/// own mistakes, which the primary would refuse the same way.
fn falls_back(error: &BoxError) -> bool {
    if error.is::<CircuitOpen>() {
        return true;
    }
    !error.downcast_ref::<Error>().is_some_and(|e| {
        e.classification() == Classification::Permanent
            && matches!(
                e.kind(),
                ErrorKind::Db | ErrorKind::InvalidRequest | ErrorKind::Decode | ErrorKind::RowCount
            )
    })
}

impl<S> Service<Query> for Replicated<S>
where
    S: Service<Query, Response = Response, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.primary.poll_ready(cx)
    }

    fn call(&mut self, query: Query) -> Self::Future {
        if !query.is_read() || query.wants_primary() {
            return Box::pin(self.primary.call(query));
        }
        // The ready clone goes with the request (tower's contract); a fresh clone stays here.
        let fresh = self.primary.clone();
        let mut primary = std::mem::replace(&mut self.primary, fresh);
        let replica = self.replica.clone();
        Box::pin(async move {
            match replica.oneshot(query.clone()).await {
                Err(e) if falls_back(&e) => {
                    tracing::debug!(
                        target: "rampart::replica", error = %e,
                        "read failed on the replica: sent to the primary"
                    );
                    primary.call(query).await
                }
                done => done,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_callers_mistake_is_answered_without_the_primary() {
        let bad_sql: BoxError = Box::new(Error::new(
            ErrorKind::Db,
            Classification::Permanent,
            "syntax error",
        ));
        assert!(!falls_back(&bad_sql));
        for kind in [
            ErrorKind::Connect,
            ErrorKind::ConnectionLost,
            ErrorKind::Timeout,
        ] {
            let failed: BoxError = Box::new(Error::new(kind, Classification::Transient, "down"));
            assert!(falls_back(&failed), "{kind:?}");
        }
        let refused_tls: BoxError = Box::new(Error::new(
            ErrorKind::Connect,
            Classification::Permanent,
            "TLS",
        ));
        assert!(
            falls_back(&refused_tls),
            "a replica set up wrong is no reason to fail a read"
        );
    }
}
