//! Model checks of the shared state under every interleaving loom can find.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p rampart-layers --release --lib breaker`.

use std::time::Duration;

use loom::thread;

use super::config::{BreakerConfig, SlidingWindow};
use super::state::{BreakerState, Shared};
use super::sync::{Arc, Ordering};
use super::window::Outcome;

const FAIL: Outcome = Outcome {
    failure: true,
    slow: false,
};
const OK: Outcome = Outcome {
    failure: false,
    slow: false,
};
const WAIT: u64 = 1_000_000_000;

fn shared(probes: u32) -> Arc<Shared> {
    shared_with(SlidingWindow::Count(2), 2, probes)
}

fn shared_with(window: SlidingWindow, minimum_calls: u32, probes: u32) -> Arc<Shared> {
    shared_from(
        BreakerConfig::builder()
            .sliding_window(window)
            .minimum_calls(minimum_calls)
            .half_open_calls(probes),
    )
}

fn shared_from(builder: super::config::BreakerConfigBuilder) -> Arc<Shared> {
    let config = builder
        .wait_in_open(Duration::from_nanos(WAIT))
        .wait_multiplier(1.0)
        .build()
        .unwrap();
    Arc::new(Shared::new(config))
}

/// Opens the breaker with two failures at 0 (a count window of 2, at least 2 calls).
fn trip(s: &Shared) {
    for _ in 0..2 {
        let p = s.try_acquire_at(0).unwrap();
        s.record_at(p, FAIL, 0);
    }
    assert_eq!(s.lock().state(), BreakerState::Open);
}

/// The lifetime number of calls, once the successes counted without the lock are folded in.
fn calls(s: &Shared) -> u64 {
    drop(s.lock());
    s.totals.calls.load(Ordering::Relaxed)
}

#[test]
fn breaker_concurrent_failures_open_exactly_once() {
    loom::model(|| {
        let s = shared(1);
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let s = s.clone();
                thread::spawn(move || {
                    let p = s.try_acquire_at(0).expect("closed admits");
                    s.record_at(p, FAIL, 0);
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(s.lock().state(), BreakerState::Open);
        assert_eq!(s.totals.transitions.load(Ordering::Relaxed), 1);
        assert_eq!(s.totals.failures.load(Ordering::Relaxed), 2);
    });
}

#[test]
fn breaker_concurrent_probes_are_limited_and_decide_once() {
    loom::model(|| {
        let s = shared(1);
        for _ in 0..2 {
            let p = s.try_acquire_at(0).unwrap();
            s.record_at(p, FAIL, 0);
        }
        let in_flight = Arc::new(loom::sync::atomic::AtomicU64::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (s, in_flight) = (s.clone(), in_flight.clone());
                thread::spawn(move || match s.try_acquire_at(WAIT) {
                    Ok(p) => {
                        let state = s.lock().state();
                        if state == BreakerState::HalfOpen {
                            // At most one probe may be outstanding in half-open.
                            assert_eq!(in_flight.fetch_add(1, Ordering::SeqCst), 0);
                            in_flight.fetch_sub(1, Ordering::SeqCst);
                        }
                        s.record_at(p, OK, WAIT);
                        true
                    }
                    Err(open) => {
                        assert_eq!(open.retry_after(), Some(Duration::ZERO));
                        false
                    }
                })
            })
            .collect();
        let admitted = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|a| *a)
            .count();
        assert!(admitted >= 1);
        assert_eq!(s.lock().state(), BreakerState::Closed);
        // open, half-open, closed: one each, however the threads interleave.
        assert_eq!(s.totals.transitions.load(Ordering::Relaxed), 3);
    });
}

#[test]
fn breaker_cancelled_probe_gives_its_permit_back() {
    loom::model(|| {
        let s = shared(1);
        for _ in 0..2 {
            let p = s.try_acquire_at(0).unwrap();
            s.record_at(p, FAIL, 0);
        }
        let first = s.try_acquire_at(WAIT).expect("the one probe");
        let s2 = s.clone();
        let t = thread::spawn(move || s2.release(first));
        let second = s.try_acquire_at(WAIT);
        t.join().unwrap();
        match second {
            Ok(p) => s.record_at(p, OK, WAIT),
            Err(_) => {
                let p = s.try_acquire_at(WAIT).expect("released by now");
                s.record_at(p, OK, WAIT);
            }
        }
        assert_eq!(s.lock().state(), BreakerState::Closed);
    });
}

