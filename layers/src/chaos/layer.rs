use tower::Layer;

use super::{Chaos, ChaosConfig, ChaosHandle};

/// Applies [`Chaos`]. Every service it wraps shares one generator, schedule and handle.
#[derive(Debug, Clone)]
pub struct ChaosLayer {
    handle: ChaosHandle,
}

impl ChaosLayer {
    /// A layer injecting faults as `config` says; the schedule starts now.
    pub fn new(config: ChaosConfig) -> Self {
        Self {
            handle: ChaosHandle::new(config),
        }
    }

    /// A handle to switch injection on and off and count what was injected.
    pub fn handle(&self) -> ChaosHandle {
        self.handle.clone()
    }
}

impl<S> Layer<S> for ChaosLayer {
    type Service = Chaos<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Chaos {
            inner,
            handle: self.handle.clone(),
        }
    }
}
