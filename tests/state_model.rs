//! The org state machine against a reference model.
//!
//! Random sequences of operations and clock moves are applied both to keygate
//! (through [`Store`] over a [`MemoryBackend`] and a [`ManualClock`], and through
//! the [`KeyGate`] layer in front of a trivial service) and to [`Model`], a plain
//! struct that implements the rules of CONTRACT.md §4 directly, without calling
//! keygate. After every step the answer (success, or which error code), the key
//! page, the audit log and what the gate accepts must agree with the model; a
//! reopen of the store over the same backend at random points must show the
//! same pages.
//!
//! Beyond the contract the model follows the README's design notes where the
//! contract leaves a choice: the threshold is a fixed window that opens with the
//! first counted call after the previous window closed, its start kept in whole
//! seconds; an enable or a restart starts the count afresh; the rate limiter is
//! not modelled (every rate and burst here is too large to be met).
//!
//! `PROPTEST_CASES` sets the number of cases (256 by default, about a second).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use keygate::clock::{ManualClock, Timestamp};
use keygate::gate::{GateConfig, KeyGate};
use keygate::org::{Actor, KeyStatus, LimitOverrides, Limits, OpError, OrgId};
use keygate::store::{MemoryBackend, OrgView, Store};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tower::ServiceExt;

/// Where every case's clock starts: 2027-01-15T08:00:00Z, whole seconds.
const T0: Timestamp = Timestamp::from_secs(1_800_000_000);
const ORG: &str = "acme";
/// The admin token that makes some key changes; the store takes its name.
const ADMIN: &str = "acme-admin";
/// The contract's reason for the automatic disable.
const THRESHOLD_REASON: &str = "call threshold exceeded";
/// A well-formed key no org is ever given (12 characters, never generated in
/// practice: 62^-12).
const STRANGER: &str = "NoSuchKey123";
const NANOS: u64 = 1_000_000_000;

// ---------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------

/// One step of a case.
#[derive(Debug, Clone)]
enum Op {
    /// `POST /v1/orgs`: creates the org (once).
    Provision {
        /// Milliseconds from now to the subscription's end; `None` never ends.
        expires_in_ms: Option<i64>,
        limits: LimitsArg,
    },
    Add {
        by_admin: bool,
    },
    Edit {
        to: EditTo,
        by_admin: bool,
    },
    Regenerate {
        by_admin: bool,
    },
    Delete {
        by_admin: bool,
    },
    Disable {
        reason: &'static str,
    },
    Enable,
    SetSubscription {
        expires_in_ms: Option<i64>,
    },
    SetLimits(LimitsArg),
    /// Moves the clock forward.
    Advance {
        ms: u64,
    },
    /// Calls through the gate with the org's current key (or a stranger's key
    /// when it has none).
    Calls {
        n: u32,
        post: bool,
    },
    /// Drops the store and opens a new one over the same backend: a restart.
    Reopen,
}

/// What an edit asks the key to become.
#[derive(Debug, Clone)]
enum EditTo {
    /// The key in force: refused as unchanged.
    Current,
    /// The key in force with the case of its first letter flipped: a
    /// different key (keys are case-sensitive), unless it has no letter.
    CaseFlipped,
    /// A new well-formed key.
    Fresh(String),
    /// One of the org's earlier keys (an explicit edit may bring one back).
    Earlier(usize),
    /// Not 12 characters of A-Z a-z 0-9.
    Malformed(String),
}

/// A limit a provider asks for.
#[derive(Debug, Clone, Copy)]
enum Limit {
    /// Within any sensible range.
    Sane(u32),
    /// Absurd: refused with INVALID_LIMITS.
    Absurd(u32),
}

impl Limit {
    fn value(self) -> u32 {
        match self {
            Limit::Sane(v) | Limit::Absurd(v) => v,
        }
    }
}

/// A provider's limits: each field set or left to the defaults.
#[derive(Debug, Clone, Copy, Default)]
struct LimitsArg {
    rate_per_sec: Option<Limit>,
    burst: Option<Limit>,
    threshold_calls: Option<Limit>,
    threshold_window_secs: Option<Limit>,
}

impl LimitsArg {
    fn fields(&self) -> [Option<Limit>; 4] {
        [
            self.rate_per_sec,
            self.burst,
            self.threshold_calls,
            self.threshold_window_secs,
        ]
    }

    fn absurd(&self) -> bool {
        self.fields()
            .iter()
            .any(|f| matches!(f, Some(Limit::Absurd(_))))
    }

