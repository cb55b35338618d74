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
/// It is held as a [`HeaderValue`]: the one the gate puts in a forwarded request's
/// extensions is the request's own `x-org-id` value (or a copy of its path's
/// segment), shared with that header by a reference count.
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
        // Every byte of `id` passed the scan: what `is_valid` checks
        // besides is the length and the first byte.
        let valid = (1..=Self::MAX_LEN).contains(&len) && id[0] != b'-';
        debug_assert_eq!(valid, Self::is_valid(id));
        (ends_segment && valid).then_some(id)
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
    fn from_kept(bytes: Bytes) -> OrgId {
        // `IdPages::keep` only ever returns the bytes of a valid id, which are
        // visible ASCII: the header value check cannot fail on them.
        OrgId(HeaderValue::from_maybe_shared(bytes).expect("kept bytes are a valid org id"))
    }

    /// The id a request the gate admitted named, as the header value it
    /// came in (header mode) or the bytes the gate copied out of its path
    /// (path mode): checked well-formed by the gate already.
    pub(crate) fn from_admitted(value: HeaderValue) -> OrgId {
        debug_assert!(Self::is_valid(value.as_bytes()));
        OrgId(value)
    }

    /// A copy of the bytes of an id known to be valid (an id a record
    /// holds): one allocation.
    pub(crate) fn from_held(bytes: &[u8]) -> OrgId {
        debug_assert!(Self::is_valid(bytes));
        OrgId(HeaderValue::from_bytes(bytes).expect("a held id is a valid org id"))
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
        crate::de::parse_str(d, OrgId::parse)
    }
}

/// Pages that a backend's loader parses ids onto: the bytes of many ids
/// packed into shared, reference-counted pages, so that loading a million
/// orgs does not allocate (and then free) a buffer per id. The store copies
/// each id into its org's record ([`HeldId`]) and drops the loaded
/// [`OrgId`]s, so the pages live only as long as the load's batches.
///
/// (Records held their ids on such pages until issue 17's seventh round:
/// a 32-byte `Bytes` handle and the id's bytes elsewhere, one more cache
/// miss per lookup at a million orgs.)
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
    #[cfg(test)]
    fn keep(&mut self, id: &OrgId) -> Bytes {
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

/// Bytes an id of up to this many is held in [`HeldId::head`] whole.
const HEAD: usize = 16;

/// The mark in a long id's [`HeldId::head`], where its 16th byte would be:
/// no id byte, so no id of 16 bytes or fewer has a head equal to a long
/// id's.
const LONG: u8 = 0xff;

/// An org's id as its record holds it: in the record itself, so that a
/// lookup confirms the org it found without a cache miss on a buffer of
/// the id's own.
///
/// An id of up to 16 bytes (most) is `head`, padded with zeros (no id byte
/// is 0, so the padding marks the end). A longer one is `long`, whole and
/// padded the same way, with its first 15 bytes and [`LONG`] in `head`. 24
/// bytes, where a `Bytes` handle on a shared page was 32 and the id's bytes
/// on the page about 10 more.
#[derive(Debug)]
pub(crate) struct HeldId {
    head: [u8; HEAD],
    long: Option<Box<[u8; OrgId::MAX_LEN]>>,
}

impl HeldId {
    /// Holds `id`, a well-formed org id.
    pub(crate) fn new(id: &[u8]) -> HeldId {
        debug_assert!(OrgId::is_valid(id));
        let key = IdKey::new(id);
        let long = (id.len() > HEAD).then(|| {
            let mut long = Box::new([0; OrgId::MAX_LEN]);
            long[..id.len()].copy_from_slice(id);
            long
        });
        HeldId {
            head: key.head,
            long,
        }
    }

    /// The id's bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        let padded: &[u8] = match &self.long {
            Some(long) => &long[..],
            None => &self.head,
        };
        let len = padded.iter().position(|&b| b == 0).unwrap_or(padded.len());
        &padded[..len]
    }

    /// Whether this is the id `key` was made from: one 16-byte compare for
    /// an id of up to 16 bytes, what the request path's lookup does.
    #[inline]
    pub(crate) fn matches(&self, key: &IdKey<'_>) -> bool {
        if self.head != key.head {
            return false;
        }
        if key.bytes.len() <= HEAD {
            // Equal heads of a short id: the same id (a long one's head
            // holds `LONG`, which a short one's never does).
            return true;
        }
        let n = key.bytes.len();
        self.long
            .as_deref()
            .is_some_and(|long| long[..n] == *key.bytes && long.get(n).is_none_or(|&b| b == 0))
    }
}

/// A well-formed id about to be looked up: its bytes, and its head as
/// [`HeldId`] holds it, built from at most four loads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdKey<'a> {
    bytes: &'a [u8],
    head: [u8; HEAD],
}

