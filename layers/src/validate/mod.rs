//! Check a resource before use, and replace it if the check fails.
//!
//! A connection that sat idle may have been cut by a NAT timeout, a server restart or a failover; using it
//! costs a failed request. Validation checks it first, but only when it has been idle: a resource used
//! successfully within the *bypass window* is trusted, so hot paths pay nothing (HikariCP's rule).
//!
//! Two ways in:
//!
//! - [`ValidationPolicy`] is the decision alone, for code that owns its resources: given the last
//!   successful use and an async check, it skips, checks under a timeout, and reports. The `rampart`
//!   crate calls it from deadpool-postgres's recycle hook.
//! - [`Validation`] is a tower service for a service that *is* the resource (a connection as a
//!   service): `poll_ready` checks the inner service through a [`Validate`] implementation when the
//!   policy asks for it, and on failure builds a replacement with a factory (any
//!   `Service<(), Response = S>`, such as a `service_fn`) before reporting ready.
//!
//! Events: target `rampart::validate`, field `outcome` (`bypassed` at trace level, `passed`, `failed`,
//! `timed_out`, `replaced`); counters `rampart_validate_checks_total{outcome}` and
//! `rampart_validate_replacements_total`.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use rampart_layers::validate::{ValidationLayer, ValidationPolicy, validate_fn};
//! use tower::{BoxError, Service, ServiceExt, service_fn};
//!
//! #[derive(Clone)]
//! struct Conn { alive: bool }
//! impl Service<&'static str> for Conn {
//!     type Response = &'static str;
//!     type Error = BoxError;
//!     type Future = std::future::Ready<Result<&'static str, BoxError>>;
//!     fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
//!         std::task::Poll::Ready(Ok(()))
//!     }
//!     fn call(&mut self, _: &'static str) -> Self::Future { std::future::ready(Ok("row")) }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let check = validate_fn(|conn: &mut Conn| {
//!     let alive = conn.alive;
//!     async move { if alive { Ok(()) } else { Err("connection closed") } }
//! });
//! let reconnect = service_fn(|()| async { Ok::<_, BoxError>(Conn { alive: true }) });
//! let layer = ValidationLayer::new(ValidationPolicy::default(), check, reconnect);
//! let mut db = tower::Layer::layer(&layer, Conn { alive: false });
//!
//! # tokio::time::pause();
//! tokio::time::sleep(Duration::from_secs(1)).await; // idle past the bypass window
//! assert_eq!(db.ready().await?.call("SELECT 1").await?, "row");
//! assert_eq!(db.replacements(), 1); // the dead connection was replaced before use
//! # Ok(()) }
//! ```

mod error;
pub mod future;
mod layer;
mod policy;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::time::Instant;
use tower::{BoxError, Service};

pub use self::error::{ReplaceError, ValidationError};
pub use self::layer::ValidationLayer;
pub use self::policy::{Check, Checked, ValidationPolicy, ValidationPolicyBuilder};

use self::future::ResponseFuture;

/// Checks that a resource is fit for use.
///
/// The future must own what it needs (it cannot borrow `resource`): clone a handle out of the resource,
/// or start the probe request and return its future. (The `rampart` crate does not implement it: its pool
/// validates connections in deadpool's recycle hook through [`ValidationPolicy`].)
pub trait Validate<R> {
    /// Why a resource is unfit.
    type Error;
    /// The check.
    type Future: Future<Output = Result<(), Self::Error>>;

    /// Starts checking `resource`.
    fn validate(&mut self, resource: &mut R) -> Self::Future;
}

/// A [`Validate`] from a closure; see [`validate_fn`].
#[derive(Clone, Copy)]
pub struct ValidateFn<F> {
    f: F,
}

impl<F> std::fmt::Debug for ValidateFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidateFn").finish_non_exhaustive()
    }
}

/// Builds a [`Validate`] from a closure that starts a check of the resource.
pub fn validate_fn<R, F, Fut, E>(f: F) -> ValidateFn<F>
where
    F: FnMut(&mut R) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    ValidateFn { f }
}

impl<R, F, Fut, E> Validate<R> for ValidateFn<F>
where
    F: FnMut(&mut R) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    type Error = E;
    type Future = Fut;

    fn validate(&mut self, resource: &mut R) -> Fut {
        (self.f)(resource)
    }
}

/// When the resource was last used successfully, shared with the response futures that update it.
#[derive(Debug)]
pub(crate) struct LastSuccess {
    origin: Instant,
    /// Nanoseconds since `origin`, plus one; zero means never.
    at: AtomicU64,
}

impl LastSuccess {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            at: AtomicU64::new(0),
        }
    }

    pub(crate) fn mark(&self) {
        let nanos = Instant::now()
            .saturating_duration_since(self.origin)
            .as_nanos() as u64;
        self.at.store(nanos.saturating_add(1), Ordering::Relaxed);
    }

    fn get(&self) -> Option<Instant> {
        match self.at.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.origin + std::time::Duration::from_nanos(n - 1)),
        }
    }
}

