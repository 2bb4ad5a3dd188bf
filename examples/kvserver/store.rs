//! The item store: a fixed set of shards, each a `HashMap` of items with
//! its own LRU order and its own share of the memory limit, behind a
//! `Mutex`. Expiry, `flush_all`, CAS uniques and the item counters live
//! here too.
//!
//! A key always maps to the same shard (a hash of the key), so every
//! command on one key is serialised by that shard's lock and sees the
//! effects of the ones before it.
//!
//! Memory is accounted per item as key + data + [`ITEM_OVERHEAD`] (about
//! memcached's item header). The limit is split evenly between the shards,
//! with as many shards as keep each share at least [`MIN_SHARD_BYTES`]
//! (1 to 16), so that a 1 MiB item always fits; a store that would pass
//! its shard's share first evicts that shard's least recently used items.
//! The LRU is therefore exact within a shard and approximate across them,
//! as memcached's per-slab-class LRUs are; a limit under 16 MiB has one
//! shard and an exact LRU.
//!
//! Invariants (checked by [`Store::check_invariants`]):
//! - S1 a shard's `map` and `lru` hold the same keys: `lru[item.tick] ==
//!   key` for every `(key, item)` of `map`, and nothing else.
//! - S2 a shard's `bytes` is the sum of its items' sizes, and at most its
//!   `limit` once a command returns.
//! - S3 the gauges `curr_items` and `bytes` are the sums over the shards.
//! - S4 CAS uniques come from one counter and are never reused.
//!
//! Values are `Arc<Vec<u8>>`: the block read from the socket is stored as
//! it is (no copy), and a `get` clones the `Arc` under the lock and writes
//! the bytes after releasing it.

use crate::stats::Counters;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Bytes counted for an item besides its key and data.
pub const ITEM_OVERHEAD: usize = 56;
/// The smallest share of the limit a shard gets when there are several.
pub const MIN_SHARD_BYTES: usize = 8 << 20;
/// The most shards.
pub const MAX_SHARDS: usize = 16;
/// Exptimes above this many seconds are absolute unix times.
const RELATIVE_EXPTIME_MAX: i64 = 60 * 60 * 24 * 30;

/// How a storage command treats the item already under its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreMode {
    Set,
    /// Only if the key holds no item.
    Add,
    /// Only if the key holds an item.
    Replace,
    /// Data added after the item's; flags and exptime are ignored.
    Append,
    /// Data added before the item's; flags and exptime are ignored.
    Prepend,
    /// Only if the item's CAS unique is this one.
    Cas(u64),
}

/// The reply of a storage command that ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOutcome {
    Stored,
    NotStored,
    /// `cas`: the item changed since the client read it.
    Exists,
    /// `cas`: no such item.
    NotFound,
}

impl StoreOutcome {
    pub fn reply(self) -> &'static [u8] {
        match self {
            Self::Stored => b"STORED\r\n",
            Self::NotStored => b"NOT_STORED\r\n",
            Self::Exists => b"EXISTS\r\n",
            Self::NotFound => b"NOT_FOUND\r\n",
        }
    }
}

/// Why a storage command could not run; the store is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The item is larger than its shard's share of the memory limit, or
    /// an append/prepend would pass the item size limit.
    OutOfMemory,
}

/// `incr`/`decr` on an item whose data is not a decimal number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NonNumeric;

/// A live item, as a retrieval returns it.
#[derive(Clone, Debug)]
pub struct Hit {
    pub flags: u32,
    pub cas: u64,
    pub data: Arc<Vec<u8>>,
}

/// Milliseconds since the store was made, and unix time.
#[derive(Debug)]
pub struct Clock {
    start: Instant,
    unix_at_start_ms: u64,
}

impl Clock {
    fn new() -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Clock {
            start: Instant::now(),
            unix_at_start_ms: unix,
        }
    }

    /// Milliseconds since the store was made.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Unix time in seconds.
    pub fn unix_secs(&self) -> u64 {
        (self.unix_at_start_ms + self.now_ms()) / 1000
    }

    /// Seconds since the store was made.
    pub fn uptime_secs(&self) -> u64 {
        self.now_ms() / 1000
    }

    /// The deadline of an exptime, per memcached: 0 never expires, a
    /// negative one has expired already, up to 30 days is relative
    /// seconds, beyond is a unix time (expired already if past).
    fn deadline(&self, exptime: i64, now: u64) -> Option<u64> {
        match exptime {
            0 => None,
            e if e < 0 => Some(now),
            e if e <= RELATIVE_EXPTIME_MAX => Some(now + e as u64 * 1000),
            e => {
                let unix_now = self.unix_at_start_ms + now;
                let at = (e as u64).saturating_mul(1000);
                Some(now + at.saturating_sub(unix_now))
            }
        }
    }
}

