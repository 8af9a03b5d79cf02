//! When to check a resource and how long a check may take, usable outside any service.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Timeout};

use super::error::ValidationError;
use crate::ConfigError;

/// When a resource must be checked before use, and how long the check may take.
///
/// A resource used successfully within the last `bypass_window` is trusted without a check (HikariCP's
/// `aliveBypassWindowMs`, 500 ms by default there and here), so a busy connection never pays a round
/// trip per borrow; one idle for longer is checked, and the check fails if it takes longer than
/// `check_timeout` (HikariCP's `validationTimeout`, 5 s by default there and here).
///
/// ```
/// use std::time::Duration;
/// use rampart_layers::validate::{Checked, ValidationPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let policy = ValidationPolicy::default();
/// let last_used = tokio::time::Instant::now();
/// // Just used: the check is skipped and its future never built.
/// let verdict = policy.validate(Some(last_used), || async { Err::<(), _>("unreachable") }).await;
/// assert_eq!(verdict.unwrap(), Checked::Bypassed);
/// // Never used: checked.
/// let verdict = policy.validate(None, || async { Ok::<(), &str>(()) }).await;
/// assert_eq!(verdict.unwrap(), Checked::Passed);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidationPolicy {
    bypass_window: Duration,
    check_timeout: Duration,
}

impl Default for ValidationPolicy {
    fn default() -> Self {
        Self {
            bypass_window: Duration::from_millis(500),
            check_timeout: Duration::from_secs(5),
        }
    }
}

/// What [`ValidationPolicy::validate`] did with a resource that is fit for use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Checked {
    /// Used successfully within the bypass window: not checked.
    Bypassed,
    /// Checked, and the check passed.
    Passed,
}

impl ValidationPolicy {
    /// A builder starting from the defaults (bypass 500 ms, check timeout 5 s).
    pub fn builder() -> ValidationPolicyBuilder {
        ValidationPolicyBuilder {
            policy: Self::default(),
        }
    }

    /// How recently a successful use makes a check unnecessary.
    pub fn bypass_window(&self) -> Duration {
        self.bypass_window
    }

    /// How long a check may take before it counts as failed.
    pub fn check_timeout(&self) -> Duration {
        self.check_timeout
    }

    /// Whether a resource last used successfully at `last_success` (`None`: never) must be checked now.
    pub fn needs_check(&self, last_success: Option<Instant>) -> bool {
        match last_success {
            Some(at) => Instant::now().saturating_duration_since(at) >= self.bypass_window,
            None => true,
        }
    }

    /// Decides whether the resource needs a check and, if it does, runs `check()` under the check timeout.
    ///
    /// `check` is only called when a check is needed, so building the check costs nothing on the hot path.
    pub fn validate<F, E>(
        &self,
        last_success: Option<Instant>,
        check: impl FnOnce() -> F,
    ) -> Check<F>
    where
        F: Future<Output = Result<(), E>>,
    {
        if self.needs_check(last_success) {
            self.check(check())
        } else {
            Check {
                check: None,
                limit: self.check_timeout,
            }
        }
    }

    /// Runs `check` under the check timeout, unconditionally.
    pub fn check<F, E>(&self, check: F) -> Check<F>
    where
        F: Future<Output = Result<(), E>>,
    {
        Check {
            check: Some(tokio::time::timeout(self.check_timeout, check)),
            limit: self.check_timeout,
        }
    }
}

pin_project! {
    /// The future of [`ValidationPolicy::validate`]: resolves to how the resource passed, or why it failed.
    #[must_use = "futures do nothing unless polled"]
    pub struct Check<F> {
        #[pin]
        check: Option<Timeout<F>>,
        limit: Duration,
    }
}

impl<F> std::fmt::Debug for Check<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Check")
            .field("checking", &self.check.is_some())
            .finish()
    }
}

impl<F, E> Future for Check<F>
where
    F: Future<Output = Result<(), E>>,
{
    type Output = Result<Checked, ValidationError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(check) = this.check.as_pin_mut() else {
            tracing::trace!(target: "rampart::validate", outcome = "bypassed");
            return Poll::Ready(Ok(Checked::Bypassed));
        };
        let result = match std::task::ready!(check.poll(cx)) {
            Ok(Ok(())) => Ok(Checked::Passed),
            Ok(Err(e)) => Err(ValidationError::failed(e)),
            Err(_elapsed) => Err(ValidationError::timed_out(*this.limit)),
        };
        let outcome = match &result {
            Ok(_) => "passed",
            Err(e) => e.outcome(),
        };
        if result.is_ok() {
            tracing::debug!(target: "rampart::validate", outcome);
        } else {
            tracing::warn!(target: "rampart::validate", outcome, "resource failed validation");
        }
        crate::events::counter(
            "rampart_validate_checks_total",
            &[("outcome", outcome.into())],
            1,
        );
        Poll::Ready(result)
    }
}

/// Builds a [`ValidationPolicy`].
#[derive(Debug, Clone)]
pub struct ValidationPolicyBuilder {
    policy: ValidationPolicy,
}

impl ValidationPolicyBuilder {
    /// Trust a resource used successfully this recently without checking it (default 500 ms). Zero checks
    /// before every use.
    pub fn bypass_window(mut self, window: Duration) -> Self {
        self.policy.bypass_window = window;
        self
    }

    /// Fail a check that takes longer than this (default 5 s).
    pub fn check_timeout(mut self, timeout: Duration) -> Self {
        self.policy.check_timeout = timeout;
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<ValidationPolicy, ConfigError> {
        if self.policy.check_timeout.is_zero() {
            return Err(ConfigError::new(
                "check_timeout",
                "must be greater than zero",
            ));
        }
        Ok(self.policy)
    }
}