    fn overrides(&self) -> LimitOverrides {
        let v = |f: Option<Limit>| f.map(Limit::value);
        LimitOverrides::from_values(
            v(self.rate_per_sec),
            v(self.burst),
            v(self.threshold_calls),
            v(self.threshold_window_secs),
        )
    }
}

/// A rate or a burst: at least 1000, so no case's few hundred calls meet it.
fn rate_like() -> impl Strategy<Value = Limit> {
    prop_oneof![
        4 => (1_000u32..=10_000_000).prop_map(Limit::Sane),
        1 => prop_oneof![Just(1_000_000_000u32), Just(u32::MAX)].prop_map(Limit::Absurd),
    ]
}

fn limits_arg() -> impl Strategy<Value = LimitsArg> {
    let threshold = prop_oneof![
        4 => (1u32..=12).prop_map(Limit::Sane),
        1 => Just(Limit::Absurd(u32::MAX)),
    ];
    let window = prop_oneof![
        4 => prop_oneof![1u32..=120, Just(3600)].prop_map(Limit::Sane),
        1 => prop_oneof![Just(10 * 365 * 24 * 3600u32), Just(u32::MAX)].prop_map(Limit::Absurd),
    ];
    (
        proptest::option::of(rate_like()),
        proptest::option::of(rate_like()),
        proptest::option::of(threshold),
        proptest::option::of(window),
    )
        .prop_map(
            |(rate_per_sec, burst, threshold_calls, threshold_window_secs)| LimitsArg {
                rate_per_sec,
                burst,
                threshold_calls,
                threshold_window_secs,
            },
        )
}

/// Milliseconds from now to a subscription's end: often in the past or at
/// this very instant, often soon enough for a clock move to reach it.
fn expires_in_ms() -> impl Strategy<Value = Option<i64>> {
    proptest::option::of(prop_oneof![
        Just(0i64),
        -600_000i64..0,
        1i64..=300_000,
        Just(30 * 24 * 3_600_000),
    ])
}

fn edit_to() -> impl Strategy<Value = EditTo> {
    prop_oneof![
        2 => Just(EditTo::Current),
        1 => Just(EditTo::CaseFlipped),
        4 => "[A-Za-z0-9]{12}".prop_map(EditTo::Fresh),
        1 => (0usize..8).prop_map(EditTo::Earlier),
        2 => prop_oneof![
            "[A-Za-z0-9]{0,11}",
            "[A-Za-z0-9]{13,14}",
            "[A-Za-z0-9]{11}[-_+/= .]",
            "[A-Za-z0-9]{6}[^A-Za-z0-9][A-Za-z0-9]{5}",
        ]
        .prop_map(EditTo::Malformed),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (expires_in_ms(), limits_arg())
            .prop_map(|(expires_in_ms, limits)| Op::Provision { expires_in_ms, limits }),
        2 => any::<bool>().prop_map(|by_admin| Op::Add { by_admin }),
        4 => (edit_to(), any::<bool>()).prop_map(|(to, by_admin)| Op::Edit { to, by_admin }),
        3 => any::<bool>().prop_map(|by_admin| Op::Regenerate { by_admin }),
        2 => any::<bool>().prop_map(|by_admin| Op::Delete { by_admin }),
        2 => prop_oneof![Just("abuse"), Just("unpaid invoice"), Just(THRESHOLD_REASON)]
            .prop_map(|reason| Op::Disable { reason }),
        3 => Just(Op::Enable),
        2 => expires_in_ms().prop_map(|expires_in_ms| Op::SetSubscription { expires_in_ms }),
        2 => limits_arg().prop_map(Op::SetLimits),
        4 => prop_oneof![
            Just(0u64),
            1u64..1_000,
            1_000u64..=120_000,
            Just(3_600_000),
        ]
        .prop_map(|ms| Op::Advance { ms }),
        3 => (1u32..=8, any::<bool>()).prop_map(|(n, post)| Op::Calls { n, post }),
        1 => Just(Op::Reopen),
    ]
}

/// Up to 40 steps; most cases provision the org first, so that their steps
/// reach past `ORG_NOT_FOUND`.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    let provision = (expires_in_ms(), proptest::option::of(rate_like())).prop_map(
        |(expires_in_ms, rate_per_sec)| Op::Provision {
            expires_in_ms,
            limits: LimitsArg {
                rate_per_sec,
                ..LimitsArg::default()
            },
        },
    );
    (proptest::bool::weighted(0.9), provision, vec(op(), 1..=39)).prop_map(
        |(first, provision, mut ops)| {
            if first {
                ops.insert(0, provision);
            }
            ops
        },
    )
}

