//! The vendor's key obfuscation: how its clients turn the org's 12-character
//! key and a millisecond timestamp into the `apiKey` of a login.
//!
//! With `n` the last six digits of the timestamp and `r` the six-digit,
//! zero-padded decimal of `n >> 1`, the result is `key[n[0]] .. key[n[5]]`
//! followed by `key[r[0] + 2] .. key[r[5] + 2]`: each digit an index into the
//! key. The server cannot undo it, only compute it from the key it holds and
//! the timestamp the client sent, and compare.

use subtle::ConstantTimeEq;

use crate::key::ApiKey;

/// The obfuscated form of `key` for the login timestamp `timestamp_ms`.
pub fn obfuscate(key: &[u8; ApiKey::LEN], timestamp_ms: u64) -> [u8; ApiKey::LEN] {
    let n = timestamp_ms % 1_000_000;
    let r = n >> 1;
    let mut out = [0u8; ApiKey::LEN];
    for i in 0..6 {
        // The i-th of six decimal digits, most significant first: at most 9,
        // and 9 + 2 is the key's last index.
        let scale = 10u64.pow(5 - i as u32);
        let nd = ((n / scale) % 10) as usize;
        let rd = ((r / scale) % 10) as usize;
        out[i] = key[nd];
        out[6 + i] = key[rd + 2];
    }
    out
}

/// Whether `presented` is `key` obfuscated with `timestamp_ms`, compared in
/// constant time.
pub fn matches(key: &ApiKey, timestamp_ms: u64, presented: &[u8]) -> bool {
    // Every key is 12 ASCII characters, so this always converts.
    let Ok(stored) = <[u8; ApiKey::LEN]>::try_from(key.expose().as_bytes()) else {
        return false;
    };
    let expected = obfuscate(&stored, timestamp_ms);
    // A length mismatch is no secret: every obfuscated key is 12 bytes.
    presented.len() == ApiKey::LEN && bool::from(expected.ct_eq(presented))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ob(key: &str, ts: u64) -> String {
        let k: [u8; 12] = key.as_bytes().try_into().unwrap();
        String::from_utf8(obfuscate(&k, ts).to_vec()).unwrap()
    }

    /// Worked by hand from the rule in issue 14, item 1, not from this code.
    ///
    /// Key `ABCDEFGHIJKL`: index 0 is `A`, 1 `B`, ... 11 `L`.
    /// Timestamp 1700000123456: n = "123456" -> key[1..=6] = B C D E F G.
    /// 123456 >> 1 = 61728, padded "061728"; each digit + 2 = 2 8 3 9 4 10
    /// -> C I D J E K. So "BCDEFG" + "CIDJEK".
    #[test]
    fn the_hand_worked_vector_with_a_plain_alphabet_key() {
        assert_eq!(ob("ABCDEFGHIJKL", 1_700_000_123_456), "BCDEFGCIDJEK");
    }

    /// Key `Ab3dEf6hIj9k`: 0 A, 1 b, 2 3, 3 d, 4 E, 5 f, 6 6, 7 h, 8 I, 9 j, 10 9, 11 k.
    /// Timestamp 1764460800999: n = "800999" -> 8 0 0 9 9 9 -> I A A j j j.
    /// 800999 >> 1 = 400499 (800999 / 2 = 400499.5, floored), "400499";
    /// + 2 = 6 2 2 6 11 11 -> 6 3 3 6 k k. So "IAAjjj" + "6336kk".
    #[test]
    fn the_hand_worked_vector_with_a_mixed_key_and_an_odd_n() {
        assert_eq!(ob("Ab3dEf6hIj9k", 1_764_460_800_999), "IAAjjj6336kk");
    }

    /// Timestamp 1700000000001: n = "000001" -> A A A A A B; 1 >> 1 = 0,
    /// padded "000000"; + 2 = 2 six times -> C C C C C C.
    #[test]
    fn the_hand_worked_vector_with_leading_zeros_in_n_and_r() {
        assert_eq!(ob("ABCDEFGHIJKL", 1_700_000_000_001), "AAAAABCCCCCC");
    }

    /// The vendor's Python SDK's function, transcribed literally from its
    /// description in shared/reference/zia-api-session.md (strings and all):
    ///
    /// ```python
    /// def obfuscate_api_key(api_key, timestamp):
    ///     n = str(timestamp)[-6:]
    ///     r = str(int(n) >> 1).zfill(6)
    ///     key = ""
    ///     for i in range(0, len(str(n)), 1):
    ///         key += api_key[int(str(n)[i])]
    ///     for j in range(0, len(str(r)), 1):
    ///         key += api_key[int(str(r)[j]) + 2]
    ///     return key
    /// ```
    fn python_sdk(api_key: &str, timestamp: &str) -> String {
        let api_key: Vec<char> = api_key.chars().collect();
        let n = &timestamp[timestamp.len() - 6..];
        let r = format!("{:0>6}", n.parse::<u64>().unwrap() >> 1);
        let mut key = String::new();
        for c in n.chars() {
            key.push(api_key[c.to_digit(10).unwrap() as usize]);
        }
        for c in r.chars() {
            key.push(api_key[c.to_digit(10).unwrap() as usize + 2]);
        }
        key
    }

    #[test]
    fn it_agrees_with_the_python_sdks_function_on_many_timestamps() {
        let key = "Ab3dEf6hIj9k";
        let mut ts: u64 = 1_764_460_000_000;
        for step in 0..20_000u64 {
            ts += 1 + step * 7 % 997;
            assert_eq!(ob(key, ts), python_sdk(key, &ts.to_string()), "{ts}");
        }
        assert_eq!(python_sdk("ABCDEFGHIJKL", "1700000123456"), "BCDEFGCIDJEK");
    }

    #[test]
    fn a_match_needs_the_right_key_and_the_right_timestamp() {
        let key = ApiKey::parse(b"Ab3dEf6hIj9k").unwrap();
        assert!(matches(&key, 1_764_460_800_999, b"IAAjjj6336kk"));
        assert!(!matches(&key, 1_764_460_800_998, b"IAAjjj6336kk"));
        assert!(!matches(&key, 1_764_460_800_999, b"IAAjjj6336k"));
        let other = ApiKey::parse(b"Ab3dEf6hIj9K").unwrap();
        assert!(!matches(&other, 1_764_460_800_999, b"IAAjjj6336kk"));
    }
}
