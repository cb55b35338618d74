//! CONTRACT section 4 over real HTTP: every endpoint of the admin listener for
//! every role, every refusal, the KeyView, the audit log, and the proxy's view
//! of each key change.

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{json, Value};
use support::{Gateway, Reply, PROVIDER, T0};

/// A gateway with the org `acme`, an admin token `alice` and a viewer token
/// `victor` for it.
struct Acme {
    gw: Gateway,
    key: String,
    admin: String,
    viewer: String,
}

async fn acme() -> Acme {
    acme_on(Gateway::start().await).await
}

async fn acme_on(gw: Gateway) -> Acme {
    let key = gw.provision("acme").await;
    let admin = gw.token("alice", "admin", "acme").await;
    let viewer = gw.token("victor", "viewer", "acme").await;
    Acme {
        gw,
        key,
        admin,
        viewer,
    }
}

/// One admin call: method, path and JSON body.
type Call = (Method, String, Option<Value>);

/// The four key changes of one org: add, edit, regenerate, delete.
fn key_changes(org: &str) -> [Call; 4] {
    [
        (Method::POST, format!("/v1/orgs/{org}/key"), None),
        (
            Method::PUT,
            format!("/v1/orgs/{org}/key"),
            Some(json!({ "key": "NewKey123456" })),
        ),
        (Method::POST, format!("/v1/orgs/{org}/key/regenerate"), None),
        (Method::DELETE, format!("/v1/orgs/{org}/key"), None),
    ]
}

/// Every call about one org's key and audit: what an admin of the org may
/// make, and a viewer the two reads of.
fn org_calls(org: &str) -> Vec<Call> {
    let mut calls = vec![
        (Method::GET, format!("/v1/orgs/{org}/key"), None),
        (Method::GET, format!("/v1/orgs/{org}/audit"), None),
    ];
    calls.extend(key_changes(org));
    calls
}

/// Every provider-only call, about `org` where it names one.
fn provider_calls(org: &str) -> Vec<Call> {
    vec![
        (
            Method::POST,
            "/v1/orgs".into(),
            Some(json!({ "org": "newco" })),
        ),
        (Method::GET, "/v1/orgs".into(), None),
        (
            Method::POST,
            format!("/v1/orgs/{org}/disable"),
            Some(json!({ "reason": "abuse" })),
        ),
        (Method::POST, format!("/v1/orgs/{org}/enable"), None),
        (
            Method::PUT,
            format!("/v1/orgs/{org}/subscription"),
            Some(json!({ "expires_at": null })),
        ),
        (
            Method::PUT,
            format!("/v1/orgs/{org}/limits"),
            Some(json!({ "burst": 5 })),
        ),
        (
            Method::POST,
            "/v1/tokens".into(),
            Some(json!({ "name": "mallory", "role": "admin", "org": org })),
        ),
        (Method::POST, "/v1/tokens/alice/rotate".into(), None),
        (Method::DELETE, "/v1/tokens/alice".into(), None),
    ]
}

async fn call(gw: &Gateway, token: &str, (method, path, body): &Call) -> Reply {
    gw.admin(method.clone(), path, Some(token), body.as_ref())
        .await
}

fn rfc3339_after(d: Duration) -> String {
    T0.saturating_add(d).to_rfc3339()
}

// ---------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------

#[tokio::test]
async fn healthz_answers_200_without_a_token() {
    let gw = Gateway::start().await;

    gw.get("/healthz", None).await.assert_status(StatusCode::OK);
}

#[tokio::test]
async fn readyz_answers_200_without_a_token_on_a_single_node() {
    let gw = Gateway::start().await;

    gw.get("/readyz", None).await.assert_status(StatusCode::OK);
}

