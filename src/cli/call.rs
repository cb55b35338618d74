//! What each subcommand sends: its method, path, body, and how its answer is
//! shown. A test below holds this to the admin API's own route table: every
//! route has a command that makes its call.

use http::Method;
use serde_json::{json, Map, Value};

use super::admin::{
    ApiUsersCall, Call, KeyCall, LimitFlags, ListFlags, OrgsCall, SubscriptionCall, TokensCall,
};
use super::client::segment;
use super::show::Shape;

/// One call to make.
#[derive(Debug)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The path from the API's root, segments encoded, with its query.
    pub path: String,
    /// The JSON body, if any.
    pub body: Option<Value>,
    /// How a 2xx answer is shown.
    pub shape: Shape,
}

impl Request {
    fn new(method: Method, path: String, body: Option<Value>, shape: Shape) -> Request {
        Request {
            method,
            path,
            body,
            shape,
        }
    }
}

impl LimitFlags {
    /// The limits given, as the API's JSON object.
    fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        for (name, v) in [
            ("rate_per_sec", self.rate_per_sec),
            ("burst", self.burst),
            ("threshold_calls", self.threshold_calls),
            ("threshold_window_secs", self.threshold_window_secs),
        ] {
            if let Some(v) = v {
                m.insert(name.to_owned(), json!(v));
            }
        }
        m
    }
}

/// `GET /v1/orgs` with the flags' query, starting after `after` (the flag's
/// value for the first page, the last page's `next` for the following ones).
pub fn orgs_page(flags: &ListFlags, after: Option<&str>) -> String {
    let mut query = Vec::new();
    if let Some(limit) = flags.limit {
        query.push(format!("limit={limit}"));
    }
    if let Some(after) = after {
        query.push(format!("after={}", segment(after)));
    }
    if let Some(q) = &flags.q {
        query.push(format!("q={}", segment(q)));
    }
    if let Some(status) = &flags.status {
        query.push(format!("status={}", segment(status)));
    }
    if query.is_empty() {
        "/v1/orgs".to_owned()
    } else {
        format!("/v1/orgs?{}", query.join("&"))
    }
}