#[derive(Debug)]
struct Item {
    data: Arc<Vec<u8>>,
    flags: u32,
    cas: u64,
    /// Expiry deadline (store clock, ms); `None` never expires.
    expires: Option<u64>,
    /// When the item was last stored (store clock, ms), for `flush_all`
    /// with a delay.
    stored: u64,
    /// Position in the shard's LRU (S1).
    tick: u64,
}

fn item_size(key: &[u8], data_len: usize) -> usize {
    key.len() + data_len + ITEM_OVERHEAD
}

/// Whether an item may be seen at `now`: not expired, not flushed.
#[derive(Clone, Copy)]
struct Liveness {
    now: u64,
    /// A `flush_all` deadline (ms) that has passed, or 0.
    flushed_at: u64,
}

/// Why an item is dead.
enum Dead {
    Expired,
    Flushed,
}

impl Liveness {
    fn check(self, item: &Item) -> Result<(), Dead> {
        if item.expires.is_some_and(|e| e <= self.now) {
            Err(Dead::Expired)
        } else if self.flushed_at != 0 && item.stored <= self.flushed_at {
            Err(Dead::Flushed)
        } else {
            Ok(())
        }
    }
}

#[derive(Debug)]
struct Shard {
    map: HashMap<Box<[u8]>, Item>,
    /// Tick → key, oldest first (S1).
    lru: BTreeMap<u64, Box<[u8]>>,
    next_tick: u64,
    bytes: usize,
    limit: usize,
}

/// The item store.
#[derive(Debug)]
pub struct Store {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    clock: Clock,
    /// The next CAS unique (S4).
    next_cas: AtomicU64,
    /// A pending or passed `flush_all` deadline (ms), 0 if none.
    flush_at: AtomicU64,
    limit: usize,
    counters: Arc<Counters>,
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A panic under a shard lock leaves the shard consistent at every call
    // out (no call out is made between the steps of one update), so a
    // poisoned lock is taken as it is.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shard {
    /// Moves `key`'s item to the most recently used end.
    fn bump(&mut self, key: &[u8]) {
        let tick = self.next_tick;
        if let Some(item) = self.map.get_mut(key) {
            self.next_tick += 1;
            let old = std::mem::replace(&mut item.tick, tick);
            if let Some(k) = self.lru.remove(&old) {
                self.lru.insert(tick, k);
            }
        }
    }

    /// Takes `key`'s item out, live or not.
    fn take(&mut self, key: &[u8], counters: &Counters) -> Option<Item> {
        let item = self.map.remove(key)?;
        self.lru.remove(&item.tick);
        let size = item_size(key, item.data.len());
        self.bytes -= size;
        counters.bytes.fetch_sub(size as u64, Relaxed);
        counters.curr_items.fetch_sub(1, Relaxed);
        Some(item)
    }

    /// `key`'s item if it is live; a dead one is removed (and counted as
    /// reclaimed).
    fn live(&mut self, key: &[u8], at: Liveness, counters: &Counters) -> Result<&mut Item, Miss> {
        let dead = match self.map.get(key).map(|i| at.check(i)) {
            None => return Err(Miss::Absent),
            Some(Ok(())) => None,
            Some(Err(dead)) => Some(dead),
        };
        if let Some(dead) = dead {
            self.take(key, counters);
            counters.reclaimed.fetch_add(1, Relaxed);
            return Err(match dead {
                Dead::Expired => Miss::Expired,
                Dead::Flushed => Miss::Flushed,
            });
        }
        self.map.get_mut(key).ok_or(Miss::Absent)
    }

