//! Model checking of the fault protocol with [loom](https://docs.rs/loom):
//! every interleaving (up to a preemption bound) of a few threads faulting,
//! committing and changing one small region, including the weak-memory
//! outcomes of the atomics' orderings.
//!
//! Run it with
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target-loom \
//!     cargo test -p spf-core --release --test loom_protocol
//! ```
//!
//! (add `-- --nocapture` to see how many executions each model explored).
//! Without `--cfg loom` this file compiles to nothing.
//!
//! # What is real and what is mirrored
//!
//! The fault protocol's own code is compiled here unchanged, with `#[path]`,
//! against loom's atomics (the crate's `primitive` shim):
//!
//! - `seq.rs` — `SeqCount` (S1–S3), real;
//! - `granule.rs` — `GranuleTable`: the fault's `try_lock_uncommitted`, the
//!   writer's `lock_settled`, `wait_settled`, `unlock` (G1), real;
//! - `cap.rs` — `InflightSlot::take`/`try_charge`/drop, `freeze`, `thaw`
//!   (C1, C2), real;
//! - `commit.rs` — `CommitPlan::for_fault`/`charge`/`shrink`/`lock`,
//!   `LockedRun::apply`/`publish`/drop (K1), real, committing through the
//!   `backend` stand-in below (the `mprotect` backend, mirrored);
//! - `descriptor.rs` — `RegionDesc::snapshot`/`init`/`set_*`, real (its
//!   fields are `core` atomics, so loom schedules around the sequence count
//!   but does not explore weak-memory outcomes of the field loads: S2's
//!   fence pairing is not checked here);
//! - `fault.rs` — the whole fault path, real: `handle` (step 1 and the
//!   dispatch), `speculative` (steps 2–9), `check` (step 4), `settle` (step
//!   6 when the granule is not `Uncommitted`, with the repeat counter), and
//!   `classic` (the locked fallback and the only fatal verdicts).
//!
//! What those modules call is replaced by the stand-ins below, which the
//! real modules reach through the same `crate::…` paths:
//!
//! - `sys` — the kernel: `protect` (`mprotect`) changes a modeled
//!   protection word per page under a loom `Mutex` that stands for the
//!   kernel's `mmap_lock` (the fault path's own `mprotect` is real code
//!   calling it), and so does `replace_reserved` (to `PROT_NONE`);
//!   `discard`/`populate` succeed and do nothing (no page contents are
//!   modelled); CPU and thread ids come from loom thread-locals;
//!   `yield_now` yields to loom;
//! - `lock` — the space lock, a loom `Mutex` with the owner recorded for
//!   `held_by`, in place of the futex lock of `lock.rs`;
//! - `map` — the region map, one `AtomicU32` per page with `map.rs`'s
//!   orderings (Acquire lookups, Release stores under the lock) in place of
//!   its two-level table;
//! - `space` — `Space` holds the real granule table and real descriptors,
//!   and its writers run the *real* write sections of `space/write.rs`
//!   (`WriteSection`: `destroy`, `shrink`, `protect`, `decommit`, compiled
//!   unchanged); around them, `create` (the lazy case) and `retire` are
//!   mirrored from `space/mod.rs` minus the extent allocator and the epoch
//!   grace period (the fault handler never pins, so the grace period is no
//!   part of its protocol), and so are the classic path's helpers
//!   `plan_locked` and `region_ending_below`;
//! - `options`, `stats`, `handler_guard`, `report` — per-thread settings,
//!   counters (whose `note_inflight` asserts C1 at every admission), no
//!   nesting, `eprint!`.
//!
//! A faulting thread is modelled as the hardware does it: the access checks
//! the page's modeled protection, and while it is not allowed it calls the
//! real `fault::handle` and retries (up to [`TRIES`] times: a fault that
//! neither commits nor is reported within that is a livelock, and fails).
//!
//! # What every model checks
//!
//! - each access ends accessed (committed) or reported (`Fatal`, e.g. the
//!   region was destroyed), never loops;
//! - no commit of a destroyed or shrunk-away granule survives: after the
//!   writer, its pages are `PROT_NONE` and its words `Uncommitted`, also once
//!   every fault has finished;
//! - granule words and page protections agree (G1, G2), every descriptor's
//!   `committed` matches its `Committed` granules (D2), and the committed
//!   gauge matches the live regions;
//! - the per-CPU cap is never exceeded (C1, asserted by `note_inflight`),
//!   and no slot or charge is left behind (C2);
//! - no deadlock (loom fails when every thread is blocked) and no
//!   unbounded spinning (every wait loop yields to loom);
//! - `faults == spf + classic + fatal` (stats I1).
//!
//! Each model is small (two or three threads, one to four granules) and
//! runs under `loom::model::Builder` with a preemption bound of 3
//! (`LOOM_MAX_PREEMPTIONS` overrides it).
//!
//! # Keeping it in step
//!
//! The real modules are compiled as they are in the working tree, so a
//! change to the fault path is checked by the next run. When they start to
//! call something new from another module, the stand-in for that module
//! needs it too (the compile error names it); when a writer in `space/mod.rs`
//! changes outside `space/write.rs`, its mirror here must change with it.
//!
//! # Not modelled
//!
//! The seqlock's torn-read protection (S2: descriptor fields are `core`
//! atomics), nested faults from signal handlers, the epoch grace period
//! (range reuse is modelled without it, as a handler, which never pins, may
//! see it), descriptor reuse, `grow` and eager `commit`, the guard backend,
//! neighbouring regions in the map, and page contents (so "a write racing a
//! commit is never lost" is left to `tests/region_churn.rs`).

#![cfg(loom)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

// ---------------------------------------------------------------------------
// The real code.

#[allow(dead_code)]
#[path = "../src/cap.rs"]
mod cap;
#[allow(dead_code)]
#[path = "../src/commit.rs"]
mod commit;
#[allow(dead_code)]
#[path = "../src/descriptor.rs"]
mod descriptor;
#[allow(dead_code)]
#[path = "../src/fault.rs"]
mod fault;
#[allow(dead_code)]
#[path = "../src/granule.rs"]
mod granule;
#[allow(dead_code, unused_imports)]
#[path = "../src/primitive.rs"]
mod primitive;
#[allow(dead_code)]
#[path = "../src/seq.rs"]
mod seq;
#[allow(dead_code)]
#[path = "../src/space/write.rs"]
mod write;

