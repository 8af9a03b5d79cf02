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
    let config = BreakerConfig::builder()
        .sliding_window(SlidingWindow::Count(2))
        .minimum_calls(2)
        .half_open_calls(probes)
        .wait_in_open(Duration::from_nanos(WAIT))
        .wait_multiplier(1.0)
        .build()
        .unwrap();
    Arc::new(Shared::new(config))
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
