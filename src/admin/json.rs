//! Strict JSON request bodies: `application/json`, at most 64 KiB, no unknown
//! fields (each body type denies them), every error a contract refusal.

use axum::body::Body;
use http::header::CONTENT_TYPE;
use http::HeaderMap;
use serde::de::DeserializeOwned;

use super::AdminError;
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
        serde_json::from_slice(&bytes).map_err(|e| AdminError::BadRequest(describe(&e)))?;
    if has_array(&value) {
        return Err(AdminError::BadRequest(
            "expected a JSON object with named fields, not an array".into(),
        ));
    }
    // Parsed again from the bytes, not from `value`: `from_value` would quietly
    // keep the last of two duplicate fields.
    serde_json::from_slice(&bytes).map_err(|e| AdminError::BadRequest(describe(&e)))
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

/// serde's message for the shape of the mistake (which field, which type), never
/// the text of a value: a body may carry a key.
fn describe(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => {
            let msg = e.to_string();
            // "invalid type: string \"...\", expected ..." quotes the value; keep
            // only what was expected.
            match msg.split_once(", expected ") {
                Some((_, expected)) if msg.starts_with("invalid") => {
                    format!("wrong type or value: expected {expected}")
                }
                _ => msg,
            }
        }
        Category::Syntax | Category::Eof => {
            format!("malformed JSON at line {} column {}", e.line(), e.column())
        }
        Category::Io => "the request body could not be read".to_owned(),
    }
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
}