// ---------------------------------------------------------------------------
// Stand-ins for what the real code calls.

/// Per-thread settings of the model: who this thread is and how it faults.
mod model {
    use crate::options::{CapPolicy, Mode};
    use std::cell::Cell;

    #[derive(Clone, Copy, Debug)]
    pub struct Actor {
        pub tid: u32,
        pub cpu: usize,
        pub mode: Mode,
        pub cap: usize,
        pub policy: CapPolicy,
    }

    impl Actor {
        pub const fn new(tid: u32, cpu: usize, mode: Mode) -> Actor {
            Actor {
                tid,
                cpu,
                mode,
                cap: 8 << 20,
                policy: CapPolicy::Shrink,
            }
        }
        pub const fn cap(mut self, cap: usize, policy: CapPolicy) -> Actor {
            self.cap = cap;
            self.policy = policy;
            self
        }
        /// Makes this model thread act as `self`.
        pub fn enter(self) {
            ME.with(|me| me.set(self));
        }
    }

    loom::thread_local! {
        pub static ME: Cell<Actor> = Cell::new(Actor::new(1, 0, Mode::Speculative));
    }

    pub fn me() -> Actor {
        ME.with(|me| me.get())
    }
}

/// The kernel: one protection word per page, changed under `mmap_lock`.
mod kernel {
    use crate::sys::{Errno, Prot, PAGE_SIZE};
    use loom::sync::Mutex;

    /// Where the modeled reservation starts (never dereferenced).
    pub const BASE: usize = 0x1000_0000;
    pub const PAGES: usize = 4;

    struct Mm {
        /// The model runs the userfaultfd backend: the zone is mapped
        /// read/write and a page is accessible only while present.
        uffd: bool,
        present: [bool; PAGES],
        prot: [Prot; PAGES],
        /// `mprotect` calls that made each page accessible.
        opened: [u32; PAGES],
        /// How many of the next `mprotect`s to an accessible protection
        /// fail with `ENOMEM` (`vm.max_map_count` exhausted).
        fail_opens: u32,
    }

    loom::lazy_static! {
        static ref MM: Mutex<Mm> = Mutex::new(Mm {
            uffd: false,
            present: [false; PAGES],
            prot: [Prot::None; PAGES],
            opened: [0; PAGES],
            fail_opens: 0,
        });
    }

    fn pages(addr: usize, len: usize) -> core::ops::Range<usize> {
        assert!(addr >= BASE && addr % PAGE_SIZE == 0 && len % PAGE_SIZE == 0);
        let first = (addr - BASE) / PAGE_SIZE;
        first..first + len / PAGE_SIZE
    }

    pub fn mprotect(addr: usize, len: usize, prot: Prot) -> Result<(), Errno> {
        let mut mm = MM.lock().unwrap();
        if prot != Prot::None && mm.fail_opens > 0 {
            mm.fail_opens -= 1;
            return Err(Errno(12)); // ENOMEM, nothing changed
        }
        for p in pages(addr, len) {
            mm.prot[p] = prot;
            if prot != Prot::None {
                mm.opened[p] += 1;
            }
        }
        Ok(())
    }

    /// Switches this execution's kernel to the userfaultfd backend's view:
    /// the whole reservation mapped read/write, every page missing.
    pub fn use_uffd() {
        let mut mm = MM.lock().unwrap();
        mm.uffd = true;
        mm.prot = [Prot::ReadWrite; PAGES];
    }

    pub fn uffd() -> bool {
        MM.lock().unwrap().uffd
    }

    /// `UFFDIO_COPY` of one page: `EEXIST` if present (nothing changed),
    /// `ENOMEM` if a failure is planned (`fail_next_opens`).
    pub fn copy_page(addr: usize) -> Result<(), Errno> {
        let mut mm = MM.lock().unwrap();
        let p = pages(addr, PAGE_SIZE).start;
        if mm.present[p] {
            return Err(Errno(17)); // EEXIST
        }
        if mm.fail_opens > 0 {
            mm.fail_opens -= 1;
            return Err(Errno(12)); // ENOMEM
        }
        mm.present[p] = true;
        mm.opened[p] += 1;
        Ok(())
    }

    /// `MADV_DONTNEED`: under userfaultfd the pages are missing again.
    pub fn discard(addr: usize, len: usize) {
        let mut mm = MM.lock().unwrap();
        for p in pages(addr, len) {
            mm.present[p] = false;
        }
    }

    /// Whether a userfaultfd page is missing (its touch raises `SIGBUS`).
    pub fn missing(addr: usize) -> bool {
        let mm = MM.lock().unwrap();
        mm.uffd && !mm.present[(addr - BASE) / PAGE_SIZE]
    }

    /// Whether an access of `write` kind to `addr` goes through now.
    pub fn allows(addr: usize, write: bool) -> bool {
        match prot(addr) {
            Prot::None => false,
            Prot::Read => !write,
            Prot::ReadWrite => true,
        }
    }

    /// The page's effective protection: under userfaultfd a missing page
    /// is as inaccessible as `PROT_NONE`.
    pub fn prot(addr: usize) -> Prot {
        let mm = MM.lock().unwrap();
        let p = (addr - BASE) / PAGE_SIZE;
        if mm.uffd && !mm.present[p] {
            Prot::None
        } else {
            mm.prot[p]
        }
    }

    pub fn opened(addr: usize) -> u32 {
        MM.lock().unwrap().opened[(addr - BASE) / PAGE_SIZE]
    }

    pub fn fail_next_opens(n: u32) {
        MM.lock().unwrap().fail_opens = n;
    }
}

mod sys {
    use core::fmt;

    pub const PAGE_SIZE: usize = 4096;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Errno(pub i32);

    impl fmt::Display for Errno {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "errno {}", self.0)
        }
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Prot {
        None,
        Read,
        ReadWrite,
    }

    /// Only `DescriptorTable::new` maps a table, and the model never makes one.
    pub fn map_table(_len: usize) -> Result<usize, Errno> {
        Err(Errno(12))
    }

    pub fn protect(addr: usize, len: usize, prot: Prot) -> Result<(), Errno> {
        crate::kernel::mprotect(addr, len, prot)
    }

    pub fn discard(addr: usize, len: usize) -> Result<(), Errno> {
        crate::kernel::discard(addr, len);
        Ok(())
    }

    /// `mmap(MAP_FIXED)` of fresh reserved memory: drops and revokes.
    pub fn replace_reserved(addr: usize, len: usize) -> Result<(), Errno> {
        crate::kernel::mprotect(addr, len, Prot::None)
    }

    pub fn populate(_addr: usize, _len: usize, _write: bool) -> Result<(), Errno> {
        Ok(())
    }

    pub fn abort() -> ! {
        panic!("spf aborted the process")
    }

    pub fn current_cpu() -> usize {
        crate::model::me().cpu
    }

    pub fn thread_id() -> u32 {
        crate::model::me().tid
    }

    pub fn yield_now() {
        loom::thread::yield_now();
    }

    /// Read only by nested faults' bounded wait, which the model never makes.
    pub fn monotonic_ns() -> u64 {
        0
    }
}

