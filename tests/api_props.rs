//! Property tests of the public API with arbitrary inputs: `Region`
//! (reserve, grow, shrink, commit, decommit, purge, protect, writes),
//! `Arena` (capacities, limits, layouts, prefault, reset) and `SpfAlloc`
//! as a `GlobalAlloc` (arbitrary layouts and realloc sizes: 1, page and
//! granule edges, 1 GiB, just past the 256 GiB default zone, 16 TiB,
//! `isize::MAX`, `usize::MAX`; sizes that just fit the zone have a test of
//! their own). Every call either works — and then the
//! bytes written through it read back, checked against a shadow model — or
//! returns its error (null for `GlobalAlloc`); never a panic, a hang or a
//! wrap. `check_invariants` must be clean after every case.
//!
//! Bounded for CI: 128 cases per property unless `PROPTEST_CASES` says
//! otherwise, at most 40 operations a case, and big blocks are checked at
//! their ends only.

mod common;

use common::serial;
use proptest::prelude::*;
use proptest::test_runner::Config;
use spf::{Arena, ArenaError, Error, Protection, Region, RegionOptions, SpfAlloc};
use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

/// Past every reservation spf can have (`SPF_RESERVE` tops at 8 TiB a zone).
const BEYOND_ANY_RESERVATION: usize = 1 << 44;

fn config() -> Config {
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() {
        Config::default().cases
    } else {
        128
    };
    Config {
        cases,
        // No files written into the source tree on a failure: the failing
        // input is printed.
        failure_persistence: None,
        ..Config::default()
    }
}

/// Sizes a new user might pass: edges of pages and granules, small and
/// medium blocks, and sizes that cannot fit.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => prop::sample::select(vec![
            0,
            1,
            4095,
            4096,
            4097,
            65535,
            65536,
            65537,
            (256 << 10) + 1,
            2 << 20,
        ]),
        // Sizes that fit but only just are in `the_whole_zone_once`: under
        // the guard backend a 256 GiB lazy region costs seconds (a marker
        // on every page), too slow to draw at random.
        3 => prop::sample::select(vec![
            1 << 30,
            (256 << 30) + 1,
            BEYOND_ANY_RESERVATION,
            (1 << 44) + 300_000,
            isize::MAX as usize,
            usize::MAX - 4095,
            usize::MAX,
        ]),
        4 => 1usize..(1 << 20),
        1 => (1usize << 20)..(8 << 20),
    ]
}

fn round_up(n: usize, to: usize) -> Option<usize> {
    n.checked_next_multiple_of(to)
}

/// A position in a region, resolved against its length when applied.
#[derive(Clone, Copy, Debug)]
enum Pos {
    /// `len × n / 1024`, optionally rounded down to the granule.
    Frac(u16, bool),
    /// Taken as is (edges and nonsense).
    Exact(usize),
}

fn pos() -> impl Strategy<Value = Pos> {
    prop_oneof![
        4 => (0u16..=1024, any::<bool>()).prop_map(|(n, g)| Pos::Frac(n, g)),
        1 => prop::sample::select(vec![0, 1, 4095, 4096, 65536, usize::MAX, isize::MAX as usize])
            .prop_map(Pos::Exact),
    ]
}

impl Pos {
    fn at(self, len: usize, granule: usize) -> usize {
        match self {
            Pos::Frac(n, aligned) => {
                let p = ((len as u128 * n as u128) / 1024) as usize;
                if aligned {
                    p & !(granule - 1)
                } else {
                    p
                }
            }
            Pos::Exact(p) => p,
        }
    }
}

#[derive(Clone, Debug)]
enum RegionOp {
    Reserve {
        len: usize,
        granule: usize,
        eager: bool,
        align: usize,
        read_only: bool,
    },
    Grow(usize, usize),
    Shrink(usize, usize),
    Commit(usize, Pos, Pos),
    Decommit(usize, Pos, Pos),
    Purge(usize, Pos, Pos),
    Protect(usize, bool),
    Write(usize, Pos, u8),
    Drop(usize),
}

