//! Member (user account) values: login id, password, display name and role.

use std::fmt;

use serde::Serialize;

use crate::ValidationError;

/// Minimum length of a [`LoginId`], in characters.
pub const MIN_LOGIN_ID_CHARS: usize = 4;
/// Maximum length of a [`LoginId`], in characters.
pub const MAX_LOGIN_ID_CHARS: usize = 64;
/// Minimum length of a [`Password`], in characters (not bytes).
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Maximum length of a [`Password`], in characters (not bytes).
pub const MAX_PASSWORD_CHARS: usize = 128;
/// Maximum length of a [`UserName`] after trimming, in characters (not bytes).
pub const MAX_USER_NAME_CHARS: usize = 64;

/// A user's login identifier: 4 to 64 ASCII characters from `[A-Za-z0-9_.-]`.
///
/// Case-sensitive and never trimmed: surrounding whitespace is an error.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct LoginId(String);

impl LoginId {
    /// The JSON field name reported in errors.
    pub const FIELD: &'static str = "loginId";

    /// Validates a login id: 4 to 64 characters, each one of `A-Z`, `a-z`,
    /// `0-9`, `_`, `.` or `-`.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        // All allowed characters are ASCII, so byte length equals char count
        // whenever the character check passes.
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
        let len = raw.chars().count();
        if (MIN_LOGIN_ID_CHARS..=MAX_LOGIN_ID_CHARS).contains(&len) && raw.chars().all(allowed) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ValidationError::new(
                Self::FIELD,
                format!(
                    "must be {MIN_LOGIN_ID_CHARS} to {MAX_LOGIN_ID_CHARS} characters of \
                     A-Z, a-z, 0-9, '_', '.', '-'"
                ),
            ))
        }
    }

    /// Returns the login id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A plaintext password as submitted by a client: 8 to 128 characters, not
