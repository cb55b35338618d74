//! CONTRACT section 3 over real HTTP: every row of the proxy's table, and what a
//! forwarded request and its answer keep and lose, through keygate's proxy
//! listener to a recording upstream. (`tests/gate.rs` covers the same rules
//! finely at the Layer, without sockets.)

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use serde_json::json;
use support::{refusing_addr, send_with, Answer, Gateway, Upstream, PROVIDER};

/// `n` bytes of every value, in a pattern that a shifted or truncated copy
/// would not match.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test]
async fn a_request_with_the_right_key_is_forwarded_and_answered_by_the_upstream() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;

    let r = gw.get_with("/acme/v1/users", &key).await;

    r.assert_status(StatusCode::OK);
    assert_eq!(r.body, "upstream");
    assert_eq!(gw.upstream.only().uri, "/v1/users");
}

#[tokio::test]
async fn no_key_header_is_401_missing_key() {
    let gw = Gateway::start().await;
    gw.provision("acme").await;

    let r = gw.call(Method::GET, "/acme/v1/users", None).await;

    r.assert_refused(StatusCode::UNAUTHORIZED, "MISSING_KEY");
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn an_empty_key_header_is_401_missing_key() {
    let gw = Gateway::start().await;
    gw.provision("acme").await;

    for empty in ["", "   "] {
        let r = gw.call(Method::GET, "/acme/v1/users", Some(empty)).await;
        r.assert_refused(StatusCode::UNAUTHORIZED, "MISSING_KEY");
    }
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn a_key_header_sent_twice_is_401_invalid_key_even_when_both_are_right() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;

    let req = gw
        .proxy_request(Method::GET, "/acme/v1/users")
        .header("x-api-key", &key)
        .header("x-api-key", &key)
        .body(Full::default())
        .unwrap();
    let r = gw.send(req).await;

    r.assert_refused(StatusCode::UNAUTHORIZED, "INVALID_KEY");
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn unknown_and_malformed_orgs_an_org_without_a_key_and_a_wrong_key_get_one_identical_answer()
{
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;
    gw.provision("keyless").await;
    gw.delete("/v1/orgs/keyless/key", Some(PROVIDER))
        .await
        .assert_status(StatusCode::NO_CONTENT);
    let wrong = if key == "AAAAAAAAAAAA" {
        "BBBBBBBBBBBB"
    } else {
        "AAAAAAAAAAAA"
    };

    let answers = [
        gw.get_with("/nobody/v1/users", &key).await,
        gw.get_with("/Acme/v1/users", &key).await,
        gw.get_with("/-acme/v1/users", &key).await,
        gw.get_with(&format!("/{}/v1", "a".repeat(65)), &key).await,
        gw.get_with("/", &key).await,
        gw.get_with("/keyless/v1/users", &key).await,
        gw.get_with("/acme/v1/users", wrong).await,
        gw.get_with("/acme/v1/users", "short").await,
        gw.get_with("/acme/v1/users", &format!("{key}x")).await,
    ];

    let first = &answers[0];
    first.assert_refused(StatusCode::UNAUTHORIZED, "INVALID_KEY");
    for r in &answers {
        assert_eq!(r.status, first.status);
        assert_eq!(r.body, first.body);
        assert_eq!(
            r.headers.get("content-type"),
            first.headers.get("content-type")
        );
        assert_eq!(
            r.headers.get("content-length"),
            first.headers.get("content-length")
        );
    }
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn another_orgs_key_is_401_invalid_key() {
    let gw = Gateway::start().await;
    gw.provision("acme").await;
    let other = gw.provision("globex").await;

    let r = gw.get_with("/acme/v1/users", &other).await;

    r.assert_refused(StatusCode::UNAUTHORIZED, "INVALID_KEY");
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn a_disabled_key_is_403_key_disabled() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;
    gw.disable("acme", "abuse").await;

    let r = gw.get_with("/acme/v1/users", &key).await;

    r.assert_refused(StatusCode::FORBIDDEN, "KEY_DISABLED");
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn the_call_past_the_threshold_is_403_key_disabled_and_the_key_page_shows_it_disabled_by_the_system(
) {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;
    gw.set_limits("acme", json!({ "threshold_calls": 3 })).await;

    for _ in 0..3 {
        gw.get_with("/acme/v1", &key)
            .await
            .assert_status(StatusCode::OK);
    }
    let crossing = gw.get_with("/acme/v1", &key).await;
    let after = gw.get_with("/acme/v1", &key).await;

    crossing.assert_refused(StatusCode::FORBIDDEN, "KEY_DISABLED");
    after.assert_refused(StatusCode::FORBIDDEN, "KEY_DISABLED");
    assert_eq!(gw.upstream.count(), 3);
    let page = gw.page("acme").await;
    assert_eq!(page["status"], "disabled");
    assert_eq!(page["disabled_reason"], "call threshold exceeded");
    assert_eq!(page["last_modified_by"], "system");
}

#[tokio::test]
async fn a_threshold_window_that_has_passed_no_longer_counts() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;
    gw.set_limits(
        "acme",
        json!({ "threshold_calls": 2, "threshold_window_secs": 60 }),
    )
    .await;

    for _ in 0..2 {
        gw.get_with("/acme/v1", &key)
            .await
            .assert_status(StatusCode::OK);
    }
    gw.advance(Duration::from_secs(60));
    for _ in 0..2 {
        gw.get_with("/acme/v1", &key)
            .await
            .assert_status(StatusCode::OK);
    }

    assert_eq!(gw.page("acme").await["status"], "enabled");
}

#[tokio::test]
async fn an_expired_subscription_refuses_post_and_put_with_403_subscription_expired() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;
    gw.expire("acme").await;

    for method in [Method::POST, Method::PUT] {
        let r = gw.call(method, "/acme/v1/users", Some(&key)).await;
        r.assert_refused(StatusCode::FORBIDDEN, "SUBSCRIPTION_EXPIRED");
    }
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn an_expired_subscription_refuses_a_get_that_names_post_or_put_in_a_method_override_header()
{
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;
    gw.expire("acme").await;

    for header in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        for method in ["POST", "PUT", "post"] {
            let req = gw
                .proxy_request(Method::GET, "/acme/v1/users")
                .header("x-api-key", &key)
                .header(header, method)
                .body(Full::default())
                .unwrap();
            let r = gw.send(req).await;
            r.assert_refused(StatusCode::FORBIDDEN, "SUBSCRIPTION_EXPIRED");
        }
    }
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn an_expired_subscription_still_serves_reads() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;
    gw.expire("acme").await;

    for method in [Method::GET, Method::HEAD] {
        let r = gw.call(method, "/acme/v1/users", Some(&key)).await;
        r.assert_status(StatusCode::OK);
    }
    assert_eq!(gw.upstream.count(), 2);
}

#[tokio::test]
async fn over_the_rate_is_429_with_retry_after_and_the_ratelimit_headers() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;
    gw.set_limits("acme", json!({ "rate_per_sec": 2, "burst": 2 }))
        .await;

    for _ in 0..2 {
        gw.get_with("/acme/v1", &key)
            .await
            .assert_status(StatusCode::OK);
    }
    let r = gw.get_with("/acme/v1", &key).await;

    r.assert_refused(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
    let whole_secs = |name: &str| -> u64 {
        r.header(name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", r.headers))
            .parse()
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    assert!(whole_secs("retry-after") >= 1);
    assert_eq!(whole_secs("x-ratelimit-limit"), 2);
    assert_eq!(whole_secs("x-ratelimit-remaining"), 0);
    whole_secs("x-ratelimit-reset");
    assert_eq!(gw.upstream.count(), 2);
}

#[tokio::test]
async fn a_rate_limited_org_is_served_again_once_the_clock_has_moved_on() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;
    gw.set_limits("acme", json!({ "rate_per_sec": 1, "burst": 1 }))
        .await;
    gw.get_with("/acme/v1", &key)
        .await
        .assert_status(StatusCode::OK);
    let refused = gw.get_with("/acme/v1", &key).await;
    refused.assert_status(StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();

    gw.advance(Duration::from_secs(retry_after));

    gw.get_with("/acme/v1", &key)
        .await
        .assert_status(StatusCode::OK);
}

#[tokio::test]
async fn an_upstream_that_refuses_connections_is_502_upstream_unavailable() {
    let gw = Gateway::builder()
        .upstream(refusing_addr().await)
        .start()
        .await;
    let key = gw.provision("acme").await;

    let r = gw.get_with("/acme/v1/users", &key).await;

    r.assert_refused(StatusCode::BAD_GATEWAY, "UPSTREAM_UNAVAILABLE");
}

#[tokio::test]
async fn an_upstream_that_does_not_answer_in_time_is_504_upstream_timeout() {
    let gw = Gateway::builder().upstream_timeout_ms(200).start().await;
    let key = gw.provision("acme").await;
    gw.upstream.answer_with(Answer {
        delay: Some(Duration::from_secs(60)),
        ..Answer::default()
    });

    let r = gw.get_with("/acme/v1/users", &key).await;

    r.assert_refused(StatusCode::GATEWAY_TIMEOUT, "UPSTREAM_TIMEOUT");
}

#[tokio::test]
async fn on_a_kept_alive_connection_each_request_has_its_own_upstream_timeout() {
    // keygate sets one timer per client connection, lazily: these requests,
    // one after another on the client's kept-alive connection, each end by
    // their own deadline, not an earlier one's.
    let gw = Gateway::builder().upstream_timeout_ms(1000).start().await;
    let key = gw.provision("acme").await;
    let answer_after = |delay: Duration| {
        gw.upstream.answer_with(Answer {
            delay: Some(delay),
            ..Answer::default()
        });
    };
    gw.get_with("/acme/v1/a", &key)
        .await
        .assert_status(StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Answered after the first request's deadline, within its own.
    answer_after(Duration::from_millis(600));
    gw.get_with("/acme/v1/b", &key)
        .await
        .assert_status(StatusCode::OK);
    answer_after(Duration::from_secs(60));
    gw.get_with("/acme/v1/c", &key)
        .await
        .assert_refused(StatusCode::GATEWAY_TIMEOUT, "UPSTREAM_TIMEOUT");
    answer_after(Duration::ZERO);
    gw.get_with("/acme/v1/d", &key)
        .await
        .assert_status(StatusCode::OK);
}

#[tokio::test]
async fn the_org_segment_is_stripped_and_the_query_kept() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;

    gw.get_with("/acme/v1/users?x=1&name=a%20b", &key)
        .await
        .assert_status(StatusCode::OK);
    gw.get_with("/acme", &key)
        .await
        .assert_status(StatusCode::OK);
    gw.get_with("/acme?x=1", &key)
        .await
        .assert_status(StatusCode::OK);

    let uris: Vec<String> = gw.upstream.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["/v1/users?x=1&name=a%20b", "/", "/?x=1"]);
}

#[tokio::test]
async fn an_upstream_base_path_comes_before_the_forwarded_path() {
    let gw = Gateway::builder().upstream_base("/api").start().await;
    let key = gw.provision("acme").await;

    gw.get_with("/acme/v1/users?x=1", &key)
        .await
        .assert_status(StatusCode::OK);
    gw.get_with("/acme", &key)
        .await
        .assert_status(StatusCode::OK);

    let uris: Vec<String> = gw.upstream.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["/api/v1/users?x=1", "/api/"]);
}

#[tokio::test]
async fn a_request_in_absolute_form_still_goes_to_the_configured_upstream() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;

    let answer = gw
        .raw(&format!(
            "GET http://169.254.169.254/acme/v1?x=1 HTTP/1.1\r\n\
             host: 169.254.169.254\r\n\
             x-api-key: {key}\r\n\
             connection: close\r\n\r\n"
        ))
        .await;

    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(gw.upstream.only().uri, "/v1?x=1");
}

#[tokio::test]
async fn the_key_header_is_removed_and_x_org_id_replaces_the_clients_own() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;

    let req = gw
        .proxy_request(Method::GET, "/acme/v1/users")
        .header("x-api-key", &key)
        .header("x-org-id", "globex")
        .header("x-org-id", "initech")
        .body(Full::default())
        .unwrap();
    gw.send(req).await.assert_status(StatusCode::OK);

    let seen = gw.upstream.only();
    assert!(
        seen.headers.get("x-api-key").is_none(),
        "{:?}",
        seen.headers
    );
    let org_ids: Vec<_> = seen.headers.get_all("x-org-id").iter().collect();
    assert_eq!(org_ids, ["acme"]);
}

