//! The large-block cache reuses freed blocks for smaller requests (a larger
//! cached block is shrunk in place, its tail kept as a cached block of its
//! own), keeps every large block's region exactly as long as its rounded
//! size, keeps reused memory usable by system calls, and caps the resident
//! bytes it holds, yielding them to live blocks: it purges only the bytes
//! over the cap, keeps a merged block's purged parts out of its count, and
//! serves requests from resident blocks first.
//!
//! The tests of this file run one at a time (`SERIAL`): they read the
//! cache's global counters and expect their own frees to be what is cached.
//! Those that need a cache holding only their own blocks run in a process
//! of their own (`common::ran_alone`).

mod common;

use common::large::{layout, region_len};

use spf::SpfAlloc;
use std::alloc::{alloc, alloc_zeroed, dealloc, realloc};
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

static SERIAL: Mutex<()> = Mutex::new(());

const MIB: usize = 1 << 20;
/// The large blocks' granule: a region is its block's size rounded to it.
const GRANULE: usize = 64 << 10;

/// Writes a pattern of `tag` at every 4 KiB page of `[from, to)` and at the
/// last byte.
///
/// # Safety
/// `p` is a live block of at least `to` bytes.
unsafe fn fill(p: *mut u8, from: usize, to: usize, tag: u8) {
    let mut off = from;
    while off < to {
        // SAFETY: inside the block (the caller's contract).
        unsafe { p.add(off).write(tag ^ (off >> 12) as u8) };
        off += 4096;
    }
    if to > from {
        // SAFETY: as above.
        unsafe { p.add(to - 1).write(tag) };
    }
}

/// Checks the page bytes of the pattern `fill` wrote, below `to - 1`.
///
/// # Safety
/// `p` is a live block of at least `to` bytes.
unsafe fn check_pages(p: *mut u8, to: usize, tag: u8) {
    let mut off = 0;
    while off < to - 1 {
        // SAFETY: inside the block.
        let got = unsafe { p.add(off).read() };
        assert_eq!(got, tag ^ (off >> 12) as u8, "byte {off} of {p:p}");
        off += 4096;
    }
}

/// Checks the pattern `fill` wrote over `[0, to)`.
///
/// # Safety
/// `p` is a live block of at least `to` bytes.
unsafe fn check(p: *mut u8, to: usize, tag: u8) {
    // SAFETY: the caller's contract.
    unsafe { check_pages(p, to, tag) };
    // SAFETY: inside the block.
    assert_eq!(unsafe { p.add(to - 1).read() }, tag, "last byte of {p:p}");
}

#[test]
fn a_smaller_request_reuses_a_larger_cached_block() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    spf::set_decay_ms(60_000);
    let before = spf::alloc_stats();
    let big = layout(24 * MIB);
    // SAFETY: a valid layout; every access stays inside the block.
    unsafe {
        let p = alloc(big);
        assert!(!p.is_null());
        fill(p, 0, big.size(), 0x5a);
        dealloc(p, big);
        // The freed block may have merged with cached neighbours: the
        // cached block is the region that now holds `p`.
        let cached = spf::region_at(p).expect("a freed large block stays cached");
        // Within 128 KiB of the cached block's size, a window no other
        // test's blocks fall in, so only this block is the best fit. (Its
        // 128 KiB tail is split off and cached.)
        let small = layout(cached.len - 3 * GRANULE + 1);
        let q = alloc(small);
        assert_eq!(
            q as usize, cached.start,
            "a request 128 KiB short of a cached block was not served by it"
        );
        assert_eq!(
            region_len(q),
            small.size().next_multiple_of(GRANULE),
            "the reused block's region is not its rounded size (L1)"
        );
        // Memory from `SpfAlloc::new()` works with system calls: read()
        // into all of it (the kernel fails with EFAULT on PROT_NONE).
        std::ptr::write_bytes(q, 0xaa, small.size());
        let buf = std::slice::from_raw_parts_mut(q, small.size());
        std::fs::File::open("/dev/zero")
            .unwrap()
            .read_exact(buf)
            .expect("read() into a reused large block");
        assert!(buf.iter().step_by(4093).all(|&b| b == 0));
        dealloc(q, small);
    }
    let after = spf::alloc_stats();
    assert!(after.large_reused_shrunk > before.large_reused_shrunk);
    assert!(after.large_reused > before.large_reused);
}

