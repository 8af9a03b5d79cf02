//! The retry policy: how many attempts, how long, which schedule, which classifier, which budget.

use std::{
    error::Error,
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use super::budget::RetryBudget;
use crate::{
    ConfigError,
    backoff::{Backoff, Exponential, Jitter},
    classify::{Classification, TimeoutsAreTransient},
    rng::{Rng, SplitMix64},
};

type OnRetry = Arc<dyn Fn(&RetryEvent<'_>) + Send + Sync>;
type DelayFn = Arc<dyn Fn(&RetryEvent<'_>) -> Option<Duration> + Send + Sync>;

/// What the retry layer may do for one request: see the [module docs](super).
///
/// `C` is the [classifier](crate::classify::Classify) and `B` the [backoff schedule](Backoff). Build one
/// with [`RetryPolicy::builder`], or start from
/// [`three_attempts_half_second_doubling`](RetryPolicy::three_attempts_half_second_doubling).
/// Cloning is cheap, and clones share the budget, the callback and the random number generator.
#[derive(Clone)]
pub struct RetryPolicy<C = TimeoutsAreTransient, B = Exponential> {
    max_attempts: u32,
    max_elapsed: Option<Duration>,
    schedule: B,
    classifier: C,
    budget: Option<RetryBudget>,
    on_retry: Option<OnRetry>,
    delay_generator: Option<DelayFn>,
    rng: Arc<Mutex<dyn Rng + Send>>,
}

impl RetryPolicy {
    /// A builder starting from the defaults: 3 attempts, no time limit, [`Exponential::default`]
    /// (100 ms doubling to 10 s, full jitter), [`TimeoutsAreTransient`], no budget.
    pub fn builder() -> RetryPolicyBuilder {
        RetryPolicyBuilder {
            max_attempts: 3,
            max_elapsed: None,
            schedule: Exponential::default(),
            classifier: TimeoutsAreTransient,
            budget: None,
            on_retry: None,
            delay_generator: None,
            rng: None,
        }
    }

    /// The loop most code writes by hand: 3 attempts in all, waiting 0.5 s then 1 s (doubling, no jitter),
    /// retrying timeouts ([`TimeoutsAreTransient`]); no budget, no time limit.
    ///
    /// Swap the classifier with [`with_classifier`](RetryPolicy::with_classifier).
    pub fn three_attempts_half_second_doubling() -> Self {
        let schedule = Exponential::builder()
            .base_delay(Duration::from_millis(500))
            .multiplier(2.0)
            .max_delay(Duration::from_secs(30))
            .jitter(Jitter::None)
            .build()
            .unwrap_or_default();
        Self::builder()
            .max_attempts(3)
            .schedule(schedule)
            .build()
            .unwrap_or_else(|_| Self::builder().build_unchecked())
    }
}

impl<C, B> RetryPolicy<C, B> {
    /// The same policy with another classifier.
    pub fn with_classifier<C2>(self, classifier: C2) -> RetryPolicy<C2, B> {
        RetryPolicy {
            max_attempts: self.max_attempts,
            max_elapsed: self.max_elapsed,
            schedule: self.schedule,
            classifier,
            budget: self.budget,
            on_retry: self.on_retry,
            delay_generator: self.delay_generator,
            rng: self.rng,
        }
    }

    /// Attempts in all, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The longest time from the first attempt to the start of the last, if limited.
    pub fn max_elapsed(&self) -> Option<Duration> {
        self.max_elapsed
    }

    /// The backoff schedule each request starts from.
    pub fn schedule(&self) -> &B {
        &self.schedule
    }

    /// The classifier.
    pub fn classifier(&self) -> &C {
        &self.classifier
    }

    /// The retry budget, if any.
    pub fn budget(&self) -> Option<&RetryBudget> {
        self.budget.as_ref()
    }

    /// The delay the generator chooses for this retry (the schedule's is `event.delay()`), if any.
    pub(crate) fn generated_delay(&self, event: &RetryEvent<'_>) -> Option<Duration> {
        self.delay_generator
            .as_ref()
            .and_then(|generate| generate(event))
    }

    pub(crate) fn notify(&self, event: &RetryEvent<'_>) {
        if let Some(on_retry) = &self.on_retry {
            on_retry(event);
        }
    }

    /// A generator for one request's jitter, seeded from the shared one, so requests (and clones of the
    /// service) never share a jitter sequence, while a seeded policy stays repeatable.
    pub(crate) fn request_rng(&self) -> SplitMix64 {
        let mut shared = self
            .rng
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        SplitMix64::seeded(shared.next_u64())
    }
}

impl<C: fmt::Debug, B: fmt::Debug> fmt::Debug for RetryPolicy<C, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("max_elapsed", &self.max_elapsed)
            .field("schedule", &self.schedule)
            .field("classifier", &self.classifier)
            .field("budget", &self.budget)
            .field("on_retry", &self.on_retry.as_ref().map(|_| "Fn"))
            .finish_non_exhaustive()
    }
}

/// Settings for [`RetryPolicy`]; [`build`](RetryPolicyBuilder::build) checks them.
pub struct RetryPolicyBuilder<C = TimeoutsAreTransient, B = Exponential> {
    max_attempts: u32,
    max_elapsed: Option<Duration>,
    schedule: B,
    classifier: C,
    budget: Option<RetryBudget>,
    on_retry: Option<OnRetry>,
    delay_generator: Option<DelayFn>,
    rng: Option<Arc<Mutex<dyn Rng + Send>>>,
}

impl<C: fmt::Debug, B: fmt::Debug> fmt::Debug for RetryPolicyBuilder<C, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicyBuilder")
            .field("max_attempts", &self.max_attempts)
            .field("max_elapsed", &self.max_elapsed)
            .field("schedule", &self.schedule)
            .field("classifier", &self.classifier)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl<C, B> RetryPolicyBuilder<C, B> {
    /// Attempts in all, the first included (3 means up to 2 retries). At least 1.
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// No retry is started, or waited for, past this long after the first attempt began. Greater than zero.
    pub fn max_elapsed(mut self, max_elapsed: Duration) -> Self {
        self.max_elapsed = Some(max_elapsed);
        self
    }

    /// The backoff schedule (cloned for every request).
    pub fn schedule<B2: Backoff + Clone>(self, schedule: B2) -> RetryPolicyBuilder<C, B2> {
        RetryPolicyBuilder {
            max_attempts: self.max_attempts,
            max_elapsed: self.max_elapsed,
            schedule,
            classifier: self.classifier,
            budget: self.budget,
            on_retry: self.on_retry,
            delay_generator: self.delay_generator,
            rng: self.rng,
        }
    }

    /// The classifier deciding which failures are worth another attempt.
    pub fn classifier<C2>(self, classifier: C2) -> RetryPolicyBuilder<C2, B> {
        RetryPolicyBuilder {
            max_attempts: self.max_attempts,
            max_elapsed: self.max_elapsed,
            schedule: self.schedule,
            classifier,
            budget: self.budget,
            on_retry: self.on_retry,
            delay_generator: self.delay_generator,
            rng: self.rng,
        }
    }

    /// A retry budget, shared with every other policy holding a clone of it.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Called before each retry's wait, with what failed and how long the wait will be: count or log there.
    pub fn on_retry<F>(mut self, on_retry: F) -> Self
    where
        F: Fn(&RetryEvent<'_>) + Send + Sync + 'static,
    {
        self.on_retry = Some(Arc::new(on_retry));
        self
    }

    /// Chooses the wait before a retry from what failed (Polly's `DelayGenerator`): called after the
    /// schedule, with the schedule's delay as [`RetryEvent::delay`]; `Some(d)` waits `d` instead, `None`
    /// keeps the schedule's. Use it to honour a server's "retry after" hint. The chosen wait is still
    /// bounded by `max_elapsed`, the deadline and the budget, as a scheduled one is; the schedule's
    /// `max_delay` does not cap it. [`DelayGenerator`](crate::backoff::DelayGenerator) does the same over
    /// a schedule alone, without the error.
    pub fn delay_generator<F>(mut self, generate: F) -> Self
    where
        F: Fn(&RetryEvent<'_>) -> Option<Duration> + Send + Sync + 'static,
    {
        self.delay_generator = Some(Arc::new(generate));
        self
    }

    /// The random number generator behind jitter (default: [`SplitMix64::from_entropy`]). Seed one to make
    /// delays repeatable.
    pub fn rng<R: Rng + Send + 'static>(mut self, rng: R) -> Self {
        self.rng = Some(Arc::new(Mutex::new(rng)));
        self
    }

    /// Checks the settings and builds the policy.
    pub fn build(self) -> Result<RetryPolicy<C, B>, ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::new("max_attempts", "must be at least 1"));
        }
        if self.max_elapsed == Some(Duration::ZERO) {
            return Err(ConfigError::new("max_elapsed", "must be greater than zero"));
        }
        Ok(self.build_unchecked())
    }

    fn build_unchecked(self) -> RetryPolicy<C, B> {
        RetryPolicy {
            max_attempts: self.max_attempts.max(1),
            max_elapsed: self.max_elapsed,
            schedule: self.schedule,
            classifier: self.classifier,
            budget: self.budget,
            on_retry: self.on_retry,
            delay_generator: self.delay_generator,
            rng: self
                .rng
                .unwrap_or_else(|| Arc::new(Mutex::new(SplitMix64::from_entropy()))),
        }
    }
}