#[tokio::test]
async fn x_forwarded_for_and_x_forwarded_proto_are_set() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;

    gw.get_with("/acme/v1", &key)
        .await
        .assert_status(StatusCode::OK);

    let seen = gw.upstream.only();
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn a_clients_x_forwarded_for_is_kept_with_its_address_appended() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;

    let req = gw
        .proxy_request(Method::GET, "/acme/v1")
        .header("x-api-key", &key)
        .header("x-forwarded-for", "203.0.113.7")
        .body(Full::default())
        .unwrap();
    gw.send(req).await.assert_status(StatusCode::OK);

    assert_eq!(
        gw.upstream.only().headers["x-forwarded-for"],
        "203.0.113.7, 127.0.0.1"
    );
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_not_forwarded_and_the_others_are() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;

    let req = gw
        .proxy_request(Method::GET, "/acme/v1")
        .header("x-api-key", &key)
        .header("connection", "x-hop-secret, keep-alive")
        .header("x-hop-secret", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("upgrade", "websocket")
        .header("x-custom", "kept")
        .header("accept", "application/json")
        .body(Full::default())
        .unwrap();
    gw.send(req).await.assert_status(StatusCode::OK);

    let seen = gw.upstream.only();
    for hop in ["x-hop-secret", "keep-alive", "te", "upgrade"] {
        assert!(
            seen.headers.get(hop).is_none(),
            "{hop} in {:?}",
            seen.headers
        );
    }
    if let Some(connection) = seen.headers.get("connection") {
        let connection = connection.to_str().unwrap();
        assert!(
            !connection.contains("x-hop-secret"),
            "connection: {connection}"
        );
    }
    assert_eq!(seen.headers["x-custom"], "kept");
    assert_eq!(seen.headers["accept"], "application/json");
}