/// A case's configured defaults: a small threshold, so that sequences cross it.
fn defaults() -> impl Strategy<Value = Limits> {
    (2u32..=10, prop_oneof![5u32..=120, Just(3600)]).prop_map(|(threshold_calls, window)| Limits {
        rate_per_sec: 10_000_000,
        burst: 10_000_000,
        threshold_calls,
        threshold_window_secs: window,
    })
}

// ---------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------

/// The contract's rules for one org, written out plainly.
#[derive(Debug, Clone)]
struct Model {
    /// The clock, in nanoseconds since the epoch.
    now: u64,
    /// The configured defaults: rate, burst, threshold calls, window seconds.
    defaults: [u32; 4],
    org: Option<ModelOrg>,
    /// Every key the org has held, oldest first (a key brought back by an edit
    /// appears twice).
    keys: Vec<String>,
    /// The audit log: actor and action of every mutation, oldest first.
    audit: Vec<(String, &'static str)>,
}

#[derive(Debug, Clone)]
struct ModelOrg {
    key: Option<String>,
    /// `Some(reason)` while the key is disabled.
    disabled: Option<String>,
    /// Nanoseconds; expired from this instant on.
    expires_at: Option<u64>,
    /// The org's own rate, burst, threshold calls and window seconds.
    overrides: [Option<u32>; 4],
    generation: u64,
    modified_by: String,
    modified_on: u64,
    /// The threshold window: its start in whole seconds and its count.
    window: Option<(u64, u32)>,
}

/// What the model expects of a mutation.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// Success; the key, if the operation chose one, is in the model already.
    Done,
    /// Success with a key keygate chooses at random: the model learns it.
    RandomKey,
    /// Refused with this code; nothing changed.
    Refused(&'static str),
}

/// What the model expects of a call through the gate.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CallOutcome {
    status: u16,
    code: Option<&'static str>,
}

const SERVED: CallOutcome = CallOutcome {
    status: 200,
    code: None,
};

const fn refused(status: u16, code: &'static str) -> CallOutcome {
    CallOutcome {
        status,
        code: Some(code),
    }
}

fn well_formed(key: &str) -> bool {
    key.len() == 12 && key.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl ModelOrg {
    fn expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|end| now >= end)
    }

    fn limits(&self, defaults: [u32; 4]) -> [u32; 4] {
        let mut l = defaults;
        for (slot, o) in l.iter_mut().zip(self.overrides) {
            if let Some(v) = o {
                *slot = v;
            }
        }
        l
    }
}

impl Model {
    fn new(now: u64, defaults: Limits) -> Model {
        Model {
            now,
            defaults: [
                defaults.rate_per_sec,
                defaults.burst,
                defaults.threshold_calls,
                defaults.threshold_window_secs,
            ],
            org: None,
            keys: Vec::new(),
            audit: Vec::new(),
        }
    }

    fn current_key(&self) -> Option<&str> {
        self.org.as_ref().and_then(|o| o.key.as_deref())
    }

    /// Every key the org held and no longer holds.
    fn retired(&self) -> Vec<String> {
        let current = self.current_key();
        let mut out: Vec<String> = Vec::new();
        for k in &self.keys {
            if Some(k.as_str()) != current && !out.contains(k) {
                out.push(k.clone());
            }
        }
        out
    }

    /// Records a mutation: who, when, and the audit event.
    fn touch(&mut self, actor: &str, action: &'static str) {
        let now = self.now;
        let o = self.org.as_mut().expect("a mutation of an existing org");
        o.modified_by = actor.to_owned();
        o.modified_on = now;
        self.audit.push((actor.to_owned(), action));
    }

