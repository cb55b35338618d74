//! The org table: every org's record in one arena, found by id through an
//! open-addressed index of `u32` slots.
//!
//! It replaces a `DashSet<Arc<Org>>`, whose lookup at 1,000,000 orgs cost
//! four dependent cache misses (the shard's control bytes, its slot, the
//! `Arc`'s record and the id's page) and whose `Arc` per org cost 24 bytes
//! of counts and malloc header (BENCHMARKS.md, "Issue 17, sixth round").
//! Here a lookup is one slot (the record's number in its low bits and a tag
//! of the id's hash in the rest, so a slot whose tag differs is passed over
//! without touching its record), then
//! the record, which holds the id it confirms the match with (an id of up
//! to 16 bytes in one 16-byte compare: [`IdKey`]); and records sit back to
//! back in chunks of [`CHUNK`], with no header between them.
//!
//! **Nothing moves and nothing is freed while the table lives**, which is
//! what makes it safe Rust without epochs: a reader holds `&Org` for as long
//! as it holds the table. Records are appended, never relocated (a chunk,
//! once allocated, stays where it is), and a record belongs to one id for
//! good. Deleting an org takes its slot out of the index (a tombstone) and
//! keeps its record aside; provisioning that id again takes the same record
//! back, so a record is never shared by two ids, and what a reader that
//! found it a moment ago reads is always that id's state. The price is that
//! a deleted id's record (128 bytes) stays until the process restarts,
//! unless the id comes back.
//!
//! Readers take no lock and write nothing shared: the index's slots are
//! atomics written with release ordering after the record they name is
//! complete, and a record is reached through [`OnceLock`]s. Writers
//! (provisioning, deleting, loading) are serialized by one mutex; the index
//! grows by building a larger one beside it and swapping it in (an
//! [`ArcSwap`], and a generation number), so a reader never sees a table in
//! the middle of a resize. A thread keeps the index it last probed, and
//! probes it again while the generation is unchanged: an `ArcSwap` load on
//! every lookup cost about 110 instructions, most of the lookup's
//! (BENCHMARKS.md, "Issue 17, sixth round").

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use arc_swap::ArcSwap;

use crate::org::{IdKey, Org};

/// Records per chunk of the arena: 4,096 (about 650 KB of records; a
/// chunk is written whole when it is allocated, so this is also what the
/// last chunk can leave unused).
const CHUNK_BITS: u32 = 12;
const CHUNK: usize = 1 << CHUNK_BITS;
/// Chunks the arena can hold: 2^26 orgs in all, for a directory of 384 KB.
const CHUNKS: usize = 1 << 14;
/// The most records the table holds.
pub(crate) const MAX_ORGS: usize = CHUNK * CHUNKS;

/// A slot no org has used.
const EMPTY: u32 = 0;
/// The low half of a slot whose org was deleted: probes go on past it.
const TOMBSTONE: u32 = 1;
/// Record numbers are stored plus this, so that no slot of a live org is
/// [`EMPTY`] or a [`TOMBSTONE`].
const BIAS: u32 = 2;

/// The fewest bits of a slot an index gives the record's number (plus
/// [`BIAS`]): 4,094 records, and a tag of 20 bits.
const MIN_RECORD_BITS: u32 = 12;
/// The most: enough for [`MAX_ORGS`] records plus [`BIAS`], which leaves a
/// tag of 5 bits (a slot of another org passed over 31 times in 32 without
/// reading its record).
const MAX_RECORD_BITS: u32 = 27;
const _: () = assert!(MAX_ORGS + BIAS as usize <= 1 << MAX_RECORD_BITS);

/// The record bits of an index built when the arena holds `records`: room
/// for twice as many, so that an arena grown one record at a time rebuilds
/// its index for more bits log(n) times. At 1,000,000 orgs, 21 bits and a
/// tag of 11: one lookup in about 500 reads one other org's record.
fn record_bits_for(records: usize) -> u32 {
    let need = records.saturating_mul(2) + BIAS as usize;
    (usize::BITS - need.leading_zeros()).clamp(MIN_RECORD_BITS, MAX_RECORD_BITS)
}

