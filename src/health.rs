//! Health: a serializable report of how the database looks from here, cheap enough for every `/health`.
//!
//! [`HealthReport::gather`] reads what the service already knows (the pool's statistics, the breaker's
//! state, when the last query succeeded and what the last error was) and, if asked, times one probe
//! round trip. Nothing in it holds a password: the server is named by its redacted URL.
//!
//! | status | when |
//! |---|---|
//! | `down` | the breaker is open (or forced open), or the probe failed |
//! | `degraded` | the breaker is half-open, the last outcome was an error, or callers are waiting for connections |
//! | `up` | otherwise |

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rampart_layers::breaker::{BreakerHandle, BreakerState};
use serde::Serialize;

use crate::error::Error;
use crate::mux::MuxStats;
use crate::pool::{Pool, PoolStats};
use crate::query::Query;
use crate::service::PgService;

/// The overall verdict of a [`HealthReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Queries succeed.
    Up,
    /// Queries succeed, but something is wrong (see the report).
    Degraded,
    /// Queries fail or are refused.
    Down,
}

/// What the service remembers between reports: the last success and the last error. Updated on every
/// request at the cost of a clock read and an atomic store (a short lock only on errors).
#[derive(Debug)]
pub(crate) struct Tracker {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last success, plus one (0: never).
    last_success: AtomicU64,
    /// Milliseconds since `epoch` of the last error, plus one (0: never).
    last_error_at: AtomicU64,
    last_error: Mutex<Option<RecentError>>,
}

impl Default for Tracker {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            last_success: AtomicU64::new(0),
            last_error_at: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }
}

impl Tracker {
    fn now_mark(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    pub(crate) fn success(&self) {
        self.last_success.store(self.now_mark(), Ordering::Relaxed);
    }

    /// Records an error, if it says something about the database: a caller's mistake (bad SQL, a
    /// constraint violation) does not make the database unhealthy.
    pub(crate) fn error(&self, err: &Error) {
        if !err.classification().is_failure_of_downstream() {
            return;
        }
        let recent = RecentError {
            kind: err.kind().as_str(),
            classification: err.classification().as_str(),
            code: err.code().map(|c| c.code().to_owned()),
            seconds_ago: 0.0,
        };
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(recent);
        self.last_error_at.store(self.now_mark(), Ordering::Relaxed);
    }

    fn ago(&self, mark: u64) -> Option<Duration> {
        (mark != 0).then(|| {
            self.epoch
                .elapsed()
                .saturating_sub(Duration::from_millis(mark - 1))
        })
    }
}

/// The last failure of the database the service saw, by class (never its message, which may quote data).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecentError {
    /// Its [`ErrorKind`](crate::ErrorKind) name.
    pub kind: &'static str,
    /// Its classification.
    pub classification: &'static str,
    /// Its SQLSTATE, for server errors.
    pub code: Option<String>,
    /// How long ago it happened.
    pub seconds_ago: f64,
}

/// The circuit breaker's part of a report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakerReport {
    /// Its name.
    pub name: String,
    /// `closed`, `open`, `half_open`, `forced_open` or `disabled`.
    pub state: &'static str,
    /// Failure rate in the current window, if enough calls were recorded.
    pub failure_rate: Option<f64>,
    /// Seconds until an open breaker lets a probe through.
    pub retry_after_seconds: Option<f64>,
    /// Calls rejected while open, since start.
    pub rejections: u64,
}

/// How the database looks from this service, now. Serializes to JSON for `/health`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthReport {
    /// The verdict.
    pub status: Status,
    /// The server, with the password redacted.
    pub server: String,
    /// When the report was made, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The probe's round trip, if one was made and it succeeded.
    pub probe_rtt_ms: Option<f64>,
    /// Seconds since a query last succeeded.
    pub last_success_seconds_ago: Option<f64>,
    /// The most recent failure of the database (not a caller's mistake), if it came after the last success.
    pub recent_error: Option<RecentError>,
    /// The pool's statistics.
    pub pool: PoolStats,
    /// The breaker, if the stack has one.
    pub breaker: Option<BreakerReport>,
    /// The shared connections, if the service is multiplexed.
    pub multiplex: Option<MuxStats>,
}

impl HealthReport {
    /// Builds a report for `service` (and its breaker, if any). With `probe`, runs `SELECT 1` through the
    /// service's pool (not through the breaker, so a report never counts as traffic) and times it,
    /// bounded by `probe_timeout`.
    pub async fn gather(
        service: &PgService,
        breaker: Option<&BreakerHandle>,
        probe: Option<Duration>,
    ) -> HealthReport {
        let probe_result = match probe {
            Some(limit) => Some(probe_once(service, limit).await),
            None => None,
        };
        let mut report = Self::from_parts(service.pool(), service.tracker(), breaker, probe_result);
        report.multiplex = service.mux_stats();
        report
    }

    fn from_parts(
        pool: &Pool,
        tracker: &Tracker,
        breaker: Option<&BreakerHandle>,
        probe: Option<Result<Duration, ()>>,
    ) -> HealthReport {
        let last_success = tracker.ago(tracker.last_success.load(Ordering::Relaxed));
        let last_error_ago = tracker.ago(tracker.last_error_at.load(Ordering::Relaxed));
        // The error matters only if it is more recent than the last success.
        let recent_error = match (last_error_ago, last_success) {
            (Some(err), Some(ok)) if err >= ok => None,
            (Some(err), _) => tracker
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .map(|mut e| {
                    e.seconds_ago = err.as_secs_f64();
                    e
                }),
            (None, _) => None,
        };
        let breaker = breaker.map(|b| {
            let m = b.metrics();
            BreakerReport {
                name: b.name().to_owned(),
                state: m.state.as_str(),
                failure_rate: m.failure_rate(),
                retry_after_seconds: m.retry_after.map(|d| d.as_secs_f64()),
                rejections: m.rejections,
            }
        });
        let pool_stats = pool.stats();
        let breaker_state = breaker.as_ref().map(|b| b.state);
        let down = matches!(breaker_state, Some(s) if s == BreakerState::Open.as_str() || s == BreakerState::ForcedOpen.as_str())
            || matches!(probe, Some(Err(())));
        let degraded = breaker_state == Some(BreakerState::HalfOpen.as_str())
            || recent_error.is_some()
            || (pool_stats.waiting > 0 && pool_stats.idle == 0);
        let status = if down {
            Status::Down
        } else if degraded {
            Status::Degraded
        } else {
            Status::Up
        };
        HealthReport {
            status,
            server: pool.server().to_owned(),
            timestamp_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            probe_rtt_ms: probe.and_then(|p| p.ok()).map(|d| d.as_secs_f64() * 1000.0),
            last_success_seconds_ago: last_success.map(|d| d.as_secs_f64()),
            recent_error,
            pool: pool_stats,
            breaker,
            multiplex: None,
        }
    }
}

/// One `SELECT 1` through the service, timed. Its outcome is the freshest there is, so it is recorded
/// (a service under a stack does not record its own outcomes; recording twice is harmless).
async fn probe_once(service: &PgService, limit: Duration) -> Result<Duration, ()> {
    use tower::ServiceExt;
    let started = Instant::now();
    match service
        .clone()
        .oneshot(Query::read("SELECT 1").timeout(limit))
        .await
    {
        Ok(_) => {
            service.tracker().success();
            Ok(started.elapsed())
        }
        Err(e) => {
            service.tracker().error(&e);
            Err(())
        }
    }
}
