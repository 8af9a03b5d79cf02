//! The breaker's state machine and the state shared by every clone of one breaker.
//!
//! [`Core`] is plain data driven by explicit timestamps (nanoseconds since the breaker was made), so it
//! can be unit-tested and model-checked under `loom` without a clock. [`Shared`] wraps it in one short
//! mutex (held for a few comparisons, never across an await or a call), atomic lifetime totals that
//! the handle reads without locking, and the atomics each release of the mutex publishes so that
//! admission, rejection while open and most successes need no lock ([`Published`]).

use std::fmt;
use std::time::Duration;

use super::config::{BreakerConfig, SlidingWindow};
use super::error::CircuitOpen;
use super::sync::{Arc, AtomicU64, Mutex, MutexGuard, Ordering};
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
    /// An operator set the breaker to record only (Resilience4j's `METRICS_ONLY`): every call flows and
    /// its outcome is recorded in the window, which never opens the breaker.
    MetricsOnly,
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
            BreakerState::MetricsOnly => "metrics_only",
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
    /// The half-open probes had not decided within `max_wait_in_half_open`.
    ProbesTimedOut,
    /// An operator set the breaker to record only.
    MetricsOnly,
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
            TransitionReason::ProbesTimedOut => "probes_timed_out",
            TransitionReason::MetricsOnly => "metrics_only",
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
    /// The epoch the transition started.
    pub(crate) epoch: u64,
    /// With `automatic_transition`: when (nanoseconds since the origin) a timer should look at the
    /// new state again (the end of the open wait, or of the half-open limit).
    pub(crate) wake_at: Option<u64>,
}

/// `until` of a half-open state without `max_wait_in_half_open`.
const NEVER: u64 = u64::MAX;

#[derive(Debug)]
enum Phase {
    Closed,
    Open {
        until: u64,
    },
    HalfOpen {
        free: u32,
        counts: Counts,
        until: u64,
    },
    ForcedOpen,
    Disabled,
    MetricsOnly,
}

impl Phase {
    fn state(&self) -> BreakerState {
        match self {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
            Phase::ForcedOpen => BreakerState::ForcedOpen,
            Phase::Disabled => BreakerState::Disabled,
            Phase::MetricsOnly => BreakerState::MetricsOnly,
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
    /// The tag of the last [`Published::fast`] word handed out (never 0 once one was).
    fast_tag: u32,
    /// Maps finishing instants to the time window's buckets without converting each one.
    pub(crate) bucket_clock: BucketClock,
}

/// The time window's current bucket as an interval of tokio instants: an outcome that finishes before
/// `end` falls in the bucket starting `start` nanoseconds after the breaker's origin.
///
/// Converting an `Instant` to nanoseconds since the origin (a subtraction of two `timespec`s and a
/// 128-bit multiplication) costs more than the clock read itself; comparing two instants costs a few
/// instructions. The window only ever uses a time through the bucket it falls in
/// ([`Window`](super::window)), so handing it `start` for any instant before `end` gives it exactly the
/// counts the instant itself would: the cache is equivalent to the exact time by construction, under a
/// paused tokio clock as under the real one (its instants are tokio's). An instant *before* `start`
/// (a thread that read the clock just before another moved the bucket on) lands in the current bucket,
/// as it already did without the cache (the window never records into a bucket older than its newest).
#[derive(Debug, Default)]
pub(crate) struct BucketClock {
    end: Option<tokio::time::Instant>,
    start: u64,
}

/// `at + d` through std's `Instant` (tokio's `checked_add` is not inlined across crates; its conversions
/// to and from std's are).
#[inline]
fn add(at: tokio::time::Instant, d: Duration) -> Option<tokio::time::Instant> {
    at.into_std()
        .checked_add(d)
        .map(tokio::time::Instant::from_std)
}

#[inline]
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
            fast_tag: 0,
            bucket_clock: BucketClock::default(),
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        self.phase.state()
    }

