//! One breaker per key, with bounded memory.

use std::collections::HashMap;
use std::hash::Hash;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{BoxError, Layer, Service};

use super::config::BreakerConfig;
use super::future::{PermitGuard, ResponseFuture};
use super::handle::BreakerHandle;
use super::state::Shared;
use super::sync::Arc;
use crate::ConfigError;
use crate::classify::{Classify, TimeoutsAreTransient};

struct Entry {
    shared: Arc<Shared>,
    last_used: tokio::time::Instant,
}

struct Registry<K> {
    config: BreakerConfig,
    max_keys: usize,
    idle_after: Duration,
    map: std::sync::Mutex<HashMap<K, Entry>>,
}

/// The breakers of a [`KeyedCircuitBreaker`], one per key, all configured alike.
///
/// Memory is bounded: the registry holds at most `max_keys` breakers. When a new key arrives and the
/// registry is full, breakers unused for `idle_after` are dropped first, then the least recently used
/// one. A dropped breaker forgets its window; if its key comes back it starts closed. Each breaker is
/// named `"{config name}/{key:?}"` in events and metrics.
pub struct BreakerRegistry<K> {
    inner: std::sync::Arc<Registry<K>>,
}

impl<K> Clone for BreakerRegistry<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K> std::fmt::Debug for BreakerRegistry<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerRegistry")
            .field("name", &self.inner.config.name())
            .field("max_keys", &self.inner.max_keys)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone + std::fmt::Debug> BreakerRegistry<K> {
    /// A registry of at most `max_keys` breakers configured by `config`, dropping those unused for
    /// `idle_after` first when it is full.
    pub fn new(
        config: BreakerConfig,
        max_keys: usize,
        idle_after: Duration,
    ) -> Result<Self, ConfigError> {
        if max_keys == 0 {
            return Err(ConfigError::new("max_keys", "must be at least 1"));
        }
        let map = std::sync::Mutex::new(HashMap::new());
        Ok(Self {
            inner: std::sync::Arc::new(Registry {
                config,
                max_keys,
                idle_after,
                map,
            }),
        })
    }

    /// A handle on the breaker for `key`, if the registry holds one.
    pub fn get(&self, key: &K) -> Option<BreakerHandle> {
        self.lock()
            .get(key)
            .map(|e| BreakerHandle::new(e.shared.clone()))
    }

    /// How many breakers the registry holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the registry holds no breaker.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Entry>> {
        self.inner.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn breaker(&self, key: &K) -> Arc<Shared> {
        let now = tokio::time::Instant::now();
        let mut map = self.lock();
        if let Some(entry) = map.get_mut(key) {
            entry.last_used = now;
            return entry.shared.clone();
        }
        if map.len() >= self.inner.max_keys {
            let idle_after = self.inner.idle_after;
            map.retain(|_, e| now.saturating_duration_since(e.last_used) < idle_after);
            if map.len() >= self.inner.max_keys {
                let lru = map
                    .iter()
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(k, _)| k.clone());
                if let Some(lru) = lru {
                    map.remove(&lru);
                }
            }
        }
        let mut config = self.inner.config.clone();
        config.name = format!("{}/{:?}", config.name(), key).into();
        let shared = Shared::new_arc(config);
        map.insert(
            key.clone(),
            Entry {
                shared: shared.clone(),
                last_used: now,
            },
        );
        shared
    }
}

/// A circuit breaker per key: `key_of` picks the key of each request (its host, tenant or shard), and
/// each key's calls are judged by that key's breaker alone.
///
/// Unlike [`CircuitBreaker`](super::CircuitBreaker), the key is only known in `call`, so the permit is
/// taken there: `poll_ready` waits for the inner service, and a rejected call leaves that readiness
/// unused.
pub struct KeyedCircuitBreaker<S, F, K, C = TimeoutsAreTransient> {
    inner: S,
    key_of: F,
    classifier: C,
    registry: BreakerRegistry<K>,
}

impl<S: Clone, F: Clone, K, C: Clone> Clone for KeyedCircuitBreaker<S, F, K, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            key_of: self.key_of.clone(),
            classifier: self.classifier.clone(),
            registry: self.registry.clone(),
        }
    }
}

impl<S: std::fmt::Debug, F, K, C> std::fmt::Debug for KeyedCircuitBreaker<S, F, K, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, F, K, C> KeyedCircuitBreaker<S, F, K, C> {
    /// Wraps `inner`, judging each request by the breaker for `key_of(&request)` in `registry`.
    pub fn new(inner: S, registry: BreakerRegistry<K>, key_of: F, classifier: C) -> Self {
        Self {
            inner,
            key_of,
            classifier,
            registry,
        }
    }

    /// The registry of breakers.
    pub fn registry(&self) -> &BreakerRegistry<K> {
        &self.registry
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the breaker, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, F, K, C, Req> Service<Req> for KeyedCircuitBreaker<S, F, K, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    F: Fn(&Req) -> K,
    K: Hash + Eq + Clone + std::fmt::Debug,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let shared = self.registry.breaker(&(self.key_of)(&req));
        match shared.try_acquire() {
            Ok(permit) => ResponseFuture::called(
                self.inner.call(req),
                PermitGuard::new(shared, permit),
                self.classifier.clone(),
            ),
            Err(open) => ResponseFuture::rejected(open),
        }
    }
}

/// Applies a [`KeyedCircuitBreaker`]; every service it wraps shares one [`BreakerRegistry`].
pub struct KeyedCircuitBreakerLayer<F, K, C = TimeoutsAreTransient> {
    registry: BreakerRegistry<K>,
    key_of: F,
    classifier: C,
}

impl<F: Clone, K, C: Clone> Clone for KeyedCircuitBreakerLayer<F, K, C> {
    fn clone(&self) -> Self {
        Self {
            registry: self.registry.clone(),
            key_of: self.key_of.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<F, K, C> std::fmt::Debug for KeyedCircuitBreakerLayer<F, K, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .finish_non_exhaustive()
    }
}

impl<F, K> KeyedCircuitBreakerLayer<F, K> {
    /// A layer judging each request by the breaker for `key_of(&request)` in `registry`.
    pub fn new(registry: BreakerRegistry<K>, key_of: F) -> Self {
        Self {
            registry,
            key_of,
            classifier: TimeoutsAreTransient,
        }
    }
}

impl<F, K, C> KeyedCircuitBreakerLayer<F, K, C> {
    /// Uses `classifier` to decide which outcomes count as failures.
    pub fn with_classifier<C2>(self, classifier: C2) -> KeyedCircuitBreakerLayer<F, K, C2> {
        KeyedCircuitBreakerLayer {
            registry: self.registry,
            key_of: self.key_of,
            classifier,
        }
    }

    /// The registry of breakers.
    pub fn registry(&self) -> &BreakerRegistry<K> {
        &self.registry
    }
}

impl<S, F: Clone, K, C: Clone> Layer<S> for KeyedCircuitBreakerLayer<F, K, C> {
    type Service = KeyedCircuitBreaker<S, F, K, C>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreaker::new(
            inner,
            self.registry.clone(),
            self.key_of.clone(),
            self.classifier.clone(),
        )
    }
}