#[tokio::test]
async fn a_connection_header_naming_x_org_id_cannot_remove_the_org_keygate_sets() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;

    let req = gw
        .proxy_request(Method::GET, "/acme/v1")
        .header("x-api-key", &key)
        .header("connection", "x-org-id")
        .body(Full::default())
        .unwrap();
    gw.send(req).await.assert_status(StatusCode::OK);

    let seen = gw.upstream.only();
    let org_ids: Vec<_> = seen.headers.get_all("x-org-id").iter().collect();
    assert_eq!(org_ids, ["acme"], "{:?}", seen.headers);
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_not_passed_back() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;
    gw.upstream.answer_with(Answer {
        headers: vec![
            ("connection", "x-up-hop"),
            ("x-up-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("x-up-kept", "1"),
        ],
        ..Answer::default()
    });

    let r = gw.get_with("/acme/v1", &key).await;

    r.assert_status(StatusCode::OK);
    assert!(r.headers.get("x-up-hop").is_none(), "{:?}", r.headers);
    assert!(r.headers.get("keep-alive").is_none(), "{:?}", r.headers);
    assert_eq!(r.header("x-up-kept"), Some("1"));
}

#[tokio::test]
async fn a_one_mebibyte_request_body_reaches_the_upstream_byte_for_byte() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;
    let body = Bytes::from(pattern(1024 * 1024 + 7));

    let req = gw
        .proxy_request(Method::POST, "/acme/upload")
        .header("x-api-key", &key)
        .header("content-type", "application/octet-stream")
        .body(Full::new(body.clone()))
        .unwrap();
    gw.send(req).await.assert_status(StatusCode::OK);

    let seen = gw.upstream.only();
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.headers["content-type"], "application/octet-stream");
    assert!(
        seen.body == body,
        "the upstream got {} bytes",
        seen.body.len()
    );
}