    /// The current state period, for the models that fire timers by hand.
    #[cfg(loom)]
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The epoch whose permits anyone may take without the lock (closed or disabled: every call is
    /// let through), or [`LOCKED`].
    fn admitting(&self) -> u64 {
        match self.phase {
            Phase::Closed | Phase::Disabled | Phase::MetricsOnly => self.epoch,
            _ => LOCKED,
        }
    }

    /// Whether a success (neither failed nor slow) recorded now could not change the state: closed, the
    /// window holds `minimum_calls` outcomes and both rates are under their thresholds. One more such
    /// success adds a call and no failure or slow call, so both rates can only go down and the window
    /// still holds `minimum_calls`: the check [`on_outcome`](Core::on_outcome_with) makes after it would
    /// answer "stay closed". Such successes may then be counted without the lock (see [`Published`]).
    fn successes_cannot_open(&self) -> bool {
        match self.phase {
            Phase::Closed => {}
            // Records, never decides.
            Phase::MetricsOnly => return true,
            _ => return false,
        }
        let c = self.window.totals();
        c.calls >= self.minimum_calls
            && !at_least(c.failures, c.calls, self.failure_rate_ppm)
            && !at_least(c.slow, c.calls, self.slow_call_rate_ppm)
    }

    /// Folds `n` successes counted without the lock (while [`successes_cannot_open`] held, which the
    /// lock taken since keeps true) into the window.
    ///
    /// [`successes_cannot_open`]: Core::successes_cannot_open
    fn add_successes(&mut self, n: u32) {
        debug_assert!(matches!(self.phase, Phase::Closed | Phase::MetricsOnly));
        self.window.add_successes(n);
    }

    /// The open state's end for [`Published::open_until`], or [`NOT_OPEN`].
    fn open_until(&self) -> u64 {
        match self.phase {
            Phase::Open { until } => until,
            _ => NOT_OPEN,
        }
    }

    fn go(&mut self, to: Phase, reason: TransitionReason) -> Transition {
        let from = self.phase.state();
        self.epoch += 1;
        self.phase = to;
        let wake_at = match self.phase {
            _ if !self.config.automatic_transition => None,
            Phase::Open { until } => Some(until),
            Phase::HalfOpen { until, .. } if until != NEVER => Some(until),
            _ => None,
        };
        Transition {
            from,
            to: self.phase.state(),
            reason,
            epoch: self.epoch,
            wake_at,
        }
    }

    fn half_open(&mut self, now: u64) -> Transition {
        let until = self
            .config
            .max_wait_in_half_open
            .map_or(NEVER, |max| now.saturating_add(nanos(max)).min(NEVER - 1));
        let probes = Phase::HalfOpen {
            free: self.half_open_calls,
            counts: Counts::default(),
            until,
        };
        self.go(probes, TransitionReason::WaitElapsed)
    }

    /// What a timer set for `epoch` does at `now`: leave open for half-open, or half-open for open,
    /// if the state is still the one it was set for and its time is up (the same rule as a call's).
    pub(crate) fn on_timer(&mut self, epoch: u64, now: u64) -> Option<Transition> {
        if epoch != self.epoch {
            return None;
        }
        match self.phase {
            Phase::Open { until } if now >= until => Some(self.half_open(now)),
            Phase::HalfOpen { until, .. } if now >= until => {
                Some(self.open(now, TransitionReason::ProbesTimedOut))
            }
            _ => None,
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

    /// Whether [`try_acquire`](Core::try_acquire) reads its `now` (only while open, or half-open with a
    /// limit).
    pub(crate) fn waits_for_time(&self) -> bool {
        match self.phase {
            Phase::Open { .. } => true,
            Phase::HalfOpen { until, .. } => until != NEVER,
            _ => false,
        }
    }

    /// Asks to let one call through at `now`.
    #[inline]
    pub(crate) fn try_acquire(
        &mut self,
        now: u64,
    ) -> (Result<Permit, CircuitOpen>, Option<Transition>) {
        let mut transition = None;
        if let Phase::HalfOpen { until, .. } = self.phase
            && now >= until
        {
            // The probes had their time: open again, and judge this call by the new wait.
            transition = Some(self.open(now, TransitionReason::ProbesTimedOut));
        }
        if let Phase::Open { until } = self.phase {
            if now < until {
                return (
                    Err(CircuitOpen::new(
                        Some(Duration::from_nanos(until - now)),
                        false,
                    )),
                    transition,
                );
            }
            // Without `automatic_transition`, on the first call at or after the end of the wait (`>=`,
            // Polly's rule; see the module docs): no timer task per breaker.
            transition = Some(self.half_open(now));
        }
        let epoch = self.epoch;
        let admitted = match &mut self.phase {
            Phase::Closed | Phase::Disabled | Phase::MetricsOnly => Ok(Permit { epoch }),
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
    #[cfg(any(test, loom))]
    pub(crate) fn on_outcome(
        &mut self,
        permit: Permit,
        outcome: Outcome,
        now: u64,
    ) -> Option<Transition> {
        self.on_outcome_with(permit, outcome, now, || now)
    }

    /// Records the outcome of a permitted call; `window_now` is a time in the bucket the call finished
    /// in (all the window reads), `exact` the time itself, read only to time an opening.
    pub(crate) fn on_outcome_with(
        &mut self,
        permit: Permit,
        outcome: Outcome,
        window_now: u64,
        exact: impl FnOnce() -> u64,
    ) -> Option<Transition> {
        if permit.epoch != self.epoch {
            return None;
        }
        // Read at most once, and only where a decision needs the exact time.
        let (mut read, mut at) = (Some(exact), None::<u64>);
        let mut exact = move || *at.get_or_insert_with(|| read.take().map_or(0, |f| f()));
        match &mut self.phase {
            Phase::Closed => {
                let counts = self.window.record(window_now, outcome);
                if counts.calls < self.minimum_calls {
                    return None;
                }
                if at_least(counts.failures, counts.calls, self.failure_rate_ppm) {
                    Some(self.open(exact(), TransitionReason::FailureRate))
                } else if at_least(counts.slow, counts.calls, self.slow_call_rate_ppm) {
                    Some(self.open(exact(), TransitionReason::SlowCallRate))
                } else {
                    None
                }
            }
            Phase::MetricsOnly => {
                self.window.record(window_now, outcome);
                None
            }
            Phase::HalfOpen { until, .. } if *until != NEVER && exact() >= *until => {
                // Finished after the probes' time was up, before any call or timer saw it: the
                // probes did not decide in time, whatever this one says.
                Some(self.open(exact(), TransitionReason::ProbesTimedOut))
            }
            Phase::HalfOpen { counts, .. } => {
                counts.add(outcome);
                let counts = *counts;
                if counts.calls < self.half_open_calls {
                    None
                } else if at_least(counts.failures, counts.calls, self.failure_rate_ppm) {
                    Some(self.open(exact(), TransitionReason::ProbesFailed))
                } else if at_least(counts.slow, counts.calls, self.slow_call_rate_ppm) {
                    Some(self.open(exact(), TransitionReason::ProbesSlow))
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

    pub(crate) fn metrics_only(&mut self) -> Transition {
        self.openings = 0;
        self.window.clear();
        self.go(Phase::MetricsOnly, TransitionReason::MetricsOnly)
    }

    /// The number of calls the rates of the current state are judged on (`minimum_calls` capped by a
    /// count window; in half-open, the probes).
    pub(crate) fn effective_minimum(&self) -> u32 {
        match self.phase {
            Phase::HalfOpen { .. } => self.half_open_calls,
            _ => self.minimum_calls,
        }
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
    pub(crate) counted_as_success: AtomicU64,
    /// Rejections, by the state that rejected (Resilience4j keeps "not permitted" per state).
    pub(crate) rejected_open: AtomicU64,
    pub(crate) rejected_half_open: AtomicU64,
    pub(crate) rejected_forced_open: AtomicU64,
    pub(crate) transitions: AtomicU64,
}

#[cfg(all(test, not(loom)))]
impl Totals {
    pub(crate) fn rejections(&self) -> u64 {
        self.rejected_open.load(Ordering::Relaxed)
            + self.rejected_half_open.load(Ordering::Relaxed)
            + self.rejected_forced_open.load(Ordering::Relaxed)
    }
}

/// [`Published::admit`] when a permit needs the lock (open, half-open, forced open).
const LOCKED: u64 = u64::MAX;

/// [`Published::open_until`] when the breaker is not open with a wait (take the lock).
const NOT_OPEN: u64 = u64::MAX;

/// [`Published::fast`] when successes must take the lock.
const NO_FAST: u64 = 0;

/// What each release of the lock publishes, so that the common cases need no lock:
///
/// - `admit`: the epoch whose permits anyone may take (closed or disabled), or [`LOCKED`].
/// - `open_until`: while open, the end of the wait (nanoseconds since the origin), or [`NOT_OPEN`]: a
///   call before it is rejected from this and a clock read.
/// - `fast` and `fast_end`: while [`Core::successes_cannot_open`] holds, a nonzero tag in the high 32
///   bits of `fast` and, in its low 32 bits, the number of successes counted since without the lock
///   (each a compare-and-swap that keeps the tag), and the end of the time window's newest bucket
///   (`u64::MAX` for a count window). Each acquisition of the lock swaps `fast` to [`NO_FAST`] and folds
///   the successes into the window before anything else, so a success counted that way is ordered
///   before whatever the lock holder does; a compare-and-swap that loses to the swap fails and the
///   success takes the lock. Each release that publishes `fast` again gives it a new tag, so a
///   compare-and-swap from before a release cannot succeed after it.
#[derive(Debug)]
struct Published {
    admit: AtomicU64,
    open_until: AtomicU64,
    fast: AtomicU64,
    fast_end: AtomicU64,
}

/// The lock on [`Core`]: taking it folds the successes counted without it into the window; releasing
/// it publishes what calls may do without it ([`Published`]).
pub(crate) struct CoreGuard<'a> {
    core: MutexGuard<'a, Core>,
    published: &'a Published,
}

impl std::ops::Deref for CoreGuard<'_> {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl std::ops::DerefMut for CoreGuard<'_> {
    fn deref_mut(&mut self) -> &mut Core {
        &mut self.core
    }
}

impl Drop for CoreGuard<'_> {
    fn drop(&mut self) {
        // Still under the lock (the `MutexGuard` field is dropped after this): the published values are
        // the state as of this release, and releases are ordered by the lock. Orders: a reader that
        // sees `admit` (Acquire) sees the `open_until` stored before it; one that sees `fast` (Acquire)
        // sees the `admit` and `fast_end` stored before it.
        let p = self.published;
        p.open_until
            .store(self.core.open_until(), Ordering::Relaxed);
        p.admit.store(self.core.admitting(), Ordering::Release);
        // `fast` is NO_FAST here: the acquisition swapped it, and nothing else stores it.
        if self.core.successes_cannot_open() {
            let tag = match self.core.fast_tag.wrapping_add(1) {
                0 => 1,
                tag => tag,
            };
            self.core.fast_tag = tag;
            p.fast_end
                .store(self.core.window.newest_bucket_end(), Ordering::Relaxed);
            p.fast.store((tag as u64) << 32, Ordering::Release);
        }
    }
}

/// Everything every clone of one breaker shares.
///
/// The closed state (and the disabled one) admits every call, so `try_acquire` answers there from
/// `admit`, one atomic load, without the lock: `admit` holds the epoch of the state as of the last
/// release of the lock, or [`LOCKED`]. A permit taken that way just before a transition carries the
/// epoch before it, and its outcome is ignored: exactly what happens to a call admitted under the lock
/// just before the transition. An open breaker rejects from `open_until` and the clock, without the
/// lock; half-open and forced-open states, and the first call after the wait, take it. Successes are
/// counted without the lock while no success could open the breaker (see [`Published`]); failures,
/// slow calls, the first outcome of each bucket and outcomes while too few calls are in the window
/// take it.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) name: std::sync::Arc<str>,
    /// The settings, for reading through the handle (the core keeps its own copy under the lock).
    pub(crate) config: BreakerConfig,
    /// This breaker, for the timer tasks of `automatic_transition` (they must not keep it alive).
    #[cfg(not(loom))]
    me: std::sync::Weak<Shared>,
    published: Published,
    origin: tokio::time::Instant,
    slow_call: Duration,
    core: Mutex<Core>,
    pub(crate) totals: Totals,
}

impl Shared {
    /// The shared state of a new breaker.
    #[cfg(not(loom))]
    pub(crate) fn new_arc(config: BreakerConfig) -> Arc<Self> {
        Arc::new_cyclic(|me| Self::with_me(config, me.clone()))
    }

    /// The shared state of a new breaker (loom has no timers).
    #[cfg(loom)]
    pub(crate) fn new_arc(config: BreakerConfig) -> Arc<Self> {
        Arc::new(Self::with_me(config))
    }

    /// Without timers (`automatic_transition` needs [`new_arc`](Self::new_arc)): for tests.
    #[cfg(any(test, loom))]
    pub(crate) fn new(config: BreakerConfig) -> Self {
        #[cfg(not(loom))]
        return Self::with_me(config, std::sync::Weak::new());
        #[cfg(loom)]
        Self::with_me(config)
    }

    fn with_me(config: BreakerConfig, #[cfg(not(loom))] me: std::sync::Weak<Shared>) -> Self {
        Self {
            name: config.name.clone(),
            config: config.clone(),
            #[cfg(not(loom))]
            me,
            published: Published {
                admit: AtomicU64::new(0), // closed, epoch 0
                open_until: AtomicU64::new(NOT_OPEN),
                fast: AtomicU64::new(NO_FAST), // too few calls in the window
                fast_end: AtomicU64::new(0),
            },
            origin: tokio::time::Instant::now(),
            slow_call: config.slow_call_duration,
            core: Mutex::new(Core::new(config)),
            totals: Totals::default(),
        }
    }

    #[inline]
    pub(crate) fn lock(&self) -> CoreGuard<'_> {
        // A panic while holding this lock can only come from a bug in `Core`; the state is still
        // consistent enough to keep serving, so do not propagate the poison.
        let mut core = self
            .core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Successes counted without the lock since its last release: they come before whatever is
        // done under it. Relaxed: only the order of modifications of `fast` matters here.
        let pending = self.published.fast.swap(NO_FAST, Ordering::Relaxed) as u32;
        if pending > 0 {
            core.add_successes(pending);
            self.totals
                .calls
                .fetch_add(pending as u64, Ordering::Relaxed);
        }
        CoreGuard {
            core,
            published: &self.published,
        }
    }

    /// Nanoseconds since the breaker was made, from tokio's clock (so tests can pause it).
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.nanos_at(tokio::time::Instant::now())
    }

    #[inline]
    fn nanos_at(&self, at: tokio::time::Instant) -> u64 {
        nanos(at.saturating_duration_since(self.origin))
    }

    /// The instant after which a call started at `started` is slow (`None`: never), so that telling
    /// whether it was is a comparison of two instants when it finishes.
    #[inline]
    pub(crate) fn slow_after(&self, started: tokio::time::Instant) -> Option<tokio::time::Instant> {
        add(started, self.slow_call)
    }

    /// `origin + nanos`, the way the published times are turned back into instants.
    #[inline]
    fn instant_at(&self, nanos: u64) -> Option<tokio::time::Instant> {
        add(self.origin, Duration::from_nanos(nanos))
    }

    /// Records the outcome of a permitted call that finished at `finished`.
    #[inline]
    pub(crate) fn record(&self, permit: Permit, outcome: Outcome, finished: tokio::time::Instant) {
        let plain = !outcome.failure && !outcome.slow;
        if plain
            && self.try_count_success(permit, |end| {
                // An `Instant + Duration` (no conversion of `finished` into nanoseconds); `None` only
                // past the clock's range.
                self.instant_at(end).is_some_and(|end| finished < end)
            })
        {
            return;
        }
        self.record_locked(permit, outcome, finished);
    }

    // Cost. A success (neither failed nor slow) takes no lock while no success could open the
    // breaker: closed, the window already holds `minimum_calls` outcomes and both rates are under their
    // thresholds, so one more success only lowers them. It is then one compare-and-swap on a counter
    // of pending successes, tagged by the lock's last release, after checking that the permit's epoch
    // is current and (time window) that the call finished in the newest bucket. Whoever takes the lock
    // next first folds those successes into the window, so they come before whatever it does: a
    // transition cannot slip in between (it changes the tag, which fails the compare-and-swap, and the
    // success then takes the lock and is judged stale there). The count window works the same way.
    /// Counts a success (neither failed nor slow) without the lock, if it may be: see [`Published`].
    /// `in_newest_bucket` tells whether the call finished before the given end of the time window's
    /// newest bucket (it is not asked for a count window). `false`: take the lock.
    #[inline]
    fn try_count_success(
        &self,
        permit: Permit,
        in_newest_bucket: impl FnOnce(u64) -> bool,
    ) -> bool {
        let p = &self.published;
        let mut word = p.fast.load(Ordering::Acquire);
        if word == NO_FAST {
            return false;
        }
        // Seen with or after the `fast` just read (stored before it, under the same lock): if the epoch is
        // still the permit's, no transition came between that release and this load, and one after the
        // load swaps `fast` first, which fails the compare-and-swap below.
        if p.admit.load(Ordering::Relaxed) != permit.epoch {
            return false;
        }
        let end = p.fast_end.load(Ordering::Relaxed);
        if end != u64::MAX && !in_newest_bucket(end) {
            return false; // the first outcome of a newer bucket moves the window on, under the lock
        }
        loop {
            if word as u32 == u32::MAX {
                return false; // full: the lock folds it
            }
            match p
                .fast
                .compare_exchange_weak(word, word + 1, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                // Another success counted (same tag): try again. A new tag or NO_FAST: the lock was
                // taken in between, and what was checked above may no longer hold.
                Err(now) if now >> 32 == word >> 32 => word = now,
                Err(_) => return false,
            }
        }
    }

    // Cost. Everything else takes the lock once: failures and slow calls (each may open the breaker),
    // the first outcome of each time bucket (which moves the window on), and every outcome while the
    // window holds fewer than `minimum_calls` or a rate is at or over its threshold. A time window is
    // handed the start of the current bucket, cached as an interval of instants (`BucketClock`),
    // instead of the finishing time converted to nanoseconds.
    #[inline(never)]
    fn record_locked(&self, permit: Permit, outcome: Outcome, finished: tokio::time::Instant) {
        self.count(outcome);
        let transition = {
            let mut core = self.lock();
            let window_now = match core.window.bucket_nanos() {
                // A count window does not read the time.
                None => 0,
                Some(_) if core.bucket_clock.end.is_some_and(|end| finished < end) => {
                    core.bucket_clock.start
                }
                Some(bucket) => {
                    let now = self.nanos_at(finished);
                    let start = now - now % bucket;
                    core.bucket_clock = BucketClock {
                        end: self
                            .origin
                            .checked_add(Duration::from_nanos(start.saturating_add(bucket))),
                        start,
                    };
                    now
                }
            };
            core.on_outcome_with(permit, outcome, window_now, || self.nanos_at(finished))
        };
        if let Some(t) = transition {
            self.report(t);
        }
    }

    fn count(&self, outcome: Outcome) {
        self.totals.calls.fetch_add(1, Ordering::Relaxed);
        if outcome.failure {
            self.totals.failures.fetch_add(1, Ordering::Relaxed);
        }
        if outcome.slow {
            self.totals.slow_calls.fetch_add(1, Ordering::Relaxed);
        }
    }

    // Cost. Admission while closed (or disabled) is one atomic load: the lock publishes, each time it
    // is released, the epoch whose permits anyone may take, and a permit taken just before a
    // transition is stale and ignored, as one admitted under the lock would be. Half-open takes the
    // lock. Rejecting while open takes no lock either: the lock publishes the end of the wait, and a
    // call before it is rejected from that and a clock read (a comparison of instants; the wait that
    // `CircuitOpen::retry_after` reports is computed from them only when asked for). The first call
    // after the wait takes the lock to move to half-open. What remains is the `Box` that turns
    // `CircuitOpen` into a `BoxError`: only a zero-sized error boxes without allocating, so a rejection
    // that carries its `retry_after` allocates once.
    /// Asks to let one call through now.
    #[inline]
    pub(crate) fn try_acquire(&self) -> Result<Permit, CircuitOpen> {
        let epoch = self.published.admit.load(Ordering::Acquire);
        if epoch != LOCKED {
            return Ok(Permit { epoch });
        }
        let until = self.published.open_until.load(Ordering::Relaxed);
        if until != NOT_OPEN {
            // Open: compare instants (no conversion of the clock's reading into nanoseconds), and keep
            // both in the error for `retry_after`.
            let now = tokio::time::Instant::now();
            if let Some(until) = self.instant_at(until)
                && now < until
            {
                return Err(self.rejected(CircuitOpen::between(now, until), BreakerState::Open));
            }
        }
        self.try_acquire_locked(|| self.now())
    }

    /// At a given time: for the loom model, which has no clock.
    #[cfg(loom)]
    pub(crate) fn try_acquire_at(&self, now: u64) -> Result<Permit, CircuitOpen> {
        let epoch = self.published.admit.load(Ordering::Acquire);
        if epoch != LOCKED {
            return Ok(Permit { epoch });
        }
        let until = self.published.open_until.load(Ordering::Relaxed);
        if until != NOT_OPEN && now < until {
            let open = CircuitOpen::new(Some(Duration::from_nanos(until - now)), false);
            return Err(self.rejected(open, BreakerState::Open));
        }
        self.try_acquire_locked(|| now)
    }

    /// Counts a rejection by a breaker in `state`.
    #[inline]
    fn rejected(&self, open: CircuitOpen, state: BreakerState) -> CircuitOpen {
        let counter = match state {
            BreakerState::HalfOpen => &self.totals.rejected_half_open,
            BreakerState::ForcedOpen => &self.totals.rejected_forced_open,
            _ => &self.totals.rejected_open,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if cfg!(feature = "metrics") {
            crate::events::counter(
                "rampart_breaker_rejections_total",
                &[
                    ("name", self.name.to_string().into()),
                    ("state", state.as_str().into()),
                ],
                1,
            );
        }
        open
    }

    #[inline(never)]
    fn try_acquire_locked(&self, now: impl FnOnce() -> u64) -> Result<Permit, CircuitOpen> {
        let (result, transition, state) = {
            let mut core = self.lock();
            // Only the waits of the open and half-open states depend on the time: the other states
            // (closed, above all) answer without reading the clock.
            let now = if core.waits_for_time() { now() } else { 0 };
            let (result, transition) = core.try_acquire(now);
            (result, transition, core.state())
        };
        if let Some(t) = transition {
            self.report(t);
        }
        result.map_err(|open| self.rejected(open, state))
    }

    /// At a given time: for the loom model, which has no clock.
    #[cfg(loom)]
    pub(crate) fn record_at(&self, permit: Permit, outcome: Outcome, now: u64) {
        if !outcome.failure && !outcome.slow && self.try_count_success(permit, |end| now < end) {
            return;
        }
        self.count(outcome);
        let transition = self.lock().on_outcome(permit, outcome, now);
        if let Some(t) = transition {
            self.report(t);
        }
    }

    pub(crate) fn release(&self, permit: Permit) {
        self.lock().release(permit);
    }

    /// What a timer set at a transition does when it fires at `now`.
    pub(crate) fn fire_timer_at(&self, epoch: u64, now: u64) {
        let transition = self.lock().on_timer(epoch, now);
        if let Some(t) = transition {
            self.report(t);
        }
    }

    /// Sets a timer that looks at the state again at `at` (nanoseconds since the origin), on the
    /// current tokio runtime; none outside one (the next call then does it).
    #[cfg(not(loom))]
    fn schedule(&self, epoch: u64, at: u64) {
        let (Ok(runtime), Some(when)) =
            (tokio::runtime::Handle::try_current(), self.instant_at(at))
        else {
            return;
        };
        let me = self.me.clone();
        runtime.spawn(async move {
            tokio::time::sleep_until(when).await;
            if let Some(shared) = me.upgrade() {
                let now = shared.now();
                shared.fire_timer_at(epoch, now);
            }
        });
    }

    pub(crate) fn report(&self, t: Transition) {
        self.totals.transitions.fetch_add(1, Ordering::Relaxed);
        #[cfg(not(loom))]
        if let Some(at) = t.wake_at {
            self.schedule(t.epoch, at);
        }
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

    /// The bucket clock hands the window exactly the bucket the exact time would, at and around
    /// bucket boundaries, under tokio's paused clock.
    #[tokio::test(start_paused = true)]
    async fn bucket_clock_matches_the_exact_time() {
        use tokio::time::{Instant, advance};
        let config = BreakerConfig::builder()
            .sliding_window(SlidingWindow::Time {
                size: Duration::from_secs(3),
                buckets: 3,
            })
            .minimum_calls(1_000)
            .build()
            .unwrap();
        let shared = Shared::new(config);
        let origin = Instant::now();
        let record = |at: Instant| {
            let permit = shared.try_acquire().unwrap();
            shared.record(permit, OK, at);
        };
        let calls = |shared: &Shared| {
            let now = shared.now();
            shared.lock().window_counts(now).calls
        };
        // Bucket [0, 1 s): two outcomes, the second through the cache.
        record(origin);
        record(origin + Duration::from_millis(999));
        // Exactly at 1 s: the next bucket, not the cached one.
        record(origin + Duration::from_secs(1));
        advance(Duration::from_millis(2_999)).await;
        assert_eq!(calls(&shared), 3, "all three in the window until 3 s");
        advance(Duration::from_millis(1)).await;
        assert_eq!(
            calls(&shared),
            1,
            "at 3 s the first bucket has left, the call at 1 s stays"
        );
        // A later bucket moves the cache on; an instant from before it lands in the newest bucket,
        // as the exact time does (the window never records into an older bucket than its newest).
        record(origin + Duration::from_millis(3_500));
        record(origin + Duration::from_millis(2_500));
        advance(Duration::from_secs(1)).await;
        assert_eq!(calls(&shared), 2, "at 4 s: the two outcomes of [3 s, 4 s)");
        advance(Duration::from_secs(2)).await;
        assert_eq!(calls(&shared), 0);
    }

    /// Closed and disabled admit without the lock; every other state takes it, and the published
    /// epoch follows every transition, those made through the handle included.
    #[tokio::test(start_paused = true)]
    async fn lock_free_admission_follows_the_state() {
        let shared = Shared::new(
            BreakerConfig::builder()
                .sliding_window(SlidingWindow::Count(1))
                .minimum_calls(1)
                .wait_in_open(Duration::from_secs(10))
                .build()
                .unwrap(),
        );
        let early = shared.try_acquire().unwrap();
        let permit = shared.try_acquire().unwrap();
        shared.record(permit, FAIL, tokio::time::Instant::now());
        assert_eq!(shared.lock().state(), BreakerState::Open);
        assert!(shared.try_acquire().is_err(), "open rejects");
        // A permit taken while closed is stale now: its outcome does nothing.
        shared.record(early, OK, tokio::time::Instant::now());
        assert_eq!(shared.lock().state(), BreakerState::Open);
        let t = shared.lock().disable();
        assert_eq!(t.to, BreakerState::Disabled);
        assert!(shared.try_acquire().is_ok(), "disabled admits");
        let t = shared.lock().force_open();
        assert_eq!(t.to, BreakerState::ForcedOpen);
        assert!(shared.try_acquire().unwrap_err().is_forced());
        shared.lock().reset();
        let permit = shared.try_acquire().expect("closed admits");
        shared.record(permit, OK, tokio::time::Instant::now());
        assert_eq!(
            shared.lock().window_counts(0).calls,
            1,
            "its epoch is current"
        );
    }

    /// Successes pending in the lock-free counter (0 when it is off).
    fn pending(shared: &Shared) -> u32 {
        shared.published.fast.load(Ordering::Relaxed) as u32
    }

    /// The lock-free paths (successes counted without the lock, rejections from the published wait)
    /// change nothing the state machine decides: `Shared` and a plain `Core` fed the same calls at the
    /// same times agree on every state, window and wait, for a time window and a count window, through
    /// openings, probes and closings, and in the metrics-only state (which counts successes without
    /// the lock whatever the rates).
    #[tokio::test(start_paused = true)]
    async fn lock_free_paths_match_the_plain_state_machine() {
        use tokio::time::{Instant, advance};
        let windows = [
            SlidingWindow::Time {
                size: Duration::from_secs(4),
                buckets: 4,
            },
            SlidingWindow::Count(7),
        ];
        for (window, metrics_only) in windows.into_iter().flat_map(|w| [(w, false), (w, true)]) {
            let config = BreakerConfig::builder()
                .sliding_window(window)
                .minimum_calls(5)
                .half_open_calls(2)
                .slow_call_rate(0.6)
                .wait_in_open(Duration::from_secs(3))
                .build()
                .unwrap();
            let shared = Shared::new(config.clone());
            let mut core = Core::new(config);
            if metrics_only {
                shared.lock().metrics_only();
                core.metrics_only();
            }
            let origin = Instant::now();
            let mut seed = 0x2545_f491_4f6c_dd1d_u64;
            let mut lock_free = 0;
            for step in 0..4_000u32 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Time moving in small steps; periods of mostly quick successes, of mostly failures and
                // of mostly slow calls.
                advance(Duration::from_millis(seed % 61)).await;
                let (failing, slow) = match (step / 300) % 4 {
                    1 => (10, 11),
                    3 => (1, 12),
                    _ => (2, 3),
                };
                let outcome = match (seed >> 8) % 16 {
                    r if r < failing => FAIL,
                    r if r < slow => SLOW,
                    _ => OK,
                };
                let now = Instant::now();
                let nanos = nanos(now - origin);
                let (expected, _) = core.try_acquire(nanos);
                match (shared.try_acquire(), expected) {
                    (Ok(p), Ok(q)) => {
                        let before = pending(&shared);
                        shared.record(p, outcome, now);
                        if pending(&shared) == before + 1 {
                            lock_free += 1;
                        }
                        core.on_outcome(q, outcome, nanos);
                    }
                    (Err(a), Err(b)) => assert_eq!(a, b, "step {step}"),
                    (a, b) => panic!("step {step}: {a:?} against {b:?}"),
                }
                // Look (which folds the pending successes) only now and then, so that several
                // successes are pending at once.
                if step % 5 == 0 {
                    let mut locked = shared.lock();
                    assert_eq!(locked.state(), core.state(), "step {step}");
                    assert_eq!(
                        locked.window_counts(nanos),
                        core.window_counts(nanos),
                        "step {step}"
                    );
                    assert_eq!(locked.retry_after(nanos), core.retry_after(nanos));
                }
            }
            let transitions = shared.totals.transitions.load(Ordering::Relaxed);
            if metrics_only {
                assert_eq!(transitions, 0, "{window:?}: metrics-only never decides");
                assert_eq!(shared.lock().state(), BreakerState::MetricsOnly);
            } else {
                assert!(
                    transitions >= 6,
                    "{window:?}: only {transitions} transitions"
                );
            }
            assert!(
                lock_free > 100,
                "{window:?}: {lock_free} successes without the lock"
            );
        }
    }

    /// An open breaker rejects without the lock with the same wait the lock would give, and the first
    /// call at the end of the wait goes through the lock to half-open.
    #[tokio::test(start_paused = true)]
    async fn open_rejects_from_the_published_wait() {
        use tokio::time::advance;
        let shared = Shared::new(
            BreakerConfig::builder()
                .sliding_window(SlidingWindow::Count(1))
                .minimum_calls(1)
                .wait_in_open(Duration::from_secs(2))
                .build()
                .unwrap(),
        );
        let p = shared.try_acquire().unwrap();
        advance(Duration::from_millis(700)).await;
        shared.record(p, FAIL, tokio::time::Instant::now());
        advance(Duration::from_millis(1_500)).await;
        let open = shared.try_acquire().unwrap_err();
        assert_eq!(open.retry_after(), Some(Duration::from_millis(500)));
        assert_eq!(
            open,
            CircuitOpen::new(Some(Duration::from_millis(500)), false)
        );
        assert!(!open.is_forced());
        assert_eq!(
            open.to_string(),
            "circuit breaker open; next probe in 500ms"
        );
        let now = shared.now();
        assert_eq!(
            shared.lock().retry_after(now),
            Some(Duration::from_millis(500))
        );
        assert_eq!(shared.totals.rejections(), 1);
        advance(Duration::from_millis(499)).await;
        assert_eq!(
            shared.try_acquire().unwrap_err().retry_after(),
            Some(Duration::from_millis(1))
        );
        advance(Duration::from_millis(1)).await;
        let _probe = shared.try_acquire().expect("the wait is over: a probe");
        assert_eq!(shared.lock().state(), BreakerState::HalfOpen);
        assert_eq!(shared.totals.rejections(), 2);
    }

    /// Successes go without the lock only once the window holds `minimum_calls` with both rates under
    /// their thresholds, and the lock folds them into the window (and the totals) before anything else.
    #[tokio::test(start_paused = true)]
    async fn successes_go_without_the_lock_only_when_they_cannot_open() {
        let shared = Shared::new(
            BreakerConfig::builder()
                .sliding_window(SlidingWindow::Count(10))
                .minimum_calls(3)
                .build()
                .unwrap(),
        );
        let now = tokio::time::Instant::now;
        let record = |o| shared.record(shared.try_acquire().unwrap(), o, now());
        record(FAIL);
        record(OK);
        assert_eq!(pending(&shared), 0);
        assert_eq!(
            shared.published.fast.load(Ordering::Relaxed),
            NO_FAST,
            "2 < 3 calls"
        );
        record(OK); // 1 failure in 3: under 50 %
        assert_ne!(shared.published.fast.load(Ordering::Relaxed), NO_FAST);
        record(OK);
        record(OK);
        assert_eq!(pending(&shared), 2);
        assert_eq!(
            shared.totals.calls.load(Ordering::Relaxed),
            3,
            "not folded yet"
        );
        record(FAIL); // through the lock, after the two successes: 2 failures in 6
        assert_eq!(shared.lock().window_counts(0).calls, 6);
        assert_eq!(shared.totals.calls.load(Ordering::Relaxed), 6);
        record(FAIL);
        record(FAIL); // 4 in 8: 50 %
        assert_eq!(shared.lock().state(), BreakerState::Open);
        assert_eq!(shared.published.fast.load(Ordering::Relaxed), NO_FAST);
    }
}
