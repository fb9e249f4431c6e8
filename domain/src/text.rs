//! Shared helpers for validating free text.

use crate::ValidationError;

/// Shared rule for trimmed free-text names: trim, then 1..=`max` chars and no
/// control characters. Returns the trimmed string.
pub(crate) fn parse_trimmed_text(
    raw: &str,
    field: &'static str,
    max: usize,
) -> Result<String, ValidationError> {
    let trimmed = raw.trim();
    let len = trimmed.chars().count();
    if !(1..=max).contains(&len) {
        return Err(ValidationError::new(
            field,
            format!("must be 1 to {max} characters after trimming whitespace"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(trimmed.to_owned())
}