#[tokio::test]
async fn a_large_response_body_reaches_the_client_byte_for_byte() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;
    let body = Bytes::from(pattern(2 * 1024 * 1024 + 13));
    gw.upstream.answer_with(Answer {
        body: body.clone(),
        ..Answer::default()
    });

    let r = gw.get_with("/acme/download", &key).await;

    r.assert_status(StatusCode::OK);
    assert!(r.body == body, "the client got {} bytes", r.body.len());
}

#[tokio::test]
async fn the_upstreams_status_and_headers_pass_back_unchanged() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;
    gw.upstream.answer_with(Answer {
        status: StatusCode::IM_A_TEAPOT,
        headers: vec![
            ("content-type", "application/vnd.acme+json"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("x-upstream", "yes"),
            ("cache-control", "max-age=60"),
        ],
        body: Bytes::from_static(br#"{"short":"and stout"}"#),
        delay: None,
    });

    let r = gw.call(Method::PATCH, "/acme/v1/pot", Some(&key)).await;

    assert_eq!(r.status, StatusCode::IM_A_TEAPOT);
    assert_eq!(r.header("content-type"), Some("application/vnd.acme+json"));
    let cookies: Vec<_> = r.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(r.header("x-upstream"), Some("yes"));
    assert_eq!(r.header("cache-control"), Some("max-age=60"));
    assert_eq!(r.body, r#"{"short":"and stout"}"#);
    assert_eq!(gw.upstream.only().method, Method::PATCH);
}

#[tokio::test]
async fn an_upstream_error_status_is_passed_back_not_replaced() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;
    gw.upstream.answer_with(Answer {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: Bytes::from_static(b"down for maintenance"),
        ..Answer::default()
    });

    let r = gw.get_with("/acme/v1", &key).await;

    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body, "down for maintenance");
}

