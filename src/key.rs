//! The organization API key.
//!
//! An [`ApiKey`] is exactly [`ApiKey::LEN`] characters of `A-Z a-z 0-9`. It is
//! parsed in one place ([`ApiKey::parse`]), generated from the operating system
//! seeded CSPRNG that `rand::rng()` provides, compared in constant time, and kept
//! out of every log: its `Debug` and `Display` print a redaction. The only ways to
//! read it are [`ApiKey::expose`] (for the admin API's key page and the store) and
//! the deliberately lossy [`ApiKey::masked`] and [`ApiKey::fingerprint`].

use std::fmt;

use rand::distr::{Alphanumeric, Distribution};
use subtle::ConstantTimeEq;

/// An organization's API key. Twelve ASCII alphanumerics, stored inline.
#[derive(Clone, Copy)]
pub struct ApiKey([u8; ApiKey::LEN]);

/// Which bytes may appear in a key: `A-Z a-z 0-9`.
static ALPHANUMERIC: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    table
};

/// Why a string is not an API key. Says nothing about the string itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an API key is exactly 12 characters of A-Z, a-z and 0-9")]
pub struct KeyFormatError;

impl ApiKey {
    /// The length of every key, in bytes (and characters).
    pub const LEN: usize = 12;

    /// Parses a key from the bytes of a header value or a JSON string.
    ///
    /// The format is not secret, so this may return early; the comparison with the
    /// org's key, which is, happens in [`ApiKey::ct_eq`].
    pub fn parse(bytes: &[u8]) -> Result<ApiKey, KeyFormatError> {
        let arr: [u8; ApiKey::LEN] = bytes.try_into().map_err(|_| KeyFormatError)?;
        // One table load per byte, folded without a branch: the gate parses
        // every request's key (BENCHMARKS.md, "Issue 17, item 2").
        if arr
            .iter()
            .fold(true, |ok, &b| ok & ALPHANUMERIC[usize::from(b)])
        {
            Ok(ApiKey(arr))
        } else {
            Err(KeyFormatError)
        }
    }

    /// A well-formed key that no one is given: what a record holds in a key's
    /// place when its org has none, beside a flag that says so.
    pub(crate) const fn placeholder() -> ApiKey {
        ApiKey(*b"000000000000")
    }

    /// A fresh random key from the thread-local CSPRNG (ChaCha, seeded and
    /// periodically reseeded from the operating system).
    pub fn generate() -> ApiKey {
        let mut rng = rand::rng();
        let mut out = [0u8; ApiKey::LEN];
        for (slot, c) in out.iter_mut().zip(Alphanumeric.sample_iter(&mut rng)) {
            *slot = c;
        }
        ApiKey(out)
    }

    /// A fresh random key that is guaranteed to differ from `old`.
    ///
    /// A collision has probability 62^-12 (about 3e-22), but "the regenerated key
    /// works and the old one does not" must hold without exception.
    pub fn generate_other_than(old: &ApiKey) -> ApiKey {
        loop {
            let key = ApiKey::generate();
            if !key.ct_eq(old) {
                return key;
            }
        }
    }

    /// Constant-time equality: the time taken does not depend on where the keys
    /// differ, so a client cannot discover a key one character at a time.
    pub fn ct_eq(&self, other: &ApiKey) -> bool {
        // Two words XORed and ORed, then one constant-time compare with zero:
        // no branch on the keys' bytes, and a tenth of the instructions of
        // comparing the twelve bytes one by one.
        let (a, b) = (self.words(), other.words());
        ((a.0 ^ b.0) | u64::from(a.1 ^ b.1)).ct_eq(&0).into()
    }

    /// The key's 12 bytes as one 8-byte and one 4-byte word: also how an
    /// org's record holds it ([`Org`](crate::org::Org)).
    pub(crate) fn words(&self) -> (u64, u32) {
        let [a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, b2, b3] = self.0;
        (
            u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            u32::from_le_bytes([b0, b1, b2, b3]),
        )
    }

    /// The key whose [`words`](ApiKey::words) these are. Only for words
    /// taken from a key: the bytes are not checked again (in debug builds
    /// they are).
    pub(crate) fn from_words(a: u64, b: u32) -> ApiKey {
        let (a, b) = (a.to_le_bytes(), b.to_le_bytes());
        let bytes = [
            a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], b[0], b[1], b[2], b[3],
        ];
        debug_assert!(ApiKey::parse(&bytes).is_ok(), "words of a key");
        ApiKey(bytes)
    }

    /// The key itself. Call only to show it to someone entitled to see it or to
    /// persist it; never to log it.
    pub fn expose(&self) -> &str {
        // Construction guarantees ASCII alphanumerics, which are valid UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The key with all but its last four characters replaced by `*`, as viewers
    /// see it.
    pub fn masked(&self) -> String {
        let mut s = String::with_capacity(ApiKey::LEN);
        s.extend(std::iter::repeat_n('*', ApiKey::LEN - 4));
        s.push_str(self.fingerprint());
        s
    }

    /// The last four characters: enough for an audit reader to tell keys apart,
    /// far too little to use one (62^8 possibilities remain).
    pub fn fingerprint(&self) -> &str {
        &self.expose()[ApiKey::LEN - 4..]
    }
}

