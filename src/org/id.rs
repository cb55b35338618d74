//! Organization ids.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};

use bytes::{Bytes, BytesMut};
use http::HeaderValue;

/// Which bytes may appear in an org id: `a-z 0-9 -` (and not first: `-`).
static ID_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-';
        b += 1;
    }
    table
};

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
                *first != b'-'
                    && bytes
                        .iter()
                        .fold(true, |ok, &b| ok & ID_BYTE[usize::from(b)])
            }
            _ => false,
        }
    }

    /// The org id that `path` begins with after its `/`, and how many bytes
    /// of the path (the `/` and the id) name it: one pass over the segment,
    /// checked as [`is_valid`](OrgId::is_valid) checks it. What the gate does
    /// on every request in path mode.
    pub(crate) fn leading_segment(path: &[u8]) -> Option<&[u8]> {
        let rest = path.strip_prefix(b"/")?;
        let len = rest
            .iter()
            .take(Self::MAX_LEN + 1)
            .position(|&b| !ID_BYTE[usize::from(b)])
            .unwrap_or(rest.len().min(Self::MAX_LEN + 1));
        let id = &rest[..len];
        let ends_segment = rest.get(len).is_none_or(|&b| b == b'/');
        (ends_segment && Self::is_valid(id)).then_some(id)
    }

    /// Parses an org id.
    pub fn parse(s: &str) -> Result<OrgId, OrgIdError> {
        if !Self::is_valid(s.as_bytes()) {
            return Err(OrgIdError);
        }
        // Checked above: a-z, 0-9 and '-' are all valid header value bytes.
        HeaderValue::from_str(s).map(OrgId).map_err(|_| OrgIdError)
    }

    /// Parses an org id onto `pages`: [`OrgId::parse`] without an allocation
    /// of its own (a page is allocated once per 4 KiB of ids). What the redb
    /// backend does for every org it loads at start-up, where `parse`'s
    /// allocation and its free on the store's thread were about 5% of the
    /// instructions (BENCHMARKS.md, "Item 4").
    pub(crate) fn parse_onto(s: &str, pages: &mut IdPages) -> Result<OrgId, OrgIdError> {
        if !Self::is_valid(s.as_bytes()) {
            return Err(OrgIdError);
        }
        Ok(OrgId::from_kept(pages.keep_bytes(s.as_bytes())))
    }

    /// The id over `bytes` that [`IdPages::keep`] returned: a header value
    /// sharing the page, built without allocating. Checks the bytes again (a
    /// vectorized pass over at most 64 bytes), as `http` offers no safe way
    /// around it.
    pub(crate) fn from_kept(bytes: Bytes) -> OrgId {
        // `IdPages::keep` only ever returns the bytes of a valid id, which are
        // visible ASCII: the header value check cannot fail on them.
        OrgId(HeaderValue::from_maybe_shared(bytes).expect("kept bytes are a valid org id"))
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

    /// The id as the header value it is, without a clone (a clone of an id
    /// kept on the store's pages is a reference count on a page that many
    /// orgs share).
    pub(crate) fn into_header_value(self) -> HeaderValue {
        self.0
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
        crate::de::parse_str(d, OrgId::parse)
    }
}

/// Where a store keeps its orgs' ids: the bytes of many ids packed into
/// shared, reference-counted pages, so that an [`Org`](super::Org) holds its id
/// as a 32-byte [`Bytes`] slice of a page, and turns it into the `x-org-id`
/// header value of each forwarded request with a reference count increment,
/// no allocation.
///
/// A page is freed when the last id on it is dropped: the ids belong to the
/// store that made them, and a process that opens stores again and again
/// (tests, fuzzing) does not accumulate them. (They used to be interned for
/// the life of the process, which made every open leak its ids.)
///
/// Measured with `tests/store_memory.rs`'s counting allocator: 50 opens of a
/// store of 1,000 orgs leave the heap as it was (interned, they grew it by
/// 786,496 bytes), and an open store asks for 246 bytes per org. An id costs
/// its length on a page plus, in [`Org`](super::Org), 16 bytes more than the
/// interned two words did: `keygate serve` (release build) over 100,000 orgs
/// had 30.6 MB resident with interned ids and 32.2 MB with kept ones, two
/// starts each. One allocation per id instead (an exactly sized
/// buffer, plus the shared count `Bytes` allocates on its first clone) would
/// add two more heap chunks per org, 32 bytes each with glibc. Pages of 4 KiB
/// keep the orgs that share one reference count to a few hundred: cores
/// forwarding for orgs on one page touch one count.
#[derive(Debug, Default)]
pub(crate) struct IdPages {
    /// The rest of the current page.
    free: BytesMut,
}

impl IdPages {
    /// The size of a page.
    const PAGE: usize = 4096;

    /// Copies `id`'s bytes onto the current page (a new one when it is full)
    /// and returns them, sharing the page.
    pub(crate) fn keep(&mut self, id: &OrgId) -> Bytes {
        self.keep_bytes(id.as_bytes())
    }