    /// The key rules every key change obeys: a disabled key first, then an
    /// expired subscription (CONTRACT §4, "Disable is checked first").
    fn guard_key_change(&self) -> Result<&ModelOrg, &'static str> {
        let o = self.org.as_ref().ok_or("ORG_NOT_FOUND")?;
        if o.disabled.is_some() {
            return Err("KEY_DISABLED");
        }
        if o.expired(self.now) {
            return Err("SUBSCRIPTION_EXPIRED");
        }
        Ok(o)
    }

    fn provision(&mut self, expires_in_ms: Option<i64>, limits: &LimitsArg) -> Expect {
        // A malformed request is refused before the store is consulted.
        if limits.absurd() {
            return Expect::Refused("INVALID_LIMITS");
        }
        if self.org.is_some() {
            return Expect::Refused("ORG_EXISTS");
        }
        let v = |f: Option<Limit>| f.map(Limit::value);
        self.org = Some(ModelOrg {
            key: None,
            disabled: None,
            expires_at: expires_in_ms.map(|ms| self.at(ms)),
            overrides: [
                v(limits.rate_per_sec),
                v(limits.burst),
                v(limits.threshold_calls),
                v(limits.threshold_window_secs),
            ],
            generation: 1,
            modified_by: "provider".to_owned(),
            modified_on: self.now,
            window: None,
        });
        self.audit.push(("provider".to_owned(), "provision"));
        Expect::RandomKey
    }

    fn add(&mut self, actor: &str) -> Expect {
        match self.guard_key_change() {
            Err(code) => Expect::Refused(code),
            Ok(o) if o.key.is_some() => Expect::Refused("KEY_EXISTS"),
            Ok(_) => {
                self.key_changed(None, actor, "add_key");
                Expect::RandomKey
            }
        }
    }

    fn edit(&mut self, new: &str, actor: &str) -> Expect {
        let o = match self.guard_key_change() {
            Err(code) => return Expect::Refused(code),
            Ok(o) => o,
        };
        // The key sent is checked before the org's key is looked at.
        if !well_formed(new) {
            return Expect::Refused("INVALID_KEY_FORMAT");
        }
        match o.key.as_deref() {
            None => Expect::Refused("NO_KEY"),
            Some(old) if old == new => Expect::Refused("KEY_UNCHANGED"),
            Some(_) => {
                self.key_changed(Some(new.to_owned()), actor, "edit_key");
                Expect::Done
            }
        }
    }

    fn regenerate(&mut self, actor: &str) -> Expect {
        match self.guard_key_change() {
            Err(code) => Expect::Refused(code),
            Ok(o) if o.key.is_none() => Expect::Refused("NO_KEY"),
            Ok(_) => {
                self.key_changed(None, actor, "regenerate_key");
                Expect::RandomKey
            }
        }
    }

    fn delete(&mut self, actor: &str) -> Expect {
        match self.guard_key_change() {
            Err(code) => Expect::Refused(code),
            Ok(o) if o.key.is_none() => Expect::Refused("NO_KEY"),
            Ok(_) => {
                self.key_changed(None, actor, "delete_key");
                Expect::Done
            }
        }
    }

    /// A key change that succeeded: the new key (`None` for a random one, which
    /// [`Model::learn_key`] fills in, or for a delete), the next generation.
    fn key_changed(&mut self, key: Option<String>, actor: &str, action: &'static str) {
        let o = self.org.as_mut().expect("checked by the guard");
        o.key = key.clone();
        o.generation += 1;
        if let Some(k) = key {
            self.keys.push(k);
        }
        self.touch(actor, action);
    }

    /// The random key keygate chose for a provision, add or regenerate.
    fn learn_key(&mut self, key: &str) {
        let o = self.org.as_mut().expect("a random key for an existing org");
        o.key = Some(key.to_owned());
        self.keys.push(key.to_owned());
    }

    fn disable(&mut self, reason: &str) -> Expect {
        let Some(o) = self.org.as_mut() else {
            return Expect::Refused("ORG_NOT_FOUND");
        };
        o.disabled = Some(reason.to_owned());
        self.touch("provider", "disable");
        Expect::Done
    }

    fn enable(&mut self) -> Expect {
        let Some(o) = self.org.as_mut() else {
            return Expect::Refused("ORG_NOT_FOUND");
        };
        o.disabled = None;
        // "the threshold count starts afresh"
        o.window = None;
        self.touch("provider", "enable");
        Expect::Done
    }

    fn set_subscription(&mut self, expires_in_ms: Option<i64>) -> Expect {
        let at = expires_in_ms.map(|ms| self.at(ms));
        let Some(o) = self.org.as_mut() else {
            return Expect::Refused("ORG_NOT_FOUND");
        };
        o.expires_at = at;
        self.touch("provider", "set_subscription");
        Expect::Done
    }

    fn set_limits(&mut self, limits: &LimitsArg) -> Expect {
        let Some(o) = self.org.as_mut() else {
            return Expect::Refused("ORG_NOT_FOUND");
        };
        if limits.absurd() {
            return Expect::Refused("INVALID_LIMITS");
        }
        for (slot, new) in o.overrides.iter_mut().zip(limits.fields()) {
            if let Some(v) = new {
                *slot = Some(v.value());
            }
        }
        self.touch("provider", "set_limits");
        Expect::Done
    }

    /// One call through the gate with `key`, in the contract's order of checks.
    fn call(&mut self, post: bool, key: &str) -> CallOutcome {
        let now = self.now;
        let defaults = self.defaults;
        let Some(o) = self.org.as_mut() else {
            return refused(401, "INVALID_KEY");
        };
        if !well_formed(key) || o.key.as_deref() != Some(key) {
            return refused(401, "INVALID_KEY");
        }
        if o.disabled.is_some() {
            return refused(403, "KEY_DISABLED");
        }
        let [_, _, threshold_calls, window_secs] = o.limits(defaults);
        let now_secs = now / NANOS;
        let (start, count) = match o.window {
            Some((start, count)) if now_secs < start + u64::from(window_secs) => (start, count + 1),
            _ => (now_secs, 1),
        };
        o.window = Some((start, count));
        if count > threshold_calls {
            // This call takes the org past its threshold: the key is disabled,
            // durably, by keygate itself.
            o.disabled = Some(THRESHOLD_REASON.to_owned());
            self.touch("system", "auto_disable");
            return refused(403, "KEY_DISABLED");
        }
        if post && o.expired(now) {
            return refused(403, "SUBSCRIPTION_EXPIRED");
        }
        SERVED
    }

    /// A restart: the threshold count is kept in memory only.
    fn reopen(&mut self) {
        if let Some(o) = self.org.as_mut() {
            o.window = None;
        }
    }

    /// `ms` milliseconds from now, as nanoseconds.
    fn at(&self, ms: i64) -> u64 {
        let delta = ms.unsigned_abs() * 1_000_000;
        if ms < 0 {
            self.now - delta
        } else {
            self.now + delta
        }
    }
}

