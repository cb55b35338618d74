//! Crash safety: keygate killed with SIGKILL at random moments, against an
//! oracle of what it acknowledged.
//!
//! Each round fires a random batch of admin mutations over a few orgs
//! (provision, add, edit, regenerate, delete, disable, enable, subscription,
//! token creation), one worker per org so that each org's mutations form one
//! sequence, concurrently with proxy traffic; then it SIGKILLs keygate, either
//! while requests are in flight (after a random 0-50 ms, sometimes 50-400 ms)
//! or once the batch is done, restarts it over the same store and checks it
//! against the oracle:
//!
//! * every acknowledged mutation (one whose 2xx was received) is there: an
//!   org's key page equals its last acknowledged state, or the result of the
//!   one mutation that was in flight when keygate died (it may or may not have
//!   been committed); tokens whose creation was acknowledged still work; the
//!   audit log holds every acknowledged mutation;
//! * a key replaced or deleted is refused by the proxy (401), during the round
//!   (from the moment its replacement was acknowledged) and after the restart;
//! * of every key an org ever held, at most one works: the one on its key page;
//! * a disabled org stays disabled (403 `KEY_DISABLED`);
//! * the store opens by itself.
//!
//! `KEYGATE_CRASH_ROUNDS` sets the number of rounds (20 by default, well under a
//! minute); `KEYGATE_CRASH_SEED` fixes the random choices (printed on failure).
//! The seed repeats the choices, not the moment the kill lands relative to
//! keygate's own progress, which is the point of the test. For a long run:
//!
//! ```sh
//! KEYGATE_CRASH_ROUNDS=500 cargo test --release --test crash
//! ```
//!
//! A second test damages a real store (truncated, bytes flipped in the middle)
//! and checks that keygate refuses to start over it, naming the store, and
//! leaves the file as it was; a third damages only the audit log, which
//! `keygate check` finds.

use std::net::SocketAddr;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[path = "support/child.rs"]
mod child;

use child::{serve_command, Env, Proc};

/// From spawn to the `keygate listening` line (the recovery after a kill included).
const START_LIMIT: Duration = Duration::from_secs(20);
/// From a signal to the exit.
const EXIT_LIMIT: Duration = Duration::from_secs(15);
/// One HTTP exchange.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(5);
const DEFAULT_ROUNDS: usize = 20;
/// The orgs every round works on.
const ORGS: [&str; 4] = ["crash-a", "crash-b", "crash-c", "crash-d"];
/// Subscription ends a round sets: none, long past, far ahead. Far from now, so
/// that whether one has expired never depends on when a check runs.
const SUBSCRIPTIONS: [Option<&str>; 3] = [
    None,
    Some("2020-01-01T00:00:00Z"),
    Some("2100-01-01T00:00:00Z"),
];

// ---------------------------------------------------------------------------
// The keygate process
// ---------------------------------------------------------------------------

/// `keygate serve`, listening.
struct Gateway {
    proc: Proc,
    api: Api,
}

/// What the round's tasks need to talk to one keygate process.
#[derive(Clone)]
struct Api {
    proxy: SocketAddr,
    admin: SocketAddr,
    provider: Arc<str>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Gateway {
    /// Starts keygate and waits for its `keygate listening` line. Nothing is
    /// done to the store first: after a kill, keygate must open it by itself.
    async fn start(env: &Env) -> Gateway {
        let mut proc = Proc::spawn("keygate serve", serve_command(&env.config, "info"));
        let (proxy, admin) = proc.listening(START_LIMIT).await;
        Gateway {
            api: Api {
                proxy,
                admin,
                provider: env.provider.as_str().into(),
                client: Client::builder(TokioExecutor::new()).build_http(),
            },
            proc,
        }
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reaps the child.
    async fn kill9(mut self) {
        self.proc.kill9(EXIT_LIMIT).await;
    }

    /// SIGTERM, then the exit status.
    async fn terminate(mut self) -> ExitStatus {
        self.proc.signal("TERM");
        self.proc.wait_exit(EXIT_LIMIT).await
    }
}

/// One HTTP answer, read whole.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn code(&self) -> Option<String> {
        self.json().get("code")?.as_str().map(str::to_owned)
    }

    fn outcome(&self) -> (u16, Option<String>) {
        (self.status, self.code())
    }
}