/// The index is rebuilt larger once its used slots (live and tombstones)
/// pass 7 in 8.
const fn over_load(used: usize, slots: usize) -> bool {
    used * 8 > slots * 7
}

/// Slots for `n` orgs at most 7 in 8 full: any length, not a power of two
/// (the start of a probe is a multiply and a shift), so 1,000,000 orgs take
/// 1,142,858 slots (4.6 bytes an org), not 2^21.
fn slots_for(n: usize) -> usize {
    (n.max(8) * 8).div_ceil(7) + 1
}

/// Tables made in this process, numbered: what a thread's cached index is
/// kept by (an address could be a dropped table's).
static TABLES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The index this thread last probed: of which table, at which
    /// generation. Holds that index until the thread probes another.
    static CACHED: Cell<Option<Cached>> = const { Cell::new(None) };
}

struct Cached {
    table: u64,
    generation: u64,
    index: Arc<Index>,
}

/// Every org's record, found by its id's bytes.
pub(crate) struct OrgTable {
    /// This table's number ([`TABLES`]).
    number: u64,
    /// How many times the index was swapped; bumped after each swap.
    generation: AtomicU64,
    index: ArcSwap<Index>,
    records: Arena,
    hasher: foldhash::fast::RandomState,
    /// Orgs in the index.
    live: AtomicUsize,
    writer: Mutex<Writer>,
}

/// What only writers touch.
#[derive(Default)]
struct Writer {
    /// Records in the arena.
    records: usize,
    /// Tombstones in the current index.
    tombstones: usize,
    /// Deleted orgs' records, by id, for when the id is provisioned again.
    vacant: HashMap<Box<[u8]>, u32>,
}

/// The open-addressed index: each slot is a record's number plus [`BIAS`]
/// in its low bits (as many as `record_mask` has) and the same bits of its
/// id's hash's top half in the rest, a tag. Half the size of a slot of a
/// 32-bit tag and a 32-bit number: at 1,000,000 orgs the index is 4.6 MB,
/// not 9.1, for the same time per request (BENCHMARKS.md, "Issue 17,
/// ninth round").
struct Index {
    slots: Box<[AtomicU32]>,
    /// The bits of a slot that hold the record's number.
    record_mask: u32,
}

/// The top half of `hash`, where tags come from.
#[inline]
fn high(hash: u64) -> u32 {
    (hash >> 32) as u32
}

impl Index {
    fn new(slots: usize, record_bits: u32) -> Index {
        Index {
            slots: (0..slots).map(|_| AtomicU32::new(EMPTY)).collect(),
            record_mask: u32::MAX >> (32 - record_bits),
        }
    }

    /// Whether a slot of this index can hold record `record`'s number.
    fn names(&self, record: usize) -> bool {
        record + BIAS as usize <= self.record_mask as usize
    }

    /// A slot's word for record `record` of an id hashed to `hash`.
    fn word(&self, hash: u64, record: u32) -> u32 {
        debug_assert!(self.names(record as usize));
        (high(hash) & !self.record_mask) | (record + BIAS)
    }

    /// The record a live slot names, if `word` is one whose tag is `hash`'s.
    #[inline]
    fn record_of(&self, word: u32, hash: u64) -> Option<usize> {
        let low = word & self.record_mask;
        (low >= BIAS && (word ^ high(hash)) & !self.record_mask == 0).then(|| (low - BIAS) as usize)
    }

    /// Whether an insert may take a slot holding `word`.
    fn is_free(&self, word: u32) -> bool {
        word == EMPTY || word & self.record_mask == TOMBSTONE
    }

    /// Where the probe for `hash` starts: its low half scaled to the length.
    #[inline]
    fn start(&self, hash: u64) -> usize {
        (((hash & 0xffff_ffff) * self.slots.len() as u64) >> 32) as usize
    }

    /// The slots from `hash`'s start, round the table once.
    #[inline]
    fn probe(&self, hash: u64) -> impl Iterator<Item = &AtomicU32> {
        let (after, before) = self.slots.split_at(self.start(hash));
        before.iter().chain(after)
    }
}

