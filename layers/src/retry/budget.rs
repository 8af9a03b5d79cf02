//! The retry budget.
//!
//! # Design
//!
//! Every request deposits into the budget and only retries withdraw, so the deposit is on the path of
//! every call and the withdrawal is not. tower's `TpsBudget` (Finagle's design) reads the clock and takes
//! a lock on every deposit to rotate its time slots. This budget moves all of the time keeping to the
//! rare side:
//!
//! - A **deposit** is one relaxed `fetch_add` on a counter of all requests ever made. Every
//!   [`TICK`]th deposit also *observes* the budget (below), so that a busy client that never retries
//!   still leaves a trace of when its requests were made.
//! - Time is cut into slots of a tenth of the window, numbered from the budget's creation. Each slot
//!   remembers the counter's value at the first observation made in it, and the retries withdrawn in
//!   it. An observation (every withdrawal, every `TICK`th deposit) reads the clock under a mutex and
//!   starts the current slot if it has not been.
//! - A **withdrawal** at time `t`, in slot `e`, observes, then compares
//!
//!   `reserve + requests × deposit_amount − retries × withdraw_amount ≥ withdraw_amount`
//!
//!   with tower's amounts (ratio 0.2: a request is worth 1, a retry costs 5; the reserve is
//!   `min_retries_per_second × window` retries), where *requests* are those made since the first
//!   observation in slots `e − 9 ..= e` (all made after `t − window`), and *retries* those withdrawn in
//!   slots `e − 10 ..= e` (every retry since `t − window`, and some a little older).
//!
//! # How far it is from exact
//!
//! The exact rule counts the requests and retries of `(t − window, t]`. Against it, with the same
//! history, this budget is:
//!
//! - **never looser**: every request it counts is in the window, and every retry in the window is
//!   counted; so it never allows a withdrawal the exact rule refuses;
//! - **stricter by at most** the requests of `(t − window, start of slot e − 9)` (the oldest tenth of the
//!   window at most), plus at most [`TICK`] requests made in the window before its first observation
//!   there (64 requests: at ratio 0.2, 12 retries), plus the retries of the tenth of the window
//!   before it.
//!
//! `tests/conformance/budget.rs` checks both sides against an exact, timestamped model over random
//! histories. A figure against tower's `TpsBudget` itself does not exist: its window is not the
//! window. It rotates a slot per tenth of the window *since its last rotation*, and a rotation after
//! a little more than a tenth clears two slots, so it forgets requests after as little as half the
//! window under steady traffic (the same file shows a request forgotten at 0.6 × window), and keeps
//! them up to a tenth longer than the window when rotations fall just right. A client that sends
//! fewer than `TICK` requests per window lives on the floor, which is what the floor is for. Time is
//! tokio's ([`tokio::time::Instant`]), so a paused test clock drives the budget as it drives tower's.

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use crate::ConfigError;

/// Slots the window is cut into (as many as tower's `TpsBudget`): requests count for the current slot
/// and the `WINDOW_SLOTS - 1` before it.
const WINDOW_SLOTS: u64 = 10;

/// Slots kept: one more than the window, because retries count for one slot longer than requests
/// (every retry of the last `window` is counted).
const SLOTS: usize = WINDOW_SLOTS as usize + 1;

/// Every `TICK`th deposit observes the budget: the most requests the window can miss at its old edge.
const TICK: u64 = 64;

/// A retry budget: retries may be at most a fraction of recent requests, plus a small floor.
///
/// Per-request limits (`max_attempts`) bound how hard one request tries; they do not bound how hard a
/// whole client tries. When the downstream is down, every request retries, and three attempts each
/// triples the load on something already failing. A budget caps retries across *all* requests: each
/// request deposits into it, each retry withdraws, and a retry that finds it empty is not made.
///
/// Over the last `window`, retries may be at most `retry_ratio` of the requests made, plus
/// `min_retries_per_second × window`: the semantics of tower's `TpsBudget` (Finagle's design), with a
/// deposit that costs one atomic increment instead of a clock read and a lock (see
/// [the retry module](super#the-retry-budget) for how far it is from the exact rule: never looser).
/// The builder validates
/// the settings, so a bad one is an error at build time. Clones share one budget through an `Arc`.
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
    inner: Arc<Inner>,
}

struct Inner {
    /// Requests deposited since the budget was made.
    deposits: AtomicU64,
    slots: Mutex<[Slot; SLOTS]>,
    origin: Instant,
    slot_nanos: u64,
    deposit_amount: u64,
    withdraw_amount: u64,
    reserve: u64,
    settings: RetryBudgetBuilder,
}

/// One slot of the window: `epoch` is the time since the budget was made, in slots.
#[derive(Clone, Copy, Debug)]
struct Slot {
    epoch: u64,
    /// The deposit counter at the first observation in this slot.
    first: u64,
    withdrawals: u64,
}

/// A slot that no epoch matches (never in the window).
const UNUSED: Slot = Slot {
    epoch: u64::MAX,
    first: 0,
    withdrawals: 0,
};

