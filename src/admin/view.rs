//! What the admin API shows: the key page (KeyView) and audit events.

use serde::Serialize;

use super::Principal;
use crate::clock::Timestamp;
use crate::org::{KeyStatus, Limits};
use crate::store::{AuditEvent, OrgView};
use crate::token::Role;

/// One org's key page, as the contract's KeyView.
#[derive(Debug, Serialize)]
pub struct KeyView<'a> {
    org: &'a str,
    base_url: String,
    key: Option<String>,
    status: &'static str,
    disabled_reason: Option<&'a str>,
    subscription_expires_at: Option<Timestamp>,
    subscription_expired: bool,
    last_modified_by: &'a str,
    last_modified_on: Timestamp,
    /// Ours: bumped by every key change.
    generation: u64,
    /// Ours: the limits in force.
    limits: Limits,
}

impl<'a> KeyView<'a> {
    /// The page of `v` as `who` may see it at `now`: viewers get the key masked.
    pub fn new(v: &'a OrgView, base_url: String, who: &Principal, now: Timestamp) -> Self {
        let masked = matches!(who, Principal::Token(t) if t.role == Role::Viewer);
        let s = &v.state;
        KeyView {
            org: v.id.as_str(),
            base_url,
            key: s.key.as_ref().map(|k| {
                if masked {
                    k.masked()
                } else {
                    k.expose().to_owned()
                }
            }),
            status: if s.is_disabled() {
                "disabled"
            } else {
                "enabled"
            },
            disabled_reason: match &s.status {
                KeyStatus::Disabled { reason } => Some(reason),
                KeyStatus::Enabled => None,
            },
            subscription_expires_at: s.subscription_expires_at,
            subscription_expired: s.subscription_expired(now),
            last_modified_by: s.last_modified_by.as_str(),
            last_modified_on: s.last_modified_on,
            generation: s.generation,
            limits: v.limits,
        }
    }
}

/// One audit event as the API shows it.
#[derive(Debug, Serialize)]
pub struct EventView<'a> {
    at: Timestamp,
    actor: &'a str,
    action: &'static str,
    detail: &'a str,
}

impl<'a> From<&'a AuditEvent> for EventView<'a> {
    fn from(e: &'a AuditEvent) -> Self {
        EventView {
            at: e.at,
            actor: e.actor.as_str(),
            action: e.action.as_str(),
            detail: &e.detail,
        }
    }
}