#[test]
fn threads_reuse_large_blocks_of_mixed_sizes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    spf::set_decay_ms(60_000);
    const THREADS: usize = 4;
    const OPS: usize = 300;
    const HELD: usize = 4;
    let before = spf::alloc_stats();
    // Blocks handed between threads: (address, size, tag), 0 when empty.
    let table: Vec<[AtomicUsize; 3]> = (0..16)
        .map(|_| {
            [
                AtomicUsize::new(0),
                AtomicUsize::new(0),
                AtomicUsize::new(0),
            ]
        })
        .collect();
    let table_lock = Mutex::new(());
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (table, table_lock) = (&table, &table_lock);
            s.spawn(move || {
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (t as u64 + 1).wrapping_mul(7919);
                let mut next = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                // 256 KiB + 1 … 8 MiB: every size takes the large path.
                let size_of = |r: u64| (256 << 10) + 1 + (r as usize % (8 * MIB));
                let mut held: Vec<(usize, usize, u8)> = Vec::new();
                for op in 0..OPS {
                    let tag = (t * 31 + op) as u8 | 1;
                    let size = size_of(next());
                    let l = layout(size);
                    let zeroed = op % 5 == 0;
                    // SAFETY: a valid layout; accesses stay inside blocks
                    // this thread owns.
                    unsafe {
                        let p = if zeroed { alloc_zeroed(l) } else { alloc(l) };
                        assert!(!p.is_null());
                        assert_eq!(region_len(p), size.next_multiple_of(GRANULE), "L1");
                        if zeroed {
                            let mut off = 0;
                            while off < size {
                                assert_eq!(p.add(off).read(), 0, "alloc_zeroed byte {off}");
                                off += 4096;
                            }
                            assert_eq!(p.add(size - 1).read(), 0);
                        }
                        fill(p, 0, size, tag);
                        held.push((p as usize, size, tag));
                    }
                    if held.len() > HELD {
                        let i = next() as usize % held.len();
                        let (p, size, tag) = held.swap_remove(i);
                        let p = p as *mut u8;
                        // SAFETY: a live block of `size` bytes this thread owns.
                        unsafe {
                            check(p, size, tag);
                            match next() % 3 {
                                0 => {
                                    // Grow or shrink: the kept prefix survives.
                                    let new = size_of(next());
                                    let q = realloc(p, layout(size), new);
                                    assert!(!q.is_null());
                                    assert_eq!(region_len(q), new.next_multiple_of(GRANULE));
                                    let kept = size.min(new);
                                    check_pages(q, kept, tag);
                                    fill(q, 0, new, tag);
                                    held.push((q as usize, new, tag));
                                }
                                1 => {
                                    // Hand it to whichever thread takes it.
                                    let _g = table_lock.lock().unwrap();
                                    let slot = &table[next() as usize % table.len()];
                                    let old = (
                                        slot[0].swap(p as usize, Ordering::Relaxed),
                                        slot[1].swap(size, Ordering::Relaxed),
                                        slot[2].swap(tag as usize, Ordering::Relaxed),
                                    );
                                    drop(_g);
                                    if old.0 != 0 {
                                        let q = old.0 as *mut u8;
                                        check(q, old.1, old.2 as u8);
                                        dealloc(q, layout(old.1));
                                    }
                                }
                                _ => dealloc(p, layout(size)),
                            }
                        }
                    }
                }
                for (p, size, tag) in held {
                    // SAFETY: live blocks this thread owns.
                    unsafe {
                        check(p as *mut u8, size, tag);
                        dealloc(p as *mut u8, layout(size));
                    }
                }
            });
        }
    });
    for slot in &table {
        let p = slot[0].swap(0, Ordering::Relaxed);
        if p != 0 {
            let size = slot[1].load(Ordering::Relaxed);
            // SAFETY: a live block put in the table, taken out once.
            unsafe {
                check(p as *mut u8, size, slot[2].load(Ordering::Relaxed) as u8);
                dealloc(p as *mut u8, layout(size));
            }
        }
    }
    let after = spf::alloc_stats();
    eprintln!(
        "reused {} (shrunk {}), purged over the cap {}",
        after.large_reused - before.large_reused,
        after.large_reused_shrunk - before.large_reused_shrunk,
        after.large_purged_over_cap - before.large_purged_over_cap
    );
    assert_eq!(after.large_blocks, before.large_blocks, "every block freed");
    assert!(
        after.large_reused_shrunk - before.large_reused_shrunk >= 10,
        "the shrink-in-place reuse path barely ran"
    );
}

