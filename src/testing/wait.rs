//! Bounded waits for tests over real sockets: poll a condition until it holds, or fail saying what was
//! awaited. Never a guessed sleep: the wait ends as soon as the condition holds, and a condition that
//! never holds fails the test after the bound instead of hanging it.

use std::future::Future;
use std::time::Duration;

/// How long a wait lasts before it fails the test: far above anything a healthy run needs, so a slow
/// machine does not fail it, and a stuck one does.
pub const WAIT_BOUND: Duration = Duration::from_secs(30);

/// Waits until `cond` holds, checking every few milliseconds; panics after [`WAIT_BOUND`] naming `what`.
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    until_async(what, || std::future::ready(cond())).await
}

/// Waits until the future `cond` makes resolves to `true`, polling every few milliseconds; panics after
/// [`WAIT_BOUND`] naming `what`.
pub async fn until_async<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT_BOUND;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT_BOUND:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