mod options {
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Mode {
        Speculative,
        Classic,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum CapPolicy {
        Shrink,
        Classic,
    }

    pub fn mode() -> Mode {
        crate::model::me().mode
    }
    pub fn cap() -> usize {
        crate::model::me().cap
    }
    pub fn cap_policy() -> CapPolicy {
        crate::model::me().policy
    }
}

mod handler_guard {
    /// The model never nests a fault inside a fault.
    pub(crate) fn nested() -> bool {
        false
    }

    pub(crate) struct Owning;

    pub(crate) fn owning(_start: usize, _end: usize) -> Owning {
        Owning
    }

    /// Asked only by nested faults, which the model never makes.
    pub(crate) fn interrupted_may_own(_head: usize) -> bool {
        true
    }
}

mod report {
    pub fn emit(args: core::fmt::Arguments<'_>) {
        eprint!("{args}");
    }

    macro_rules! report {
        ($($arg:tt)*) => {
            $crate::report::emit(format_args!($($arg)*))
        };
    }
    pub(crate) use report;
}

/// Counters per execution. Plain `std` atomics: loom runs one model thread
/// at a time, and counting is no part of the protocol.
mod stats {
    use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

    #[derive(Clone, Copy, Debug)]
    #[repr(usize)]
    #[allow(dead_code)] // the same list as `stats.rs`, some unused here
    pub enum Counter {
        Faults,
        Spf,
        Classic,
        Fatal,
        VmaChanged,
        PteLock,
        VmaNotsup,
        VmaAccess,
        Cap,
        Mprotect,
        CommitAhead,
        UffdCopy,
        GuardRemove,
        AheadBytes,
    }
    const COUNTERS: usize = Counter::AheadBytes as usize + 1;

    loom::lazy_static! {
        static ref COUNTS: [AtomicU64; COUNTERS] = Default::default();
        static ref COMMITTED: AtomicI64 = AtomicI64::new(0);
    }

    pub(crate) fn count_on(_cpu: usize, counter: Counter) {
        COUNTS[counter as usize].fetch_add(1, Relaxed);
    }
    pub(crate) fn count(counter: Counter) {
        count_on(0, counter);
    }
    pub(crate) fn add(counter: Counter, n: u64) {
        COUNTS[counter as usize].fetch_add(n, Relaxed);
    }
    pub(crate) fn add_committed(bytes: i64) {
        COMMITTED.fetch_add(bytes, Relaxed);
    }
    /// C1, checked at every admission: a CPU's in-flight bytes never pass
    /// the cap.
    pub(crate) fn note_inflight(bytes: u64, _faults: u64) {
        let cap = crate::options::cap() as u64;
        assert!(
            bytes <= cap,
            "C1: {bytes} bytes in flight on one CPU, cap {cap}"
        );
    }

    pub fn get(counter: Counter) -> u64 {
        COUNTS[counter as usize].load(Relaxed)
    }
    pub fn committed() -> i64 {
        COMMITTED.load(Relaxed)
    }
}

/// The commit backend: the `mprotect` and `uffd` branches of `backend.rs`
/// mirrored (the guard backend is not modelled). A model picks `uffd` with
/// `kernel::use_uffd()`; one `UFFDIO_COPY` is modelled page by page, each
/// page installed atomically, as the kernel does.
mod backend {
    use crate::stats::{self, Counter};
    use crate::sys::{self, Errno, Prot};

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[allow(dead_code)] // the real enum's variants; `Guard` is not modelled
    pub enum Backend {
        Uffd,
        Guard,
        Mprotect,
    }

    pub(crate) fn at(_addr: usize) -> Backend {
        if crate::kernel::uffd() {
            Backend::Uffd
        } else {
            Backend::Mprotect
        }
    }

    pub(crate) fn missing_page_possible(addr: usize) -> bool {
        at(addr) == Backend::Uffd
    }

    /// Mirror of `backend::fill_missing`: present pages are kept (`EEXIST`),
    /// any other failure stops the fill, with what was filled kept.
    fn fill_missing(addr: usize, len: usize) -> Result<(), Errno> {
        let mut at = addr;
        while at < addr + len {
            stats::count(Counter::UffdCopy);
            match crate::kernel::copy_page(at) {
                Ok(()) => {}
                Err(Errno(17)) => {} // EEXIST
                Err(errno) => return Err(errno),
            }
            at += sys::PAGE_SIZE;
        }
        Ok(())
    }

    pub(crate) fn refill(addr: usize, len: usize) -> Result<(), Errno> {
        fill_missing(addr, len)
    }

    /// Mirror of `backend::commit` (`mprotect` and `uffd` branches).
    pub(crate) fn commit(addr: usize, len: usize, prot: Prot, populate: bool) -> Result<(), Errno> {
        if at(addr) == Backend::Uffd {
            return fill_missing(addr, len);
        }
        stats::count(Counter::Mprotect);
        if let Err(errno) = sys::protect(addr, len, prot) {
            revert_protection(addr, len);
            let _ = sys::discard(addr, len);
            return Err(errno);
        }
        if populate {
            let _ = sys::populate(addr, len, prot == Prot::ReadWrite);
        }
        Ok(())
    }

    /// Mirror of `backend::drop_pages` (`mprotect` and `uffd` branches).
    pub(crate) fn drop_pages(addr: usize, len: usize) {
        if at(addr) == Backend::Uffd {
            // Missing again (B2); the model's discard cannot fail.
            let _ = sys::discard(addr, len);
            return;
        }
        // Revoke first, then drop (a racing write must fault, not survive).
        stats::count(Counter::Mprotect);
        if sys::protect(addr, len, Prot::None).is_ok() && sys::discard(addr, len).is_ok() {
            return;
        }
        if let Err(errno) = sys::replace_reserved(addr, len) {
            crate::report::report!("spf: fatal: cannot drop {addr:#x}+{len}: {errno}\n");
            sys::abort();
        }
    }

