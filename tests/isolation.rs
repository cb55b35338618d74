//! Tenant isolation: every admin endpoint (every row of CONTRACT section 4 but
//! `/healthz`) × every caller × every target org, each cell against a fresh
//! gateway, each answer checked against ONE table, [`expected`], written from
//! the contract's rules.
//!
//! For each refusal nothing may change: neither org's KeyView, neither audit
//! log, no org appears, every token still works. And a foreign org's existence
//! is never revealed: for every caller but the provider, the answer about a
//! foreign org and the answer about an org that does not exist are
//! byte-identical.

mod support;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use support::{Gateway, Reply, PROVIDER};

// ---------------------------------------------------------------------------
// The matrix's axes
// ---------------------------------------------------------------------------

/// Every admin endpoint but `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    GetKey,
    AddKey,
    EditKey,
    Regenerate,
    DeleteKey,
    Audit,
    Provision,
    List,
    Disable,
    Enable,
    Subscription,
    Limits,
    CreateToken,
    DeleteToken,
    RotateToken,
    DeleteOrg,
    Usage,
    ListTokens,
    ListUsers,
    CreateUser,
    DeleteUser,
}

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Caller {
    Provider,
    AdminOfA,
    ViewerOfA,
    AdminOfB,
    NoToken,
    /// The provider's token with its last character changed.
    BadToken,
    /// Org A's API key, sent as a bearer token.
    ApiKeyOfA,
}

const CALLERS: [Caller; 7] = [
    Caller::Provider,
    Caller::AdminOfA,
    Caller::ViewerOfA,
    Caller::AdminOfB,
    Caller::NoToken,
    Caller::BadToken,
    Caller::ApiKeyOfA,
];

/// Which org the call is about: in the path, in the body (`POST /v1/orgs`,
/// `POST /v1/tokens`), or for `DELETE /v1/tokens/{name}` a token of that org
/// (a name no token has for `Missing`). `GET /v1/orgs` names none; it is run
/// for each target all the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Target {
    A,
    B,
    Missing,
}

const TARGETS: [Target; 3] = [Target::A, Target::B, Target::Missing];

const ORG_A: &str = "acme";
const ORG_B: &str = "globex";
const ORG_MISSING: &str = "nobody";
/// An API user each org has, for `DELETE .../api-users/{username}`.
const SPARE_USER: &str = "spare@example.com";

impl Target {
    fn org(self) -> &'static str {
        match self {
            Target::A => ORG_A,
            Target::B => ORG_B,
            Target::Missing => ORG_MISSING,
        }
    }

    /// A token of this target's org that no caller uses, for `DELETE /v1/tokens`.
    fn spare_token(self) -> &'static str {
        match self {
            Target::A => "a-spare",
            Target::B => "b-spare",
            Target::Missing => "no-such-token",
        }
    }
}

// ---------------------------------------------------------------------------
// The one table
// ---------------------------------------------------------------------------

/// What `caller` must get from `endpoint` about `target`: status and code
/// (`""` for a success, whose body carries no code). From CONTRACT section 4:
///
/// - No token, an unknown one, or an org's API key: 401 `UNAUTHENTICATED`,
///   whatever the call ("an org API key never authenticates here").
/// - The provider: every org, every endpoint; an org that does not exist is
///   404 `ORG_NOT_FOUND` ("provider only"), a token that does not exist 404
///   `TOKEN_NOT_FOUND`. Provisioning an org that exists is 409 `ORG_EXISTS`.
/// - An admin: reads, adds, edits, regenerates and deletes its own org's key;
///   a viewer: reads its own org's key and audit. Everything else, a foreign
///   org and an org that does not exist alike, is 403 `FORBIDDEN` ("the same
///   answer whether or not a foreign org exists"), and so is every
///   provider-only endpoint.
///
/// Both orgs start provisioned with a key, so adding one is 409 `KEY_EXISTS`
/// for whoever may add.
fn expected(endpoint: Endpoint, caller: Caller, target: Target) -> (u16, &'static str) {
    use Endpoint::*;
    let (own, may_change) = match caller {
        Caller::NoToken | Caller::BadToken | Caller::ApiKeyOfA => return (401, "UNAUTHENTICATED"),
        Caller::Provider if target == Target::Missing => {
            return match endpoint {
                Provision => (201, ""),
                List | ListTokens => (200, ""),
                DeleteToken | RotateToken => (404, "TOKEN_NOT_FOUND"),
                _ => (404, "ORG_NOT_FOUND"),
            }
        }
        Caller::Provider => return on_an_existing_org(endpoint),
        Caller::AdminOfA => (Target::A, true),
        Caller::ViewerOfA => (Target::A, false),
        Caller::AdminOfB => (Target::B, true),
    };
    let changes_key = match endpoint {
        GetKey | Audit | Usage | ListUsers => false,
        AddKey | EditKey | Regenerate | DeleteKey | CreateUser | DeleteUser => true,
        Provision | List | Disable | Enable | Subscription | Limits | CreateToken | DeleteToken
        | RotateToken | DeleteOrg | ListTokens => return (403, "FORBIDDEN"),
    };
    if target != own || (changes_key && !may_change) {
        return (403, "FORBIDDEN");
    }
    on_an_existing_org(endpoint)
}