// ---------------------------------------------------------------------------
// keygate, as the cases drive it
// ---------------------------------------------------------------------------

type Inner =
    tower::util::BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

/// A service that answers every request it is given with 200 `upstream`.
fn upstream() -> Inner {
    tower::util::BoxCloneSyncService::new(tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::from("upstream")))
    }))
}

struct Keygate {
    backend: Arc<MemoryBackend>,
    clock: Arc<ManualClock>,
    defaults: Limits,
    store: Store,
    gate: KeyGate<Inner>,
}

impl Keygate {
    async fn new(defaults: Limits) -> Keygate {
        let backend = Arc::new(MemoryBackend::new());
        let clock = Arc::new(ManualClock::new(T0));
        let store = Store::open(backend.clone(), clock.clone(), defaults)
            .await
            .expect("an empty memory backend opens");
        Keygate {
            gate: KeyGate::new(upstream(), store.clone(), GateConfig::default()),
            backend,
            clock,
            defaults,
            store,
        }
    }

    /// A restart: a new store (and gate) over the same backend.
    async fn reopen(&mut self) {
        self.store = Store::open(self.backend.clone(), self.clock.clone(), self.defaults)
            .await
            .expect("the memory backend reopens");
        self.gate = KeyGate::new(upstream(), self.store.clone(), GateConfig::default());
    }

    fn now(&self) -> Timestamp {
        use keygate::clock::Clock;
        self.clock.now()
    }

    /// One call through the gate: status, and the refusal's code.
    async fn call(&self, post: bool, key: &str) -> (u16, Option<String>) {
        let method = if post { Method::POST } else { Method::GET };
        let req = Request::builder()
            .method(method)
            .uri(format!("/{ORG}/v1/things"))
            .header("x-api-key", key)
            .body(Full::default())
            .expect("a valid request");
        let res = self
            .gate
            .clone()
            .oneshot(req)
            .await
            .expect("the gate is infallible");
        let status = res.status().as_u16();
        let body = res
            .into_body()
            .collect()
            .await
            .expect("a body in memory")
            .to_bytes();
        let code = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("code")?.as_str().map(str::to_owned));
        if status == 200 {
            assert_eq!(body, "upstream", "a 200 that is not the upstream's");
        }
        (status, code)
    }
}

/// The contract code of a refusal; `None` for a success.
fn code_of<T>(r: &Result<T, OpError>) -> Option<&'static str> {
    r.as_ref().err().map(OpError::code)
}

fn actor(by_admin: bool) -> Actor {
    if by_admin {
        Actor::Token(ADMIN.into())
    } else {
        Actor::Provider
    }
}

