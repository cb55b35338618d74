//! The parts of an org's state that no request reads, as its record holds
//! them: the version and the time of the last change as two atomics, and who
//! made it with the parts that few orgs have ([`Provenance`]) as the number
//! of an interned value, 4 bytes where a mutex over the values took 40.
//!
//! Interning pays because the values repeat: at 1,000,000 orgs a handful of
//! admin tokens made every change, and nearly every org is enabled with the
//! default limits, so a few [`Provenance`]s serve every record (as a
//! compiler's symbol table serves every use of a name). Each is counted
//! by the records that hold it and dropped with the last one, so an org's
//! own limit overrides, which may be unique to it, do not outlive it.
//!
//! A record has no lock of its own either. The writers of one org (an
//! install and the store's commit, the feed, a limits refresh) and the
//! readers of its whole state take one of [`STRIPES`] mutexes, picked by
//! the record's address: admin work is rare and short, so 64 mutexes serve a
//! million records, and no thread ever holds two (see [`Org`](super::Org)).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};

use super::{Actor, LimitOverrides};

/// Who made an org's last change, and the parts of its state that most
/// orgs do not have: what records share through [`intern`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Provenance {
    pub(super) actor: Actor,
    /// None for an enabled org with the default limits.
    pub(super) rare: Option<Rare>,
}

/// The parts of an org's state that most orgs do not have.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Rare {
    /// The disable reason, for a disabled key.
    pub(super) reason: Option<Box<str>>,
    pub(super) limits: LimitOverrides,
}

impl Provenance {
    /// The org's own limits over the defaults.
    pub(super) fn limits(&self) -> LimitOverrides {
        self.rare.as_ref().map(|r| r.limits).unwrap_or_default()
    }
}

/// The interned [`Provenance`]s by number, each with how many records hold
/// it, and the numbers by value.
#[derive(Default)]
struct Registry {
    slots: Vec<Slot>,
    /// Numbers whose last holder let go, for the next new value.
    vacant: Vec<u32>,
    by_value: HashMap<Provenance, u32>,
}

struct Slot {
    /// None while vacant.
    value: Option<Provenance>,
    holders: usize,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Mutex::default);

/// The registry, locked. Nothing panics while holding it but a broken
/// invariant, and its state is whole between calls, so a poisoned one is
/// used as it is.
fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Registry {
    fn intern(&mut self, value: Provenance) -> u32 {
        if let Some(&n) = self.by_value.get(&value) {
            self.slots[n as usize].holders += 1;
            return n;
        }
        let slot = Slot {
            value: Some(value.clone()),
            holders: 1,
        };
        let n = match self.vacant.pop() {
            Some(n) => {
                self.slots[n as usize] = slot;
                n
            }
            None => {
                // One value per record at most, and the org table holds
                // fewer than 2^32 records.
                let n = u32::try_from(self.slots.len()).expect("fewer than 2^32 provenances");
                self.slots.push(slot);
                n
            }
        };
        self.by_value.insert(value, n);
        n
    }

    fn release(&mut self, n: u32) {
        let slot = &mut self.slots[n as usize];
        slot.holders -= 1;
        if slot.holders == 0 {
            if let Some(value) = slot.value.take() {
                self.by_value.remove(&value);
            }
            self.vacant.push(n);
        }
    }

    fn get(&self, n: u32) -> &Provenance {
        self.slots[n as usize]
            .value
            .as_ref()
            .expect("a record's provenance is held while the record holds its number")
    }
}

/// The number of `value`, held once more: a record that stores it releases
/// it when it stores another or is dropped.
pub(super) fn intern(value: Provenance) -> u32 {
    registry().intern(value)
}

/// Holds `new` and lets go of `old`, under one lock: what an install does.
pub(super) fn replace(old: u32, new: Provenance) -> u32 {
    let mut registry = registry();
    let n = registry.intern(new);
    registry.release(old);
    n
}

/// Lets go of `n`, once held.
pub(super) fn release(n: u32) {
    registry().release(n);
}

/// The value of `n`, held.
pub(super) fn get(n: u32) -> Provenance {
    registry().get(n).clone()
}

/// `f` of the value of `n`, held, without copying it.
pub(super) fn with<R>(n: u32, f: impl FnOnce(&Provenance) -> R) -> R {
    f(registry().get(n))
}

/// How many mutexes serialize the writers of all records.
pub(super) const STRIPES: usize = 64;

static WRITERS: [Mutex<()>; STRIPES] = [const { Mutex::new(()) }; STRIPES];

/// The mutex that serializes the writers of the record at `address`, of
/// `size` bytes, locked. Neighbouring records take different ones. A
/// poisoned one is used as it is: it guards no data of its own, and a writer
/// assigns nothing that can be left half done (see [`Org`](super::Org)).
pub(super) fn lock(address: usize, size: usize) -> MutexGuard<'static, ()> {
    WRITERS[(address / size.max(1)) % STRIPES]
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Whether `value` is interned: for the tests.
#[cfg(test)]
pub(super) fn is_interned(value: &Provenance) -> bool {
    registry().by_value.contains_key(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_reason(reason: &str) -> Provenance {
        Provenance {
            actor: Actor::Token("cold-tests".into()),
            rare: Some(Rare {
                reason: Some(reason.into()),
                limits: LimitOverrides::default(),
            }),
        }
    }

    /// Equal values share one number; the number is vacated with its last
    /// holder, and the value with it, and a later value may take it again.
    #[test]
    fn equal_values_share_a_number_until_the_last_holder_lets_go() {
        let a = with_reason("cold-tests: a");
        let n = intern(a.clone());
        assert_eq!(intern(a.clone()), n);
        assert_eq!(get(n), a);
        release(n);
        assert_eq!(get(n), a, "one holder left");
        let b = with_reason("cold-tests: b");
        let m = replace(n, b.clone());
        assert_ne!(m, n);
        assert_eq!(get(m), b);
        assert!(!is_interned(&a), "a's last holder let go");
        assert_eq!(with(m, Provenance::limits), LimitOverrides::default());
        release(m);
        assert!(!is_interned(&b));
    }
}