enum State<VF, MF> {
    /// Nothing decided for the next call.
    Idle,
    /// Checking the current resource.
    Checking(Pin<Box<Check<VF>>>),
    /// The check failed; waiting for the factory to be ready.
    MustReplace,
    /// Building the replacement.
    Replacing(Pin<Box<MF>>),
    /// Validated (or bypassed); waiting for the resource to be ready.
    Validated,
}

/// A service that is itself a resource, checked before use and replaced when the check fails; see the
/// [module docs](self).
///
/// The check and the replacement are boxed futures held across `poll_ready` calls (their types are not
/// `Unpin`); they are allocated only when a check actually runs, never on the bypassed hot path.
pub struct Validation<S, V, M>
where
    V: Validate<S>,
    M: Service<()>,
{
    inner: S,
    validator: V,
    factory: M,
    policy: ValidationPolicy,
    last_success: Arc<LastSuccess>,
    replacements: u64,
    state: State<V::Future, M::Future>,
}

impl<S: std::fmt::Debug, V: Validate<S>, M: Service<()>> std::fmt::Debug for Validation<S, V, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validation")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .field("replacements", &self.replacements)
            .finish_non_exhaustive()
    }
}

impl<S, V, M> Clone for Validation<S, V, M>
where
    S: Clone,
    V: Validate<S> + Clone,
    M: Service<()> + Clone,
{
    /// A clone of the resource with its own check state (a replacement made by one clone is not seen by
    /// the other), starting from this one's last successful use.
    fn clone(&self) -> Self {
        let last_success = Arc::new(LastSuccess {
            origin: self.last_success.origin,
            at: AtomicU64::new(self.last_success.at.load(Ordering::Relaxed)),
        });
        Self {
            inner: self.inner.clone(),
            validator: self.validator.clone(),
            factory: self.factory.clone(),
            policy: self.policy,
            last_success,
            replacements: self.replacements,
            state: State::Idle,
        }
    }
}

impl<S, V, M> Validation<S, V, M>
where
    V: Validate<S>,
    M: Service<(), Response = S>,
{
    /// Wraps `inner`, checking it with `validator` as `policy` says and replacing it through `factory`.
    ///
    /// `inner` counts as used just now: it is checked once it has been idle for the bypass window.
    pub fn new(inner: S, policy: ValidationPolicy, validator: V, factory: M) -> Self {
        let last_success = Arc::new(LastSuccess::new());
        last_success.mark();
        Self {
            inner,
            validator,
            factory,
            policy,
            last_success,
            replacements: 0,
            state: State::Idle,
        }
    }

    /// How many times the resource has been replaced.
    pub fn replacements(&self) -> u64 {
        self.replacements
    }

    /// When the resource was last used successfully (or passed a check, or was built).
    pub fn last_success(&self) -> Option<Instant> {
        self.last_success.get()
    }

    /// The current resource.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The current resource, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the service, returning the current resource.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, V, M, Req> Service<Req> for Validation<S, V, M>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    V: Validate<S>,
    M: Service<(), Response = S>,
    M::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            match &mut self.state {
                State::Idle => {
                    self.state = if self.policy.needs_check(self.last_success.get()) {
                        let check = self.validator.validate(&mut self.inner);
                        State::Checking(Box::pin(self.policy.check(check)))
                    } else {
                        State::Validated
                    };
                }
                State::Checking(check) => match ready!(check.as_mut().poll(cx)) {
                    Ok(_) => {
                        self.last_success.mark();
                        self.state = State::Validated;
                    }
                    Err(_) => self.state = State::MustReplace,
                },
                State::MustReplace => {
                    if let Err(e) = ready!(self.factory.poll_ready(cx)) {
                        self.state = State::Idle;
                        return Poll::Ready(Err(ReplaceError::new(e.into()).into()));
                    }
                    self.state = State::Replacing(Box::pin(self.factory.call(())));
                }
                State::Replacing(making) => match ready!(making.as_mut().poll(cx)) {
                    Ok(fresh) => {
                        self.inner = fresh;
                        self.replacements += 1;
                        self.last_success.mark();
                        tracing::info!(target: "rampart::validate", outcome = "replaced", replacements = self.replacements,
                            "replaced a resource that failed validation");
                        crate::events::counter("rampart_validate_replacements_total", &[], 1);
                        self.state = State::Validated;
                    }
                    Err(e) => {
                        // Check again next time: the factory may be back by then.
                        self.state = State::MustReplace;
                        return Poll::Ready(Err(ReplaceError::new(e.into()).into()));
                    }
                },
                State::Validated => return self.inner.poll_ready(cx).map_err(Into::into),
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        assert!(
            matches!(self.state, State::Validated),
            "Validation::call without poll_ready returning Ready first"
        );
        self.state = State::Idle;
        ResponseFuture::new(self.inner.call(req), self.last_success.clone())
    }
}