/// `ms` from now as a timestamp, from the model's arithmetic.
fn timestamp(model: &Model, ms: Option<i64>) -> Option<Timestamp> {
    ms.map(|ms| Timestamp::from_nanos(model.at(ms)))
}

/// Checks that `answer` is what the model expected, and teaches the model a
/// random key keygate chose.
fn settle(
    step: &str,
    model: &mut Model,
    expected: Expect,
    answer: Result<Option<OrgView>, OpError>,
) -> Result<(), TestCaseError> {
    match (expected, answer) {
        (Expect::Refused(code), Err(e)) => {
            prop_assert_eq!(code, e.code(), "{}: refused with the wrong code", step);
        }
        (Expect::Refused(code), Ok(_)) => {
            prop_assert!(false, "{}: succeeded, the model says {}", step, code);
        }
        (Expect::Done, Ok(_)) => {}
        (Expect::RandomKey, Ok(view)) => {
            let key = view
                .and_then(|v| v.state.key)
                .map(|k| k.expose().to_owned());
            let Some(key) = key else {
                return Err(TestCaseError::fail(format!("{step}: no key in the answer")));
            };
            prop_assert!(well_formed(&key), "{}: malformed random key", step);
            prop_assert!(
                !model.keys.contains(&key),
                "{}: a random key equal to an earlier one",
                step
            );
            model.learn_key(&key);
        }
        (expected, Err(e)) => {
            prop_assert!(
                false,
                "{}: refused with {}, the model expected {:?}",
                step,
                e.code(),
                expected
            );
        }
    }
    Ok(())
}

/// The key page matches the model, field by field.
fn check_view(step: &str, kg: &Keygate, model: &Model) -> Result<(), TestCaseError> {
    let view = kg.store.view(ORG);
    let Some(o) = &model.org else {
        prop_assert_eq!(
            code_of(&view),
            Some("ORG_NOT_FOUND"),
            "{}: an org the model does not have",
            step
        );
        return Ok(());
    };
    let v = match view {
        Ok(v) => v,
        Err(e) => {
            return Err(TestCaseError::fail(format!(
                "{step}: no key page ({})",
                e.code()
            )))
        }
    };
    let s = &v.state;
    prop_assert_eq!(
        s.key.map(|k| k.expose().to_owned()),
        o.key.clone(),
        "{}: key",
        step
    );
    let reason = match &s.status {
        KeyStatus::Enabled => None,
        KeyStatus::Disabled { reason } => Some(reason.to_string()),
    };
    prop_assert_eq!(reason, o.disabled.clone(), "{}: status and reason", step);
    prop_assert_eq!(
        s.subscription_expires_at.map(Timestamp::as_nanos),
        o.expires_at,
        "{}: subscription",
        step
    );
    prop_assert_eq!(
        s.subscription_expired(kg.now()),
        o.expired(model.now),
        "{}: subscription expired",
        step
    );
    prop_assert_eq!(s.generation, o.generation, "{}: generation", step);
    prop_assert_eq!(
        s.last_modified_by.as_str(),
        o.modified_by.as_str(),
        "{}: last modified by",
        step
    );
    prop_assert_eq!(
        s.last_modified_on.as_nanos(),
        o.modified_on,
        "{}: last modified on",
        step
    );
    let overrides = [
        s.limits.rate_per_sec,
        s.limits.burst,
        s.limits.threshold_calls,
        s.limits.threshold_window_secs,
    ]
    .map(|v| v.map(std::num::NonZeroU32::get));
    prop_assert_eq!(overrides, o.overrides, "{}: limit overrides", step);
    let l = o.limits(model.defaults);
    let in_force = [
        v.limits.rate_per_sec,
        v.limits.burst,
        v.limits.threshold_calls,
        v.limits.threshold_window_secs,
    ];
    prop_assert_eq!(in_force, l, "{}: limits in force", step);
    Ok(())
}

/// The audit log matches the model's, and carries no key.
async fn check_audit(step: &str, kg: &Keygate, model: &Model) -> Result<(), TestCaseError> {
    let Ok(events) = kg.store.audit(ORG).await else {
        prop_assert!(model.org.is_none(), "{}: no audit log", step);
        return Ok(());
    };
    let seen: Vec<(String, &str)> = events
        .iter()
        .map(|e| (e.actor.as_str().to_owned(), e.action.as_str()))
        .collect();
    let expected: Vec<(String, &str)> = model.audit.iter().map(|(a, b)| (a.clone(), *b)).collect();
    prop_assert_eq!(seen, expected, "{}: audit log", step);
    for e in &events {
        for k in &model.keys {
            prop_assert!(
                !e.detail.contains(k.as_str()),
                "{}: a key in the audit detail {:?}",
                step,
                e.detail
            );
        }
    }
    Ok(())
}