    /// [`keep`](IdPages::keep) for the bytes of an id already checked valid.
    fn keep_bytes(&mut self, bytes: &[u8]) -> Bytes {
        if self.free.capacity() - self.free.len() < bytes.len() {
            self.free = BytesMut::with_capacity(Self::PAGE.max(bytes.len()));
        }
        // Within the capacity checked above: no reallocation.
        self.free.extend_from_slice(bytes);
        self.free.split_to(bytes.len()).freeze()
    }
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
    fn every_byte_is_an_id_byte_exactly_when_the_rule_says_so() {
        for b in 0..=255u8 {
            let rule = b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
            assert_eq!(OrgId::is_valid(&[b'a', b]), rule, "byte {b}");
            assert_eq!(OrgId::is_valid(&[b]), rule && b != b'-', "byte {b} first");
        }
    }

    /// The one-pass scan against its definition: the path's first segment,
    /// whole, if it is a valid id.
    #[test]
    fn the_leading_segment_is_the_first_path_segment_when_it_is_a_valid_id() {
        let by_definition = |path: &str| -> Option<String> {
            let rest = path.strip_prefix('/')?;
            let id = rest.split('/').next().unwrap_or(rest);
            OrgId::is_valid(id.as_bytes()).then(|| id.to_owned())
        };
        let mut paths = vec![
            "".to_owned(),
            "/".into(),
            "//".into(),
            "//v1".into(),
            "acme/v1".into(),
            "/acme".into(),
            "/acme/".into(),
            "/acme/v1/users".into(),
            "/Acme/v1".into(),
            "/acme%2f/v1".into(),
            "/-acme/v1".into(),
            "/acme-/v1".into(),
            "/ac.me/v1".into(),
            "*".into(),
        ];
        for n in [63, 64, 65, 66, 130] {
            paths.push(format!("/{}", "a".repeat(n)));
            paths.push(format!("/{}/v1", "a".repeat(n)));
            paths.push(format!("/{}A/v1", "a".repeat(n)));
        }
        for b in 0..=127u8 {
            paths.push(format!("/ac{}me/v1", b as char));
        }
        for path in &paths {
            let got = OrgId::leading_segment(path.as_bytes())
                .map(|id| String::from_utf8(id.to_vec()).unwrap());
            assert_eq!(got, by_definition(path), "{path:?}");
        }
    }

    #[test]
    fn an_id_parsed_onto_a_page_equals_the_parsed_one_and_shares_the_page() {
        let mut pages = IdPages::default();
        let a = OrgId::parse_onto("acme-42", &mut pages).unwrap();
        let b = OrgId::parse_onto("globex", &mut pages).unwrap();
        assert_eq!(a, OrgId::parse("acme-42").unwrap());
        assert_eq!(b.header_value(), "globex");
        let (a, b) = (a.as_bytes(), b.as_bytes());
        assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr());
        assert_eq!(OrgId::parse_onto("Acme", &mut pages), Err(OrgIdError));
    }

    #[test]
    fn a_kept_id_equals_the_original() {
        let id = OrgId::parse("acme-42").unwrap();
        let kept = OrgId::from_kept(IdPages::default().keep(&id));
        assert_eq!(kept, id);
        assert_eq!(kept.as_str(), "acme-42");
        assert_eq!(kept.header_value(), "acme-42");
    }

    #[test]
    fn kept_ids_share_a_page_that_the_last_of_them_frees() {
        let mut pages = IdPages::default();
        let a = pages.keep(&OrgId::parse("acme").unwrap());
        let b = pages.keep(&OrgId::parse("globex").unwrap());
        // Neighbours on one page, one allocation.
        assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr());
        // A request's header value shares the page too.
        let header = OrgId::from_kept(b.clone());
        assert_eq!(header.header_value().as_bytes().as_ptr(), b.as_ptr());
        drop(header);
        drop(pages);
        drop(a);
        // `b` is now the page's only owner: dropping it frees the page.
        assert!(b.is_unique());
    }

    #[test]
    fn an_id_that_does_not_fit_what_is_left_of_a_page_starts_a_new_one() {
        let mut pages = IdPages::default();
        let long = OrgId::parse(&"a".repeat(64)).unwrap();
        let mut prev = pages.keep(&long);
        for _ in 1..IdPages::PAGE / 64 {
            let next = pages.keep(&long);
            assert_eq!(next.as_ptr(), prev.as_ptr().wrapping_add(64));
            prev = next;
        }
        let next = pages.keep(&long);
        assert_ne!(next.as_ptr(), prev.as_ptr().wrapping_add(64));
        assert_eq!(next, prev);
    }

    #[test]
    fn hashes_like_its_bytes_so_maps_find_it_by_bytes() {
        let mut set = std::collections::HashSet::new();
        set.insert(OrgId::parse("acme").unwrap());
        assert!(set.contains(&b"acme"[..]));
        assert!(!set.contains(&b"acm"[..]));
    }
}