impl<'a> IdKey<'a> {
    /// The key of `id`, a well-formed org id.
    #[inline]
    pub(crate) fn new(id: &'a [u8]) -> IdKey<'a> {
        IdKey {
            bytes: id,
            head: head_of(id),
        }
    }

    /// The key's hash by `hasher`: of the head alone, two words, for an id
    /// of up to 16 bytes; of the bytes for a longer one.
    #[inline]
    pub(crate) fn hash(&self, hasher: &impl std::hash::BuildHasher) -> u64 {
        if self.bytes.len() <= HEAD {
            hasher.hash_one(u128::from_le_bytes(self.head))
        } else {
            hasher.hash_one(self.bytes)
        }
    }
}

/// `id`'s first 16 bytes padded with zeros, as words: an id of 8 to 16
/// bytes is two overlapping 8-byte loads (the second shifted down past
/// the bytes both hold), of 4 to 7 two 4-byte loads, and only an id of 3
/// or fewer is copied a byte at a time. A longer id's first 15 bytes, and
/// [`LONG`].
#[inline]
fn head_of(id: &[u8]) -> [u8; HEAD] {
    let n = id.len();
    let le8 = |at: usize| u64::from_le_bytes(id[at..at + 8].try_into().expect("8 bytes"));
    let le4 = |at: usize| {
        u64::from(u32::from_le_bytes(
            id[at..at + 4].try_into().expect("4 bytes"),
        ))
    };
    let words = match n {
        8..=HEAD => {
            let high = le8(n - 8).checked_shr(8 * (HEAD - n) as u32).unwrap_or(0);
            [le8(0), high]
        }
        4..=7 => [le4(0) | le4(n - 4) << (8 * (n - 4)), 0],
        0..=3 => [
            id.iter().rev().fold(0, |word, &b| word << 8 | u64::from(b)),
            0,
        ],
        _ => [le8(0), (le8(8) & !(0xff << 56)) | u64::from(LONG) << 56],
    };
    let mut head = [0; HEAD];
    head[..8].copy_from_slice(&words[0].to_le_bytes());
    head[8..].copy_from_slice(&words[1].to_le_bytes());
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

    /// Ids of every length from 1 to 64, and ids that share all but their
    /// last byte, or a prefix, with another: around 16 bytes, where a head
    /// stops holding the whole id.
    fn tricky_ids() -> Vec<String> {
        let mut ids = Vec::new();
        for n in 1..=OrgId::MAX_LEN {
            let id: String = (0..n).map(|i| (b'a' + (i % 26) as u8) as char).collect();
            let mut last = id.clone();
            last.pop();
            last.push('9');
            ids.extend([id, last]);
        }
        for n in [14, 15, 16, 17, 18, 32, 63, 64] {
            ids.push("z".repeat(n));
            ids.push(format!("{}-", "z".repeat(n - 1)));
        }
        ids.push("0".into());
        ids.push("a-b".into());
        ids
    }

    #[test]
    fn a_held_id_gives_back_its_bytes_and_matches_only_its_own_key() {
        let ids = tricky_ids();
        let held: Vec<HeldId> = ids.iter().map(|id| HeldId::new(id.as_bytes())).collect();
        for (id, h) in ids.iter().zip(&held) {
            assert_eq!(h.as_bytes(), id.as_bytes());
            assert_eq!(h.long.is_some(), id.len() > HEAD, "{id}");
        }
        let hasher = foldhash::fast::FixedState::with_seed(7);
        for a in &ids {
            let key = IdKey::new(a.as_bytes());
            for (b, h) in ids.iter().zip(&held) {
                assert_eq!(h.matches(&key), a == b, "{a} against {b}");
                if a == b {
                    let again = IdKey::new(h.as_bytes());
                    assert_eq!(again.hash(&hasher), key.hash(&hasher));
                }
            }
        }
    }

    #[test]
    fn a_head_is_the_id_padded_with_zeros_or_a_long_ids_mark() {
        for id in tricky_ids() {
            let head = head_of(id.as_bytes());
            let mut want = [0; HEAD];
            if id.len() <= HEAD {
                want[..id.len()].copy_from_slice(id.as_bytes());
            } else {
                want[..HEAD - 1].copy_from_slice(&id.as_bytes()[..HEAD - 1]);
                want[HEAD - 1] = LONG;
            }
            assert_eq!(head, want, "{id}");
        }
    }

    #[test]
    fn hashes_like_its_bytes_so_maps_find_it_by_bytes() {
        let mut set = std::collections::HashSet::new();
        set.insert(OrgId::parse("acme").unwrap());
        assert!(set.contains(&b"acme"[..]));
        assert!(!set.contains(&b"acm"[..]));
    }
}
