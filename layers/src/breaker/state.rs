//! The breaker's state machine and the state shared by every clone of one breaker.
//!
//! [`Core`] is plain data driven by explicit timestamps (nanoseconds since the breaker was made), so it
//! can be unit-tested and model-checked under `loom` without a clock. [`Shared`] wraps it in one short
//! mutex (held for a few comparisons, never across an await or a call) plus atomic lifetime totals that
//! the handle reads without locking.

use std::fmt;
use std::time::Duration;

use super::config::{BreakerConfig, SlidingWindow};
use super::error::CircuitOpen;
use super::sync::{AtomicU64, Mutex, MutexGuard, Ordering};
use super::window::{Counts, Outcome, Window};

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls flow and their outcomes are recorded.
    Closed,
    /// Calls are rejected until the wait is over.
    Open,
    /// A limited number of probe calls decide whether to close or open again.
    HalfOpen,
    /// An operator opened the breaker; calls are rejected until they reset it.
    ForcedOpen,
    /// An operator disabled the breaker; every call flows and nothing is recorded.
    Disabled,
}

impl BreakerState {
    /// A short lowercase name, stable for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
            BreakerState::ForcedOpen => "forced_open",
            BreakerState::Disabled => "disabled",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the breaker changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransitionReason {
    /// The failure rate in the window reached the threshold.
    FailureRate,
    /// The slow-call rate in the window reached the threshold.
    SlowCallRate,
    /// The wait in the open state is over; probes may go through.
    WaitElapsed,
    /// The half-open probes came in under both thresholds.
    ProbesSucceeded,
    /// The half-open probes failed too often.
    ProbesFailed,
    /// The half-open probes were too slow too often.
    ProbesSlow,
    /// An operator forced the breaker open.
    ForcedOpen,
    /// An operator disabled the breaker.
    Disabled,
    /// An operator reset the breaker to closed with an empty window.
    Reset,
}

impl TransitionReason {
    /// A short lowercase name, stable for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionReason::FailureRate => "failure_rate",
            TransitionReason::SlowCallRate => "slow_call_rate",
            TransitionReason::WaitElapsed => "wait_elapsed",
            TransitionReason::ProbesSucceeded => "probes_succeeded",
            TransitionReason::ProbesFailed => "probes_failed",
            TransitionReason::ProbesSlow => "probes_slow",
            TransitionReason::ForcedOpen => "forced_open",
            TransitionReason::Disabled => "disabled",
            TransitionReason::Reset => "reset",
        }
    }
}

impl fmt::Display for TransitionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One state change, reported after the lock is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) from: BreakerState,
    pub(crate) to: BreakerState,
    pub(crate) reason: TransitionReason,
}

#[derive(Debug)]
enum Phase {
    Closed,
    Open { until: u64 },
    HalfOpen { free: u32, counts: Counts },
    ForcedOpen,
    Disabled,
}

impl Phase {
    fn state(&self) -> BreakerState {
        match self {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
            Phase::ForcedOpen => BreakerState::ForcedOpen,
            Phase::Disabled => BreakerState::Disabled,
        }
    }
}

/// Permission for one call, tied to the state period (`epoch`) that granted it: an outcome from an
/// earlier period (a call let through while closed that finishes after the breaker opened) is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Permit {
    epoch: u64,
}

/// The state machine.
#[derive(Debug)]
pub(crate) struct Core {
    phase: Phase,
    epoch: u64,
    window: Window,
    openings: u32,
    minimum_calls: u32,
    failure_rate_ppm: u64,
    slow_call_rate_ppm: u64,
    half_open_calls: u32,
    config: BreakerConfig,
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

/// `part / whole >= ppm / 1e6`, exactly.
fn at_least(part: u32, whole: u32, ppm: u64) -> bool {
    part as u128 * 1_000_000 >= ppm as u128 * whole as u128
}

impl Core {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        let window = match config.window {
            SlidingWindow::Count(n) => Window::count(n),
            SlidingWindow::Time { size, buckets } => {
                Window::time(nanos(size) / buckets as u64, buckets)
            }
        };
        Self {
            phase: Phase::Closed,
            epoch: 0,
            window,
            openings: 0,
            minimum_calls: config.effective_minimum_calls(),
            failure_rate_ppm: config.failure_rate_ppm,
            slow_call_rate_ppm: config.slow_call_rate_ppm,
            half_open_calls: config.half_open_calls,
            config,
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        self.phase.state()
    }

