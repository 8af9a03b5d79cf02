//! The one error every configuration builder of the crate returns.

use std::borrow::Cow;
use std::fmt;

/// A setting was refused when its configuration was built; [`field`](ConfigError::field) names it.
///
/// Every `build()` in the crate returns this type, so code that assembles a stack handles bad settings
/// of all its layers the same way.
///
/// ```
/// use rampart_layers::backoff::Exponential;
///
/// let err = Exponential::builder().multiplier(0.0).build().unwrap_err();
/// assert_eq!(err.field(), "multiplier");
/// assert_eq!(err.to_string(), format!("invalid `multiplier`: {}", err.reason()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    reason: Cow<'static, str>,
}

impl ConfigError {
    /// An error refusing the setting `field` (spelt as its builder method) because of `reason`.
    ///
    /// Public so that builders of your own layers can report bad settings the same way.
    pub fn new(field: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }

    /// The name of the setting that was refused, as spelt by its builder method (`"multiplier"`).
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// Why it was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid `{}`: {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_field_and_keeps_an_owned_reason() {
        let err = ConfigError::new("max_keys", format!("must be at most {}", 10));
        assert_eq!(err.field(), "max_keys");
        assert_eq!(err.reason(), "must be at most 10");
        assert_eq!(err.to_string(), "invalid `max_keys`: must be at most 10");
    }
}