    /// Inserts an item under `key` (which holds none), evicting the least
    /// recently used items until it fits. The caller checked that
    /// `size <= limit`.
    fn insert(&mut self, key: Box<[u8]>, mut item: Item, at: Liveness, counters: &Counters) {
        let size = item_size(&key, item.data.len());
        while self.bytes + size > self.limit {
            let Some((_, victim)) = self.lru.pop_first() else {
                break;
            };
            if let Some(old) = self.map.remove(&victim) {
                let old_size = item_size(&victim, old.data.len());
                self.bytes -= old_size;
                counters.bytes.fetch_sub(old_size as u64, Relaxed);
                counters.curr_items.fetch_sub(1, Relaxed);
                match at.check(&old) {
                    Ok(()) => counters.evictions.fetch_add(1, Relaxed),
                    Err(_) => counters.reclaimed.fetch_add(1, Relaxed),
                };
            }
        }
        item.tick = self.next_tick;
        self.next_tick += 1;
        self.lru.insert(item.tick, key.clone());
        self.map.insert(key, item);
        self.bytes += size;
        counters.bytes.fetch_add(size as u64, Relaxed);
        counters.curr_items.fetch_add(1, Relaxed);
        counters.total_items.fetch_add(1, Relaxed);
    }
}

/// Why a lookup found no live item.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Miss {
    Absent,
    Expired,
    Flushed,
}