/// A permitted call about an org that exists (and has a key).
fn on_an_existing_org(endpoint: Endpoint) -> (u16, &'static str) {
    use Endpoint::*;
    match endpoint {
        GetKey | EditKey | Regenerate | Audit | List | Disable | Enable | Subscription | Limits
        | Usage | ListTokens | RotateToken | ListUsers => (200, ""),
        AddKey => (409, "KEY_EXISTS"),
        DeleteKey | DeleteToken | DeleteOrg | DeleteUser => (204, ""),
        Provision => (409, "ORG_EXISTS"),
        CreateToken | CreateUser => (201, ""),
    }
}

// ---------------------------------------------------------------------------
// One cell
// ---------------------------------------------------------------------------

/// A fresh gateway: orgs A and B with keys; an admin and a viewer token of A,
/// an admin token of B, and a spare viewer token of each for deletion.
struct World {
    gw: Gateway,
    key_a: String,
    admin_a: String,
    viewer_a: String,
    admin_b: String,
    /// Each token with the org it reads, to check it still works.
    tokens: Vec<(String, &'static str)>,
}

async fn world() -> World {
    let gw = Gateway::start().await;
    let key_a = gw.provision(ORG_A).await;
    gw.provision(ORG_B).await;
    let admin_a = gw.token("a-admin", "admin", ORG_A).await;
    let viewer_a = gw.token("a-viewer", "viewer", ORG_A).await;
    let admin_b = gw.token("b-admin", "admin", ORG_B).await;
    let spare_a = gw.token(Target::A.spare_token(), "viewer", ORG_A).await;
    let spare_b = gw.token(Target::B.spare_token(), "viewer", ORG_B).await;
    for org in [ORG_A, ORG_B] {
        let r = gw
            .admin(
                Method::POST,
                &format!("/v1/orgs/{org}/api-users"),
                Some(PROVIDER),
                Some(&json!({ "username": SPARE_USER, "password": "a long enough password" })),
            )
            .await;
        r.assert_status(StatusCode::CREATED);
    }
    let tokens = vec![
        (admin_a.clone(), ORG_A),
        (viewer_a.clone(), ORG_A),
        (admin_b.clone(), ORG_B),
        (spare_a, ORG_A),
        (spare_b, ORG_B),
    ];
    World {
        gw,
        key_a,
        admin_a,
        viewer_a,
        admin_b,
        tokens,
    }
}

impl World {
    fn token(&self, caller: Caller) -> Option<String> {
        match caller {
            Caller::Provider => Some(PROVIDER.to_owned()),
            Caller::AdminOfA => Some(self.admin_a.clone()),
            Caller::ViewerOfA => Some(self.viewer_a.clone()),
            Caller::AdminOfB => Some(self.admin_b.clone()),
            Caller::NoToken => None,
            Caller::BadToken => {
                let mut t = PROVIDER.to_owned();
                let last = t.pop().unwrap();
                t.push(if last == 'x' { 'y' } else { 'x' });
                Some(t)
            }
            Caller::ApiKeyOfA => Some(self.key_a.clone()),
        }
    }