/// Through the gate: the current key is accepted for GET unless disabled (or
/// the call crosses the threshold), every replaced key is refused with 401,
/// and so is a stranger's.
async fn check_gate(step: &str, kg: &Keygate, model: &mut Model) -> Result<(), TestCaseError> {
    if let Some(key) = model.current_key().map(str::to_owned) {
        let expected = model.call(false, &key);
        let (status, code) = kg.call(false, &key).await;
        prop_assert_eq!(
            (status, code.as_deref()),
            (expected.status, expected.code),
            "{}: GET with the current key",
            step
        );
    }
    for old in model.retired() {
        let (status, code) = kg.call(false, &old).await;
        prop_assert_eq!(
            (status, code.as_deref()),
            (401, Some("INVALID_KEY")),
            "{}: GET with a replaced key",
            step
        );
    }
    let (status, code) = kg.call(false, STRANGER).await;
    prop_assert_eq!(
        (status, code.as_deref()),
        (401, Some("INVALID_KEY")),
        "{}: GET with a stranger's key",
        step
    );
    Ok(())
}

/// Applies one operation to both and compares the answers.
async fn step(i: usize, op: &Op, kg: &mut Keygate, model: &mut Model) -> Result<(), TestCaseError> {
    let name = format!("step {i} {op:?}");
    let view = |r: Result<OrgView, OpError>| r.map(Some);
    match op {
        Op::Provision {
            expires_in_ms,
            limits,
        } => {
            let at = timestamp(model, *expires_in_ms);
            let id = OrgId::parse(ORG).expect("a valid org id");
            let answer = kg
                .store
                .provision(id, at, limits.overrides(), Actor::Provider)
                .await;
            let expected = model.provision(*expires_in_ms, limits);
            settle(&name, model, expected, view(answer))?;
        }
        Op::Add { by_admin } => {
            let answer = kg.store.add(ORG, actor(*by_admin)).await;
            let expected = model.add(actor(*by_admin).as_str());
            settle(&name, model, expected, view(answer))?;
        }
        Op::Edit { to, by_admin } => {
            let current = model.current_key().unwrap_or(STRANGER).to_owned();
            let new = match to {
                EditTo::Current => current,
                EditTo::CaseFlipped => {
                    let mut flipped = current.clone();
                    if let Some(pos) = current.find(|c: char| c.is_ascii_alphabetic()) {
                        let c = current.as_bytes()[pos];
                        let other = if c.is_ascii_uppercase() {
                            c.to_ascii_lowercase()
                        } else {
                            c.to_ascii_uppercase()
                        };
                        flipped.replace_range(pos..=pos, &char::from(other).to_string());
                    }
                    flipped
                }
                EditTo::Fresh(k) => k.clone(),
                EditTo::Earlier(_) if model.keys.is_empty() => current,
                EditTo::Earlier(n) => model.keys[n % model.keys.len()].clone(),
                EditTo::Malformed(k) => k.clone(),
            };
            let answer = kg.store.edit(ORG, &new, actor(*by_admin)).await;
            if let Ok(v) = &answer {
                prop_assert_eq!(
                    v.state.key.map(|k| k.expose().to_owned()),
                    Some(new.clone()),
                    "{}: the edited key is not the one sent",
                    name
                );
            }
            let expected = model.edit(&new, actor(*by_admin).as_str());
            settle(&name, model, expected, view(answer))?;
        }
        Op::Regenerate { by_admin } => {
            // `settle` checks the new key differs from every earlier one.
            let answer = kg.store.regenerate(ORG, actor(*by_admin)).await;
            let expected = model.regenerate(actor(*by_admin).as_str());
            settle(&name, model, expected, view(answer))?;
        }
        Op::Delete { by_admin } => {
            let answer = kg.store.delete(ORG, actor(*by_admin)).await;
            let expected = model.delete(actor(*by_admin).as_str());
            settle(&name, model, expected, view(answer))?;
        }
        Op::Disable { reason } => {
            let answer = kg.store.disable(ORG, reason, Actor::Provider).await;
            let expected = model.disable(reason);
            settle(&name, model, expected, view(answer))?;
        }
        Op::Enable => {
            let answer = kg.store.enable(ORG, Actor::Provider).await;
            let expected = model.enable();
            settle(&name, model, expected, view(answer))?;
        }
        Op::SetSubscription { expires_in_ms } => {
            let at = timestamp(model, *expires_in_ms);
            let answer = kg.store.set_subscription(ORG, at, Actor::Provider).await;
            let expected = model.set_subscription(*expires_in_ms);
            settle(&name, model, expected, view(answer))?;
        }
        Op::SetLimits(limits) => {
            let answer = kg
                .store
                .set_limits(ORG, limits.overrides(), Actor::Provider)
                .await;
            let expected = model.set_limits(limits);
            settle(&name, model, expected, view(answer))?;
        }
        Op::Advance { ms } => {
            kg.clock.advance(Duration::from_millis(*ms));
            model.now += ms * 1_000_000;
        }
        Op::Calls { n, post } => {
            let key = model.current_key().unwrap_or(STRANGER).to_owned();
            for call in 0..*n {
                let expected = model.call(*post, &key);
                let (status, code) = kg.call(*post, &key).await;
                prop_assert_eq!(
                    (status, code.as_deref()),
                    (expected.status, expected.code),
                    "{}: call {}",
                    name,
                    call
                );
            }
        }
        Op::Reopen => {
            let before = (kg.store.view(ORG), kg.store.list());
            kg.reopen().await;
            model.reopen();
            let after = (kg.store.view(ORG), kg.store.list());
            prop_assert_eq!(
                before.0.as_ref().ok(),
                after.0.as_ref().ok(),
                "{}: the key page changed",
                name
            );
            prop_assert_eq!(code_of(&before.0), code_of(&after.0), "{}", name);
            prop_assert_eq!(before.1, after.1, "{}: the list changed", name);
        }
    }
    check_view(&name, kg, model)?;
    check_audit(&name, kg, model).await?;
    check_gate(&name, kg, model).await?;
    // The gate's own call may have crossed the threshold.
    check_view(&format!("{name}, after the gate's checks"), kg, model)?;
    Ok(())
}