/// A record of the arena, set once: 128 bytes, aligned to 128, so that what
/// a request reads of it ([`Org`]'s last 96 bytes and the `OnceLock`'s state
/// word after them) is two cache lines of one aligned pair, which the CPU's
/// adjacent-line prefetcher fetches together.
#[repr(align(128))]
struct Record(OnceLock<Org>);

/// [`CHUNK`] records.
type Chunk = Box<[Record]>;

/// Records in chunks that never move.
struct Arena {
    chunks: Box<[OnceLock<Chunk>]>,
}

impl Arena {
    fn new() -> Arena {
        Arena {
            chunks: (0..CHUNKS).map(|_| OnceLock::new()).collect(),
        }
    }

    #[inline]
    fn get(&self, n: usize) -> Option<&Org> {
        let chunk = self.chunks.get(n >> CHUNK_BITS)?.get()?;
        chunk[n & (CHUNK - 1)].0.get()
    }

    /// Puts `org` at `n`, the next free place; the writer's lock is held.
    fn put(&self, n: usize, org: Org) -> &Org {
        let chunk = self.chunks[n >> CHUNK_BITS]
            .get_or_init(|| (0..CHUNK).map(|_| Record(OnceLock::new())).collect());
        let cell = &chunk[n & (CHUNK - 1)].0;
        // `n` is the writer's next record: never set before.
        let _ = cell.set(org);
        cell.get().expect("set just above")
    }
}

/// Why an org could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TableError {
    /// The id is in the table already.
    #[error("the org is in the table already")]
    Exists,
    /// The table holds [`MAX_ORGS`] records.
    #[error("the org table is full ({MAX_ORGS} orgs)")]
    Full,
}

/// An org the table holds, as found: its record and its number.
#[derive(Clone, Copy)]
pub(crate) struct Found<'a> {
    org: &'a Org,
    number: u32,
}

impl std::ops::Deref for Found<'_> {
    type Target = Org;

    fn deref(&self) -> &Org {
        self.org
    }
}

impl Found<'_> {
    /// The record's number in the table, for [`OrgTable::record`].
    pub(crate) fn number(&self) -> u32 {
        self.number
    }
}

impl OrgTable {
    /// An empty table with room in its index for `n` orgs.
    pub(crate) fn with_capacity(n: usize) -> OrgTable {
        OrgTable {
            number: TABLES.fetch_add(1, Ordering::Relaxed),
            generation: AtomicU64::new(0),
            index: ArcSwap::from_pointee(Index::new(slots_for(n), record_bits_for(n))),
            records: Arena::new(),
            hasher: foldhash::fast::RandomState::default(),
            live: AtomicUsize::new(0),
            writer: Mutex::new(Writer::default()),
        }
    }

    /// Runs `f` on the current index: this thread's copy of it while the
    /// generation says it is current, else the swapped-in one, kept.
    #[inline]
    fn with_index<R>(&self, f: impl FnOnce(&Index) -> R) -> R {
        // Acquire: pairs with the bump after a swap, so the index loaded
        // below for a generation is that generation's or a later one.
        let generation = self.generation.load(Ordering::Acquire);
        CACHED.with(|cell| {
            // Taken out and put back (a move each way, no borrow flag): a
            // lookup within `f`, which no caller makes, would find none
            // kept and load its own.
            let kept = cell
                .take()
                .filter(|c| c.table == self.number && c.generation == generation);
            let kept = kept.unwrap_or_else(|| Cached {
                table: self.number,
                generation,
                index: self.index.load_full(),
            });
            let found = f(&kept.index);
            cell.set(Some(kept));
            found
        })
    }