    /// Everything a refusal must leave as it was.
    async fn state(&self) -> State {
        let gw = &self.gw;
        let list = gw.get("/v1/orgs", Some(PROVIDER)).await;
        list.assert_status(StatusCode::OK);
        let mut audit_lens = Vec::new();
        for org in [ORG_A, ORG_B] {
            let audit = gw
                .get(&format!("/v1/orgs/{org}/audit"), Some(PROVIDER))
                .await;
            audit.assert_status(StatusCode::OK);
            audit_lens.push(audit.json["events"].as_array().unwrap().len());
        }
        let mut tokens_work = Vec::new();
        for (token, org) in &self.tokens {
            let r = gw.get(&format!("/v1/orgs/{org}/key"), Some(token)).await;
            tokens_work.push(r.status == StatusCode::OK);
        }
        State {
            orgs: list.json,
            audit_lens,
            tokens_work,
        }
    }
}

#[derive(Debug, PartialEq)]
struct State {
    /// Every org's KeyView (A's and B's, and any org that should not exist).
    orgs: Value,
    /// The audit lengths of A and B.
    audit_lens: Vec<usize>,
    /// Whether each token still authenticates.
    tokens_work: Vec<bool>,
}

/// The request of `endpoint` about `target`: method, path, and a valid body
/// where the endpoint takes one, so only authorization decides.
fn call(endpoint: Endpoint, target: Target) -> (Method, String, Option<Value>) {
    use Endpoint::*;
    let org = target.org();
    let key_path = format!("/v1/orgs/{org}/key");
    match endpoint {
        GetKey => (Method::GET, key_path, None),
        AddKey => (Method::POST, key_path, None),
        EditKey => (
            Method::PUT,
            key_path,
            Some(json!({ "key": "NewKey123456" })),
        ),
        Regenerate => (Method::POST, format!("{key_path}/regenerate"), None),
        DeleteKey => (Method::DELETE, key_path, None),
        Audit => (Method::GET, format!("/v1/orgs/{org}/audit"), None),
        Provision => (Method::POST, "/v1/orgs".into(), Some(json!({ "org": org }))),
        List => (Method::GET, "/v1/orgs".into(), None),
        Disable => (
            Method::POST,
            format!("/v1/orgs/{org}/disable"),
            Some(json!({ "reason": "abuse" })),
        ),
        Enable => (Method::POST, format!("/v1/orgs/{org}/enable"), None),
        Subscription => (
            Method::PUT,
            format!("/v1/orgs/{org}/subscription"),
            Some(json!({ "expires_at": "2030-01-01T00:00:00Z" })),
        ),
        Limits => (
            Method::PUT,
            format!("/v1/orgs/{org}/limits"),
            Some(json!({ "burst": 5 })),
        ),
        CreateToken => (
            Method::POST,
            "/v1/tokens".into(),
            Some(json!({ "name": "newcomer", "role": "viewer", "org": org })),
        ),
        DeleteToken => (
            Method::DELETE,
            format!("/v1/tokens/{}", target.spare_token()),
            None,
        ),
        RotateToken => (
            Method::POST,
            format!("/v1/tokens/{}/rotate", target.spare_token()),
            None,
        ),
        DeleteOrg => (Method::DELETE, format!("/v1/orgs/{org}"), None),
        Usage => (Method::GET, format!("/v1/orgs/{org}/usage"), None),
        ListTokens => (Method::GET, "/v1/tokens".into(), None),
        ListUsers => (Method::GET, format!("/v1/orgs/{org}/api-users"), None),
        CreateUser => (
            Method::POST,
            format!("/v1/orgs/{org}/api-users"),
            Some(json!({ "username": "newcomer", "password": "a long enough password" })),
        ),
        DeleteUser => (
            Method::DELETE,
            format!("/v1/orgs/{org}/api-users/{SPARE_USER}"),
            None,
        ),
    }
}

/// What one cell answered, for the byte-for-byte comparisons.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    status: StatusCode,
    content_type: Option<String>,
    body: Bytes,
}

