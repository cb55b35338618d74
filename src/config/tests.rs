//! The config's tests: defaults, every key's refusals, the example file.

use super::*;
use crate::timeout::BodyTimeouts;

const ZEROS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const EXAMPLE: &str = include_str!("../../config/keygate.toml");

/// The two required keys, as root-level dotted keys so that tests can add
/// more dotted keys after them.
fn with(extra: &str) -> String {
    format!(
        "proxy.upstream = \"http://127.0.0.1:9000\"\n\
         admin.provider_token_sha256 = \"{ZEROS}\"\n{extra}"
    )
}

fn with_upstream(url: &str) -> String {
    format!("proxy.upstream = \"{url}\"\nadmin.provider_token_sha256 = \"{ZEROS}\"\n")
}

fn error(text: &str) -> String {
    Config::from_toml(text).unwrap_err().to_string()
}

#[test]
fn defaults_match_the_contract() {
    let c = Config::from_toml(&with("")).unwrap();
    assert_eq!(c.proxy.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.proxy.upstream(), "http://127.0.0.1:9000/");
    assert_eq!(c.proxy.key_header, "x-api-key");
    assert_eq!(c.proxy.org_from, OrgSource::Path);
    assert_eq!(c.proxy.public_url, "http://127.0.0.1:8080");
    assert_eq!(c.proxy.blocked_when_expired, [Method::POST, Method::PUT]);
    assert_eq!(c.proxy.connect_timeout, Duration::from_millis(2_000));
    assert_eq!(c.proxy.upstream_timeout, Duration::from_millis(30_000));
    assert_eq!(c.proxy.upstream_read_timeout, Duration::from_millis(60_000));
    assert_eq!(c.proxy.pool_idle_timeout, Duration::from_secs(90));
    assert_eq!(c.proxy.pool_max_idle_per_host, 256);
    assert_eq!(
        c.proxy.connections,
        ConnectionLimits {
            header_read_timeout: Duration::from_millis(10_000),
            max_connections: 10_000,
            max_header_bytes: 65_536,
            idle_timeout: Duration::from_millis(60_000),
            body: BodyTimeouts {
                between_reads: Duration::from_millis(60_000),
                total: None,
            },
        }
    );
    assert_eq!(c.proxy.tls, None);
    assert_eq!(c.admin.listen, "127.0.0.1:8081".parse().unwrap());
    assert_eq!(
        c.admin.provider_token,
        TokenDigest::from_hex(ZEROS).unwrap()
    );
    assert_eq!(
        c.admin.connections,
        ConnectionLimits {
            header_read_timeout: Duration::from_millis(10_000),
            max_connections: 1_024,
            max_header_bytes: 65_536,
            idle_timeout: Duration::from_millis(60_000),
            body: BodyTimeouts {
                between_reads: Duration::from_millis(10_000),
                total: Some(Duration::from_millis(10_000)),
            },
        }
    );
    assert_eq!(c.admin.tls, None);
    assert_eq!(c.store.path, PathBuf::from("data/keygate.redb"));
    assert_eq!(c.store.count_flush, Duration::from_millis(1_000));
    assert_eq!(
        c.limits,
        Limits {
            rate_per_sec: 100,
            burst: 100,
            threshold_calls: 100_000,
            threshold_window_secs: 3600,
        }
    );
    let gate = GateConfig::default();
    assert_eq!(c.gate().org_from, gate.org_from);
    assert_eq!(c.gate().key_header, gate.key_header);
    assert_eq!(c.gate().blocked_when_expired, gate.blocked_when_expired);
}

#[test]
fn the_example_file_parses_and_validates() {
    let c = Config::from_toml(EXAMPLE).unwrap();
    assert_eq!(c, Config::from_toml(&with("")).unwrap());
}

/// Every key the raw config has (tables included), dotted: a raw config with
/// every optional key set, written out.
fn known_keys() -> Vec<String> {
    let mut raw = RawConfig::default();
    raw.proxy.upstream = Some(String::new().into());
    raw.proxy.upstream_ca_path = Some(String::new());
    raw.proxy.public_url = Some(String::new());
    raw.admin.provider_token_sha256 = Some(String::new());
    let both = RawTls {
        cert_path: Some(String::new()),
        key_path: Some(String::new()),
    };
    raw.proxy.tls = Some(both.clone());
    raw.admin.tls = Some(both);
    raw.cluster = Some(RawCluster {
        redis_url: Some(String::new()),
        ..RawCluster::default()
    });
    raw.session = Some(RawSession::default());
    doc_keys(&toml::Table::try_from(&raw).unwrap())
}

/// Every key below the sections of `doc` (tables included), dotted.
fn doc_keys(doc: &toml::Table) -> Vec<String> {
    fn walk(path: &str, table: &toml::Table, out: &mut Vec<String>) {
        for (key, value) in table {
            let dotted = format!("{path}.{key}");
            if let Some(inner) = value.as_table() {
                walk(&dotted, inner, out);
            }
            out.push(dotted);
        }
    }
    let mut out = Vec::new();
    for (section, value) in doc {
        walk(section, value.as_table().unwrap(), &mut out);
    }
    out.sort();
    out
}