    /// The org with id `id`: the request path's lookup.
    #[inline]
    pub(crate) fn get(&self, id: &[u8]) -> Option<Found<'_>> {
        let key = IdKey::new(id);
        let hash = key.hash(&self.hasher);
        self.with_index(|index| self.find(index, &key, hash).map(|(_, found)| found))
    }

    /// The org `key` names (hashed to `hash`) in `index`, and its slot.
    #[inline]
    fn find<'a, 'i>(
        &'a self,
        index: &'i Index,
        key: &IdKey<'_>,
        hash: u64,
    ) -> Option<(&'i AtomicU32, Found<'a>)> {
        // `probe` by hand: the request path's loop, without the chained
        // iterator's state.
        let slots = &index.slots;
        let mut i = index.start(hash);
        for _ in 0..slots.len() {
            let word = slots[i].load(Ordering::Acquire);
            if word == EMPTY {
                return None;
            }
            if let Some(n) = index.record_of(word, hash) {
                let org = self.records.get(n)?;
                if org.is(key) {
                    let found = Found {
                        org,
                        number: n as u32,
                    };
                    return Some((&slots[i], found));
                }
            }
            i += 1;
            if i == slots.len() {
                i = 0;
            }
        }
        None
    }

    /// Record `number`, whether or not its org is in the index now.
    pub(crate) fn record(&self, number: u32) -> Option<&Org> {
        self.records.get(number as usize)
    }

    /// How many times the index was rebuilt.
    #[cfg(test)]
    pub(crate) fn rebuilds(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Orgs in the table.
    pub(crate) fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Every org in the table, in no order. Orgs added or deleted during the
    /// pass may or may not be seen.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Found<'_>> {
        let index = self.index.load_full();
        (0..index.slots.len()).filter_map(move |i| {
            let low = index.slots[i].load(Ordering::Acquire) & index.record_mask;
            let n = low.checked_sub(BIAS)?;
            Some(Found {
                org: self.records.get(n as usize)?,
                number: n,
            })
        })
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        // Nothing panics while it is held but an allocation failure, which
        // aborts: a poisoned lock still guards a whole table.
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds the org `id`: into the record it had before it was deleted, if
    /// it had one (`reuse` makes that record new again, before any request
    /// can find it), or else into a new record that `make` builds.
    pub(crate) fn insert(
        &self,
        id: &[u8],
        make: impl FnOnce() -> Org,
        reuse: impl FnOnce(&Org),
    ) -> Result<Found<'_>, TableError> {
        let mut w = self.writer();
        let key = IdKey::new(id);
        let hash = key.hash(&self.hasher);
        // The writer's lock is held: no other index can be swapped in
        // between this probe and the insert's.
        if self.find(&self.index.load(), &key, hash).is_some() {
            return Err(TableError::Exists);
        }
        let (org, number) = match w.vacant.remove(id) {
            Some(n) => {
                let org = self
                    .records
                    .get(n as usize)
                    .expect("a vacant record exists");
                reuse(org);
                (org, n)
            }
            None => {
                if w.records >= MAX_ORGS {
                    return Err(TableError::Full);
                }
                let n = w.records;
                let org = self.records.put(n, make());
                w.records += 1;
                (org, n as u32)
            }
        };
        debug_assert_eq!(org.id_bytes(), id);
        let live = self.live.load(Ordering::Relaxed) + 1;
        let index = self.index.load();
        let fuller = over_load(live + w.tombstones, index.slots.len());
        if fuller || !index.names(number as usize) {
            // Doubled, so a table grown one org at a time rebuilds
            // log(n) times; with more record bits, when the arena has
            // outgrown the slot's.
            let slots = if fuller {
                slots_for(live * 2)
            } else {
                index.slots.len()
            };
            drop(index);
            self.rebuild(&mut w, slots);
        }
        let index = self.index.load();
        let slot = index
            .probe(hash)
            .find(|s| index.is_free(s.load(Ordering::Relaxed)))
            .expect("the index is never full");
        if slot.load(Ordering::Relaxed) != EMPTY {
            w.tombstones -= 1;
        }
        // Release: a reader that sees the slot sees the whole record.
        slot.store(index.word(hash, number), Ordering::Release);
        self.live.store(live, Ordering::Relaxed);
        Ok(Found { org, number })
    }

    /// Takes the org `id` out of the index; its record is kept for the id.
    pub(crate) fn remove(&self, id: &[u8]) -> Option<Found<'_>> {
        let mut w = self.writer();
        let key = IdKey::new(id);
        let hash = key.hash(&self.hasher);
        let index = self.index.load();
        let (slot, found) = self.find(&index, &key, hash)?;
        let word = slot.load(Ordering::Relaxed);
        slot.store((word & !index.record_mask) | TOMBSTONE, Ordering::Release);
        w.tombstones += 1;
        w.vacant.insert(id.into(), found.number);
        self.live.fetch_sub(1, Ordering::Relaxed);
        Some(found)
    }

    /// Builds an index of `slots` slots, with record bits for the arena as
    /// it is, from the live orgs, and swaps it in.
    fn rebuild(&self, w: &mut Writer, slots: usize) {
        let next = Index::new(slots, record_bits_for(w.records));
        for found in self.iter() {
            let hash = IdKey::new(found.id_bytes()).hash(&self.hasher);
            let slot = next
                .probe(hash)
                .find(|s| s.load(Ordering::Relaxed) == EMPTY)
                .expect("a larger index has room");
            slot.store(next.word(hash, found.number), Ordering::Relaxed);
        }
        // The swap publishes every slot written above; the bump tells the
        // threads that keep the old index to load this one.
        self.index.store(Arc::new(next));
        self.generation.fetch_add(1, Ordering::Release);
        w.tombstones = 0;
    }
}

