//! tower's `TpsBudget` tests (`tower/src/retry/budget/tps_budget.rs`), and a property test that
//! measures how far [`RetryBudget`] can differ from a transcription of `TpsBudget`.

use std::time::Duration;

use proptest::prelude::*;
use rampart_layers::retry::RetryBudget;
use tokio::time::{Instant, advance};

fn budget(ttl_secs: u64, min_per_sec: u32, ratio: f32) -> RetryBudget {
    RetryBudget::builder()
        .window(Duration::from_secs(ttl_secs))
        .min_retries_per_second(min_per_sec)
        .retry_ratio(ratio)
        .build()
        .unwrap()
}

/// tower `tps_empty`: no deposits, no reserve, nothing to withdraw.
#[test]
fn tps_empty() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let b = budget(1, 0, 1.0);
    assert_eq!(b.balance(), 0);
    assert!(!b.try_withdraw());
}

/// tower `tps_leaky`: a deposit leaves the window with time.
#[tokio::test(start_paused = true)]
async fn tps_leaky() {
    let b = budget(1, 0, 1.0);
    b.deposit();
    assert_eq!(
        b.balance(),
        1,
        "the deposit is there before the time passes"
    );
    advance(Duration::from_secs(3)).await;
    assert!(!b.try_withdraw());
}

/// tower `tps_slots`: a deposit counts for the window, then leaves it slot by slot. Here the budget
/// is stricter at the end: the second request (3.2 s) was made in the window but before any
/// observation there (fewer than `TICK` requests, no withdrawal), so it is not counted; the figure in
/// `retry::budget` allows for it. The same history with one withdrawal attempt before it counts it.
#[tokio::test(start_paused = true)]
async fn tps_slots() {
    for observed in [false, true] {
        let b = budget(1, 0, 0.5);
        b.deposit();
        b.deposit();
        advance(Duration::from_millis(901)).await;
        // 900 ms later, the deposits still count.
        assert!(b.try_withdraw());
        // A blank slate.
        advance(Duration::from_millis(2001)).await;
        b.deposit();
        if observed {
            advance(Duration::from_millis(250)).await;
            assert!(!b.try_withdraw(), "one request in the window: half a retry");
            advance(Duration::from_millis(51)).await;
        } else {
            advance(Duration::from_millis(301)).await;
        }
        b.deposit();
        advance(Duration::from_millis(801)).await;
        b.deposit();
        // tower: the first deposit expired, the second is still valid, with the third: one retry.
        assert_eq!(
            b.try_withdraw(),
            observed,
            "observed before the second request: {observed}"
        );
        assert!(!b.try_withdraw(), "never two");
    }
}

/// tower `tps_reserve`: the floor allows `min_per_sec × ttl` retries without any deposit.
#[tokio::test(start_paused = true)]
async fn tps_reserve() {
    let b = budget(1, 5, 1.0);
    assert_eq!(b.balance(), 5);
    for _ in 0..5 {
        assert!(b.try_withdraw());
    }
    assert!(!b.try_withdraw());
    assert_eq!(b.balance(), 0);
}

/// `balance` is what `try_withdraw` would allow, and reading it changes nothing.
#[tokio::test(start_paused = true)]
async fn balance_is_what_withdrawals_get() {
    let b = budget(10, 1, 0.25);
    for _ in 0..40 {
        b.deposit();
    }
    advance(Duration::from_secs(3)).await;
    let before = b.balance();
    assert_eq!(before, 10 + 40 / 4);
    assert_eq!(b.balance(), before, "reading twice reads the same");
    let mut n = 0;
    while b.try_withdraw() {
        n += 1;
    }
    assert_eq!(n, before);
    assert_eq!(b.balance(), 0);
}

/// A transcription of tower 0.5's `TpsBudget` (Finagle's): ten slots of `ttl / 10` committed in turn
/// from a `writer`, rotated on every deposit and withdrawal by the time since the last rotation.
struct TpsBudget {
    reserve: i64,
    slots: [i64; 10],
    slot_width: Duration,
    writer: i64,
    index: usize,
    time: Instant,
    deposit_amount: i64,
    withdraw_amount: i64,
}

