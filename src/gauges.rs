//! The stack's own figures through the `metrics` facade (feature `metrics`): the pool's sizes and
//! counts, the breaker's state, the multiplexer's connections. [`Db::publish_metrics`] sets them once
//! (call it where your exporter renders, at scrape time); [`Db::publish_metrics_every`] keeps them
//! current from a background task. Install an exporter in your application; there is none here.
//! The crate docs' table names every metric.
//!
//! ```no_run
//! # async fn demo(db: rampart::Db) {
//! // With an exporter installed (metrics-exporter-prometheus, say), keep the gauges current:
//! let _publisher = db.publish_metrics_every(std::time::Duration::from_secs(5));
//! // ... serve; dropping the publisher stops it.
//! # }
//! ```

use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};
use rampart_layers::breaker::BreakerState;

use crate::stack::Db;

const BREAKER_STATES: [BreakerState; 6] = [
    BreakerState::Closed,
    BreakerState::Open,
    BreakerState::HalfOpen,
    BreakerState::ForcedOpen,
    BreakerState::Disabled,
    BreakerState::MetricsOnly,
];

/// Describes the metrics (units and help text) to the recorder. Every time, not once per process: the
/// recorder may have been replaced (a test's local one), and a description costs little next to a
/// scrape.
fn describe() {
    {
        let gauges = [
            (
                "rampart_pool_max_size",
                "The most connections the pool opens.",
            ),
            ("rampart_pool_connections", "Connections open now."),
            ("rampart_pool_idle", "Open connections idle in the pool."),
            ("rampart_pool_in_use", "Open connections checked out."),
            ("rampart_mux_connections", "Shared connections open."),
            (
                "rampart_mux_ready",
                "Shared connections accepting statements.",
            ),
        ];
        for (name, help) in gauges {
            describe_gauge!(name, Unit::Count, help);
        }
        describe_gauge!(
            "rampart_pool_waiting",
            Unit::Count,
            "Callers waiting for a connection."
        );
        describe_gauge!(
            "rampart_mux_in_flight",
            Unit::Count,
            "Statements sent on shared connections and not answered yet."
        );
        describe_gauge!(
            "rampart_breaker_state",
            "1 for the breaker's current state, 0 for the others."
        );
        let counters = [
            ("rampart_pool_created_total", "Connections created."),
            (
                "rampart_pool_connect_failures_total",
                "Connect attempts that failed.",
            ),
            (
                "rampart_pool_recycled_total",
                "Checkouts of an existing connection.",
            ),
            (
                "rampart_pool_validated_total",
                "Checkouts that ran a validation round trip.",
            ),
            (
                "rampart_pool_discarded_total",
                "Connections discarded after a failed or abandoned request.",
            ),
            (
                "rampart_pool_checkout_timeouts_total",
                "Checkouts that gave up waiting.",
            ),
            (
                "rampart_pool_evicted_total",
                "Connections dropped, by reason.",
            ),
            ("rampart_pool_rebuilds_total", "Rebuilds of the whole pool."),
        ];
        for (name, help) in counters {
            describe_counter!(name, Unit::Count, help);
        }
    }
}

/// The background task of [`Db::publish_metrics_every`]; dropping it stops the task.
#[derive(Debug)]
pub struct MetricsPublisher {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MetricsPublisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Db {
    /// Sets the stack's gauges and counters (pool, breaker, multiplexer: see the table in the
    /// [crate docs](crate#metrics)) through the `metrics` facade, once. Call it where your exporter
    /// renders, or use [`Db::publish_metrics_every`].
    pub fn publish_metrics(&self) {
        describe();
        let service = self.service();
        let pool = service.pool();
        let stats = pool.stats();
        // The redacted URL: names the server without its password.
        let server = pool.server().to_owned();
        for (name, value) in [
            ("rampart_pool_max_size", stats.max_size),
            ("rampart_pool_connections", stats.size),
            ("rampart_pool_idle", stats.idle),
            ("rampart_pool_in_use", stats.in_use),
            ("rampart_pool_waiting", stats.waiting),
        ] {
            gauge!(name, "server" => server.clone()).set(value as f64);
        }
        for (name, value) in [
            ("rampart_pool_created_total", stats.created),
            (
                "rampart_pool_connect_failures_total",
                stats.connect_failures,
            ),
            ("rampart_pool_recycled_total", stats.recycled),
            ("rampart_pool_validated_total", stats.validated),
            ("rampart_pool_discarded_total", stats.discarded),
            (
                "rampart_pool_checkout_timeouts_total",
                stats.checkout_timeouts,
            ),
            ("rampart_pool_rebuilds_total", self.pool_rebuilds()),
        ] {
            counter!(name, "server" => server.clone()).absolute(value);
        }
        for (reason, value) in [
            ("closed", stats.evicted_closed),
            ("validation", stats.evicted_validation),
            ("lifetime", stats.evicted_lifetime),
            ("idle", stats.evicted_idle),
            ("read_only", stats.evicted_read_only),
        ] {
            counter!("rampart_pool_evicted_total", "server" => server.clone(), "reason" => reason)
                .absolute(value);
        }
        if let Some(breaker) = self.breaker() {
            let now = breaker.state();
            for state in BREAKER_STATES {
                gauge!("rampart_breaker_state", "name" => breaker.name().to_owned(), "state" => state.as_str())
                    .set(if state == now { 1.0 } else { 0.0 });
            }
        }
        if let Some(mux) = service.mux_stats() {
            for (name, value) in [
                ("rampart_mux_connections", mux.connections),
                ("rampart_mux_ready", mux.ready),
                ("rampart_mux_in_flight", mux.in_flight),
            ] {
                gauge!(name, "server" => server.clone()).set(value as f64);
            }
            for (name, value) in [
                ("rampart_mux_shared_total", mux.shared),
                ("rampart_mux_exclusive_total", mux.exclusive),
                ("rampart_mux_spilled_total", mux.spilled),
                ("rampart_mux_connects_total", mux.connects),
                ("rampart_mux_connect_failures_total", mux.connect_failures),
                ("rampart_mux_lost_total", mux.lost),
                ("rampart_mux_validated_total", mux.validated),
                ("rampart_mux_retired_total", mux.retired),
            ] {
                counter!(name, "server" => server.clone()).absolute(value);
            }
        }
    }

    /// Publishes the figures of [`Db::publish_metrics`] now and every `period` from a task on the
    /// current Tokio runtime, until the returned publisher is dropped. Must be called within a runtime.
    pub fn publish_metrics_every(&self, period: Duration) -> MetricsPublisher {
        let db = self.clone();
        let period = period.max(Duration::from_millis(10));
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                db.publish_metrics();
            }
        });
        MetricsPublisher { task }
    }
}
