//! Small blocks a thread frees — of other threads' pages too — are kept in
//! its thread cache and handed out again to its own allocations of their
//! class (`cache` in spf-alloc's heap):
//! - threads swapping blocks through a table of atomics (lock-free larson,
//!   every byte of every block checked when it is swapped out) reuse the
//!   blocks they free, each other's mostly, lose no byte, and leave
//!   nothing counted after;
//! - a thread that frees another thread's blocks gets exactly those
//!   addresses for its next allocations of the class, and gives the ones
//!   it still keeps back to their owner when it exits;
//! - a thread that keeps blocks it no longer needs gives them back on its
//!   decay ticks (after two decay periods: the first sees them as needed),
//!   also while all its allocations are served by kept blocks;
//! - a thread that freed one block of each of many pages of an owner that
//!   then exited, and went idle, keeps only the 4 KiB runs of those blocks
//!   resident once `spf::purge()` ran (it purges the free runs of
//!   abandoned pages, as decay ticks do), and none once it exits.
//!
//! The tests share global counters and one size class, so they run one
//! at a time.

mod common;

use common::churn::{fill_tagged, is_tagged};
use spf::SpfAlloc;
use std::collections::HashSet;
use std::sync::atomic::Ordering::{AcqRel, Acquire, SeqCst};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A block in the swap table: its bytes hold `tag`'s pattern.
struct Tagged {
    bytes: Vec<u8>,
    tag: u64,
}

const THREADS: usize = 6;
const SLOTS: usize = 1024;
const OPS: usize = if cfg!(debug_assertions) {
    8_000
} else {
    60_000
};