async fn run_case(defaults: Limits, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut kg = Keygate::new(defaults).await;
    let mut model = Model::new(T0.as_nanos(), defaults);
    for (i, op) in ops.iter().enumerate() {
        step(i, op, &mut kg, &mut model).await?;
    }
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        // Only tests/ is ours to write to: a failing case is printed, not saved.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_operations_and_clock_moves_agree_with_the_reference_model(
        defaults in defaults(),
        ops in ops(),
    ) {
        runtime().block_on(run_case(defaults, ops))?;
    }
}

/// Provisioned, three calls counted against a threshold of ten, then the
/// threshold lowered to two: the next call takes the org past its threshold,
/// so (CONTRACT §3) the key is now disabled, durably, with the threshold's
/// reason.
#[test]
fn lowering_the_threshold_below_the_windows_count_disables_the_key_on_the_next_call() {
    runtime().block_on(async {
        let defaults = Limits {
            rate_per_sec: 10_000_000,
            burst: 10_000_000,
            threshold_calls: 10,
            threshold_window_secs: 3600,
        };
        let mut kg = Keygate::new(defaults).await;
        let view = kg
            .store
            .provision(
                OrgId::parse(ORG).unwrap(),
                None,
                LimitOverrides::default(),
                Actor::Provider,
            )
            .await
            .unwrap();
        let key = view.state.key.unwrap().expose().to_owned();
        for _ in 0..3 {
            assert_eq!(kg.call(false, &key).await, (200, None));
        }
        kg.store
            .set_limits(
                ORG,
                LimitOverrides::from_values(None, None, Some(2), None),
                Actor::Provider,
            )
            .await
            .unwrap();
        let refused = (403, Some("KEY_DISABLED".to_owned()));
        assert_eq!(kg.call(false, &key).await, refused);
        let state = kg.store.view(ORG).unwrap().state;
        assert_eq!(
            state.status,
            KeyStatus::Disabled {
                reason: THRESHOLD_REASON.into()
            },
            "refused as disabled, but the key page says otherwise"
        );
        assert_eq!(state.last_modified_by, Actor::System);
        let last = kg.store.audit(ORG).await.unwrap().pop().unwrap();
        assert_eq!(last.action.as_str(), "auto_disable");
        // Durably: a restart (a fresh count) keeps it disabled.
        kg.reopen().await;
        assert_eq!(kg.call(false, &key).await, refused);
    });
}
