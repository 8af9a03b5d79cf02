//! Rebuild the inner service when it is broken beyond repair, in the background, once per burst.
//!
//! Some failures no retry fixes: a pool whose every connection points at a server that failed over, a
//! client whose DNS answer went stale, a channel stuck in a bad TLS session. [`Recreate`] holds a factory
//! that builds the inner service (a whole pool, say). When the [classifier](crate::classify) has seen
//! `failure_threshold` consecutive failures of the current service, or a health check or an operator says
//! it is broken, it rebuilds it:
//!
//! - **in the background** (`tokio::spawn`), so no caller waits on the factory; calls keep going to the
//!   old service until the new one is ready;
//! - **once per burst**: one atomic flag admits a single rebuild, and failures of the old service (or
//!   arriving while the rebuild runs) do not count toward another, so 50 concurrent failures cause one
//!   rebuild, not 50;
//! - **with backoff** between failed attempts (`initial_backoff`, multiplied up to `max_backoff`), so a
//!   factory that cannot reach the database does not spin;
//! - **without cutting calls off**: new calls get the new service; calls in flight finish on the old one,
//!   which is dropped when the last clone goes.
//!
//! Tower's [`reconnect`](https://docs.rs/tower/latest/tower/reconnect/index.html) rebuilds the inner
//! service too, but only when it reports an error from `poll_ready`, at once and inline in `poll_ready`
//! (so the caller waits on the factory), with no backoff, and per clone. It knows nothing about failed
//! *calls*, which is how a broken pool shows itself. Hence this service.
//!
//! The inner service must be `Clone` (a pool handle, a `Buffer`): every call runs on a clone of the
//! current one.
//!
//! Events: target `rampart::recreate`, fields `generation`, `reason` (`consecutive_failures`,
//! `health_check`, or what the operator passed); counters `rampart_recreate_rebuilds_total{reason}`
//! and `rampart_recreate_failed_attempts_total`.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use rampart_layers::recreate::{Recreate, RecreateConfig};
//! use rampart_layers::classify::{Classification, classify_fn};
//! use tower::{BoxError, Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // A "pool" that is broken in generation 0 and healthy afterwards.
//! let builds = Arc::new(AtomicU64::new(0));
//! let pool = |generation: u64| service_fn(move |_q: &'static str| async move {
//!     if generation == 0 { Err::<u64, BoxError>("connection refused".into()) } else { Ok(generation) }
//! });
//! let factory = {
//!     let builds = builds.clone();
//!     service_fn(move |()| {
//!         let generation = builds.fetch_add(1, Ordering::SeqCst) + 1;
//!         async move { Ok::<_, BoxError>(pool(generation)) }
//!     })
//! };
//! let config = RecreateConfig::builder().failure_threshold(3).build()?;
//! let classifier = classify_fn(|_: &BoxError| Classification::Transient);
//! let mut db = Recreate::with_classifier(pool(0), factory, config, classifier);
//! let handle = db.handle();
//!
//! for _ in 0..3 {
//!     assert!(db.ready().await?.call("SELECT 1").await.is_err());
//! }
//! while handle.generation() == 0 {
//!     tokio::task::yield_now().await; // the rebuild runs in the background
//! }
//! assert_eq!(db.ready().await?.call("SELECT 1").await?, 1);
//! # Ok(()) }
//! ```

mod config;
pub mod future;
mod layer;
mod shared;

use std::future::Future;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{BoxError, Service};

pub use self::config::{RecreateConfig, RecreateConfigBuilder};
pub use self::layer::RecreateLayer;

use self::future::ResponseFuture;
use self::shared::{OutcomeSink, Shared};
use crate::classify::{Classify, TimeoutsAreTransient};

/// A service rebuilt through a factory when it is broken; see the [module docs](self).
pub struct Recreate<S, M, C = TimeoutsAreTransient> {
    shared: Arc<Shared<S, M>>,
    classifier: C,
    current: Option<(u64, S)>,
}

impl<S, M, C: Clone> Clone for Recreate<S, M, C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            classifier: self.classifier.clone(),
            current: None,
        }
    }
}

impl<S, M, C> std::fmt::Debug for Recreate<S, M, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recreate")
            .field("generation", &self.current.as_ref().map(|c| c.0))
            .finish_non_exhaustive()
    }
}