impl TpsBudget {
    fn new(ttl: Duration, min_per_sec: u32, ratio: f32) -> Self {
        let (deposit_amount, withdraw_amount) = if ratio == 0.0 {
            (0, 1)
        } else if ratio <= 1.0 {
            (1, (1.0 / ratio) as i64)
        } else {
            (1000, (1000.0 / ratio) as i64)
        };
        Self {
            reserve: min_per_sec as i64 * ttl.as_secs() as i64 * withdraw_amount,
            slots: [0; 10],
            slot_width: ttl / 10,
            writer: 0,
            index: 0,
            time: Instant::now(),
            deposit_amount,
            withdraw_amount,
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let mut diff = now.saturating_duration_since(self.time);
        if diff < self.slot_width {
            return;
        }
        self.slots[self.index] = std::mem::take(&mut self.writer);
        let mut idx = (self.index + 1) % 10;
        while diff > self.slot_width {
            self.slots[idx] = 0;
            diff -= self.slot_width;
            idx = (idx + 1) % 10;
        }
        self.index = idx;
        self.time = now;
    }

    fn sum(&self) -> i64 {
        self.writer + self.slots.iter().sum::<i64>() + self.reserve
    }

    fn deposit(&mut self) {
        self.expire();
        self.writer += self.deposit_amount;
    }

    /// Retries a withdrawal now would get, after the rotation a withdrawal makes.
    fn balance(&mut self) -> i64 {
        self.expire();
        self.sum().max(0) / self.withdraw_amount
    }

    fn withdraw(&mut self) -> bool {
        self.expire();
        if self.sum() >= self.withdraw_amount {
            self.writer -= self.withdraw_amount;
            true
        } else {
            false
        }
    }
}

/// The transcription passes tower's own tests, so the comparison below is with `TpsBudget` itself.
#[tokio::test(start_paused = true)]
async fn the_transcription_passes_towers_tests() {
    let mut b = TpsBudget::new(Duration::from_secs(1), 0, 1.0);
    assert!(!b.withdraw());
    b.deposit();
    advance(Duration::from_secs(3)).await;
    assert!(!b.withdraw());
    let mut b = TpsBudget::new(Duration::from_secs(1), 0, 0.5);
    b.deposit();
    b.deposit();
    advance(Duration::from_millis(901)).await;
    assert!(b.withdraw());
    advance(Duration::from_millis(2001)).await;
    b.deposit();
    advance(Duration::from_millis(301)).await;
    b.deposit();
    advance(Duration::from_millis(801)).await;
    b.deposit();
    assert!(b.withdraw());
    let mut b = TpsBudget::new(Duration::from_secs(1), 5, 1.0);
    assert!((0..5).all(|_| b.withdraw()));
    assert!(!b.withdraw());
}

/// Why no figure against `TpsBudget` itself exists: its window is not the window. Under steady
/// traffic a little slower than one call per tenth of the window, every rotation clears two slots,
/// and a request leaves after about half the window; this budget keeps it for the whole window.
#[tokio::test(start_paused = true)]
async fn tps_budget_forgets_a_request_after_six_tenths_of_the_window() {
    let mut tower = TpsBudget::new(Duration::from_secs(1), 0, 1.0);
    let ours = budget(1, 0, 1.0);
    tower.deposit();
    ours.deposit();
    for _ in 0..6 {
        advance(Duration::from_millis(101)).await;
        let _ = tower.balance(); // a call: tower rotates on every deposit and withdrawal
    }
    // 606 ms after the request, within a 1 s window.
    assert_eq!(tower.balance(), 0, "TpsBudget has forgotten it");
    assert_eq!(ours.balance(), 1, "this budget still counts it");
}

#[derive(Debug, Clone)]
enum Op {
    Advance(u64),
    Deposit(u32),
    Withdraw(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u64..1_500).prop_map(Op::Advance),
        3 => (1u32..150).prop_map(Op::Deposit),
        2 => (1u32..30).prop_map(Op::Withdraw),
    ]
}

