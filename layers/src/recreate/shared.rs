//! The state every clone of one `Recreate` shares, and the background rebuild.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tower::{BoxError, Service};

use super::config::RecreateConfig;

/// What a response future reports back, without knowing the service and factory types.
pub(crate) trait OutcomeSink: Send + Sync {
    fn on_outcome(self: Arc<Self>, generation: u64, failure: bool);
}

pub(crate) struct Shared<S, M> {
    config: RecreateConfig,
    current: Mutex<(u64, S)>,
    generation: AtomicU64,
    consecutive_failures: AtomicU32,
    rebuilding: AtomicBool,
    failed_attempts: AtomicU64,
    factory: tokio::sync::Mutex<M>,
}

impl<S: Clone, M> Shared<S, M> {
    pub(crate) fn new(service: S, factory: M, config: RecreateConfig) -> Self {
        Self {
            config,
            current: Mutex::new((0, service)),
            generation: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            rebuilding: AtomicBool::new(false),
            failed_attempts: AtomicU64::new(0),
            factory: tokio::sync::Mutex::new(factory),
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn is_rebuilding(&self) -> bool {
        self.rebuilding.load(Ordering::Acquire)
    }

    pub(crate) fn failed_attempts(&self) -> u64 {
        self.failed_attempts.load(Ordering::Relaxed)
    }

    /// A clone of the current service and its generation.
    pub(crate) fn checkout(&self) -> (u64, S) {
        let slot = self.current.lock().unwrap_or_else(|p| p.into_inner());
        (slot.0, slot.1.clone())
    }
}

impl<S, M> Shared<S, M>
where
    S: Clone + Send + 'static,
    M: Service<(), Response = S> + Send + 'static,
    M::Error: Into<BoxError>,
    M::Future: Send,
{
    /// Starts a rebuild unless one is already running. Returns whether this call started it.
    pub(crate) fn trigger(self: &Arc<Self>, reason: &'static str) -> bool {
        if self
            .rebuilding
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        let generation = self.generation();
        tracing::warn!(target: "rampart::recreate", generation, reason, "rebuilding the inner service");
        tokio::spawn(self.clone().rebuild(reason));
        true
    }

    async fn rebuild(self: Arc<Self>, reason: &'static str) {
        let mut attempt = 0u32;
        loop {
            let built: Result<S, BoxError> = {
                let mut factory = self.factory.lock().await;
                let ready: Result<(), BoxError> = poll_fn(|cx| factory.poll_ready(cx))
                    .await
                    .map_err(Into::into);
                match ready {
                    Ok(()) => factory.call(()).await.map_err(Into::into),
                    Err(e) => Err(e),
                }
            };
            match built {
                Ok(service) => {
                    let generation = {
                        let mut slot = self.current.lock().unwrap_or_else(|p| p.into_inner());
                        let generation = slot.0 + 1;
                        *slot = (generation, service);
                        generation
                    };
                    self.consecutive_failures.store(0, Ordering::Release);
                    self.generation.store(generation, Ordering::Release);
                    self.rebuilding.store(false, Ordering::Release);
                    tracing::info!(target: "rampart::recreate", generation, reason, attempts = attempt + 1,
                        "swapped in a rebuilt inner service");
                    crate::events::counter(
                        "rampart_recreate_rebuilds_total",
                        &[("reason", reason.into())],
                        1,
                    );
                    return;
                }
                Err(error) => {
                    attempt += 1;
                    self.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    let delay = self.config.backoff(attempt);
                    tracing::warn!(target: "rampart::recreate", generation = self.generation(), reason, attempt,
                        delay_ms = delay.as_millis() as u64, error = %error, "rebuild failed; backing off");
                    crate::events::counter("rampart_recreate_failed_attempts_total", &[], 1);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

impl<S, M> OutcomeSink for Shared<S, M>
where
    S: Clone + Send + 'static,
    M: Service<(), Response = S> + Send + 'static,
    M::Error: Into<BoxError>,
    M::Future: Send,
{
    fn on_outcome(self: Arc<Self>, generation: u64, failure: bool) {
        // Outcomes of an older service, or arriving while a rebuild is under way, belong to the burst
        // that already triggered it: they must not trigger another.
        if generation != self.generation() || self.is_rebuilding() {
            return;
        }
        if !failure {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            return;
        }
        let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= self.config.failure_threshold {
            self.trigger("consecutive_failures");
        }
    }
}