    /// Mirror of `backend::protect_region`: the whole region in the lazy
    /// zone, nothing in the protected zone.
    pub(crate) fn protect_region(
        start: usize,
        end: usize,
        prot: Prot,
    ) -> Option<Result<(), Errno>> {
        if at(start) == Backend::Mprotect {
            return None;
        }
        stats::count(Counter::Mprotect);
        Some(sys::protect(start, end - start, prot))
    }

    /// Mirror of `backend::revert_protection`.
    pub(crate) fn revert_protection(addr: usize, len: usize) {
        stats::count(Counter::Mprotect);
        if let Err(errno) = sys::protect(addr, len, Prot::None) {
            crate::report::report!("spf: fatal: cannot revert {addr:#x}+{len}: {errno}\n");
            sys::abort();
        }
    }
}

/// The region map, one word per page (mirrors `map.rs`'s orderings).
mod map {
    use crate::sys::PAGE_SIZE;
    use loom::sync::atomic::{AtomicU32, Ordering};

    pub const CHUNK_SHIFT: u32 = 21;
    pub type RegionIdx = u32;

    pub struct RegionMap {
        base: usize,
        leaves: Box<[AtomicU32]>,
    }

    impl RegionMap {
        pub fn new(base: usize, pages: usize) -> RegionMap {
            RegionMap {
                base,
                leaves: (0..pages).map(|_| AtomicU32::new(0)).collect(),
            }
        }

        pub fn lookup(&self, addr: usize) -> Option<RegionIdx> {
            // Acquire pairs with the Release stores of `set` (M3).
            let id = self.leaves[(addr - self.base) / PAGE_SIZE].load(Ordering::Acquire);
            (id != 0).then_some(id)
        }

        pub fn insert(&self, start: usize, end: usize, idx: RegionIdx) {
            self.set(start, end, idx);
        }

        pub fn remove(&self, start: usize, end: usize) {
            self.set(start, end, 0);
        }

        /// Under the space lock (M1).
        fn set(&self, start: usize, end: usize, id: u32) {
            for w in &self.leaves[(start - self.base) / PAGE_SIZE..(end - self.base) / PAGE_SIZE] {
                // Release (M3): the descriptor's fields before the id.
                w.store(id, Ordering::Release);
            }
        }
    }
}

/// The space lock: a loom `Mutex`, with its owner for `held_by`.
mod lock {
    use loom::sync::{Mutex, MutexGuard};
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

    pub struct SpaceLock {
        mutex: Mutex<()>,
        /// Best effort, as in `lock.rs` (L2): only its own thread's id
        /// matters to a reader. A `std` atomic: no part of the protocol.
        owner: AtomicU32,
    }

    pub struct SpaceGuard<'a> {
        lock: &'a SpaceLock,
        _held: MutexGuard<'a, ()>,
    }

    impl SpaceLock {
        pub fn new() -> SpaceLock {
            SpaceLock {
                mutex: Mutex::new(()),
                owner: AtomicU32::new(0),
            }
        }

        pub fn lock(&self, tid: u32) -> SpaceGuard<'_> {
            let held = self.mutex.lock().unwrap();
            self.owner.store(tid, Relaxed);
            SpaceGuard {
                lock: self,
                _held: held,
            }
        }

        pub fn held_by(&self, tid: u32) -> bool {
            self.owner.load(Relaxed) == tid
        }
    }

    impl Drop for SpaceGuard<'_> {
        fn drop(&mut self) {
            self.lock.owner.store(0, Relaxed);
        }
    }
}

/// `Space` with the real granule table and descriptors, and the real write
/// sections of `space/write.rs`; `create`'s extent and descriptor
/// allocation and the grace period are left out (see the file's docs).
mod space {
    use crate::write::WriteSection;

    use crate::commit::CommitPlan;
    use crate::descriptor::{RegionDesc, RegionFlags, Snapshot};
    use crate::granule::GranuleTable;
    use crate::kernel::{BASE, PAGES};
    use crate::lock::{SpaceGuard, SpaceLock};
    use crate::map::{RegionIdx, RegionMap};
    use crate::sys::{self, PAGE_SIZE};

    pub struct DescriptorTable {
        descs: Box<[RegionDesc]>,
    }

    impl DescriptorTable {
        pub fn get(&self, idx: RegionIdx) -> &RegionDesc {
            &self.descs[idx as usize]
        }
    }

    pub struct Space {
        pub base: usize,
        pub len: usize,
        pub lock: SpaceLock,
        pub map: RegionMap,
        pub granules: GranuleTable,
        pub descs: DescriptorTable,
    }

    impl Space {
        /// A reservation of `kernel::PAGES` pages and three descriptors
        /// (index 0 is never used).
        pub fn new() -> Space {
            Space {
                base: BASE,
                len: PAGES * PAGE_SIZE,
                lock: SpaceLock::new(),
                map: RegionMap::new(BASE, PAGES),
                granules: GranuleTable::new(BASE, PAGES).unwrap(),
                descs: DescriptorTable {
                    descs: (0..3).map(|_| RegionDesc::default()).collect(),
                },
            }
        }

        /// As `space/mod.rs`.
        pub fn contains(&self, addr: usize) -> bool {
            addr.wrapping_sub(self.base) < self.len
        }

        pub fn lock(&self) -> SpaceGuard<'_> {
            self.lock.lock(sys::thread_id())
        }

        /// Mirror of `Space::create`'s write section for a lazy region
        /// (extent and descriptor allocation are not modelled: the caller
        /// names both).
        pub fn create(
            &self,
            idx: RegionIdx,
            start: usize,
            len: usize,
            flags: RegionFlags,
            ahead: u32,
        ) {
            let held = self.lock();
            let desc = self.descs.get(idx);
            let section = WriteSection::open(&held, desc, &self.granules, &self.map);
            desc.init(start, len, flags, ahead);
            self.map.insert(start, start + len, idx);
            drop(section);
        }

        /// `Space::destroy` up to the grace period: the real write section.
        pub fn destroy(&self, idx: RegionIdx) {
            let held = self.lock();
            let desc = self.descs.get(idx);
            debug_assert!(desc.flags().live(), "destroying a dead region");
            WriteSection::open(&held, desc, &self.granules, &self.map).destroy();
        }

