//! An org's state and the rules that change it.
//!
//! [`OrgState`] is a plain value and every operation is a pure function from one
//! state to the next ([`Transition`]) or to a refusal ([`OpError`]). The store
//! makes a transition durable and visible; the rules live here, so they are
//! tested without a store, a clock or a runtime.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{LimitOverrides, OpError};
use crate::clock::Timestamp;
use crate::key::ApiKey;

/// Whether the org's key may be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum KeyStatus {
    /// The key works.
    Enabled,
    /// The key is refused until the provider enables it.
    Disabled {
        /// Why, for the key page: e.g. `call threshold exceeded`.
        reason: Box<str>,
    },
}

/// The reason keygate records when an org exceeds its call threshold.
pub const THRESHOLD_REASON: &str = "call threshold exceeded";

/// Who made a change, as the key page's "Last Modified By" shows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Actor {
    /// The service provider (the config's provider token).
    Provider,
    /// keygate itself: the automatic disable.
    System,
    /// An admin token, by name.
    Token(TokenName),
}

/// An admin token's name as [`Actor`] holds it: one thin pointer, so that an
/// `Actor`, which every org's state carries, takes 16 bytes instead of the 24 a
/// fat `Arc<str>` would make it (two unit variants need a niche of their own).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TokenName(Arc<Box<str>>);

impl TokenName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for TokenName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for TokenName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl From<&str> for TokenName {
    fn from(name: &str) -> Self {
        TokenName(Arc::new(name.into()))
    }
}

impl From<String> for TokenName {
    fn from(name: String) -> Self {
        TokenName(Arc::new(name.into_boxed_str()))
    }
}

impl Actor {
    /// The name shown to admins.
    pub fn as_str(&self) -> &str {
        match self {
            Actor::Provider => "provider",
            Actor::System => "system",
            Actor::Token(name) => name.as_str(),
        }
    }
}

impl Serialize for Actor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Actor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::de::parse_str(d, |s| {
            Ok::<_, std::convert::Infallible>(match s {
                "provider" => Actor::Provider,
                "system" => Actor::System,
                name => Actor::Token(name.into()),
            })
        })
    }
}

/// What a mutation did, as the audit log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Action {
    /// The org was created with a random key.
    Provision,
    /// A key was added after the previous one was deleted.
    AddKey,
    /// The key was replaced by one the admin chose.
    EditKey,
    /// The key was replaced by a random one.
    RegenerateKey,
    /// The key was removed.
    DeleteKey,
    /// The provider disabled the key.
    Disable,
    /// keygate disabled the key: the org exceeded its call threshold.
    AutoDisable,
    /// The provider enabled the key.
    Enable,
    /// The subscription's end was set or cleared.
    SetSubscription,
    /// The org's limits were changed.
    SetLimits,
    /// An admin or viewer token was created for the org.
    CreateToken,
    /// An admin or viewer token of the org was deleted.
    DeleteToken,
    /// An admin or viewer token of the org was given a new secret; the old
    /// one no longer works.
    RotateToken,
    /// The org was deleted, with its key and its tokens; its audit log stays.
    DeleteOrg,
    /// An API user (session login) was created for the org.
    CreateApiUser,
    /// An API user of the org was deleted; its sessions ended.
    DeleteApiUser,
}

impl Action {
    /// The name used in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Provision => "provision",
            Action::AddKey => "add_key",
            Action::EditKey => "edit_key",
            Action::RegenerateKey => "regenerate_key",
            Action::DeleteKey => "delete_key",
            Action::Disable => "disable",
            Action::AutoDisable => "auto_disable",
            Action::Enable => "enable",
            Action::SetSubscription => "set_subscription",
            Action::SetLimits => "set_limits",
            Action::CreateToken => "create_token",
            Action::DeleteToken => "delete_token",
            Action::RotateToken => "rotate_token",
            Action::DeleteOrg => "delete_org",
            Action::CreateApiUser => "create_api_user",
            Action::DeleteApiUser => "delete_api_user",
        }
    }
}

