//! Whether a request can be sent again: [`Replay`], and [`NotReplayable`] for one that cannot.

use std::time::Duration;

use tokio::time::Instant;

use crate::classify::Idempotence;
use crate::deadline::Deadlined;

/// A request the retry layer can send again: each attempt is sent a replay while one can be made;
/// when none can, the request itself goes, and that attempt is the last.
///
/// Every `Clone` type replays (a clone). A request that cannot be replayed (a streamed body, a
/// one-shot channel; tower's `Policy::clone_request` returning `None`) answers `None`: the retry layer
/// then sends the request itself, makes no further attempt, and returns that attempt's outcome (its
/// error with [`GaveUp::NotReplayable`](super::GaveUp::NotReplayable) when it failed in a way that would
/// otherwise have been retried). Mark a request with [`NotReplayable`], or implement this trait for a
/// request type of your own that is not `Clone`.
pub trait Replay: Sized {
    /// A copy to send now, keeping `self` for a later attempt; `None` if there can be no other attempt.
    fn replay(&self) -> Option<Self>;
}

impl<T: Clone> Replay for T {
    #[inline]
    fn replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

/// Marks a request that cannot be sent twice: the retry layer makes one attempt with it. Deadlines and
/// idempotence are forwarded to the wrapped request.
///
/// ```
/// use rampart_layers::retry::{NotReplayable, Replay};
/// use rampart_layers::deadline::WithDeadline;
///
/// let req = NotReplayable(WithDeadline::new("INSERT ..."));
/// assert!(req.replay().is_none());
/// assert!(WithDeadline::new("SELECT 1").replay().is_some());
/// ```
#[derive(Debug, PartialEq, Eq, Hash, Default)]
pub struct NotReplayable<R>(pub R);

impl<R> NotReplayable<R> {
    /// The wrapped request.
    pub fn into_inner(self) -> R {
        self.0
    }
}

impl<R> Replay for NotReplayable<R> {
    fn replay(&self) -> Option<Self> {
        None
    }
}

impl<R: Idempotence> Idempotence for NotReplayable<R> {
    fn is_idempotent(&self) -> bool {
        self.0.is_idempotent()
    }
}

impl<R: Deadlined> Deadlined for NotReplayable<R> {
    fn deadline(&self) -> Option<Instant> {
        self.0.deadline()
    }
    fn set_deadline(&mut self, deadline: Instant) {
        self.0.set_deadline(deadline)
    }
    fn granted(&self) -> Option<Duration> {
        self.0.granted()
    }
}
