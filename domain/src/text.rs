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
    if trimmed
        .chars()
        .any(|c| c.is_control() || is_hidden_format(c))
    {
        return Err(ValidationError::new(
            field,
            "must not contain control characters or invisible formatting characters",
        ));
    }
    Ok(trimmed.to_owned())
}

/// Bidirectional-format and zero-width characters: invisible, and able to make a name or a
/// password read differently from what it is (a "Trojan Source" reordering, a look-alike login).
pub(crate) fn is_hidden_format(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}'
            | '\u{FEFF}'
    )
}
