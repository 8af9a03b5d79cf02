//! Generic [tower] middleware for resilience: classification, retry with exponential backoff and a retry
//! budget, per-attempt timeouts and overall deadlines, circuit breaking, validation before use, recreation
//! of a broken inner service, and fault injection.
//!
//! Nothing here knows about databases: the layers wrap any `tower::Service` (an HTTP client, a gRPC
//! channel, a connection pool). The `rampart` crate supplies the Postgres knowledge (which errors are
//! transient, how to check a connection) and ready-made stacks.
//!
//! One [`classify::Classify`] implementation decides for every layer what a failure means, so retry and the
//! breaker never disagree about whether the downstream is in trouble. Every settings builder's `build()`
//! refuses a bad value with the same [`ConfigError`], naming the setting.
//!
//! # Example
//!
//! An overall deadline outside, retry with backoff in the middle, a timeout on each attempt inside:
//!
//! ```
//! # #[cfg(all(feature = "retry", feature = "deadline"))]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! use std::time::Duration;
//! use rampart_layers::{AttemptTimeoutLayer, DeadlineLayer, RetryLayer, RetryPolicy, WithDeadline};
//! use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
//!
//! let mut svc = ServiceBuilder::new()
//!     .layer(DeadlineLayer::new(Duration::from_secs(5)))
//!     .layer(RetryLayer::new(RetryPolicy::three_attempts_half_second_doubling()))
//!     .layer(AttemptTimeoutLayer::new(Duration::from_secs(2)))
//!     .service(tower::service_fn(|req: WithDeadline<&'static str>| async move {
//!         Ok::<_, BoxError>(req.into_inner().to_uppercase())
//!     }));
//!
//! assert_eq!(svc.ready().await?.call(WithDeadline::new("ping")).await?, "PING");
//! # Ok(())
//! # }
//! # #[cfg(not(all(feature = "retry", feature = "deadline")))]
//! # fn main() {}
//! ```
//!
//! # Features
//!
//! | feature | module |
//! |---|---|
//! | `retry` | [`retry`] |
//! | `deadline` | [`deadline`] |
//! | `breaker` | [`breaker`] |
//! | `validate` | [`validate`] |
//! | `recreate` | [`recreate`] |
//! | `chaos` | [`chaos`] |
//! | `metrics` | counters and histograms through the `metrics` facade (see [`events`]) |
//! | `backoff` | adapt any `backoff::backoff::Backoff` as a retry schedule |
//! | `full` (default) | all middleware |
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, rust_2018_idioms)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backoff;
pub mod classify;
mod config_error;
pub mod events;
mod idempotence;
pub mod rng;

#[cfg(feature = "breaker")]
pub mod breaker;
#[cfg(feature = "chaos")]
pub mod chaos;
#[cfg(feature = "deadline")]
pub mod deadline;
#[cfg(feature = "recreate")]
pub mod recreate;
#[cfg(feature = "retry")]
pub mod retry;
#[cfg(feature = "validate")]
pub mod validate;

#[cfg(feature = "breaker")]
pub use breaker::{BreakerConfig, BreakerHandle, CircuitBreaker, CircuitBreakerLayer, CircuitOpen};
#[cfg(feature = "chaos")]
pub use chaos::{Chaos, ChaosConfig, ChaosHandle, ChaosLayer, InjectedFault};
pub use classify::{BreakerCount, Classification, Classify, Idempotence, Idempotent};
pub use config_error::ConfigError;
#[cfg(feature = "deadline")]
pub use deadline::{
    AttemptTimedOut, AttemptTimeout, AttemptTimeoutLayer, Deadline, DeadlineExceeded,
    DeadlineLayer, Deadlined, WithDeadline,
};
#[cfg(feature = "recreate")]
pub use recreate::{Recreate, RecreateConfig, RecreateHandle, RecreateLayer};
#[cfg(feature = "retry")]
pub use retry::{NotReplayable, Replay, Retry, RetryBudget, RetryError, RetryLayer, RetryPolicy};
#[cfg(feature = "validate")]
pub use validate::{Validate, Validation, ValidationLayer, ValidationPolicy};