    fn go(&mut self, to: Phase, reason: TransitionReason) -> Transition {
        let from = self.phase.state();
        self.epoch += 1;
        self.phase = to;
        Transition {
            from,
            to: self.phase.state(),
            reason,
        }
    }

    fn open(&mut self, now: u64, reason: TransitionReason) -> Transition {
        self.openings = self.openings.saturating_add(1);
        let until = now.saturating_add(nanos(self.config.wait_after(self.openings)));
        self.go(Phase::Open { until }, reason)
    }

    fn close(&mut self, reason: TransitionReason) -> Transition {
        self.openings = 0;
        self.window.clear();
        self.go(Phase::Closed, reason)
    }

    /// Whether [`try_acquire`](Core::try_acquire) reads its `now` (only while open).
    pub(crate) fn waits_for_time(&self) -> bool {
        matches!(self.phase, Phase::Open { .. })
    }

    /// Asks to let one call through at `now`.
    pub(crate) fn try_acquire(
        &mut self,
        now: u64,
    ) -> (Result<Permit, CircuitOpen>, Option<Transition>) {
        let mut transition = None;
        if let Phase::Open { until } = self.phase {
            if now < until {
                return (
                    Err(CircuitOpen::new(
                        Some(Duration::from_nanos(until - now)),
                        false,
                    )),
                    None,
                );
            }
            // The transition happens on the first call after the wait, as in Resilience4j without
            // `automaticTransitionFromOpenToHalfOpenEnabled`: no timer task per breaker.
            let probes = Phase::HalfOpen {
                free: self.half_open_calls,
                counts: Counts::default(),
            };
            transition = Some(self.go(probes, TransitionReason::WaitElapsed));
        }
        let epoch = self.epoch;
        let admitted = match &mut self.phase {
            Phase::Closed | Phase::Disabled => Ok(Permit { epoch }),
            Phase::HalfOpen { free, .. } if *free > 0 => {
                *free -= 1;
                Ok(Permit { epoch })
            }
            Phase::HalfOpen { .. } => Err(CircuitOpen::new(Some(Duration::ZERO), false)),
            Phase::ForcedOpen => Err(CircuitOpen::new(None, true)),
            Phase::Open { .. } => unreachable!("left above"),
        };
        (admitted, transition)
    }

    /// Records the outcome of a permitted call that finished at `now`.
    pub(crate) fn on_outcome(
        &mut self,
        permit: Permit,
        outcome: Outcome,
        now: u64,
    ) -> Option<Transition> {
        if permit.epoch != self.epoch {
            return None;
        }
        match &mut self.phase {
            Phase::Closed => {
                let counts = self.window.record(now, outcome);
                if counts.calls < self.minimum_calls {
                    return None;
                }
                if at_least(counts.failures, counts.calls, self.failure_rate_ppm) {
                    Some(self.open(now, TransitionReason::FailureRate))
                } else if at_least(counts.slow, counts.calls, self.slow_call_rate_ppm) {
                    Some(self.open(now, TransitionReason::SlowCallRate))
                } else {
                    None
                }
            }
            Phase::HalfOpen { counts, .. } => {
                counts.add(outcome);
                let counts = *counts;
                if counts.calls < self.half_open_calls {
                    None
                } else if at_least(counts.failures, counts.calls, self.failure_rate_ppm) {
                    Some(self.open(now, TransitionReason::ProbesFailed))
                } else if at_least(counts.slow, counts.calls, self.slow_call_rate_ppm) {
                    Some(self.open(now, TransitionReason::ProbesSlow))
                } else {
                    Some(self.close(TransitionReason::ProbesSucceeded))
                }
            }
            // Results arriving while open belong to an earlier epoch and were filtered out above;
            // nothing is recorded while forced open or disabled.
            Phase::Open { .. } | Phase::ForcedOpen | Phase::Disabled => None,
        }
    }

