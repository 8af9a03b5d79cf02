//! Errors of fault injection.

use std::fmt;
use std::time::Duration;

/// The kind of fault injected into a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// The call failed at once with [`InjectedFault`], without reaching the inner service.
    Error,
    /// The call was held back by this much before the inner call was polled.
    Latency(Duration),
    /// The call hung for the configured time, then failed with [`InjectedFault`], without reaching the
    /// inner service (a timeout layer above usually fires first).
    Timeout,
}

impl Fault {
    /// A short lowercase name, stable for logs and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Fault::Error => "error",
            Fault::Latency(_) => "latency",
            Fault::Timeout => "timeout",
        }
    }
}

/// The error of a call failed on purpose by [`Chaos`](super::Chaos).
///
/// Classifiers see it as any other error: find it with `err.is::<InjectedFault>()` and classify it as the
/// fault you mean to rehearse (usually `Transient`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InjectedFault {
    fault: Fault,
}

impl InjectedFault {
    pub(crate) fn new(fault: Fault) -> Self {
        Self { fault }
    }

    /// Which fault was injected ([`Fault::Error`] or [`Fault::Timeout`]).
    pub fn fault(&self) -> Fault {
        self.fault
    }
}

impl fmt::Display for InjectedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "injected fault: {}", self.fault.as_str())
    }
}

impl std::error::Error for InjectedFault {}
