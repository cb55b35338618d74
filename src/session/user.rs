//! API users: the usernames and passwords a session login presents, per org.
//!
//! keygate keeps a password only as an argon2id PHC string, computed with
//! OWASP's parameters (m = 19456 KiB, t = 2, p = 1). Hashing and verifying
//! run on a bounded pool ([`PasswordPool`]): at most one per core at a time,
//! on tokio's blocking threads, so that logins cannot starve the request path.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::org::OrgId;

/// The fewest characters a password has (contract section 8: `WEAK_PASSWORD` under 12).
pub const MIN_PASSWORD_CHARS: usize = 12;

/// The most bytes of a password keygate hashes: a longer one is refused, so a
/// login cannot make argon2 read megabytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// OWASP's argon2id memory cost, in KiB.
pub const ARGON2_M_KIB: u32 = 19_456;
/// OWASP's argon2id time cost (passes).
pub const ARGON2_T: u32 = 2;
/// OWASP's argon2id parallelism.
pub const ARGON2_P: u32 = 1;

/// One org's API user, as persisted. Never carries the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiUser {
    /// The org the user logs in to.
    pub org: OrgId,
    /// The username, unique within the org.
    pub username: String,
    /// The password's argon2id PHC string.
    pub password_digest: String,
    /// When the user was created.
    pub created_at: Timestamp,
}

impl std::fmt::Debug for ApiUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The digest is not the password, but there is no reason to print it.
        f.debug_struct("ApiUser")
            .field("org", &self.org)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Whether `name` is a username keygate accepts: 1 to 128 visible ASCII
/// characters (an email address is the vendor's usual form).
pub fn valid_username(name: &str) -> bool {
    (1..=128).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_graphic())
}

/// Whether `password` is strong enough to keep: at least
/// [`MIN_PASSWORD_CHARS`] characters and at most [`MAX_PASSWORD_BYTES`] bytes.
pub fn acceptable_password(password: &str) -> bool {
    password.chars().count() >= MIN_PASSWORD_CHARS && password.len() <= MAX_PASSWORD_BYTES
}

fn argon2() -> Argon2<'static> {
    // The constants are within argon2's bounds, checked by a test below.
    let params = Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The argon2id PHC string of `password` with a fresh random salt.
/// Blocking and expensive: call it through a [`PasswordPool`].
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt)?;
    Ok(argon2()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Whether `password` matches the PHC string `digest` (false for a digest
/// that does not parse). Blocking and expensive: call it through a [`PasswordPool`].
pub fn verify_password(password: &str, digest: &str) -> bool {
    match PasswordHash::new(digest) {
        Ok(parsed) => argon2()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Why `digest` is not a password digest keygate can verify against, if it
/// is not: it must be a PHC string of argon2id (any version and costs argon2
/// accepts: a digest made under older parameters still verifies) with a
/// salt and an output. What `keygate import` and `keygate check` ask of an
/// API user's record; the reason never quotes the digest.
pub fn digest_problem(digest: &str) -> Option<&'static str> {
    let Ok(parsed) = PasswordHash::new(digest) else {
        return Some("is not a PHC string");
    };
    if parsed.algorithm != argon2::ARGON2ID_IDENT {
        return Some("is not an argon2id digest");
    }
    if Params::try_from(&parsed).is_err()
        || parsed.version.is_none_or(|v| Version::try_from(v).is_err())
    {
        return Some("has argon2 parameters keygate cannot use");
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Some("has no salt or no output");
    }
    None
}

/// A digest of a password no one knows, verified against when the username
/// is unknown, so that an unknown user costs the same argon2 work as a wrong
/// password and the time does not tell which usernames exist.
fn decoy() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        hash_password(&hex::encode(secret)).unwrap_or_default()
    })
}

/// Runs argon2 work on tokio's blocking threads, at most `permits` at a time
/// (the number of cores by default): logins wait for a permit rather than
/// occupy every core.
#[derive(Debug, Clone)]
pub struct PasswordPool {
    permits: Arc<tokio::sync::Semaphore>,
}