#[tokio::test]
async fn every_call_without_a_token_is_401_unauthenticated() {
    let gw = Gateway::start().await;
    gw.provision("acme").await;

    let mut calls = org_calls("acme");
    calls.extend(provider_calls("acme"));
    for (method, path, body) in &calls {
        let r = gw.admin(method.clone(), path, None, body.as_ref()).await;
        r.assert_refused(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    }
}

#[tokio::test]
async fn an_unknown_token_is_401_unauthenticated() {
    let gw = Gateway::start().await;
    gw.provision("acme").await;

    let almost = &PROVIDER[..PROVIDER.len() - 1];
    for token in ["not-a-token", almost] {
        gw.get("/v1/orgs/acme/key", Some(token))
            .await
            .assert_refused(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    }
}

#[tokio::test]
async fn the_provider_token_under_another_scheme_than_bearer_is_401_unauthenticated() {
    let gw = Gateway::start().await;
    gw.provision("acme").await;

    for value in [format!("Basic {PROVIDER}"), PROVIDER.to_owned()] {
        let r = gw
            .send(
                http::Request::get(format!("http://{}/v1/orgs", gw.admin_addr))
                    .header("authorization", value)
                    .body(Default::default())
                    .unwrap(),
            )
            .await;
        r.assert_refused(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    }
}

#[tokio::test]
async fn an_org_api_key_is_not_an_admin_token() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;

    gw.get("/v1/orgs/acme/key", Some(&key))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
}

#[tokio::test]
async fn a_created_token_is_shown_once_and_works() {
    let gw = Gateway::start().await;
    gw.provision("acme").await;

    let r = gw
        .post(
            "/v1/tokens",
            Some(PROVIDER),
            Some(json!({ "name": "alice", "role": "admin", "org": "acme" })),
        )
        .await;

    r.assert_status(StatusCode::CREATED);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.json["name"], "alice");
    assert_eq!(r.json["role"], "admin");
    assert_eq!(r.json["org"], "acme");
    let token = r.json["token"].as_str().unwrap();
    gw.get("/v1/orgs/acme/key", Some(token))
        .await
        .assert_status(StatusCode::OK);
    for path in ["/v1/orgs", "/v1/orgs/acme/key", "/v1/orgs/acme/audit"] {
        let later = gw.get(path, Some(PROVIDER)).await;
        assert!(!later.text().contains(token), "{path}: {}", later.text());
    }
}

#[tokio::test]
async fn a_deleted_token_is_401_unauthenticated_at_once() {
    let gw = Gateway::start().await;
    gw.provision("acme").await;
    let token = gw.token("alice", "admin", "acme").await;

    gw.delete("/v1/tokens/alice", Some(PROVIDER))
        .await
        .assert_status(StatusCode::NO_CONTENT);

    gw.get("/v1/orgs/acme/key", Some(&token))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
}

#[tokio::test]
async fn a_token_made_again_under_a_deleted_name_does_not_revive_the_old_one() {
    let gw = Gateway::start().await;
    gw.provision("acme").await;
    let old = gw.token("alice", "admin", "acme").await;
    gw.delete("/v1/tokens/alice", Some(PROVIDER))
        .await
        .assert_status(StatusCode::NO_CONTENT);

    let new = gw.token("alice", "admin", "acme").await;

    assert_ne!(old, new);
    gw.get("/v1/orgs/acme/key", Some(&old))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    gw.get("/v1/orgs/acme/key", Some(&new))
        .await
        .assert_status(StatusCode::OK);
}

async fn rotation_refuses_the_old_token_and_admits_the_new_one(gw: Gateway) {
    gw.provision("acme").await;
    let old = gw.token("alice", "viewer", "acme").await;

    let r = gw
        .post("/v1/tokens/alice/rotate", Some(PROVIDER), None)
        .await;

    r.assert_status(StatusCode::OK);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let new = r.json["token"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(r.json["name"], "alice");
    assert_eq!(r.json["role"], "viewer");
    assert_eq!(r.json["org"], "acme");
    assert_eq!(r.json.as_object().unwrap().len(), 4);
    gw.get("/v1/orgs/acme/key", Some(&old))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    gw.get("/v1/orgs/acme/key", Some(&new))
        .await
        .assert_status(StatusCode::OK);
    let listed = gw.get("/v1/tokens", Some(PROVIDER)).await;
    let names: Vec<&str> = listed.json["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice"]);
    assert!(!listed.text().contains(&new));
    let audit = gw.get("/v1/orgs/acme/audit", Some(PROVIDER)).await;
    let last = audit.json["events"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["action"], "rotate_token");
    assert!(!audit.text().contains(&new) && !audit.text().contains(&old));
}

#[tokio::test]
async fn rotating_a_token_refuses_the_old_one_at_once_in_memory() {
    rotation_refuses_the_old_token_and_admits_the_new_one(Gateway::start().await).await;
}

#[tokio::test]
async fn rotating_a_token_refuses_the_old_one_at_once_on_redb_and_after_a_restart() {
    let mut gw = Gateway::builder().redb().start().await;
    gw.provision("acme").await;
    let old = gw.token("alice", "admin", "acme").await;
    let r = gw
        .post("/v1/tokens/alice/rotate", Some(PROVIDER), None)
        .await;
    r.assert_status(StatusCode::OK);
    let new = r.json["token"].as_str().unwrap().to_owned();

    gw.restart().await;

    gw.get("/v1/orgs/acme/key", Some(&old))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    gw.get("/v1/orgs/acme/key", Some(&new))
        .await
        .assert_status(StatusCode::OK);
}

#[tokio::test]
async fn rotating_a_token_on_redb_answers_like_memory() {
    rotation_refuses_the_old_token_and_admits_the_new_one(Gateway::builder().redb().start().await)
        .await;
}

#[tokio::test]
async fn rotating_an_unknown_token_is_404() {
    let gw = Gateway::start().await;

    let r = gw
        .post("/v1/tokens/nobody/rotate", Some(PROVIDER), None)
        .await;

    r.assert_refused(StatusCode::NOT_FOUND, "TOKEN_NOT_FOUND");
}

#[tokio::test]
async fn deleting_an_unknown_token_is_404() {
    let gw = Gateway::start().await;

    let r = gw.delete("/v1/tokens/nobody", Some(PROVIDER)).await;

    r.assert_refused(StatusCode::NOT_FOUND, "TOKEN_NOT_FOUND");
}

#[tokio::test]
async fn creating_a_token_under_a_taken_name_is_409() {
    let gw = Gateway::start().await;
    gw.provision("acme").await;
    gw.provision("globex").await;
    gw.token("alice", "admin", "acme").await;

    for (role, org) in [("admin", "acme"), ("viewer", "globex")] {
        let r = gw
            .post(
                "/v1/tokens",
                Some(PROVIDER),
                Some(json!({ "name": "alice", "role": role, "org": org })),
            )
            .await;
        r.assert_refused(StatusCode::CONFLICT, "TOKEN_EXISTS");
    }
}

#[tokio::test]
async fn a_token_cannot_take_the_name_of_another_kind_of_actor() {
    let gw = Gateway::start().await;
    gw.provision("acme").await;

    for name in ["provider", "system", "", "has space"] {
        let r = gw
            .post(
                "/v1/tokens",
                Some(PROVIDER),
                Some(json!({ "name": name, "role": "admin", "org": "acme" })),
            )
            .await;
        r.assert_refused(StatusCode::UNPROCESSABLE_ENTITY, "INVALID_TOKEN_NAME");
    }
}

// ---------------------------------------------------------------------------
// Roles
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_provider_adds_edits_regenerates_and_deletes_any_orgs_key_as_provider() {
    let a = acme().await;
    let gw = &a.gw;

    let edited = gw
        .put(
            "/v1/orgs/acme/key",
            Some(PROVIDER),
            Some(json!({ "key": "NewKey123456" })),
        )
        .await;
    let regenerated = gw
        .post("/v1/orgs/acme/key/regenerate", Some(PROVIDER), None)
        .await;
    let deleted = gw.delete("/v1/orgs/acme/key", Some(PROVIDER)).await;
    let added = gw.post("/v1/orgs/acme/key", Some(PROVIDER), None).await;

    edited.assert_status(StatusCode::OK);
    assert_eq!(edited.json["key"], "NewKey123456");
    regenerated.assert_status(StatusCode::OK);
    assert_ne!(regenerated.key(), "NewKey123456");
    deleted.assert_status(StatusCode::NO_CONTENT);
    assert!(deleted.body.is_empty());
    added.assert_status(StatusCode::CREATED);
    for page in [&edited, &regenerated, &added] {
        assert_eq!(page.json["last_modified_by"], "provider");
    }
    assert_eq!(gw.page("acme").await["key"], added.json["key"]);
}

#[tokio::test]
async fn an_admin_adds_edits_regenerates_and_deletes_its_own_orgs_key_under_its_name() {
    let a = acme().await;
    let gw = &a.gw;
    let t = Some(a.admin.as_str());

    let read = gw.get("/v1/orgs/acme/key", t).await;
    let edited = gw
        .put(
            "/v1/orgs/acme/key",
            t,
            Some(json!({ "key": "NewKey123456" })),
        )
        .await;
    let regenerated = gw.post("/v1/orgs/acme/key/regenerate", t, None).await;
    let deleted = gw.delete("/v1/orgs/acme/key", t).await;
    let without = gw.page("acme").await;
    let added = gw.post("/v1/orgs/acme/key", t, None).await;

    read.assert_status(StatusCode::OK);
    assert_eq!(read.key(), a.key, "an admin sees the key unmasked");
    edited.assert_status(StatusCode::OK);
    assert_eq!(edited.json["key"], "NewKey123456");
    regenerated.assert_status(StatusCode::OK);
    deleted.assert_status(StatusCode::NO_CONTENT);
    assert_eq!(without["key"], Value::Null);
    assert_eq!(without["last_modified_by"], "alice");
    added.assert_status(StatusCode::CREATED);
    for page in [&edited, &regenerated, &added] {
        assert_eq!(page.json["last_modified_by"], "alice");
    }
}

#[tokio::test]
async fn an_admin_and_a_viewer_read_their_orgs_audit() {
    let a = acme().await;

    for token in [&a.admin, &a.viewer] {
        let r = a.gw.get("/v1/orgs/acme/audit", Some(token)).await;
        r.assert_status(StatusCode::OK);
        assert!(r.json["events"].as_array().is_some_and(|e| !e.is_empty()));
    }
}

#[tokio::test]
async fn a_viewer_sees_the_key_masked_to_its_last_four_characters() {
    let a = acme().await;

    let r = a.gw.get("/v1/orgs/acme/key", Some(&a.viewer)).await;

    r.assert_status(StatusCode::OK);
    assert_eq!(r.key(), format!("********{}", &a.key[8..]));
    assert!(!r.text().contains(&a.key));
}

#[tokio::test]
async fn a_viewer_is_403_forbidden_on_every_key_change_and_nothing_changes() {
    let a = acme().await;
    let before = a.gw.page("acme").await;

    for change in &key_changes("acme") {
        call(&a.gw, &a.viewer, change)
            .await
            .assert_refused(StatusCode::FORBIDDEN, "FORBIDDEN");
    }

    assert_eq!(a.gw.page("acme").await, before);
}

#[tokio::test]
async fn tokens_of_one_org_get_the_same_403_for_another_org_and_for_a_nonexistent_one() {
    let a = acme().await;
    a.gw.provision("globex").await;
    let before = a.gw.page("globex").await;

    for token in [&a.admin, &a.viewer] {
        let calls = org_calls("globex")
            .into_iter()
            .zip(org_calls("nobody"))
            .zip(org_calls("Not_An_Org"));
        for ((existing, missing), malformed) in calls {
            let existing = call(&a.gw, token, &existing).await;
            existing.assert_refused(StatusCode::FORBIDDEN, "FORBIDDEN");
            for other in [missing, malformed] {
                let r = call(&a.gw, token, &other).await;
                assert_eq!(r.status, existing.status, "{} {}", other.0, other.1);
                assert_eq!(r.body, existing.body, "{} {}", other.0, other.1);
            }
        }
    }
    assert_eq!(a.gw.page("globex").await, before);
}

#[tokio::test]
async fn a_caller_who_may_not_make_a_call_is_403_before_its_body_is_looked_at() {
    let a = acme().await;
    a.gw.provision("globex").await;

    let answers = [
        a.gw.admin_raw(
            Method::PUT,
            "/v1/orgs/acme/key",
            Some(&a.viewer),
            Some("application/json"),
            "{not json",
        )
        .await,
        a.gw.admin_raw(
            Method::PUT,
            "/v1/orgs/globex/key",
            Some(&a.admin),
            Some("text/plain"),
            "NewKey123456",
        )
        .await,
        a.gw.admin_raw(
            Method::POST,
            "/v1/orgs",
            Some(&a.admin),
            Some("application/json"),
            r#"{"org": 5, "extra": true}"#,
        )
        .await,
    ];

    for r in &answers {
        r.assert_refused(StatusCode::FORBIDDEN, "FORBIDDEN");
    }
}

#[tokio::test]
async fn only_the_provider_may_call_provider_endpoints() {
    let a = acme().await;

    for token in [&a.admin, &a.viewer] {
        for c in &provider_calls("acme") {
            call(&a.gw, token, c)
                .await
                .assert_refused(StatusCode::FORBIDDEN, "FORBIDDEN");
        }
    }
    for c in &provider_calls("acme") {
        let r = call(&a.gw, PROVIDER, c).await;
        assert!(r.status.is_success(), "{} {}: {r:?}", c.0, c.1);
    }
}

#[tokio::test]
async fn the_provider_gets_404_org_not_found_for_an_unknown_org() {
    let gw = Gateway::start().await;

    let mut calls = org_calls("nobody");
    calls.extend(
        provider_calls("nobody")
            .into_iter()
            .filter(|(_, path, _)| path.starts_with("/v1/orgs/") || path == "/v1/tokens"),
    );
    for c in &calls {
        call(&gw, PROVIDER, c)
            .await
            .assert_refused(StatusCode::NOT_FOUND, "ORG_NOT_FOUND");
    }
}

#[tokio::test]
async fn the_provider_lists_every_org_as_a_key_view() {
    let gw = Gateway::start().await;
    let globex = gw.provision("globex").await;
    let acme = gw.provision("acme").await;

    let r = gw.get("/v1/orgs", Some(PROVIDER)).await;

    r.assert_status(StatusCode::OK);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let orgs = r.json["orgs"].as_array().unwrap();
    let listed: Vec<(&str, &str)> = orgs
        .iter()
        .map(|o| (o["org"].as_str().unwrap(), o["key"].as_str().unwrap()))
        .collect();
    assert_eq!(
        listed,
        [("acme", acme.as_str()), ("globex", globex.as_str())]
    );
    assert_eq!(orgs[0], gw.page("acme").await);
}

// ---------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------

#[tokio::test]
async fn malformed_json_is_400_bad_request() {
    let a = acme().await;

    for body in [r#"{"key":"#, "{key: 1}", "", "[]", "null"] {
        a.gw.admin_raw(
            Method::PUT,
            "/v1/orgs/acme/key",
            Some(&a.admin),
            Some("application/json"),
            body,
        )
        .await
        .assert_refused(StatusCode::BAD_REQUEST, "BAD_REQUEST");
    }
    assert_eq!(a.gw.page("acme").await["key"], a.key);
}

#[tokio::test]
async fn unknown_fields_are_400_bad_request() {
    let a = acme().await;
    let gw = &a.gw;
    let p = Some(PROVIDER);

    let answers = [
        gw.put(
            "/v1/orgs/acme/key",
            p,
            Some(json!({ "key": "NewKey123456", "force": true })),
        )
        .await,
        gw.post("/v1/orgs", p, Some(json!({ "org": "newco", "owner": "x" })))
            .await,
        gw.post(
            "/v1/orgs",
            p,
            Some(json!({ "org": "newco", "limits": { "speed": 1 } })),
        )
        .await,
        gw.put(
            "/v1/orgs/acme/limits",
            p,
            Some(json!({ "burst": 5, "rate": 1 })),
        )
        .await,
        gw.put(
            "/v1/orgs/acme/subscription",
            p,
            Some(json!({ "expires_at": null, "plan": "gold" })),
        )
        .await,
        gw.post(
            "/v1/orgs/acme/disable",
            p,
            Some(json!({ "reason": "abuse", "until": 1 })),
        )
        .await,
        gw.post(
            "/v1/tokens",
            p,
            Some(json!({ "name": "bob", "role": "admin", "org": "acme", "ttl": 1 })),
        )
        .await,
    ];

    for r in &answers {
        r.assert_refused(StatusCode::BAD_REQUEST, "BAD_REQUEST");
    }
    assert_eq!(gw.page("acme").await["key"], a.key);
}

#[tokio::test]
async fn wrong_types_are_400_bad_request_and_the_message_never_quotes_the_value() {
    let a = acme().await;
    let gw = &a.gw;
    let p = Some(PROVIDER);

    let answers = [
        gw.put(
            "/v1/orgs/acme/key",
            p,
            Some(json!({ "key": 123456789012u64 })),
        )
        .await,
        gw.put("/v1/orgs/acme/key", p, Some(json!({}))).await,
        gw.post("/v1/orgs", p, Some(json!({ "org": 5 }))).await,
        gw.post(
            "/v1/orgs",
            p,
            Some(json!({ "org": "newco", "subscription_expires_at": "SecretKey123" })),
        )
        .await,
        gw.put(
            "/v1/orgs/acme/limits",
            p,
            Some(json!({ "burst": "SecretKey123" })),
        )
        .await,
        gw.put("/v1/orgs/acme/subscription", p, Some(json!({})))
            .await,
        gw.post(
            "/v1/tokens",
            p,
            Some(json!({ "name": "bob", "role": "owner", "org": "acme" })),
        )
        .await,
    ];

    for r in &answers {
        r.assert_refused(StatusCode::BAD_REQUEST, "BAD_REQUEST");
        assert!(!r.text().contains("SecretKey123"), "{}", r.text());
    }
}

#[tokio::test]
async fn a_body_over_64_kib_is_413() {
    let a = acme().await;
    let big = format!(r#"{{"key":"{}"}}"#, "A".repeat(64 * 1024));

    let r =
        a.gw.admin_raw(
            Method::PUT,
            "/v1/orgs/acme/key",
            Some(&a.admin),
            Some("application/json"),
            big,
        )
        .await;

    r.assert_refused(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE");
    assert_eq!(a.gw.page("acme").await["key"], a.key);
}

#[tokio::test]
async fn a_body_just_under_64_kib_is_read() {
    let a = acme().await;
    let near = format!(r#"{{"key":"{}"}}"#, "A".repeat(60 * 1024));

    let r =
        a.gw.admin_raw(
            Method::PUT,
            "/v1/orgs/acme/key",
            Some(&a.admin),
            Some("application/json"),
            near,
        )
        .await;

    r.assert_refused(StatusCode::UNPROCESSABLE_ENTITY, "INVALID_KEY_FORMAT");
}

#[tokio::test]
async fn a_body_that_is_not_application_json_is_415() {
    let a = acme().await;
    let body = r#"{"key":"NewKey123456"}"#;

    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        a.gw.admin_raw(
            Method::PUT,
            "/v1/orgs/acme/key",
            Some(&a.admin),
            content_type,
            body,
        )
        .await
        .assert_refused(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE");
    }
    a.gw.admin_raw(
        Method::POST,
        "/v1/orgs",
        Some(PROVIDER),
        Some("text/plain"),
        r#"{"org":"newco"}"#,
    )
    .await
    .assert_refused(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE");
    assert_eq!(a.gw.page("acme").await["key"], a.key);
}

#[tokio::test]
async fn a_json_content_type_with_a_charset_is_accepted() {
    let a = acme().await;

    let r =
        a.gw.admin_raw(
            Method::PUT,
            "/v1/orgs/acme/key",
            Some(&a.admin),
            Some("application/json; charset=utf-8"),
            r#"{"key":"NewKey123456"}"#,
        )
        .await;

    r.assert_status(StatusCode::OK);
}

// ---------------------------------------------------------------------------
// Refusals of the operation
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_edit_to_a_key_that_is_not_twelve_alphanumerics_is_422_invalid_key_format() {
    let a = acme().await;

    for bad in [
        "",
        "short",
        "NewKey1234567",
        "NewKey12345!",
        "NewKey 12345",
        "NewKey12345é",
    ] {
        a.gw.put(
            "/v1/orgs/acme/key",
            Some(&a.admin),
            Some(json!({ "key": bad })),
        )
        .await
        .assert_refused(StatusCode::UNPROCESSABLE_ENTITY, "INVALID_KEY_FORMAT");
    }
    assert_eq!(a.gw.page("acme").await["key"], a.key);
}

#[tokio::test]
async fn an_edit_to_the_current_key_is_422_key_unchanged() {
    let a = acme().await;

    let r =
        a.gw.put(
            "/v1/orgs/acme/key",
            Some(&a.admin),
            Some(json!({ "key": a.key })),
        )
        .await;

    r.assert_refused(StatusCode::UNPROCESSABLE_ENTITY, "KEY_UNCHANGED");
}

#[tokio::test]
async fn adding_a_key_while_one_exists_is_409_key_exists() {
    let a = acme().await;

    for token in [&a.admin, PROVIDER] {
        a.gw.post("/v1/orgs/acme/key", Some(token), None)
            .await
            .assert_refused(StatusCode::CONFLICT, "KEY_EXISTS");
    }
    assert_eq!(a.gw.page("acme").await["key"], a.key);
}

#[tokio::test]
async fn edit_regenerate_and_delete_without_a_key_are_404_no_key() {
    let a = acme().await;
    a.gw.delete("/v1/orgs/acme/key", Some(&a.admin))
        .await
        .assert_status(StatusCode::NO_CONTENT);

    for token in [&a.admin, PROVIDER] {
        for change in &key_changes("acme")[1..] {
            call(&a.gw, token, change)
                .await
                .assert_refused(StatusCode::NOT_FOUND, "NO_KEY");
        }
    }
    let page = a.gw.get("/v1/orgs/acme/key", Some(&a.admin)).await;
    page.assert_status(StatusCode::OK);
    assert_eq!(page.json["key"], Value::Null);
}

#[tokio::test]
async fn provisioning_gives_201_and_an_enabled_org_with_a_random_key() {
    let gw = Gateway::start().await;
    let end = rfc3339_after(Duration::from_secs(86_400));

    let r = gw
        .post(
            "/v1/orgs",
            Some(PROVIDER),
            Some(json!({
                "org": "acme",
                "subscription_expires_at": end,
                "limits": { "rate_per_sec": 50 },
            })),
        )
        .await;
    let other = gw.provision("globex").await;

    r.assert_status(StatusCode::CREATED);
    let key = r.key();
    assert_eq!(key.len(), 12);
    assert!(key.bytes().all(|b| b.is_ascii_alphanumeric()), "{key}");
    assert_ne!(key, other);
    assert_eq!(r.json["status"], "enabled");
    assert_eq!(r.json["subscription_expires_at"], end);
    assert_eq!(r.json["subscription_expired"], false);
    assert_eq!(gw.get_with("/acme/v1", &key).await.status, StatusCode::OK);
}

#[tokio::test]
async fn deleting_an_org_removes_its_key_and_tokens_at_once_and_keeps_its_audit() {
    let mut gw = Gateway::start().await;
    let key = gw.provision("acme").await;
    let admin = gw.token("acme-admin", "admin", "acme").await;
    let other = gw.provision("globex").await;

    gw.delete("/v1/orgs/acme", Some(PROVIDER))
        .await
        .assert_status(StatusCode::NO_CONTENT);

    gw.get_with("/acme/v1", &key)
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, "INVALID_KEY");
    gw.get("/v1/orgs/acme/key", Some(&admin))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    gw.get("/v1/orgs/acme/key", Some(PROVIDER))
        .await
        .assert_refused(StatusCode::NOT_FOUND, "ORG_NOT_FOUND");
    let audit = gw.get("/v1/orgs/acme/audit", Some(PROVIDER)).await;
    audit.assert_status(StatusCode::OK);
    let actions: Vec<&str> = audit.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions.last(), Some(&"delete_org"), "{actions:?}");
    gw.delete("/v1/orgs/acme", Some(PROVIDER))
        .await
        .assert_refused(StatusCode::NOT_FOUND, "ORG_NOT_FOUND");
    // The other org is untouched, and the id can be provisioned again.
    assert_eq!(
        gw.get_with("/globex/v1", &other).await.status,
        StatusCode::OK
    );

    // And it stays deleted across a restart.
    gw.restart().await;
    gw.get_with("/acme/v1", &key)
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, "INVALID_KEY");
    gw.get("/v1/orgs/acme/key", Some(&admin))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    let again = gw.provision("acme").await;
    assert_eq!(gw.get_with("/acme/v1", &again).await.status, StatusCode::OK);
}

#[tokio::test]
async fn provisioning_an_existing_org_is_409_org_exists() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;

    let r = gw
        .post("/v1/orgs", Some(PROVIDER), Some(json!({ "org": "acme" })))
        .await;

    r.assert_refused(StatusCode::CONFLICT, "ORG_EXISTS");
    assert_eq!(gw.page("acme").await["key"], key);
}

#[tokio::test]
async fn provisioning_a_malformed_org_id_is_422_invalid_org() {
    let gw = Gateway::start().await;
    let long = "a".repeat(65);

    for bad in [
        "",
        "Acme",
        "-acme",
        "ac me",
        "acme/x",
        "acme_x",
        "é",
        long.as_str(),
    ] {
        gw.post("/v1/orgs", Some(PROVIDER), Some(json!({ "org": bad })))
            .await
            .assert_refused(StatusCode::UNPROCESSABLE_ENTITY, "INVALID_ORG");
    }
    let listed = gw.get("/v1/orgs", Some(PROVIDER)).await;
    assert_eq!(listed.json["orgs"], json!([]));
}

#[tokio::test]
async fn limits_that_are_zero_negative_fractional_or_overflowing_are_422() {
    let gw = Gateway::start().await;
    gw.provision("acme").await;
    let before = gw.page("acme").await;

    for field in [
        "rate_per_sec",
        "burst",
        "threshold_calls",
        "threshold_window_secs",
    ] {
        for bad in [
            json!(0),
            json!(-1),
            json!(1.5),
            json!(4_294_967_296u64),
            json!(1e30),
            json!(u64::MAX),
        ] {
            let limits = json!({ field: bad });
            gw.put("/v1/orgs/acme/limits", Some(PROVIDER), Some(limits.clone()))
                .await
                .assert_refused(StatusCode::UNPROCESSABLE_ENTITY, "INVALID_LIMITS");
            gw.post(
                "/v1/orgs",
                Some(PROVIDER),
                Some(json!({ "org": "newco", "limits": limits })),
            )
            .await
            .assert_refused(StatusCode::UNPROCESSABLE_ENTITY, "INVALID_LIMITS");
        }
    }
    assert_eq!(gw.page("acme").await, before);
    gw.get("/v1/orgs/newco/key", Some(PROVIDER))
        .await
        .assert_refused(StatusCode::NOT_FOUND, "ORG_NOT_FOUND");
}

#[tokio::test]
async fn limits_set_by_the_provider_answer_200_and_are_in_force() {
    let gw = Gateway::start().await;
    gw.provision("acme").await;

    let r = gw
        .put(
            "/v1/orgs/acme/limits",
            Some(PROVIDER),
            Some(json!({ "rate_per_sec": 7, "burst": 3 })),
        )
        .await;

    r.assert_status(StatusCode::OK);
    assert_eq!(r.json["limits"]["rate_per_sec"], 7);
    assert_eq!(r.json["limits"]["burst"], 3);
}

// ---------------------------------------------------------------------------
// Disabled and expired
// ---------------------------------------------------------------------------

/// Deletes acme's key, so that an add is refused for the rule under test and
/// not as `KEY_EXISTS`.
async fn without_key(a: &Acme) {
    a.gw.delete("/v1/orgs/acme/key", Some(PROVIDER))
        .await
        .assert_status(StatusCode::NO_CONTENT);
}

/// The answers to `token` making each of acme's four key changes.
async fn all_key_changes(a: &Acme, token: &str) -> Vec<Reply> {
    let mut answers = Vec::new();
    for change in &key_changes("acme") {
        answers.push(call(&a.gw, token, change).await);
    }
    answers
}

#[tokio::test]
async fn while_disabled_every_key_change_is_403_key_disabled_for_every_role() {
    let a = acme().await;
    a.gw.disable("acme", "abuse").await;
    let before = a.gw.page("acme").await;

    for token in [&a.admin, PROVIDER] {
        for r in all_key_changes(&a, token).await {
            r.assert_refused(StatusCode::FORBIDDEN, "KEY_DISABLED");
        }
    }
    // A viewer may change nothing at all, disabled or not.
    for r in all_key_changes(&a, &a.viewer).await {
        r.assert_refused(StatusCode::FORBIDDEN, "FORBIDDEN");
    }
    assert_eq!(a.gw.page("acme").await, before);
}

#[tokio::test]
async fn while_disabled_adding_a_key_to_a_keyless_org_is_403_key_disabled() {
    let a = acme().await;
    without_key(&a).await;
    a.gw.disable("acme", "abuse").await;

    for token in [&a.admin, PROVIDER] {
        a.gw.post("/v1/orgs/acme/key", Some(token), None)
            .await
            .assert_refused(StatusCode::FORBIDDEN, "KEY_DISABLED");
    }
    assert_eq!(a.gw.page("acme").await["key"], Value::Null);
}

#[tokio::test]
async fn while_expired_every_key_change_is_403_subscription_expired_and_reads_still_work() {
    let a = acme().await;
    a.gw.expire("acme").await;
    let before = a.gw.page("acme").await;

    for token in [&a.admin, PROVIDER] {
        for r in all_key_changes(&a, token).await {
            r.assert_refused(StatusCode::FORBIDDEN, "SUBSCRIPTION_EXPIRED");
        }
    }
    for token in [&a.admin, &a.viewer, PROVIDER] {
        let page = a.gw.get("/v1/orgs/acme/key", Some(token)).await;
        page.assert_status(StatusCode::OK);
        assert_eq!(page.json["subscription_expired"], true);
        a.gw.get("/v1/orgs/acme/audit", Some(token))
            .await
            .assert_status(StatusCode::OK);
    }
    assert_eq!(a.gw.page("acme").await, before);
}

#[tokio::test]
async fn while_expired_adding_a_key_to_a_keyless_org_is_403_subscription_expired() {
    let a = acme().await;
    without_key(&a).await;
    a.gw.expire("acme").await;

    for token in [&a.admin, PROVIDER] {
        a.gw.post("/v1/orgs/acme/key", Some(token), None)
            .await
            .assert_refused(StatusCode::FORBIDDEN, "SUBSCRIPTION_EXPIRED");
    }
}

#[tokio::test]
async fn a_disabled_key_of_an_expired_subscription_is_refused_as_key_disabled() {
    let a = acme().await;
    a.gw.expire("acme").await;
    a.gw.disable("acme", "abuse").await;

    for token in [&a.admin, PROVIDER] {
        for r in all_key_changes(&a, token).await {
            r.assert_refused(StatusCode::FORBIDDEN, "KEY_DISABLED");
        }
    }
}

#[tokio::test]
async fn disable_shows_the_reason_and_the_proxy_refuses_the_key_at_once() {
    let a = acme().await;

    let r =
        a.gw.post(
            "/v1/orgs/acme/disable",
            Some(PROVIDER),
            Some(json!({ "reason": "unpaid invoice" })),
        )
        .await;
    let proxied = a.gw.get_with("/acme/v1", &a.key).await;

    r.assert_status(StatusCode::OK);
    assert_eq!(r.json["status"], "disabled");
    assert_eq!(r.json["disabled_reason"], "unpaid invoice");
    assert_eq!(r.json["last_modified_by"], "provider");
    proxied.assert_refused(StatusCode::FORBIDDEN, "KEY_DISABLED");
}

#[tokio::test]
async fn enable_lets_a_key_disabled_over_its_threshold_work_again_with_a_fresh_count() {
    let a = acme().await;
    let gw = &a.gw;
    gw.set_limits("acme", json!({ "threshold_calls": 2 })).await;
    for _ in 0..2 {
        gw.get_with("/acme/v1", &a.key)
            .await
            .assert_status(StatusCode::OK);
    }
    gw.get_with("/acme/v1", &a.key)
        .await
        .assert_refused(StatusCode::FORBIDDEN, "KEY_DISABLED");

    let r = gw.post("/v1/orgs/acme/enable", Some(PROVIDER), None).await;

    r.assert_status(StatusCode::OK);
    assert_eq!(r.json["status"], "enabled");
    assert_eq!(r.json["disabled_reason"], Value::Null);
    for _ in 0..2 {
        gw.get_with("/acme/v1", &a.key)
            .await
            .assert_status(StatusCode::OK);
    }
    gw.get_with("/acme/v1", &a.key)
        .await
        .assert_refused(StatusCode::FORBIDDEN, "KEY_DISABLED");
}

// ---------------------------------------------------------------------------
// The KeyView
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_key_page_has_every_field_of_the_contract() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;

    let r = gw.get("/v1/orgs/acme/key", Some(PROVIDER)).await;

    r.assert_status(StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = &r.json;
    assert_eq!(v["org"], "acme");
    assert_eq!(v["base_url"], format!("http://{}/acme", gw.proxy_addr));
    assert_eq!(v["key"], key);
    assert_eq!(v["status"], "enabled");
    assert_eq!(v["disabled_reason"], Value::Null);
    assert_eq!(v["subscription_expires_at"], Value::Null);
    assert_eq!(v["subscription_expired"], false);
    assert_eq!(v["last_modified_by"], "provider");
    assert_eq!(v["last_modified_on"], "2027-01-15T08:00:00Z");
    for field in ["disabled_reason", "subscription_expires_at"] {
        assert!(v.as_object().unwrap().contains_key(field), "{field}: {v}");
    }
}

#[tokio::test]
async fn base_url_is_the_public_url_then_the_org() {
    let gw = Gateway::builder()
        .public_url("https://api.example.com/gw/")
        .start()
        .await;
    gw.provision("acme").await;

    assert_eq!(
        gw.page("acme").await["base_url"],
        "https://api.example.com/gw/acme"
    );
}

#[tokio::test]
async fn last_modified_on_is_the_rfc3339_time_of_the_last_change_and_by_is_its_token() {
    let a = acme().await;
    a.gw.advance(Duration::from_secs(90));

    let r =
        a.gw.post("/v1/orgs/acme/key/regenerate", Some(&a.admin), None)
            .await;

    r.assert_status(StatusCode::OK);
    assert_eq!(r.json["last_modified_on"], "2027-01-15T08:01:30Z");
    assert_eq!(
        r.json["last_modified_on"],
        rfc3339_after(Duration::from_secs(90))
    );
    assert_eq!(r.json["last_modified_by"], "alice");
}

#[tokio::test]
async fn subscription_expired_flips_when_the_clock_passes_expires_at() {
    let a = acme().await;
    let end = rfc3339_after(Duration::from_secs(3600));

    let set =
        a.gw.put(
            "/v1/orgs/acme/subscription",
            Some(PROVIDER),
            Some(json!({ "expires_at": end })),
        )
        .await;
    a.gw.advance(Duration::from_secs(3599));
    let before_end = a.gw.page("acme").await;
    a.gw.advance(Duration::from_secs(2));
    let after_end = a.gw.page("acme").await;
    let cleared =
        a.gw.put(
            "/v1/orgs/acme/subscription",
            Some(PROVIDER),
            Some(json!({ "expires_at": null })),
        )
        .await;

    set.assert_status(StatusCode::OK);
    assert_eq!(set.json["subscription_expires_at"], end);
    assert_eq!(set.json["subscription_expired"], false);
    assert_eq!(before_end["subscription_expired"], false);
    assert_eq!(after_end["subscription_expired"], true);
    cleared.assert_status(StatusCode::OK);
    assert_eq!(cleared.json["subscription_expires_at"], Value::Null);
    assert_eq!(cleared.json["subscription_expired"], false);
}

#[tokio::test]
async fn a_subscription_end_with_an_offset_is_shown_in_utc() {
    let a = acme().await;

    let r =
        a.gw.put(
            "/v1/orgs/acme/subscription",
            Some(PROVIDER),
            Some(json!({ "expires_at": "2027-06-01T02:00:00+02:00" })),
        )
        .await;

    r.assert_status(StatusCode::OK);
    assert_eq!(r.json["subscription_expires_at"], "2027-06-01T00:00:00Z");
}

// ---------------------------------------------------------------------------
// The audit log
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_audit_lists_every_change_oldest_first_with_its_actor_action_and_detail() {
    let a = acme().await;
    let gw = &a.gw;
    let p = Some(PROVIDER);
    let t = Some(a.admin.as_str());
    let step = || gw.advance(Duration::from_secs(1));
    step();
    gw.put(
        "/v1/orgs/acme/key",
        t,
        Some(json!({ "key": "NewKey123456" })),
    )
    .await
    .assert_status(StatusCode::OK);
    step();
    gw.post("/v1/orgs/acme/key/regenerate", t, None)
        .await
        .assert_status(StatusCode::OK);
    step();
    gw.delete("/v1/orgs/acme/key", p)
        .await
        .assert_status(StatusCode::NO_CONTENT);
    step();
    let key = gw.post("/v1/orgs/acme/key", t, None).await.key();
    step();
    let end = rfc3339_after(Duration::from_secs(86_400));
    gw.put(
        "/v1/orgs/acme/subscription",
        p,
        Some(json!({ "expires_at": end })),
    )
    .await
    .assert_status(StatusCode::OK);
    step();
    gw.set_limits("acme", json!({ "threshold_calls": 1 })).await;
    step();
    gw.get_with("/acme/v1", &key)
        .await
        .assert_status(StatusCode::OK);
    gw.get_with("/acme/v1", &key)
        .await
        .assert_refused(StatusCode::FORBIDDEN, "KEY_DISABLED");
    step();
    gw.post("/v1/orgs/acme/enable", p, None)
        .await
        .assert_status(StatusCode::OK);
    step();
    gw.disable("acme", "abuse").await;

    let r = gw.get("/v1/orgs/acme/audit", Some(&a.viewer)).await;

    r.assert_status(StatusCode::OK);
    let events = r.json["events"].as_array().unwrap();
    let got: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["actor"].as_str().unwrap(), e["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            ("provider", "provision"),
            ("provider", "create_token"),
            ("provider", "create_token"),
            ("alice", "edit_key"),
            ("alice", "regenerate_key"),
            ("provider", "delete_key"),
            ("alice", "add_key"),
            ("provider", "set_subscription"),
            ("provider", "set_limits"),
            ("system", "auto_disable"),
            ("provider", "enable"),
            ("provider", "disable"),
        ]
    );
    let ats: Vec<&str> = events.iter().map(|e| e["at"].as_str().unwrap()).collect();
    assert_eq!(ats[0], "2027-01-15T08:00:00Z");
    assert_eq!(ats[3], rfc3339_after(Duration::from_secs(1)));
    assert_eq!(ats[11], rfc3339_after(Duration::from_secs(9)));
    assert!(ats.windows(2).all(|w| w[0] <= w[1]), "{ats:?}");
    for e in events {
        assert!(e["detail"].as_str().is_some_and(|d| !d.is_empty()), "{e}");
    }
    assert!(events[11]["detail"].as_str().unwrap().contains("abuse"));
}