impl Api {
    /// An admin call; `Err` when no answer came (keygate died, or was dead).
    async fn admin(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Answer, String> {
        let auth = format!("Bearer {}", token.unwrap_or(&self.provider));
        let url = format!("http://{}{path}", self.admin);
        self.send(method, &url, &[("authorization", &auth)], body)
            .await
    }

    /// A proxied GET with `key`.
    async fn proxy(&self, org: &str, key: &str) -> Result<Answer, String> {
        let url = format!("http://{}/{org}/v1/hello", self.proxy);
        self.send(Method::GET, &url, &[("x-api-key", key)], None)
            .await
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<Answer, String> {
        let what = format!("{method} {url}");
        let mut req = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Full::from(v.to_string())
            }
            None => Full::default(),
        };
        let req = req.body(body).expect("a valid request");
        let exchange = async {
            let res = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = res.status().as_u16();
            let body = res
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok(Answer { status, body })
        };
        match tokio::time::timeout(REQUEST_LIMIT, exchange).await {
            Ok(answer) => answer,
            // A live keygate answers at once; a dead one refuses or resets.
            Err(_) => panic!("{what}: no answer and no error within {REQUEST_LIMIT:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// A test's world
// ---------------------------------------------------------------------------

/// The config of every round: rates far above anything a round sends, and
/// the threshold out of reach, so the only mutations are the round's own.
const LIMITS: &str = "\n[limits]\nrate_per_sec = 1000000\nburst = 1000000\n";

// ---------------------------------------------------------------------------
// The oracle
// ---------------------------------------------------------------------------

/// An org as its key page shows it: what the oracle tracks.
#[derive(Debug, Clone, PartialEq)]
struct Page {
    key: Option<String>,
    /// `Some(reason)` while disabled.
    disabled: Option<String>,
    expires_at: Option<String>,
    generation: u64,
}

impl Page {
    fn from_json(v: &Value) -> Page {
        let text = |name: &str| v[name].as_str().map(str::to_owned);
        let disabled = match v["status"].as_str() {
            Some("enabled") => None,
            Some("disabled") => Some(text("disabled_reason").unwrap_or_default()),
            other => panic!("status {other:?} in {v}"),
        };
        Page {
            key: text("key"),
            disabled,
            expires_at: text("subscription_expires_at"),
            generation: v["generation"].as_u64().expect("generation"),
        }
    }

    fn expired(&self) -> bool {
        self.expires_at.as_deref() == Some("2020-01-01T00:00:00Z")
    }
}

/// The key a mutation leaves.
#[derive(Debug, Clone, PartialEq)]
enum KeyAfter {
    Exact(Option<String>),
    /// Chosen by keygate: well-formed and never held by the org before.
    Random,
}

/// The page a mutation leaves, as far as it can be foreseen.
#[derive(Debug, Clone)]
struct Foreseen {
    key: KeyAfter,
    disabled: Option<String>,
    expires_at: Option<String>,
    generation: u64,
}

impl Foreseen {
    fn unchanged(p: &Page) -> Foreseen {
        Foreseen {
            key: KeyAfter::Exact(p.key.clone()),
            disabled: p.disabled.clone(),
            expires_at: p.expires_at.clone(),
            generation: p.generation,
        }
    }

    fn matches(&self, p: &Page, earlier_keys: &[String]) -> bool {
        let key = match &self.key {
            KeyAfter::Exact(k) => &p.key == k,
            KeyAfter::Random => p.key.as_ref().is_some_and(|k| {
                k.len() == 12
                    && k.bytes().all(|b| b.is_ascii_alphanumeric())
                    && !earlier_keys.contains(k)
            }),
        };
        key && p.disabled == self.disabled
            && p.expires_at == self.expires_at
            && p.generation == self.generation
    }
}

/// One planned admin mutation, with every random choice made in advance.
#[derive(Debug, Clone)]
enum Op {
    Provision {
        expires_at: Option<&'static str>,
    },
    Add,
    Edit {
        key: String,
    },
    /// An edit to the current key: refused as unchanged.
    EditSame,
    Regenerate,
    Delete,
    Disable {
        reason: String,
    },
    Enable,
    Subscription {
        expires_at: Option<&'static str>,
    },
    Token {
        name: String,
    },
}

/// What the oracle expects of a mutation on a known state.
#[derive(Debug, Clone)]
enum Expect {
    /// This status, and the page becomes this.
    Changes(u16, Foreseen),
    /// A token is created (201); the page does not change.
    Token,
    /// Refused with this status and code; nothing changes.
    Refused(u16, &'static str),
}

fn expect(from: &Option<Page>, op: &Op) -> Expect {
    let Some(p) = from else {
        return match op {
            Op::Provision { expires_at } => Expect::Changes(
                201,
                Foreseen {
                    key: KeyAfter::Random,
                    disabled: None,
                    expires_at: expires_at.map(str::to_owned),
                    generation: 1,
                },
            ),
            _ => Expect::Refused(404, "ORG_NOT_FOUND"),
        };
    };
    let key_change = |status: u16, key: KeyAfter| -> Expect {
        if p.disabled.is_some() {
            return Expect::Refused(403, "KEY_DISABLED");
        }
        if p.expired() {
            return Expect::Refused(403, "SUBSCRIPTION_EXPIRED");
        }
        match (&p.key, &key) {
            (Some(_), KeyAfter::Random) if status == 201 => Expect::Refused(409, "KEY_EXISTS"),
            (None, _) if status != 201 => Expect::Refused(404, "NO_KEY"),
            (Some(old), KeyAfter::Exact(Some(new))) if old == new => {
                Expect::Refused(422, "KEY_UNCHANGED")
            }
            _ => Expect::Changes(
                status,
                Foreseen {
                    key,
                    generation: p.generation + 1,
                    ..Foreseen::unchanged(p)
                },
            ),
        }
    };
    let page_change = |f: Foreseen| Expect::Changes(200, f);
    match op {
        Op::Provision { .. } => Expect::Refused(409, "ORG_EXISTS"),
        Op::Add => key_change(201, KeyAfter::Random),
        Op::Edit { key } => key_change(200, KeyAfter::Exact(Some(key.clone()))),
        Op::EditSame => key_change(200, KeyAfter::Exact(p.key.clone())),
        Op::Regenerate => key_change(200, KeyAfter::Random),
        Op::Delete => key_change(204, KeyAfter::Exact(None)),
        Op::Disable { reason } => page_change(Foreseen {
            disabled: Some(reason.clone()),
            ..Foreseen::unchanged(p)
        }),
        Op::Enable => page_change(Foreseen {
            disabled: None,
            ..Foreseen::unchanged(p)
        }),
        Op::Subscription { expires_at } => page_change(Foreseen {
            expires_at: expires_at.map(str::to_owned),
            ..Foreseen::unchanged(p)
        }),
        Op::Token { .. } => Expect::Token,
    }
}

/// What the oracle knows of one org.
#[derive(Debug, Default)]
struct OrgOracle {
    /// Its page after the last acknowledged mutation (`None`: not provisioned).
    page: Option<Page>,
    /// Every key it ever held, oldest first. Edits choose fresh keys, so none
    /// comes back: all but the current one must be refused.
    keys: Vec<String>,
    /// Admin tokens whose creation was acknowledged: name and token.
    tokens: Vec<(String, String)>,
    /// Audit events known to be in its log.
    audit: usize,
    /// The mutation sent and not answered, if any: it may have been applied.
    in_flight: Option<Expect>,
}

impl OrgOracle {
    fn retired(&self) -> Vec<String> {
        let current = self.page.as_ref().and_then(|p| p.key.as_ref());
        self.keys
            .iter()
            .filter(|k| Some(*k) != current)
            .cloned()
            .collect()
    }

    /// Records the page a mutation left.
    fn settle(&mut self, page: Page) {
        if let Some(k) = &page.key {
            if !self.keys.contains(k) {
                self.keys.push(k.clone());
            }
        }
        self.page = Some(page);
    }
}

type Oracle = Arc<Mutex<Vec<OrgOracle>>>;

// ---------------------------------------------------------------------------
// A round
// ---------------------------------------------------------------------------

fn random_key(rng: &mut StdRng) -> String {
    (0..12)
        .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)))
        .collect()
}

fn plan_op(rng: &mut StdRng, round: usize, org: usize, i: usize) -> Op {
    let sub = |rng: &mut StdRng| SUBSCRIPTIONS[rng.random_range(0..SUBSCRIPTIONS.len())];
    if round == 0 && i == 0 {
        return Op::Provision {
            expires_at: sub(rng),
        };
    }
    match rng.random_range(0..100) {
        0..=7 => Op::Provision {
            expires_at: sub(rng),
        },
        8..=17 => Op::Add,
        18..=35 => Op::Edit {
            key: random_key(rng),
        },
        36..=39 => Op::EditSame,
        40..=57 => Op::Regenerate,
        58..=67 => Op::Delete,
        68..=75 => Op::Disable {
            reason: format!("round {round} op {i}"),
        },
        76..=85 => Op::Enable,
        86..=93 => Op::Subscription {
            // Past subscriptions freeze an org's key; keep them rarer.
            expires_at: if rng.random_bool(0.3) {
                SUBSCRIPTIONS[1]
            } else {
                SUBSCRIPTIONS[rng.random_range(0..2) * 2]
            },
        },
        _ => Op::Token {
            name: format!("r{round}-o{org}-{i}"),
        },
    }
}

/// The request for `op` on `org`.
fn request(org: &str, op: &Op, current_key: Option<&str>) -> (Method, String, Option<Value>) {
    let key_path = format!("/v1/orgs/{org}/key");
    match op {
        Op::Provision { expires_at } => {
            let mut body = json!({ "org": org });
            if let Some(at) = expires_at {
                body["subscription_expires_at"] = json!(at);
            }
            (Method::POST, "/v1/orgs".to_owned(), Some(body))
        }
        Op::Add => (Method::POST, key_path, None),
        Op::Edit { key } => (Method::PUT, key_path, Some(json!({ "key": key }))),
        Op::EditSame => {
            let key = current_key.unwrap_or("NoSuchKey123");
            (Method::PUT, key_path, Some(json!({ "key": key })))
        }
        Op::Regenerate => (Method::POST, format!("{key_path}/regenerate"), None),
        Op::Delete => (Method::DELETE, key_path, None),
        Op::Disable { reason } => (
            Method::POST,
            format!("/v1/orgs/{org}/disable"),
            Some(json!({ "reason": reason })),
        ),
        Op::Enable => (Method::POST, format!("/v1/orgs/{org}/enable"), None),
        Op::Subscription { expires_at } => (
            Method::PUT,
            format!("/v1/orgs/{org}/subscription"),
            Some(json!({ "expires_at": expires_at })),
        ),
        Op::Token { name } => (
            Method::POST,
            "/v1/tokens".to_owned(),
            Some(json!({"name": name, "role": "admin", "org": org})),
        ),
    }
}

/// Whether `op` may be made by the org's own admin token (else the provider's).
fn admin_may(op: &Op) -> bool {
    matches!(
        op,
        Op::Add | Op::Edit { .. } | Op::EditSame | Op::Regenerate | Op::Delete
    )
}

/// One org's share of a round: its mutations, one after another, until they
/// are done or keygate stops answering. Returns what went wrong, if anything.
async fn worker(api: Api, oracle: Oracle, org: usize, ops: Vec<(Op, u32)>) -> Vec<String> {
    let id = ORGS[org];
    let mut wrong = Vec::new();
    for (op, pick) in ops {
        let (from, token) = {
            let all = oracle.lock().unwrap();
            let o = &all[org];
            let token = if admin_may(&op) && !o.tokens.is_empty() && pick % 2 == 0 {
                Some(o.tokens[(pick / 2) as usize % o.tokens.len()].1.clone())
            } else {
                None
            };
            (o.page.clone(), token)
        };
        let expected = expect(&from, &op);
        let current = from.as_ref().and_then(|p| p.key.as_deref());
        let (method, path, body) = request(id, &op, current);
        if !matches!(expected, Expect::Refused(..)) {
            oracle.lock().unwrap()[org].in_flight = Some(expected.clone());
        }
        let Ok(answer) = api.admin(method, &path, token.as_deref(), body).await else {
            // Unanswered: maybe applied. Keygate is dying or dead.
            return wrong;
        };
        let mut all = oracle.lock().unwrap();
        let o = &mut all[org];
        o.in_flight = None;
        match expected {
            Expect::Refused(status, code) => {
                if answer.outcome() != (status, Some(code.to_owned())) {
                    wrong.push(format!(
                        "{id} {op:?}: expected {status} {code}, got {} {}",
                        answer.status,
                        String::from_utf8_lossy(&answer.body)
                    ));
                }
            }
            Expect::Token => {
                let token = answer.json()["token"].as_str().map(str::to_owned);
                match (answer.status, token) {
                    (201, Some(token)) => {
                        let Op::Token { name } = &op else {
                            unreachable!()
                        };
                        o.tokens.push((name.clone(), token));
                        o.audit += 1;
                    }
                    _ => wrong.push(format!(
                        "{id} {op:?}: expected 201 and a token, got {} {}",
                        answer.status,
                        String::from_utf8_lossy(&answer.body)
                    )),
                }
            }
            Expect::Changes(status, foreseen) => {
                if answer.status != status {
                    wrong.push(format!(
                        "{id} {op:?}: expected {status}, got {} {}",
                        answer.status,
                        String::from_utf8_lossy(&answer.body)
                    ));
                    continue;
                }
                let page = if status == 204 {
                    // A delete answers without a body; its effect is exact.
                    let from = from.as_ref().expect("a delete of an existing org");
                    Page {
                        key: None,
                        generation: from.generation + 1,
                        ..from.clone()
                    }
                } else {
                    Page::from_json(&answer.json())
                };
                if !foreseen.matches(&page, &o.keys) {
                    wrong.push(format!(
                        "{id} {op:?}: answered {page:?}, expected {foreseen:?}"
                    ));
                }
                o.settle(page);
                o.audit += 1;
            }
        }
    }
    wrong
}

/// Proxy traffic until keygate dies or `calls` are made. Every key that was
/// replaced before a call was sent must be refused with 401.
async fn traffic(api: Api, oracle: Oracle, plan: Vec<(usize, u32)>) -> Vec<String> {
    let mut wrong = Vec::new();
    for (org, pick) in plan {
        let (key, retired) = {
            let all = oracle.lock().unwrap();
            let o = &all[org];
            let retired = o.retired();
            let current = o.page.as_ref().and_then(|p| p.key.clone());
            let key = match (current, retired.is_empty(), pick % 3) {
                (Some(k), _, 0 | 1) | (Some(k), true, _) => k,
                (_, false, _) => retired[pick as usize % retired.len()].clone(),
                (None, true, _) => continue,
            };
            (key, retired)
        };
        let Ok(answer) = api.proxy(ORGS[org], &key).await else {
            return wrong;
        };
        if retired.contains(&key) && answer.outcome() != (401, Some("INVALID_KEY".to_owned())) {
            wrong.push(format!(
                "{}: a replaced key was answered {} {} after its replacement was acknowledged",
                ORGS[org],
                answer.status,
                String::from_utf8_lossy(&answer.body)
            ));
        }
    }
    wrong
}

/// After the restart: each org is in its last acknowledged state or in the
/// state its in-flight mutation left; its keys, tokens and audit agree.
async fn check(api: &Api, oracle: &Oracle, round: usize) {
    for (org, id) in ORGS.iter().enumerate() {
        let (acked, in_flight, keys, tokens, audit) = {
            let mut all = oracle.lock().unwrap();
            let o = &mut all[org];
            (
                o.page.clone(),
                o.in_flight.take(),
                o.keys.clone(),
                o.tokens.clone(),
                o.audit,
            )
        };
        let page = api
            .admin(Method::GET, &format!("/v1/orgs/{id}/key"), None, None)
            .await
            .expect("the restarted keygate answers");
        let seen = match page.outcome() {
            (200, _) => Some(Page::from_json(&page.json())),
            (404, Some(code)) if code == "ORG_NOT_FOUND" => None,
            other => panic!("round {round}: {id}: key page answered {other:?}"),
        };

        // The state is the acknowledged one, or the in-flight mutation's.
        let applied = match (&in_flight, &seen) {
            _ if seen == acked => false,
            (Some(Expect::Changes(_, foreseen)), Some(page)) if foreseen.matches(page, &keys) => {
                true
            }
            _ => panic!(
                "round {round}: {id}: after the restart the key page is {seen:?}; \
                 the last acknowledged state was {acked:?} and the mutation in flight {in_flight:?}"
            ),
        };

        // The audit log holds every acknowledged mutation, and at most the one
        // in flight besides.
        let events = if seen.is_some() {
            let a = api
                .admin(Method::GET, &format!("/v1/orgs/{id}/audit"), None, None)
                .await
                .expect("the restarted keygate answers");
            assert_eq!(a.status, 200, "round {round}: {id} audit");
            a.json()["events"].as_array().map_or(0, Vec::len)
        } else {
            0
        };
        let at_most = audit + usize::from(in_flight.is_some());
        assert!(
            (audit..=at_most).contains(&events),
            "round {round}: {id}: {events} audit events; {audit} were acknowledged and {} in flight",
            usize::from(in_flight.is_some())
        );
        if applied {
            assert_eq!(events, at_most, "round {round}: {id}: applied, not audited");
        }

        // Every key the org ever held is refused but the current one, which
        // works unless the org is disabled; a disabled org stays disabled.
        let mut all_keys = keys.clone();
        if let Some(k) = seen.as_ref().and_then(|p| p.key.clone()) {
            if !all_keys.contains(&k) {
                all_keys.push(k);
            }
        }
        let current = seen.as_ref().and_then(|p| p.key.clone());
        let mut working = 0;
        for key in &all_keys {
            let a = api
                .proxy(id, key)
                .await
                .expect("the restarted keygate answers");
            let expected = if Some(key) != current.as_ref() {
                (401, Some("INVALID_KEY".to_owned()))
            } else if seen.as_ref().is_some_and(|p| p.disabled.is_some()) {
                (403, Some("KEY_DISABLED".to_owned()))
            } else {
                (200, None)
            };
            let what = if Some(key) == current.as_ref() {
                "the current key"
            } else {
                "a replaced or deleted key"
            };
            assert_eq!(a.outcome(), expected, "round {round}: {id}: {what}");
            working += usize::from(a.status == 200);
        }
        assert!(working <= 1, "round {round}: {id}: {working} keys work");

        // Every acknowledged token still works, and sees the current key.
        for (name, token) in &tokens {
            let a = api
                .admin(
                    Method::GET,
                    &format!("/v1/orgs/{id}/key"),
                    Some(token),
                    None,
                )
                .await
                .expect("the restarted keygate answers");
            assert_eq!(a.status, 200, "round {round}: {id}: token {name} lost");
            assert_eq!(
                a.json()["key"].as_str().map(str::to_owned),
                current,
                "round {round}: {id}: token {name}"
            );
        }

        let mut all = oracle.lock().unwrap();
        let o = &mut all[org];
        o.audit = events;
        match seen {
            Some(page) => o.settle(page),
            None => o.page = None,
        }
    }
}

fn rounds() -> usize {
    std::env::var("KEYGATE_CRASH_ROUNDS")
        .ok()
        .map(|v| v.parse().expect("KEYGATE_CRASH_ROUNDS: a number"))
        .unwrap_or(DEFAULT_ROUNDS)
}

fn seed() -> u64 {
    match std::env::var("KEYGATE_CRASH_SEED") {
        Ok(v) => v.parse().expect("KEYGATE_CRASH_SEED: a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    }
}

/// Prints the seed when the test fails, wherever it fails.
struct SeedOnFailure(u64);

impl Drop for SeedOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "crash test failed with KEYGATE_CRASH_SEED={} (the seed repeats the choices, not the timing)",
                self.0
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_mutations_survive_sigkill_at_random_moments() {
    let seed = seed();
    let _seed = SeedOnFailure(seed);
    let rounds = rounds();
    eprintln!("crash test: {rounds} rounds, KEYGATE_CRASH_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let env = Env::new(LIMITS).await;
    let oracle: Oracle = Arc::new(Mutex::new(
        ORGS.iter().map(|_| OrgOracle::default()).collect(),
    ));
    let started = Instant::now();
    let mut in_flight_kills = 0;
    let mut recoveries = 0;
    let mut unanswered = 0;

    let mut gw = Gateway::start(&env).await;
    for round in 0..rounds {
        // The plan: every random choice of the round, made now.
        let plans: Vec<Vec<(Op, u32)>> = (0..ORGS.len())
            .map(|org| {
                let n = rng.random_range(0..=10);
                (0..n)
                    .map(|i| (plan_op(&mut rng, round, org, i), rng.random()))
                    .collect()
            })
            .collect();
        let calls: Vec<(usize, u32)> = (0..rng.random_range(0..=150))
            .map(|_| (rng.random_range(0..ORGS.len()), rng.random()))
            .collect();
        // Most kills land while requests are in flight: early (0-50 ms, while
        // the first mutations commit) or later; the rest once all is answered.
        let kill_while_busy = rng.random_bool(0.75);
        let delay = Duration::from_millis(if rng.random_bool(0.6) {
            rng.random_range(0..=50)
        } else {
            rng.random_range(50..=400)
        });

        let workers: Vec<_> = plans
            .into_iter()
            .enumerate()
            .map(|(org, ops)| tokio::spawn(worker(gw.api.clone(), oracle.clone(), org, ops)))
            .collect();
        let proxy = tokio::spawn(traffic(gw.api.clone(), oracle.clone(), calls));
        let mut wrong = Vec::new();
        if kill_while_busy {
            tokio::time::sleep(delay).await;
            in_flight_kills += 1;
            gw.kill9().await;
            for w in workers {
                wrong.extend(w.await.expect("worker"));
            }
        } else {
            for w in workers {
                wrong.extend(w.await.expect("worker"));
            }
            gw.kill9().await;
        }
        wrong.extend(proxy.await.expect("proxy traffic"));
        assert!(wrong.is_empty(), "round {round}:\n{}", wrong.join("\n"));
        unanswered += oracle
            .lock()
            .unwrap()
            .iter()
            .filter(|o| o.in_flight.is_some())
            .count();

        // redb runs its own recovery when it opens a file that was not closed
        // cleanly, so "opens without repair" here means: keygate opens the
        // store by itself, with no manual repair step, and every acknowledged
        // commit is present (which `check` verifies).
        gw = Gateway::start(&env).await;
        recoveries += usize::from(gw.proc.stderr().contains("not closed cleanly"));
        check(&gw.api, &oracle, round).await;
        let files = std::fs::read_dir(env.store.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>();
        assert_eq!(files, ["keygate.redb"], "round {round}: stray files");
    }
    let status = gw.terminate().await;
    assert_eq!(status.code(), Some(0));
    let o = oracle.lock().unwrap();
    let mutations: usize = o.iter().map(|o| o.audit).sum();
    let keys: usize = o.iter().map(|o| o.keys.len()).sum();
    eprintln!(
        "crash test: {rounds} rounds ({in_flight_kills} killed while busy, {unanswered} \
         mutations unanswered at a kill, {recoveries} restarts logged redb's recovery), \
         {mutations} audited mutations, {keys} keys, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// A damaged store
// ---------------------------------------------------------------------------

/// Runs `keygate serve` to its end (bounded): status and stderr. A keygate that
/// starts listening instead is killed, and its stderr returned all the same.
async fn serve_until_exit(env: &Env) -> (ExitStatus, String) {
    let mut proc = Proc::spawn("keygate serve", serve_command(&env.config, "info"));
    let deadline = Instant::now() + START_LIMIT;
    loop {
        if proc.exited().is_some()
            || proc.stderr().contains("keygate listening")
            || Instant::now() >= deadline
        {
            proc.kill();
            let status = proc.wait_exit(EXIT_LIMIT).await;
            return (status, proc.stderr());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A real store with some history: orgs, key changes, tokens.
async fn fill(api: &Api) {
    for i in 0..40 {
        let org = format!("org-{i:02}");
        let calls = [
            (
                Method::POST,
                "/v1/orgs".to_owned(),
                Some(json!({ "org": org })),
            ),
            (Method::POST, format!("/v1/orgs/{org}/key/regenerate"), None),
            (
                Method::POST,
                "/v1/tokens".to_owned(),
                Some(json!({"name": format!("admin-{i:02}"), "role": "admin", "org": org})),
            ),
        ];
        for (method, path, body) in calls {
            let a = api.admin(method, &path, None, body).await.unwrap();
            assert!(a.status == 200 || a.status == 201, "{path}: {a:?}");
        }
    }
}

/// A store with history, as SIGTERM leaves it (closed cleanly) and as SIGKILL
/// leaves it (redb runs its recovery, which verifies checksums, on open).
async fn damaged_store_fixture() -> (Env, Vec<(&'static str, Vec<u8>)>) {
    let env = Env::new(LIMITS).await;
    let gw = Gateway::start(&env).await;
    fill(&gw.api).await;
    assert_eq!(gw.terminate().await.code(), Some(0));
    let clean = std::fs::read(&env.store).unwrap();
    let gw = Gateway::start(&env).await;
    let a = gw
        .api
        .admin(Method::POST, "/v1/orgs", None, Some(json!({"org": "late"})))
        .await
        .unwrap();
    assert_eq!(a.status, 201);
    gw.kill9().await;
    let killed = std::fs::read(&env.store).unwrap();
    (env, vec![("closed cleanly", clean), ("killed", killed)])
}

/// Keygate refuses to start over `bytes` as its store, with a last line on
/// stderr that names the store, and leaves the file as it was.
async fn assert_refused(env: &Env, what: &str, bytes: &[u8]) {
    std::fs::write(&env.store, bytes).unwrap();
    let (status, stderr) = serve_until_exit(env).await;
    assert!(
        !stderr.contains("keygate listening"),
        "{what}: keygate started over it:\n{stderr}"
    );
    assert!(!status.success(), "{what}: keygate exited with {status}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("store") && last.contains(&env.store.display().to_string()),
        "{what}: the last line on stderr does not name the store: {stderr}"
    );
    assert!(
        std::fs::read(&env.store).unwrap() == bytes,
        "{what}: keygate changed the file it refused"
    );
    // `keygate check` finds the damage too, and leaves the file alone.
    let (status, stdout, stderr) = check_until_exit(env).await;
    assert_eq!(
        status.code(),
        Some(1),
        "{what}: check: {status}\n{stdout}\n{stderr}"
    );
    let store = env.store.display().to_string();
    assert!(
        !stdout.is_empty() && stdout.lines().all(|l| l.contains(&store)),
        "{what}: check's lines do not name the store:\n{stdout}"
    );
    assert!(
        std::fs::read(&env.store).unwrap() == bytes,
        "{what}: check changed the file"
    );
}

/// Where `needle` starts in `hay`.
fn occurrences(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// `bytes` with `len` bytes from each of `starts` inverted.
fn flipped(bytes: &[u8], starts: &[usize], len: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for &at in starts {
        for b in &mut out[at..(at + len).min(bytes.len())] {
            *b ^= 0xff;
        }
    }
    out
}

/// The 4 KiB pages that hold an org's record. redb copies a page on write, so
/// a file also holds stale copies; damaging every copy damages the live one.
fn org_record_pages(bytes: &[u8]) -> Vec<usize> {
    let mut pages: Vec<usize> = occurrences(bytes, b"\"generation\":")
        .into_iter()
        .map(|at| at / 4096 * 4096)
        .collect();
    pages.dedup();
    pages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_or_corrupted_store_stops_keygate_with_a_message_naming_it() {
    let (env, stores) = damaged_store_fixture().await;
    for (name, whole) in &stores {
        let len = whole.len();
        for cut in [
            len / 4,
            len / 2,
            len / 2 + 1,
            3 * len / 4,
            len - 4096,
            len - 1,
        ] {
            let what = format!("store {name}, {len} bytes cut to {cut}");
            assert_refused(&env, &what, &whole[..cut]).await;
        }
        // Bytes flipped in the middle of the data: inside the records of the
        // orgs table (every copy of each, live or stale).
        let records = occurrences(whole, b"\"generation\":");
        assert!(records.len() >= 40, "{name}: {} org records", records.len());
        let what = format!("store {name}, bytes flipped inside every org record");
        assert_refused(&env, &what, &flipped(whole, &records, 12)).await;
    }
    // After a kill, redb's recovery verifies page checksums: a whole damaged
    // page of the orgs table is refused too.
    let (name, killed) = &stores[1];
    let pages = org_record_pages(killed);
    let what = format!("store {name}, the pages of the orgs table flipped");
    assert_refused(&env, &what, &flipped(killed, &pages, 4096)).await;
}

/// A cleanly closed store whose orgs-table pages are damaged: redb verifies no
/// checksums on a clean open, and may panic while keygate loads the damaged
/// page; keygate must still refuse it by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_store_with_a_damaged_orgs_page_is_refused_naming_the_store() {
    let (env, stores) = damaged_store_fixture().await;
    let (name, clean) = &stores[0];
    let pages = org_record_pages(clean);
    let what = format!("store {name}, the pages of the orgs table flipped");
    assert_refused(&env, &what, &flipped(clean, &pages, 4096)).await;
}

/// `keygate check --config PATH` run to its end: status, stdout and stderr.
async fn check_until_exit(env: &Env) -> (ExitStatus, String, String) {
    let mut cmd = std::process::Command::new(child::BIN);
    cmd.args(["check", "--config"])
        .arg(&env.config)
        .env_remove("RUST_LOG")
        .env_remove("KEYGATE_LOG");
    let mut proc = Proc::spawn("keygate check", cmd);
    let status = proc.wait_exit(START_LIMIT).await;
    (status, proc.stdout(), proc.stderr())
}

/// A cleanly closed store whose audit records are damaged. `serve` reads the
/// audit log only when a page asks for it, and redb verifies no checksums on a
/// clean open, so `serve` starts over it: reading every audit record at start
/// costs about 1 us a record (0.10 s for 100,000, release build) and the log
/// grows with every mutation, which would put a million-org store's start past
/// its 3 s budget. So the damage is found by `keygate check`, which exits
/// non-zero with one line per damaged record naming the store, the table and
/// the record; and `serve` answers the damaged org's audit page 500 `INTERNAL`
/// (never a partial or made-up log) while its key pages are served as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_store_with_damaged_audit_records_is_found_by_check_and_never_shown() {
    let (env, stores) = damaged_store_fixture().await;
    let (name, clean) = &stores[0];

    std::fs::write(&env.store, clean).unwrap();
    let (status, stdout, stderr) = check_until_exit(&env).await;
    assert!(
        status.success(),
        "{name}: check of the undamaged store: {status}\n{stdout}\n{stderr}"
    );
    assert_eq!(
        stdout, "",
        "{name}: check of the undamaged store printed problems"
    );
    assert!(stderr.contains("no problems"), "{stderr}");

    let records = occurrences(clean, b"\"action\":");
    assert!(
        records.len() >= 120,
        "{name}: {} audit records",
        records.len()
    );
    let damaged = flipped(clean, &records, 9);
    std::fs::write(&env.store, &damaged).unwrap();
    let (status, stdout, stderr) = check_until_exit(&env).await;
    assert_eq!(
        status.code(),
        Some(1),
        "{name}: check: {status}\n{stdout}\n{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    // Every live record is damaged: one line for each of the 40 orgs' 3.
    assert!(
        lines.len() >= 120,
        "{name}: {} lines:\n{stdout}",
        lines.len()
    );
    let store = env.store.display().to_string();
    for line in &lines {
        assert!(
            line.starts_with(&store) && line.contains("table audit: record (\"org-"),
            "{name}: a line that does not name the store, table and record: {line}"
        );
    }
    assert!(stderr.contains("problems"), "{stderr}");
    assert!(
        std::fs::read(&env.store).unwrap() == damaged,
        "{name}: check changed the file"
    );

    // A store keygate was killed over is repaired by check as by a start,
    // and then sound.
    let (killed_name, killed) = &stores[1];
    std::fs::write(&env.store, killed).unwrap();
    let (status, stdout, stderr) = check_until_exit(&env).await;
    assert!(
        status.success(),
        "{killed_name}: check: {status}\n{stdout}\n{stderr}"
    );
    assert!(stderr.contains("no problems"), "{stderr}");

    // serve starts over the damaged log; the log is refused, not shown.
    std::fs::write(&env.store, &damaged).unwrap();
    let gw = Gateway::start(&env).await;
    let audit = gw
        .api
        .admin(Method::GET, "/v1/orgs/org-07/audit", None, None)
        .await
        .unwrap();
    assert_eq!(audit.status, 500, "{audit:?}");
    assert_eq!(audit.code().as_deref(), Some("INTERNAL"), "{audit:?}");
    let page = gw
        .api
        .admin(Method::GET, "/v1/orgs/org-07/key", None, None)
        .await
        .unwrap();
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(gw.terminate().await.code(), Some(0));
}