fn region_op() -> impl Strategy<Value = RegionOp> {
    let granule = prop::sample::select(vec![
        4096,
        64 << 10,
        64 << 10,
        256 << 10,
        2 << 20,
        0,
        3000,
        4 << 20,
    ]);
    let align = prop::sample::select(vec![0, 0, 4096, 1 << 20, 8 << 20, 3 << 20, 1 << 62]);
    prop_oneof![
        2 => (size(), granule, any::<bool>(), align, prop::bool::weighted(0.2)).prop_map(
            |(len, granule, eager, align, read_only)| RegionOp::Reserve {
                len,
                granule,
                eager,
                align,
                read_only
            }
        ),
        2 => (any::<usize>(), size()).prop_map(|(i, n)| RegionOp::Grow(i, n)),
        2 => (any::<usize>(), size()).prop_map(|(i, n)| RegionOp::Shrink(i, n)),
        1 => (any::<usize>(), pos(), pos()).prop_map(|(i, a, b)| RegionOp::Commit(i, a, b)),
        1 => (any::<usize>(), pos(), pos()).prop_map(|(i, a, b)| RegionOp::Decommit(i, a, b)),
        1 => (any::<usize>(), pos(), pos()).prop_map(|(i, a, b)| RegionOp::Purge(i, a, b)),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(i, ro)| RegionOp::Protect(i, ro)),
        4 => (any::<usize>(), pos(), 1u8..).prop_map(|(i, p, v)| RegionOp::Write(i, p, v)),
        1 => any::<usize>().prop_map(RegionOp::Drop),
    ]
}

/// A live region and what its bytes must read (absent: zero).
struct Shadow {
    region: Region,
    bytes: BTreeMap<usize, u8>,
    read_only: bool,
}

impl Shadow {
    fn verify(&self) {
        let p = self.region.as_ptr();
        for (&off, &v) in &self.bytes {
            // SAFETY: inside the live region (the model drops what shrinks).
            assert_eq!(unsafe { p.add(off).read_volatile() }, v, "byte {off}");
        }
    }

    fn forget(&mut self, from: usize, to: usize) {
        let gone: Vec<usize> = self.bytes.range(from..to).map(|(&k, _)| k).collect();
        for k in gone {
            self.bytes.remove(&k);
        }
    }
}

/// Whether `[a, b)` is a valid range of a `len`-byte region aligned to `align`.
fn valid_range(a: usize, b: usize, len: usize, align: usize) -> bool {
    a <= b && b <= len && a % align == 0 && b % align == 0
}