#[tokio::test]
async fn the_audit_keeps_its_order_across_a_restart_even_when_the_clock_stands_still() {
    let mut a = acme_on(Gateway::builder().redb().start().await).await;
    for _ in 0..3 {
        a.gw.post("/v1/orgs/acme/key/regenerate", Some(&a.admin), None)
            .await
            .assert_status(StatusCode::OK);
    }
    let before = a.gw.get("/v1/orgs/acme/audit", Some(PROVIDER)).await;

    a.gw.restart().await;

    let after = a.gw.get("/v1/orgs/acme/audit", Some(PROVIDER)).await;
    after.assert_status(StatusCode::OK);
    assert_eq!(after.json, before.json);
    let actions: Vec<&str> = after.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "provision",
            "create_token",
            "create_token",
            "regenerate_key",
            "regenerate_key",
            "regenerate_key"
        ]
    );
}

#[tokio::test]
async fn the_audit_never_contains_a_key_or_a_token_that_was_issued() {
    let a = acme().await;
    let gw = &a.gw;
    let mut secrets = vec![a.key.clone(), a.admin.clone(), a.viewer.clone()];
    secrets.push("NewKey123456".to_owned());
    gw.put(
        "/v1/orgs/acme/key",
        Some(&a.admin),
        Some(json!({ "key": "NewKey123456" })),
    )
    .await
    .assert_status(StatusCode::OK);
    let r = gw
        .post("/v1/orgs/acme/key/regenerate", Some(&a.admin), None)
        .await;
    secrets.push(r.key());
    gw.delete("/v1/orgs/acme/key", Some(&a.admin))
        .await
        .assert_status(StatusCode::NO_CONTENT);
    let r = gw.post("/v1/orgs/acme/key", Some(&a.admin), None).await;
    secrets.push(r.key());
    secrets.push(gw.token("bob", "admin", "acme").await);
    gw.delete("/v1/tokens/bob", Some(PROVIDER))
        .await
        .assert_status(StatusCode::NO_CONTENT);

    let audit = gw.get("/v1/orgs/acme/audit", Some(PROVIDER)).await;

    audit.assert_status(StatusCode::OK);
    assert_eq!(audit.json["events"].as_array().unwrap().len(), 9);
    let text = audit.text();
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "{secret} in {text}");
    }
}

