//! Whether replaying a request is harmless: [`Idempotence`] and the markers [`Idempotent`] and
//! [`NotIdempotent`].
//!
//! Retry replays an ambiguous failure only for an idempotent request, and the deadline layer forwards
//! the answer through its wrappers. This module imports nothing from the crate, so both can use it
//! without importing each other. Its items are public as `rampart_layers::classify::Idempotence` etc.
//!
//! ```
//! use rampart_layers::classify::{Idempotence, Idempotent, NotIdempotent};
//!
//! assert!(Idempotent("SELECT 1").is_idempotent());
//! assert!(!NotIdempotent("SELECT 1").is_idempotent());
//! assert!(!"INSERT".is_idempotent(), "not idempotent unless it says so");
//! ```

/// Whether replaying a request is harmless.
///
/// The default method answers `false`: a request is not idempotent unless it says so. Implement this for
/// your request type (a read-only query, an HTTP `GET`, a write carrying an idempotency key return `true`),
/// or wrap a request in [`Idempotent`] to mark one request at the call site.
pub trait Idempotence {
    /// Whether sending this request twice has the same effect as sending it once.
    fn is_idempotent(&self) -> bool {
        false
    }
}

/// Marks a request as idempotent (safe to replay after an ambiguous failure).
///
/// Services that want the inner request back can use [`Idempotent::into_inner`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Idempotent<R>(pub R);

impl<R> Idempotent<R> {
    /// The wrapped request.
    pub fn into_inner(self) -> R {
        self.0
    }
}

impl<R> Idempotence for Idempotent<R> {
    fn is_idempotent(&self) -> bool {
        true
    }
}

/// Marks a request as *not* idempotent, explicitly. Equivalent to the default, but says so at the call site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NotIdempotent<R>(pub R);

impl<R> Idempotence for NotIdempotent<R> {}

impl Idempotence for () {}
impl Idempotence for &'static str {}
impl Idempotence for String {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_not_idempotent_by_default() {
        assert!(!"INSERT".is_idempotent());
        assert!(Idempotent("SELECT").is_idempotent());
        assert!(!NotIdempotent("SELECT").is_idempotent());
    }
}