#[test]
fn cached_resident_bytes_are_capped() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // No decay: only the cap can give the freed blocks' pages back.
    spf::set_decay_ms(60_000);
    let before = spf::alloc_stats();
    let l = layout(32 * MIB);
    // 12 blocks of 32 MiB, 384 MiB, all touched then freed into the cache.
    let blocks: Vec<*mut u8> = (0..12)
        .map(|i| {
            // SAFETY: a valid layout; the fill stays inside the block.
            unsafe {
                let p = alloc(l);
                assert!(!p.is_null());
                fill(p, 0, l.size(), i as u8);
                p
            }
        })
        .collect();
    let live = spf::alloc_stats().resident;
    for p in blocks {
        // SAFETY: live blocks of this layout.
        unsafe { dealloc(p, l) };
    }
    let after = spf::alloc_stats();
    eprintln!(
        "resident {} MiB with the blocks live, {} MiB after freeing them; cached {} MiB",
        live >> 20,
        after.resident >> 20,
        after.cached_large >> 20
    );
    assert!(after.large_purged_over_cap > before.large_purged_over_cap);
    // At most 256 MiB of the 384 freed stay resident in the cache.
    assert!(
        live.saturating_sub(after.resident) >= 100 * MIB as u64,
        "freeing 384 MiB into the cache gave back only {} MiB",
        live.saturating_sub(after.resident) >> 20
    );
}

#[test]
fn a_much_smaller_request_leaves_a_cached_block_whole() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    spf::set_decay_ms(60_000);
    // 40 MiB: a size no other test of this file uses.
    let big = layout(40 * MIB);
    // SAFETY: a valid layout; every access stays inside the blocks.
    unsafe {
        let p = alloc(big);
        assert!(!p.is_null());
        fill(p, 0, big.size(), 0x33);
        dealloc(p, big);
        // A growing buffer starts small: the cached block must stay whole
        // for the large sizes it will reach (no more than 4× the request).
        let small = layout(MIB);
        let q = alloc(small);
        assert_ne!(q, p, "a 1 MiB request took (and shrank) a 40 MiB block");
        let again = alloc(big);
        assert_eq!(again, p, "the 40 MiB block was not cached whole");
        dealloc(q, small);
        dealloc(again, big);
    }
}

#[test]
fn lazy_blocks_are_reused_shrunk_and_zeroed_when_asked() {
    use std::alloc::GlobalAlloc;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    spf::set_decay_ms(60_000);
    // Blocks committed on touch share the cache with eager ones but are
    // reused only for lazy requests.
    let lazy = SpfAlloc::lazy();
    let big = layout(28 * MIB);
    let before = spf::alloc_stats();
    // SAFETY: valid layouts; every access stays inside the blocks.
    unsafe {
        let p = lazy.alloc(big);
        assert!(!p.is_null());
        fill(p, 0, big.size(), 0x77);
        lazy.dealloc(p, big);
        // A zeroed request must not get the dirty block (zeroing it would
        // commit all of it); it reads as zero wherever it comes from.
        let z = layout(20 * MIB);
        let zp = lazy.alloc_zeroed(z);
        assert!(!zp.is_null());
        assert_ne!(zp, p, "a dirty lazy block served alloc_zeroed");
        let mut off = 0;
        while off < z.size() {
            assert_eq!(zp.add(off).read(), 0, "alloc_zeroed byte {off}");
            off += 4096;
        }
        let small = layout(9 * MIB + 3);
        let q = lazy.alloc(small);
        assert_eq!(
            q, p,
            "a 9 MiB lazy request was not served by the 28 MiB block"
        );
        assert_eq!(region_len(q), small.size().next_multiple_of(GRANULE), "L1");
        fill(q, 0, small.size(), 0x19);
        check(q, small.size(), 0x19);
        lazy.dealloc(q, small);
        lazy.dealloc(zp, z);
    }
    let after = spf::alloc_stats();
    assert!(after.large_reused_shrunk > before.large_reused_shrunk);
}

