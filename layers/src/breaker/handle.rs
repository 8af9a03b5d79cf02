//! Reading and steering a breaker from outside the request path.

use std::time::Duration;

use super::state::{BreakerState, Shared};
use super::sync::{Arc, Ordering};

/// A handle on one breaker, shared with every service clone the breaker guards: read its state and
/// metrics, or steer it by hand (an operator's kill switch, a deploy script, a test).
///
/// Cloning the handle is cheap; every clone sees the same breaker.
#[derive(Clone)]
pub struct BreakerHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BreakerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerHandle")
            .field("name", &self.name())
            .field("state", &self.state())
            .finish()
    }
}

impl BreakerHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The breaker's name, as used in events and metric labels.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The breaker's settings (read them with [`BreakerConfig`](super::BreakerConfig)'s getters).
    pub fn config(&self) -> &super::BreakerConfig {
        &self.shared.config
    }

    /// The current state. An open breaker whose wait is over still reads `Open` until the next call
    /// moves it to half-open, unless [`automatic_transition`](super::BreakerConfigBuilder::automatic_transition)
    /// is set (a timer then moves it at the end of the wait).
    pub fn state(&self) -> BreakerState {
        self.shared.lock().state()
    }

    /// A snapshot of the current window and the lifetime totals.
    pub fn metrics(&self) -> BreakerMetrics {
        let now = self.shared.now();
        let (state, counts, retry_after, minimum_calls) = {
            let mut core = self.shared.lock();
            (
                core.state(),
                core.window_counts(now),
                core.retry_after(now),
                core.effective_minimum(),
            )
        };
        let t = &self.shared.totals;
        let calls = t.calls.load(Ordering::Relaxed);
        let failures = t.failures.load(Ordering::Relaxed);
        let rejected_open = t.rejected_open.load(Ordering::Relaxed);
        let rejected_half_open = t.rejected_half_open.load(Ordering::Relaxed);
        let rejected_forced_open = t.rejected_forced_open.load(Ordering::Relaxed);
        BreakerMetrics {
            state,
            window_calls: counts.calls,
            window_failures: counts.failures,
            window_successes: counts.calls - counts.failures,
            window_slow_calls: counts.slow,
            minimum_calls,
            retry_after,
            calls,
            failures,
            successes: calls.saturating_sub(failures),
            slow_calls: t.slow_calls.load(Ordering::Relaxed),
            ignored: t.ignored.load(Ordering::Relaxed),
            counted_as_success: t.counted_as_success.load(Ordering::Relaxed),
            rejections: rejected_open + rejected_half_open + rejected_forced_open,
            rejected_open,
            rejected_half_open,
            rejected_forced_open,
            transitions: t.transitions.load(Ordering::Relaxed),
        }
    }

    /// Opens the breaker until [`reset`](Self::reset): every call is rejected with a forced
    /// [`CircuitOpen`](super::CircuitOpen).
    pub fn force_open(&self) {
        let t = self.shared.lock().force_open();
        self.shared.report(t);
    }

    /// Disables the breaker until [`reset`](Self::reset): every call goes through and no outcome is
    /// recorded (a forced close).
    pub fn disable(&self) {
        let t = self.shared.lock().disable();
        self.shared.report(t);
    }

    /// Records without deciding until [`reset`](Self::reset) (Resilience4j's `METRICS_ONLY`): every call
    /// goes through and its outcome is recorded in an empty window, so [`metrics`](Self::metrics) shows
    /// the rates a closed breaker would act on, but nothing opens it.
    pub fn metrics_only(&self) {
        let t = self.shared.lock().metrics_only();
        self.shared.report(t);
    }

    /// Closes the breaker with an empty window and the open-state wait back at its initial value.
    pub fn reset(&self) {
        let t = self.shared.lock().reset();
        self.shared.report(t);
    }
}

/// A snapshot of a breaker, from [`BreakerHandle::metrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerMetrics {
    /// The state when the snapshot was taken.
    pub state: BreakerState,
    /// Calls in the current window (in half-open: probes finished so far).
    pub window_calls: u32,
    /// Failed calls in the current window.
    pub window_failures: u32,
    /// Calls in the current window that did not fail (slow ones included).
    pub window_successes: u32,
    /// Slow calls in the current window.
    pub window_slow_calls: u32,
    /// The number of calls the window must hold before its rates count: `minimum_calls` capped by a
    /// count window's size, or in half-open the number of probes.
    pub minimum_calls: u32,
    /// Time until probes may go through, when open.
    pub retry_after: Option<Duration>,
    /// Calls that finished with an outcome the breaker counted, since it was made.
    pub calls: u64,
    /// Of those, failures.
    pub failures: u64,
    /// Of those, the ones that did not fail (slow ones included).
    pub successes: u64,
    /// Of those, slow calls.
    pub slow_calls: u64,
    /// Calls that ended in an error the classifier ignored (not counted).
    pub ignored: u64,
    /// Calls that ended in an error the classifier counted as a success (in `successes`).
    pub counted_as_success: u64,
    /// Calls rejected, in every state.
    pub rejections: u64,
    /// Of those, rejected while open (the wait not over).
    pub rejected_open: u64,
    /// Of those, rejected while half-open (every probe slot taken).
    pub rejected_half_open: u64,
    /// Of those, rejected while forced open.
    pub rejected_forced_open: u64,
    /// State changes.
    pub transitions: u64,
}

impl BreakerMetrics {
    /// The failure rate in the window, in `[0, 1]`, or `None` while the window holds fewer than
    /// [`minimum_calls`](Self::minimum_calls) (Resilience4j's −1, "not yet"): a rate the breaker would
    /// not act on is not reported as one.
    pub fn failure_rate(&self) -> Option<f64> {
        self.judged()
            .then(|| self.window_failures as f64 / self.window_calls as f64)
    }

    /// The slow-call rate in the window, in `[0, 1]`, or `None` while the window holds fewer than
    /// [`minimum_calls`](Self::minimum_calls).
    pub fn slow_call_rate(&self) -> Option<f64> {
        self.judged()
            .then(|| self.window_slow_calls as f64 / self.window_calls as f64)
    }

    fn judged(&self) -> bool {
        self.window_calls > 0 && self.window_calls >= self.minimum_calls
    }
}