        /// Mirror of `Space::retire`'s descriptor part (the end of the grace
        /// period; the range's return to the extents is not modelled).
        pub fn retire(&self, idx: RegionIdx) {
            let held = self.lock();
            let desc = self.descs.get(idx);
            let section = WriteSection::open(&held, desc, &self.granules, &self.map);
            desc.set_len(0);
            drop(section);
        }

        /// `Space::shrink`'s write section, real.
        pub fn shrink(&self, idx: RegionIdx, new_len: usize) {
            let held = self.lock();
            let desc = self.descs.get(idx);
            let _ = WriteSection::open(&held, desc, &self.granules, &self.map).shrink(new_len);
        }

        /// `Space::split`'s write sections, real (descriptor allocation is
        /// not modelled: the caller names the tail's).
        pub fn split(&self, idx: RegionIdx, tail_idx: RegionIdx, at: usize) {
            let held = self.lock();
            let desc = self.descs.get(idx);
            let section = WriteSection::open(&held, desc, &self.granules, &self.map);
            let tail = self.descs.get(tail_idx);
            let tail_section = WriteSection::open(&held, tail, &self.granules, &self.map);
            section.split(&tail_section, tail_idx, at);
        }

        /// `Space::merge`'s write sections, real (the descriptor's grace
        /// period is not modelled).
        pub fn merge(&self, idx: RegionIdx, next: RegionIdx) {
            let held = self.lock();
            let desc = self.descs.get(idx);
            let section = WriteSection::open(&held, desc, &self.granules, &self.map);
            let next_desc = self.descs.get(next);
            let next_section = WriteSection::open(&held, next_desc, &self.granules, &self.map);
            section.merge(idx, &next_section);
        }

        /// `Space::protect`'s write section, real.
        pub fn protect(&self, idx: RegionIdx, read_only: bool) -> Result<(), sys::Errno> {
            let held = self.lock();
            let section = WriteSection::open(&held, self.descs.get(idx), &self.granules, &self.map);
            let result = section.protect(read_only);
            drop(section);
            result
        }

        /// Mirror of `Space::region_ending_below`.
        pub fn region_ending_below(&self, addr: usize, reach: usize) -> Option<(usize, usize)> {
            let lowest = addr.saturating_sub(reach).max(self.base);
            let mut page = addr & !(PAGE_SIZE - 1);
            while page > lowest {
                page -= PAGE_SIZE;
                if let Some(idx) = self.map.lookup(page) {
                    let snap = self.descs.get(idx).snapshot()?;
                    return (snap.flags.live() && snap.end <= addr)
                        .then_some((snap.start, snap.end));
                }
            }
            None
        }

        /// Mirror of `Space::plan_locked`.
        pub(crate) fn plan_locked(
            &self,
            idx: RegionIdx,
            addr: usize,
        ) -> Option<(CommitPlan, Snapshot)> {
            let desc = self.descs.get(idx);
            let snap = desc.snapshot()?;
            snap.contains(addr)
                .then(|| (CommitPlan::for_fault(&snap, &self.granules, addr), snap))
        }
    }
}

// ---------------------------------------------------------------------------
// The models.

use descriptor::RegionFlags;
use fault::{AccessKind, FatalFault, Outcome};
use granule::GranuleState;
use kernel::BASE;
use loom::thread;
use map::RegionIdx;
use model::Actor;
use options::{CapPolicy, Mode};
use space::Space;
use stats::Counter;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;
use sys::{Prot, PAGE_SIZE};

/// Faults one access may take before the model calls it a livelock.
const TRIES: usize = 8;

/// How one access ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The access went through (its granule is committed).
    Accessed,
    /// The fault path reported it (the process would end with a message).
    Reported(FatalFault),
}

/// A write to `addr`, as the CPU does it: fault, retry, until it goes
/// through or the fault path gives a verdict.
fn write(space: &Space, addr: usize) -> End {
    for _ in 0..TRIES {
        if kernel::allows(addr, true) {
            return End::Accessed;
        }
        let trap = if kernel::missing(addr) {
            fault::Trap::Missing
        } else {
            fault::Trap::Protection
        };
        match fault::handle(space, addr, AccessKind::Write, trap) {
            Outcome::Handled => continue,
            Outcome::Fatal(f) => return End::Reported(f),
            Outcome::NotOurs => panic!("{addr:#x} is in the reservation"),
        }
    }
    panic!("the write to {addr:#x} faulted {TRIES} times: a fault that never ends");
}

/// Flags of a lazy, speculative, writable region with `pages`-page granules.
fn flags(granule_pages: usize, populate: bool) -> RegionFlags {
    RegionFlags::new(
        (granule_pages * PAGE_SIZE).trailing_zeros(),
        false,
        populate,
        true,
    )
}

/// The granule at index `i` of a region starting at `BASE`.
fn granule(i: usize, granule_pages: usize) -> usize {
    BASE + i * granule_pages * PAGE_SIZE
}

/// Runs `f` in every interleaving with at most `bound` preemptions.
fn check(name: &str, bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let executions = Arc::new(AtomicUsize::new(0));
    let counted = executions.clone();
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = builder.preemption_bound.or(Some(bound));
    let start = Instant::now();
    builder.check(move || {
        counted.fetch_add(1, Relaxed);
        f();
    });
    let n = executions.load(Relaxed);
    eprintln!(
        "{name}: {n} executions, preemption bound {}, {:.1?}",
        builder.preemption_bound.unwrap(),
        start.elapsed()
    );
}