/// A success counted without the lock races with the failure that opens the breaker: it lands in the
/// window before the opening or is ignored after it, the breaker opens exactly once, and the success
/// shows in the totals either way.
#[test]
fn breaker_lock_free_success_racing_with_opening() {
    loom::model(|| {
        // Three calls, at least two, 50 %: two successes make successes lock-free, and two failures
        // open whatever the order (OK OK F, then F: two of three).
        let s = shared_with(SlidingWindow::Count(3), 2, 1);
        for _ in 0..2 {
            let p = s.try_acquire_at(0).unwrap();
            s.record_at(p, OK, 0);
        }
        let early = s.try_acquire_at(0).unwrap();
        let s2 = s.clone();
        let success = thread::spawn(move || s2.record_at(early, OK, 0));
        for _ in 0..2 {
            if let Ok(p) = s.try_acquire_at(0) {
                s.record_at(p, FAIL, 0);
            }
        }
        success.join().unwrap();
        assert_eq!(s.lock().state(), BreakerState::Open);
        assert_eq!(s.totals.transitions.load(Ordering::Relaxed), 1);
        assert_eq!(calls(&s), 5);
        assert_eq!(s.totals.failures.load(Ordering::Relaxed), 2);
    });
}

/// A success counted without the lock by a call admitted before a reset never lands in the window of
/// the closed state the reset starts: it comes before the transitions (and is cleared with the old
/// window) or after them (and is ignored as stale).
#[test]
fn breaker_lock_free_success_is_not_counted_after_a_reset() {
    loom::model(|| {
        let s = shared_with(SlidingWindow::Count(3), 1, 1);
        let p = s.try_acquire_at(0).unwrap();
        s.record_at(p, OK, 0);
        let early = s.try_acquire_at(0).unwrap();
        let s2 = s.clone();
        let success = thread::spawn(move || s2.record_at(early, OK, 0));
        s.lock().force_open();
        s.lock().reset();
        success.join().unwrap();
        let mut core = s.lock();
        assert_eq!(core.state(), BreakerState::Closed);
        assert_eq!(
            core.window_counts(0).calls,
            0,
            "a stale success in the new window"
        );
        drop(core);
        assert_eq!(calls(&s), 2);
    });
}

/// Two successes at once, one in the time window's newest bucket (without the lock) and one in the
/// next (which moves the window on under the lock): neither is lost, and neither lands in a bucket
/// older than the one it finished in.
#[test]
fn breaker_lock_free_success_racing_with_a_new_bucket() {
    const B: u64 = 1_000;
    loom::model(|| {
        let window = SlidingWindow::Time {
            size: Duration::from_nanos(2 * B),
            buckets: 2,
        };
        let s = shared_with(window, 1, 1);
        let p = s.try_acquire_at(0).unwrap();
        s.record_at(p, OK, 0);
        let (a, b) = (s.try_acquire_at(0).unwrap(), s.try_acquire_at(B).unwrap());
        let s2 = s.clone();
        let first = thread::spawn(move || s2.record_at(a, OK, 0));
        s.record_at(b, OK, B);
        first.join().unwrap();
        let mut core = s.lock();
        assert_eq!(core.window_counts(B).calls, 3);
        // Bucket 0 has left: the call at B stays, and the one at 0 stays only if it came late, after
        // the window moved on (it then lands in the newest bucket, as documented).
        let left = core.window_counts(2 * B).calls;
        assert!(left == 1 || left == 2, "{left}");
        assert_eq!(core.window_counts(3 * B).calls, 0);
        drop(core);
        assert_eq!(calls(&s), 3);
    });
}