impl Store {
    /// A store holding at most `limit` bytes of items.
    pub fn new(limit: usize, counters: Arc<Counters>) -> Store {
        let n = (limit / MIN_SHARD_BYTES).clamp(1, MAX_SHARDS);
        let shards = (0..n)
            .map(|_| {
                Mutex::new(Shard {
                    map: HashMap::new(),
                    lru: BTreeMap::new(),
                    next_tick: 0,
                    bytes: 0,
                    limit: limit / n,
                })
            })
            .collect();
        Store {
            shards,
            hasher: RandomState::new(),
            clock: Clock::new(),
            next_cas: AtomicU64::new(1),
            flush_at: AtomicU64::new(0),
            limit,
            counters,
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The memory limit, bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    fn shard(&self, key: &[u8]) -> &Mutex<Shard> {
        let h = self.hasher.hash_one(key);
        &self.shards[(h % self.shards.len() as u64) as usize]
    }

    fn liveness(&self) -> Liveness {
        let now = self.clock.now_ms();
        let flush = self.flush_at.load(Relaxed);
        Liveness {
            now,
            flushed_at: if flush != 0 && flush <= now { flush } else { 0 },
        }
    }

    fn new_cas(&self) -> u64 {
        self.next_cas.fetch_add(1, Relaxed)
    }

    /// A retrieval: the live item under `key`, moved to the LRU's young end.
    pub fn get(&self, key: &[u8]) -> Option<Hit> {
        let c = &*self.counters;
        c.cmd_get.fetch_add(1, Relaxed);
        let at = self.liveness();
        let mut shard = lock(self.shard(key));
        match shard.live(key, at, c) {
            Ok(item) => {
                let hit = Hit {
                    flags: item.flags,
                    cas: item.cas,
                    data: Arc::clone(&item.data),
                };
                shard.bump(key);
                c.get_hits.fetch_add(1, Relaxed);
                Some(hit)
            }
            Err(miss) => {
                c.get_misses.fetch_add(1, Relaxed);
                match miss {
                    Miss::Expired => c.get_expired.fetch_add(1, Relaxed),
                    Miss::Flushed => c.get_flushed.fetch_add(1, Relaxed),
                    Miss::Absent => 0,
                };
                None
            }
        }
    }

    /// A storage command. On error the store is unchanged.
    pub fn store(
        &self,
        mode: StoreMode,
        key: Box<[u8]>,
        flags: u32,
        exptime: i64,
        data: Vec<u8>,
    ) -> Result<StoreOutcome, StoreError> {
        let c = &*self.counters;
        c.cmd_set.fetch_add(1, Relaxed);
        let at = self.liveness();
        let mut shard = lock(self.shard(&key));
        let limit = shard.limit;
        if item_size(&key, data.len()) > limit {
            return Err(StoreError::OutOfMemory);
        }
        let current = shard.live(&key, at, c).ok();
        let (data, flags, expires) = match (mode, current) {
            (StoreMode::Set, _) | (StoreMode::Add | StoreMode::Cas(_), None) => {
                if let StoreMode::Cas(_) = mode {
                    c.cas_misses.fetch_add(1, Relaxed);
                    return Ok(StoreOutcome::NotFound);
                }
                (data, flags, self.clock.deadline(exptime, at.now))
            }
            (StoreMode::Add, Some(_)) => {
                // memcached moves the item up on a failed add.
                shard.bump(&key);
                return Ok(StoreOutcome::NotStored);
            }
            (StoreMode::Replace | StoreMode::Append | StoreMode::Prepend, None) => {
                return Ok(StoreOutcome::NotStored);
            }
            (StoreMode::Replace, Some(_)) => (data, flags, self.clock.deadline(exptime, at.now)),
            (StoreMode::Cas(unique), Some(item)) => {
                if item.cas != unique {
                    c.cas_badval.fetch_add(1, Relaxed);
                    return Ok(StoreOutcome::Exists);
                }
                c.cas_hits.fetch_add(1, Relaxed);
                (data, flags, self.clock.deadline(exptime, at.now))
            }
            (StoreMode::Append | StoreMode::Prepend, Some(item)) => {
                let old = &item.data;
                let len = old.len() + data.len();
                if len > crate::protocol::MAX_VALUE_LEN || item_size(&key, len) > limit {
                    return Err(StoreError::OutOfMemory);
                }
                let mut joined = Vec::with_capacity(len);
                if mode == StoreMode::Append {
                    joined.extend_from_slice(old);
                    joined.extend_from_slice(&data);
                } else {
                    joined.extend_from_slice(&data);
                    joined.extend_from_slice(old);
                }
                (joined, item.flags, item.expires)
            }
        };
        let old = shard.take(&key, c);
        let item = Item {
            data: Arc::new(data),
            flags,
            cas: self.new_cas(),
            expires,
            stored: at.now,
            tick: 0,
        };
        shard.insert(key, item, at, c);
        drop(shard);
        // The replaced value is freed outside the lock.
        drop(old);
        Ok(StoreOutcome::Stored)
    }

    /// `delete`: whether a live item was removed.
    pub fn delete(&self, key: &[u8]) -> bool {
        let c = &*self.counters;
        let at = self.liveness();
        let mut shard = lock(self.shard(key));
        let found = shard.live(key, at, c).is_ok();
        let old = if found { shard.take(key, c) } else { None };
        drop(shard);
        let counter = if found {
            &c.delete_hits
        } else {
            &c.delete_misses
        };
        counter.fetch_add(1, Relaxed);
        drop(old);
        found
    }

    /// `incr` (wraps at 2^64) or `decr` (stops at 0): the new value, or
    /// `None` if there is no live item.
    pub fn arith(&self, key: &[u8], delta: u64, incr: bool) -> Result<Option<u64>, NonNumeric> {
        let c = &*self.counters;
        let at = self.liveness();
        let mut shard = lock(self.shard(key));
        let (hits, misses) = if incr {
            (&c.incr_hits, &c.incr_misses)
        } else {
            (&c.decr_hits, &c.decr_misses)
        };
        let Ok(item) = shard.live(key, at, c) else {
            misses.fetch_add(1, Relaxed);
            return Ok(None);
        };
        let value = parse_counter(&item.data).ok_or(NonNumeric)?;
        let value = if incr {
            value.wrapping_add(delta)
        } else {
            value.saturating_sub(delta)
        };
        hits.fetch_add(1, Relaxed);
        let (flags, expires, stored) = (item.flags, item.expires, item.stored);
        let old = shard.take(key, c);
        let item = Item {
            data: Arc::new(value.to_string().into_bytes()),
            flags,
            cas: self.new_cas(),
            expires,
            stored,
            tick: 0,
        };
        shard.insert(key.into(), item, at, c);
        drop(shard);
        drop(old);
        Ok(Some(value))
    }

    /// `touch`: a new exptime for a live item; whether there was one.
    pub fn touch(&self, key: &[u8], exptime: i64) -> bool {
        let c = &*self.counters;
        c.cmd_touch.fetch_add(1, Relaxed);
        let at = self.liveness();
        let mut shard = lock(self.shard(key));
        let found = match shard.live(key, at, c) {
            Ok(item) => {
                item.expires = self.clock.deadline(exptime, at.now);
                shard.bump(key);
                true
            }
            Err(_) => false,
        };
        let counter = if found {
            &c.touch_hits
        } else {
            &c.touch_misses
        };
        counter.fetch_add(1, Relaxed);
        found
    }

    /// `flush_all`: with no delay every item goes now; with one, every item
    /// stored before the deadline is invisible from then on.
    pub fn flush_all(&self, delay_secs: u32) {
        self.counters.cmd_flush.fetch_add(1, Relaxed);
        if delay_secs > 0 {
            let at = self.clock.now_ms() + u64::from(delay_secs) * 1000;
            self.flush_at.store(at, Relaxed);
            return;
        }
        self.flush_at.store(0, Relaxed);
        for m in self.shards.iter() {
            let mut shard = lock(m);
            let map = std::mem::take(&mut shard.map);
            shard.lru.clear();
            let bytes = std::mem::replace(&mut shard.bytes, 0);
            self.counters.bytes.fetch_sub(bytes as u64, Relaxed);
            self.counters
                .curr_items
                .fetch_sub(map.len() as u64, Relaxed);
            drop(shard);
            drop(map);
        }
    }

    /// Checks S1–S3; panics with the first one broken. For tests (unit and
    /// `tests/kvserver.rs`): it locks every shard in turn.
    #[cfg(test)]
    pub fn check_invariants(&self) {
        let (mut items, mut bytes) = (0u64, 0u64);
        for (i, m) in self.shards.iter().enumerate() {
            let shard = lock(m);
            assert_eq!(shard.map.len(), shard.lru.len(), "S1: shard {i}");
            let mut sum = 0;
            for (key, item) in &shard.map {
                assert_eq!(
                    shard.lru.get(&item.tick).map(|k| &**k),
                    Some(&**key),
                    "S1: shard {i}"
                );
                sum += item_size(key, item.data.len());
            }
            assert_eq!(sum, shard.bytes, "S2: shard {i}");
            assert!(shard.bytes <= shard.limit, "S2: shard {i}");
            items += shard.map.len() as u64;
            bytes += sum as u64;
        }
        assert_eq!(items, self.counters.curr_items.load(Relaxed), "S3");
        assert_eq!(bytes, self.counters.bytes.load(Relaxed), "S3");
    }
}

/// An item's data as an `incr`/`decr` operand: decimal digits, possibly
/// followed by spaces (memcached pads a shortened number in place).
fn parse_counter(data: &[u8]) -> Option<u64> {
    let end = data.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
    crate::protocol::parse_u64(&data[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(limit: usize) -> Store {
        Store::new(limit, Arc::new(Counters::default()))
    }

    fn set(s: &Store, key: &str, data: &[u8]) -> StoreOutcome {
        s.store(StoreMode::Set, key.as_bytes().into(), 0, 0, data.to_vec())
            .unwrap()
    }

    #[test]
    fn shards_keep_a_share_that_fits_the_largest_item() {
        assert_eq!(store(1 << 20).shard_count(), 1);
        assert_eq!(store(15 << 20).shard_count(), 1);
        assert_eq!(store(64 << 20).shard_count(), 8);
        assert_eq!(store(4 << 30).shard_count(), MAX_SHARDS);
    }

    #[test]
    fn an_item_larger_than_the_limit_leaves_the_old_one() {
        let s = store(64 << 10);
        set(&s, "k", b"old");
        let r = s.store(StoreMode::Set, (*b"k").into(), 0, 0, vec![0; 64 << 10]);
        assert_eq!(r, Err(StoreError::OutOfMemory));
        assert_eq!(s.get(b"k").unwrap().data.as_slice(), b"old");
        s.check_invariants();
    }

    #[test]
    fn cas_uniques_change_on_every_store() {
        let s = store(1 << 20);
        set(&s, "k", b"1");
        let a = s.get(b"k").unwrap().cas;
        assert_eq!(s.arith(b"k", 1, true), Ok(Some(2)));
        let b = s.get(b"k").unwrap().cas;
        set(&s, "k", b"1");
        let c = s.get(b"k").unwrap().cas;
        assert!(a < b && b < c);
    }

    #[test]
    fn counters_parse_like_memcached() {
        assert_eq!(parse_counter(b"12  "), Some(12));
        assert_eq!(parse_counter(b" 12"), None);
        assert_eq!(parse_counter(b""), None);
        assert_eq!(parse_counter(b"1x"), None);
    }

    #[test]
    fn deadlines() {
        let c = Clock::new();
        assert_eq!(c.deadline(0, 5), None);
        assert_eq!(c.deadline(-1, 5), Some(5));
        assert_eq!(c.deadline(10, 5), Some(10_005));
        let unix = c.unix_secs() as i64;
        assert_eq!(c.deadline(unix - 10, 5), Some(5));
        let d = c.deadline(unix + 100, 0).unwrap();
        assert!((98_000..=101_000).contains(&d), "{d}");
    }
}