/// What the [`on_retry`](RetryPolicyBuilder::on_retry) callback is told before a retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryEvent<'a> {
    pub(crate) attempt: u32,
    pub(crate) delay: Duration,
    pub(crate) classification: Classification,
    pub(crate) error: Option<&'a (dyn Error + Send + Sync + 'static)>,
}

impl<'a> RetryEvent<'a> {
    /// The attempt that failed (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// How long the layer waits before the next attempt (to a
    /// [`delay_generator`](RetryPolicyBuilder::delay_generator): what the schedule chose).
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// How the classifier judged the failure.
    pub fn classification(&self) -> Classification {
        self.classification
    }

    /// The error, or `None` when the classifier failed a response.
    pub fn error(&self) -> Option<&'a (dyn Error + Send + Sync + 'static)> {
        self.error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_name_the_field() {
        assert_eq!(
            RetryPolicy::builder()
                .max_attempts(0)
                .build()
                .unwrap_err()
                .field(),
            "max_attempts"
        );
        assert_eq!(
            RetryPolicy::builder()
                .max_elapsed(Duration::ZERO)
                .build()
                .unwrap_err()
                .field(),
            "max_elapsed"
        );
    }

    #[test]
    fn preset_is_what_its_name_says() {
        let p = RetryPolicy::three_attempts_half_second_doubling();
        assert_eq!(p.max_attempts(), 3);
        assert_eq!(p.schedule().base_delay(), Duration::from_millis(500));
        assert_eq!(p.schedule().multiplier(), 2.0);
        assert_eq!(p.schedule().jitter(), Jitter::None);
        assert!(p.budget().is_none() && p.max_elapsed().is_none());
    }

    #[test]
    fn request_rngs_differ_but_repeat_under_a_seed() {
        let seeded = || {
            RetryPolicy::builder()
                .rng(SplitMix64::seeded(5))
                .build()
                .unwrap()
        };
        let (a, b) = (seeded(), seeded());
        let first = a.request_rng().next_u64();
        assert_eq!(first, b.request_rng().next_u64());
        assert_ne!(
            first,
            a.clone().request_rng().next_u64(),
            "clones draw from the shared generator"
        );
    }
}
