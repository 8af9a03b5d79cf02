//! The sliding windows that hold the closed state's recent outcomes.
//!
//! Both keep running totals, so recording an outcome and reading the rates are O(1) (the time window
//! clears expired buckets as the clock passes them, at most once per bucket).
//!
//! The time window reads its `now` only through `now / bucket_nanos` (the bucket it falls in), which is
//! what lets [`Shared`](super::state::Shared) hand it the start of the current bucket instead of the
//! exact time under the lock (see `BucketClock` there). Successes counted without the lock arrive in
//! bulk through `add_successes`, which is what recording them one by one in the newest bucket does.

/// What one finished call contributes to a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) failure: bool,
    pub(crate) slow: bool,
}

/// Totals over a window (or a bucket of one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

impl Counts {
    pub(crate) fn add(&mut self, o: Outcome) {
        self.calls += 1;
        self.failures += o.failure as u32;
        self.slow += o.slow as u32;
    }

    fn remove(&mut self, o: Outcome) {
        self.calls -= 1;
        self.failures -= o.failure as u32;
        self.slow -= o.slow as u32;
    }

    fn remove_all(&mut self, other: Counts) {
        self.calls -= other.calls;
        self.failures -= other.failures;
        self.slow -= other.slow;
    }
}

/// A window over the last `size` calls, or over the calls of the last `size` of time.
#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    pub(crate) fn count(size: u32) -> Self {
        Window::Count(CountWindow {
            ring: vec![None; size as usize].into_boxed_slice(),
            next: 0,
            totals: Counts::default(),
        })
    }

    pub(crate) fn time(bucket_nanos: u64, buckets: u32) -> Self {
        Window::Time(TimeWindow {
            buckets: vec![Counts::default(); buckets as usize].into_boxed_slice(),
            bucket_nanos: bucket_nanos.max(1),
            latest: 0,
            totals: Counts::default(),
        })
    }

    /// Records an outcome finished at `now` (nanoseconds since the breaker's origin); returns the totals.
    pub(crate) fn record(&mut self, now: u64, outcome: Outcome) -> Counts {
        match self {
            Window::Count(w) => w.record(outcome),
            Window::Time(w) => w.record(now, outcome),
        }
    }

    /// The length of a time window's buckets, `None` for a count window (which ignores time).
    pub(crate) fn bucket_nanos(&self) -> Option<u64> {
        match self {
            Window::Count(_) => None,
            Window::Time(w) => Some(w.bucket_nanos),
        }
    }

    /// The totals as of the newest bucket, without moving the window on.
    pub(crate) fn totals(&self) -> Counts {
        match self {
            Window::Count(w) => w.totals,
            Window::Time(w) => w.totals,
        }
    }

    /// Where the newest bucket of a time window ends (nanoseconds since the breaker's origin), `u64::MAX`
    /// for a count window: an outcome that finishes before it goes in the newest bucket, as
    /// [`record`](Window::record) would put it, without moving the window on.
    pub(crate) fn newest_bucket_end(&self) -> u64 {
        match self {
            Window::Count(_) => u64::MAX,
            Window::Time(w) => (w.latest + 1).saturating_mul(w.bucket_nanos),
        }
    }

    /// Records `n` successes that are neither failures nor slow, in one go: what `n` calls of
    /// [`record`](Window::record) with a time in the newest bucket would do.
    pub(crate) fn add_successes(&mut self, n: u32) {
        match self {
            Window::Count(w) => w.add_successes(n),
            Window::Time(w) => {
                let n_buckets = w.buckets.len() as u64;
                w.buckets[(w.latest % n_buckets) as usize].calls += n;
                w.totals.calls += n;
            }
        }
    }

    /// The totals as of `now`.
    pub(crate) fn counts(&mut self, now: u64) -> Counts {
        match self {
            Window::Count(w) => w.totals,
            Window::Time(w) => {
                w.advance(now);
                w.totals
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        match self {
            Window::Count(w) => {
                w.ring.iter_mut().for_each(|slot| *slot = None);
                w.next = 0;
                w.totals = Counts::default();
            }
            Window::Time(w) => {
                w.buckets.iter_mut().for_each(|b| *b = Counts::default());
                w.totals = Counts::default();
            }
        }
    }
}

/// A ring of the last `ring.len()` outcomes.
#[derive(Debug)]
pub(crate) struct CountWindow {
    ring: Box<[Option<Outcome>]>,
    next: usize,
    totals: Counts,
}

impl CountWindow {
    fn record(&mut self, outcome: Outcome) -> Counts {
        if let Some(evicted) = self.ring[self.next].replace(outcome) {
            self.totals.remove(evicted);
        }
        self.totals.add(outcome);
        self.next = (self.next + 1) % self.ring.len();
        self.totals
    }
}

impl CountWindow {
    fn add_successes(&mut self, n: u32) {
        const OK: Outcome = Outcome {
            failure: false,
            slow: false,
        };
        if n as usize >= self.ring.len() {
            // Every slot is overwritten: the window holds successes only.
            self.ring.iter_mut().for_each(|slot| *slot = Some(OK));
            self.totals = Counts {
                calls: self.ring.len() as u32,
                failures: 0,
                slow: 0,
            };
            self.next = (self.next + n as usize) % self.ring.len();
        } else {
            for _ in 0..n {
                self.record(OK);
            }
        }
    }
}

/// `buckets.len()` buckets of `bucket_nanos` each; bucket `e` holds the outcomes that finished in
/// `[e * bucket_nanos, (e + 1) * bucket_nanos)` and leaves the window when the clock reaches
/// `(e + buckets.len()) * bucket_nanos`.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    buckets: Box<[Counts]>,
    bucket_nanos: u64,
    /// The epoch (time / bucket_nanos) of the newest bucket.
    latest: u64,
    totals: Counts,
}