impl RetryBudget {
    /// A builder starting from tower's defaults: a 10 s window, 10 retries a second, a ratio of 0.2.
    pub fn builder() -> RetryBudgetBuilder {
        RetryBudgetBuilder::default()
    }

    /// Records a request (not a retry), allowing `ratio` more retries for the window.
    #[inline]
    pub fn deposit(&self) {
        let before = self.inner.deposits.fetch_add(1, Ordering::Relaxed);
        if before % TICK == TICK - 1 {
            self.inner.observe();
        }
    }

    /// Takes one retry from the budget; `false` if none is left.
    pub fn try_withdraw(&self) -> bool {
        self.inner.try_withdraw()
    }

    /// How many retries the budget would allow now, for metrics: [`try_withdraw`](Self::try_withdraw)
    /// succeeds exactly while this is at least 1. Reading it withdraws nothing and changes nothing
    /// (it takes the lock for a moment, as a withdrawal does).
    pub fn balance(&self) -> u64 {
        let slots = self.inner.lock();
        let (epoch, deposits) = self.inner.now();
        let units = self.inner.available(&slots, epoch, deposits);
        u64::try_from(units / self.inner.withdraw_amount.max(1) as u128).unwrap_or(u64::MAX)
    }
}

impl Inner {
    fn new(settings: RetryBudgetBuilder) -> Self {
        let RetryBudgetBuilder {
            window,
            min_per_second,
            ratio,
        } = settings;
        // tower's amounts, so the rounding is the same as `TpsBudget`'s.
        let (deposit_amount, withdraw_amount) = if ratio == 0.0 {
            (0, 1)
        } else if ratio <= 1.0 {
            (1, (1.0 / ratio) as u64)
        } else {
            (1000, (1000.0 / ratio) as u64)
        };
        let reserve = (min_per_second as u64)
            .saturating_mul(window.as_secs())
            .saturating_mul(withdraw_amount);
        let mut slots = [UNUSED; SLOTS];
        slots[0] = Slot {
            epoch: 0,
            first: 0,
            withdrawals: 0,
        };
        Self {
            deposits: AtomicU64::new(0),
            slots: Mutex::new(slots),
            origin: Instant::now(),
            slot_nanos: (window.as_nanos() / WINDOW_SLOTS as u128).max(1) as u64,
            deposit_amount,
            withdraw_amount,
            reserve,
            settings,
        }
    }

    /// Locks the slots and starts the current one if no observation has been made in it yet; returns
    /// the current epoch and the deposit counter as observed.
    fn lock(&self) -> std::sync::MutexGuard<'_, [Slot; SLOTS]> {
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current epoch and the deposit counter; read under the lock, so the epochs the slots see
    /// never go backwards.
    fn now(&self) -> (u64, u64) {
        let elapsed = Instant::now().saturating_duration_since(self.origin);
        let epoch = (elapsed.as_nanos() / self.slot_nanos as u128) as u64;
        (epoch, self.deposits.load(Ordering::Relaxed))
    }

    /// What is left in the window at `epoch`, in tower's units (a retry costs `withdraw_amount`):
    /// the reserve plus the requests counted since the first observation of the oldest slot still in
    /// the window, less the retries withdrawn in those slots; zero if they overdraw it. A slot not
    /// yet observed at `epoch` would start at `deposits`, which changes no minimum: reading this
    /// without starting it gives what a withdrawal sees.
    fn available(&self, slots: &[Slot; SLOTS], epoch: u64, deposits: u64) -> u128 {
        // Requests: slots whose start is inside the window. Retries: those and the slot before, which
        // holds the retries of the window's first (partial) tenth.
        let oldest_request = epoch.saturating_sub(WINDOW_SLOTS - 1);
        let oldest_retry = epoch.saturating_sub(WINDOW_SLOTS);
        let mut base = deposits;
        let mut withdrawals = 0u64;
        for slot in slots
            .iter()
            .filter(|s| (oldest_retry..=epoch).contains(&s.epoch))
        {
            if slot.epoch >= oldest_request {
                base = base.min(slot.first);
            }
            withdrawals += slot.withdrawals;
        }
        let earned =
            (self.reserve as u128) + (deposits - base) as u128 * self.deposit_amount as u128;
        earned.saturating_sub(withdrawals as u128 * self.withdraw_amount as u128)
    }

    fn lock_and_observe(&self) -> (std::sync::MutexGuard<'_, [Slot; SLOTS]>, u64, u64) {
        let mut slots = self.lock();
        let (epoch, deposits) = self.now();
        let slot = &mut slots[(epoch % SLOTS as u64) as usize];
        if slot.epoch != epoch {
            *slot = Slot {
                epoch,
                first: deposits,
                withdrawals: 0,
            };
        }
        (slots, epoch, deposits)
    }

    #[cold]
    #[inline(never)]
    fn observe(&self) {
        drop(self.lock_and_observe());
    }

