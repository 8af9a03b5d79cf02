//! Health: the verdict, from the outcomes recorded at the top of a stack.
//!
//! What users read is on [`HealthReport`] (the module is private: the flat list in `lib.rs` is the one public path).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rampart_layers::breaker::{BreakerHandle, BreakerState};
use serde::Serialize;

use rampart_layers::Classification;

use crate::config::Preset;
use crate::error::{Error, ErrorKind};
use crate::mux::MuxStats;
use crate::pool::{Pool, PoolStats};
use crate::query::Query;
use crate::service::PgService;
use crate::sync::lock;

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

/// What a stack remembers between reports: the last success and the last error. Updated on every
/// request at the cost of a clock read and an atomic store (a short lock only on errors).
#[derive(Debug)]
pub(crate) struct Outcomes {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last success, plus one (0: never).
    last_success: AtomicU64,
    /// Milliseconds since `epoch` of the last error, plus one (0: never).
    last_error_at: AtomicU64,
    last_error: Mutex<Option<RecentError>>,
}

impl Default for Outcomes {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            last_success: AtomicU64::new(0),
            last_error_at: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }
}

impl Outcomes {
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
        *lock(&self.last_error) = Some(recent);
        self.last_error_at.store(self.now_mark(), Ordering::Relaxed);
    }

    /// The last failure of the database recorded, as shown in a report: its kind and SQLSTATE.
    pub(crate) fn last_failure(&self) -> Option<String> {
        lock(&self.last_error).as_ref().map(|e| match &e.code {
            Some(code) => format!("{} (SQLSTATE {code})", e.kind),
            None => e.kind.to_owned(),
        })
    }

    /// Records the outcome of one request.
    pub(crate) fn record<T>(&self, result: &Result<T, Error>) {
        match result {
            Ok(_) => self.success(),
            Err(e) => self.error(e),
        }
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
#[non_exhaustive]
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
#[non_exhaustive]
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
///
/// [`Db::health`](crate::Db::health) reads what the stack already knows (the pool's statistics, the
/// breaker's state, when the last query succeeded and what the last error was) and, if asked, times one
/// probe round trip. Nothing in it holds a password: the server is named by its redacted URL.
///
/// The last success and the last error are recorded at the top of the stack, where every
/// layer's errors are seen (an open breaker, a deadline), not by the service at the bottom.
///
/// | status | when |
/// |---|---|
/// | `down` | the breaker is open (or forced open), or the probe failed |
/// | `degraded` | the breaker is half-open, the last outcome was an error, or callers are waiting for connections |
/// | `up` | otherwise |
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
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
    /// Each server the stack sends requests to, with its role: the primary, and the replicas if reads
    /// go to replicas ([`StackBuilder::replicas`](crate::StackBuilder::replicas)).
    pub servers: Vec<ServerReport>,
    /// Why no probe was made although one was asked for: a probe of a serverless host wakes a
    /// suspended compute (and keeps it billed), so the serverless preset reports the last known state
    /// unless told to probe ([`Db::health_waking`](crate::Db::health_waking)).
    pub probe_skipped: Option<&'static str>,
}

/// One server of a stack and its role, in a [`HealthReport`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ServerReport {
    /// `primary` (writes, transactions, reads marked `Query::primary`) or `replica` (reads).
    pub role: &'static str,
    /// The server as configured, with the password redacted (every host, for a multi-host URL).
    pub server: String,
    /// The host (`host:port`) its latest connection was made to: of several, the one that answered
    /// (for the primary, the server that takes writes).
    pub host: Option<String>,
    /// Its pool's statistics.
    pub pool: PoolStats,
    /// Its own breaker, for a replica (the primary's is [`HealthReport::breaker`]).
    pub breaker: Option<BreakerReport>,
}

impl ServerReport {
    pub(crate) fn of(role: &'static str, pool: &Pool, breaker: Option<&BreakerHandle>) -> Self {
        ServerReport {
            role,
            server: pool.server().to_owned(),
            host: pool.latest_host(),
            pool: pool.stats(),
            breaker: breaker.map(|b| BreakerReport::of(b).0),
        }
    }
}

impl BreakerReport {
    fn of(breaker: &BreakerHandle) -> (Self, BreakerState) {
        let m = breaker.metrics();
        let report = BreakerReport {
            name: breaker.name().to_owned(),
            state: m.state.as_str(),
            failure_rate: m.failure_rate(),
            retry_after_seconds: m.retry_after.map(|d| d.as_secs_f64()),
            rejections: m.rejections,
        };
        (report, m.state)
    }
}

