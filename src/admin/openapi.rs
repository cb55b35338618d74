//! The admin API's OpenAPI 3.1 document, served at `GET /v1/openapi.json`.
//!
//! The document is a static JSON file beside this module, compiled into the
//! binary: it is read and reviewed as the text clients get, and changes to it
//! show in a diff as they will on the wire. Building it from the handlers' types
//! would take a schema crate and annotations on every handler, and would still
//! not know the refusal codes, which come from the order of checks in each
//! handler. It is kept true instead by tests: the unit tests below compare its
//! paths and methods with the router's own route table and probe every route,
//! and `scripts/schemathesis` checks live answers against it.

use axum::body::Body;
use axum::response::Response;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};

/// The document, as served.
pub const OPENAPI: &str = include_str!("openapi.json");

/// `GET /v1/openapi.json`: no token, like `/healthz`.
pub(crate) async fn document() -> Response {
    let mut res = Response::new(Body::from(OPENAPI));
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // As every admin answer: the document changes with the binary.
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use axum::body::Body;
    use http::{Method, Request, StatusCode};
    use serde_json::Value;
    use tower::ServiceExt;

    use super::OPENAPI;
    use crate::admin::{router, routes, AdminState};
    use crate::clock::{ManualClock, Timestamp};
    use crate::gate::OrgSource;
    use crate::org::Limits;
    use crate::store::Store;
    use crate::token::TokenDigest;

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    fn document() -> Value {
        serde_json::from_str(OPENAPI).expect("openapi.json is JSON")
    }

    /// `(METHOD, path)` of every operation the document describes.
    fn documented() -> BTreeSet<(String, String)> {
        let doc = document();
        let paths = doc["paths"].as_object().expect("paths");
        paths
            .iter()
            .flat_map(|(path, item)| {
                let item = item.as_object().expect("a path item");
                item.keys()
                    .filter(|k| METHODS.contains(&k.as_str()))
                    .map(|m| (m.to_uppercase(), path.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    async fn state() -> AdminState {
        let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1_800_000_000)));
        let store = Store::in_memory(clock, Limits::default()).await;
        AdminState::new(
            store,
            TokenDigest::of("provider-token"),
            "http://gateway.test",
            &OrgSource::Path,
        )
    }

    /// The path with each `{param}` filled in.
    fn concrete(path: &str) -> String {
        path.replace("{org}", "acme")
            .replace("{name}", "acme-viewer")
    }

    async fn status(state: &AdminState, method: &str, path: &str) -> StatusCode {
        let req = Request::builder()
            .method(method)
            .uri(concrete(path))
            .body(Body::empty())
            .unwrap();
        router(state.clone()).oneshot(req).await.unwrap().status()
    }

    #[test]
    fn the_document_is_openapi_3_1() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["info"]["title"].is_string());
    }

    #[test]
    fn the_documents_operations_are_exactly_the_routers_routes() {
        let routed: BTreeSet<(String, String)> = routes()
            .list
            .iter()
            .map(|(m, p)| (m.as_str().to_owned(), (*p).to_owned()))
            .collect();
        assert_eq!(routes().list.len(), routed.len(), "a route is listed twice");
        let documented = documented();
        let missing: Vec<_> = routed.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&routed).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "routed but not documented: {missing:?}; documented but not routed: {extra:?}"
        );
    }

    #[tokio::test]
    async fn every_documented_operation_is_routed_and_every_other_method_is_405() {
        let state = state().await;
        let documented = documented();
        let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
        for path in paths {
            for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
                let got = status(&state, method, path).await;
                if documented.contains(&(method.to_owned(), path.clone())) {
                    assert!(
                        got != StatusCode::NOT_FOUND && got != StatusCode::METHOD_NOT_ALLOWED,
                        "{method} {path}: {got}"
                    );
                } else {
                    assert_eq!(got, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                }
            }
        }
        assert_eq!(
            status(&state, "GET", "/v1/nothing-here").await,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn only_the_public_operations_answer_without_a_token() {
        let state = state().await;
        let doc = document();
        for (method, path) in documented() {
            let op = &doc["paths"][&path][method.to_lowercase()];
            let public = op["security"] == Value::Array(vec![]);
            let got = status(&state, &method, &path).await;
            if public {
                assert_eq!(got, StatusCode::OK, "{method} {path}");
            } else {
                assert_eq!(got, StatusCode::UNAUTHORIZED, "{method} {path}");
                assert!(
                    op["responses"]["401"].is_object() && op["responses"]["503"].is_object(),
                    "{method} {path} documents neither 401 nor 503"
                );
            }
        }
    }

    #[test]
    fn every_reference_in_the_document_resolves() {
        fn walk(doc: &Value, v: &Value) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        let pointer = r.strip_prefix('#').expect("a local reference");
                        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
                    }
                    m.values().for_each(|v| walk(doc, v));
                }
                Value::Array(a) => a.iter().for_each(|v| walk(doc, v)),
                _ => {}
            }
        }
        let doc = document();
        walk(&doc, &doc);
    }

    #[tokio::test]
    async fn it_is_served_as_json_without_a_token() {
        let state = state().await;
        let req = Request::builder()
            .method(Method::GET)
            .uri("/v1/openapi.json")
            .body(Body::empty())
            .unwrap();
        let res = router(state).oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "application/json");
        let body = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(&body[..], OPENAPI.as_bytes());
    }
}