    fn try_withdraw(&self) -> bool {
        let (mut slots, epoch, deposits) = self.lock_and_observe();
        if self.available(&slots, epoch, deposits) < self.withdraw_amount as u128 {
            return false;
        }
        slots[(epoch % SLOTS as u64) as usize].withdrawals += 1;
        true
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner::new(RetryBudgetBuilder::default())),
        }
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.inner.settings;
        f.debug_struct("RetryBudget")
            .field("window", &s.window)
            .field("min_retries_per_second", &s.min_per_second)
            .field("retry_ratio", &s.ratio)
            .field("deposits", &self.inner.deposits.load(Ordering::Relaxed))
            .finish()
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
        // The limits `TpsBudget::new` asserts, so the settings mean what they mean there.
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
            inner: Arc::new(Inner::new(self)),
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

    fn budget(window_secs: u64, min: u32, ratio: f32) -> RetryBudget {
        RetryBudget::builder()
            .window(Duration::from_secs(window_secs))
            .min_retries_per_second(min)
            .retry_ratio(ratio)
            .build()
            .unwrap()
    }

    fn withdraw_all(budget: &RetryBudget) -> u32 {
        let mut n = 0;
        while budget.try_withdraw() {
            n += 1;
        }
        n
    }

    #[tokio::test(start_paused = true)]
    async fn requests_and_retries_leave_the_window() {
        // 10 s window in 1 s slots, no floor, one retry per two requests.
        let budget = budget(10, 0, 0.5);
        for _ in 0..10 {
            budget.deposit();
        }
        assert_eq!(withdraw_all(&budget), 5);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(
            !budget.try_withdraw(),
            "spent (and the slot at 5 s is observed)"
        );
        for _ in 0..4 {
            budget.deposit();
        }
        assert_eq!(
            withdraw_all(&budget),
            2,
            "the first five retries still count"
        );
        // At 10 s the first slot's 10 requests have left the window; its 5 retries count one slot
        // longer (every retry of the last 10 s is counted).
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(withdraw_all(&budget), 0, "4 requests, 7 retries: spent");
        for _ in 0..2 {
            budget.deposit();
        }
        assert_eq!(withdraw_all(&budget), 0, "6 requests, 7 retries");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(withdraw_all(&budget), 1, "at 11 s: 6 requests, 2 retries");
        // At 22 s nothing is left in the window, neither requests nor retries.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(withdraw_all(&budget), 0);
        budget.deposit();
        budget.deposit();
        assert_eq!(withdraw_all(&budget), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_comes_back_with_the_window() {
        let budget = budget(2, 3, 0.0);
        assert_eq!(withdraw_all(&budget), 6, "3 a second over 2 s");
        for _ in 0..100 {
            budget.deposit();
        }
        assert_eq!(withdraw_all(&budget), 0, "a zero ratio earns nothing");
        tokio::time::advance(Duration::from_millis(2_000)).await;
        assert_eq!(
            withdraw_all(&budget),
            0,
            "the retries of [0, 0.2 s) count until 2.2 s"
        );
        tokio::time::advance(Duration::from_millis(199)).await;
        assert_eq!(withdraw_all(&budget), 0);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(withdraw_all(&budget), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn ratios_above_one_and_tower_rounding() {
        // ratio 2: a request is worth 1000, a retry costs 500.
        let budget = budget(1, 0, 2.0);
        budget.deposit();
        assert_eq!(withdraw_all(&budget), 2);
        // ratio 0.3: a retry costs 3 requests (1 / 0.3 rounded down, as tower does).
        let budget = budget_of(0.3);
        for _ in 0..7 {
            budget.deposit();
        }
        assert_eq!(withdraw_all(&budget), 2);
    }

    fn budget_of(ratio: f32) -> RetryBudget {
        budget(1, 0, ratio)
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_client_without_retries_is_seen_every_tick() {
        // 10 s window in 1 s slots; no floor; ratio 1: one retry per request.
        let budget = budget(10, 0, 1.0);
        // 3 × TICK requests in the first second: observed at each tick, never by a withdrawal.
        for _ in 0..3 * TICK {
            budget.deposit();
        }
        // Quiet until 9.5 s: all of them are still in the window.
        tokio::time::advance(Duration::from_millis(9_500)).await;
        assert!(budget.try_withdraw());
        // 2 × TICK more in the slot [9 s, 10 s).
        for _ in 0..2 * TICK {
            budget.deposit();
        }
        // At 10.5 s the first second has left: only the later requests count (the withdrawal at
        // 9.5 s observed the slot before them), less the one retry made.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(withdraw_all(&budget) as u64, 2 * TICK - 1);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_before_the_first_observation_of_a_window_are_at_most_a_tick() {
        let budget = budget(10, 0, 1.0);
        // A tick observes at 0.5 s...
        tokio::time::advance(Duration::from_millis(500)).await;
        for _ in 0..TICK {
            budget.deposit();
        }
        // ...then TICK - 1 requests at 5 s, unobserved until the withdrawal at 10.7 s.
        tokio::time::advance(Duration::from_millis(4_500)).await;
        for _ in 0..TICK - 1 {
            budget.deposit();
        }
        tokio::time::advance(Duration::from_millis(5_700)).await;
        // Their slot is in the window but was never observed: the budget undercounts them (it may
        // allow fewer retries than the ratio, never more).
        assert_eq!(withdraw_all(&budget), 0);
    }
}