impl TimeWindow {
    fn advance(&mut self, now: u64) {
        let epoch = now / self.bucket_nanos;
        if epoch <= self.latest {
            return;
        }
        let n = self.buckets.len() as u64;
        if epoch - self.latest >= n {
            self.buckets.iter_mut().for_each(|b| *b = Counts::default());
            self.totals = Counts::default();
        } else {
            for e in self.latest + 1..=epoch {
                let bucket = &mut self.buckets[(e % n) as usize];
                self.totals.remove_all(*bucket);
                *bucket = Counts::default();
            }
        }
        self.latest = epoch;
    }

    fn record(&mut self, now: u64, outcome: Outcome) -> Counts {
        self.advance(now);
        let n = self.buckets.len() as u64;
        self.buckets[(self.latest % n) as usize].add(outcome);
        self.totals.add(outcome);
        self.totals
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(records: &[(u64, Outcome)], now: u64, window: &Shape) -> Counts {
        let mut c = Counts::default();
        let kept: Vec<&(u64, Outcome)> = match *window {
            Shape::Count(n) => records.iter().rev().take(n as usize).collect(),
            Shape::Time(w, n) => {
                let epoch = now / w;
                records.iter().filter(|(t, _)| t / w + n > epoch).collect()
            }
        };
        for (_, o) in kept {
            c.add(*o);
        }
        c
    }

    #[derive(Debug, Clone)]
    enum Shape {
        Count(u32),
        Time(u64, u64),
    }

    fn shape() -> impl Strategy<Value = Shape> {
        prop_oneof![
            (1u32..20).prop_map(Shape::Count),
            (1u64..1_000, 1u64..12).prop_map(|(w, n)| Shape::Time(w, n)),
        ]
    }

    proptest! {
        #[test]
        fn counts_match_the_recorded_calls(
            shape in shape(),
            steps in proptest::collection::vec((0u64..700, any::<bool>(), any::<bool>(), any::<bool>()), 0..200),
        ) {
            let mut window = match shape {
                Shape::Count(n) => Window::count(n),
                Shape::Time(w, n) => Window::time(w, n as u32),
            };
            let mut now = 0u64;
            let mut recorded = Vec::new();
            for (dt, failure, slow, only_read) in steps {
                now += dt;
                if only_read {
                    prop_assert_eq!(window.counts(now), naive(&recorded, now, &shape));
                } else {
                    let o = Outcome { failure, slow };
                    recorded.push((now, o));
                    let got = window.record(now, o);
                    prop_assert_eq!(got, naive(&recorded, now, &shape));
                }
            }
        }
    }

    proptest! {
        /// `add_successes(n)` is `n` records of a plain success in the newest bucket.
        #[test]
        fn adding_successes_is_recording_them(
            shape in shape(),
            before in proptest::collection::vec((0u64..300, any::<bool>(), any::<bool>()), 0..40),
            n in 0u32..40,
        ) {
            let new = || match shape {
                Shape::Count(n) => Window::count(n),
                Shape::Time(w, n) => Window::time(w, n as u32),
            };
            let (mut bulk, mut one_by_one) = (new(), new());
            let mut now = 0;
            for (dt, failure, slow) in before {
                now += dt;
                bulk.record(now, Outcome { failure, slow });
                one_by_one.record(now, Outcome { failure, slow });
            }
            bulk.add_successes(n);
            let mut last = one_by_one.totals();
            for _ in 0..n {
                last = one_by_one.record(now, Outcome { failure: false, slow: false });
            }
            prop_assert_eq!(bulk.totals(), last);
            // And they leave the window together.
            for later in [now, now + 500, now + 5_000, now + 20_000] {
                prop_assert_eq!(bulk.counts(later), one_by_one.counts(later));
                let o = Outcome { failure: true, slow: false };
                prop_assert_eq!(bulk.record(later, o), one_by_one.record(later, o));
            }
        }
    }

    #[test]
    fn an_outcome_leaves_a_time_window_when_its_bucket_is_n_buckets_old() {
        let ms = 1_000_000;
        let mut w = Window::time(1_000 * ms, 10);
        w.record(
            1_500 * ms,
            Outcome {
                failure: true,
                slow: false,
            },
        );
        // Recorded in bucket 1 ([1 s, 2 s)); it stays until the clock reaches 11 s.
        assert_eq!(w.counts(10_999 * ms).calls, 1);
        assert_eq!(w.counts(11_000 * ms).calls, 0);
    }

    #[test]
    fn count_window_evicts_the_oldest() {
        let mut w = Window::count(2);
        w.record(
            0,
            Outcome {
                failure: true,
                slow: false,
            },
        );
        w.record(
            0,
            Outcome {
                failure: false,
                slow: true,
            },
        );
        let c = w.record(
            0,
            Outcome {
                failure: false,
                slow: false,
            },
        );
        assert_eq!(
            c,
            Counts {
                calls: 2,
                failures: 0,
                slow: 1
            }
        );
        w.clear();
        assert_eq!(w.counts(0), Counts::default());
    }
}
