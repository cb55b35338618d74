//! Deserializing a value that parses itself from a string, without copying
//! the string.
//!
//! serde's `Cow<'de, str>` always deserializes as an owned `String` (it
//! borrows only under a derive's `#[serde(borrow)]`), so a type that parsed
//! itself through it paid an allocation and a copy per value: at start-up,
//! three per org (its key, its last change's time and who made it). Measured
//! in BENCHMARKS.md, "Issue 17".

use std::fmt;

/// Deserializes a string and hands it to `parse`: borrowed from the input
/// where the format allows, otherwise from the deserializer's own buffer,
/// never as a new `String`. Refuses anything else as `Cow<str>` did ("expected
/// a string"), and `parse`'s error becomes the deserializer's.
pub(crate) fn parse_str<'de, D, T, E>(
    d: D,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    E: fmt::Display,
{
    d.deserialize_str(StrVisitor(parse))
}

/// [`parse_str`]'s visitor: every way serde hands over a string ends in
/// `visit_str`.
struct StrVisitor<F>(F);

impl<'de, F, T, E> serde::de::Visitor<'de> for StrVisitor<F>
where
    F: FnOnce(&str) -> Result<T, E>,
    E: fmt::Display,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<Er: serde::de::Error>(self, s: &str) -> Result<T, Er> {
        (self.0)(s).map_err(Er::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_str;

    fn length(json: &str) -> Result<usize, String> {
        let mut d = serde_json::Deserializer::from_str(json);
        parse_str(&mut d, |s: &str| {
            if s.is_empty() {
                Err("empty")
            } else {
                Ok(s.len())
            }
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn a_string_is_parsed_whether_borrowed_or_unescaped() {
        assert_eq!(length(r#""abc""#), Ok(3));
        assert_eq!(length(r#""a\"c""#), Ok(3));
    }

    #[test]
    fn a_non_string_is_refused_as_a_cow_str_refused_it() {
        let cow = serde_json::from_str::<std::borrow::Cow<'_, str>>("5").unwrap_err();
        assert_eq!(length("5").unwrap_err(), cow.to_string());
        assert!(length(r#""""#).unwrap_err().starts_with("empty"));
    }
}