impl PartialEq for ApiKey {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other)
    }
}

impl Eq for ApiKey {}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl serde::Serialize for ApiKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.expose())
    }
}

impl<'de> serde::Deserialize<'de> for ApiKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::de::parse_str(d, |s| ApiKey::parse(s.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_exactly_twelve_alphanumerics() {
        let key = ApiKey::parse(b"Ab3dEf6hIj9k").unwrap();
        assert_eq!(key.expose(), "Ab3dEf6hIj9k");
    }

    #[test]
    fn parse_refuses_eleven_and_thirteen_characters() {
        assert_eq!(ApiKey::parse(b"Ab3dEf6hIj9"), Err(KeyFormatError));
        assert_eq!(ApiKey::parse(b"Ab3dEf6hIj9kL"), Err(KeyFormatError));
        assert_eq!(ApiKey::parse(b""), Err(KeyFormatError));
    }

    #[test]
    fn parse_refuses_punctuation_controls_and_non_ascii() {
        for bad in [
            &b"Ab3dEf6hIj9-"[..],
            b"Ab3dEf6hIj9_",
            b"Ab3dEf6hIj9+",
            b"Ab3dEf6hIj9/",
            b"Ab3dEf6hIj9=",
            b"Ab3dEf6hIj9 ",
            b"Ab3dEf6hIj9\0",
            b"Ab3dEf6hIj9\x7f",
            "Ab3dEf6hIj\u{ff41}".as_bytes(), // fullwidth 'a': 3 bytes
            "Ab3dEf6hIj9\u{e9}".as_bytes(),
        ] {
            assert_eq!(ApiKey::parse(bad), Err(KeyFormatError), "{bad:?}");
        }
    }

    #[test]
    fn parse_accepts_every_alphanumeric_and_refuses_every_other_byte() {
        for b in 0..=255u8 {
            let mut key = *b"Ab3dEf6hIj9k";
            for at in [0, 7, 8, 11] {
                key[at] = b;
                assert_eq!(
                    ApiKey::parse(&key).is_ok(),
                    b.is_ascii_alphanumeric(),
                    "byte {b} at {at}"
                );
                key = *b"Ab3dEf6hIj9k";
            }
        }
    }

    #[test]
    fn keys_differing_in_any_one_byte_are_different_keys() {
        let a = ApiKey::parse(b"Ab3dEf6hIj9k").unwrap();
        assert!(a.ct_eq(&a));
        for at in 0..ApiKey::LEN {
            let mut other = *b"Ab3dEf6hIj9k";
            other[at] = if other[at] == b'z' { b'y' } else { b'z' };
            let b = ApiKey::parse(&other).unwrap();
            assert!(!a.ct_eq(&b), "differs at {at}");
            assert!(!b.ct_eq(&a), "differs at {at}");
        }
    }

    #[test]
    fn keys_differing_only_in_case_are_different_keys() {
        let a = ApiKey::parse(b"Ab3dEf6hIj9k").unwrap();
        let b = ApiKey::parse(b"ab3dEf6hIj9k").unwrap();
        assert!(!a.ct_eq(&b));
        assert_ne!(a, b);
    }

    #[test]
    fn generated_keys_are_well_formed_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let key = ApiKey::generate();
            assert!(ApiKey::parse(key.expose().as_bytes()).is_ok());
            assert!(seen.insert(key.expose().to_owned()), "repeat key");
        }
    }

    #[test]
    fn generated_keys_use_the_whole_alphabet() {
        let mut upper = false;
        let mut lower = false;
        let mut digit = false;
        for _ in 0..200 {
            for b in ApiKey::generate().expose().bytes() {
                upper |= b.is_ascii_uppercase();
                lower |= b.is_ascii_lowercase();
                digit |= b.is_ascii_digit();
            }
        }
        assert!(upper && lower && digit);
    }

    #[test]
    fn a_regenerated_key_never_equals_the_key_it_replaces() {
        let old = ApiKey::generate();
        for _ in 0..1000 {
            assert!(!ApiKey::generate_other_than(&old).ct_eq(&old));
        }
    }

    #[test]
    fn debug_and_display_never_print_the_key() {
        let key = ApiKey::parse(b"Ab3dEf6hIj9k").unwrap();
        let shown = format!("{key:?} {key} {:?}", Some(key));
        assert!(!shown.contains("Ab3dEf6hIj9k"), "{shown}");
        assert!(!shown.contains("Ij9k"), "{shown}");
    }

    #[test]
    fn masked_shows_only_the_last_four_characters() {
        let key = ApiKey::parse(b"Ab3dEf6hIj9k").unwrap();
        assert_eq!(key.masked(), "********Ij9k");
        assert_eq!(key.fingerprint(), "Ij9k");
    }

    #[test]
    fn serde_round_trips_and_validates() {
        let key = ApiKey::parse(b"Ab3dEf6hIj9k").unwrap();
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, "\"Ab3dEf6hIj9k\"");
        let back: ApiKey = serde_json::from_str(&json).unwrap();
        assert_eq!(back, key);
        assert!(serde_json::from_str::<ApiKey>("\"short\"").is_err());
    }
}