#[test]
fn the_example_file_sets_every_known_key() {
    // Except inside the TLS tables: their files must exist, so the example
    // shows those keys commented out.
    let doc: toml::Table = EXAMPLE.parse().unwrap();
    let set = doc_keys(&doc);
    for key in known_keys() {
        // And `[cluster]`, whose presence turns cluster mode on: the
        // example shows it commented out.
        if key.ends_with(".tls.cert_path")
            || key.ends_with(".tls.key_path")
            || key == "proxy.upstream_ca_path"
            || key == "cluster"
            || key.starts_with("cluster.")
            || key == "session"
            || key.starts_with("session.")
        {
            continue;
        }
        assert!(set.contains(&key), "{key}");
    }
}

#[test]
fn a_missing_upstream_is_reported_as_required() {
    let text = format!("[admin]\nprovider_token_sha256 = \"{ZEROS}\"");
    assert_eq!(error(&text), "config: proxy.upstream: required");
}

#[test]
fn a_missing_provider_token_is_reported_as_required() {
    assert_eq!(
        error("[proxy]\nupstream = \"http://127.0.0.1:9000\""),
        "config: admin.provider_token_sha256: required"
    );
}

#[test]
fn an_unknown_key_is_reported_with_its_dotted_path() {
    assert_eq!(
        error(&with("proxy.upstreem = \"http://x\"")),
        "config: proxy.upstreem: unknown key"
    );
}

#[test]
fn an_unknown_section_is_reported_by_name() {
    assert_eq!(
        error(&with("[proxxy]\nlisten = 1")),
        "config: proxxy: unknown key"
    );
}

#[test]
fn control_characters_in_an_echoed_key_or_path_are_escaped_onto_one_line() {
    assert_eq!(error("\"a\\nb\" = 1"), "config: a\\nb: unknown key");
    assert_eq!(
        error(&with("proxy.\"x\\ry\" = 1")),
        "config: proxy.x\\ry: unknown key"
    );
    let shown = error(&with(
        "proxy.tls.cert_path = \"no\\nsuch\"\nproxy.tls.key_path = \"k\"",
    ));
    assert!(
        shown.starts_with("config: proxy.tls.cert_path: "),
        "{shown}"
    );
    assert!(shown.contains("no\\nsuch"), "{shown}");
    assert!(!shown.contains(['\n', '\r']), "{shown:?}");
}

#[test]
fn a_wrong_type_names_the_key() {
    assert_eq!(
        error(&with("limits.burst = \"100\"")),
        "config: limits.burst: expected an integer"
    );
    assert_eq!(
        error(&with("proxy.listen = 8080")),
        "config: proxy.listen: expected a string"
    );
    assert_eq!(
        error(&with("proxy.blocked_when_expired = \"POST\"")),
        "config: proxy.blocked_when_expired: expected an array of strings"
    );
}

#[test]
fn a_section_that_is_not_a_table_is_refused() {
    assert_eq!(error("limits = 5"), "config: limits: expected a table");
}

#[test]
fn a_syntax_error_names_its_line_on_one_line() {
    let e = error("[proxy]\nupstream = \"http://127.0.0.1:9000\"\nlisten = \n");
    assert!(e.starts_with("config: line 3: "), "{e}");
    assert!(!e.contains('\n'), "{e}");
}

#[test]
fn a_duplicate_key_is_a_syntax_error() {
    let e = error("[proxy]\nlisten = \"a\"\nlisten = \"b\"\n");
    assert!(e.starts_with("config: line 3: "), "{e}");
}

#[test]
fn an_unreadable_file_names_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.toml");
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("config: {}: ", path.display())),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
}

#[test]
fn load_reads_and_validates_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keygate.toml");
    std::fs::write(&path, EXAMPLE).unwrap();
    let c = Config::load_with_env(&path, |_| None).unwrap();
    assert_eq!(c.proxy.upstream(), "http://127.0.0.1:9000/");
}

#[test]
fn out_of_range_limits_name_their_key() {
    assert_eq!(
        error(&with("limits.burst = 0")),
        "config: limits.burst: must be between 1 and 10000000"
    );
    assert_eq!(
        error(&with("limits.rate_per_sec = -1")),
        "config: limits.rate_per_sec: must be between 1 and 10000000"
    );
    assert_eq!(
        error(&with("limits.threshold_calls = 99999999999")),
        "config: limits.threshold_calls: must be between 1 and 4000000000"
    );
}

#[test]
fn a_listen_that_is_not_a_socket_address_is_refused() {
    assert_eq!(
        error(&with("proxy.listen = \"localhost\"")),
        "config: proxy.listen: not a socket address (host:port)"
    );
    assert_eq!(
        error(&with("admin.listen = \"127.0.0.1\"")),
        "config: admin.listen: not a socket address (host:port)"
    );
}

#[test]
fn an_upstream_that_is_not_a_url_is_refused() {
    for bad in [
        "not a url",
        "127.0.0.1:9000",
        "/api",
        "http://",
        "http://h:99999",
        "http://h:",
        "http://h:0",
    ] {
        assert_eq!(
            error(&with_upstream(bad)),
            "config: proxy.upstream: not an http URL",
            "{bad}"
        );
    }
}

