//! The error type returned by every `parse` function.

/// A rejected input: which field and why. `field` uses the JSON (camelCase) name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The JSON (camelCase) name of the rejected field, e.g. `"loginId"`.
    pub field: &'static str,
    /// A human-readable description of the rule that was broken.
    pub message: String,
}

impl ValidationError {
    /// Builds an error for `field` with the given human-readable `message`.
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_field_and_message() {
        let err = ValidationError::new("loginId", "must not be empty");
        assert_eq!(err.to_string(), "loginId: must not be empty");
        assert_eq!(err.field, "loginId");
        assert_eq!(err.message, "must not be empty");
    }
}
