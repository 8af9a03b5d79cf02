//! The pool's background tasks: retiring idle and aged connections, and the optional keepalive pinger.
//! Each holds the pool weakly and ends when the last clone of it is dropped.

use std::time::Duration;

use deadpool::managed::Timeouts;
use tokio::time::Instant;

use super::Pool;
use super::stats::bump;

pub(super) fn spawn(pool: &Pool, runtime: &tokio::runtime::Handle) {
    let counters = pool.shared.counters.clone();
    let config = pool.shared.config.clone();
    let sweep_every = [config.idle_timeout, config.max_lifetime]
        .into_iter()
        .flatten()
        .min()
        .map(|d| (d / 4).clamp(Duration::from_millis(50), Duration::from_secs(30)));
    if let Some(every) = sweep_every {
        let weak = pool.inner.weak();
        let counters = counters.clone();
        let idle_timeout = config.idle_timeout;
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                let now = Instant::now();
                pool.retain(|conn, metrics| {
                    if conn.client().is_closed() {
                        bump(&counters.evicted_closed);
                        false
                    } else if conn.expires_at.is_some_and(|at| now >= at) {
                        bump(&counters.evicted_lifetime);
                        false
                    } else if idle_timeout.is_some_and(|idle| metrics.last_used() >= idle) {
                        bump(&counters.evicted_idle);
                        false
                    } else {
                        true
                    }
                });
            }
        });
    }
    if let Some(every) = config.keepalive_interval {
        let weak = pool.inner.weak();
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let no_wait = Timeouts {
                wait: Some(Duration::ZERO),
                create: None,
                recycle: None,
            };
            loop {
                tick.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                // Check out every idle connection at once, so each is visited once; checkout validates
                // those idle past the bypass window, which is the ping.
                let mut held = Vec::new();
                for _ in 0..pool.status().available {
                    match pool.timeout_get(&no_wait).await {
                        Ok(conn) => held.push(conn),
                        Err(_) => break,
                    }
                }
                drop(held);
            }
        });
    }
}
