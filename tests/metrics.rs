//! `GET /metrics` on the admin listener: Prometheus's text format, read back
//! with a real parser (the `prometheus-parse` crate, and `promtool check
//! metrics` where Debian's `prometheus` package put it), its counts matching
//! the traffic each test sent.

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};

use http::{Method, StatusCode};
use prometheus_parse::{Scrape, Value};
use support::{Gateway, PROVIDER};

/// Scrapes `gw`'s metrics without a token; checks them with promtool when it
/// is installed (and under CI, where scripts/test installs it, insists).
async fn scrape(gw: &Gateway) -> Scrape {
    let r = gw.get("/metrics", None).await;
    r.assert_status(StatusCode::OK);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = r.text();
    promtool(&text);
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("the text format parses")
}

fn promtool(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(_) if std::env::var_os("CI").is_none() => {
            eprintln!("note: promtool is not installed; checked with prometheus-parse only");
            return;
        }
        Err(e) => panic!("promtool is not installed ({e}); CI runs it (scripts/test installs it)"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused the metrics:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A counter or gauge's value by `name` and one label, or none.
fn value(s: &Scrape, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name} is {other:?}"),
        })
}

/// A histogram's observation count (its `+Inf` bucket).
fn observations(s: &Scrape, name: &str) -> f64 {
    let h = s
        .samples
        .iter()
        .find(|x| x.metric == name)
        .unwrap_or_else(|| panic!("no histogram {name}"));
    match &h.value {
        Value::Histogram(buckets) => buckets
            .iter()
            .find(|b| b.less_than.is_infinite())
            .map(|b| b.count)
            .unwrap_or_else(|| panic!("{name} has no +Inf bucket")),
        other => panic!("{name} is {other:?}"),
    }
}

#[tokio::test]
async fn the_counts_match_the_traffic_sent_and_promtool_accepts_the_text() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;
    gw.provision("globex").await;
    gw.post("/v1/orgs/acme/key/regenerate", Some(PROVIDER), None)
        .await
        .assert_status(StatusCode::OK);
    let key = {
        let _ = key;
        gw.page("acme").await["key"].as_str().unwrap().to_owned()
    };

    let mut sent: HashMap<&str, u32> = HashMap::new();
    for _ in 0..7 {
        gw.get_with("/acme/v1/users", &key)
            .await
            .assert_status(StatusCode::OK);
        *sent.entry("forwarded").or_default() += 1;
    }
    for _ in 0..3 {
        gw.call(Method::GET, "/acme/v1/users", None)
            .await
            .assert_refused(StatusCode::UNAUTHORIZED, "MISSING_KEY");
        *sent.entry("missing_key").or_default() += 1;
    }
    for _ in 0..2 {
        gw.get_with("/globex/v1/users", &key)
            .await
            .assert_refused(StatusCode::UNAUTHORIZED, "INVALID_KEY");
        *sent.entry("invalid_key").or_default() += 1;
    }
    // Probes are not proxied requests: not counted.
    gw.call(Method::GET, "/_keygate/ready", None)
        .await
        .assert_status(StatusCode::OK);

    let s = scrape(&gw).await;

    for outcome in keygate::metrics::OUTCOMES {
        let want = f64::from(sent.get(outcome).copied().unwrap_or(0));
        assert_eq!(
            value(&s, "keygate_requests_total", Some(("outcome", outcome))),
            Some(want),
            "{outcome}"
        );
    }
    assert_eq!(observations(&s, "keygate_request_duration_seconds"), 12.0);
    // Only the forwarded ones reached the upstream.
    assert_eq!(observations(&s, "keygate_upstream_duration_seconds"), 7.0);
    assert_eq!(value(&s, "keygate_orgs", None), Some(2.0));
    for (action, n) in [
        ("provision", 2.0),
        ("regenerate_key", 1.0),
        ("edit_key", 0.0),
    ] {
        assert_eq!(
            value(&s, "keygate_key_changes_total", Some(("action", action))),
            Some(n),
            "{action}"
        );
    }
    assert_eq!(
        observations(&s, "keygate_store_commit_duration_seconds"),
        3.0
    );
    // This scrape's own connection is open on the admin listener.
    assert!(value(&s, "keygate_connections_open", Some(("listener", "admin"))).unwrap() >= 1.0);
    assert!(value(&s, "keygate_connections_open", Some(("listener", "proxy"))).is_some());
    assert!(value(&s, "keygate_upstream_connections_open", None).unwrap() >= 1.0);
    // A single node has no lease.
    assert_eq!(value(&s, "keygate_cluster_lease", None), None);
}

#[tokio::test]
async fn no_label_names_an_org_or_carries_a_key() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme-secret-org").await;
    gw.get_with("/acme-secret-org/v1", &key).await;
    gw.call(Method::GET, "/acme-secret-org/v1", None).await;

    let text = gw.get("/metrics", None).await.text();

    assert!(!text.contains("acme-secret-org"), "{text}");
    assert!(!text.contains(&key), "{text}");
}
