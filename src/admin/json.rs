//! Strict JSON request bodies: `application/json`, at most 64 KiB, no unknown
//! fields (each body type denies them), every error a contract refusal.

use axum::body::Body;
use http::header::CONTENT_TYPE;
use http::HeaderMap;
use serde::de::DeserializeOwned;
use serde_json::error::Category;
use serde_path_to_error::Segment;

use super::AdminError;
use crate::clock::TimestampError;
use crate::timeout::BodyTimedOut;

/// The largest admin request body.
pub const MAX_BODY: usize = 64 * 1024;

/// Reads and parses a JSON body.
pub(crate) async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, AdminError> {
    if !is_json(headers) {
        return Err(AdminError::UnsupportedMediaType);
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
        {
            AdminError::PayloadTooLarge
        } else if BodyTimedOut::is_cause_of(&e) {
            AdminError::RequestTimeout
        } else {
            AdminError::BadRequest("the request body could not be read".into())
        }
    })?;
    // serde's derive reads a struct from an array of its fields in order
    // (`["NewKey123456"]` as `{"key": ...}`); no admin body has an array, so
    // any array is a client's mistake, refused before the typed parse.
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| AdminError::BadRequest(malformed(&e)))?;
    if has_array(&value) {
        return Err(AdminError::BadRequest(
            "expected a JSON object with named fields, not an array".into(),
        ));
    }
    // Parsed again from the bytes, not from `value`: `from_value` would quietly
    // keep the last of two duplicate fields.
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let parsed = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| AdminError::BadRequest(describe(&e)))?;
    // Trailing bytes after the value: the first parse refused them already.
    de.end()
        .map_err(|e| AdminError::BadRequest(malformed(&e)))?;
    Ok(parsed)
}