    /// Gives back a permit whose call was cancelled or ended in an ignored (permanent) error.
    pub(crate) fn release(&mut self, permit: Permit) {
        if permit.epoch != self.epoch {
            return;
        }
        if let Phase::HalfOpen { free, .. } = &mut self.phase {
            *free = (*free + 1).min(self.half_open_calls);
        }
    }

    pub(crate) fn force_open(&mut self) -> Transition {
        self.go(Phase::ForcedOpen, TransitionReason::ForcedOpen)
    }

    pub(crate) fn disable(&mut self) -> Transition {
        self.go(Phase::Disabled, TransitionReason::Disabled)
    }

    pub(crate) fn reset(&mut self) -> Transition {
        self.close(TransitionReason::Reset)
    }

    pub(crate) fn window_counts(&mut self, now: u64) -> Counts {
        match &self.phase {
            Phase::HalfOpen { counts, .. } => *counts,
            _ => self.window.counts(now),
        }
    }

    pub(crate) fn retry_after(&self, now: u64) -> Option<Duration> {
        match self.phase {
            Phase::Open { until } => Some(Duration::from_nanos(until.saturating_sub(now))),
            _ => None,
        }
    }
}

/// Lifetime totals, read by the handle without taking the lock.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    pub(crate) calls: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) slow_calls: AtomicU64,
    pub(crate) ignored: AtomicU64,
    pub(crate) rejections: AtomicU64,
    pub(crate) transitions: AtomicU64,
}

/// Everything every clone of one breaker shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) name: std::sync::Arc<str>,
    origin: tokio::time::Instant,
    slow_call_nanos: u64,
    core: Mutex<Core>,
    pub(crate) totals: Totals,
}

