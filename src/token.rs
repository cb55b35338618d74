//! Admin API tokens: who may call the admin API, for which org, with which role.
//!
//! A token is shown once, when the provider creates it; keygate keeps only its
//! SHA-256 digest. The provider's own token is never stored at all: the config
//! holds its digest.

use std::fmt;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::clock::Timestamp;
use crate::org::OrgId;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads one org's key and audit; adds, edits, regenerates and deletes its key.
    Admin,
    /// Reads one org's key page (key masked) and audit.
    Viewer,
}

impl Role {
    /// Its name, as the admin API and the audit log write it (its serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

/// A token's SHA-256 digest: what keygate stores and compares.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// The digest of a presented token.
    pub fn of(token: &str) -> TokenDigest {
        TokenDigest(Sha256::digest(token.as_bytes()).into())
    }

    /// Parses 64 lowercase hex digits, as the config holds the provider's digest.
    pub fn from_hex(s: &str) -> Option<TokenDigest> {
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(TokenDigest(out))
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &TokenDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A digest is not a secret, but there is no reason to print it either.
        f.write_str("TokenDigest(..)")
    }
}

impl Serialize for TokenDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for TokenDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        TokenDigest::from_hex(&s)
            .ok_or_else(|| serde::de::Error::custom("not a SHA-256 hex digest"))
    }
}

/// A new random token: `kg_` and 43 URL-safe characters (256 bits).
pub fn generate() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut raw = [0u8; 43];
    rand::rng().fill_bytes(&mut raw);
    let mut s = String::with_capacity(46);
    s.push_str("kg_");
    // 6 bits of each byte: 43 * 6 = 258 bits of entropy, uniformly drawn.
    s.extend(raw.iter().map(|b| ALPHABET[usize::from(b & 63)] as char));
    s
}

/// A token name: 1 to 64 characters of `A-Z a-z 0-9 . _ -`, and neither
/// `provider` nor `system`, which name other actors in the audit log.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name != "provider"
        && name != "system"
}

/// One admin or viewer token, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Its unique name, shown as "Last Modified By".
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The one org it may act on.
    pub org: OrgId,
    /// The SHA-256 of the token.
    pub digest: TokenDigest,
    /// When the provider created it.
    pub created_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_roles_name_is_its_serde_name() {
        for role in [Role::Admin, Role::Viewer] {
            assert_eq!(
                serde_json::to_value(role).unwrap(),
                serde_json::Value::from(role.as_str())
            );
        }
    }

    #[test]
    fn generated_tokens_are_long_random_and_url_safe() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(a.len(), 46);
        assert!(a[3..]
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }

    #[test]
    fn digests_round_trip_through_lowercase_hex_only() {
        let d = TokenDigest::of("secret");
        assert_eq!(
            d.to_hex(),
            "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
        );
        assert_eq!(TokenDigest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(TokenDigest::from_hex(&d.to_hex().to_uppercase()), None);
        assert_eq!(TokenDigest::from_hex("abc"), None);
        assert!(d.ct_eq(&TokenDigest::of("secret")));
        assert!(!d.ct_eq(&TokenDigest::of("secreT")));
    }

    #[test]
    fn names_are_restricted_and_cannot_impersonate_other_actors() {
        assert!(valid_name("alice"));
        assert!(valid_name("ci.bot_2-x"));
        for bad in ["", "provider", "system", "a b", "ünï", &"a".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
