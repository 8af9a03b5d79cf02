//! Opening shared connections: in the background, with the shared backoff schedule while connects fail.
//!
//! A transient failure (refused, reset, the server starting up) is retried with jittered exponential
//! backoff (50 ms doubling to 5 s) until a connect succeeds or the multiplexer is dropped. A permanent one
//! (a wrong password, no such database, a TLS failure) stops the loop: retrying in the background would
//! only log in and fail again forever. The slot then stays empty (requests go to the pool, which reports
//! the error to its callers) until a request arrives after the backoff delay, which tries once more.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use rampart_layers::Classification;
use rampart_layers::backoff::{Backoff, Exponential, Jitter};
use rampart_layers::rng::SplitMix64;

use super::Mux;
use super::conn::Conn;
use super::stats::bump;
use crate::cache::SqlCache;
use crate::error::{Error, ErrorKind};
use crate::outcome::connect_failed;
use crate::pool::host_of;
use crate::sync::write;

/// The wait between failed connects of one slot.
fn schedule() -> Exponential {
    Exponential::builder()
        .base_delay(Duration::from_millis(50))
        .multiplier(2.0)
        .max_delay(Duration::from_secs(5))
        .jitter(Jitter::Full)
        .build()
        .unwrap_or_default()
}

impl Mux {
    /// Opens a connection for slot `index` in the background, unless one is being opened already or
    /// the last one failed permanently less than its backoff ago; whether this call started it.
    pub(super) fn connect_in_background(&self, index: usize) -> bool {
        let slot = &self.slots[index];
        if self.now_ms() < slot.connect_not_before_ms.load(Ordering::Relaxed) {
            return false;
        }
        if slot
            .connecting
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            slot.connecting.store(false, Ordering::Release);
            return false;
        };
        runtime.spawn(connect_loop(self.me.clone(), index));
        true
    }

    async fn connect(&self) -> Result<Conn, Error> {
        let limit = self
            .pg
            .pg_config()
            .get_connect_timeout()
            .map_or(Duration::from_secs(30), |t| *t + Duration::from_secs(1));
        let connecting = async {
            let connected = self
                .connector
                .connect_to(self.pg.pg_config())
                .await
                .map_err(|r| connect_failed(r.error, &host_of(&r.host, &self.server)))?;
            let named = host_of(&connected.host, &self.server);
            let ms = self.statement_timeout.as_millis().max(1);
            connected
                .client
                .simple_query(&format!("SET statement_timeout = {ms}"))
                .await
                .map_err(|e| connect_failed(e, &named))?;
            Ok((connected.client, connected.host, named))
        };
        let (client, host, named) =
            tokio::time::timeout(limit, connecting)
                .await
                .map_err(|_| {
                    Error::new(
                        ErrorKind::Connect,
                        Classification::Transient,
                        format!("timed out (could not connect to {})", self.server),
                    )
                })??;
        Ok(Conn {
            client,
            host,
            named,
            statements: SqlCache::default(),
            expires_at: self.pool.expiry(&self.rng),
        })
    }

    fn install(&self, index: usize, conn: Conn) {
        let slot = &self.slots[index];
        let old = write(&slot.conn).replace(Arc::new(conn));
        slot.progress(self.now_ms());
        slot.connect_not_before_ms.store(0, Ordering::Relaxed);
        slot.failed_connects.store(0, Ordering::Relaxed);
        slot.ready.store(true, Ordering::Release);
        slot.connecting.store(false, Ordering::Release);
        bump(&self.counters.connects);
        tracing::info!(target: "rampart::mux", server = %self.server, slot = index, "shared connection ready");
        // A connection retired for its age finishes what is in flight on it, then closes.
        drop(old);
    }
}

/// Opens a connection for slot `index`, retrying transient failures with backoff, until it succeeds, a
/// failure is permanent, or the multiplexer is dropped.
async fn connect_loop(mux: Weak<Mux>, index: usize) {
    let mut schedule = schedule();
    let mut rng = SplitMix64::from_entropy();
    loop {
        let Some(strong) = mux.upgrade() else { return };
        let error = match strong.connect().await {
            Ok(conn) => {
                strong.install(index, conn);
                return;
            }
            Err(e) => e,
        };
        bump(&strong.counters.connect_failures);
        let slot = &strong.slots[index];
        let failures = slot
            .failed_connects
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let wait = schedule.next_delay(failures, &mut rng).unwrap_or_default();
        if error.classification() == Classification::Permanent {
            tracing::warn!(
                target: "rampart::mux", server = %strong.server, slot = index, error = %error,
                "shared connection failed to connect; not retrying in the background"
            );
            let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            slot.connect_not_before_ms
                .store(strong.now_ms().saturating_add(wait_ms), Ordering::Relaxed);
            slot.connecting.store(false, Ordering::Release);
            return;
        }
        tracing::warn!(target: "rampart::mux", server = %strong.server, slot = index, error = %error, "shared connection failed to connect");
        drop(strong);
        tokio::time::sleep(wait).await;
    }
}