/// The request `call` makes. `password` is the API user's password for
/// `api-users create` (read from stdin, never an argument), unused otherwise.
pub fn request(call: &Call, password: &str) -> Request {
    use Method as M;
    let org = |o: &str, rest: &str| format!("/v1/orgs/{}{rest}", segment(o));
    match call {
        Call::Orgs(OrgsCall::List(flags)) => Request::new(
            M::GET,
            orgs_page(flags, flags.after.as_deref()),
            None,
            Shape::Orgs,
        ),
        Call::Orgs(OrgsCall::Provision {
            org,
            expires_at,
            limits,
        }) => {
            let mut body = Map::new();
            body.insert("org".into(), json!(org));
            if let Some(at) = expires_at {
                body.insert("subscription_expires_at".into(), json!(at));
            }
            let limits = limits.to_json();
            if !limits.is_empty() {
                body.insert("limits".into(), Value::Object(limits));
            }
            Request::new(
                M::POST,
                "/v1/orgs".into(),
                Some(Value::Object(body)),
                Shape::Page,
            )
        }
        Call::Orgs(OrgsCall::Delete { org: o, .. }) => Request::new(
            M::DELETE,
            org(o, ""),
            None,
            Shape::Done(format!("{o}: org deleted")),
        ),
        Call::Key(KeyCall::Show { org: o }) => {
            Request::new(M::GET, org(o, "/key"), None, Shape::Page)
        }
        Call::Key(KeyCall::Add { org: o }) => {
            Request::new(M::POST, org(o, "/key"), None, Shape::Page)
        }
        Call::Key(KeyCall::Edit { org: o, key }) => Request::new(
            M::PUT,
            org(o, "/key"),
            Some(json!({ "key": key })),
            Shape::Page,
        ),
        Call::Key(KeyCall::Regenerate { org: o }) => {
            Request::new(M::POST, org(o, "/key/regenerate"), None, Shape::Page)
        }
        Call::Key(KeyCall::Delete { org: o }) => Request::new(
            M::DELETE,
            org(o, "/key"),
            None,
            Shape::Done(format!("{o}: key deleted")),
        ),
        Call::Disable { org: o, reason } => Request::new(
            M::POST,
            org(o, "/disable"),
            Some(json!({ "reason": reason })),
            Shape::Page,
        ),
        Call::Enable { org: o } => Request::new(M::POST, org(o, "/enable"), None, Shape::Page),
        Call::Subscription(SubscriptionCall::Set { org: o, at }) => Request::new(
            M::PUT,
            org(o, "/subscription"),
            Some(json!({ "expires_at": at })),
            Shape::Page,
        ),
        Call::Subscription(SubscriptionCall::Clear { org: o }) => Request::new(
            M::PUT,
            org(o, "/subscription"),
            Some(json!({ "expires_at": null })),
            Shape::Page,
        ),
        Call::Limits { org: o, limits } => Request::new(
            M::PUT,
            org(o, "/limits"),
            Some(Value::Object(limits.to_json())),
            Shape::Page,
        ),
        Call::Tokens(TokensCall::List) => {
            Request::new(M::GET, "/v1/tokens".into(), None, Shape::Tokens)
        }
        Call::Tokens(TokensCall::Create { name, role, org }) => Request::new(
            M::POST,
            "/v1/tokens".into(),
            Some(json!({ "name": name, "role": role, "org": org })),
            Shape::Token,
        ),
        Call::Tokens(TokensCall::Delete { name }) => Request::new(
            M::DELETE,
            format!("/v1/tokens/{}", segment(name)),
            None,
            Shape::Done(format!("{name}: token deleted")),
        ),
        Call::Tokens(TokensCall::Rotate { name }) => Request::new(
            M::POST,
            format!("/v1/tokens/{}/rotate", segment(name)),
            None,
            Shape::Token,
        ),
        Call::Audit { org: o } => Request::new(M::GET, org(o, "/audit"), None, Shape::Events),
        Call::Usage { org: o } => Request::new(M::GET, org(o, "/usage"), None, Shape::Usage),
        Call::ApiUsers(ApiUsersCall::List { org: o }) => {
            Request::new(M::GET, org(o, "/api-users"), None, Shape::Users)
        }
        Call::ApiUsers(ApiUsersCall::Create { org: o, username }) => Request::new(
            M::POST,
            org(o, "/api-users"),
            Some(json!({ "username": username, "password": password })),
            Shape::Done(format!("{o}: API user {username} created")),
        ),
        Call::ApiUsers(ApiUsersCall::Delete { org: o, username }) => Request::new(
            M::DELETE,
            org(o, &format!("/api-users/{}", segment(username))),
            None,
            Shape::Done(format!("{o}: API user {username} deleted")),
        ),
        Call::Whoami => Request::new(M::GET, "/v1/whoami".into(), None, Shape::Whoami),
        Call::Health => Request::new(M::GET, "/healthz".into(), None, Shape::Status),
        Call::Ready => Request::new(M::GET, "/readyz".into(), None, Shape::Status),
        Call::Metrics => Request::new(M::GET, "/metrics".into(), None, Shape::Text),
        Call::Openapi => Request::new(M::GET, "/v1/openapi.json".into(), None, Shape::Text),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::admin::AdminArgs;

    /// Every admin route, and a command line that makes its call with `acme`
    /// for `{org}`, `t1` for `{name}` and `alice` for `{username}`.
    const COMMANDS: &[(&str, &str, &[&str])] = &[
        ("GET", "/healthz", &["health"]),
        ("GET", "/readyz", &["ready"]),
        ("GET", "/metrics", &["metrics"]),
        ("GET", "/v1/openapi.json", &["openapi"]),
        ("GET", "/v1/orgs", &["orgs", "list"]),
        ("POST", "/v1/orgs", &["orgs", "provision", "acme"]),
        (
            "DELETE",
            "/v1/orgs/{org}",
            &["orgs", "delete", "acme", "--yes"],
        ),
        ("GET", "/v1/orgs/{org}/usage", &["usage", "acme"]),
        ("GET", "/v1/orgs/{org}/key", &["key", "show", "acme"]),
        ("POST", "/v1/orgs/{org}/key", &["key", "add", "acme"]),
        (
            "PUT",
            "/v1/orgs/{org}/key",
            &["key", "edit", "acme", "Ab3dEf6hIj9k"],
        ),
        ("DELETE", "/v1/orgs/{org}/key", &["key", "delete", "acme"]),
        (
            "POST",
            "/v1/orgs/{org}/key/regenerate",
            &["key", "regenerate", "acme"],
        ),
        ("GET", "/v1/orgs/{org}/audit", &["audit", "acme"]),
        (
            "POST",
            "/v1/orgs/{org}/disable",
            &["disable", "acme", "--reason", "r"],
        ),
        ("POST", "/v1/orgs/{org}/enable", &["enable", "acme"]),
        (
            "PUT",
            "/v1/orgs/{org}/subscription",
            &["subscription", "clear", "acme"],
        ),
        (
            "PUT",
            "/v1/orgs/{org}/limits",
            &["limits", "acme", "--burst", "5"],
        ),
        (
            "GET",
            "/v1/orgs/{org}/api-users",
            &["api-users", "list", "acme"],
        ),
        (
            "POST",
            "/v1/orgs/{org}/api-users",
            &["api-users", "create", "acme", "alice"],
        ),
        (
            "DELETE",
            "/v1/orgs/{org}/api-users/{username}",
            &["api-users", "delete", "acme", "alice"],
        ),
        ("GET", "/v1/tokens", &["tokens", "list"]),
        (
            "POST",
            "/v1/tokens",
            &["tokens", "create", "t1", "--role", "admin", "--org", "acme"],
        ),
        ("GET", "/v1/whoami", &["whoami"]),
        ("DELETE", "/v1/tokens/{name}", &["tokens", "delete", "t1"]),
        (
            "POST",
            "/v1/tokens/{name}/rotate",
            &["tokens", "rotate", "t1"],
        ),
    ];

    /// `keygate admin` as clap parses it in `src/main.rs`.
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        admin: AdminArgs,
    }

    fn parse(args: &[&str]) -> Call {
        let argv = std::iter::once("keygate-admin").chain(args.iter().copied());
        match Cli::try_parse_from(argv) {
            Ok(cli) => cli.admin.call,
            Err(e) => panic!("keygate admin {}: {e}", args.join(" ")),
        }
    }

    #[test]
    fn every_admin_route_has_a_command_that_makes_its_call() {
        let routes = crate::admin::route_table();
        for (method, path) in &routes {
            let Some((_, _, args)) = COMMANDS
                .iter()
                .find(|(m, p, _)| *m == method.as_str() && p == path)
            else {
                panic!("{method} {path}: no `keygate admin` command makes this call; add one, and a row to COMMANDS");
            };
            let sent = request(&parse(args), "a password of 12+");
            let expected = path
                .replace("{org}", "acme")
                .replace("{name}", "t1")
                .replace("{username}", "alice");
            assert_eq!(
                (&sent.method, sent.path.as_str()),
                (method, expected.as_str()),
                "keygate admin {}",
                args.join(" ")
            );
        }
        for (m, p, args) in COMMANDS {
            assert!(
                routes
                    .iter()
                    .any(|(method, path)| method.as_str() == *m && path == p),
                "{m} {p} (keygate admin {}): not a route of the admin API",
                args.join(" ")
            );
        }
    }

    #[test]
    fn an_argument_cannot_reach_another_path() {
        let sent = request(
            &Call::Key(KeyCall::Show {
                org: "../../tokens".into(),
            }),
            "",
        );
        assert_eq!(sent.path, "/v1/orgs/..%2F..%2Ftokens/key");
        let sent = request(&parse(&["api-users", "delete", "acme", "../key"]), "");
        assert_eq!(sent.path, "/v1/orgs/acme/api-users/..%2Fkey");
    }

    #[test]
    fn only_the_limits_given_are_sent() {
        let sent = request(&parse(&["limits", "acme", "--burst", "5"]), "");
        assert_eq!(sent.body, Some(json!({ "burst": 5 })));
    }

    #[test]
    fn the_list_flags_become_the_query_each_value_encoded() {
        let sent = request(
            &parse(&[
                "orgs", "list", "--limit", "2", "--after", "a&b", "--q", "x y", "--status",
                "disabled",
            ]),
            "",
        );
        assert_eq!(
            sent.path,
            "/v1/orgs?limit=2&after=a%26b&q=x%20y&status=disabled"
        );
        let Call::Orgs(OrgsCall::List(flags)) = parse(&["orgs", "list", "--q", "ac"]) else {
            unreachable!("parsed as orgs list");
        };
        assert_eq!(orgs_page(&flags, Some("acme")), "/v1/orgs?after=acme&q=ac");
    }

    #[test]
    fn the_api_users_password_goes_in_the_body_only() {
        let sent = request(
            &parse(&["api-users", "create", "acme", "alice"]),
            "a password of 12+",
        );
        assert_eq!(
            sent.body,
            Some(json!({ "username": "alice", "password": "a password of 12+" }))
        );
        assert!(!sent.path.contains("password"));
    }
}