/// Everything keygate keeps about one org, as persisted.
///
/// `repr(C)`: the fields a request reads (the key, the status, the
/// subscription's end) first, where the live record keeps its hot fields
/// (`Org` in `src/org/mod.rs`).
///
/// Serialized with its status flattened into its own object
/// (`"status":"disabled","reason":"..."`); deserialized through
/// [`StateFields`], which reads that same JSON in one pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[repr(C)]
pub struct OrgState {
    /// The one current key, or none after a delete.
    pub key: Option<ApiKey>,
    /// Enabled, or disabled with a reason.
    #[serde(flatten)]
    pub status: KeyStatus,
    /// When the subscription ends; `None` for never.
    pub subscription_expires_at: Option<Timestamp>,
    /// The org's own limits over the configured defaults.
    pub limits: LimitOverrides,
    /// Who made the last change.
    pub last_modified_by: Actor,
    /// When the last change was made.
    pub last_modified_on: Timestamp,
    /// Bumped by every key change (provision, add, edit, regenerate, delete), so
    /// a reader can tell two keys apart without seeing them.
    pub generation: u64,
}

/// [`KeyStatus`]'s tag, as the `status` field of an [`OrgState`] names it.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum StatusTag {
    Enabled,
    Disabled,
}

/// An [`OrgState`]'s JSON, field by field, with the status's tag and reason as
/// two plain fields: what `OrgState` is read through. Deriving `Deserialize`
/// on `OrgState` itself, serde reads its flattened status by first buffering
/// every field of the object, keys and values, and then reading the state from
/// the buffer; that was a fifth of a start-up's time at 1,000,000 orgs
/// (BENCHMARKS.md, "Issue 17"). This struct reads the same JSON straight, and
/// accepts what the derived reader accepted: unknown fields are ignored, an
/// absent `Option` is `None`, a disabled state needs its reason and an enabled
/// one ignores any.
#[derive(Deserialize)]
pub(crate) struct StateFields {
    key: Option<ApiKey>,
    status: StatusTag,
    reason: Option<Box<str>>,
    subscription_expires_at: Option<Timestamp>,
    limits: LimitOverrides,
    last_modified_by: Actor,
    last_modified_on: Timestamp,
    generation: u64,
    /// The store's version of the state, which the redb file writes into the
    /// state's own object ([`OrgRecord`](crate::store::OrgRecord)'s
    /// `version`); read here so that a stored record is decoded in one pass.
    /// Absent elsewhere, and in records written before versions existed: 0.
    #[serde(default)]
    pub(crate) version: u64,
}

impl StateFields {
    /// A stored org's version and state by [`read_canonical_record`], if
    /// the record is in the form keygate writes for an enabled org.
    pub(crate) fn read_canonical(record: &[u8]) -> Option<(u64, OrgState)> {
        read_canonical_record(record)
    }

    /// The state these fields hold, or serde's error for a disabled state
    /// without its reason.
    pub(crate) fn into_state<E: serde::de::Error>(self) -> Result<OrgState, E> {
        let status = match (self.status, self.reason) {
            (StatusTag::Enabled, _) => KeyStatus::Enabled,
            (StatusTag::Disabled, Some(reason)) => KeyStatus::Disabled { reason },
            (StatusTag::Disabled, None) => return Err(E::missing_field("reason")),
        };
        Ok(OrgState {
            key: self.key,
            status,
            subscription_expires_at: self.subscription_expires_at,
            limits: self.limits,
            last_modified_by: self.last_modified_by,
            last_modified_on: self.last_modified_on,
            generation: self.generation,
        })
    }
}

/// A stored org's record (its version and state) if it is in the exact
/// form keygate writes for an enabled org without limit overrides, which is
/// nearly every org: `{"version":N,"key":"...","status":"enabled",
/// "subscription_expires_at":...,"limits":{},"last_modified_by":"...",
/// "last_modified_on":"...","generation":N}`, keys in that order, no
/// whitespace, no escapes, times in [`Timestamp::parse_canonical`]'s form.
/// `None` for anything else, which serde then reads (or refuses) through
/// [`StateFields`] as before; what this reads, serde reads the same (the
/// tests compare the two). serde_json's general reading was most of a
/// start-up's instructions (BENCHMARKS.md, "Item 4").
fn read_canonical_record(b: &[u8]) -> Option<(u64, OrgState)> {
    let mut r = Canonical(b);
    r.literal(b"{\"version\":")?;
    let version = r.integer()?;
    r.literal(b",\"key\":")?;
    let key = match r.literal(b"null") {
        Some(()) => None,
        None => Some(ApiKey::parse(r.string()?).ok()?),
    };
    r.literal(b",\"status\":\"enabled\",\"subscription_expires_at\":")?;
    let subscription_expires_at = match r.literal(b"null") {
        Some(()) => None,
        None => Some(Timestamp::parse_canonical(r.string()?)?),
    };
    r.literal(b",\"limits\":{},\"last_modified_by\":")?;
    let last_modified_by = match std::str::from_utf8(r.string()?).ok()? {
        "provider" => Actor::Provider,
        "system" => Actor::System,
        name => Actor::Token(name.into()),
    };
    r.literal(b",\"last_modified_on\":")?;
    let last_modified_on = Timestamp::parse_canonical(r.string()?)?;
    r.literal(b",\"generation\":")?;
    let generation = r.integer()?;
    r.literal(b"}")?;
    if !r.0.is_empty() {
        return None;
    }
    let state = OrgState {
        key,
        status: KeyStatus::Enabled,
        subscription_expires_at,
        limits: LimitOverrides::default(),
        last_modified_by,
        last_modified_on,
        generation,
    };
    Some((version, state))
}