impl<S: Clone, M> Recreate<S, M> {
    /// Starts with `service` (generation 0) and rebuilds through `factory`, classifying with
    /// [`TimeoutsAreTransient`].
    pub fn new(service: S, factory: M, config: RecreateConfig) -> Self {
        Self::with_classifier(service, factory, config, TimeoutsAreTransient)
    }
}

impl<S: Clone, M, C> Recreate<S, M, C> {
    /// Starts with `service` (generation 0) and rebuilds through `factory` when `classifier` has seen
    /// enough consecutive failures (`Transient` or `Ambiguous`).
    pub fn with_classifier(service: S, factory: M, config: RecreateConfig, classifier: C) -> Self {
        Self {
            shared: Arc::new(Shared::new(service, factory, config)),
            classifier,
            current: None,
        }
    }

    /// A handle to read the generation and to ask for a rebuild.
    pub fn handle(&self) -> RecreateHandle<S, M> {
        RecreateHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S, M, C, Req> Service<Req> for Recreate<S, M, C>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    M: Service<(), Response = S> + Send + 'static,
    M::Error: Into<BoxError>,
    M::Future: Send,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let generation = self.shared.generation();
        if self.current.as_ref().is_none_or(|(g, _)| *g != generation) {
            self.current = Some(self.shared.checkout());
        }
        let (generation, service) = self.current.as_mut().expect("checked out above");
        match service.poll_ready(cx) {
            Poll::Ready(Err(e)) => {
                let generation = *generation;
                let failure = self
                    .classifier
                    .classify_error(&e)
                    .is_failure_of_downstream();
                self.current = None;
                (self.shared.clone() as Arc<dyn OutcomeSink>).on_outcome(generation, failure);
                Poll::Ready(Err(e.into()))
            }
            other => other.map_err(Into::into),
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let (generation, service) = self
            .current
            .as_mut()
            .expect("Recreate::call without poll_ready returning Ready first");
        let future = service.call(req);
        ResponseFuture::new(
            future,
            self.classifier.clone(),
            *generation,
            self.shared.clone(),
        )
    }
}

/// Reads and steers a [`Recreate`] (shared by all its clones).
pub struct RecreateHandle<S, M> {
    shared: Arc<Shared<S, M>>,
}

impl<S, M> Clone for RecreateHandle<S, M> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<S, M> std::fmt::Debug for RecreateHandle<S, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecreateHandle").finish_non_exhaustive()
    }
}

impl<S: Clone, M> RecreateHandle<S, M> {
    /// How many times the service has been rebuilt (the generation of the current one; 0 is the first).
    pub fn generation(&self) -> u64 {
        self.shared.generation()
    }

    /// Whether a rebuild is under way.
    pub fn is_rebuilding(&self) -> bool {
        self.shared.is_rebuilding()
    }

    /// How many rebuild attempts have failed, in total.
    pub fn failed_attempts(&self) -> u64 {
        self.shared.failed_attempts()
    }

    /// A clone of the current service (the latest rebuilt one), for reading its state.
    pub fn current(&self) -> S {
        self.shared.checkout().1
    }
}

impl<S, M> RecreateHandle<S, M>
where
    S: Clone + Send + 'static,
    M: Service<(), Response = S> + Send + 'static,
    M::Error: Into<BoxError>,
    M::Future: Send,
{
    /// Rebuilds the service in the background unless a rebuild is already under way; returns whether
    /// this call started one. Must be called within a tokio runtime.
    pub fn rebuild(&self, reason: &'static str) -> bool {
        self.shared.trigger(reason)
    }

    /// Spawns a task that runs `check` on a clone of the current service every `interval` and rebuilds
    /// it when the check answers `false`. The task ends when every [`Recreate`] clone and handle is gone.
    pub fn spawn_health_check<F, Fut>(
        &self,
        interval: Duration,
        mut check: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: FnMut(S) -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send,
    {
        let weak: Weak<Shared<S, M>> = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(shared) = weak.upgrade() else { return };
                if shared.is_rebuilding() {
                    continue;
                }
                let (_, service) = shared.checkout();
                drop(shared);
                if !check(service).await {
                    let Some(shared) = weak.upgrade() else { return };
                    shared.trigger("health_check");
                }
            }
        })
    }
}