/// Runs one cell on a fresh gateway and returns its answer, or the reasons it
/// is not the table's.
async fn cell(endpoint: Endpoint, caller: Caller, target: Target) -> (Answer, Vec<String>) {
    let w = world().await;
    let (method, path, body) = call(endpoint, target);
    let token = w.token(caller);
    let before = w.state().await;
    let r: Reply =
        w.gw.admin(method.clone(), &path, token.as_deref(), body.as_ref())
            .await;
    let (status, code) = expected(endpoint, caller, target);

    let mut wrong = Vec::new();
    if r.status.as_u16() != status {
        wrong.push(format!("status {} (want {status})", r.status.as_u16()));
    }
    if code.is_empty() {
        if !r.json["code"].is_null() {
            wrong.push(format!("a refusal where a success was due: {}", r.text()));
        }
    } else {
        if r.header("content-type") != Some("application/json") {
            wrong.push(format!("content-type {:?}", r.header("content-type")));
        }
        if r.json["code"] != code {
            wrong.push(format!("body {} (want code {code})", r.text()));
        }
        if r.json["message"].as_str().is_none_or(|m| m.is_empty())
            || r.json.as_object().map(|o| o.len()) != Some(2)
        {
            wrong.push(format!("not {{code, message}}: {}", r.text()));
        }
        let after = w.state().await;
        if after != before {
            wrong.push(format!(
                "the refusal changed state:\n  before {before:?}\n  after  {after:?}"
            ));
        }
    }
    let wrong = wrong
        .into_iter()
        .map(|w| format!("{endpoint:?} by {caller:?} about {target:?} ({method} {path}): {w}"))
        .collect();
    let answer = Answer {
        status: r.status,
        content_type: r.header(CONTENT_TYPE.as_str()).map(str::to_owned),
        body: r.body,
    };
    (answer, wrong)
}

/// The foreign orgs of a caller: the orgs whose existence it may not learn.
fn foreign(caller: Caller) -> &'static [Target] {
    match caller {
        Caller::Provider => &[],
        Caller::AdminOfA | Caller::ViewerOfA => &[Target::B],
        Caller::AdminOfB => &[Target::A],
        Caller::NoToken | Caller::BadToken | Caller::ApiKeyOfA => &[Target::A, Target::B],
    }
}

/// Every caller × every target for `endpoint`, then the byte-for-byte
/// comparisons of foreign orgs with the missing one.
async fn run_matrix(endpoint: Endpoint) {
    let mut cells = tokio::task::JoinSet::new();
    for caller in CALLERS {
        for target in TARGETS {
            cells.spawn(async move { ((caller, target), cell(endpoint, caller, target).await) });
        }
    }
    let mut answers = std::collections::HashMap::new();
    let mut wrong = Vec::new();
    while let Some(done) = cells.join_next().await {
        let (at, (answer, mut w)) = done.unwrap();
        wrong.append(&mut w);
        answers.insert(at, answer);
    }

    for caller in CALLERS {
        let missing = &answers[&(caller, Target::Missing)];
        for &target in foreign(caller) {
            let other = &answers[&(caller, target)];
            if other != missing {
                wrong.push(format!(
                    "{endpoint:?} by {caller:?}: the answer about {target:?} differs from \
                     the one about a missing org:\n  {other:?}\n  {missing:?}"
                ));
            }
        }
    }
    wrong.sort();
    assert!(
        wrong.is_empty(),
        "{} of {} cells of {endpoint:?} are not as the contract says:\n{}",
        wrong.len(),
        CALLERS.len() * TARGETS.len(),
        wrong.join("\n")
    );
}