/// [`read_canonical_record`]'s place in the record: what is left of it.
struct Canonical<'a>(&'a [u8]);

impl<'a> Canonical<'a> {
    /// Steps over `lit`, if it comes next.
    fn literal(&mut self, lit: &[u8]) -> Option<()> {
        self.0 = self.0.strip_prefix(lit)?;
        Some(())
    }

    /// A JSON string's bytes, if one without escapes or control characters
    /// comes next.
    fn string(&mut self) -> Option<&'a [u8]> {
        let rest = self.0.strip_prefix(b"\"")?;
        let end = rest
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        if rest[end] != b'"' {
            return None;
        }
        self.0 = &rest[end + 1..];
        Some(&rest[..end])
    }

    /// A JSON integer that fits a `u64`, if one comes next: digits, no sign,
    /// no leading zero (which JSON refuses).
    fn integer(&mut self) -> Option<u64> {
        let digits = self.0.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || (digits > 1 && self.0[0] == b'0') {
            return None;
        }
        let mut v: u64 = 0;
        for &c in &self.0[..digits] {
            v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        }
        self.0 = &self.0[digits..];
        Some(v)
    }
}

impl<'de> Deserialize<'de> for OrgState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        StateFields::deserialize(d)?.into_state()
    }
}

/// The result of an operation: the next state and what the audit log says.
#[derive(Debug, Clone)]
pub struct Transition {
    /// The state after the operation.
    pub next: OrgState,
    /// What happened.
    pub action: Action,
    /// A short human description. Never the key: at most its last four characters.
    pub detail: String,
}

impl OrgState {
    /// A newly provisioned org: a random key, enabled.
    pub fn provisioned(
        now: Timestamp,
        actor: Actor,
        subscription_expires_at: Option<Timestamp>,
        limits: LimitOverrides,
    ) -> Transition {
        let key = ApiKey::generate();
        Transition {
            detail: format!("provisioned with key ending {}", key.fingerprint()),
            next: OrgState {
                key: Some(key),
                status: KeyStatus::Enabled,
                subscription_expires_at,
                limits,
                last_modified_by: actor,
                last_modified_on: now,
                generation: 1,
            },
            action: Action::Provision,
        }
    }

    /// Whether the key is disabled.
    pub fn is_disabled(&self) -> bool {
        matches!(self.status, KeyStatus::Disabled { .. })
    }

    /// Whether the subscription has ended at `now`.
    pub fn subscription_expired(&self, now: Timestamp) -> bool {
        self.subscription_expires_at.is_some_and(|end| now >= end)
    }

    /// Adds a random key; only when the org has none.
    pub fn add(&self, now: Timestamp, actor: Actor) -> Result<Transition, OpError> {
        self.guard_key_change(now)?;
        if self.key.is_some() {
            return Err(OpError::KeyExists);
        }
        let key = ApiKey::generate();
        let detail = format!("added key ending {}", key.fingerprint());
        Ok(self.key_change(Some(key), now, actor, Action::AddKey, detail))
    }

    /// Replaces the key with `new`, which must be well-formed and differ from the
    /// current key.
    pub fn edit(&self, new: &str, now: Timestamp, actor: Actor) -> Result<Transition, OpError> {
        self.guard_key_change(now)?;
        let new = ApiKey::parse(new.as_bytes()).map_err(|_| OpError::InvalidKeyFormat)?;
        let old = self.key.as_ref().ok_or(OpError::NoKey)?;
        if old.ct_eq(&new) {
            return Err(OpError::KeyUnchanged);
        }
        let detail = format!(
            "replaced key ending {} with key ending {}",
            old.fingerprint(),
            new.fingerprint()
        );
        Ok(self.key_change(Some(new), now, actor, Action::EditKey, detail))
    }