impl std::fmt::Debug for OrgTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrgTable")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::clock::Timestamp;
    use crate::org::{Actor, LimitOverrides, Limits, OrgId, OrgState};

    /// An arena record is one aligned pair of cache lines (see [`Record`]),
    /// and the arena's chunks keep the alignment.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_record_is_128_bytes_aligned_to_128() {
        assert_eq!(std::mem::size_of::<Record>(), 128);
        assert_eq!(std::mem::align_of::<Record>(), 128);
        let table = OrgTable::with_capacity(4);
        let org = table
            .insert(b"acme", || org("acme"), |_| {})
            .expect("a new id");
        assert_eq!(std::ptr::from_ref(&*org).addr() % 128, 0);
    }

    fn org(id: &str) -> Org {
        let state = OrgState::provisioned(
            Timestamp::from_secs(1_700_000_000),
            Actor::System,
            None,
            LimitOverrides::default(),
        )
        .next;
        Org::new(&OrgId::parse(id).unwrap(), state, 1, Limits::default())
    }

    fn add(table: &OrgTable, id: &str) -> Result<u32, TableError> {
        table
            .insert(id.as_bytes(), || org(id), |_| panic!("{id} is new"))
            .map(|f| f.number())
    }

    fn ids(table: &OrgTable) -> Vec<String> {
        let mut all: Vec<String> = table.iter().map(|o| o.id_str().to_owned()).collect();
        all.sort();
        all
    }

    #[test]
    fn an_org_is_found_by_its_id_and_only_by_it() {
        let table = OrgTable::with_capacity(0);
        assert!(table.get(b"acme").is_none());
        let n = add(&table, "acme").unwrap();
        let found = table.get(b"acme").unwrap();
        assert_eq!((found.id_str(), found.number()), ("acme", n));
        assert!(table.get(b"acm").is_none());
        assert!(table.get(b"acme2").is_none());
        assert!(table.get(b"").is_none());
        assert_eq!(add(&table, "acme"), Err(TableError::Exists));
        assert_eq!(table.len(), 1);
    }

    /// Growing one org at a time from an empty index, with a third of the
    /// orgs deleted on the way (their slots tombstones, which later inserts
    /// take over or a rebuild drops): every live org is found, no deleted
    /// one is, and the count agrees.
    #[test]
    fn the_index_grows_and_takes_deletions_without_losing_an_org() {
        let table = OrgTable::with_capacity(0);
        let mut live = std::collections::BTreeSet::new();
        for i in 0..5_000 {
            let id = format!("org-{i}");
            add(&table, &id).unwrap();
            live.insert(id);
            if i % 3 == 2 {
                let gone = format!("org-{}", i - 1);
                assert_eq!(table.remove(gone.as_bytes()).unwrap().id_str(), gone);
                live.remove(&gone);
            }
        }
        assert!(table.remove(b"org-1").is_none(), "already removed");
        for i in 0..5_000 {
            let id = format!("org-{i}");
            assert_eq!(
                table.get(id.as_bytes()).is_some(),
                live.contains(&id),
                "{id}"
            );
        }
        assert_eq!(table.len(), live.len());
        assert_eq!(ids(&table), live.iter().cloned().collect::<Vec<_>>());
        let index = table.index.load();
        assert!(!over_load(table.len(), index.slots.len()));
    }

    /// A deleted org's record waits for its id: provisioning the id again
    /// takes the same record back (made new by `reuse`), and another id
    /// never gets it.
    #[test]
    fn a_deleted_orgs_record_is_only_ever_its_own_ids_again() {
        let table = OrgTable::with_capacity(0);
        let first = add(&table, "acme").unwrap();
        table.remove(b"acme").unwrap();
        assert!(table.get(b"acme").is_none());
        assert_eq!(table.len(), 0);
        let other = add(&table, "beta").unwrap();
        assert_ne!(other, first);
        let reused = AtomicBool::new(false);
        let again = table
            .insert(
                b"acme",
                || panic!("the old record is taken back"),
                |o| {
                    assert_eq!(o.id_str(), "acme");
                    reused.store(true, Ordering::Relaxed);
                },
            )
            .unwrap();
        assert!(reused.load(Ordering::Relaxed));
        assert_eq!(again.number(), first);
        assert_eq!(table.get(b"acme").unwrap().number(), first);
        assert_eq!(table.record(first).unwrap().id_str(), "acme");
    }

    /// Lookups of orgs that stay while a writer adds thousands more (the
    /// index rebuilt several times) and deletes and re-adds others: no
    /// lookup ever misses an org that was there all along, or finds
    /// another org than the one it asked for.
    #[test]
    fn readers_never_miss_an_org_while_the_index_is_rebuilt_beside_them() {
        let table = OrgTable::with_capacity(0);
        let steady: Vec<String> = (0..64).map(|i| format!("steady-{i}")).collect();
        for id in &steady {
            add(&table, id).unwrap();
        }
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            let readers: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        let mut lookups = 0u64;
                        while !done.load(Ordering::Relaxed) || lookups < 10_000 {
                            for id in &steady {
                                let found = table.get(id.as_bytes()).expect("a steady org");
                                assert_eq!(found.id_str(), id);
                                lookups += 1;
                            }
                        }
                        lookups
                    })
                })
                .collect();
            for i in 0..20_000 {
                add(&table, &format!("new-{i}")).unwrap();
                if i % 4 == 0 {
                    let id = format!("new-{}", i / 2);
                    if table.remove(id.as_bytes()).is_some() {
                        table.insert(id.as_bytes(), || org(&id), |_| {}).unwrap();
                    }
                }
            }
            done.store(true, Ordering::Relaxed);
            for r in readers {
                assert!(r.join().unwrap() >= 10_000);
            }
        });
        assert_eq!(table.len(), 64 + 20_000);
    }

    /// A thread that keeps an index from before a swap probes the new one
    /// once the generation moved: it finds what was added after the swap.
    /// And one thread alternating between two tables probes each its own.
    #[test]
    fn a_thread_gives_up_its_kept_index_when_the_table_grows_or_changes() {
        let table = OrgTable::with_capacity(0);
        add(&table, "first").unwrap();
        let other = OrgTable::with_capacity(0);
        add(&other, "elsewhere").unwrap();
        assert!(table.get(b"first").is_some());
        let generation = table.generation.load(Ordering::Relaxed);
        for i in 0..100 {
            add(&table, &format!("org-{i}")).unwrap();
        }
        assert!(table.generation.load(Ordering::Relaxed) > generation);
        std::thread::scope(|s| {
            s.spawn(|| {
                assert!(table.get(b"first").is_some());
                add(&table, "later").unwrap();
            });
        });
        assert!(table.get(b"later").is_some());
        for i in 0..100 {
            assert!(table.get(format!("org-{i}").as_bytes()).is_some());
        }
        for _ in 0..3 {
            assert!(table.get(b"elsewhere").is_none());
            assert!(other.get(b"elsewhere").is_some());
            assert!(other.get(b"first").is_none());
        }
    }

    /// Every length an id can have, and ids that differ from one in the
    /// table in any one byte or by one byte more: each finds its own org
    /// and no other, through the head compare (up to 16 bytes) and the long
    /// one.
    #[test]
    fn an_id_of_any_length_finds_its_own_org_and_no_other() {
        let table = OrgTable::with_capacity(0);
        let of = |n: usize| -> String { (0..n).map(|i| (b'a' + (i % 26) as u8) as char).collect() };
        for n in (1..=OrgId::MAX_LEN).step_by(2) {
            add(&table, &of(n)).unwrap();
        }
        for n in 1..=OrgId::MAX_LEN {
            let id = of(n);
            assert_eq!(
                table.get(id.as_bytes()).map(|f| f.id_str().to_owned()),
                (n % 2 == 1).then(|| id.clone())
            );
            for at in 0..n {
                let mut other = id.clone().into_bytes();
                other[at] = b'0';
                assert!(table.get(&other).is_none(), "{id} with a 0 at {at}");
            }
        }
    }

    /// Presized for what it will hold, the index is about 8 slots in 7
    /// (not the next power of two), and filling it rebuilds nothing.
    #[test]
    fn a_presized_index_is_not_rebuilt_while_it_fills() {
        let n = 1_000;
        let table = OrgTable::with_capacity(n);
        let before = Arc::as_ptr(&table.index.load_full());
        for i in 0..n {
            add(&table, &format!("org-{i}")).unwrap();
        }
        let index = table.index.load_full();
        assert_eq!(Arc::as_ptr(&index), before);
        assert_eq!(index.slots.len(), slots_for(n));
        assert!(index.slots.len() < n * 8 / 7 + 3);
    }

    /// The record bits an index is built with cover twice the arena, from
    /// 12 to what the last record of a full arena needs.
    #[test]
    fn record_bits_cover_the_arena_twice_over() {
        assert_eq!(record_bits_for(0), MIN_RECORD_BITS);
        assert_eq!(record_bits_for(1_000_000), 21);
        assert_eq!(record_bits_for(MAX_ORGS), MAX_RECORD_BITS);
        for records in [0, 1, 4_093, 4_094, 100_000, 1_000_000, MAX_ORGS] {
            let index = Index::new(1, record_bits_for(records));
            let last = (records * 2).clamp(1, MAX_ORGS) - 1;
            assert!(index.names(last), "{records} records: record {last}");
            let word = index.word(u64::MAX, last as u32);
            assert_eq!(index.record_of(word, u64::MAX), Some(last));
            // Another tag: passed over.
            let other = u64::MAX ^ (1 << 63);
            assert_eq!(index.record_of(word, other), None, "{records} records");
        }
    }

    /// An arena that outgrows what its index's slots can number gets an
    /// index with more record bits, and every org is found in it, as are
    /// the orgs deleted and provisioned again on the way.
    #[test]
    fn the_index_takes_more_record_bits_as_the_arena_grows() {
        let table = OrgTable::with_capacity(0);
        assert_eq!(table.index.load().record_mask, (1 << MIN_RECORD_BITS) - 1);
        for i in 0..10_000 {
            add(&table, &format!("org-{i}")).unwrap();
            if i % 7 == 0 {
                let id = format!("org-{}", i / 2);
                assert!(table.remove(id.as_bytes()).is_some());
                table
                    .insert(id.as_bytes(), || panic!("{id} had a record"), |_| {})
                    .unwrap();
            }
        }
        // Rebuilt for more bits when record 4,094 came (12 bits number
        // 4,094 records): for room for twice 4,095, 14 bits.
        assert_eq!(table.index.load().record_mask, (1 << 14) - 1);
        for i in 0..10_000 {
            let found = table.get(format!("org-{i}").as_bytes()).unwrap();
            assert_eq!(found.id_str(), format!("org-{i}"));
        }
        assert_eq!(table.len(), 10_000);
    }
}