fn run_region_ops(ops: Vec<RegionOp>) {
    let mut live: Vec<Shadow> = Vec::new();
    for op in ops {
        let n = live.len();
        match op {
            RegionOp::Reserve {
                len,
                granule,
                eager,
                align,
                read_only,
            } => {
                if n >= 4 {
                    continue;
                }
                let mut opts = RegionOptions::default().granule(granule).align(align);
                if eager {
                    opts = opts.eager();
                }
                if read_only {
                    opts = opts.protection(Protection::ReadOnly);
                }
                let result = Region::reserve(len, opts);
                let granule_ok = granule.is_power_of_two() && (4096..=2 << 20).contains(&granule);
                match &result {
                    Err(Error::BadGranule { .. }) => assert!(!granule_ok),
                    Err(Error::BadSize { .. }) => assert!(granule_ok),
                    Err(Error::BadAlignment { .. }) => assert!(granule_ok),
                    Err(e) => {
                        assert!(granule_ok, "{e}");
                        assert!(
                            matches!(e, Error::ReservationExhausted { .. }),
                            "reserve({len}): {e}"
                        );
                    }
                    Ok(_) => {}
                }
                if len == 0 || len >= BEYOND_ANY_RESERVATION || !granule_ok {
                    assert!(result.is_err(), "reserve({len}, granule {granule}) worked");
                }
                if align != 0 && !align.is_power_of_two() {
                    assert!(result.is_err(), "align {align} accepted");
                }
                let Ok(region) = result else { continue };
                assert_eq!(Some(region.len()), round_up(len, granule));
                assert_eq!(region.as_ptr() as usize % align.max(granule), 0);
                let committed = if eager { region.len() } else { 0 };
                assert_eq!(region.committed(), committed);
                if region.len() > 64 << 20 {
                    // Big enough to be slow to walk: shown to work, then gone.
                    // SAFETY: inside the live region.
                    assert_eq!(unsafe { region.as_ptr().add(region.len() - 1).read() }, 0);
                    continue;
                }
                live.push(Shadow {
                    region,
                    bytes: BTreeMap::new(),
                    read_only,
                });
            }
            _ if n == 0 => continue,
            RegionOp::Grow(i, new_len) => {
                let s = &mut live[i % n];
                let (old, g) = (s.region.len(), s.region.granule());
                match s.region.grow(new_len) {
                    Ok(()) => {
                        let want = if new_len > old {
                            round_up(new_len, g).unwrap()
                        } else {
                            old
                        };
                        assert_eq!(s.region.len(), want, "grow({new_len}) from {old}");
                        if s.region.len() > 64 << 20 {
                            live.swap_remove(i % n);
                            continue;
                        }
                    }
                    Err(Error::BadSize { .. } | Error::CannotGrowInPlace { .. }) => {
                        assert!(new_len > old, "grow({new_len}) of {old} refused");
                        assert_eq!(s.region.len(), old);
                    }
                    Err(e) => panic!("grow({new_len}): {e}"),
                }
                if new_len >= BEYOND_ANY_RESERVATION {
                    assert_eq!(s.region.len(), old, "grow({new_len}) worked");
                }
            }
            RegionOp::Shrink(i, new_len) => {
                let s = &mut live[i % n];
                let (old, g) = (s.region.len(), s.region.granule());
                s.region.shrink(new_len);
                let want = match round_up(new_len.max(1), g) {
                    Some(r) if r < old => r,
                    _ => old,
                };
                assert_eq!(s.region.len(), want, "shrink({new_len}) from {old}");
                s.forget(want, usize::MAX);
            }
            RegionOp::Commit(i, a, b) => {
                let s = &live[i % n];
                let (len, g) = (s.region.len(), s.region.granule());
                let (a, b) = (a.at(len, g), b.at(len, g));
                let result = s.region.commit(a..b);
                assert_eq!(
                    result.is_ok(),
                    valid_range(a, b, len, 1),
                    "{a}..{b}: {result:?}"
                );
                if result.is_ok() && a < b {
                    assert!(s.region.is_committed(a) && s.region.is_committed(b - 1));
                }
            }
            RegionOp::Decommit(i, a, b) => {
                let s = &mut live[i % n];
                let (len, g) = (s.region.len(), s.region.granule());
                let (a, b) = (a.at(len, g), b.at(len, g));
                let result = s.region.decommit(a..b);
                assert_eq!(
                    result.is_ok(),
                    valid_range(a, b, len, g),
                    "{a}..{b}: {result:?}"
                );
                if result.is_ok() {
                    s.forget(a, b);
                    if a < b {
                        assert!(!s.region.is_committed(a) && !s.region.is_committed(b - 1));
                    }
                }
            }
            RegionOp::Purge(i, a, b) => {
                let s = &mut live[i % n];
                let (len, g) = (s.region.len(), s.region.granule());
                let (a, b) = (a.at(len, g), b.at(len, g));
                let committed = s.region.committed();
                let result = s.region.purge(a..b);
                assert_eq!(
                    result.is_ok(),
                    valid_range(a, b, len, 4096),
                    "{a}..{b}: {result:?}"
                );
                if result.is_ok() {
                    s.forget(a, b);
                }
                assert_eq!(
                    s.region.committed(),
                    committed,
                    "purge changed what is committed"
                );
            }
            RegionOp::Protect(i, read_only) => {
                let s = &mut live[i % n];
                let to = if read_only {
                    Protection::ReadOnly
                } else {
                    Protection::ReadWrite
                };
                s.region.protect(to).unwrap();
                s.read_only = read_only;
            }
            RegionOp::Write(i, p, v) => {
                let s = &mut live[i % n];
                let (len, g) = (s.region.len(), s.region.granule());
                let off = p.at(len, g).min(len - 1);
                if s.read_only {
                    // Reads are allowed and commit zero pages.
                    // SAFETY: inside the live region.
                    let got = unsafe { s.region.as_ptr().add(off).read_volatile() };
                    assert_eq!(got, s.bytes.get(&off).copied().unwrap_or(0));
                } else {
                    // SAFETY: inside the live, writable region.
                    unsafe { s.region.as_ptr().add(off).write_volatile(v) };
                    s.bytes.insert(off, v);
                }
            }
            RegionOp::Drop(i) => {
                let s = live.swap_remove(i % n);
                s.verify();
            }
        }
        for s in &live {
            s.verify();
        }
    }
    drop(live);
    spf::check_invariants().unwrap();
}