    /// Replaces the key with a random one that differs from it.
    pub fn regenerate(&self, now: Timestamp, actor: Actor) -> Result<Transition, OpError> {
        self.guard_key_change(now)?;
        let old = self.key.as_ref().ok_or(OpError::NoKey)?;
        let new = ApiKey::generate_other_than(old);
        let detail = format!(
            "replaced key ending {} with a random key ending {}",
            old.fingerprint(),
            new.fingerprint()
        );
        Ok(self.key_change(Some(new), now, actor, Action::RegenerateKey, detail))
    }

    /// Removes the key.
    pub fn delete(&self, now: Timestamp, actor: Actor) -> Result<Transition, OpError> {
        self.guard_key_change(now)?;
        let old = self.key.as_ref().ok_or(OpError::NoKey)?;
        let detail = format!("deleted key ending {}", old.fingerprint());
        Ok(self.key_change(None, now, actor, Action::DeleteKey, detail))
    }

    /// Disables the key, by the provider's decision.
    pub fn disable(&self, reason: &str, now: Timestamp, actor: Actor) -> Transition {
        let reason: Box<str> = reason.trim().into();
        let detail = format!("disabled: {reason}");
        self.status_change(
            KeyStatus::Disabled { reason },
            now,
            actor,
            Action::Disable,
            detail,
        )
    }

    /// Disables the key because the org exceeded its call threshold. Refused (as
    /// [`OpError::KeyDisabled`]) when the key is already disabled, so a
    /// provider's reason is never overwritten.
    pub fn disable_over_threshold(&self, now: Timestamp) -> Result<Transition, OpError> {
        if self.is_disabled() {
            return Err(OpError::KeyDisabled);
        }
        Ok(self.status_change(
            KeyStatus::Disabled {
                reason: THRESHOLD_REASON.into(),
            },
            now,
            Actor::System,
            Action::AutoDisable,
            THRESHOLD_REASON.to_owned(),
        ))
    }

    /// Enables the key.
    pub fn enable(&self, now: Timestamp, actor: Actor) -> Transition {
        self.status_change(
            KeyStatus::Enabled,
            now,
            actor,
            Action::Enable,
            "enabled".to_owned(),
        )
    }

    /// Sets or clears the end of the subscription.
    pub fn set_subscription(
        &self,
        expires_at: Option<Timestamp>,
        now: Timestamp,
        actor: Actor,
    ) -> Transition {
        let detail = match expires_at {
            Some(at) => format!("subscription ends {at}"),
            None => "subscription does not end".to_owned(),
        };
        Transition {
            next: OrgState {
                subscription_expires_at: expires_at,
                last_modified_by: actor,
                last_modified_on: now,
                ..self.clone()
            },
            action: Action::SetSubscription,
            detail,
        }
    }

    /// Applies the set values of `limits` over the org's current overrides.
    pub fn set_limits(
        &self,
        limits: &LimitOverrides,
        now: Timestamp,
        actor: Actor,
    ) -> Result<Transition, OpError> {
        limits.validate()?;
        let merged = self.limits.merge(limits);
        let detail = serde_json::to_string(&merged).unwrap_or_default();
        Ok(Transition {
            next: OrgState {
                limits: merged,
                last_modified_by: actor,
                last_modified_on: now,
                ..self.clone()
            },
            action: Action::SetLimits,
            detail: format!("limits {detail}"),
        })
    }

    /// The rules every key change obeys, in the contract's order: a disabled key
    /// first, then an expired subscription.
    fn guard_key_change(&self, now: Timestamp) -> Result<(), OpError> {
        if self.is_disabled() {
            return Err(OpError::KeyDisabled);
        }
        if self.subscription_expired(now) {
            return Err(OpError::SubscriptionExpired);
        }
        Ok(())
    }

    fn key_change(
        &self,
        key: Option<ApiKey>,
        now: Timestamp,
        actor: Actor,
        action: Action,
        detail: String,
    ) -> Transition {
        Transition {
            next: OrgState {
                key,
                generation: self.generation + 1,
                last_modified_by: actor,
                last_modified_on: now,
                ..self.clone()
            },
            action,
            detail,
        }
    }