/// What a report is made of, apart from the clock: the inputs of [`HealthReport::from_parts`].
struct Parts {
    server: String,
    pool: PoolStats,
    multiplex: Option<MuxStats>,
    breaker: Option<(BreakerReport, BreakerState)>,
    last_success: Option<Duration>,
    /// The last failure and how long ago it was.
    last_error: Option<(RecentError, Duration)>,
    probe: Option<Result<Duration, ()>>,
    probe_skipped: Option<&'static str>,
    servers: Vec<ServerReport>,
}

impl HealthReport {
    /// Builds a report for `service`, with the outcomes recorded at the top of its stack and its breaker.
    /// With `probe`, runs `SELECT 1` through the service (not through the breaker, so a report never
    /// counts as traffic) and times it, bounded by `probe`; its outcome is recorded too, as the freshest
    /// there is.
    pub(crate) async fn gather(
        service: &PgService,
        outcomes: &Outcomes,
        breaker: Option<&BreakerHandle>,
        probe: Option<Duration>,
        may_wake: bool,
        replica: Option<(&Pool, Option<&BreakerHandle>)>,
    ) -> HealthReport {
        let serverless = service.pool().pg_config().preset() == Preset::Serverless;
        let (probe, probe_skipped) = match probe {
            Some(_) if serverless && !may_wake => (None, Some(SKIPPED_SERVERLESS)),
            Some(limit) => (Some(probe_once(service, outcomes, limit).await), None),
            None => (None, None),
        };
        let last_error = outcomes
            .ago(outcomes.last_error_at.load(Ordering::Relaxed))
            .and_then(|ago| lock(&outcomes.last_error).clone().map(|e| (e, ago)));
        Self::from_parts(Parts {
            server: service.pool().server().to_owned(),
            pool: service.pool().stats(),
            multiplex: service.mux_stats(),
            breaker: breaker.map(BreakerReport::of),
            last_success: outcomes.ago(outcomes.last_success.load(Ordering::Relaxed)),
            last_error,
            probe,
            probe_skipped,
            servers: std::iter::once(ServerReport::of("primary", service.pool(), None))
                .chain(replica.map(|(pool, breaker)| ServerReport::of("replica", pool, breaker)))
                .collect(),
        })
    }

    /// The verdict (see the table in the [module docs](self)) and the report.
    fn from_parts(parts: Parts) -> HealthReport {
        // The error matters only if it is more recent than the last success.
        let recent_error = match (parts.last_error, parts.last_success) {
            (Some((_, err)), Some(ok)) if err >= ok => None,
            (Some((mut e, ago)), _) => {
                e.seconds_ago = ago.as_secs_f64();
                Some(e)
            }
            (None, _) => None,
        };
        let state = parts.breaker.as_ref().map(|(_, state)| *state);
        let down = matches!(state, Some(BreakerState::Open | BreakerState::ForcedOpen))
            || matches!(parts.probe, Some(Err(())));
        let degraded = state == Some(BreakerState::HalfOpen)
            || recent_error.is_some()
            || (parts.pool.waiting > 0 && parts.pool.idle == 0);
        let status = if down {
            Status::Down
        } else if degraded {
            Status::Degraded
        } else {
            Status::Up
        };
        HealthReport {
            status,
            server: parts.server,
            timestamp_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            probe_rtt_ms: parts
                .probe
                .and_then(|p| p.ok())
                .map(|d| d.as_secs_f64() * 1000.0),
            last_success_seconds_ago: parts.last_success.map(|d| d.as_secs_f64()),
            recent_error,
            pool: parts.pool,
            breaker: parts.breaker.map(|(report, _)| report),
            multiplex: parts.multiplex,
            servers: parts.servers,
            probe_skipped: parts.probe_skipped,
        }
    }
}

const SKIPPED_SERVERLESS: &str =
    "serverless preset: a probe would wake a suspended compute; this is the last known state";