/// all whitespace.
///
/// Its `Debug` output is redacted (`Password(***)`) and it deliberately does
/// not implement `Serialize` or `Display`, so it cannot leak into logs or
/// responses by accident. Use [`Password::expose`] to hash or verify it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// The JSON field name reported in errors.
    pub const FIELD: &'static str = "password";

    /// Validates a password: 8 to 128 characters (counted as Unicode scalar
    /// values, not bytes), any characters allowed, but not only whitespace.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let len = raw.chars().count();
        if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&len) {
            return Err(ValidationError::new(
                Self::FIELD,
                format!("must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters"),
            ));
        }
        if raw.chars().all(char::is_whitespace) {
            return Err(ValidationError::new(
                Self::FIELD,
                "must not consist only of whitespace",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// Returns the plaintext password. Only pass it to hashing/verification.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Passwords everyone tries first (`common_passwords.txt`, compared case-insensitively).
const COMMON_PASSWORDS: &str = include_str!("common_passwords.txt");

impl Password {
    /// The rules a *new* password must meet besides [`Password::parse`] (at sign-up; a login
    /// only checks the stored hash): no control or bidirectional-format characters, not on the
    /// list of commonly used passwords (NIST SP 800-63B), and not the login id itself.
    pub fn check_new(&self, login_id: &LoginId) -> Result<(), ValidationError> {
        if self
            .0
            .chars()
            .any(|c| c.is_control() || crate::text::is_hidden_format(c))
        {
            return Err(ValidationError::new(
                Self::FIELD,
                "must not contain control characters or invisible formatting characters",
            ));
        }
        let folded = self.0.to_lowercase();
        if folded.contains(&login_id.as_str().to_lowercase()) {
            return Err(ValidationError::new(
                Self::FIELD,
                "must not contain the login id",
            ));
        }
        let common = COMMON_PASSWORDS
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .any(|l| l.eq_ignore_ascii_case(&folded));
        if common {
            return Err(ValidationError::new(
                Self::FIELD,
                "is one of the most common passwords; choose another",
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// A user's display name: trimmed, 1 to 64 characters, no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UserName(String);

impl UserName {
    /// The JSON field name reported in errors.
    pub const FIELD: &'static str = "name";

    /// Validates a display name. Leading and trailing whitespace is removed
    /// first; the rest must be 1 to 64 characters (not bytes) with no control
    /// characters.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        crate::text::parse_trimmed_text(raw, Self::FIELD, MAX_USER_NAME_CHARS).map(Self)
    }

    /// Returns the name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A member's role. Serialized as `"USER"` or `"ADMIN"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Role {
    /// An ordinary customer.
    #[serde(rename = "USER")]
    User,
    /// An administrator who can manage items and coupons.
    #[serde(rename = "ADMIN")]
    Admin,
}

impl Role {
    /// The JSON field name reported in errors.
    pub const FIELD: &'static str = "role";

    /// Parses exactly `"USER"` or `"ADMIN"` (case-sensitive, no trimming).
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        match raw {
            "USER" => Ok(Self::User),
            "ADMIN" => Ok(Self::Admin),
            _ => Err(ValidationError::new(
                Self::FIELD,
                "must be \"USER\" or \"ADMIN\"",
            )),
        }
    }

    /// Returns `"USER"` or `"ADMIN"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "USER",
            Self::Admin => "ADMIN",
        }
    }

    /// Whether this is the [`Role::Admin`] role.
    pub fn is_admin(self) -> bool {
        matches!(self, Self::Admin)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // ---- New passwords ----

    #[test]
    fn a_new_password_is_not_common_not_the_login_id_and_has_nothing_hidden() {
        let login = LoginId::parse("alice_92").unwrap();
        let check = |p: &str| Password::parse(p).unwrap().check_new(&login);
        assert!(check("correct horse battery").is_ok());
        for common in [
            "password1",
            "PASSWORD1",
            "12345678",
            "Qwertyuiop",
            "iloveyou",
        ] {
            let err = check(common).unwrap_err();
            assert_eq!(err.field, "password");
            assert!(err.message.contains("common"), "{common}: {}", err.message);
        }
        assert!(check("ALICE_92").unwrap_err().message.contains("login id"));
        assert!(
            check("my-alice_92-pass")
                .unwrap_err()
                .message
                .contains("login id")
        );
        // A right-to-left override, a zero-width space, a control character.
        for hidden in [
            "pass\u{202E}word-xyz",
            "pass\u{200B}word-xyz",
            "pass\u{7}word-xyz",
        ] {
            assert!(
                check(hidden).unwrap_err().message.contains("invisible"),
                "{hidden:?}"
            );
        }
    }

    #[test]
    fn names_refuse_bidirectional_and_zero_width_characters() {
        for name in [
            "Ann\u{202E}eb",
            "\u{2066}Bob",
            "Car\u{200D}ol",
            "\u{FEFF}Dan",
        ] {
            assert!(UserName::parse(name).is_err(), "{name:?}");
        }
        assert!(UserName::parse("Zoë Ørsted").is_ok());
    }

    // ---- LoginId ----

    #[test]
    fn login_id_length_boundaries() {
        assert!(LoginId::parse(&"a".repeat(MIN_LOGIN_ID_CHARS)).is_ok());
        assert!(LoginId::parse(&"a".repeat(MIN_LOGIN_ID_CHARS - 1)).is_err());
        assert!(LoginId::parse(&"a".repeat(MAX_LOGIN_ID_CHARS)).is_ok());
        assert!(LoginId::parse(&"a".repeat(MAX_LOGIN_ID_CHARS + 1)).is_err());
        assert!(LoginId::parse("").is_err());
    }

    #[test]
    fn login_id_allowed_chars_and_case_preserved() {
        let id = LoginId::parse("Ab_9.x-Z").unwrap();
        assert_eq!(id.as_str(), "Ab_9.x-Z");
        assert_ne!(
            LoginId::parse("abcd").unwrap(),
            LoginId::parse("ABCD").unwrap()
        );
    }

    #[test]
    fn login_id_rejects_bad_chars_and_spaces() {
        for bad in [
            "ab cd", " abcd", "abcd ", "abc@d", "abc/d", "abc\td", "abcd\n",
        ] {
            let err = LoginId::parse(bad).unwrap_err();
            assert_eq!(err.field, "loginId", "{bad:?}");
            assert_eq!(
                err.message,
                "must be 4 to 64 characters of A-Z, a-z, 0-9, '_', '.', '-'"
            );
        }
    }

    #[test]
    fn login_id_rejects_non_ascii() {
        // 4 chars but non-ASCII letters.
        assert!(LoginId::parse("ñame").is_err());
        assert!(LoginId::parse("ユーザー").is_err());
        // Fullwidth digits are not ASCII digits.
        assert!(LoginId::parse("１２３４").is_err());
    }

    // ---- Password ----

    #[test]
    fn password_length_boundaries() {
        assert!(Password::parse(&"p".repeat(MIN_PASSWORD_CHARS)).is_ok());
        assert!(Password::parse(&"p".repeat(MIN_PASSWORD_CHARS - 1)).is_err());
        assert!(Password::parse(&"p".repeat(MAX_PASSWORD_CHARS)).is_ok());
        assert!(Password::parse(&"p".repeat(MAX_PASSWORD_CHARS + 1)).is_err());
        let err = Password::parse("").unwrap_err();
        assert_eq!(err.field, "password");
        assert_eq!(err.message, "must be 8 to 128 characters");
    }

    #[test]
    fn password_counts_chars_not_bytes() {
        // 8 chars, 24 bytes: accepted.
        assert!(Password::parse(&"日".repeat(8)).is_ok());
        // 7 chars, 21 bytes: rejected even though bytes >= 8.
        assert!(Password::parse(&"日".repeat(7)).is_err());
        // 128 chars, 512 bytes: accepted.
        assert!(Password::parse(&"😀".repeat(128)).is_ok());
        assert!(Password::parse(&"😀".repeat(129)).is_err());
    }

    #[test]
    fn password_rejects_only_whitespace() {
        let err = Password::parse(&" ".repeat(10)).unwrap_err();
        assert_eq!(err.field, "password");
        assert_eq!(err.message, "must not consist only of whitespace");
        assert!(Password::parse(" \t\n \u{3000}   ").is_err());
        // Whitespace inside or around is fine as long as not all of it.
        assert_eq!(
            Password::parse("  pass word  ").unwrap().expose(),
            "  pass word  "
        );
    }

    #[test]
    fn password_debug_is_redacted() {
        let p = Password::parse("hunter2hunter2").unwrap();
        let dbg = format!("{p:?}");
        assert_eq!(dbg, "Password(***)");
        assert!(!dbg.contains("hunter2"));
    }

    // ---- UserName ----

    #[test]
    fn user_name_trims_and_length_boundaries() {
        assert_eq!(UserName::parse("  Alice \t").unwrap().as_str(), "Alice");
        assert!(UserName::parse("a").is_ok());
        assert!(UserName::parse("").is_err());
        assert!(UserName::parse("   ").is_err());
        assert!(UserName::parse(&"a".repeat(MAX_USER_NAME_CHARS)).is_ok());
        assert!(UserName::parse(&"a".repeat(MAX_USER_NAME_CHARS + 1)).is_err());
        // Surrounding whitespace does not count towards the limit.
        assert!(UserName::parse(&format!("  {}  ", "a".repeat(MAX_USER_NAME_CHARS))).is_ok());
        let err = UserName::parse("").unwrap_err();
        assert_eq!(err.field, "name");
        assert_eq!(
            err.message,
            "must be 1 to 64 characters after trimming whitespace"
        );
    }

    #[test]
    fn user_name_counts_chars_not_bytes() {
        assert!(UserName::parse(&"名".repeat(MAX_USER_NAME_CHARS)).is_ok());
        assert!(UserName::parse(&"名".repeat(MAX_USER_NAME_CHARS + 1)).is_err());
        assert!(UserName::parse("é").is_ok());
    }

    #[test]
    fn user_name_rejects_control_chars() {
        for bad in ["Al\nice", "Al\u{0}ice", "Al\u{7f}ice", "Al\u{1b}ice"] {
            let err = UserName::parse(bad).unwrap_err();
            assert_eq!(err.field, "name");
            assert_eq!(
                err.message,
                "must not contain control characters or invisible formatting characters"
            );
        }
        // Inner spaces are fine.
        assert_eq!(
            UserName::parse("Ada Lovelace").unwrap().as_str(),
            "Ada Lovelace"
        );
    }

    // ---- Role ----

    #[test]
    fn role_parse_and_as_str() {
        assert_eq!(Role::parse("USER").unwrap(), Role::User);
        assert_eq!(Role::parse("ADMIN").unwrap(), Role::Admin);
        assert_eq!(Role::User.as_str(), "USER");
        assert_eq!(Role::Admin.as_str(), "ADMIN");
        assert_eq!(Role::Admin.to_string(), "ADMIN");
        assert!(Role::Admin.is_admin());
        assert!(!Role::User.is_admin());
    }

    #[test]
    fn role_rejects_other_spellings() {
        for bad in ["user", "Admin", " USER", "USER ", "", "ROOT"] {
            let err = Role::parse(bad).unwrap_err();
            assert_eq!(err.field, "role");
        }
    }
}