impl Shared {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Self {
            name: config.name.clone(),
            origin: tokio::time::Instant::now(),
            slow_call_nanos: nanos(config.slow_call_duration),
            core: Mutex::new(Core::new(config)),
            totals: Totals::default(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding this lock can only come from a bug in `Core`; the state is still
        // consistent enough to keep serving, so do not propagate the poison.
        self.core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Nanoseconds since the breaker was made, from tokio's clock (so tests can pause it).
    pub(crate) fn now(&self) -> u64 {
        nanos(tokio::time::Instant::now().saturating_duration_since(self.origin))
    }

    pub(crate) fn is_slow(&self, elapsed: Duration) -> bool {
        nanos(elapsed) > self.slow_call_nanos
    }

    /// Asks to let one call through now.
    pub(crate) fn try_acquire(&self) -> Result<Permit, CircuitOpen> {
        self.try_acquire_with(|| self.now())
    }

    /// At a given time: for the loom model, which has no clock.
    #[cfg(loom)]
    pub(crate) fn try_acquire_at(&self, now: u64) -> Result<Permit, CircuitOpen> {
        self.try_acquire_with(|| now)
    }

    fn try_acquire_with(&self, now: impl FnOnce() -> u64) -> Result<Permit, CircuitOpen> {
        let (result, transition) = {
            let mut core = self.lock();
            // Only the wait of the open state depends on the time: the other states (closed, above
            // all) answer without reading the clock.
            let now = if core.waits_for_time() { now() } else { 0 };
            core.try_acquire(now)
        };
        if let Some(t) = transition {
            self.report(t);
        }
        if result.is_err() {
            self.totals.rejections.fetch_add(1, Ordering::Relaxed);
            if cfg!(feature = "metrics") {
                crate::events::counter(
                    "rampart_breaker_rejections_total",
                    &[("name", self.name.to_string().into())],
                    1,
                );
            }
        }
        result
    }

    pub(crate) fn record_at(&self, permit: Permit, outcome: Outcome, now: u64) {
        self.totals.calls.fetch_add(1, Ordering::Relaxed);
        if outcome.failure {
            self.totals.failures.fetch_add(1, Ordering::Relaxed);
        }
        if outcome.slow {
            self.totals.slow_calls.fetch_add(1, Ordering::Relaxed);
        }
        let transition = self.lock().on_outcome(permit, outcome, now);
        if let Some(t) = transition {
            self.report(t);
        }
    }

    pub(crate) fn release(&self, permit: Permit) {
        self.lock().release(permit);
    }

    pub(crate) fn report(&self, t: Transition) {
        self.totals.transitions.fetch_add(1, Ordering::Relaxed);
        #[cfg(not(loom))]
        {
            if t.to == BreakerState::Open || t.to == BreakerState::ForcedOpen {
                tracing::warn!(target: "rampart::breaker", name = %self.name, from = t.from.as_str(),
                    to = t.to.as_str(), reason = t.reason.as_str(), "circuit breaker opened");
            } else {
                tracing::info!(target: "rampart::breaker", name = %self.name, from = t.from.as_str(),
                    to = t.to.as_str(), reason = t.reason.as_str(), "circuit breaker changed state");
            }
            crate::events::counter(
                "rampart_breaker_transitions_total",
                &[
                    ("name", self.name.to_string().into()),
                    ("from", t.from.as_str().into()),
                    ("to", t.to.as_str().into()),
                    ("reason", t.reason.as_str().into()),
                ],
                1,
            );
        }
        #[cfg(loom)]
        let _ = t;
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    const S: u64 = 1_000_000_000;
    const FAIL: Outcome = Outcome {
        failure: true,
        slow: false,
    };
    const OK: Outcome = Outcome {
        failure: false,
        slow: false,
    };
    const SLOW: Outcome = Outcome {
        failure: false,
        slow: true,
    };

    fn core(min: u32, window: u32, probes: u32) -> Core {
        Core::new(
            BreakerConfig::builder()
                .sliding_window(SlidingWindow::Count(window))
                .minimum_calls(min)
                .half_open_calls(probes)
                .wait_in_open(Duration::from_secs(10))
                .build()
                .unwrap(),
        )
    }

    fn call(c: &mut Core, now: u64, o: Outcome) -> Option<Transition> {
        let p = c.try_acquire(now).0.expect("admitted");
        c.on_outcome(p, o, now)
    }

    #[test]
    fn rate_equal_to_the_threshold_opens() {
        let mut c = core(4, 4, 1);
        assert_eq!(call(&mut c, 0, FAIL), None);
        assert_eq!(call(&mut c, 0, OK), None);
        assert_eq!(call(&mut c, 0, OK), None);
        let t = call(&mut c, 0, FAIL).unwrap();
        assert_eq!(
            (t.to, t.reason),
            (BreakerState::Open, TransitionReason::FailureRate)
        );
    }

    #[test]
    fn a_success_can_open_on_slow_call_rate() {
        let mut c = core(2, 2, 1);
        assert_eq!(call(&mut c, 0, SLOW), None);
        let t = call(&mut c, 0, SLOW).unwrap();
        assert_eq!(t.reason, TransitionReason::SlowCallRate);
    }

    #[test]
    fn outcomes_from_an_earlier_state_are_ignored() {
        let mut c = core(1, 1, 1);
        let early = c.try_acquire(0).0.unwrap();
        call(&mut c, 0, FAIL).unwrap();
        assert_eq!(c.on_outcome(early, FAIL, 1), None);
        assert_eq!(c.state(), BreakerState::Open);
        // After the wait the first acquire moves to half-open; the stale permit still does nothing.
        let (probe, t) = c.try_acquire(10 * S);
        assert_eq!(t.unwrap().to, BreakerState::HalfOpen);
        c.release(early);
        assert!(
            c.try_acquire(10 * S).0.is_err(),
            "one probe only, and a stale release gave none back"
        );
        assert_eq!(
            c.on_outcome(probe.unwrap(), OK, 10 * S).unwrap().to,
            BreakerState::Closed
        );
    }
}
