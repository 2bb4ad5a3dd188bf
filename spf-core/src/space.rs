//! `Space`: the process's reservation and everything that describes it (the
//! kernel's `mm_struct`): the space lock, the region map, the descriptor
//! table, the granule table and the free-range allocator. Region writers —
//! create, destroy, grow, shrink, commit, decommit, protect — live here.
//!
//! Every writer follows one pattern (DESIGN: writers):
//! 1. take the space lock (no lazy memory is touched while it is held);
//! 2. make the region's `seq` odd (S3: from here on, no fault can start a
//!    commit in the region);
//! 3. lock the granule words of the range it changes, waiting for faults
//!    that are committing there to finish (G1);
//! 4. change the region, the kernel's protections and the map;
//! 5. unlock the words with their new states, make `seq` even.
//!
//! A destroyed region's descriptor and address range are handed back to the
//! free lists only after an epoch grace period (D3, `epoch`), by a deferred
//! function that takes the space lock — so a pinned normal-path reader never
//! sees them reused, and a fault handler that read a stale descriptor finds
//! its sequence count changed.
//!
//! Invariants:
//! - A1: the reservation `[base, base + len)` is never unmapped.
//! - A2: a zone's `extents` is touched only with the space lock held.
//! - A3: live regions and free extents are disjoint and never overlap; pages
//!   of a destroyed region stay out of both until its grace period ends.
//! - A4: a region lies wholly inside one zone (see `backend`): the zone's
//!   extent allocator carved it, and grows it only from its own pages.

use crate::backend::{self, Backend, BackendChoice};
use crate::commit::CommitPlan;
use crate::descriptor::{DescriptorTable, RegionFlags};
use crate::epoch;
use crate::error::Error;
use crate::extent::ExtentAllocator;
use crate::granule::{GranuleState, GranuleTable};
use crate::lock::{SpaceGuard, SpaceLock};
use crate::map::{RegionIdx, RegionMap, CHUNK};
use crate::options;
use crate::region::RegionOptions;
use crate::stats::{self, Counter};
use crate::sys::{self, PAGE_SIZE};
use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicPtr, AtomicU8, Ordering};

pub struct Space {
    pub base: usize,
    pub len: usize,
    pub lock: SpaceLock,
    pub map: RegionMap,
    pub granules: GranuleTable,
    pub descs: DescriptorTable,
    /// Eager and huge-granule regions, and everything under `mprotect`.
    protected: Zone,
    /// Lazy regions under `uffd` or `guard` (see `backend`).
    lazy: Option<Zone>,
}

/// One zone of the reservation and the free ranges in it.
struct Zone {
    start: usize,
    len: usize,
    extents: UnsafeCell<ExtentAllocator>,
}

impl Zone {
    fn new(start: usize, len: usize, max_regions: usize) -> Result<Zone, sys::Errno> {
        let pages = (len / PAGE_SIZE) as u32;
        Ok(Zone {
            start,
            len,
            extents: UnsafeCell::new(ExtentAllocator::new(
                (start / PAGE_SIZE) as u64,
                pages,
                2 * max_regions + 64,
            )?),
        })
    }

    fn contains(&self, addr: usize) -> bool {
        addr.wrapping_sub(self.start) < self.len
    }

    fn page_of(&self, addr: usize) -> u32 {
        ((addr - self.start) / PAGE_SIZE) as u32
    }

    fn addr_of(&self, page: u32) -> usize {
        self.start + page as usize * PAGE_SIZE
    }

    #[allow(clippy::mut_from_ref)]
    fn extents<'g>(&'g self, _held: &'g SpaceGuard<'_>) -> &'g mut ExtentAllocator {
        // SAFETY: A2 — the caller holds the space lock, proven by `_held`,
        // and the borrow cannot outlive it.
        unsafe { &mut *self.extents.get() }
    }
}

// SAFETY: every field is either immutable after start, atomic, or (the
// zones' extent allocators) accessed only under the space lock (A2).
unsafe impl Sync for Space {}

const UNINIT: u8 = 0;
const STARTING: u8 = 1;
const READY: u8 = 2;
const FAILED: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(UNINIT);
static SPACE: AtomicPtr<Space> = AtomicPtr::new(core::ptr::null_mut());