// ---------------------------------------------------------------------------
// Caching, and the proxy's view of key changes
// ---------------------------------------------------------------------------

#[tokio::test]
async fn every_answer_that_carries_a_key_or_a_token_is_no_store() {
    let a = acme().await;
    let gw = &a.gw;
    let p = Some(PROVIDER);
    let t = Some(a.admin.as_str());

    let answers = [
        gw.post("/v1/orgs", p, Some(json!({ "org": "globex" })))
            .await,
        gw.get("/v1/orgs", p).await,
        gw.get("/v1/orgs/acme/key", t).await,
        gw.get("/v1/orgs/acme/key", Some(&a.viewer)).await,
        gw.put(
            "/v1/orgs/acme/key",
            t,
            Some(json!({ "key": "NewKey123456" })),
        )
        .await,
        gw.post("/v1/orgs/acme/key/regenerate", t, None).await,
        gw.put("/v1/orgs/acme/limits", p, Some(json!({ "burst": 9 })))
            .await,
        gw.put(
            "/v1/orgs/acme/subscription",
            p,
            Some(json!({ "expires_at": null })),
        )
        .await,
        gw.post("/v1/orgs/acme/disable", p, Some(json!({ "reason": "x" })))
            .await,
        gw.post("/v1/orgs/acme/enable", p, None).await,
        gw.post(
            "/v1/tokens",
            p,
            Some(json!({ "name": "bob", "role": "viewer", "org": "acme" })),
        )
        .await,
    ];

    for r in &answers {
        assert!(r.status.is_success(), "{r:?}");
        assert_eq!(r.header("cache-control"), Some("no-store"), "{r:?}");
    }
}

