//! Errors of recreation.

use std::fmt;

/// A recreation setting was out of range; [`field`](ConfigError::field) names it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigError {
    field: &'static str,
    reason: &'static str,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, reason: &'static str) -> Self {
        Self { field, reason }
    }

    /// The name of the builder method whose value was rejected.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// Why the value was rejected.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid recreate setting `{}`: {}",
            self.field, self.reason
        )
    }
}

impl std::error::Error for ConfigError {}