/// In a child process of its own: blocks the other tests leave cached
/// would merge with the freed block (a cached block just before it made
/// the request take the merged block, about one run in six), and only a
/// fresh process has no such neighbour.
#[test]
fn a_larger_request_grows_a_cached_block_in_place() {
    if common::ran_alone("a_larger_request_grows_a_cached_block_in_place") {
        return;
    }
    spf::set_decay_ms(60_000);
    let before = spf::alloc_stats();
    // Sizes past every other test of this file, so no cached block holds
    // the 90 MiB request and the 60 MiB block is the largest below it.
    // The first block's tail (over 1 GiB) is more than the cache holds, so the
    // shrink gives it back to the kernel (a smaller tail would be cached,
    // and merge back with the block when it is freed); never touched, it
    // costs no memory.
    let (first, kept, wanted) = (layout(1124 * MIB), layout(60 * MIB), layout(90 * MIB));
    // Regions whose destruction below lets the epoch advance; made first,
    // so that none of them lands in the range the block will grow into.
    // Many of them: each destroy is a chance for the epoch to advance, and
    // the tail's grace period must be over before the block can grow.
    let probes: Vec<spf::Region> = (0..256)
        .map(|_| spf::Region::reserve(64 << 10, spf::RegionOptions::default()).unwrap())
        .collect();
    // SAFETY: valid layouts; every access stays inside the blocks.
    unsafe {
        let p = alloc(first);
        assert!(!p.is_null());
        // Shrunk in place: the range after it is free address space again
        // once its grace period ends...
        assert_eq!(realloc(p, first, kept.size()), p);
        fill(p, 0, kept.size(), 0x42);
        dealloc(p, kept);
        // ...which region writers end: each destroy lets the epoch advance,
        // and explicit flushes push it on.
        drop(probes);
        spf::testing::flush_epoch(16);
        let q = alloc(wanted);
        assert_eq!(q, p, "the cached 60 MiB block did not grow to 90 MiB");
        assert_eq!(region_len(q), wanted.size(), "L1");
        fill(q, 0, wanted.size(), 0x24);
        check(q, wanted.size(), 0x24);
        // Memory from `SpfAlloc::new()` works with system calls, the grown
        // part included.
        let buf = std::slice::from_raw_parts_mut(q, wanted.size());
        std::fs::File::open("/dev/zero")
            .unwrap()
            .read_exact(buf)
            .expect("read() into a grown large block");
        dealloc(q, wanted);
    }
    let after = spf::alloc_stats();
    assert!(after.large_reused_grown > before.large_reused_grown);
}

/// Resident bytes of the blocks at `ps`, `len` bytes each.
fn resident_of(ps: &[*mut u8], len: usize) -> usize {
    ps.iter()
        .map(|&p| common::large::resident_pages(p, len) * 4096)
        .sum()
}

