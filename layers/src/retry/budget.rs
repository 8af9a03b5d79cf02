//! The retry budget.

use std::{fmt, sync::Arc, time::Duration};

use tower::retry::budget::{Budget, TpsBudget};

use crate::ConfigError;

/// A retry budget: retries may be at most a fraction of recent requests, plus a small floor.
///
/// Per-request limits (`max_attempts`) bound how hard one request tries; they do not bound how hard a
/// whole client tries. When the downstream is down, every request retries, and three attempts each
/// triples the load on something already failing. A budget caps retries across *all* requests: each
/// request deposits into it, each retry withdraws, and a retry that finds it empty is not made.
///
/// [`RetryBudget`] is tower's [`TpsBudget`] (Finagle's design) behind a validated builder, so a bad
/// setting is an error at build time instead of a panic inside `TpsBudget::new`. Clones share one budget
/// through an `Arc`.
///
/// ```
/// use std::time::Duration;
/// use rampart_layers::retry::RetryBudget;
///
/// // Retries may add 20% to recent traffic, plus 10 a second so a quiet client can still retry.
/// let budget = RetryBudget::builder()
///     .window(Duration::from_secs(10))
///     .min_retries_per_second(10)
///     .retry_ratio(0.2)
///     .build()?;
/// let shared = budget.clone(); // the same budget
/// assert!(shared.try_withdraw());
/// # Ok::<(), rampart_layers::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<TpsBudget>,
}

impl RetryBudget {
    /// A builder starting from tower's defaults: a 10 s window, 10 retries a second, a ratio of 0.2.
    pub fn builder() -> RetryBudgetBuilder {
        RetryBudgetBuilder::default()
    }

    /// Records a request (not a retry), allowing `ratio` more retries for the window.
    pub fn deposit(&self) {
        self.inner.deposit();
    }

    /// Takes one retry from the budget; `false` if none is left.
    pub fn try_withdraw(&self) -> bool {
        self.inner.withdraw()
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            inner: Arc::new(TpsBudget::default()),
        }
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RetryBudget").field(&self.inner).finish()
    }
}

/// Settings for [`RetryBudget`]; [`build`](RetryBudgetBuilder::build) checks them.
#[derive(Debug, Clone)]
pub struct RetryBudgetBuilder {
    window: Duration,
    min_per_second: u32,
    ratio: f32,
}

impl Default for RetryBudgetBuilder {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            min_per_second: 10,
            ratio: 0.2,
        }
    }
}

impl RetryBudgetBuilder {
    /// How long a request counts towards the budget. Between 1 and 60 seconds.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Retries allowed each second whatever the traffic, so a client that sends little can still retry.
    /// Below `i32::MAX`.
    pub fn min_retries_per_second(mut self, min: u32) -> Self {
        self.min_per_second = min;
        self
    }

    /// Retries allowed per request in the window (0.2: one retry per five requests). Between 0 and 1000.
    pub fn retry_ratio(mut self, ratio: f32) -> Self {
        self.ratio = ratio;
        self
    }

    /// Checks the settings and builds the budget.
    pub fn build(self) -> Result<RetryBudget, ConfigError> {
        // The same limits `TpsBudget::new` asserts, checked here so it cannot panic.
        if self.window < Duration::from_secs(1) || self.window > Duration::from_secs(60) {
            return Err(ConfigError::new(
                "window",
                "must be between 1 and 60 seconds",
            ));
        }
        if self.min_per_second >= i32::MAX as u32 {
            return Err(ConfigError::new(
                "min_retries_per_second",
                "must be below i32::MAX",
            ));
        }
        if !(0.0..=1000.0).contains(&self.ratio) {
            return Err(ConfigError::new(
                "retry_ratio",
                "must be between 0 and 1000",
            ));
        }
        Ok(RetryBudget {
            inner: Arc::new(TpsBudget::new(self.window, self.min_per_second, self.ratio)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_name_the_field() {
        let field = |b: RetryBudgetBuilder| b.build().unwrap_err().field();
        assert_eq!(
            field(RetryBudget::builder().window(Duration::ZERO)),
            "window"
        );
        assert_eq!(
            field(RetryBudget::builder().window(Duration::from_secs(61))),
            "window"
        );
        assert_eq!(
            field(RetryBudget::builder().retry_ratio(-0.1)),
            "retry_ratio"
        );
        assert_eq!(
            field(RetryBudget::builder().retry_ratio(f32::NAN)),
            "retry_ratio"
        );
        assert_eq!(
            field(RetryBudget::builder().min_retries_per_second(u32::MAX)),
            "min_retries_per_second"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn floor_then_ratio_and_clones_share() {
        let budget = RetryBudget::builder()
            .window(Duration::from_secs(1))
            .min_retries_per_second(2)
            .retry_ratio(0.5)
            .build()
            .unwrap();
        let clone = budget.clone();
        assert!(budget.try_withdraw());
        assert!(clone.try_withdraw());
        assert!(!budget.try_withdraw(), "the floor is shared by clones");
        clone.deposit();
        clone.deposit();
        assert!(
            budget.try_withdraw(),
            "two requests earn one retry at ratio 0.5"
        );
        assert!(!budget.try_withdraw());
    }
}
