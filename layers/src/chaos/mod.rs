//! Fault injection for tests, drills and demos: fail, delay or hang calls at a configured rate, on a
//! schedule, repeatably under a seed.
//!
//! [`Chaos`] does nothing unless you stack it, and injects nothing its [`ChaosConfig`] does not ask for.
//! For each call it draws one number from a [`SplitMix64`] generator shared by
//! every clone and picks a fault by rate:
//!
//! | fault | what the caller sees | inner service called |
//! |---|---|---|
//! | error (`error_rate`) | an immediate [`InjectedFault`] | no |
//! | timeout (`timeout_rate`) | nothing for `hang_for`, then [`InjectedFault`]; a timeout layer above fires first | no |
//! | latency (`latency`) | the inner response, later by a duration drawn from the range | yes |
//!
//! With a [`seed`](ChaosConfigBuilder::seed) the same sequence of calls gets the same faults on every
//! run, so a failing drill can be replayed. [`active_during`](ChaosConfigBuilder::active_during) limits
//! injection to time windows (measured from when the layer was built, on tokio's clock, so paused-time
//! tests can walk through a schedule), and [`ChaosHandle::set_enabled`] switches it at run time.
//!
//! Events: target `rampart::chaos`, field `fault`, at debug level; counter
//! `rampart_chaos_faults_total{fault}`.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use rampart_layers::chaos::{ChaosConfig, ChaosLayer, InjectedFault};
//! use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let chaos = ChaosLayer::new(ChaosConfig::builder().error_rate(0.25).seed(7).build()?);
//! let handle = chaos.handle();
//! let mut svc = ServiceBuilder::new()
//!     .layer(chaos)
//!     .service(service_fn(|q: &'static str| async move { Ok::<_, BoxError>(q) }));
//!
//! let mut failed = 0;
//! for _ in 0..1000 {
//!     if let Err(e) = svc.ready().await?.call("SELECT 1").await {
//!         assert!(e.is::<InjectedFault>());
//!         failed += 1;
//!     }
//! }
//! assert!((200..300).contains(&failed));
//! assert_eq!(handle.injected_errors(), failed);
//! # Ok(()) }
//! ```

mod config;
mod error;
pub mod future;
mod layer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::{BoxError, Service};

pub use self::config::{ChaosConfig, ChaosConfigBuilder};
pub use self::error::{Fault, InjectedFault};
pub use self::layer::ChaosLayer;

use self::future::ResponseFuture;
use crate::rng::{Rng, SplitMix64};

struct Inner {
    config: ChaosConfig,
    started: Instant,
    rng: Mutex<SplitMix64>,
    enabled: AtomicBool,
    errors: AtomicU64,
    timeouts: AtomicU64,
    delays: AtomicU64,
}

/// Switches a [`Chaos`] on and off and counts what it injected; shared by every clone.
#[derive(Clone)]
pub struct ChaosHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ChaosHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChaosHandle")
            .field("enabled", &self.is_enabled())
            .finish_non_exhaustive()
    }
}

impl ChaosHandle {
    fn new(config: ChaosConfig) -> Self {
        let rng = config
            .seed
            .map_or_else(SplitMix64::from_entropy, SplitMix64::seeded);
        Self {
            inner: Arc::new(Inner {
                config,
                started: Instant::now(),
                rng: Mutex::new(rng),
                enabled: AtomicBool::new(true),
                errors: AtomicU64::new(0),
                timeouts: AtomicU64::new(0),
                delays: AtomicU64::new(0),
            }),
        }
    }

    /// Turns injection on or off (on when built).
    pub fn set_enabled(&self, enabled: bool) {
        self.inner.enabled.store(enabled, Ordering::Relaxed);
    }

    /// Whether injection is on (the schedule may still keep it quiet).
    pub fn is_enabled(&self) -> bool {
        self.inner.enabled.load(Ordering::Relaxed)
    }

    /// How many calls failed with an injected error.
    pub fn injected_errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }

    /// How many calls were hung by an injected timeout.
    pub fn injected_timeouts(&self) -> u64 {
        self.inner.timeouts.load(Ordering::Relaxed)
    }

    /// How many calls were delayed.
    pub fn injected_delays(&self) -> u64 {
        self.inner.delays.load(Ordering::Relaxed)
    }

    /// Draws the fault for the next call, if any.
    fn draw(&self) -> Option<Fault> {
        let inner = &*self.inner;
        let c = &inner.config;
        if !self.is_enabled() || c.error_rate + c.timeout_rate + c.latency_rate == 0.0 {
            return None;
        }
        if !c.schedule.is_empty() {
            let t = Instant::now().saturating_duration_since(inner.started);
            if !c
                .schedule
                .iter()
                .any(|(from, until)| (*from..*until).contains(&t))
            {
                return None;
            }
        }
        let mut rng = inner.rng.lock().unwrap_or_else(|p| p.into_inner());
        let x = rng.next_f64();
        let fault = if x < c.error_rate {
            inner.errors.fetch_add(1, Ordering::Relaxed);
            Fault::Error
        } else if x < c.error_rate + c.timeout_rate {
            inner.timeouts.fetch_add(1, Ordering::Relaxed);
            Fault::Timeout
        } else if x < c.error_rate + c.timeout_rate + c.latency_rate {
            inner.delays.fetch_add(1, Ordering::Relaxed);
            let (min, max) = c.latency;
            let nanos = |d: Duration| d.as_nanos().min(u64::MAX as u128) as u64;
            Fault::Latency(Duration::from_nanos(rng.in_range(nanos(min), nanos(max))))
        } else {
            return None;
        };
        drop(rng);
        tracing::debug!(target: "rampart::chaos", fault = fault.as_str(), "injecting a fault");
        crate::events::counter(
            "rampart_chaos_faults_total",
            &[("fault", fault.as_str().into())],
            1,
        );
        Some(fault)
    }
}

/// Injects faults into calls to the inner service; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct Chaos<S> {
    inner: S,
    handle: ChaosHandle,
}

impl<S> Chaos<S> {
    /// Wraps `inner`, injecting faults as `config` says; the schedule starts now.
    pub fn new(inner: S, config: ChaosConfig) -> Self {
        Self {
            inner,
            handle: ChaosHandle::new(config),
        }
    }

    /// A handle to switch injection on and off and count what was injected.
    pub fn handle(&self) -> ChaosHandle {
        self.handle.clone()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the layer, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> Service<Req> for Chaos<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.handle.draw() {
            None => ResponseFuture::passed(self.inner.call(req)),
            Some(Fault::Latency(d)) => {
                ResponseFuture::delayed(tokio::time::sleep(d), self.inner.call(req))
            }
            Some(Fault::Error) => ResponseFuture::failed(),
            Some(Fault::Timeout) => {
                ResponseFuture::hanging(tokio::time::sleep(self.handle.inner.config.hang_for))
            }
        }
    }
}