#[tokio::test]
async fn refusals_are_no_store_too() {
    let a = acme().await;

    let answers = [
        a.gw.get("/v1/orgs/acme/key", None).await,
        a.gw.get("/v1/orgs/globex/key", Some(&a.admin)).await,
        a.gw.post("/v1/orgs/acme/key", Some(&a.admin), None).await,
    ];

    for r in &answers {
        assert!(r.status.is_client_error(), "{r:?}");
        assert_eq!(r.header("cache-control"), Some("no-store"), "{r:?}");
    }
}

#[tokio::test]
async fn a_204_answer_is_no_store_as_the_readme_promises_for_every_answer() {
    let a = acme().await;

    let answers = [
        a.gw.delete("/v1/orgs/acme/key", Some(&a.admin)).await,
        a.gw.delete("/v1/tokens/victor", Some(PROVIDER)).await,
    ];

    for r in &answers {
        r.assert_status(StatusCode::NO_CONTENT);
        assert_eq!(r.header("cache-control"), Some("no-store"), "{r:?}");
    }
}

#[tokio::test]
async fn after_each_admin_key_change_the_old_key_is_refused_at_once_and_the_new_one_accepted() {
    let a = acme().await;
    let gw = &a.gw;
    let t = Some(a.admin.as_str());
    let refused = |key: String| async move {
        gw.get_with("/acme/v1", &key)
            .await
            .assert_refused(StatusCode::UNAUTHORIZED, "INVALID_KEY");
    };
    let served = |key: String| async move {
        gw.get_with("/acme/v1", &key)
            .await
            .assert_status(StatusCode::OK);
    };

    gw.put(
        "/v1/orgs/acme/key",
        t,
        Some(json!({ "key": "NewKey123456" })),
    )
    .await
    .assert_status(StatusCode::OK);
    refused(a.key.clone()).await;
    served("NewKey123456".into()).await;

    let regenerated = gw.post("/v1/orgs/acme/key/regenerate", t, None).await.key();
    refused("NewKey123456".into()).await;
    served(regenerated.clone()).await;

    gw.delete("/v1/orgs/acme/key", t)
        .await
        .assert_status(StatusCode::NO_CONTENT);
    refused(regenerated.clone()).await;

    let added = gw.post("/v1/orgs/acme/key", t, None).await.key();
    served(added.clone()).await;
    refused(regenerated).await;
    refused(a.key.clone()).await;
}