#[tokio::test]
async fn in_header_mode_the_org_comes_from_x_org_id_and_the_path_is_unchanged() {
    let gw = Gateway::builder().header_mode().start().await;
    let key = gw.provision("acme").await;

    let req = |org: &'static str| {
        gw.proxy_request(Method::GET, "/acme/v1/users?x=1")
            .header("x-api-key", &key)
            .header("x-org-id", org)
            .body(Full::default())
            .unwrap()
    };
    gw.send(req("acme")).await.assert_status(StatusCode::OK);
    gw.send(req("globex"))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, "INVALID_KEY");
    gw.call(Method::GET, "/acme/v1/users?x=1", Some(&key))
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, "INVALID_KEY");

    let seen = gw.upstream.only();
    assert_eq!(seen.uri, "/acme/v1/users?x=1");
    assert_eq!(seen.headers["x-org-id"], "acme");
    assert!(seen.headers.get("x-api-key").is_none());
}

#[tokio::test]
async fn no_refusal_ever_reaches_the_upstream() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;
    let disabled = gw.provision("disabled").await;
    gw.disable("disabled", "abuse").await;
    let expired = gw.provision("expired").await;
    gw.expire("expired").await;
    let limited = gw.provision("limited").await;
    gw.set_limits("limited", json!({ "rate_per_sec": 1, "burst": 1 }))
        .await;
    gw.get_with("/limited/v1", &limited)
        .await
        .assert_status(StatusCode::OK);
    let before = gw.upstream.count();

    let refusals = [
        gw.call(Method::GET, "/acme/v1", None).await,
        gw.get_with("/acme/v1", "").await,
        gw.get_with("/acme/v1", "WrongKey1234").await,
        gw.get_with("/nobody/v1", &key).await,
        gw.get_with("/disabled/v1", &disabled).await,
        gw.call(Method::POST, "/expired/v1", Some(&expired)).await,
        gw.get_with("/limited/v1", &limited).await,
    ];

    for r in &refusals {
        assert!(r.status.is_client_error(), "{r:?}");
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    assert_eq!(gw.upstream.count(), before);
}

#[tokio::test]
async fn a_refusal_is_answered_even_to_a_client_sending_a_large_body() {
    let gw = Gateway::start().await;
    gw.provision("acme").await;

    let req = gw
        .proxy_request(Method::POST, "/acme/upload")
        .header("x-api-key", "WrongKey1234")
        .body(Full::new(Bytes::from(pattern(2 * 1024 * 1024))))
        .unwrap();
    let r = gw.send(req).await;

    r.assert_refused(StatusCode::UNAUTHORIZED, "INVALID_KEY");
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_concurrent_clients_at_most_threshold_calls_reach_the_upstream() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;
    gw.set_limits("acme", json!({ "threshold_calls": 10 }))
        .await;

    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..60 {
        let client = gw.client();
        let req = gw
            .proxy_request(Method::GET, "/acme/v1")
            .header("x-api-key", &key)
            .body(Full::default())
            .unwrap();
        calls.spawn(async move { send_with(&client, req).await.status });
    }
    let mut statuses = Vec::new();
    while let Some(status) = calls.join_next().await {
        statuses.push(status.unwrap());
    }

    let served = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::FORBIDDEN)
        .count();
    assert_eq!((served, refused), (10, 50), "{statuses:?}");
    assert_eq!(gw.upstream.count(), 10);
    assert_eq!(gw.page("acme").await["status"], "disabled");
}