/// Bytes of a block that are written and checked: all of a small one, the
/// first and last 64 KiB of a big one.
fn checked_spans(len: usize) -> [std::ops::Range<usize>; 2] {
    const SPAN: usize = 64 << 10;
    if len <= 2 * SPAN {
        [0..len, len..len]
    } else {
        [0..SPAN, len - SPAN..len]
    }
}

fn pattern(off: usize, seed: u64) -> u8 {
    (off as u64 ^ seed.wrapping_mul(0x9E37_79B9)).wrapping_mul(31) as u8
}

/// # Safety
/// `p` is a live block of at least `len` bytes owned by the caller.
unsafe fn fill(p: *mut u8, len: usize, seed: u64) {
    for span in checked_spans(len) {
        for off in span {
            // SAFETY: the caller's block.
            unsafe { p.add(off).write(pattern(off, seed)) };
        }
    }
}

/// # Safety
/// As `fill`.
unsafe fn check(p: *const u8, len: usize, seed: Option<u64>, what: &str) {
    for span in checked_spans(len) {
        for off in span {
            let want = seed.map_or(0, |s| pattern(off, s));
            // SAFETY: the caller's block.
            let got = unsafe { p.add(off).read() };
            assert_eq!(got, want, "{what}: byte {off} of {len}");
        }
    }
}

#[derive(Clone, Debug)]
enum AllocOp {
    Alloc {
        size: usize,
        align_log: u8,
        zeroed: bool,
    },
    Realloc(usize, usize),
    Free(usize),
}

fn alloc_op() -> impl Strategy<Value = AllocOp> {
    let align_log = prop_oneof![8 => 0u8..=6, 3 => 7u8..=22, 1 => Just(40u8), 1 => Just(62u8)];
    prop_oneof![
        3 => (size(), align_log, any::<bool>()).prop_map(|(size, align_log, zeroed)| {
            AllocOp::Alloc { size, align_log, zeroed }
        }),
        2 => (any::<usize>(), size()).prop_map(|(i, n)| AllocOp::Realloc(i, n)),
        2 => any::<usize>().prop_map(AllocOp::Free),
    ]
}