/// The cache yields to live blocks: live large blocks and dirty cached
/// ones hold at most 256 MiB together, the cache keeping at least 64 MiB.
/// Checked when blocks are freed beside many live ones, and when a block
/// is made (not taken from the cache) while the cache holds dirty blocks.
/// Under a fixed 256 MiB cap every freed block here stayed resident.
#[test]
fn the_cache_yields_its_resident_bytes_to_live_blocks() {
    if common::ran_alone("the_cache_yields_its_resident_bytes_to_live_blocks") {
        return;
    }
    spf::set_decay_ms(60_000);
    let (l, gap) = (layout(32 * MIB), layout(2 * MIB));
    // Ten blocks of 32 MiB, each followed by a live 2 MiB block where the
    // address space allows, so that freed ones do not merge (each is
    // checked on its own). Where two blocks still lie side by side (a
    // gap block placed in alignment padding elsewhere), only one of them
    // is freed while the others are live.
    let mut gaps = Vec::new();
    let mut blocks: Vec<*mut u8> = (0..10)
        .map(|_| {
            // SAFETY: valid layouts; the fill stays inside the block.
            unsafe {
                let p = alloc(l);
                assert!(!p.is_null());
                fill(p, 0, l.size(), 1);
                gaps.push(alloc(gap));
                p
            }
        })
        .collect();
    blocks.sort();
    let (mut apart, mut beside) = (Vec::new(), Vec::new());
    for &p in &blocks {
        let after_last = apart
            .last()
            .is_some_and(|&q: &*mut u8| q as usize + l.size() == p as usize);
        if after_last || apart.len() == 7 {
            beside.push(p);
        } else {
            apart.push(p);
        }
    }
    assert_eq!(apart.len(), 7, "the blocks lie side by side: {blocks:?}");
    let (freed, live) = (apart[..4].to_vec(), [&apart[4..], &beside[..]].concat());
    let before = spf::alloc_stats();
    // 1. Freed beside 212 MiB of live blocks: the cache may keep 64 MiB
    //    dirty of the 128 freed.
    for &p in &freed {
        // SAFETY: live blocks of this layout.
        unsafe { dealloc(p, l) };
    }
    let kept = resident_of(&freed, l.size());
    assert!(
        kept <= 64 * MIB,
        "{} MiB of the 128 freed stayed resident beside 212 MiB of live blocks",
        kept >> 20
    );
    // 2. Three more freed: up to 140 MiB dirty may stay beside 116 MiB
    //    live...
    for &p in &live[..3] {
        // SAFETY: live blocks of this layout.
        unsafe { dealloc(p, l) };
    }
    let cached: Vec<*mut u8> = freed.iter().chain(&live[..3]).copied().collect();
    let dirty = resident_of(&cached, l.size());
    assert!(
        dirty > 96 * MIB,
        "only {} MiB stayed cached dirty beside 116 MiB of live blocks",
        dirty >> 20
    );
    for &p in &cached {
        let r = spf::region_at(p).expect("a freed block stays cached");
        assert_eq!(
            (r.start, r.len),
            (p as usize, l.size()),
            "freed blocks merged: the gaps did not separate them"
        );
    }
    // ...until a block no cached one can serve is made: with 116 + 150
    // MiB live, the cache keeps 64.
    let big = layout(150 * MIB);
    // SAFETY: a valid layout; the fill stays inside the block.
    unsafe {
        let p = alloc(big);
        assert!(!p.is_null());
        assert!(!cached.contains(&p), "a cached block served the request");
        let kept = resident_of(&cached, l.size());
        assert!(
            kept <= 64 * MIB,
            "{} MiB stayed cached dirty beside a new 150 MiB block",
            kept >> 20
        );
        fill(p, 0, big.size(), 3);
        check(p, big.size(), 3);
        dealloc(p, big);
    }
    for p in live[3..].iter().copied() {
        // SAFETY: live blocks of this layout.
        unsafe { dealloc(p, l) };
    }
    for p in gaps {
        // SAFETY: live blocks of this layout.
        unsafe { dealloc(p, gap) };
    }
    let after = spf::alloc_stats();
    assert!(after.large_purged_over_cap > before.large_purged_over_cap);
}

/// A large block: its start and length.
type Block = (*mut u8, usize);