#[tokio::test]
async fn a_key_disabled_over_its_threshold_stays_disabled_after_a_restart() {
    let mut gw = Gateway::builder().redb().start().await;
    let key = gw.provision("acme").await;
    gw.set_limits("acme", json!({ "threshold_calls": 1 })).await;
    gw.get_with("/acme/v1", &key)
        .await
        .assert_status(StatusCode::OK);
    gw.get_with("/acme/v1", &key)
        .await
        .assert_refused(StatusCode::FORBIDDEN, "KEY_DISABLED");

    gw.restart().await;

    gw.get_with("/acme/v1", &key)
        .await
        .assert_refused(StatusCode::FORBIDDEN, "KEY_DISABLED");
    let page = gw.page("acme").await;
    assert_eq!(page["disabled_reason"], "call threshold exceeded");
    assert_eq!(page["last_modified_by"], "system");
    assert_eq!(gw.upstream.count(), 1);
}

#[tokio::test]
async fn upstream_connections_are_kept_for_the_client_connection_and_handed_on_when_it_ends() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;

    // One client connection (the test client pools one), three requests.
    for _ in 0..3 {
        gw.get_with("/acme/v1/users", &key)
            .await
            .assert_status(StatusCode::OK);
    }
    assert_eq!(gw.upstream.count(), 3);
    assert_eq!(
        gw.upstream.connections(),
        1,
        "one upstream connection for one client connection"
    );

    // New client connections, one after another: each takes over the idle one.
    for _ in 0..3 {
        let r = gw
            .raw(&format!(
                "GET /acme/v1/users HTTP/1.1\r\nHost: gw\r\nx-api-key: {key}\r\nConnection: close\r\n\r\n"
            ))
            .await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        // The next client's first request may arrive before this client's
        // connection task has handed the upstream connection back.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(gw.upstream.count(), 6);
    assert!(
        gw.upstream.connections() <= 2,
        "upstream connections: {}",
        gw.upstream.connections()
    );
}

#[tokio::test]
async fn an_upstream_that_closes_every_connection_still_gets_every_request_once() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;
    gw.upstream.answer_with(Answer {
        headers: vec![("content-type", "text/plain"), ("connection", "close")],
        ..Answer::default()
    });

    for i in 0..5 {
        let r = gw.get_with(&format!("/acme/v1/{i}"), &key).await;
        r.assert_status(StatusCode::OK);
        assert_eq!(r.body, "upstream");
    }
    let uris: Vec<String> = gw.upstream.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["/v1/0", "/v1/1", "/v1/2", "/v1/3", "/v1/4"]);
    assert_eq!(gw.upstream.connections(), 5);
}

#[tokio::test]
async fn concurrent_requests_of_one_client_connection_do_not_wait_for_each_other() {
    // HTTP/2 clients send many requests on one connection; here, one slow
    // request must not hold up a second one sent while it is in flight.
    let slow = Upstream::start().await;
    slow.answer_with(Answer {
        delay: Some(Duration::from_millis(500)),
        ..Answer::default()
    });
    let gw = Gateway::builder().upstream(slow.addr).start().await;
    let key = gw.provision("acme").await;
    // HTTP/2 with prior knowledge: both requests on one client connection.
    let tcp = tokio::net::TcpStream::connect(gw.proxy_addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let get = |path: &'static str| {
        let mut sender = sender.clone();
        let req = http::Request::builder()
            .uri(format!("http://gw{path}"))
            .header("x-api-key", &key)
            .body(Full::new(Bytes::new()))
            .unwrap();
        async move {
            let res = sender.send_request(req).await.unwrap();
            (res.version(), res.status())
        }
    };
    let (a, b) = tokio::join!(get("/acme/v1/a"), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        get("/acme/v1/b").await
    });
    assert_eq!(a, (http::Version::HTTP_2, StatusCode::OK));
    assert_eq!(b, (http::Version::HTTP_2, StatusCode::OK));
    // The second request went out while the first was in flight, so on a
    // connection of its own: two upstream connections.
    assert_eq!(slow.count(), 2);
    assert_eq!(slow.connections(), 2);
}