// ---------------------------------------------------------------------------
// The tests: one per endpoint, 21 cells each
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_org_key_is_isolated_for_every_caller_and_target() {
    run_matrix(Endpoint::GetKey).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_org_key_is_isolated_for_every_caller_and_target() {
    run_matrix(Endpoint::AddKey).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_org_key_is_isolated_for_every_caller_and_target() {
    run_matrix(Endpoint::EditKey).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regenerate_org_key_is_isolated_for_every_caller_and_target() {
    run_matrix(Endpoint::Regenerate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_org_key_is_isolated_for_every_caller_and_target() {
    run_matrix(Endpoint::DeleteKey).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_audit_is_isolated_for_every_caller_and_target() {
    run_matrix(Endpoint::Audit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_is_isolated_for_every_caller_and_target() {
    run_matrix(Endpoint::Provision).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_orgs_is_isolated_for_every_caller() {
    run_matrix(Endpoint::List).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_is_isolated_for_every_caller_and_target() {
    run_matrix(Endpoint::Disable).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_is_isolated_for_every_caller_and_target() {
    run_matrix(Endpoint::Enable).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_subscription_is_isolated_for_every_caller_and_target() {
    run_matrix(Endpoint::Subscription).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_limits_is_isolated_for_every_caller_and_target() {
    run_matrix(Endpoint::Limits).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_token_is_isolated_for_every_caller_and_target() {
    run_matrix(Endpoint::CreateToken).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_token_is_isolated_for_every_caller_and_target() {
    run_matrix(Endpoint::DeleteToken).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_token_is_isolated_for_every_caller_and_target() {
    run_matrix(Endpoint::RotateToken).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_org_is_isolated_for_every_caller_and_target() {
    run_matrix(Endpoint::DeleteOrg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_isolated_for_every_caller_and_target() {
    run_matrix(Endpoint::Usage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_list_is_isolated_for_every_caller_and_target() {
    run_matrix(Endpoint::ListTokens).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_api_users_is_isolated_for_every_caller_and_target() {
    run_matrix(Endpoint::ListUsers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_an_api_user_is_isolated_for_every_caller_and_target() {
    run_matrix(Endpoint::CreateUser).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_api_user_is_isolated_for_every_caller_and_target() {
    run_matrix(Endpoint::DeleteUser).await;
}

/// The table itself, read back: a few cells spelled out, so a slip in
/// [`expected`] cannot make the matrix agree with a wrong keygate.
#[test]
fn the_table_says_what_the_contract_says() {
    use Caller::*;
    use Endpoint::*;
    use Target::*;
    let cases = [
        (GetKey, ViewerOfA, A, (200, "")),
        (GetKey, ViewerOfA, B, (403, "FORBIDDEN")),
        (GetKey, ViewerOfA, Missing, (403, "FORBIDDEN")),
        (EditKey, ViewerOfA, A, (403, "FORBIDDEN")),
        (EditKey, AdminOfA, A, (200, "")),
        (DeleteKey, AdminOfB, B, (204, "")),
        (DeleteKey, AdminOfB, A, (403, "FORBIDDEN")),
        (AddKey, AdminOfA, A, (409, "KEY_EXISTS")),
        (Audit, AdminOfB, Missing, (403, "FORBIDDEN")),
        (Audit, Provider, Missing, (404, "ORG_NOT_FOUND")),
        (Provision, AdminOfA, Missing, (403, "FORBIDDEN")),
        (Provision, Provider, Missing, (201, "")),
        (Provision, Provider, B, (409, "ORG_EXISTS")),
        (List, ViewerOfA, A, (403, "FORBIDDEN")),
        (Disable, AdminOfA, A, (403, "FORBIDDEN")),
        (CreateToken, Provider, Missing, (404, "ORG_NOT_FOUND")),
        (CreateToken, AdminOfA, A, (403, "FORBIDDEN")),
        (DeleteToken, Provider, Missing, (404, "TOKEN_NOT_FOUND")),
        (DeleteToken, AdminOfB, B, (403, "FORBIDDEN")),
        (RotateToken, Provider, Missing, (404, "TOKEN_NOT_FOUND")),
        (RotateToken, Provider, A, (200, "")),
        (RotateToken, AdminOfA, A, (403, "FORBIDDEN")),
        (DeleteOrg, AdminOfA, A, (403, "FORBIDDEN")),
        (DeleteOrg, Provider, A, (204, "")),
        (DeleteOrg, Provider, Missing, (404, "ORG_NOT_FOUND")),
        (Regenerate, ApiKeyOfA, A, (401, "UNAUTHENTICATED")),
        (Enable, NoToken, Missing, (401, "UNAUTHENTICATED")),
        (Limits, BadToken, B, (401, "UNAUTHENTICATED")),
        (ListUsers, ViewerOfA, A, (200, "")),
        (CreateUser, ViewerOfA, A, (403, "FORBIDDEN")),
        (CreateUser, AdminOfA, A, (201, "")),
        (DeleteUser, AdminOfB, A, (403, "FORBIDDEN")),
        (DeleteUser, Provider, Missing, (404, "ORG_NOT_FOUND")),
    ];
    for (e, c, t, want) in cases {
        assert_eq!(expected(e, c, t), want, "{e:?} by {c:?} about {t:?}");
    }
}