impl Default for PasswordPool {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        PasswordPool::new(cores)
    }
}

impl PasswordPool {
    /// A pool running at most `permits` (at least 1) argon2 computations at once.
    pub fn new(permits: usize) -> PasswordPool {
        PasswordPool {
            permits: Arc::new(tokio::sync::Semaphore::new(permits.max(1))),
        }
    }

    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        // The semaphore is never closed.
        let _permit = self.permits.acquire().await.ok()?;
        tokio::task::spawn_blocking(f).await.ok()
    }

    /// The argon2id PHC string of `password`; `None` if hashing failed.
    pub async fn hash(&self, password: String) -> Option<String> {
        self.run(move || hash_password(&password).ok())
            .await
            .flatten()
    }

    /// Whether `password` matches `digest`; with `None` (no such user) it
    /// verifies against a decoy and answers false.
    pub async fn verify(&self, password: String, digest: Option<String>) -> bool {
        self.run(move || match digest {
            Some(d) => verify_password(&password, &d),
            None => {
                let _ = verify_password(&password, decoy());
                false
            }
        })
        .await
        .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owasp_parameters_are_valid_argon2_parameters() {
        let p = Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, None).unwrap();
        assert_eq!((p.m_cost(), p.t_cost(), p.p_cost()), (19_456, 2, 1));
    }

    #[test]
    fn a_password_verifies_against_its_argon2id_digest_and_nothing_else_does() {
        let d = hash_password("correct horse battery").unwrap();
        assert!(d.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{d}");
        assert!(!d.contains("correct horse"));
        assert!(verify_password("correct horse battery", &d));
        assert!(!verify_password("correct horse batterz", &d));
        assert!(!verify_password(
            "correct horse battery",
            "not a phc string"
        ));
        assert_ne!(d, hash_password("correct horse battery").unwrap(), "salted");
    }

    #[test]
    fn only_a_whole_argon2id_phc_string_is_a_digest_keygate_can_verify() {
        let d = hash_password("correct horse battery").unwrap();
        assert_eq!(digest_problem(&d), None);
        // An older cost is still a digest keygate verifies.
        let old = d.replace("m=19456,t=2", "m=4096,t=3");
        assert_eq!(digest_problem(&old), None);
        assert_eq!(
            digest_problem("hunter2hunter2"),
            Some("is not a PHC string")
        );
        assert_eq!(
            digest_problem(&d.replace("$argon2id$", "$argon2i$")),
            Some("is not an argon2id digest")
        );
        assert_eq!(
            digest_problem(&d.replace("m=19456", "m=1")),
            Some("has argon2 parameters keygate cannot use")
        );
        let without_output = d.rsplit_once('$').unwrap().0;
        assert_eq!(
            digest_problem(without_output),
            Some("has no salt or no output")
        );
    }

    #[test]
    fn passwords_under_twelve_characters_are_weak() {
        assert!(!acceptable_password("elevenchars"));
        assert!(acceptable_password("twelve chars"));
        assert!(acceptable_password("ééééééééééé!"), "characters, not bytes");
        assert!(!acceptable_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)));
    }

    #[test]
    fn usernames_are_visible_ascii() {
        assert!(valid_username("ops@acme.example"));
        assert!(!valid_username(""));
        assert!(!valid_username("a b"));
        assert!(!valid_username(&"a".repeat(129)));
    }

    #[tokio::test]
    async fn the_pool_verifies_and_an_unknown_user_is_false() {
        let pool = PasswordPool::new(1);
        let d = pool.hash("a long enough password".into()).await.unwrap();
        assert!(
            pool.verify("a long enough password".into(), Some(d.clone()))
                .await
        );
        assert!(!pool.verify("a long enough passwore".into(), Some(d)).await);
        assert!(!pool.verify("a long enough password".into(), None).await);
    }
}