/// The checks that hold once no fault is in flight: granule words and page
/// protections agree (G1, G2), the descriptors' `committed` match their
/// granules (D2), the committed gauge matches, nothing is left in flight
/// (C1, C2) and every fault was counted once (stats I1).
///
/// `live` lists the live regions as (descriptor, granule pages); every page
/// of the reservation outside them must be inaccessible and `Uncommitted`.
fn check_settled(space: &Space, live: &[(RegionIdx, usize)]) {
    let mut in_live = [false; kernel::PAGES];
    let mut gauge = 0i64;
    for &(idx, gp) in live {
        let desc = space.descs.get(idx);
        assert!(desc.flags().live());
        let (start, end) = (desc.start(), desc.start() + desc.len());
        let mut committed = 0;
        let mut h = start;
        while h < end {
            let state = space.granules.state(h);
            for p in 0..gp {
                let page = h + p * PAGE_SIZE;
                in_live[(page - BASE) / PAGE_SIZE] = true;
                match state {
                    GranuleState::Committed => {
                        assert_eq!(kernel::prot(page), desc.flags().prot(), "G2 at {page:#x}")
                    }
                    GranuleState::Uncommitted => {
                        assert_eq!(kernel::prot(page), Prot::None, "G2 at {page:#x}")
                    }
                    GranuleState::Committing => panic!("G1: {h:#x} left Committing"),
                }
            }
            if state == GranuleState::Committed {
                committed += gp * PAGE_SIZE;
            }
            h += gp * PAGE_SIZE;
        }
        assert_eq!(
            desc.committed.load(Relaxed),
            committed,
            "D2 for region {idx}"
        );
        gauge += committed as i64;
    }
    for (p, live) in in_live.iter().enumerate() {
        let page = BASE + p * PAGE_SIZE;
        if !live {
            assert_eq!(
                kernel::prot(page),
                Prot::None,
                "{page:#x} outside every region is accessible"
            );
            assert_eq!(
                space.granules.state(page),
                GranuleState::Uncommitted,
                "{page:#x} outside every region"
            );
        }
    }
    assert_eq!(stats::committed(), gauge, "committed gauge");
    for cpu in 0..2 {
        assert_eq!(
            cap::in_flight(cpu),
            (0, 0),
            "C1/C2: CPU {cpu} still has a fault in flight"
        );
    }
    assert_eq!(
        stats::get(Counter::Faults),
        stats::get(Counter::Spf) + stats::get(Counter::Classic) + stats::get(Counter::Fatal),
        "I1"
    );
}

const WRITER: Actor = Actor::new(1, 0, Mode::Speculative);
const SPEC_A: Actor = Actor::new(2, 1, Mode::Speculative);
const SPEC_B: Actor = Actor::new(3, 0, Mode::Speculative);
const CLASSIC_B: Actor = Actor::new(3, 0, Mode::Classic);

/// One lazy region of `granules` granules of `gp` pages at `BASE`, with
/// descriptor 1 and commit-ahead up to `ahead` granules.
fn one_region(granules: usize, gp: usize, ahead: u32, populate: bool) -> Arc<Space> {
    let space = Arc::new(Space::new());
    space.create(
        1,
        BASE,
        granules * gp * PAGE_SIZE,
        flags(gp, populate),
        ahead,
    );
    space
}

/// A faulter against a writer that destroys the region (the main thread):
/// the fault commits before the destroy (which then reverts it) or is
/// reported; nothing of the destroyed region stays accessible.
fn fault_vs_destroy(faulter: Actor) {
    WRITER.enter();
    let space = one_region(1, 1, 0, false);
    let s = space.clone();
    let t = thread::spawn(move || {
        faulter.enter();
        write(&s, BASE)
    });
    space.destroy(1);
    assert_eq!(
        kernel::prot(BASE),
        Prot::None,
        "a commit survived the destroy"
    );
    let end = t.join().unwrap();
    assert!(
        matches!(end, End::Accessed | End::Reported(FatalFault::NoRegion)),
        "{end:?}"
    );
    check_settled(&space, &[]);
}

#[test]
fn speculative_fault_vs_destroy() {
    check("speculative_fault_vs_destroy", 3, || {
        fault_vs_destroy(SPEC_A)
    });
}

#[test]
fn classic_fault_vs_destroy() {
    check("classic_fault_vs_destroy", 3, || {
        fault_vs_destroy(Actor::new(2, 1, Mode::Classic))
    });
}

/// A commit-ahead fault whose run reaches into the tail that a writer
/// shrinks away: the tail ends inaccessible, and the fault's own granule is
/// committed (possibly by the classic path after the S3 check failed).
#[test]
fn commit_ahead_vs_shrink() {
    check("commit_ahead_vs_shrink", 3, || {
        WRITER.enter();
        // Four one-page granules, commit-ahead up to two: with granules 0
        // and 1 committed, a fault on 2 plans to commit 2 and 3.
        let space = one_region(4, 1, 2, false);
        assert_eq!(write(&space, granule(0, 1)), End::Accessed);
        assert_eq!(write(&space, granule(1, 1)), End::Accessed);
        let s = space.clone();
        let t = thread::spawn(move || {
            SPEC_A.enter();
            write(&s, granule(2, 1))
        });
        space.shrink(1, 3 * PAGE_SIZE);
        assert_eq!(
            kernel::prot(granule(3, 1)),
            Prot::None,
            "a commit-ahead survived the shrink"
        );
        assert_eq!(t.join().unwrap(), End::Accessed);
        check_settled(&space, &[(1, 1)]);
    });
}

/// A commit-ahead fault whose run crosses the point where a writer splits
/// the region: the run is committed whole (by the speculative path before
/// the split, or by the classic path after it saw the split), and each
/// part's descriptor ends with exactly the committed bytes of its granules
/// (D2), the fault's bytes included — the split waits for the fault's
/// granules to settle, and the fault accounts before it unlocks.
#[test]
fn commit_ahead_vs_split() {
    check("commit_ahead_vs_split", 3, || {
        WRITER.enter();
        // As `commit_ahead_vs_shrink`: a fault on granule 2 plans 2 and 3;
        // the split puts granule 3 in a region of its own.
        let space = one_region(4, 1, 2, false);
        assert_eq!(write(&space, granule(0, 1)), End::Accessed);
        assert_eq!(write(&space, granule(1, 1)), End::Accessed);
        let s = space.clone();
        let t = thread::spawn(move || {
            SPEC_A.enter();
            write(&s, granule(2, 1))
        });
        space.split(1, 2, granule(3, 1));
        assert_eq!(t.join().unwrap(), End::Accessed);
        check_settled(&space, &[(1, 1), (2, 1)]);
    });
}

/// A fault in the second of two adjacent regions while a writer merges it
/// into the first: the fault commits its granule (speculatively before the
/// merge, or classically in the merged region after seeing it), and the
/// merged region ends with every committed byte (D2), the fault's included.
#[test]
fn fault_vs_merge() {
    check("fault_vs_merge", 3, || {
        WRITER.enter();
        let space = Arc::new(Space::new());
        space.create(1, BASE, 2 * PAGE_SIZE, flags(1, false), 0);
        space.create(2, BASE + 2 * PAGE_SIZE, 2 * PAGE_SIZE, flags(1, false), 0);
        assert_eq!(write(&space, granule(0, 1)), End::Accessed);
        let s = space.clone();
        let t = thread::spawn(move || {
            SPEC_A.enter();
            write(&s, granule(2, 1))
        });
        space.merge(1, 2);
        assert_eq!(t.join().unwrap(), End::Accessed);
        check_settled(&space, &[(1, 1)]);
    });
}