#[test]
fn threads_swapping_blocks_reuse_each_others_and_lose_no_byte() {
    let _serial = serial();
    let before = spf::alloc_stats();
    let table: Arc<Vec<AtomicUsize>> = Arc::new((0..SLOTS).map(|_| AtomicUsize::new(0)).collect());
    let checked = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (table, checked) = (table.clone(), checked.clone());
            std::thread::spawn(move || {
                let mut rng = common::alloc_suite::Rng(t as u64 * 7919 + 1);
                for i in 0..OPS {
                    let len = 16 + rng.below(1009) as usize;
                    let tag = ((t as u64) << 32) | i as u64;
                    let mut bytes = vec![0u8; len];
                    fill_tagged(&mut bytes, tag);
                    let b = Box::into_raw(Box::new(Tagged { bytes, tag })) as usize;
                    let slot = &table[rng.below(SLOTS as u64) as usize];
                    // AcqRel: publishes our block's bytes, acquires those of
                    // the block we take out.
                    let old = slot.swap(b, AcqRel);
                    if old != 0 {
                        // SAFETY: a block a thread put in the table with
                        // `Box::into_raw`, taken out by exactly one swap.
                        let old = unsafe { Box::from_raw(old as *mut Tagged) };
                        assert!(
                            is_tagged(&old.bytes, old.tag),
                            "block of thread {} op {} changed while in the table",
                            old.tag >> 32,
                            old.tag as u32
                        );
                        checked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    for slot in table.iter() {
        let p = slot.swap(0, Acquire);
        if p != 0 {
            // SAFETY: as above.
            let old = unsafe { Box::from_raw(p as *mut Tagged) };
            assert!(
                is_tagged(&old.bytes, old.tag),
                "a block left in the table changed"
            );
            checked.fetch_add(1, Ordering::Relaxed);
        }
    }
    assert_eq!(
        checked.load(SeqCst),
        THREADS * OPS,
        "every block was checked once"
    );
    let after = spf::alloc_stats();
    let hits = after.cache_hits - before.cache_hits;
    let given_back = after.cache_given_back - before.cache_given_back;
    // Two allocations an op (the box and its bytes); five in six
    // swapped-out blocks are another thread's, freed into the freer's
    // cache and handed out again from there.
    assert!(
        hits >= (THREADS * OPS) as u64,
        "only {hits} of {} allocations were served by thread caches",
        2 * THREADS * OPS
    );
    // At exit each thread gave back what its cache held.
    assert!(given_back > 0, "no exiting thread gave its cache back");
    // Every thread exited: what they kept went back to the pages, and
    // nothing stays counted (the allowance is the main thread's buffer).
    assert!(
        after.allocated <= before.allocated + (64 << 10),
        "blocks stay counted: {} bytes before, {} after",
        before.allocated,
        after.allocated
    );
}

/// A size class no other test in this binary uses (1,536-byte blocks).
const SIZE: usize = 1500;
/// Blocks handed over: fewer than a thread cache keeps of this class (13:
/// at most 20 KiB a class).
const N: usize = 12;

/// Waits for the other thread to reach step `at_least`; fails after a
/// minute (it panicked, or hangs) rather than spinning for ever.
fn wait(state: &AtomicUsize, at_least: usize) {
    let start = std::time::Instant::now();
    while state.load(SeqCst) < at_least {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "the other thread never reached step {at_least} (it panicked, or hangs)"
        );
        std::thread::yield_now();
    }
}

/// Allocates `n` blocks of `SIZE` and returns them with their addresses.
// Boxed: each block must be an allocation of its own, of the class tested.
#[allow(clippy::vec_box)]
fn blocks(fill: u8, n: usize) -> (Vec<Box<[u8; SIZE]>>, HashSet<usize>) {
    let v: Vec<Box<[u8; SIZE]>> = (0..n).map(|_| Box::new([fill; SIZE])).collect();
    let addrs = v.iter().map(|b| b.as_ptr() as usize).collect();
    (v, addrs)
}

#[test]
fn a_freer_hands_out_the_blocks_it_freed_and_gives_back_the_rest_at_exit() {
    let _serial = serial();
    let (mine, addrs) = blocks(1, N);
    let state = Arc::new(AtomicUsize::new(0));
    let s = state.clone();
    let freed = addrs.clone();
    let freer = std::thread::spawn(move || {
        let before = spf::alloc_stats().cache_hits;
        for b in mine {
            assert!(b.iter().all(|&x| x == 1), "a block changed on its way");
        }
        // Its own allocations of the class: the blocks it just freed.
        let (again, again_addrs) = blocks(2, N);
        let reused = spf::alloc_stats().cache_hits - before;
        let hit = again_addrs.intersection(&freed).count();
        assert_eq!(
            hit, N,
            "the freer got {hit} of the {N} blocks it freed back ({reused} reused)"
        );
        assert!(reused >= N as u64, "cache_hits rose by {reused}");
        // Half go back to the owner's pages at once (remote frees, kept
        // again), half stay live until after the owner checked.
        s.store(1, SeqCst);
        wait(&s, 2);
        assert!(again.iter().all(|b| b.iter().all(|&x| x == 2)), "changed");
        // Exits keeping them: they must go back to their pages.
    });
    wait(&state, 1);
    // The owner's own allocations meanwhile do not get blocks the freer
    // holds.
    let (mine2, addrs2) = blocks(3, N);
    assert_eq!(
        addrs2.intersection(&addrs).count(),
        0,
        "a block the other thread holds was handed out twice"
    );
    state.store(2, SeqCst);
    freer.join().unwrap();
    // The freer exited keeping them: they are back in our pages, found
    // once the page's carved free blocks are used up.
    let (back, back_addrs) = blocks(4, 2 * N);
    let hit = back_addrs.intersection(&addrs).count();
    assert!(
        hit >= N / 2,
        "the owner got {hit} of the {N} blocks its exited freer kept back"
    );
    assert!(mine2.iter().chain(&back).all(|b| b[0] == 3 || b[0] == 4));
}

#[test]
fn kept_blocks_not_needed_go_back_on_decay_ticks() {
    let _serial = serial();
    let (mine, addrs) = blocks(5, N);
    let state = Arc::new(AtomicUsize::new(0));
    let s = state.clone();
    // A decay time of 50 ms, whatever the environment says.
    spf::set_decay_ms(50);
    let freer = std::thread::spawn(move || {
        drop(mine);
        // Allocations of another class, with slow paths, across several
        // decay periods: the kept blocks of `SIZE` are not needed.
        let start = std::time::Instant::now();
        let mut churn: Vec<Vec<u8>> = Vec::new();
        while start.elapsed() < std::time::Duration::from_millis(500) {
            for _ in 0..64 {
                churn.push(vec![9u8; 8 << 10]);
            }
            churn.clear();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        s.store(1, SeqCst);
        wait(&s, 2); // idle, alive, until the owner has looked
    });
    wait(&state, 1);
    spf::set_decay_ms(1000);
    let (back, back_addrs) = blocks(6, 2 * N);
    let hit = back_addrs.intersection(&addrs).count();
    state.store(2, SeqCst);
    freer.join().unwrap();
    assert!(
        hit >= N / 2,
        "after several decay periods the owner got {hit} of the {N} blocks the idle freer kept back"
    );
    assert!(back.iter().all(|b| b.iter().all(|&x| x == 6)));
}

#[test]
fn a_thread_living_on_kept_blocks_still_gives_back_those_it_does_not_need() {
    let _serial = serial();
    let (mine, addrs) = blocks(7, N);
    // One block of a second class, which the freer keeps too and then
    // lives on: each of its allocations takes it back, each free keeps it
    // again, and no allocation reaches the page slow path.
    let one = Box::new([0u8; 40]);
    let state = Arc::new(AtomicUsize::new(0));
    let s = state.clone();
    spf::set_decay_ms(50);
    let freer = std::thread::spawn(move || {
        drop(mine);
        drop(one);
        let before = spf::alloc_stats().cache_hits;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(500) {
            for i in 0..1000u32 {
                let b = std::hint::black_box(Box::new([i as u8; 40]));
                assert_eq!(b[39], i as u8);
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // The path under test ran: its allocations were kept blocks.
        let reused = spf::alloc_stats().cache_hits - before;
        assert!(reused >= 100_000, "only {reused} kept blocks handed out");
        s.store(1, SeqCst);
        wait(&s, 2);
    });
    wait(&state, 1);
    spf::set_decay_ms(1000);
    let (back, back_addrs) = blocks(8, 2 * N);
    let hit = back_addrs.intersection(&addrs).count();
    state.store(2, SeqCst);
    freer.join().unwrap();
    assert!(
        hit >= N / 2,
        "a freer busy on kept blocks gave back {hit} of the {N} blocks of a class it no longer needs"
    );
    assert!(back.iter().all(|b| b.iter().all(|&x| x == 8)));
}

/// Block sizes of small classes whose caches keep 45 to 64 blocks each
/// (none a size this binary's vectors grow to), and how many pages of each the
/// owner fills.
const PIN_SIZES: [usize; 5] = [192, 224, 320, 384, 448];
const PIN_PAGES: usize = 64;
const SMALL_PAGE: usize = 64 << 10;

/// Resident 4 KiB pages of the 64 KiB pages starting at `pages`.
fn resident_4k(pages: &[usize]) -> usize {
    pages
        .iter()
        .map(|&p| common::large::resident_pages(p as *mut u8, SMALL_PAGE))
        .sum()
}

/// An owner thread fills 64 pages of each of five small classes; another
/// thread frees one block of each page while the owner lives, then idles;
/// the owner frees the rest and exits, so the pages are abandoned, each
/// holding only the block the idle thread freed (kept by it to reuse).
/// After `spf::purge()`, each page keeps at most two 4 KiB runs resident
/// (the block's, and the partial last run), and nothing once the idle
/// thread has exited. Without the purge of abandoned pages' free runs all
/// 320 pages stayed resident whole: 5120 4 KiB pages, 20 MiB.
#[test]
fn an_idle_freer_keeps_few_pages_of_an_exited_owner_resident() {
    let _serial = serial();
    let state = Arc::new(AtomicUsize::new(0));
    let (to_freer, from_owner) = std::sync::mpsc::channel::<Vec<(usize, usize)>>();
    let s = state.clone();
    let freer = std::thread::spawn(move || {
        let picked = from_owner.recv().unwrap();
        for &(p, size) in &picked {
            // SAFETY: blocks the owner allocated with this layout and
            // handed over; freed once, here.
            unsafe {
                let b = std::slice::from_raw_parts(p as *const u8, size);
                assert!(b.iter().all(|&x| x == size as u8), "a block changed");
                std::alloc::dealloc(p as *mut u8, common::large::layout(size));
            }
        }
        drop(picked);
        s.store(1, SeqCst);
        wait(&s, 3); // idle, alive, until the main thread has looked
    });
    let s = state.clone();
    let owner = std::thread::spawn(move || {
        let mut rest = Vec::new();
        let mut picked = Vec::new();
        let mut pages = Vec::new();
        for size in PIN_SIZES {
            let n = (PIN_PAGES + 2) * (SMALL_PAGE / size);
            let mut seen: Vec<usize> = Vec::new();
            for _ in 0..n {
                // SAFETY: a valid non-zero layout.
                let p = unsafe { std::alloc::alloc(common::large::layout(size)) };
                assert!(!p.is_null());
                // SAFETY: a fresh block of `size` bytes.
                unsafe { std::ptr::write_bytes(p, size as u8, size) };
                let page = p as usize & !(SMALL_PAGE - 1);
                if seen.len() < PIN_PAGES && !seen.contains(&page) {
                    seen.push(page);
                    picked.push((p as usize, size));
                } else {
                    rest.push((p as usize, size));
                }
            }
            assert_eq!(
                seen.len(),
                PIN_PAGES,
                "{size}-byte blocks filled too few pages"
            );
            pages.extend(seen);
        }
        to_freer.send(picked).unwrap();
        wait(&s, 1);
        for (p, size) in rest {
            // SAFETY: our own blocks, freed once.
            unsafe { std::alloc::dealloc(p as *mut u8, common::large::layout(size)) };
        }
        pages // exits: its pages are abandoned, each with one block out
    });
    let pages = owner.join().unwrap();
    spf::purge();
    let pinned = resident_4k(&pages);
    state.store(3, SeqCst);
    freer.join().unwrap();
    spf::purge();
    let after_exit = resident_4k(&pages);
    eprintln!(
        "{} pages: {pinned} resident 4 KiB pages while the freer idles, {after_exit} after its exit",
        pages.len()
    );
    assert!(
        after_exit <= 64,
        "the pages stayed resident after the freer's exit: {after_exit} 4 KiB pages"
    );
    // Per page: the run of the kept block, and the page's last, partial
    // run, which no block covers whole (64 KiB is not a multiple of these
    // sizes); a little room for this thread's own pages of the classes.
    assert!(
        pinned <= 2 * pages.len() + 64,
        "an idle thread's kept blocks keep {} KiB of {} abandoned pages resident after \
         spf::purge() (at most two 4 KiB runs a page)",
        pinned * 4,
        pages.len()
    );
}
