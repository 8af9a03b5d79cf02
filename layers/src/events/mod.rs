//! How the layers report: `tracing` events with stable targets and fields, and (with the `metrics`
//! feature) counters and histograms through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! Every layer reports through this module, so names stay consistent and an operator can rely on them:
//!
//! | target | emitted by | fields |
//! |---|---|---|
//! | `rampart::retry` | retry | `attempt`, `delay_ms`, `class`, `error` |
//! | `rampart::deadline` | deadline / timeout | `limit_ms` |
//! | `rampart::breaker` | circuit breaker | `name`, `from`, `to`, `reason` |
//! | `rampart::validate` | validation | `outcome` |
//! | `rampart::recreate` | recreation | `generation`, `reason` |
//! | `rampart::chaos` | fault injection | `fault` |
//!
//! Metric names all start with `rampart_` and end in `_total` for counters and `_seconds` for
//! histograms; each layer's module docs list its own. No exporter lives in the library: install one
//! (Prometheus, StatsD, ...) in your application, as the `http_health` example does.
//!
//! Without the `metrics` feature the metric helpers compile to nothing.

use std::borrow::Cow;

/// A metric label: a static key and a value.
///
/// The value is a [`Cow`] so that the usual labels (a classification, a state, a reason: all
/// `&'static str`) are passed as `value.into()` without allocating, with or without the `metrics`
/// feature.
pub type Label = (&'static str, Cow<'static, str>);

/// Adds `value` to the counter `name` with the given labels.
#[inline]
pub fn counter(name: &'static str, labels: &[Label], value: u64) {
    #[cfg(feature = "metrics")]
    metrics::counter!(name, to_metrics(labels)).increment(value);
    #[cfg(not(feature = "metrics"))]
    let _ = (name, labels, value);
}

/// Records `seconds` in the histogram `name` with the given labels.
#[inline]
pub fn histogram(name: &'static str, labels: &[Label], seconds: f64) {
    #[cfg(feature = "metrics")]
    metrics::histogram!(name, to_metrics(labels)).record(seconds);
    #[cfg(not(feature = "metrics"))]
    let _ = (name, labels, seconds);
}

/// Sets the gauge `name` with the given labels.
#[inline]
pub fn gauge(name: &'static str, labels: &[Label], value: f64) {
    #[cfg(feature = "metrics")]
    metrics::gauge!(name, to_metrics(labels)).set(value);
    #[cfg(not(feature = "metrics"))]
    let _ = (name, labels, value);
}

#[cfg(feature = "metrics")]
fn to_metrics(labels: &[Label]) -> Vec<metrics::Label> {
    labels
        .iter()
        .map(|(key, value)| metrics::Label::new(*key, value.clone()))
        .collect()
}