fn run_alloc_ops(ops: Vec<AllocOp>) {
    let a = &GLOBAL;
    let mut live: Vec<(*mut u8, Layout, u64)> = Vec::new();
    let mut seed = 1u64;
    for op in ops {
        seed += 1;
        match op {
            AllocOp::Alloc {
                size,
                align_log,
                zeroed,
            } => {
                // GlobalAlloc forbids zero-size layouts; Layout refuses the
                // rest of what cannot be (size past isize::MAX).
                let Ok(layout) = Layout::from_size_align(size.max(1), 1 << align_log) else {
                    continue;
                };
                // SAFETY: a valid, non-zero layout; null is an answer.
                let p = unsafe {
                    if zeroed {
                        a.alloc_zeroed(layout)
                    } else {
                        a.alloc(layout)
                    }
                };
                if layout.size() >= BEYOND_ANY_RESERVATION {
                    assert!(p.is_null(), "{layout:?} gave {p:p}");
                }
                if p.is_null() {
                    continue;
                }
                assert_eq!(p as usize % layout.align(), 0, "{layout:?}");
                if zeroed {
                    // SAFETY: a fresh block of `layout.size()` bytes.
                    unsafe { check(p, layout.size(), None, "alloc_zeroed") };
                }
                // SAFETY: as above.
                unsafe { fill(p, layout.size(), seed) };
                live.push((p, layout, seed));
                if live.len() > 16 {
                    let (p, layout, _) = live.swap_remove(0);
                    // SAFETY: live, allocated with `layout`, freed once.
                    unsafe { a.dealloc(p, layout) };
                }
            }
            _ if live.is_empty() => continue,
            AllocOp::Realloc(i, new_size) => {
                let n = live.len();
                let (p, layout, old_seed) = live[i % n];
                let new_size = new_size.max(1);
                if Layout::from_size_align(new_size, layout.align()).is_err() {
                    continue;
                }
                // SAFETY: `p` is live with `layout`; `new_size` with its
                // alignment is a valid layout.
                let q = unsafe { a.realloc(p, layout, new_size) };
                if q.is_null() {
                    assert!(new_size > layout.size(), "a shrinking realloc failed");
                    // SAFETY: a failed realloc leaves the block alone.
                    unsafe { check(p, layout.size(), Some(old_seed), "after failed realloc") };
                    continue;
                }
                assert!(new_size < BEYOND_ANY_RESERVATION, "realloc to {new_size}");
                let keep = layout.size().min(new_size);
                // The kept prefix is checked where `fill` wrote it.
                for span in checked_spans(layout.size()) {
                    for off in span.start.min(keep)..span.end.min(keep) {
                        // SAFETY: inside the new block's first `keep` bytes.
                        let got = unsafe { q.add(off).read() };
                        assert_eq!(got, pattern(off, old_seed), "realloc lost byte {off}");
                    }
                }
                let new_layout = Layout::from_size_align(new_size, layout.align()).unwrap();
                // SAFETY: the live block of `new_size` bytes.
                unsafe { fill(q, new_size, seed) };
                live[i % n] = (q, new_layout, seed);
            }
            AllocOp::Free(i) => {
                let (p, layout, s) = live.swap_remove(i % live.len());
                // SAFETY: live, owned.
                unsafe { check(p, layout.size(), Some(s), "before free") };
                // SAFETY: live, allocated with `layout`, freed once.
                unsafe { a.dealloc(p, layout) };
            }
        }
    }
    for (p, layout, s) in live {
        // SAFETY: live, owned; freed once.
        unsafe {
            check(p, layout.size(), Some(s), "at the end");
            a.dealloc(p, layout);
        }
    }
    spf::check_invariants().unwrap();
}

#[derive(Clone, Debug)]
enum ArenaOp {
    Alloc(usize, u8),
    Prefault(Pos, Pos),
    Reset,
}

fn arena_op() -> impl Strategy<Value = ArenaOp> {
    let align_log = prop_oneof![6 => 0u8..=6, 2 => 7u8..=21, 1 => Just(40u8), 1 => Just(62u8)];
    prop_oneof![
        8 => (size(), align_log).prop_map(|(s, a)| ArenaOp::Alloc(s, a)),
        2 => (pos(), pos()).prop_map(|(a, b)| ArenaOp::Prefault(a, b)),
        1 => Just(ArenaOp::Reset),
    ]
}