struct Slot<T>(UnsafeCell<MaybeUninit<T>>);
// SAFETY: written once by the thread that wins STARTING, read only after
// STATE (Release) says READY or FAILED.
unsafe impl<T> Sync for Slot<T> {}

static STORAGE: Slot<Space> = Slot(UnsafeCell::new(MaybeUninit::uninit()));
static START_ERROR: Slot<Error> = Slot(UnsafeCell::new(MaybeUninit::uninit()));

impl Space {
    /// The space, started on first use: reads `SPF_*`, reserves the address
    /// space, maps the tables and installs the fault handler.
    pub fn get() -> Result<&'static Space, Error> {
        if let Some(s) = Space::ready() {
            return Ok(s);
        }
        Space::start()
    }

    /// The space if it has started. Async-signal-safe (one atomic load).
    #[inline]
    pub fn ready() -> Option<&'static Space> {
        // Acquire pairs with the Release store in `start`: the Space's
        // fields are initialised before the pointer is seen.
        let p = SPACE.load(Ordering::Acquire);
        // SAFETY: a non-null pointer points at STORAGE, initialised and
        // never changed again.
        unsafe { p.as_ref() }
    }

    #[cold]
    fn start() -> Result<&'static Space, Error> {
        loop {
            match STATE.compare_exchange(UNINIT, STARTING, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => break,
                Err(READY) => return Ok(Space::ready().expect("READY implies a space")),
                // SAFETY: FAILED is stored only after START_ERROR was written.
                Err(FAILED) => return Err(unsafe { (*START_ERROR.0.get()).assume_init() }),
                Err(_) => sys::yield_now(),
            }
        }
        match Space::build() {
            Ok(space) => {
                // SAFETY: we won STARTING, so nobody else writes STORAGE, and
                // nobody reads it before SPACE is published below.
                let p = unsafe { (*STORAGE.0.get()).write(space) as *mut Space };
                // The handler goes in before the space is published: until
                // then it finds no space and chains every fault onwards.
                if let Err(e) = crate::signal::install() {
                    // SAFETY: as above, only the STARTING winner writes it.
                    unsafe { (*START_ERROR.0.get()).write(e) };
                    STATE.store(FAILED, Ordering::Release);
                    return Err(e);
                }
                // Fork handlers before the space is published: whoever uses
                // the space registers theirs after ours (their prepare runs
                // first, taking their locks before our space lock).
                sys::at_fork(fork_prepare, fork_parent, fork_child);
                SPACE.store(p, Ordering::Release);
                STATE.store(READY, Ordering::Release);
                if options::stats_at_exit() {
                    sys::at_exit(stats::print_at_exit);
                }
                // SAFETY: just published.
                Ok(unsafe { &*p })
            }
            Err(e) => {
                // SAFETY: as above, only the STARTING winner writes it.
                unsafe { (*START_ERROR.0.get()).write(e) };
                STATE.store(FAILED, Ordering::Release);
                Err(e)
            }
        }
    }

    fn build() -> Result<Space, Error> {
        options::load_from_env();
        if sys::kernel_page_size() != PAGE_SIZE {
            return Err(Error::Unsupported {
                reason: "spf is built for 4 KiB base pages",
            });
        }
        // Each zone (see `backend`) is SPF_RESERVE bytes of whole chunks;
        // the lazy zone is given back if the backend has none.
        let zone_len = options::reserve_bytes().next_multiple_of(CHUNK);
        let choice = backend::choice();
        let zones = if choice == BackendChoice::Only(Backend::Mprotect) {
            1
        } else {
            2
        };
        let sys_err = |call| move |errno| Error::System { call, errno };
        let mut len = zones * zone_len;
        let mut choice = choice;
        let base = match sys::reserve(len, CHUNK) {
            Ok(base) => base,
            // Address space may be limited (ulimit -v): `auto` settles for
            // one zone and the backend that needs no other.
            Err(_) if zones == 2 && choice == BackendChoice::Auto => {
                len = zone_len;
                choice = BackendChoice::Only(Backend::Mprotect);
                sys::reserve(len, CHUNK).map_err(sys_err("mmap (reservation)"))?
            }
            Err(errno) => return Err(sys_err("mmap (reservation)")(errno)),
        };
        let max_regions = options::max_regions();
        let backend = backend::start(base, len, choice)?;
        if backend == Backend::Mprotect && len == 2 * zone_len {
            sys::unreserve(base + zone_len, zone_len);
            len = zone_len;
        }
        let pages = len / PAGE_SIZE;
        let (lazy_start, lazy_end) = backend::lazy_zone();
        let extent_err = sys_err("mmap (extent table)");
        let (protected, lazy) = if backend == Backend::Mprotect {
            (Zone::new(base, len, max_regions).map_err(extent_err)?, None)
        } else {
            (
                Zone::new(base, lazy_start - base, max_regions).map_err(extent_err)?,
                Some(
                    Zone::new(lazy_start, lazy_end - lazy_start, max_regions)
                        .map_err(extent_err)?,
                ),
            )
        };
        Ok(Space {
            base,
            len,
            lock: SpaceLock::new(),
            map: RegionMap::new(base, len).map_err(sys_err("mmap (region map)"))?,
            granules: GranuleTable::new(base, pages).map_err(sys_err("mmap (granule table)"))?,
            descs: DescriptorTable::new(max_regions).map_err(sys_err("mmap (descriptors)"))?,
            protected,
            lazy,
        })
    }

    /// The zone holding `addr` (an address of the reservation).
    fn zone_of(&self, addr: usize) -> &Zone {
        match &self.lazy {
            Some(lazy) if lazy.contains(addr) => lazy,
            _ => &self.protected,
        }
    }

    /// The zones, protected first.
    fn zones(&self) -> impl Iterator<Item = &Zone> {
        core::iter::once(&self.protected).chain(self.lazy.as_ref())
    }

    /// Whether `addr` lies in the reservation. Async-signal-safe.
    #[inline]
    pub fn contains(&self, addr: usize) -> bool {
        addr.wrapping_sub(self.base) < self.len
    }

    /// Takes the space lock.
    pub fn lock(&self) -> SpaceGuard<'_> {
        self.lock.lock(sys::thread_id())
    }

    /// Reserves a region of `len` bytes (rounded up to the granule).
    /// Returns its descriptor index, start and length.
    pub fn create(
        &self,
        len: usize,
        opts: &RegionOptions,
    ) -> Result<(RegionIdx, usize, usize), Error> {
        let granule = opts.granule_bytes()?;
        if len == 0 || len > self.len {
            return Err(Error::BadSize { len });
        }
        let len = len.next_multiple_of(granule);
        let pages = (len / PAGE_SIZE) as u32;
        let align = opts.align_bytes(granule)?;
        if align > self.len {
            return Err(Error::BadAlignment { align });
        }
        let align = (align / PAGE_SIZE) as u32;
        let flags = RegionFlags::new(
            granule.trailing_zeros(),
            opts.read_only,
            opts.populate,
            opts.speculative,
        )
        .with_eager(opts.eager);
        let ahead = (opts.commit_ahead / granule).min(u32::MAX as usize) as u32;
        let zone = match &self.lazy {
            Some(lazy) if backend::wants_lazy_zone(opts.eager, flags.huge()) => lazy,
            _ => &self.protected,
        };
        for attempt in 0..4 {
            let held = self.lock();
            let Some(page) = zone.extents(&held).alloc(pages, align) else {
                let free = zone.extents(&held).free_pages() as usize * PAGE_SIZE;
                drop(held);
                if attempt < 3 {
                    // Ranges may be waiting out their grace period: let the
                    // epoch advance and the deferred releases run (P1: the
                    // lock is released).
                    epoch::pin().flush();
                    continue;
                }
                return Err(Error::ReservationExhausted {
                    requested: len,
                    free,
                    reserved: zone.len,
                });
            };
            let Some(idx) = self.descs.alloc() else {
                zone.extents(&held).free(page, pages);
                drop(held);
                if attempt < 3 {
                    epoch::pin().flush();
                    continue;
                }
                return Err(Error::TooManyRegions {
                    limit: self.descs.capacity(),
                });
            };
            // Any region may fault (a lazy one on first touch, an eager one
            // after decommit or when overrun): make sure faults reach us.
            crate::signal::ensure_installed();
            let start = zone.addr_of(page);
            let desc = self.descs.get(idx);
            desc.seq.write_begin();
            desc.init(start, len, flags, ahead);
            if flags.huge() {
                // Only a hint: without THP the region still works with 4 KiB pages.
                let _ = sys::advise_huge(start, len);
            }
            let prepared =
                backend::prepare(start, len, flags.prot()).map_err(|errno| Error::System {
                    call: "madvise (guard markers)",
                    errno,
                });
            let committed = if prepared.is_err() {
                prepared
            } else if opts.eager {
                self.commit_locked(idx, start, start + len)
            } else {
                Ok(())
            };
            self.map.insert(start, start + len, idx);
            desc.seq.write_end();
            stats::add_live_regions(1);
            if let Err(e) = committed {
                drop(held);
                self.destroy(idx);
                return Err(e);
            }
            return Ok((idx, start, len));
        }
        unreachable!("the last attempt returns")
    }

    /// Destroys a region: decommits it, unmaps it from the map, and hands
    /// its descriptor and range back after a grace period.
    pub fn destroy(&self, idx: RegionIdx) {
        {
            let _held = self.lock();
            let desc = self.descs.get(idx);
            debug_assert!(desc.flags().live(), "destroying a dead region");
            let (start, end) = (desc.start(), desc.start() + desc.len());
            desc.seq.write_begin();
            self.decommit_locked(idx, start, end);
            self.restore_zone_protection(desc.flags(), start, end);
            self.map.remove(start, end);
            desc.set_flags(desc.flags().dead());
            desc.seq.write_end();
            stats::add_live_regions(-1);
        }
        // P1: the lock is released before pinning.
        let guard = epoch::pin();
        let space: &'static Space = Space::ready().expect("a region implies a space");
        guard.defer(move || space.retire(idx));
        guard.flush();
    }

    /// The end of a destroyed region's grace period.
    fn retire(&self, idx: RegionIdx) {
        let held = self.lock();
        let desc = self.descs.get(idx);
        let pages = (desc.len() / PAGE_SIZE) as u32;
        let zone = self.zone_of(desc.start());
        zone.extents(&held).free(zone.page_of(desc.start()), pages);
        // A dead descriptor with a length is still in its grace period;
        // zero marks it retired (for `check_invariants`).
        desc.seq.write_begin();
        desc.set_len(0);
        desc.seq.write_end();
        self.descs.free(idx);
    }

    /// The end of a shrunk tail's grace period.
    fn release_range(&self, start: usize, pages: u32) {
        let held = self.lock();
        let zone = self.zone_of(start);
        zone.extents(&held).free(zone.page_of(start), pages);
    }

    /// Drops the pages of `[from, to)` without changing what is committed
    /// (no granule state changes, so no lock: faults are unaffected).
    pub fn purge(&self, from: usize, to: usize) -> Result<(), Error> {
        sys::discard(from, to - from).map_err(|errno| Error::System {
            call: "madvise",
            errno,
        })
    }

    /// Makes `[from, to)` of region `idx` accessible (granule aligned).
    pub fn commit(&self, idx: RegionIdx, from: usize, to: usize) -> Result<(), Error> {
        let _held = self.lock();
        self.commit_locked(idx, from, to)
    }

    /// Commits every `Uncommitted` granule of `[from, to)`, one backend
    /// call per run. Under the lock; `seq` need not be odd because each
    /// granule is locked (faults on it wait, G1).
    fn commit_locked(&self, idx: RegionIdx, from: usize, to: usize) -> Result<(), Error> {
        let desc = self.descs.get(idx);
        let flags = desc.flags();
        let granule = flags.granule();
        let mut run_start = from;
        let mut at = from;
        let mut result = Ok(());
        let flush = |run_start: usize, run_end: usize, result: &mut Result<(), Error>| {
            if run_end == run_start {
                return;
            }
            let len = run_end - run_start;
            let ok = match backend::commit(run_start, len, flags.prot(), flags.populate()) {
                Ok(()) => {
                    desc.committed.fetch_add(len, Ordering::Relaxed);
                    stats::add_committed(len as i64);
                    true
                }
                Err(errno) => {
                    *result = Err(Error::System {
                        call: backend::commit_call(run_start),
                        errno,
                    });
                    false
                }
            };
            let state = if ok {
                GranuleState::Committed
            } else {
                GranuleState::Uncommitted
            };
            let mut h = run_start;
            while h < run_end {
                self.granules.unlock(h, state);
                h += granule;
            }
        };
        while at < to {
            if self.granules.lock_settled(at) == GranuleState::Committed {
                flush(run_start, at, &mut result);
                self.granules.unlock(at, GranuleState::Committed);
                run_start = at + granule;
            } else if result.is_err() {
                self.granules.unlock(at, GranuleState::Uncommitted);
                run_start = at + granule;
            }
            at += granule;
        }
        flush(run_start, to, &mut result);
        result
    }

    /// Gives `[from, to)`, leaving a read-only region, back the protection
    /// of its zone: in the lazy zone pages keep their protection after a
    /// decommit (they are missing or guarded), and the next region carved
    /// there must not inherit read-only pages. Under the lock.
    fn restore_zone_protection(&self, flags: RegionFlags, from: usize, to: usize) {
        if !flags.read_only() {
            return;
        }
        if let Some(Err(errno)) = backend::protect_region(from, to, sys::Prot::ReadWrite) {
            crate::report::report!(
                "spf: fatal: cannot make [{from:#x}, {to:#x}) writable again after a read-only \
                 region: mprotect failed with {errno}; the kernel's vm.max_map_count may be \
                 exhausted\n"
            );
            sys::abort();
        }
    }

    /// Decommits `[from, to)` of region `idx` (granule aligned).
    pub fn decommit(&self, idx: RegionIdx, from: usize, to: usize) {
        let _held = self.lock();
        crate::signal::ensure_installed();
        let desc = self.descs.get(idx);
        desc.seq.write_begin();
        self.decommit_locked(idx, from, to);
        desc.seq.write_end();
    }

    /// Drops the pages of `[from, to)` and makes it inaccessible. Under the
    /// lock, inside a write section.
    fn decommit_locked(&self, idx: RegionIdx, from: usize, to: usize) {
        let desc = self.descs.get(idx);
        let granule = desc.flags().granule();
        let mut committed = 0;
        let mut h = from;
        while h < to {
            if self.granules.lock_settled(h) == GranuleState::Committed {
                committed += granule;
            }
            h += granule;
        }
        // Outside the protected zone a failed commit may have left pages in
        // `Uncommitted` granules (B2): always drop there.
        if committed > 0 || backend::at(from) != Backend::Mprotect {
            backend::drop_pages(from, to - from);
        }
        let mut h = from;
        while h < to {
            self.granules.unlock(h, GranuleState::Uncommitted);
            h += granule;
        }
        desc.committed.fetch_sub(committed, Ordering::Relaxed);
        stats::add_committed(-(committed as i64));
    }

    /// The live region ending at most `reach` bytes below `addr`, if no
    /// region lies between: `(start, end)`. Lock-free lookups, so
    /// async-signal-safe; exact when the caller holds the space lock.
    pub fn region_ending_below(&self, addr: usize, reach: usize) -> Option<(usize, usize)> {
        let lowest = addr.saturating_sub(reach).max(self.base);
        let mut page = addr & !(PAGE_SIZE - 1);
        while page > lowest {
            page -= PAGE_SIZE;
            if let Some(idx) = self.map.lookup(page) {
                let snap = self.descs.get(idx).snapshot()?;
                return (snap.flags.live() && snap.end <= addr).then_some((snap.start, snap.end));
            }
        }
        None
    }

    /// Changes a region's access; committed granules change with it.
    pub fn protect(&self, idx: RegionIdx, read_only: bool) -> Result<(), Error> {
        let _held = self.lock();
        let desc = self.descs.get(idx);
        let flags = desc.flags().with_read_only(read_only);
        let granule = flags.granule();
        let (start, end) = (desc.start(), desc.start() + desc.len());
        desc.seq.write_begin();
        desc.set_flags(flags);
        if backend::at(start) != Backend::Mprotect {
            // Wait for the faults committing in the region, then change the
            // whole region at once: uncommitted pages stay missing or
            // guarded whatever their protection.
            let mut states = start;
            while states < end {
                let s = self.granules.lock_settled(states);
                self.granules.unlock(states, s);
                states += granule;
            }
            let result = backend::protect_region(start, end, flags.prot())
                .unwrap_or(Ok(()))
                .map_err(|errno| Error::System {
                    call: "mprotect",
                    errno,
                });
            desc.seq.write_end();
            return result;
        }
        let mut result = Ok(());
        let mut run_start = start;
        let mut at = start;
        while at <= end {
            let committed = at < end && self.granules.lock_settled(at) == GranuleState::Committed;
            if !committed {
                if at > run_start {
                    stats::count(Counter::Mprotect);
                    if let Err(errno) = sys::protect(run_start, at - run_start, flags.prot()) {
                        result = Err(Error::System {
                            call: "mprotect",
                            errno,
                        });
                    }
                    let mut h = run_start;
                    while h < at {
                        self.granules.unlock(h, GranuleState::Committed);
                        h += granule;
                    }
                }
                if at < end {
                    self.granules.unlock(at, GranuleState::Uncommitted);
                }
                run_start = at + granule;
            }
            at += granule;
        }
        desc.seq.write_end();
        result
    }

    /// Grows a region in place to `new_len` (rounded up to the granule);
    /// the new part is lazy.
    pub fn grow(&self, idx: RegionIdx, new_len: usize) -> Result<usize, Error> {
        let held = self.lock();
        let desc = self.descs.get(idx);
        let granule = desc.flags().granule();
        let (start, len) = (desc.start(), desc.len());
        let new_len = new_len.next_multiple_of(granule);
        if new_len <= len {
            return Ok(len);
        }
        let end = start + len;
        let extra = ((new_len - len) / PAGE_SIZE) as u32;
        let zone = self.zone_of(start);
        if !zone.contains(end) || !zone.extents(&held).take_at(zone.page_of(end), extra) {
            return Err(Error::CannotGrowInPlace { len, new_len });
        }
        if let Err(errno) = backend::prepare(end, new_len - len, desc.flags().prot()) {
            zone.extents(&held).free(zone.page_of(end), extra);
            return Err(Error::System {
                call: "madvise (guard markers)",
                errno,
            });
        }
        desc.seq.write_begin();
        desc.set_len(new_len);
        self.map.insert(end, start + new_len, idx);
        desc.seq.write_end();
        Ok(new_len)
    }

    /// Shrinks a region in place to `new_len` (rounded up to the granule,
    /// at least one granule). The tail is decommitted now and reused after
    /// a grace period.
    pub fn shrink(&self, idx: RegionIdx, new_len: usize) -> usize {
        let (tail_start, tail_pages, kept) = {
            let _held = self.lock();
            let desc = self.descs.get(idx);
            let granule = desc.flags().granule();
            let (start, len) = (desc.start(), desc.len());
            let new_len = new_len.max(1).next_multiple_of(granule);
            if new_len >= len {
                return len;
            }
            desc.seq.write_begin();
            self.decommit_locked(idx, start + new_len, start + len);
            self.restore_zone_protection(desc.flags(), start + new_len, start + len);
            self.map.remove(start + new_len, start + len);
            desc.set_len(new_len);
            desc.seq.write_end();
            (
                start + new_len,
                ((len - new_len) / PAGE_SIZE) as u32,
                new_len,
            )
        };
        let guard = epoch::pin();
        let space: &'static Space = Space::ready().expect("a region implies a space");
        guard.defer(move || space.release_range(tail_start, tail_pages));
        guard.flush();
        kept
    }

    /// The live region that starts exactly at `start`: its index, length,
    /// granule and whether it is eager. Under the lock, so the answer holds
    /// until the caller's next writer call.
    pub fn region_starting_at(&self, start: usize) -> Option<(RegionIdx, usize, usize, bool)> {
        if !self.contains(start) {
            return None;
        }
        let _held = self.lock();
        let idx = self.map.lookup(start)?;
        let desc = self.descs.get(idx);
        let flags = desc.flags();
        (flags.live() && desc.start() == start)
            .then(|| (idx, desc.len(), flags.granule(), flags.eager()))
    }

    /// The plan a fault at `addr` would follow, for the classic path which
    /// holds the lock and so needs no snapshot validation.
    pub(crate) fn plan_locked(
        &self,
        idx: RegionIdx,
        addr: usize,
    ) -> Option<(CommitPlan, crate::descriptor::Snapshot)> {
        let desc = self.descs.get(idx);
        let snap = desc.snapshot()?;
        snap.contains(addr)
            .then(|| (CommitPlan::for_fault(&snap, &self.granules, addr), snap))
    }

    /// Checks the invariants of every structure against each other. Takes
    /// the lock; meant for tests and debugging, with no fault in flight for
    /// the committed-bytes comparison.
    pub fn check_invariants(&self) -> Result<(), String> {
        let held = self.lock();
        let mut live_committed = 0usize;
        for idx in self.descs.used() {
            let desc = self.descs.get(idx);
            let flags = desc.flags();
            if !flags.live() {
                // Destroyed, and if it still has a length, in its grace
                // period: nothing may have committed any of it since.
                let (start, len, granule) = (desc.start(), desc.len(), flags.granule());
                let mut h = start;
                while h < start + len {
                    if self.granules.state(h) != GranuleState::Uncommitted || sys::probe_readable(h)
                    {
                        return Err(format!(
                            "destroyed region {idx}: granule {h:#x} is committed"
                        ));
                    }
                    h += granule;
                }
                continue;
            }
            let (start, end, granule) = (desc.start(), desc.start() + desc.len(), flags.granule());
            for probe in [start, end - 1, start + (end - start) / 2] {
                if self.map.lookup(probe) != Some(idx) {
                    return Err(format!("map does not name region {idx} at {probe:#x}"));
                }
            }
            let mut committed = 0;
            let mut h = start;
            while h < end {
                match self.granules.state(h) {
                    GranuleState::Committed => {
                        committed += granule;
                        // A purge drops the pages of committed granules in
                        // the userfaultfd zone; the next touch refills them.
                        if !backend::missing_page_possible(h) && !sys::probe_readable(h) {
                            return Err(format!("granule {h:#x} is Committed but not readable"));
                        }
                    }
                    GranuleState::Committing => {
                        return Err(format!("granule {h:#x} left Committing"));
                    }
                    GranuleState::Uncommitted => {
                        if sys::probe_readable(h) {
                            return Err(format!("granule {h:#x} is Uncommitted but readable"));
                        }
                    }
                }
                h += granule;
            }
            if committed != desc.committed.load(Ordering::Relaxed) {
                return Err(format!(
                    "region {idx}: granules say {committed} bytes committed, descriptor says {}",
                    desc.committed.load(Ordering::Relaxed)
                ));
            }
            live_committed += committed;
        }
        let gauge = stats::stats().committed_bytes as usize;
        if gauge != live_committed {
            return Err(format!(
                "committed gauge {gauge} != {live_committed} committed in live regions"
            ));
        }
        let mut bad = None;
        for zone in self.zones() {
            zone.extents(&held).for_each_free(|page, pages| {
                let start = zone.addr_of(page);
                let last = start + (pages as usize - 1) * PAGE_SIZE;
                for probe in [start, last] {
                    if self.map.lookup(probe).is_some() {
                        bad = Some(format!("free page {probe:#x} is in the map"));
                    } else if self.granules.state(probe) != GranuleState::Uncommitted {
                        bad = Some(format!("free page {probe:#x} has a granule state"));
                    } else if sys::probe_readable(probe) {
                        bad = Some(format!("free page {probe:#x} is accessible"));
                    }
                }
            });
        }
        bad.map_or(Ok(()), Err)
    }
}

/// `fork()` must not copy a half-done commit or a held lock into the child:
/// hold the space lock across the fork, then stop speculation and wait for
/// the faults in flight. Lock first: a second forking thread then waits for
/// the first fork to finish entirely before it freezes, so one fork's thaw
/// never releases speculation under another's (C2). Faults in flight can
/// always finish under the held lock: no writer or classic fault owns a
/// granule word while we hold it.
extern "C" fn fork_prepare() {
    if let Some(space) = Space::ready() {
        core::mem::forget(space.lock());
    }
    crate::cap::freeze();
}

extern "C" fn fork_parent() {
    crate::cap::thaw();
    if let Some(space) = Space::ready() {
        // SAFETY: fork_prepare took the lock and forgot the guard.
        unsafe { space.lock.force_unlock() };
    }
}

extern "C" fn fork_child() {
    // Threads pinned in the parent's collector do not exist here and would
    // hold its epoch back forever: the child starts a collector of its own.
    epoch::renew_after_fork();
    // The child's lazy zone is no longer registered with userfaultfd: it
    // registers again before anything can fault (B1).
    backend::after_fork_in_child();
    fork_parent();
}