/// A fault writing to a region that a writer makes read-only: the write
/// goes through before, or is reported after (a write to a read-only
/// region); either way no page of the region stays writable.
#[test]
fn fault_vs_protect() {
    check("fault_vs_protect", 3, || {
        WRITER.enter();
        let space = one_region(2, 1, 0, false);
        let s = space.clone();
        let t = thread::spawn(move || {
            SPEC_A.enter();
            write(&s, granule(1, 1))
        });
        space.protect(1, true).unwrap();
        for g in 0..2 {
            assert_ne!(
                kernel::prot(granule(g, 1)),
                Prot::ReadWrite,
                "a writable page survived"
            );
        }
        let end = t.join().unwrap();
        assert!(
            matches!(
                end,
                End::Accessed | End::Reported(FatalFault::WriteToReadOnly { .. })
            ),
            "{end:?}"
        );
        check_settled(&space, &[(1, 1)]);
    });
}

/// Two faults on one granule (`second` speculative or classic): both
/// accesses go through, and the granule is made accessible and accounted
/// exactly once.
fn two_faults_one_granule(second: Actor) {
    SPEC_A.enter();
    let space = one_region(1, 1, 0, false);
    let s = space.clone();
    let t = thread::spawn(move || {
        second.enter();
        write(&s, BASE + 8)
    });
    assert_eq!(write(&space, BASE), End::Accessed);
    assert_eq!(t.join().unwrap(), End::Accessed);
    assert_eq!(kernel::opened(BASE), 1, "the granule was committed twice");
    check_settled(&space, &[(1, 1)]);
}

#[test]
fn two_speculative_faults_one_granule() {
    check("two_speculative_faults_one_granule", 3, || {
        two_faults_one_granule(SPEC_B)
    });
}

#[test]
fn speculative_and_classic_fault_one_granule() {
    check("speculative_and_classic_fault_one_granule", 3, || {
        two_faults_one_granule(CLASSIC_B)
    });
}

/// Two faults on one granule and a writer destroying the region: three
/// threads, so a smaller bound.
#[test]
fn two_faults_vs_destroy() {
    check("two_faults_vs_destroy", 3, || {
        WRITER.enter();
        let space = one_region(1, 1, 0, false);
        let spawn = |actor: Actor| {
            let s = space.clone();
            thread::spawn(move || {
                actor.enter();
                write(&s, BASE)
            })
        };
        let a = spawn(SPEC_A);
        let b = spawn(CLASSIC_B);
        space.destroy(1);
        assert_eq!(
            kernel::prot(BASE),
            Prot::None,
            "a commit survived the destroy"
        );
        for end in [a.join().unwrap(), b.join().unwrap()] {
            assert!(
                matches!(end, End::Accessed | End::Reported(FatalFault::NoRegion)),
                "{end:?}"
            );
        }
        check_settled(&space, &[]);
    });
}

/// A fault that may have read the old region's descriptor while the writer
/// destroys it, retires the descriptor and creates a new region (another
/// descriptor) on the same range: a stale fault must never commit the new
/// region's granule on the old region's behalf (the S3 re-check of the old
/// sequence count), so the old descriptor's `committed` stays zero.
#[test]
fn stale_fault_vs_range_reuse() {
    check("stale_fault_vs_range_reuse", 3, || {
        WRITER.enter();
        let space = one_region(1, 1, 0, false);
        let s = space.clone();
        let t = thread::spawn(move || {
            SPEC_A.enter();
            write(&s, BASE)
        });
        space.destroy(1);
        space.retire(1);
        space.create(2, BASE, PAGE_SIZE, flags(1, false), 0);
        let end = t.join().unwrap();
        assert!(
            matches!(end, End::Accessed | End::Reported(FatalFault::NoRegion)),
            "{end:?}"
        );
        assert_eq!(
            space.descs.get(1).committed.load(Relaxed),
            0,
            "the old region was charged"
        );
        check_settled(&space, &[(2, 1)]);
    });
}

/// Two speculative faults on one CPU whose populate charge (one page past
/// the faulting one, with two-page granules) only one of them fits under a
/// cap of one page: C1 is asserted at every admission, the other fault
/// shrinks its plan (`Shrink`) or goes classic (`Classic`), and both
/// accesses go through.
fn cap_on_one_cpu(policy: CapPolicy) {
    let a = Actor::new(1, 0, Mode::Speculative).cap(PAGE_SIZE, policy);
    let b = Actor::new(2, 0, Mode::Speculative).cap(PAGE_SIZE, policy);
    a.enter();
    let space = one_region(2, 2, 0, true);
    let s = space.clone();
    let t = thread::spawn(move || {
        b.enter();
        write(&s, granule(1, 2))
    });
    assert_eq!(write(&space, granule(0, 2)), End::Accessed);
    assert_eq!(t.join().unwrap(), End::Accessed);
    check_settled(&space, &[(1, 2)]);
}

#[test]
fn cap_on_one_cpu_shrinks() {
    check("cap_on_one_cpu_shrinks", 3, || {
        cap_on_one_cpu(CapPolicy::Shrink)
    });
}

#[test]
fn cap_on_one_cpu_goes_classic() {
    check("cap_on_one_cpu_goes_classic", 3, || {
        cap_on_one_cpu(CapPolicy::Classic)
    });
}

