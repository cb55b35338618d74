//! Organization ids.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};

use http::HeaderValue;

/// An organization id: 1 to 64 characters of `a-z`, `0-9` and `-`, starting with a
/// letter or a digit.
///
/// It is held as the [`HeaderValue`] that keygate sends upstream as `x-org-id`, so
/// forwarding a request clones a reference-counted buffer instead of building a
/// header from a string on every call.
#[derive(Clone)]
pub struct OrgId(HeaderValue);

/// Why a string is not an org id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an org id is 1 to 64 characters of a-z, 0-9 and '-', starting with a letter or digit")]
pub struct OrgIdError;

impl OrgId {
    /// The longest org id, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Whether `bytes` is a well-formed org id. Allocates nothing; the gate calls
    /// it on every request before looking the org up.
    pub fn is_valid(bytes: &[u8]) -> bool {
        match bytes {
            [first, ..] if bytes.len() <= Self::MAX_LEN => {
                (first.is_ascii_lowercase() || first.is_ascii_digit())
                    && bytes
                        .iter()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            }
            _ => false,
        }
    }

    /// Parses an org id.
    pub fn parse(s: &str) -> Result<OrgId, OrgIdError> {
        if !Self::is_valid(s.as_bytes()) {
            return Err(OrgIdError);
        }
        // Checked above: a-z, 0-9 and '-' are all valid header value bytes.
        HeaderValue::from_str(s).map(OrgId).map_err(|_| OrgIdError)
    }

    /// This id's bytes copied into process-lifetime memory, packed with
    /// others: what an [`Org`](super::Org) keeps, two words instead of the
    /// five of an `OrgId`, so a million orgs hold a million short strings
    /// and no header value each. [`from_interned`](OrgId::from_interned)
    /// turns them back into an id without copying.
    ///
    /// Each call keeps the id's bytes until the process exits; the store calls
    /// it once per org it holds (orgs are never removed), nothing else does.
    pub(crate) fn intern(&self) -> &'static str {
        // The bytes of a valid id are ASCII.
        std::str::from_utf8(intern(self.as_bytes())).unwrap_or_default()
    }

    /// The id whose bytes [`intern`](OrgId::intern) returned. The header value
    /// points at them: cloning it copies a few words and touches no reference
    /// count, so the request path can clone an org's id for every forwarded
    /// request without cache-line traffic between cores.
    pub(crate) fn from_interned(id: &'static str) -> OrgId {
        // `intern` only ever returns the bytes of a valid id, which are visible
        // ASCII: `from_static` checks that again and cannot panic on them.
        OrgId(HeaderValue::from_static(id))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        // Construction admits only ASCII, so this never falls back.
        self.0.to_str().unwrap_or_default()
    }

    /// The id as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The id as a ready-made header value (a cheap, reference-counted clone).
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

impl PartialEq for OrgId {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for OrgId {}

impl PartialOrd for OrgId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrgId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

// Hashes exactly as the `[u8]` it borrows as, so maps keyed by `OrgId` can be
// searched with the bytes of a request path without building an `OrgId`.
impl Hash for OrgId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

impl Borrow<[u8]> for OrgId {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Debug for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for OrgId {
    type Err = OrgIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OrgId::parse(s)
    }
}

impl serde::Serialize for OrgId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for OrgId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        OrgId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Copies `s` into process-lifetime memory, packed into pages, so that a
/// million short ids cost their length and not a heap allocation each.
fn intern(s: &[u8]) -> &'static [u8] {
    use std::sync::Mutex;
    const PAGE: usize = 64 * 1024;
    static FREE: Mutex<&'static mut [u8]> = Mutex::new(&mut []);
    // Nothing panics while the lock is held (the page is sized first), so a
    // poisoned lock still holds a whole page.
    let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
    if free.len() < s.len() {
        *free = Box::leak(vec![0u8; PAGE.max(s.len())].into_boxed_slice());
    }
    let (head, tail) = std::mem::take(&mut *free).split_at_mut(s.len());
    head.copy_from_slice(s);
    *free = tail;
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_lowercase_digits_and_inner_dashes() {
        for ok in ["acme", "a", "0", "acme-2", "9lives", "a-", &"a".repeat(64)] {
            assert!(OrgId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_uppercase_dots_escapes_and_overlong_ids() {
        for bad in [
            "",
            "Acme",
            "-acme",
            "..",
            "%2e%2e",
            "ac me",
            "acme_",
            "ac/me",
            "é",
            &"a".repeat(65),
        ] {
            assert_eq!(OrgId::parse(bad), Err(OrgIdError), "{bad}");
        }
        assert!(!OrgId::is_valid(b"\xff\xfe"));
    }

    #[test]
    fn an_interned_id_equals_the_original() {
        let id = OrgId::parse("acme-42").unwrap();
        let i = OrgId::from_interned(id.intern());
        assert_eq!(i, id);
        assert_eq!(i.as_str(), "acme-42");
        assert_eq!(i.header_value(), "acme-42");
    }

    #[test]
    fn hashes_like_its_bytes_so_maps_find_it_by_bytes() {
        let mut set = std::collections::HashSet::new();
        set.insert(OrgId::parse("acme").unwrap());
        assert!(set.contains(&b"acme"[..]));
        assert!(!set.contains(&b"acm"[..]));
    }
}