#[tokio::test]
async fn after_each_provider_key_change_the_old_key_is_refused_at_once_and_the_new_one_accepted() {
    let a = acme().await;
    let gw = &a.gw;
    let p = Some(PROVIDER);

    let mut old = a.key.clone();
    for _ in 0..3 {
        let new = gw.post("/v1/orgs/acme/key/regenerate", p, None).await.key();
        gw.get_with("/acme/v1", &old)
            .await
            .assert_refused(StatusCode::UNAUTHORIZED, "INVALID_KEY");
        gw.get_with("/acme/v1", &new)
            .await
            .assert_status(StatusCode::OK);
        old = new;
    }
    gw.put(
        "/v1/orgs/acme/key",
        p,
        Some(json!({ "key": "Provider0001" })),
    )
    .await
    .assert_status(StatusCode::OK);
    gw.get_with("/acme/v1", &old)
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, "INVALID_KEY");
    gw.get_with("/acme/v1", "Provider0001")
        .await
        .assert_status(StatusCode::OK);
}

#[tokio::test]
async fn a_change_the_store_cannot_commit_is_500_internal_and_changes_nothing() {
    let a = acme().await;
    let before = a.gw.page("acme").await;
    a.gw.memory().fail_commits(true);

    let answers = [
        a.gw.put(
            "/v1/orgs/acme/key",
            Some(&a.admin),
            Some(json!({ "key": "NewKey123456" })),
        )
        .await,
        a.gw.post("/v1/orgs/acme/key/regenerate", Some(&a.admin), None)
            .await,
        a.gw.delete("/v1/orgs/acme/key", Some(&a.admin)).await,
        a.gw.post(
            "/v1/tokens",
            Some(PROVIDER),
            Some(json!({ "name": "bob", "role": "admin", "org": "acme" })),
        )
        .await,
    ];

    for r in &answers {
        r.assert_refused(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL");
    }
    assert_eq!(a.gw.page("acme").await, before);
    a.gw.get_with("/acme/v1", &a.key)
        .await
        .assert_status(StatusCode::OK);
    a.gw.get_with("/acme/v1", "NewKey123456")
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, "INVALID_KEY");
}