#[tokio::test]
async fn the_ready_probe_answers_200_without_a_key_and_reaches_no_upstream() {
    let gw = Gateway::start().await;

    for method in [Method::GET, Method::HEAD] {
        let r = gw.call(method.clone(), "/_keygate/ready", None).await;
        r.assert_status(StatusCode::OK);
        assert_eq!(r.header("content-type"), Some("application/json"));
        if method == Method::GET {
            assert_eq!(r.json, json!({ "status": "ready" }));
        }
    }
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn the_ready_probe_is_keygates_in_header_mode_too_and_other_paths_still_need_a_key() {
    let gw = Gateway::builder().header_mode().start().await;

    gw.call(Method::GET, "/_keygate/ready", None)
        .await
        .assert_status(StatusCode::OK);
    gw.call(Method::GET, "/_keygate/ready/more", None)
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, "MISSING_KEY");
    gw.call(Method::POST, "/_keygate/ready", None)
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, "MISSING_KEY");
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn a_clients_request_id_is_kept_forwarded_and_returned() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;
    let id = "client-id_42:/.=+~!";

    let req = gw
        .proxy_request(Method::GET, "/acme/v1/users")
        .header("x-api-key", &key)
        .header("x-request-id", id)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = gw.send(req).await;

    r.assert_status(StatusCode::OK);
    assert_eq!(r.header("x-request-id"), Some(id));
    let seen = gw.upstream.only();
    let upstream: Vec<_> = seen.headers.get_all("x-request-id").iter().collect();
    assert_eq!(upstream, [id]);
}

#[tokio::test]
async fn a_missing_or_unacceptable_request_id_is_replaced_by_a_fresh_one_upstream_and_back() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;
    let too_long = "a".repeat(129);
    let mut answered = Vec::new();
    for sent in [None, Some(too_long.as_str()), Some("has space"), Some("")] {
        let mut req = gw
            .proxy_request(Method::GET, "/acme/v1/users")
            .header("x-api-key", &key);
        if let Some(v) = sent {
            req = req.header("x-request-id", v);
        }
        let r = gw.send(req.body(Full::new(Bytes::new())).unwrap()).await;
        r.assert_status(StatusCode::OK);
        let id = r.header("x-request-id").expect("an id").to_owned();
        assert!(Some(id.as_str()) != sent, "{sent:?} kept");
        assert!(
            !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| (0x21..=0x7e).contains(&b)),
            "{id:?}"
        );
        answered.push(id);
    }
    let seen: Vec<String> = gw
        .upstream
        .seen()
        .iter()
        .map(|s| s.headers["x-request-id"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, answered);
    let mut unique = answered.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), answered.len(), "{answered:?}");
}

#[tokio::test]
async fn refusals_and_the_ready_probe_carry_the_request_id_too() {
    let gw = Gateway::start().await;
    gw.provision("acme").await;

    for (path, key, status) in [
        ("/acme/v1/users", None, StatusCode::UNAUTHORIZED),
        (
            "/acme/v1/users",
            Some("WrongKey1234"),
            StatusCode::UNAUTHORIZED,
        ),
        ("/_keygate/ready", None, StatusCode::OK),
    ] {
        let mut req = gw
            .proxy_request(Method::GET, path)
            .header("x-request-id", "probe-7");
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        let r = gw.send(req.body(Full::new(Bytes::new())).unwrap()).await;
        r.assert_status(status);
        assert_eq!(r.header("x-request-id"), Some("probe-7"), "{path}");
        let fresh = gw.call(Method::GET, path, key).await;
        assert!(fresh
            .header("x-request-id")
            .is_some_and(|v| v.starts_with("kg-")));
    }
    assert_eq!(gw.upstream.count(), 0);
}