fn run_arena_ops(capacity: usize, limit: usize, ops: Vec<ArenaOp>) {
    const G: usize = 64 << 10;
    let arena = Arena::with_commit_limit(capacity, limit);
    // With a limit the arena reserves no more than it (and one granule).
    let reserved = capacity.min((limit / G * G).max(G));
    if reserved == 0 || reserved >= BEYOND_ANY_RESERVATION {
        assert!(
            arena.is_err(),
            "an arena of {capacity} bytes, limit {limit}"
        );
    }
    let Ok(mut arena) = arena else { return };
    let base = arena.alloc(Layout::new::<u8>());
    let base = match base {
        Ok(p) => p.as_ptr() as usize,
        Err(_) => return, // a limit below one granule: nothing can be had
    };
    arena.reset();
    let mut blocks: Vec<(usize, usize, u64)> = Vec::new();
    let mut seed = 7u64;
    for op in ops {
        seed += 1;
        match op {
            ArenaOp::Alloc(size, align_log) => {
                let Ok(layout) = Layout::from_size_align(size, 1 << align_log) else {
                    continue;
                };
                let used = arena.used();
                let start = (base + used)
                    .checked_next_multiple_of(layout.align())
                    .map(|s| s - base);
                let end = start.and_then(|s| s.checked_add(size));
                let fits = end.is_some_and(|e| {
                    e <= arena.capacity() && round_up(e, G).is_some_and(|r| r <= limit)
                });
                match arena.alloc(layout) {
                    Ok(p) => {
                        assert!(fits, "{layout:?} at {used} of {}", arena.capacity());
                        let off = p.as_ptr() as usize - base;
                        assert_eq!(Some(off), start);
                        // SAFETY: a fresh block of `size` bytes; touching it
                        // commits it.
                        unsafe { fill(p.as_ptr(), size, seed) };
                        blocks.push((off, size, seed));
                    }
                    Err(ArenaError::Exhausted { .. } | ArenaError::CommitLimit { .. }) => {
                        assert!(!fits, "{layout:?} refused at {used}");
                    }
                    Err(e) => panic!("{layout:?}: {e}"),
                }
                assert!(
                    arena.committed() <= limit,
                    "{} committed, limit {limit}",
                    arena.committed()
                );
            }
            ArenaOp::Prefault(a, b) => {
                let used = arena.used();
                let (a, b) = (a.at(used, G), b.at(used, G));
                if a <= b && b <= used && b - a > 64 << 20 {
                    // Valid, but under userfaultfd a commit allocates the
                    // memory: no gigabytes for a test.
                    continue;
                }
                let result = arena.prefault(a..b);
                assert_eq!(result.is_ok(), a <= b && b <= used, "{a}..{b} of {used}");
                assert!(arena.committed() <= limit);
            }
            ArenaOp::Reset => {
                for &(off, len, s) in &blocks {
                    // SAFETY: blocks live until the reset.
                    unsafe { check((base + off) as *const u8, len, Some(s), "arena block") };
                }
                blocks.clear();
                arena.reset();
                assert_eq!((arena.used(), arena.committed()), (0, 0));
            }
        }
    }
    for &(off, len, s) in &blocks {
        // SAFETY: blocks live until the arena goes.
        unsafe { check((base + off) as *const u8, len, Some(s), "arena block") };
    }
    drop(arena);
    spf::check_invariants().unwrap();
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn regions_work_or_refuse(ops in prop::collection::vec(region_op(), 1..40)) {
        let _s = serial();
        run_region_ops(ops);
    }

    #[test]
    fn global_alloc_works_or_returns_null(ops in prop::collection::vec(alloc_op(), 1..40)) {
        let _s = serial();
        run_alloc_ops(ops);
    }

    #[test]
    fn arenas_work_or_refuse(
        capacity in size(),
        limit in prop_oneof![Just(usize::MAX), size()],
        ops in prop::collection::vec(arena_op(), 1..40),
    ) {
        let _s = serial();
        run_arena_ops(capacity, limit, ops);
    }
}

/// A region as large as the default zone (256 GiB) less a granule, and a
/// block of SpfAlloc's just as large: they work (or the reservation says
/// it is exhausted), cannot grow past the zone, shrink, and leave the
/// invariants clean.
#[test]
fn the_whole_zone_once() {
    const ZONE: usize = 256 << 30;
    let _s = serial();
    for len in [ZONE - (64 << 10), ZONE] {
        let mut r = match Region::reserve(len, RegionOptions::default()) {
            Ok(r) => r,
            Err(e) => {
                assert!(matches!(e, Error::ReservationExhausted { .. }), "{e}");
                continue;
            }
        };
        let last = r.len() - 1;
        // SAFETY: inside the live region; the touch commits one granule.
        unsafe { r.as_ptr().add(last).write(5) };
        // SAFETY: as above.
        assert_eq!(unsafe { r.as_ptr().add(last).read() }, 5);
        let err = r.grow(ZONE + (128 << 10)).unwrap_err();
        assert!(matches!(err, Error::BadSize { .. }), "{err}");
        r.shrink(64 << 10);
        assert_eq!(r.len(), 64 << 10);
        drop(r);
        spf::check_invariants().unwrap();
    }
    let layout = Layout::from_size_align(ZONE - (64 << 10), 4096).unwrap();
    // SAFETY: a valid layout; null is an answer.
    let p = unsafe { GLOBAL.alloc(layout) };
    if !p.is_null() {
        // SAFETY: a live block of `layout.size()` bytes.
        unsafe {
            fill(p, layout.size(), 3);
            check(p, layout.size(), Some(3), "a zone-sized block");
            GLOBAL.dealloc(p, layout);
        }
    }
    spf::check_invariants().unwrap();
}