/// A rejection without the lock (from the published end of the wait) races with a reset: the call is
/// rejected with the wait as of the rejection, or admitted after the reset.
#[test]
fn breaker_lock_free_rejection_racing_with_a_reset() {
    loom::model(|| {
        let s = shared(1);
        for _ in 0..2 {
            let p = s.try_acquire_at(0).unwrap();
            s.record_at(p, FAIL, 0);
        }
        let s2 = s.clone();
        let reset = thread::spawn(move || {
            s2.lock().reset();
        });
        match s.try_acquire_at(WAIT - 1) {
            Err(open) => assert_eq!(open.retry_after(), Some(Duration::from_nanos(1))),
            Ok(p) => s.record_at(p, OK, WAIT - 1),
        }
        reset.join().unwrap();
        assert_eq!(s.lock().state(), BreakerState::Closed);
    });
}

/// The timer of `automatic_transition` fires at the end of the wait while a call arrives at the same
/// instant: the breaker moves to half-open once (by whichever comes first), the call is the probe
/// either way, and a timer that fires late, for a state already left, does nothing.
#[test]
fn breaker_timer_racing_with_the_first_call_after_the_wait() {
    loom::model(|| {
        let s = shared_from(
            BreakerConfig::builder()
                .sliding_window(SlidingWindow::Count(2))
                .minimum_calls(2)
                .half_open_calls(1)
                .automatic_transition(true),
        );
        trip(&s);
        let opened = s.lock().epoch();
        let s2 = s.clone();
        let timer = thread::spawn(move || s2.fire_timer_at(opened, WAIT));
        let probe = s.try_acquire_at(WAIT).expect("the wait is over: a probe");
        timer.join().unwrap();
        assert_eq!(s.lock().state(), BreakerState::HalfOpen);
        s.record_at(probe, OK, WAIT);
        assert_eq!(s.lock().state(), BreakerState::Closed);
        s.fire_timer_at(opened, WAIT); // stale
        assert_eq!(s.lock().state(), BreakerState::Closed);
        // open, half-open, closed: one each.
        assert_eq!(s.totals.transitions.load(Ordering::Relaxed), 3);
    });
}

/// The half-open limit runs out while a probe finishes: the timer and the late outcome both find
/// the probes too late, and the breaker opens again exactly once.
#[test]
fn breaker_half_open_limit_racing_with_a_late_probe() {
    const LIMIT: u64 = 500;
    loom::model(|| {
        let s = shared_from(
            BreakerConfig::builder()
                .sliding_window(SlidingWindow::Count(2))
                .minimum_calls(2)
                .half_open_calls(1)
                .max_wait_in_half_open(Duration::from_nanos(LIMIT))
                .automatic_transition(true),
        );
        trip(&s);
        let probe = s.try_acquire_at(WAIT).expect("a probe");
        let half_open = s.lock().epoch();
        let s2 = s.clone();
        let timer = thread::spawn(move || s2.fire_timer_at(half_open, WAIT + LIMIT));
        s.record_at(probe, OK, WAIT + LIMIT);
        timer.join().unwrap();
        assert_eq!(s.lock().state(), BreakerState::Open);
        // open, half-open, open again.
        assert_eq!(s.totals.transitions.load(Ordering::Relaxed), 3);
    });
}

/// Metrics-only admits and counts successes without the lock, like closed: a success racing with a
/// reset lands in the metrics-only window (cleared by the reset) or is ignored as stale after it,
/// never in the new closed window; and failures never open it.
#[test]
fn breaker_metrics_only_records_without_deciding() {
    loom::model(|| {
        let s = shared_with(SlidingWindow::Count(3), 1, 1);
        s.lock().metrics_only();
        let p = s.try_acquire_at(0).expect("metrics-only admits");
        s.record_at(p, FAIL, 0);
        assert_eq!(s.lock().state(), BreakerState::MetricsOnly);
        let early = s.try_acquire_at(0).unwrap();
        let s2 = s.clone();
        let success = thread::spawn(move || s2.record_at(early, OK, 0));
        let p = s.try_acquire_at(0).unwrap();
        s.record_at(p, FAIL, 0);
        assert_eq!(
            s.lock().state(),
            BreakerState::MetricsOnly,
            "failures never open it"
        );
        s.lock().reset();
        success.join().unwrap();
        let mut core = s.lock();
        assert_eq!(core.state(), BreakerState::Closed);
        assert_eq!(
            core.window_counts(0).calls,
            0,
            "a stale success after the reset"
        );
        drop(core);
        assert_eq!(calls(&s), 3);
    });
}