/// `fork()`'s prepare handler (space lock, then `cap::freeze`) against a
/// speculative fault: once `freeze` returns no fault holds a granule lock
/// (C2), the fault in flight finishes without the lock (no deadlock), and a
/// fault refused by the freeze waits for the lock on the classic path.
#[test]
fn fork_freeze_vs_fault() {
    check("fork_freeze_vs_fault", 3, || {
        WRITER.enter();
        let space = one_region(1, 1, 0, false);
        // loom makes an atomic's initial value a Release store outside the
        // SeqCst order (loom 0.7.3 `rt/atomic.rs`, `State::new`), so a SeqCst
        // load may still read it after a newer SeqCst store: the
        // store-buffering outcome that C2's SeqCst pair (the slot count vs
        // `frozen`) exists to forbid, and that C++'s single SeqCst order does
        // forbid. Writing both words once with SeqCst operations first (a
        // slot taken and given back on each CPU, a `thaw`) puts every value
        // the model reads into that order.
        for cpu in 0..2 {
            drop(cap::InflightSlot::take(cpu).ok().unwrap());
        }
        cap::thaw();
        let s = space.clone();
        let t = thread::spawn(move || {
            SPEC_A.enter();
            write(&s, BASE)
        });
        {
            let _held = space.lock();
            cap::freeze();
            assert_ne!(space.granules.state(BASE), GranuleState::Committing, "C2");
            // A fault may be inside `take`, between its count and its
            // look at `frozen`, but none holds a charge.
            assert_eq!(cap::in_flight(SPEC_A.cpu).0, 0, "C2");
            // The child would be forked here.
            cap::thaw();
        }
        assert_eq!(t.join().unwrap(), End::Accessed);
        check_settled(&space, &[(1, 1)]);
    });
}

/// The first `mprotect` that opens a page fails (`ENOMEM`): the failed run
/// is made inaccessible again and unlocked (K1), the fault goes classic and
/// commits there, while a second fault on the same granule waits or
/// retries. Nothing stays half-committed.
#[test]
fn failed_mprotect_is_undone() {
    check("failed_mprotect_is_undone", 3, || {
        SPEC_A.enter();
        let space = one_region(1, 1, 0, false);
        kernel::fail_next_opens(1);
        let s = space.clone();
        let t = thread::spawn(move || {
            SPEC_B.enter();
            write(&s, BASE)
        });
        let a = write(&space, BASE);
        let b = t.join().unwrap();
        // The fault that met the failure went classic; there the next
        // `mprotect` succeeds, so both accesses go through.
        assert_eq!((a, b), (End::Accessed, End::Accessed));
        check_settled(&space, &[(1, 1)]);
    });
}

// ---------------------------------------------------------------------------
// The userfaultfd backend: commits are page copies into a read/write zone,
// a missing page raises `SIGBUS` (`Trap::Missing`), a purge leaves a
// committed granule missing until a fault refills it.

/// Two faults on the two pages of one granule, both speculative: one copies
/// the granule, the other finds it committed (or waits on its word); every
/// page is installed exactly once.
#[test]
fn uffd_two_faults_one_granule() {
    check("uffd_two_faults_one_granule", 3, || {
        kernel::use_uffd();
        SPEC_A.enter();
        let space = one_region(1, 2, 0, false);
        let s = space.clone();
        let t = thread::spawn(move || {
            SPEC_B.enter();
            write(&s, BASE + PAGE_SIZE)
        });
        assert_eq!(write(&space, BASE), End::Accessed);
        assert_eq!(t.join().unwrap(), End::Accessed);
        for page in [BASE, BASE + PAGE_SIZE] {
            assert_eq!(kernel::opened(page), 1, "{page:#x} installed twice");
        }
        check_settled(&space, &[(1, 2)]);
    });
}

/// A speculative fault against a destroy: the copy lands before the
/// destroy (which drops it) or the fault is reported; no page of the
/// destroyed region stays present.
#[test]
fn uffd_fault_vs_destroy() {
    check("uffd_fault_vs_destroy", 3, || {
        kernel::use_uffd();
        fault_vs_destroy(SPEC_A)
    });
}

/// A committed granule whose pages a purge dropped: two faults meet the
/// missing page of a `Committed` granule; one refills it, the other waits
/// or finds it present, and the granule stays `Committed` and accounted
/// once.
#[test]
fn uffd_purged_granule_refilled_by_two_faults() {
    check("uffd_purged_granule_refilled_by_two_faults", 3, || {
        kernel::use_uffd();
        SPEC_A.enter();
        let space = one_region(1, 2, 0, false);
        assert_eq!(write(&space, BASE), End::Accessed);
        sys::discard(BASE, 2 * PAGE_SIZE).unwrap();
        let s = space.clone();
        let t = thread::spawn(move || {
            SPEC_B.enter();
            write(&s, BASE + PAGE_SIZE)
        });
        assert_eq!(write(&space, BASE), End::Accessed);
        assert_eq!(t.join().unwrap(), End::Accessed);
        for page in [BASE, BASE + PAGE_SIZE] {
            assert_eq!(kernel::opened(page), 2, "{page:#x}: one commit, one refill");
        }
        check_settled(&space, &[(1, 2)]);
    });
}

/// A refill racing the region's destroy: the refill lands before the
/// destroy drops it again, or the fault is reported; nothing stays present.
#[test]
fn uffd_refill_vs_destroy() {
    check("uffd_refill_vs_destroy", 3, || {
        kernel::use_uffd();
        WRITER.enter();
        let space = one_region(1, 1, 0, false);
        assert_eq!(write(&space, BASE), End::Accessed);
        sys::discard(BASE, PAGE_SIZE).unwrap();
        let s = space.clone();
        let t = thread::spawn(move || {
            SPEC_A.enter();
            write(&s, BASE)
        });
        space.destroy(1);
        assert_eq!(
            kernel::prot(BASE),
            Prot::None,
            "a refill survived the destroy"
        );
        let end = t.join().unwrap();
        assert!(
            matches!(end, End::Accessed | End::Reported(FatalFault::NoRegion)),
            "{end:?}"
        );
        check_settled(&space, &[]);
    });
}

/// The first page copy fails (`ENOMEM`) part-way through a two-page
/// granule: what was copied is kept, the fault goes classic, and the retry
/// copies the rest (`EEXIST` skips what is present), while a second fault
/// on the granule waits or retries. Both accesses go through.
#[test]
fn uffd_failed_copy_is_retried() {
    check("uffd_failed_copy_is_retried", 3, || {
        kernel::use_uffd();
        SPEC_A.enter();
        let space = one_region(1, 2, 0, false);
        kernel::fail_next_opens(1);
        let s = space.clone();
        let t = thread::spawn(move || {
            SPEC_B.enter();
            write(&s, BASE + PAGE_SIZE)
        });
        let a = write(&space, BASE);
        let b = t.join().unwrap();
        assert_eq!((a, b), (End::Accessed, End::Accessed));
        for page in [BASE, BASE + PAGE_SIZE] {
            assert_eq!(kernel::opened(page), 1, "{page:#x} installed twice");
        }
        check_settled(&space, &[(1, 2)]);
    });
}