/// Allocates blocks of `sizes`, no two side by side (so that freed ones do
/// not merge), whatever the address space's layout: each try is followed
/// by a live 2 MiB block, and a block lying beside one already chosen is
/// kept live and another tried. Returns the chosen blocks, in the order of
/// `sizes`, and every other block allocated, which the test keeps live and
/// frees at its end. Nothing is touched.
///
/// # Safety
/// Allocates with the global allocator; the caller frees every block.
unsafe fn blocks_apart(sizes: &[usize]) -> (Vec<*mut u8>, Vec<Block>) {
    let (mut chosen, mut others): (Vec<Block>, Vec<Block>) = (Vec::new(), Vec::new());
    for &size in sizes {
        let found = (0..8).find_map(|_| {
            // SAFETY: valid layouts (the caller's contract for the rest).
            let (p, gap) = unsafe { (alloc(layout(size)), alloc(layout(2 * MIB))) };
            assert!(!p.is_null() && !gap.is_null());
            others.push((gap, 2 * MIB));
            let beside = |&(q, len): &Block| {
                q as usize + len == p as usize || p as usize + size == q as usize
            };
            if chosen.iter().any(beside) {
                others.push((p, size));
                None
            } else {
                Some(p)
            }
        });
        chosen.push((
            found.expect("no block apart from the others in 8 tries"),
            size,
        ));
    }
    (chosen.into_iter().map(|(p, _)| p).collect(), others)
}

/// Frees the blocks `blocks_apart` kept live.
///
/// # Safety
/// Each a live block of that length, freed once.
unsafe fn free_all(blocks: Vec<Block>) {
    for (p, len) in blocks {
        // SAFETY: the caller's contract.
        unsafe { dealloc(p, layout(len)) };
    }
}

/// A live block, never touched, that brings the live large bytes to
/// `total` with `others` (it counts toward the resident budget at its
/// length).
///
/// # Safety
/// As `alloc`; the caller frees it with a layout of the returned length.
unsafe fn live_filler(total: usize, others: &[Block]) -> Block {
    let len = total - others.iter().map(|&(_, len)| len).sum::<usize>();
    assert!(
        len >= MIB,
        "the other live blocks already hold {total} bytes"
    );
    // `black_box`: the compiler may drop an allocation that is never used.
    // SAFETY: a valid layout.
    let p = std::hint::black_box(unsafe { alloc(layout(len)) });
    assert!(!p.is_null());
    (p, len)
}

fn resident_bytes(p: *mut u8, len: usize) -> usize {
    common::large::resident_pages(p, len) * 4096
}

/// Past the cap only the bytes over it are purged, from the end of the
/// oldest dirty block. With 176 MiB of live blocks the cache keeps 80 MiB
/// dirty; freeing three 32 MiB blocks puts it 16 MiB over, and the first
/// block keeps 16 MiB resident (its purge starts at a 2 MiB boundary).
/// Purging whole blocks gave all of the first block's pages back, and a
/// request taking it again faulted them in. The block stays whole: once
/// the two others are taken, a third 32 MiB request takes it, not a new
/// region.
#[test]
fn only_the_bytes_over_the_cap_are_purged() {
    if common::ran_alone("only_the_bytes_over_the_cap_are_purged") {
        return;
    }
    spf::set_decay_ms(60_000);
    let l32 = layout(32 * MIB);
    // SAFETY: valid layouts; fills stay inside the blocks, each block is
    // freed once with its layout.
    unsafe {
        let (blocks, mut others) = blocks_apart(&[32 * MIB; 3]);
        others.push(live_filler(176 * MIB, &others));
        for &p in &blocks {
            fill(p, 0, 32 * MIB, 5);
        }
        let before = spf::alloc_stats();
        for &p in &blocks {
            dealloc(p, l32);
        }
        let resident: Vec<usize> = blocks
            .iter()
            .map(|&p| resident_bytes(p, 32 * MIB))
            .collect();
        let after = spf::alloc_stats();
        assert!(
            after.large_purged_over_cap > before.large_purged_over_cap,
            "nothing purged over the cap: {resident:?} resident"
        );
        // 16 MiB with huge pages (2 MiB-aligned blocks); down to 14 MiB
        // for a block aligned to 64 KiB only (`SPF_THP=off`).
        let from = (blocks[0] as usize + 16 * MIB) & !(2 * MIB - 1);
        assert_eq!(
            resident,
            [from - blocks[0] as usize, 32 * MIB, 32 * MIB],
            "resident bytes of the three freed blocks, oldest first"
        );
        let first = spf::region_at(blocks[0]).expect("the first block stays cached");
        assert_eq!((first.start, first.len), (blocks[0] as usize, 32 * MIB));
        let taken: Vec<*mut u8> = (0..3).map(|_| alloc(l32)).collect();
        let mut resident_first = taken[..2].to_vec();
        resident_first.sort();
        let mut expected = blocks[1..].to_vec();
        expected.sort();
        assert!(
            resident_first == expected && taken[2] == blocks[0],
            "taken {taken:?}: not the resident blocks {expected:?} first, then the partly purged {:p}",
            blocks[0]
        );
        for p in taken {
            fill(p, 0, 32 * MIB, 11);
            check_pages(p, 32 * MIB, 11);
            dealloc(p, l32);
        }
        free_all(others);
    }
}