    fn status_change(
        &self,
        status: KeyStatus,
        now: Timestamp,
        actor: Actor,
        action: Action,
        detail: String,
    ) -> Transition {
        Transition {
            next: OrgState {
                status,
                last_modified_by: actor,
                last_modified_on: now,
                ..self.clone()
            },
            action,
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp::from_secs(1_000_000);

    fn nz(n: u32) -> Option<std::num::NonZeroU32> {
        std::num::NonZeroU32::new(n)
    }
    const T1: Timestamp = Timestamp::from_secs(1_000_100);

    fn admin() -> Actor {
        Actor::Token("alice".into())
    }

    fn fresh() -> OrgState {
        OrgState::provisioned(T0, Actor::Provider, None, LimitOverrides::default()).next
    }

    fn key(s: &str) -> ApiKey {
        ApiKey::parse(s.as_bytes()).unwrap()
    }

    fn without_key() -> OrgState {
        fresh().delete(T0, admin()).unwrap().next
    }

    fn disabled() -> OrgState {
        fresh().disable("abuse", T0, Actor::Provider).next
    }

    fn expired_at_t1() -> OrgState {
        fresh().set_subscription(Some(T1), T0, Actor::Provider).next
    }

    #[test]
    fn provisioning_gives_an_enabled_org_a_random_key() {
        let s = fresh();
        assert!(s.key.is_some());
        assert_eq!(s.status, KeyStatus::Enabled);
        assert_eq!(s.last_modified_by, Actor::Provider);
        assert_eq!(s.last_modified_on, T0);
    }

    #[test]
    fn add_refuses_while_a_key_exists() {
        assert!(matches!(fresh().add(T0, admin()), Err(OpError::KeyExists)));
    }

    #[test]
    fn add_after_delete_gives_a_new_random_key() {
        let t = without_key().add(T1, admin()).unwrap();
        assert!(t.next.key.is_some());
        assert_eq!(t.action, Action::AddKey);
        assert_eq!(t.next.last_modified_by, admin());
        assert_eq!(t.next.last_modified_on, T1);
    }

    #[test]
    fn edit_replaces_the_key_with_the_given_one() {
        let t = fresh().edit("NewKey123456", T1, admin()).unwrap();
        assert_eq!(t.next.key, Some(key("NewKey123456")));
    }

    #[test]
    fn edit_refuses_a_key_equal_to_the_current_one() {
        let s = fresh();
        let same = s.key.unwrap().expose().to_owned();
        assert!(matches!(
            s.edit(&same, T1, admin()),
            Err(OpError::KeyUnchanged)
        ));
    }

    #[test]
    fn edit_refuses_a_malformed_key() {
        for bad in [
            "short",
            "NewKey1234567",
            "NewKey12345-",
            "NewKey12345\u{e9}",
        ] {
            assert!(
                matches!(
                    fresh().edit(bad, T1, admin()),
                    Err(OpError::InvalidKeyFormat)
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn edit_refuses_when_there_is_no_key() {
        assert!(matches!(
            without_key().edit("NewKey123456", T1, admin()),
            Err(OpError::NoKey)
        ));
    }

    #[test]
    fn regenerate_gives_a_key_different_from_the_old_one() {
        let s = fresh();
        let t = s.regenerate(T1, admin()).unwrap();
        assert_ne!(t.next.key, s.key);
        assert!(t.next.key.is_some());
    }

    #[test]
    fn regenerate_and_delete_refuse_when_there_is_no_key() {
        let s = without_key();
        assert!(matches!(s.regenerate(T1, admin()), Err(OpError::NoKey)));
        assert!(matches!(s.delete(T1, admin()), Err(OpError::NoKey)));
    }

    #[test]
    fn delete_removes_the_key() {
        assert_eq!(without_key().key, None);
    }

    #[test]
    fn every_key_change_bumps_the_generation_and_nothing_else_does() {
        let s = fresh();
        let g = s.generation;
        let s = s.regenerate(T1, admin()).unwrap().next;
        assert_eq!(s.generation, g + 1);
        let s = s.edit("NewKey123456", T1, admin()).unwrap().next;
        assert_eq!(s.generation, g + 2);
        let s = s.delete(T1, admin()).unwrap().next;
        assert_eq!(s.generation, g + 3);
        let s = s.add(T1, admin()).unwrap().next;
        assert_eq!(s.generation, g + 4);
        let s = s.disable("x", T1, Actor::Provider).next;
        let s = s.enable(T1, Actor::Provider).next;
        let s = s.set_subscription(None, T1, Actor::Provider).next;
        assert_eq!(s.generation, g + 4);
    }

    #[test]
    fn a_disabled_key_blocks_add_edit_regenerate_and_delete() {
        let s = disabled();
        assert!(matches!(
            s.regenerate(T1, admin()),
            Err(OpError::KeyDisabled)
        ));
        assert!(matches!(
            s.edit("NewKey123456", T1, admin()),
            Err(OpError::KeyDisabled)
        ));
        assert!(matches!(s.delete(T1, admin()), Err(OpError::KeyDisabled)));
        assert!(matches!(
            s.delete(T1, Actor::Provider),
            Err(OpError::KeyDisabled)
        ));
        let s = without_key().disable("abuse", T0, Actor::Provider).next;
        assert!(matches!(s.add(T1, admin()), Err(OpError::KeyDisabled)));
    }

    #[test]
    fn an_expired_subscription_blocks_key_changes_from_its_end_on() {
        let s = expired_at_t1();
        let just_before = Timestamp::from_nanos(T1.as_nanos() - 1);
        assert!(s.regenerate(just_before, admin()).is_ok());
        assert!(matches!(
            s.regenerate(T1, admin()),
            Err(OpError::SubscriptionExpired)
        ));
        assert!(matches!(
            s.edit("NewKey123456", T1, admin()),
            Err(OpError::SubscriptionExpired)
        ));
        assert!(matches!(
            s.delete(T1, admin()),
            Err(OpError::SubscriptionExpired)
        ));
        let s = s.delete(T0, admin()).unwrap().next;
        assert!(matches!(
            s.add(T1, admin()),
            Err(OpError::SubscriptionExpired)
        ));
    }

    #[test]
    fn disabled_is_checked_before_expiry() {
        let s = expired_at_t1().disable("abuse", T0, Actor::Provider).next;
        assert!(matches!(
            s.regenerate(T1, admin()),
            Err(OpError::KeyDisabled)
        ));
    }

    #[test]
    fn disabled_is_checked_before_the_new_key_format() {
        assert!(matches!(
            disabled().edit("bad", T1, admin()),
            Err(OpError::KeyDisabled)
        ));
    }

    #[test]
    fn renewing_the_subscription_allows_key_changes_again() {
        let s = expired_at_t1()
            .set_subscription(None, T1, Actor::Provider)
            .next;
        assert!(s.regenerate(T1, admin()).is_ok());
    }

    #[test]
    fn enable_clears_a_disable() {
        let s = disabled().enable(T1, Actor::Provider).next;
        assert_eq!(s.status, KeyStatus::Enabled);
        assert!(s.regenerate(T1, admin()).is_ok());
    }

    #[test]
    fn the_threshold_disable_is_by_system_with_the_contract_reason() {
        let t = fresh().disable_over_threshold(T1).unwrap();
        assert_eq!(
            t.next.status,
            KeyStatus::Disabled {
                reason: THRESHOLD_REASON.into()
            }
        );
        assert_eq!(t.next.last_modified_by, Actor::System);
        assert_eq!(t.action, Action::AutoDisable);
    }

    #[test]
    fn the_threshold_disable_never_overwrites_a_providers_reason() {
        assert!(matches!(
            disabled().disable_over_threshold(T1),
            Err(OpError::KeyDisabled)
        ));
    }

    #[test]
    fn set_limits_refuses_absurd_values_and_merges_the_rest() {
        let s = fresh();
        let absurd = LimitOverrides {
            rate_per_sec: nz(u32::MAX),
            ..Default::default()
        };
        assert!(matches!(
            s.set_limits(&absurd, T1, Actor::Provider),
            Err(OpError::InvalidLimits(_))
        ));
        let s = s
            .set_limits(
                &LimitOverrides {
                    burst: nz(3),
                    ..Default::default()
                },
                T1,
                Actor::Provider,
            )
            .unwrap()
            .next;
        assert_eq!(s.limits.burst, nz(3));
        assert_eq!(s.limits.rate_per_sec, None);
    }

    #[test]
    fn audit_details_never_carry_the_key() {
        let s = fresh();
        let before = s.key.unwrap().expose().to_owned();
        let t = s.edit("NewKey123456", T1, admin()).unwrap();
        assert!(!t.detail.contains(&before));
        assert!(!t.detail.contains("NewKey123456"));
        assert!(t.detail.contains("3456"));
        let r = t.next.regenerate(T1, admin()).unwrap();
        assert!(!r.detail.contains(r.next.key.unwrap().expose()));
    }

    #[test]
    fn state_round_trips_through_json() {
        let s = disabled();
        let json = serde_json::to_string(&s).unwrap();
        let back: OrgState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }
}