#[test]
fn https_upstreams_are_accepted_and_ftp_ones_refused() {
    let c = Config::from_toml(&with_upstream("https://api.example.com/v1/")).unwrap();
    assert_eq!(c.proxy.upstream(), "https://api.example.com/v1");
    assert_eq!(c.proxy.upstreams, std::slice::from_ref(c.proxy.upstream()));
    assert_eq!(c.proxy.upstream_tls, None);
    assert_eq!(
        error(&with_upstream("ftp://127.0.0.1:21")),
        "config: proxy.upstream: not an http URL"
    );
}

#[test]
fn the_upstream_may_be_a_list_of_one_service() {
    let text = format!(
        "proxy.upstream = [\"http://10.0.0.1:9000/api\", \"http://10.0.0.2:9000/api/\"]\n\
         admin.provider_token_sha256 = \"{ZEROS}\"\n"
    );
    let c = Config::from_toml(&text).unwrap();
    assert_eq!(
        c.proxy.upstreams,
        ["http://10.0.0.1:9000/api", "http://10.0.0.2:9000/api"]
    );
    assert_eq!(c.proxy.upstream(), "http://10.0.0.1:9000/api");
    let list = |items: &str| {
        error(&format!(
            "proxy.upstream = [{items}]\nadmin.provider_token_sha256 = \"{ZEROS}\"\n"
        ))
    };
    assert_eq!(
        list(""),
        "config: proxy.upstream: an empty list; name at least one URL"
    );
    assert_eq!(
        list(r#""http://a:1", "https://b:1""#),
        "config: proxy.upstream: every URL of the list must have the same scheme and base path"
    );
    assert_eq!(
        list(r#""http://a:1/x", "http://b:1/y""#),
        "config: proxy.upstream: every URL of the list must have the same scheme and base path"
    );
    assert_eq!(
        list(r#""http://a:1", "http://a:1/""#),
        "config: proxy.upstream: http://a:1/ is listed twice"
    );
    assert_eq!(
        list(r#""ftp://a""#),
        "config: proxy.upstream: not an http URL"
    );
    assert_eq!(
        list("1"),
        "config: proxy.upstream: expected an array of strings"
    );
    assert_eq!(
        error(&format!(
            "proxy.upstream = 1\nadmin.provider_token_sha256 = \"{ZEROS}\"\n"
        )),
        "config: proxy.upstream: expected a string or an array of strings"
    );
}

#[test]
fn upstream_keys_have_their_defaults_and_ranges() {
    let c = Config::from_toml(&with("")).unwrap();
    assert_eq!(c.proxy.max_upstream_connections, 1024);
    assert_eq!(c.proxy.upstream_fail_timeout, Duration::from_secs(10));
    assert!(!c.proxy.preserve_host);
    let c = Config::from_toml(&with(
        "proxy.preserve_host = true\nproxy.max_upstream_connections = 2\n\
         proxy.upstream_fail_timeout_secs = 1",
    ))
    .unwrap();
    assert!(c.proxy.preserve_host);
    assert_eq!(c.proxy.max_upstream_connections, 2);
    assert_eq!(c.proxy.upstream_fail_timeout, Duration::from_secs(1));
    assert_eq!(
        error(&with("proxy.max_upstream_connections = 0")),
        "config: proxy.max_upstream_connections: must be between 1 and 1000000"
    );
    assert_eq!(
        error(&with("proxy.upstream_fail_timeout_secs = 0")),
        "config: proxy.upstream_fail_timeout_secs: must be between 1 and 3600"
    );
    assert_eq!(
        error(&with("proxy.preserve_host = \"yes\"")),
        "config: proxy.preserve_host: expected true or false"
    );
}

#[test]
fn a_bad_or_missing_upstream_ca_file_is_a_one_line_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-ca.pem");
    let e = error(&with(&format!(
        "proxy.upstream_ca_path = {:?}",
        missing.display().to_string()
    )));
    assert!(
        e.starts_with("config: proxy.upstream_ca_path: cannot read "),
        "{e}"
    );
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let e = error(&with(&format!(
        "proxy.upstream_ca_path = {:?}",
        junk.display().to_string()
    )));
    assert!(e.starts_with("config: proxy.upstream_ca_path: "), "{e}");
    assert!(e.ends_with("no PEM certificate in it"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    assert_eq!(
        error(&with("proxy.upstream_ca_path = \"\"")),
        "config: proxy.upstream_ca_path: must not be empty"
    );

    let ca = dir.path().join("ca.pem");
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(&ca, made.cert.pem()).unwrap();
    let c = Config::from_toml(&with(&format!(
        "proxy.upstream_ca_path = {:?}",
        ca.display().to_string()
    )))
    .unwrap();
    assert_eq!(
        c.proxy.upstream_tls.as_ref().and_then(|t| t.ca_path()),
        Some(ca.as_path())
    );
}

#[test]
fn a_base_path_in_the_upstream_is_kept() {
    let c = Config::from_toml(&with_upstream("http://127.0.0.1:9000/api/v2")).unwrap();
    assert_eq!(c.proxy.upstream(), "http://127.0.0.1:9000/api/v2");
    assert_eq!(c.proxy.upstream().path(), "/api/v2");
}

#[test]
fn the_upstream_base_path_loses_its_trailing_slash() {
    let c = Config::from_toml(&with_upstream("http://127.0.0.1:9000/api/")).unwrap();
    assert_eq!(c.proxy.upstream().path(), "/api");
    let c = Config::from_toml(&with_upstream("http://127.0.0.1:9000/")).unwrap();
    assert_eq!(c.proxy.upstream().path(), "/");
    let c = Config::from_toml(&with_upstream("http://[::1]:9000")).unwrap();
    assert_eq!(c.proxy.upstream().port_u16(), Some(9000));
}

#[test]
fn an_upstream_with_a_query_fragment_or_credentials_is_refused() {
    assert_eq!(
        error(&with_upstream("http://127.0.0.1:9000/api?x=1")),
        "config: proxy.upstream: must not have a query"
    );
    assert_eq!(
        error(&with_upstream("http://127.0.0.1:9000/api#top")),
        "config: proxy.upstream: must not have a fragment"
    );
    assert_eq!(
        error(&with_upstream("http://user:pw@127.0.0.1:9000")),
        "config: proxy.upstream: must not contain credentials"
    );
}

#[test]
fn a_provider_token_that_is_not_lowercase_hex_is_refused() {
    let upper = format!(
        "proxy.upstream = \"http://127.0.0.1:9000\"\nadmin.provider_token_sha256 = \"{}\"",
        "A".repeat(64)
    );
    assert_eq!(
        error(&upper),
        format!("config: admin.provider_token_sha256: {NOT_A_DIGEST}")
    );
}

#[test]
fn the_environment_token_overrides_the_file() {
    let digest = TokenDigest::of("secret");
    let c = Config::from_toml_with_env(&with(""), |name| {
        (name == PROVIDER_TOKEN_ENV).then(|| digest.to_hex())
    })
    .unwrap();
    assert_eq!(c.admin.provider_token, digest);
}

#[test]
fn the_environment_token_supplies_a_missing_one() {
    let digest = TokenDigest::of("secret");
    let text = "[proxy]\nupstream = \"http://127.0.0.1:9000\"";
    let c = Config::from_toml_with_env(text, |_| Some(digest.to_hex())).unwrap();
    assert_eq!(c.admin.provider_token, digest);
}

#[test]
fn an_empty_environment_token_is_ignored() {
    let c = Config::from_toml_with_env(&with(""), |_| Some(String::new())).unwrap();
    assert_eq!(
        c.admin.provider_token,
        TokenDigest::from_hex(ZEROS).unwrap()
    );
}

#[test]
fn a_malformed_environment_token_names_the_variable() {
    let e = Config::from_toml_with_env(&with(""), |_| Some("nope".to_owned()))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!("config: KEYGATE_PROVIDER_TOKEN_SHA256: {NOT_A_DIGEST}")
    );
}

#[test]
fn header_mode_builds_org_source_header() {
    let c = Config::from_toml(&with(
        "proxy.org_from = \"header\"\nproxy.org_header = \"X-Tenant\"",
    ))
    .unwrap();
    assert_eq!(
        c.proxy.org_from,
        OrgSource::Header(HeaderName::from_static("x-tenant"))
    );
    assert_eq!(c.gate().org_from, c.proxy.org_from);
}

#[test]
fn header_mode_refuses_an_org_header_equal_to_the_key_header() {
    assert_eq!(
        error(&with(
            "proxy.org_from = \"header\"\nproxy.org_header = \"X-API-KEY\""
        )),
        "config: proxy.org_header: must differ from proxy.key_header"
    );
}

#[test]
fn org_from_must_be_path_or_header() {
    assert_eq!(
        error(&with("proxy.org_from = \"query\"")),
        r#"config: proxy.org_from: must be "path" or "header""#
    );
}

#[test]
fn header_names_are_case_insensitive_and_must_be_valid() {
    let c = Config::from_toml(&with("proxy.key_header = \"X-Key\"")).unwrap();
    assert_eq!(c.proxy.key_header, "x-key");
    assert_eq!(
        error(&with("proxy.key_header = \"x key\"")),
        "config: proxy.key_header: not a valid header name"
    );
    assert_eq!(
        error(&with("proxy.org_header = \"\"")),
        "config: proxy.org_header: not a valid header name"
    );
}

#[test]
fn reserved_headers_cannot_carry_the_key() {
    for name in ["x-org-id", "Host", "connection", "transfer-encoding", "te"] {
        assert_eq!(
            error(&with(&format!("proxy.key_header = \"{name}\""))),
            "config: proxy.key_header: must not be x-org-id, host, content-length or a hop-by-hop header",
            "{name}"
        );
    }
}

#[test]
fn the_public_url_defaults_to_http_listen() {
    let c = Config::from_toml(&with("proxy.listen = \"[::1]:9090\"")).unwrap();
    assert_eq!(c.proxy.public_url, "http://[::1]:9090");
}

#[test]
fn the_public_url_loses_its_trailing_slash() {
    let c = Config::from_toml(&with("proxy.public_url = \"https://api.example.com/gw/\"")).unwrap();
    assert_eq!(c.proxy.public_url, "https://api.example.com/gw");
}

#[test]
fn a_public_url_that_is_not_http_is_refused() {
    for bad in ["api.example.com", "ftp://api.example.com", "http://"] {
        assert_eq!(
            error(&with(&format!("proxy.public_url = \"{bad}\""))),
            "config: proxy.public_url: not an http or https URL",
            "{bad}"
        );
    }
}

#[test]
fn blocked_methods_are_uppercased_and_deduplicated() {
    let c = Config::from_toml(&with(
        "proxy.blocked_when_expired = [\"delete\", \"PATCH\", \"Delete\"]",
    ))
    .unwrap();
    assert_eq!(
        c.proxy.blocked_when_expired,
        [Method::DELETE, Method::PATCH]
    );
    let c = Config::from_toml(&with("proxy.blocked_when_expired = []")).unwrap();
    assert!(c.proxy.blocked_when_expired.is_empty());
}

#[test]
fn a_method_that_is_not_a_token_is_refused() {
    assert_eq!(
        error(&with("proxy.blocked_when_expired = [\"PO ST\"]")),
        "config: proxy.blocked_when_expired: \"PO ST\" is not an HTTP method"
    );
}

#[test]
fn zero_timeouts_and_sizes_are_refused() {
    for key in [
        "proxy.connect_timeout_ms",
        "proxy.upstream_timeout_ms",
        "proxy.pool_idle_timeout_secs",
        "proxy.pool_max_idle_per_host",
        "proxy.header_read_timeout_ms",
        "proxy.max_connections",
        "proxy.idle_timeout_ms",
        "admin.header_read_timeout_ms",
        "admin.max_connections",
        "admin.idle_timeout_ms",
    ] {
        let e = error(&with(&format!("{key} = 0")));
        assert!(
            e.starts_with(&format!("config: {key}: must be between 1 and ")),
            "{e}"
        );
    }
}

#[test]
fn an_upstream_timeout_shorter_than_the_connect_timeout_is_refused() {
    assert_eq!(
        error(&with(
            "proxy.connect_timeout_ms = 2000\nproxy.upstream_timeout_ms = 1999"
        )),
        "config: proxy.upstream_timeout_ms: must be at least proxy.connect_timeout_ms"
    );
    let c = Config::from_toml(&with(
        "proxy.connect_timeout_ms = 2000\nproxy.upstream_timeout_ms = 2000",
    ))
    .unwrap();
    assert_eq!(c.proxy.upstream_timeout, c.proxy.connect_timeout);
}

#[test]
fn body_timeouts_are_one_hour_at_most_and_not_zero() {
    for key in [
        "proxy.body_read_timeout_ms",
        "proxy.upstream_read_timeout_ms",
        "admin.body_read_timeout_ms",
        "admin.body_timeout_ms",
    ] {
        for bad in ["0", "-1", "3600001"] {
            let e = error(&with(&format!("{key} = {bad}")));
            assert_eq!(e, format!("config: {key}: must be between 1 and 3600000"));
        }
    }
}

#[test]
fn connection_limits_are_read_per_listener() {
    let c = Config::from_toml(&with(
        "proxy.header_read_timeout_ms = 300\n\
         proxy.max_connections = 2\n\
         proxy.max_header_bytes = 8192\n\
         proxy.idle_timeout_ms = 200\n\
         proxy.body_read_timeout_ms = 250\n\
         admin.header_read_timeout_ms = 400\n\
         admin.max_connections = 3\n\
         admin.max_header_bytes = 1048576\n\
         admin.idle_timeout_ms = 500\n\
         admin.body_read_timeout_ms = 600\n\
         admin.body_timeout_ms = 700\n",
    ))
    .unwrap();
    assert_eq!(
        c.proxy.connections,
        ConnectionLimits {
            header_read_timeout: Duration::from_millis(300),
            max_connections: 2,
            max_header_bytes: 8192,
            idle_timeout: Duration::from_millis(200),
            body: BodyTimeouts {
                between_reads: Duration::from_millis(250),
                total: None,
            },
        }
    );
    assert_eq!(
        c.admin.connections,
        ConnectionLimits {
            header_read_timeout: Duration::from_millis(400),
            max_connections: 3,
            max_header_bytes: 1_048_576,
            idle_timeout: Duration::from_millis(500),
            body: BodyTimeouts {
                between_reads: Duration::from_millis(600),
                total: Some(Duration::from_millis(700)),
            },
        }
    );
}

#[test]
fn max_header_bytes_must_fit_hypers_buffer_limits() {
    for section in ["proxy", "admin"] {
        for bad in ["8191", "0", "1048577"] {
            assert_eq!(
                error(&with(&format!("{section}.max_header_bytes = {bad}"))),
                format!("config: {section}.max_header_bytes: must be between 8192 and 1048576")
            );
        }
    }
}

/// A self-signed certificate and its key, written to `dir`.
fn cert_files(dir: &Path, prefix: &str) -> (String, String) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.join(format!("{prefix}-cert.pem"));
    let key = dir.join(format!("{prefix}-key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    (cert.display().to_string(), key.display().to_string())
}

#[test]
fn tls_tables_load_their_files_and_make_the_default_public_url_https() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = cert_files(dir.path(), "a");
    let c = Config::from_toml(&with(&format!(
        "[proxy.tls]\ncert_path = {cert:?}\nkey_path = {key:?}\n\
         [admin.tls]\ncert_path = {cert:?}\nkey_path = {key:?}\n"
    )))
    .unwrap();
    let tls = c.proxy.tls.as_ref().unwrap();
    assert_eq!(tls.cert_path(), Path::new(&cert));
    assert_eq!(tls.key_path(), Path::new(&key));
    assert_eq!(c.admin.tls, c.proxy.tls);
    assert_eq!(c.proxy.public_url, "https://127.0.0.1:8080");
}

#[test]
fn an_empty_tls_table_means_plain_http() {
    let c = Config::from_toml(&with(
        "[proxy.tls]
[admin.tls]
",
    ))
    .unwrap();
    assert_eq!(c.proxy.tls, None);
    assert_eq!(c.admin.tls, None);
    assert_eq!(c.proxy.public_url, "http://127.0.0.1:8080");
}

#[test]
fn tls_needs_both_files_or_neither() {
    assert_eq!(
        error(&with("proxy.tls.cert_path = \"c.pem\"")),
        "config: proxy.tls.key_path: required when proxy.tls.cert_path is set"
    );
    assert_eq!(
        error(&with("admin.tls.key_path = \"k.pem\"")),
        "config: admin.tls.cert_path: required when admin.tls.key_path is set"
    );
    assert_eq!(
        error(&with(
            "admin.tls.key_path = \"k.pem\"\nadmin.tls.cert_path = \"\""
        )),
        "config: admin.tls.cert_path: must not be empty"
    );
}

#[test]
fn unknown_or_mistyped_tls_keys_are_named_in_full() {
    assert_eq!(
        error(&with("proxy.tls.cert = \"c.pem\"")),
        "config: proxy.tls.cert: unknown key"
    );
    assert_eq!(
        error(&with("admin.tls.key_path = 1")),
        "config: admin.tls.key_path: expected a string"
    );
    assert_eq!(
        error(&with("proxy.tls = \"on\"")),
        "config: proxy.tls: expected a table"
    );
}

#[test]
fn bad_tls_files_name_the_key_of_the_file_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = cert_files(dir.path(), "a");
    let (_, other_key) = cert_files(dir.path(), "b");
    let missing = dir.path().join("missing.pem").display().to_string();
    let config = |section: &str, cert: &str, key: &str| {
        with(&format!(
            "{section}.tls.cert_path = {cert:?}\n{section}.tls.key_path = {key:?}\n"
        ))
    };
    let e = error(&config("proxy", &missing, &key));
    assert!(
        e.starts_with(&format!(
            "config: proxy.tls.cert_path: cannot read {missing}: "
        )),
        "{e}"
    );
    let e = error(&config("admin", &key, &key));
    assert!(
        e.starts_with("config: admin.tls.cert_path: ") && e.ends_with("no PEM certificate in it"),
        "{e}"
    );
    let e = error(&config("proxy", &cert, &cert));
    assert!(
        e.starts_with("config: proxy.tls.key_path: ") && e.ends_with("no PEM private key in it"),
        "{e}"
    );
    let e = error(&config("admin", &cert, &other_key));
    assert!(
        e.starts_with("config: admin.tls.key_path: ")
            && e.contains("not the private key of the certificate"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
}

#[test]
fn absurd_timeouts_and_sizes_are_refused() {
    assert_eq!(
        error(&with("proxy.upstream_timeout_ms = 3600001")),
        "config: proxy.upstream_timeout_ms: must be between 1 and 3600000"
    );
    for key in [
        "connect_timeout_ms",
        "max_upstream_connections",
        "upstream_fail_timeout_secs",
        "pool_idle_timeout_secs",
        "pool_max_idle_per_host",
        "header_read_timeout_ms",
        "max_connections",
        "idle_timeout_ms",
    ] {
        let e = error(&with(&format!("proxy.{key} = 9223372036854775807")));
        assert!(
            e.starts_with(&format!("config: proxy.{key}: must be between 1 and ")),
            "{e}"
        );
    }
}

#[test]
fn a_count_flush_period_outside_its_range_is_refused() {
    for v in ["9", "3600001", "-1"] {
        assert_eq!(
            error(&with(&format!("store.count_flush_ms = {v}"))),
            "config: store.count_flush_ms: must be between 10 and 3600000"
        );
    }
}

#[test]
fn an_empty_store_path_is_refused() {
    assert_eq!(
        error(&with("store.path = \"\"")),
        "config: store.path: must not be empty"
    );
}

#[test]
fn the_access_log_is_on_without_queries_by_default_and_each_switch_is_a_bool() {
    let c = Config::from_toml(&with("")).unwrap();
    assert!(c.proxy.access_log);
    assert!(!c.proxy.access_log_query);
    let c = Config::from_toml(&with(
        "proxy.access_log = false\nproxy.access_log_query = true",
    ))
    .unwrap();
    assert!(!c.proxy.access_log);
    assert!(c.proxy.access_log_query);
    assert_eq!(
        error(&with("proxy.access_log = \"no\"")),
        "config: proxy.access_log: expected true or false"
    );
}

#[test]
fn the_shipped_all_zeros_digest_is_known_as_the_placeholder() {
    assert!(Config::from_toml(&with(""))
        .unwrap()
        .admin
        .has_placeholder_token());
    let real = format!(
        "proxy.upstream = \"http://127.0.0.1:9000\"\nadmin.provider_token_sha256 = \"{}\"",
        TokenDigest::of("a token").to_hex()
    );
    assert!(!Config::from_toml(&real)
        .unwrap()
        .admin
        .has_placeholder_token());
}

#[test]
fn without_a_cluster_section_keygate_is_one_node() {
    assert_eq!(Config::from_toml(&with("")).unwrap().cluster, None);
}

#[test]
fn a_cluster_section_has_the_contracts_defaults() {
    let c =
        Config::from_toml(&with("[cluster]\nredis_url = \"redis://127.0.0.1:6379/0\"")).unwrap();
    assert_eq!(
        c.cluster,
        Some(ClusterConfig {
            redis_url: "redis://127.0.0.1:6379/0".to_owned(),
            name: "keygate".to_owned(),
            lease: Duration::from_millis(3_000),
            allow_unsafe_durability: false,
        })
    );
}

#[test]
fn every_cluster_key_is_read() {
    let c = Config::from_toml(&with(
        "[cluster]\nredis_url = \"redis://:pw@redis.internal:6380/2\"\n\
         name = \"eu-1.prod_A\"\nlease_ms = 1000\nallow_unsafe_durability = true",
    ))
    .unwrap()
    .cluster
    .unwrap();
    assert_eq!(c.redis_url, "redis://:pw@redis.internal:6380/2");
    assert_eq!(c.name, "eu-1.prod_A");
    assert_eq!(c.lease, Duration::from_millis(1_000));
    assert!(c.allow_unsafe_durability);
}

#[test]
fn a_cluster_section_without_a_redis_url_is_refused_naming_the_key() {
    let e = error(&with("[cluster]\nname = \"x\""));
    assert!(e.starts_with("config: cluster.redis_url: required"), "{e}");
    assert!(!e.contains('\n'));
}

#[test]
fn each_accepted_redis_url_shape_passes() {
    for url in [
        "redis://127.0.0.1:6379/0",
        "redis://127.0.0.1",
        "redis://localhost:6379",
        "redis://user:secret@10.0.0.5:6379/15",
        "redis://:secret@[::1]:6379/0",
        "redis://redis.example.com:6380/0?protocol=resp3",
        "unix:///run/redis/redis.sock",
        "redis+unix:///run/redis/redis.sock?db=1",
    ] {
        let text = with(&format!("[cluster]\nredis_url = \"{url}\""));
        assert!(Config::from_toml(&text).is_ok(), "{url}: {}", error(&text));
    }
}

#[test]
fn a_tls_redis_url_is_refused_saying_tls_is_not_built_in() {
    let e = error(&with(
        "[cluster]\nredis_url = \"rediss://:hunter2hunter2@redis.example.com:6380/0\"",
    ));
    assert!(e.starts_with("config: cluster.redis_url: rediss://"), "{e}");
    assert!(e.contains("not built in"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
}

#[test]
fn a_bad_redis_url_is_refused_naming_the_key_and_never_its_password() {
    for url in [
        "http://:hunter2hunter2@127.0.0.1:6379",
        "hunter2hunter2",
        "redis://:hunter2hunter2@",
        "redis://:hunter2hunter2@127.0.0.1:99999/0",
        "redis://:hunter2hunter2@127.0.0.1:0/0",
        "redis://:hunter2hunter2@127.0.0.1:6379/zero",
        "redis://:hunter2hunter2@127.0.0.1:6379/0#frag",
        "unix://relative/hunter2hunter2.sock",
        "",
    ] {
        let e = error(&with(&format!("[cluster]\nredis_url = \"{url}\"")));
        assert!(e.starts_with("config: cluster.redis_url: "), "{url}: {e}");
        assert!(!e.contains("hunter2"), "{url}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
}

#[test]
fn a_cluster_name_outside_its_alphabet_or_length_is_refused() {
    let long = "n".repeat(65);
    for name in ["", "has space", "a/b", "k:1", "é", long.as_str()] {
        let e = error(&with(&format!(
            "[cluster]\nredis_url = \"redis://127.0.0.1\"\nname = \"{name}\""
        )));
        assert_eq!(
            e, "config: cluster.name: must be 1 to 64 characters of A-Z a-z 0-9 _ - .",
            "{name:?}"
        );
    }
    let c = with(&format!(
        "[cluster]\nredis_url = \"redis://127.0.0.1\"\nname = \"{}\"",
        "n".repeat(64)
    ));
    assert!(Config::from_toml(&c).is_ok());
}

#[test]
fn a_lease_outside_half_a_second_to_a_minute_is_refused() {
    for (ms, ok) in [
        (499, false),
        (500, true),
        (60_000, true),
        (60_001, false),
        (-1, false),
    ] {
        let text = with(&format!(
            "[cluster]\nredis_url = \"redis://127.0.0.1\"\nlease_ms = {ms}"
        ));
        match Config::from_toml(&text) {
            Ok(c) => {
                assert!(ok, "{ms}");
                assert_eq!(c.cluster.unwrap().lease, Duration::from_millis(ms as u64));
            }
            Err(e) => {
                assert!(!ok, "{ms}: {e}");
                assert_eq!(
                    e.to_string(),
                    "config: cluster.lease_ms: must be between 500 and 60000"
                );
            }
        }
    }
}

#[test]
fn unknown_or_mistyped_cluster_keys_are_named_in_full() {
    let base = "[cluster]\nredis_url = \"redis://127.0.0.1\"\n";
    assert_eq!(
        error(&with(&format!("{base}lease = 1000"))),
        "config: cluster.lease: unknown key"
    );
    assert_eq!(
        error(&with(&format!("{base}allow_unsafe_durability = \"yes\""))),
        "config: cluster.allow_unsafe_durability: expected true or false"
    );
    assert_eq!(
        error(&with("[cluster]\nredis_url = 6379")),
        "config: cluster.redis_url: expected a string"
    );
}

#[test]
fn the_cluster_config_never_shows_its_password_in_debug() {
    let text = with(
        "[cluster]\nredis_url = \"redis://admin:hunter2hunter2@127.0.0.1:6379/0?pass=other-secret\"",
    );
    let raw = RawConfig::from_toml(&text).unwrap();
    let c = raw.clone().validate().unwrap();
    for shown in [format!("{c:?}"), format!("{raw:?}")] {
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("other-secret"), "{shown}");
        assert!(
            shown.contains("redis://admin:***@127.0.0.1:6379/0?pass=***"),
            "{shown}"
        );
    }
}

#[test]
fn a_redacted_url_keeps_everything_but_the_passwords() {
    assert_eq!(
        redacted_url("redis://127.0.0.1:6379/0"),
        "redis://127.0.0.1:6379/0"
    );
    assert_eq!(redacted_url("redis://:pw@h:1/0"), "redis://:***@h:1/0");
    assert_eq!(redacted_url("redis://u:p@w@h/0"), "redis://u:***@h/0");
    assert_eq!(redacted_url("rediss://token@h"), "rediss://***@h");
    assert_eq!(
        redacted_url("unix:///s.sock?db=1&password=x"),
        "unix:///s.sock?db=1&password=***"
    );
}

#[test]
fn log_level_is_info_by_default_takes_filter_directives_and_refuses_nonsense() {
    assert_eq!(Config::from_toml(&with("")).unwrap().log_level, "info");
    let directives = "info,keygate::access=warn";
    assert_eq!(
        Config::from_toml(&with(&format!("log.level = {directives:?}")))
            .unwrap()
            .log_level,
        directives
    );
    for bad in [
        "",
        "loud",
        "inf,keygate=debug",
        "keygate=loud",
        "info,keygate=[x",
    ] {
        let e = error(&with(&format!("log.level = {bad:?}")));
        assert!(e.starts_with("config: log.level: "), "{bad:?}: {e}");
    }
}

#[test]
fn log_format_is_text_by_default_json_when_asked_and_nothing_else() {
    assert_eq!(
        Config::from_toml(&with("")).unwrap().log_format,
        LogFormat::Text
    );
    assert_eq!(
        Config::from_toml(&with("log.format = \"json\""))
            .unwrap()
            .log_format,
        LogFormat::Json
    );
    assert!(
        error(&with("log.format = \"yaml\"")).contains("log.format"),
        "{}",
        error(&with("log.format = \"yaml\""))
    );
}

#[test]
fn without_a_session_section_session_login_is_off() {
    assert_eq!(Config::from_toml(&with("")).unwrap().session, None);
}

#[test]
fn a_session_section_has_the_contracts_defaults() {
    let c = Config::from_toml(&with("[session]")).unwrap();
    assert_eq!(
        c.session,
        Some(crate::session::SessionConfig {
            path: "/api/v1/authenticatedSession".to_owned(),
            idle_timeout: Duration::from_secs(300),
            max_age: Duration::from_secs(43_200),
            timestamp_window: Duration::from_secs(300),
            secure_cookie: false,
        })
    );
}

#[test]
fn every_session_key_is_read() {
    let c = Config::from_toml(&with(
        "[session]\npath = \"/login\"\nidle_timeout_secs = 60\n\
         max_age_secs = 600\ntimestamp_window_secs = 30",
    ))
    .unwrap()
    .session
    .unwrap();
    assert_eq!(c.path, "/login");
    assert_eq!(c.idle_timeout, Duration::from_secs(60));
    assert_eq!(c.max_age, Duration::from_secs(600));
    assert_eq!(c.timestamp_window, Duration::from_secs(30));
}

#[test]
fn bad_session_values_are_refused_naming_the_key() {
    for (text, key) in [
        ("path = \"login\"", "session.path"),
        ("path = \"/login/\"", "session.path"),
        ("path = \"/a?b\"", "session.path"),
        ("idle_timeout_secs = 0", "session.idle_timeout_secs"),
        ("max_age_secs = 604801", "session.max_age_secs"),
        (
            "timestamp_window_secs = -1",
            "session.timestamp_window_secs",
        ),
    ] {
        let e = error(&with(&format!("[session]\n{text}")));
        assert!(e.starts_with(&format!("config: {key}:")), "{text}: {e}");
    }
}