/// The exact rule: the requests and retries of `(now - window, now]`, with their times.
struct Exact {
    origin: Instant,
    window: Duration,
    slot: Duration,
    reserve: i128,
    deposit_amount: i128,
    withdraw_amount: i128,
    requests: Vec<Instant>,
    retries: Vec<Instant>,
}

impl Exact {
    fn new(window_secs: u64, min_per_sec: u32, ratio: f32) -> Self {
        let (deposit_amount, withdraw_amount) = if ratio == 0.0 {
            (0, 1)
        } else if ratio <= 1.0 {
            (1, (1.0 / ratio) as i128)
        } else {
            (1000, (1000.0 / ratio) as i128)
        };
        Self {
            origin: Instant::now(),
            window: Duration::from_secs(window_secs),
            slot: Duration::from_secs(window_secs) / 10,
            reserve: min_per_sec as i128 * window_secs as i128 * withdraw_amount,
            deposit_amount,
            withdraw_amount,
            requests: Vec::new(),
            retries: Vec::new(),
        }
    }

    fn count(times: &[Instant], after: Option<Instant>, from: Option<Instant>) -> i128 {
        times
            .iter()
            .filter(|t| after.is_none_or(|a| **t > a) && from.is_none_or(|f| **t >= f))
            .count() as i128
    }

    /// Retries the exact rule allows now.
    fn balance(&self) -> i128 {
        let now = Instant::now();
        let start = now.checked_sub(self.window);
        let units = self.reserve + self.deposit_amount * Self::count(&self.requests, start, None)
            - self.withdraw_amount * Self::count(&self.retries, start, None);
        units.max(0) / self.withdraw_amount
    }

    /// The least the stated figure lets `RetryBudget` allow now: requests from the start of the slot
    /// nine slots back, less `TICK` (64), and retries from the start of the slot ten back.
    fn floor(&self) -> i128 {
        let now = Instant::now();
        let slot = self.slot.as_nanos();
        let e = (now - self.origin).as_nanos() / slot;
        let at = |k: u128| self.origin + Duration::from_nanos((k * slot) as u64);
        let requests = Self::count(&self.requests, None, Some(at(e.saturating_sub(9))));
        let retries = Self::count(&self.retries, None, Some(at(e.saturating_sub(10))));
        let units = self.reserve + self.deposit_amount * (requests - 64).max(0)
            - self.withdraw_amount * retries;
        units.max(0) / self.withdraw_amount
    }
}

/// Replays one history against `RetryBudget` and the exact rule; returns how much stricter the
/// budget was at most, in retries.
fn replay(window: u64, min_per_sec: u32, ratio: f32, ops: &[Op]) -> Result<i128, TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let ours = budget(window, min_per_sec, ratio);
        let mut exact = Exact::new(window, min_per_sec, ratio);
        let mut stricter = 0;
        for op in ops {
            match *op {
                Op::Advance(ms) => advance(Duration::from_millis(ms)).await,
                Op::Deposit(n) => (0..n).for_each(|_| {
                    ours.deposit();
                    exact.requests.push(Instant::now());
                }),
                Op::Withdraw(n) => {
                    for _ in 0..n {
                        let allowed = exact.balance();
                        if ours.try_withdraw() {
                            prop_assert!(allowed >= 1, "a withdrawal the exact rule refuses");
                            exact.retries.push(Instant::now());
                        }
                    }
                }
            }
            let (b, upper, lower) = (ours.balance() as i128, exact.balance(), exact.floor());
            prop_assert!(b <= upper, "looser than exact: {b} > {upper}");
            prop_assert!(b >= lower, "stricter than the figure: {b} < {lower}");
            stricter = stricter.max(upper - b);
        }
        Ok(stricter)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Never looser than the exact rule; never stricter than the figure in `retry::budget`'s docs.
    #[test]
    fn between_the_exact_rule_and_the_stated_figure(
        window in 1u64..=10,
        min_per_sec in prop_oneof![Just(0u32), 1u32..20],
        ratio in prop_oneof![Just(0.0f32), Just(0.2), Just(0.5), Just(1.0), Just(2.0)],
        ops in proptest::collection::vec(op(), 1..100),
    ) {
        replay(window, min_per_sec, ratio, &ops)?;
    }
}