#[tokio::test]
async fn key_changes_and_tokens_acknowledged_before_a_restart_are_in_force_after_it() {
    let mut a = acme_on(Gateway::builder().redb().start().await).await;
    a.gw.put(
        "/v1/orgs/acme/key",
        Some(&a.admin),
        Some(json!({ "key": "NewKey123456" })),
    )
    .await
    .assert_status(StatusCode::OK);
    a.gw.delete("/v1/tokens/victor", Some(PROVIDER))
        .await
        .assert_status(StatusCode::NO_CONTENT);

    a.gw.restart().await;

    let page = a.gw.get("/v1/orgs/acme/key", Some(&a.admin)).await;
    page.assert_status(StatusCode::OK);
    assert_eq!(page.json["key"], "NewKey123456");
    assert_eq!(page.json["last_modified_by"], "alice");
    a.gw.get("/v1/orgs/acme/key", Some(&a.viewer))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    a.gw.get_with("/acme/v1", &a.key)
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, "INVALID_KEY");
    a.gw.get_with("/acme/v1", "NewKey123456")
        .await
        .assert_status(StatusCode::OK);
}

// ---------------------------------------------------------------------------
// The console's calls: paged org list, token list, whoami, usage
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_org_list_pages_in_id_order_with_after_and_q_and_says_what_comes_next() {
    let gw = Gateway::start().await;
    for org in ["delta", "alpha", "charlie", "bravo", "echo", "alphabet"] {
        gw.provision(org).await;
    }
    let ids = |r: &Reply| -> Vec<String> {
        r.json["orgs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["org"].as_str().unwrap().to_owned())
            .collect()
    };

    let first = gw.get("/v1/orgs?limit=2", Some(PROVIDER)).await;
    first.assert_status(StatusCode::OK);
    assert_eq!(ids(&first), ["alpha", "alphabet"]);
    assert_eq!(first.json["next"], "alphabet");
    let second = gw
        .get("/v1/orgs?limit=2&after=alphabet", Some(PROVIDER))
        .await;
    assert_eq!(ids(&second), ["bravo", "charlie"]);
    let last = gw
        .get("/v1/orgs?limit=2&after=charlie", Some(PROVIDER))
        .await;
    assert_eq!(ids(&last), ["delta", "echo"]);
    assert_eq!(last.json["next"], Value::Null);
    // The default page holds them all; q filters by a part of the id.
    let all = gw.get("/v1/orgs", Some(PROVIDER)).await;
    assert_eq!(ids(&all).len(), 6);
    assert_eq!(all.json["next"], Value::Null);
    let alphas = gw.get("/v1/orgs?q=lpha", Some(PROVIDER)).await;
    assert_eq!(ids(&alphas), ["alpha", "alphabet"]);
    let none = gw.get("/v1/orgs?q=zulu", Some(PROVIDER)).await;
    assert_eq!(ids(&none), Vec::<String>::new());

    for bad in [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=ten",
        "color=red",
        "q=%zz",
    ] {
        gw.get(&format!("/v1/orgs?{bad}"), Some(PROVIDER))
            .await
            .assert_refused(StatusCode::BAD_REQUEST, "BAD_REQUEST");
    }
}

#[tokio::test]
async fn the_org_list_filters_by_status_with_q_and_paging_alike() {
    let gw = Gateway::start().await;
    for org in ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"] {
        gw.provision(org).await;
    }
    for org in ["bravo", "delta", "foxtrot"] {
        gw.disable(org, "abuse").await;
    }
    let ids = |r: &Reply| -> Vec<String> {
        r.assert_status(StatusCode::OK);
        r.json["orgs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["org"].as_str().unwrap().to_owned())
            .collect()
    };

    let disabled = gw.get("/v1/orgs?status=disabled", Some(PROVIDER)).await;
    assert_eq!(ids(&disabled), ["bravo", "delta", "foxtrot"]);
    assert!(disabled.json["orgs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["status"] == "disabled"));
    let enabled = gw.get("/v1/orgs?status=enabled", Some(PROVIDER)).await;
    assert_eq!(ids(&enabled), ["alpha", "charlie", "echo"]);

    // Paging walks the filtered list: `next` is the last id shown.
    let first = gw
        .get("/v1/orgs?status=disabled&limit=2", Some(PROVIDER))
        .await;
    assert_eq!(ids(&first), ["bravo", "delta"]);
    assert_eq!(first.json["next"], "delta");
    let second = gw
        .get(
            "/v1/orgs?status=disabled&limit=2&after=delta",
            Some(PROVIDER),
        )
        .await;
    assert_eq!(ids(&second), ["foxtrot"]);
    assert_eq!(second.json["next"], Value::Null);
    // With q, both must hold.
    let both = gw.get("/v1/orgs?status=enabled&q=ar", Some(PROVIDER)).await;
    assert_eq!(ids(&both), ["charlie"]);

    // An enable moves the org back into the enabled list.
    gw.post("/v1/orgs/bravo/enable", Some(PROVIDER), None)
        .await
        .assert_status(StatusCode::OK);
    let enabled = gw.get("/v1/orgs?status=enabled", Some(PROVIDER)).await;
    assert_eq!(ids(&enabled), ["alpha", "bravo", "charlie", "echo"]);

    for bad in ["status=", "status=Disabled", "status=expired"] {
        gw.get(&format!("/v1/orgs?{bad}"), Some(PROVIDER))
            .await
            .assert_refused(StatusCode::BAD_REQUEST, "BAD_REQUEST");
    }
}

#[tokio::test]
async fn the_token_list_shows_names_roles_and_orgs_but_never_a_token_or_digest() {
    let gw = Gateway::start().await;
    gw.provision("acme").await;
    let secret = gw.token("zed", "viewer", "acme").await;
    gw.token("amy", "admin", "acme").await;

    let r = gw.get("/v1/tokens", Some(PROVIDER)).await;
    r.assert_status(StatusCode::OK);
    let tokens = r.json["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2);
    assert_eq!(tokens[0]["name"], "amy");
    assert_eq!(tokens[0]["role"], "admin");
    assert_eq!(tokens[1]["name"], "zed");
    assert_eq!(tokens[1]["role"], "viewer");
    assert_eq!(tokens[1]["org"], "acme");
    assert!(tokens[1]["created_at"].as_str().is_some());
    assert_eq!(tokens[1].as_object().unwrap().len(), 4);
    assert!(!r.text().contains(&secret));
    gw.get("/v1/tokens", Some(&secret))
        .await
        .assert_refused(StatusCode::FORBIDDEN, "FORBIDDEN");
}

#[tokio::test]
async fn whoami_names_the_presented_token() {
    let gw = Gateway::start().await;
    gw.provision("acme").await;
    let admin = gw.token("amy", "admin", "acme").await;
    let viewer = gw.token("zed", "viewer", "acme").await;

    let me = gw.get("/v1/whoami", Some(PROVIDER)).await;
    me.assert_status(StatusCode::OK);
    assert_eq!(
        me.json,
        json!({ "name": "provider", "role": "provider", "org": null })
    );
    let me = gw.get("/v1/whoami", Some(&admin)).await;
    assert_eq!(
        me.json,
        json!({ "name": "amy", "role": "admin", "org": "acme" })
    );
    let me = gw.get("/v1/whoami", Some(&viewer)).await;
    assert_eq!(
        me.json,
        json!({ "name": "zed", "role": "viewer", "org": "acme" })
    );
    gw.get("/v1/whoami", None)
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
}

#[tokio::test]
async fn usage_shows_the_window_the_last_use_and_the_rate_refusals() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;
    let viewer = gw.token("zed", "viewer", "acme").await;

    let fresh = gw.get("/v1/orgs/acme/usage", Some(&viewer)).await;
    fresh.assert_status(StatusCode::OK);
    assert_eq!(fresh.json["calls_in_window"], 0);
    assert_eq!(fresh.json["window_started_at"], Value::Null);
    assert_eq!(fresh.json["last_used_at"], Value::Null);
    assert_eq!(fresh.json["rate_limited_in_window"], 0);

    gw.set_limits("acme", json!({ "rate_per_sec": 1, "burst": 2 }))
        .await;
    let statuses: Vec<StatusCode> = {
        let mut all = Vec::new();
        for _ in 0..5 {
            all.push(gw.get_with("/acme/v1", &key).await.status);
        }
        all
    };
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(refused >= 2, "{statuses:?}");

    let u = gw.get("/v1/orgs/acme/usage", Some(&viewer)).await;
    u.assert_status(StatusCode::OK);
    assert_eq!(u.json["calls_in_window"], 5);
    assert_eq!(u.json["threshold_calls"], 100_000);
    assert_eq!(u.json["rate_limited_in_window"], refused);
    let started = u.json["window_started_at"].as_str().unwrap();
    let ends = u.json["window_ends_at"].as_str().unwrap();
    assert!(started < ends, "{started} {ends}");
    assert!(u.json["last_used_at"].as_str().is_some());
    assert_eq!(u.json.as_object().unwrap().len(), 6);

    // Another org's token may not read it.
    gw.provision("globex").await;
    let other = gw.token("gus", "viewer", "globex").await;
    gw.get("/v1/orgs/acme/usage", Some(&other))
        .await
        .assert_refused(StatusCode::FORBIDDEN, "FORBIDDEN");
}