/// One `SELECT 1` through the service, timed, its outcome recorded. All of it, checkout, validation and
/// connect included, is bounded by `limit`: the query's deadline bounds the checkout and the statement,
/// and a timer the rest (a connect or a check that would outlast it is dropped with the probe).
async fn probe_once(
    service: &PgService,
    outcomes: &Outcomes,
    limit: Duration,
) -> Result<Duration, ()> {
    use rampart_layers::deadline::Deadlined;
    use tower::ServiceExt;
    let started = Instant::now();
    let mut query = Query::read("SELECT 1").timeout(limit);
    query.set_deadline(tokio::time::Instant::now() + limit);
    let result = match tokio::time::timeout(limit, service.clone().oneshot(query)).await {
        Ok(result) => result,
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            Classification::Transient,
            format!("health probe did not answer within {limit:?}"),
        )),
    };
    outcomes.record(&result);
    result.map(|_| started.elapsed()).map_err(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(idle: usize, waiting: usize) -> PoolStats {
        PoolStats {
            max_size: 10,
            size: 10,
            idle,
            in_use: 10 - idle,
            waiting,
            created: 10,
            connect_failures: 0,
            recycled: 0,
            validated: 0,
            evicted_closed: 0,
            evicted_validation: 0,
            evicted_suspect: 0,
            evicted_lifetime: 0,
            evicted_idle: 0,
            evicted_read_only: 0,
            discarded: 0,
            checkout_timeouts: 0,
        }
    }

    fn parts() -> Parts {
        Parts {
            server: "postgres://app:***@db:5432/app".into(),
            pool: pool(5, 0),
            multiplex: None,
            breaker: None,
            last_success: Some(Duration::from_secs(1)),
            last_error: None,
            probe: None,
            probe_skipped: None,
            servers: Vec::new(),
        }
    }

    fn error(ago: Duration) -> Option<(RecentError, Duration)> {
        let e = RecentError {
            kind: "connect",
            classification: "transient",
            code: None,
            seconds_ago: 0.0,
        };
        Some((e, ago))
    }

    fn breaker(state: BreakerState) -> Option<(BreakerReport, BreakerState)> {
        let report = BreakerReport {
            name: "db".into(),
            state: state.as_str(),
            failure_rate: None,
            retry_after_seconds: None,
            rejections: 0,
        };
        Some((report, state))
    }

    #[test]
    fn up_when_nothing_is_wrong() {
        let report = HealthReport::from_parts(parts());
        assert_eq!(report.status, Status::Up);
        assert_eq!(report.recent_error, None);
        assert_eq!(report.last_success_seconds_ago, Some(1.0));
    }

    #[test]
    fn an_error_after_the_last_success_degrades_and_one_before_it_does_not() {
        // Two seconds ago, before the success one second ago: healed.
        let report = HealthReport::from_parts(Parts {
            last_error: error(Duration::from_secs(2)),
            ..parts()
        });
        assert_eq!((report.status, report.recent_error), (Status::Up, None));
        // Half a second ago, after it.
        let report = HealthReport::from_parts(Parts {
            last_error: error(Duration::from_millis(500)),
            ..parts()
        });
        assert_eq!(report.status, Status::Degraded);
        assert_eq!(report.recent_error.map(|e| e.seconds_ago), Some(0.5));
        // Never a success.
        let report = HealthReport::from_parts(Parts {
            last_success: None,
            last_error: error(Duration::from_secs(9)),
            ..parts()
        });
        assert_eq!(report.status, Status::Degraded);
    }

    #[test]
    fn the_breaker_and_the_probe_decide_down() {
        for (state, want) in [
            (BreakerState::Closed, Status::Up),
            (BreakerState::HalfOpen, Status::Degraded),
            (BreakerState::Open, Status::Down),
            (BreakerState::ForcedOpen, Status::Down),
        ] {
            let report = HealthReport::from_parts(Parts {
                breaker: breaker(state),
                ..parts()
            });
            assert_eq!(report.status, want, "{state:?}");
        }
        let report = HealthReport::from_parts(Parts {
            probe: Some(Err(())),
            ..parts()
        });
        assert_eq!(report.status, Status::Down);
        let report = HealthReport::from_parts(Parts {
            probe: Some(Ok(Duration::from_millis(2))),
            ..parts()
        });
        assert_eq!(
            (report.status, report.probe_rtt_ms),
            (Status::Up, Some(2.0))
        );
    }

    #[test]
    fn callers_waiting_for_an_exhausted_pool_degrade() {
        let report = HealthReport::from_parts(Parts {
            pool: pool(0, 3),
            ..parts()
        });
        assert_eq!(report.status, Status::Degraded);
        // Waiting while connections are idle is a moment of hand-off, not exhaustion.
        let report = HealthReport::from_parts(Parts {
            pool: pool(2, 3),
            ..parts()
        });
        assert_eq!(report.status, Status::Up);
    }

    #[test]
    fn outcomes_remember_only_failures_of_the_database() {
        let outcomes = Outcomes::default();
        outcomes.record::<()>(&Err(Error::new(
            crate::ErrorKind::Db,
            rampart_layers::Classification::Permanent,
            "syntax error",
        )));
        assert_eq!(outcomes.last_error_at.load(Ordering::Relaxed), 0);
        outcomes.record::<()>(&Err(Error::new(
            crate::ErrorKind::Connect,
            rampart_layers::Classification::Transient,
            "refused",
        )));
        assert_ne!(outcomes.last_error_at.load(Ordering::Relaxed), 0);
        assert_eq!(
            lock(&outcomes.last_error).as_ref().map(|e| e.kind),
            Some("connect")
        );
    }
}