fn has_array(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Array(_) => true,
        serde_json::Value::Object(m) => m.values().any(has_array),
        _ => false,
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// A body that is not JSON at all: where the parser stopped, nothing more.
fn malformed(e: &serde_json::Error) -> String {
    match e.classify() {
        Category::Io => "the request body could not be read".to_owned(),
        _ => format!("malformed JSON at line {} column {}", e.line(), e.column()),
    }
}

/// Which field is wrong and how, built from serde's message without the parts
/// that quote the client: a value, or the name of a field keygate does not
/// know (a client that misplaces a key may send it as a name). What serde says
/// it *expected* comes from keygate's own types, so that part is kept.
///
/// serde words its errors in a few fixed forms (`serde::de::Error`'s provided
/// methods); anything else is a custom message, shown only when it is one of
/// keygate's own, which quote nothing.
fn describe(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let inner = e.inner();
    let segments: Vec<&Segment> = e.path().iter().collect();
    let at = |segments: &[&Segment], problem: &str| match segments {
        [] => problem.to_owned(),
        _ => format!("{}: {problem}", field_path(segments)),
    };
    match inner.classify() {
        // The body is valid JSON (it was parsed once already), so a syntax
        // error here is serde_json refusing a value's type early (a number
        // where an enum's name belongs).
        Category::Syntax | Category::Eof => at(&segments, "wrong type"),
        Category::Io => "the request body could not be read".to_owned(),
        Category::Data => {
            let full = inner.to_string();
            let suffix = format!(" at line {} column {}", inner.line(), inner.column());
            let msg = full.strip_suffix(&suffix).unwrap_or(&full);
            // serde ends each message that has one with what was expected,
            // so it follows the last ", expected " (a quoted value may hold
            // the words too). An unknown field or variant of a type that has
            // none ends "there are no ...", with no expected part at all.
            let expected = if msg.ends_with(", there are no fields")
                || msg.ends_with(", there are no variants")
            {
                None
            } else {
                msg.rsplit_once(", expected ").map(|(_, x)| x)
            };
            let with_expected = |problem: &str| match expected {
                Some(x) => format!("{problem}; expected {x}"),
                None => problem.to_owned(),
            };
            if msg.starts_with("unknown field `") {
                // The path ends with the unknown name itself: name its parent.
                let parent = segments.split_last().map_or(&[][..], |(_, p)| p);
                let problem = match expected {
                    Some(x) => format!("unknown field; expected {x}"),
                    None => "unknown field; there are no fields".to_owned(),
                };
                at(parent, &problem)
            } else if msg.starts_with("unknown variant `") {
                at(&segments, &with_expected("unknown value"))
            } else if msg.starts_with("invalid type: ") {
                at(&segments, &with_expected("wrong type"))
            } else if msg.starts_with("invalid value: ") {
                at(&segments, &with_expected("invalid value"))
            } else if msg.starts_with("invalid length ") {
                at(&segments, &with_expected("wrong length"))
            } else if msg.starts_with("missing field `") || msg.starts_with("duplicate field `") {
                // Both name one of the body type's own fields.
                at(&segments, msg)
            } else if own_message(msg) {
                at(&segments, msg)
            } else {
                at(&segments, "invalid value")
            }
        }
    }
}

/// `limits.burst`: the names of the fields leading to the error. Every name
/// here is one of keygate's own: each body type denies unknown fields, so
/// serde reads past no name it does not know.
fn field_path(segments: &[&Segment]) -> String {
    let names: Vec<String> = segments
        .iter()
        .map(|s| match s {
            Segment::Map { key } => key.clone(),
            Segment::Seq { index } => index.to_string(),
            Segment::Enum { variant } => variant.clone(),
            _ => "?".to_owned(),
        })
        .collect();
    names.join(".")
}

/// Whether `msg` is one of the custom messages of keygate's own types, which
/// describe the problem and quote nothing.
fn own_message(msg: &str) -> bool {
    [
        TimestampError::Syntax.to_string(),
        TimestampError::OutOfRange.to_string(),
    ]
    .iter()
    .any(|own| own == msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Edit {
        key: String,
    }

    fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        h
    }

    #[tokio::test]
    async fn a_body_that_is_not_json_is_415() {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, "text/plain".parse().unwrap());
        let r = read_json::<Edit>(&h, Body::from(r#"{"key":"x"}"#)).await;
        assert!(matches!(r, Err(AdminError::UnsupportedMediaType)));
        let r = read_json::<Edit>(&HeaderMap::new(), Body::from("{}")).await;
        assert!(matches!(r, Err(AdminError::UnsupportedMediaType)));
    }

    #[tokio::test]
    async fn a_body_over_64_kib_is_413() {
        let big = format!(r#"{{"key":"{}"}}"#, "a".repeat(MAX_BODY));
        let r = read_json::<Edit>(&json_headers(), Body::from(big)).await;
        assert!(matches!(r, Err(AdminError::PayloadTooLarge)));
    }

    #[tokio::test]
    async fn unknown_fields_malformed_json_and_wrong_types_are_400() {
        for body in [
            r#"{"key":"a","x":1}"#,
            r#"{"key":"#,
            r#"{"key":12}"#,
            "[]",
            "",
        ] {
            let r = read_json::<Edit>(&json_headers(), Body::from(body)).await;
            assert!(matches!(r, Err(AdminError::BadRequest(_))), "{body}");
        }
    }

    #[tokio::test]
    async fn an_array_is_never_read_as_a_struct() {
        for body in [r#"["NewKey123456"]"#, r#"{"key":["a"]}"#] {
            let r = read_json::<Edit>(&json_headers(), Body::from(body)).await;
            assert!(matches!(r, Err(AdminError::BadRequest(_))), "{body}");
        }
    }

    #[tokio::test]
    async fn errors_never_quote_the_value_sent() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct N {
            n: u32,
        }
        let r = read_json::<N>(&json_headers(), Body::from(r#"{"n":"SecretKey123"}"#)).await;
        let AdminError::BadRequest(msg) = r.unwrap_err() else {
            panic!()
        };
        assert!(!msg.contains("SecretKey123"), "{msg}");
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        role: crate::token::Role,
        #[serde(default)]
        inner: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: Option<u32>,
        at: Option<crate::clock::Timestamp>,
    }

    async fn message<T: DeserializeOwned + std::fmt::Debug>(body: &str) -> String {
        match read_json::<T>(&json_headers(), Body::from(body.to_owned())).await {
            Err(AdminError::BadRequest(msg)) => msg,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_unknown_variant_names_the_field_and_what_was_expected_not_the_value() {
        let msg = message::<Outer>(r#"{"role":"SECRET, expected TAIL"}"#).await;
        assert_eq!(msg, "role: unknown value; expected `admin` or `viewer`");
    }

    #[tokio::test]
    async fn a_wrong_type_names_the_nested_field_not_the_value() {
        let msg =
            message::<Outer>(r#"{"role":"admin","inner":{"n":"SECRET, expected TAIL"}}"#).await;
        assert_eq!(msg, "inner.n: wrong type; expected u32");
        let msg = message::<Outer>(r#"{"role":12345}"#).await;
        assert_eq!(msg, "role: wrong type");
    }

    #[tokio::test]
    async fn an_unknown_field_names_its_parent_and_the_known_fields_not_itself() {
        let msg = message::<Outer>(r#"{"role":"admin","SECRET":1}"#).await;
        assert_eq!(msg, "unknown field; expected `role` or `inner`");
        let msg = message::<Outer>(r#"{"role":"admin","inner":{"SECRET, expected TAIL":1}}"#).await;
        assert_eq!(msg, "inner: unknown field; expected `n` or `at`");
    }

    #[tokio::test]
    async fn an_unknown_field_of_a_type_without_fields_is_not_echoed_either() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Empty {}
        let msg = message::<Empty>(r#"{"SECRET, expected TAIL":1}"#).await;
        assert_eq!(msg, "unknown field; there are no fields");
    }

    #[tokio::test]
    async fn missing_and_duplicate_fields_are_named() {
        assert_eq!(message::<Outer>("{}").await, "missing field `role`");
        assert_eq!(
            message::<Outer>(r#"{"role":"admin","role":"viewer"}"#).await,
            "duplicate field `role`"
        );
    }

    #[tokio::test]
    async fn keygates_own_custom_messages_are_kept_and_others_are_not() {
        let msg = message::<Outer>(r#"{"role":"admin","inner":{"at":"SECRET"}}"#).await;
        assert_eq!(msg, "inner.at: not an RFC 3339 date-time");
        #[derive(Debug)]
        struct Custom;
        impl<'de> serde::Deserialize<'de> for Custom {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Err(serde::de::Error::custom(format!("bad {s}")))
            }
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct C {
            c: Custom,
        }
        assert_eq!(message::<C>(r#"{"c":"SECRET"}"#).await, "c: invalid value");
    }
}