/// A freed block merged with a purged cached neighbour counts only its own
/// pages as dirty. With 200 MiB of live blocks (a cap of 64 MiB), a 32 MiB
/// block freed next to its purged 32 MiB tail, and a 24 MiB block freed
/// apart, hold 56 MiB dirty: both stay resident. Counting the merged block
/// dirty whole put the cache 24 MiB over the cap, and the other block was
/// purged.
#[test]
fn a_block_merged_with_a_purged_neighbour_counts_only_its_own_pages() {
    if common::ran_alone("a_block_merged_with_a_purged_neighbour_counts_only_its_own_pages") {
        return;
    }
    spf::set_decay_ms(60_000);
    let (l24, l32, l64) = (layout(24 * MIB), layout(32 * MIB), layout(64 * MIB));
    // SAFETY: valid layouts; fills stay inside the blocks, each block is
    // freed once with its layout.
    unsafe {
        let (blocks, mut others) = blocks_apart(&[64 * MIB, 24 * MIB]);
        others.push(live_filler(200 * MIB, &others));
        let (x, c) = (blocks[0], blocks[1]);
        fill(x, 0, 64 * MIB, 6);
        fill(c, 0, 24 * MIB, 7);
        // `x` shrunk to 32 MiB: its tail is cached beside it, then purged.
        assert_eq!(realloc(x, l64, 32 * MIB), x, "shrunk in place");
        assert_eq!(region_len(x), 32 * MIB);
        spf::purge();
        assert_eq!(
            resident_bytes(x.add(32 * MIB), 32 * MIB),
            0,
            "the tail is purged"
        );
        dealloc(c, l24);
        dealloc(x, l32);
        let merged = spf::region_at(x).expect("x cached");
        assert_eq!(
            (merged.start, merged.len),
            (x as usize, 64 * MIB),
            "x merged with its purged tail"
        );
        assert_eq!(
            resident_bytes(c, 24 * MIB),
            24 * MIB,
            "the block freed apart was purged: the merged block was counted dirty whole"
        );
        assert_eq!(resident_bytes(x, 32 * MIB), 32 * MIB);
        free_all(others);
    }
}

/// A request takes a cached block whose pages are resident before a
/// smaller purged one: the larger block's tail stays cached and dirty,
/// while the purged block would fault in again page by page.
#[test]
fn a_request_takes_a_dirty_block_before_a_smaller_purged_one() {
    if common::ran_alone("a_request_takes_a_dirty_block_before_a_smaller_purged_one") {
        return;
    }
    spf::set_decay_ms(60_000);
    let (l8, l16) = (layout(8 * MIB), layout(16 * MIB));
    // SAFETY: valid layouts; fills stay inside the blocks, each block is
    // freed once with its layout.
    unsafe {
        let (blocks, others) = blocks_apart(&[8 * MIB, 16 * MIB]);
        let (clean, dirty) = (blocks[0], blocks[1]);
        fill(clean, 0, 8 * MIB, 8);
        fill(dirty, 0, 16 * MIB, 9);
        dealloc(clean, l8);
        spf::purge();
        dealloc(dirty, l16);
        let p = alloc(l8);
        assert_eq!(p, dirty, "the request took the purged block ({clean:p})");
        assert_eq!(
            resident_bytes(p, 8 * MIB),
            8 * MIB,
            "the request's pages are resident"
        );
        fill(p, 0, 8 * MIB, 10);
        check_pages(p, 8 * MIB, 10);
        dealloc(p, l8);
        free_all(others);
    }
}
