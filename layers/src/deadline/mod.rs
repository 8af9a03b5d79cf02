//! deadline (under construction in this session).

/// Placeholder so that `classify` compiles; replaced by the deadline module.
#[derive(Debug)]
pub struct AttemptTimedOut;
impl std::fmt::Display for AttemptTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("attempt timed out")
    }
}
impl std::error::Error for AttemptTimedOut {}
