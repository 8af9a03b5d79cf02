//! Generic [tower] middleware for resilience: classification, retry with exponential backoff and a retry
//! budget, per-attempt timeouts and overall deadlines, circuit breaking, validation before use, recreation
//! of a broken inner service, and fault injection.
//!
//! Nothing here knows about databases: the layers wrap any `tower::Service` (an HTTP client, a gRPC
//! channel, a connection pool). The `rampart` crate supplies the Postgres knowledge (which errors are
//! transient, how to check a connection) and ready-made stacks.
//!
//! One [`classify::Classify`] implementation decides for every layer what a failure means, so retry and the
//! breaker never disagree about whether the downstream is in trouble.
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

pub mod classify;
pub mod events;
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

pub use classify::{Classification, Classify, Idempotence, Idempotent};
