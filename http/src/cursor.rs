//! Signed list cursors: a cursor names where the next page starts (`order:1234`) and carries an
//! HMAC-SHA256 tag, so a client can only send back a cursor this deployment issued. A forged or
//! edited cursor is a 400, not a query the server never meant to run.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use surge_domain::ValidationError;

/// Bytes of the tag kept in a cursor (128 bits: forging one is a 2^-128 guess).
const TAG_BYTES: usize = 16;

/// Signs and opens cursors with a key derived from the token-signing secret (every node of a
/// deployment has the same secret, so a cursor from one node opens on another).
#[derive(Clone)]
pub struct Cursors {
    key: [u8; 32],
}

impl std::fmt::Debug for Cursors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cursors").finish_non_exhaustive()
    }
}

fn refused() -> ValidationError {
    ValidationError::new("cursor", "is not a cursor this server issued")
}

impl Cursors {
    /// Derives the cursor key from `secret` (a separate key: a cursor tag never doubles as a
    /// token signature).
    pub fn new(secret: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"surge list cursor v1\0");
        hasher.update(secret);
        Self {
            key: hasher.finalize().into(),
        }
    }

    fn tag(&self, payload: &[u8]) -> [u8; 32] {
        // A key of any length is accepted by HMAC; this one is always 32 bytes.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(payload);
        mac.finalize().into_bytes().into()
    }

    /// A cursor for the page after `id` in a list of `kind`.
    pub fn sign(&self, kind: &str, id: i64) -> String {
        let payload = format!("{kind}:{id}");
        let tag = self.tag(payload.as_bytes());
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(&tag[..TAG_BYTES])
        )
    }

    /// The id a cursor of `kind` names, if this server issued it.
    pub fn open(&self, kind: &str, cursor: &str) -> Result<i64, ValidationError> {
        let (payload, tag) = cursor.split_once('.').ok_or_else(refused)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| refused())?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| refused())?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(&payload);
        // Constant-time comparison of the truncated tag.
        mac.verify_truncated_left(&tag).map_err(|_| refused())?;
        let text = String::from_utf8(payload).map_err(|_| refused())?;
        text.strip_prefix(kind)
            .and_then(|rest| rest.strip_prefix(':'))
            .and_then(|n| n.parse::<i64>().ok())
            .filter(|id| *id > 0)
            .ok_or_else(refused)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_cursor_opens_where_it_was_signed_and_nowhere_else() {
        let cursors = Cursors::new(b"a secret of at least thirty-two bytes!!");
        let cursor = cursors.sign("order", 1234);
        assert_eq!(cursors.open("order", &cursor).unwrap(), 1234);
        // Another kind, another deployment's key, an edited id, a bare id: refused.
        assert!(cursors.open("item", &cursor).is_err());
        let other = Cursors::new(b"another secret of at least thirty-two bytes");
        assert!(other.open("order", &cursor).is_err());
        let (_, tag) = cursor.split_once('.').unwrap();
        let edited = format!("{}.{tag}", URL_SAFE_NO_PAD.encode("order:1"));
        assert!(cursors.open("order", &edited).is_err());
        assert!(
            cursors
                .open("order", &URL_SAFE_NO_PAD.encode("order:1"))
                .is_err()
        );
        assert!(cursors.open("order", "").is_err());
        assert!(cursors.open("order", "..").is_err());
    }
}
