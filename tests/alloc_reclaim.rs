//! Pages of an idle thread's heap whose blocks were all freed by other
//! threads go back to the kernel without that thread's help: the decay
//! ticks of the threads still working reclaim them (S5 in spf-alloc's
//! `segment`), and so does `spf::purge()`. And the reclaim never races the
//! owner: owners allocating and freeing while other threads free their
//! blocks and purge keep every byte, and a page reclaimed while its
//! owner's own frees wait on it hands none of them out twice.

mod common;

use common::alloc_suite::Rng;
use spf::SpfAlloc;
use std::sync::mpsc::channel;
use std::sync::{Barrier, Mutex};

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

/// The tests change the process-wide decay time: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn resident() -> u64 {
    spf::alloc_stats().resident
}

/// Pages of other heaps given back by other threads: reclaimed in place
/// (decay ticks, `purge`) or handed to the pool (a slow path about to
/// touch fresh memory takes them first).
fn given_back() -> u64 {
    let s = spf::alloc_stats();
    s.pages_reclaimed + s.pages_handed_over
}

fn fill(b: &mut [u8], tag: u64) {
    for (i, x) in b.iter_mut().enumerate() {
        *x = (tag as usize).wrapping_mul(31).wrapping_add(i) as u8;
    }
}

fn check(b: &[u8], tag: u64) {
    for (i, &x) in b.iter().enumerate() {
        assert_eq!(
            x,
            (tag as usize).wrapping_mul(31).wrapping_add(i) as u8,
            "block {tag} byte {i} changed"
        );
    }
}

/// Producers allocate, hand every block to a consumer that frees it, and
/// go idle (alive, blocked on a barrier). Returns with their blocks freed;
/// the producers wait on `idle` until the caller releases them, then
/// allocate and check blocks once more (their reclaimed pages are reused).
const PRODUCERS: usize = 4;
/// Per producer: 1 KiB blocks (small pages) and 40 KiB blocks (medium).
const SMALL: usize = 6_000;
const MEDIUM: usize = 160;

fn produce_then_idle<'a>(s: &'a std::thread::Scope<'a, '_>, idle: &'static Barrier) {
    let (tx, rx) = channel::<(u64, Box<[u8]>)>();
    for t in 0..PRODUCERS as u64 {
        let tx = tx.clone();
        s.spawn(move || {
            for round in 0..2u64 {
                for i in 0..(SMALL + MEDIUM) as u64 {
                    let len = if i < SMALL as u64 { 1024 } else { 40 << 10 };
                    let tag = (t << 40) | (round << 32) | i;
                    let mut b = vec![0u8; len].into_boxed_slice();
                    fill(&mut b, tag);
                    tx.send((tag, b)).unwrap();
                }
                // Idle until released: the blocks are freed by the consumer
                // meanwhile, and this heap takes no slow path.
                idle.wait();
                idle.wait();
            }
        });
    }
    drop(tx);
    s.spawn(move || {
        for (tag, b) in rx {
            check(&b, tag);
            drop(b); // a remote free into the producer's page
        }
    });
}

#[test]
fn idle_heaps_give_pages_back_through_other_threads() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    static IDLE: Barrier = Barrier::new(PRODUCERS + 1);
    spf::set_decay_ms(20);
    // Relative to the start: a failed test before this one may have left
    // a panic's backtrace caches allocated.
    let base_allocated = spf::alloc_stats().allocated;
    let base_resident = resident();
    let start_reclaimed = given_back();
    let mut reclaimed_before = start_reclaimed;
    // Failures are collected, not raised inside the scope: the producers
    // wait on the barrier and would hang a panicking test.
    let mut failures = Vec::new();
    std::thread::scope(|s| {
        produce_then_idle(s, &IDLE);
        for round in 0..2 {
            IDLE.wait(); // the producers are done and idle
                         // Wait until the consumer has freed everything.
            let start = std::time::Instant::now();
            while spf::alloc_stats().allocated > base_allocated + (8 << 20) {
                assert!(start.elapsed().as_secs() < 60, "consumer stuck");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let before = resident();
            // This thread keeps working (slow paths: decay ticks) while the
            // producers sleep; it never touches their heaps' pages itself.
            let start = std::time::Instant::now();
            let mut rng = Rng(5);
            while start.elapsed().as_millis() < 300 {
                let churn: Vec<Vec<u8>> = (0..2_000)
                    .map(|_| vec![1u8; 16 + rng.below(2_000) as usize])
                    .collect();
                drop(std::hint::black_box(churn));
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            let after = resident();
            let reclaimed = given_back() - reclaimed_before;
            reclaimed_before += reclaimed;
            eprintln!(
                "round {round}: resident {} MiB while the producers idle, {} MiB after \
                 other threads' decay ticks; {reclaimed} pages reclaimed or handed over",
                before >> 20,
                after >> 20
            );
            // 4 × (6 MiB + 6.25 MiB) were allocated and freed remotely (the
            // consumer's own decay ticks may reclaim some while it frees):
            // all but the first page of each class queue goes back.
            if after.saturating_sub(base_resident) > 16 << 20 {
                failures.push(format!(
                    "round {round}: {} KiB still resident over the start",
                    after.saturating_sub(base_resident) >> 10
                ));
            }
            IDLE.wait(); // release the producers (next round, or exit)
        }
    });
    spf::set_decay_ms(1000);
    // Pages were reclaimed in place, or handed to the pool by this thread's
    // slow path when it needed a page (in the second round, the producers'
    // own sweeps may send their emptied pages to the pool first).
    let reclaimed = given_back() - start_reclaimed;
    if reclaimed < 32 {
        failures.push(format!("{reclaimed} pages reclaimed in all"));
    }
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn purge_reclaims_other_threads_remotely_freed_pages() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    static IDLE: Barrier = Barrier::new(PRODUCERS + 1);
    // No decay during the test: only `purge` may give the pages back.
    spf::set_decay_ms(600_000);
    let base_allocated = spf::alloc_stats().allocated;
    let base_resident = resident();
    let mut failures = Vec::new();
    std::thread::scope(|s| {
        produce_then_idle(s, &IDLE);
        for round in 0..2 {
            IDLE.wait();
            let start = std::time::Instant::now();
            while spf::alloc_stats().allocated > base_allocated + (8 << 20) {
                assert!(start.elapsed().as_secs() < 60, "consumer stuck");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let before = resident();
            spf::purge();
            let after = resident();
            eprintln!(
                "round {round}: resident {} MiB before purge, {} MiB after",
                before >> 20,
                after >> 20
            );
            // As in the test above: all but the first page of each class
            // queue of ~49 MiB freed remotely is given back.
            if after.saturating_sub(base_resident) > 16 << 20 {
                failures.push(format!(
                    "round {round}: {} KiB still resident over the start after purge",
                    after.saturating_sub(base_resident) >> 10
                ));
            }
            IDLE.wait();
        }
    });
    spf::set_decay_ms(1000);
    assert!(failures.is_empty(), "{failures:?}");
}

/// Owners allocate and free (locally and through other threads) blocks of
/// small and medium classes while two threads purge in a loop — reclaiming
/// every page of theirs whose blocks are all out on remote frees — and the
/// owners' decay ticks reclaim each other's: every block keeps its bytes,
/// and the reclaim path ran.
#[test]
fn reclaim_races_owners_and_remote_freers() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    spf::set_decay_ms(2);
    let reclaimed_before = spf::alloc_stats().pages_reclaimed;
    let rounds = if cfg!(debug_assertions) { 40 } else { 200 };
    let done = std::sync::atomic::AtomicBool::new(false);
    let (tx, rx) = channel::<(u64, Box<[u8]>)>();
    let rx = Mutex::new(rx);
    std::thread::scope(|s| {
        for _ in 0..2 {
            let rx = &rx;
            s.spawn(move || loop {
                let msg = rx.lock().unwrap().recv();
                let Ok((tag, b)) = msg else { return };
                check(&b, tag);
            });
        }
        let mut owners = Vec::new();
        for t in 0..4u64 {
            let tx = tx.clone();
            owners.push(s.spawn(move || {
                let mut rng = Rng(t + 1);
                let mut mine: Vec<(u64, Box<[u8]>)> = Vec::new();
                for round in 0..rounds {
                    for i in 0..300u64 {
                        let len = match rng.below(8) {
                            0 => 40 << 10,
                            1 => 4096,
                            _ => 16 + rng.below(1_500) as usize,
                        };
                        let tag = (t << 48) | (round << 16) | i;
                        let mut b = vec![0u8; len].into_boxed_slice();
                        fill(&mut b, tag);
                        if rng.below(4) == 0 {
                            mine.push((tag, b));
                        } else {
                            tx.send((tag, b)).unwrap();
                        }
                    }
                    // Free most local blocks in random order, checking them.
                    while mine.len() > 50 {
                        let k = rng.below(mine.len() as u64) as usize;
                        let (tag, b) = mine.swap_remove(k);
                        check(&b, tag);
                    }
                }
                for (tag, b) in mine {
                    check(&b, tag);
                }
            }));
        }
        drop(tx);
        for _ in 0..2 {
            let done = &done;
            s.spawn(move || {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    spf::purge();
                    std::thread::yield_now();
                }
            });
        }
        for o in owners {
            o.join().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    spf::set_decay_ms(1000);
    let reclaimed = spf::alloc_stats().pages_reclaimed - reclaimed_before;
    eprintln!("{reclaimed} pages reclaimed while the owners ran");
    assert!(reclaimed > 0, "the reclaim path never ran");
}

/// A page reclaimed while its owner's own frees sit on its `local_free`
/// list: the reclaim empties that list too, so the owner never hands out
/// a block twice (once from the stale list, once carved afresh).
#[test]
fn a_reclaimed_page_keeps_none_of_its_owners_own_frees() {
    use std::alloc::{alloc, dealloc, Layout};
    use std::collections::HashSet;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // No decay during the test: only `purge` gives the page back.
    spf::set_decay_ms(600_000);
    // The 2,048 B class: 32 blocks a 64 KiB page.
    let layout = Layout::from_size_align(1_900, 8).unwrap();
    let new_block = move || {
        // SAFETY: a valid layout; every block is freed once, with it.
        let p = unsafe { alloc(std::hint::black_box(layout)) };
        assert!(!p.is_null());
        p as usize
    };
    let (to_freer, freer_gets) = channel::<Vec<usize>>();
    let (ready, owner_ready) = channel::<()>();
    let (go, owner_goes) = channel::<()>();
    let before = given_back();
    std::thread::scope(|s| {
        let owner = s.spawn(move || {
            // Page P, full; then page Q, which goes in front of P in the
            // class queue (the first page is never reclaimed, S5).
            let p: Vec<usize> = (0..32).map(|_| new_block()).collect();
            let q: Vec<usize> = (0..32).map(|_| new_block()).collect();
            // Fill this thread's cache of the class first (it keeps at
            // most 64 blocks a class): P's frees below then reach P.
            let filler: Vec<usize> = (0..64).map(|_| new_block()).collect();
            for b in filler {
                // SAFETY: a live block of `layout`, freed once.
                unsafe { dealloc(b as *mut u8, layout) };
            }
            // Half of P freed here (onto P's `local_free`), half by
            // another thread.
            let (mine, theirs): (Vec<usize>, Vec<usize>) =
                p.iter().partition(|&&b| (b / 2048) % 2 == 1);
            for &b in &mine {
                // SAFETY: a live block of `layout`, freed once.
                unsafe { dealloc(b as *mut u8, layout) };
            }
            to_freer.send(theirs).unwrap();
            ready.send(()).unwrap();
            owner_goes.recv().unwrap();
            // P was reclaimed: every block handed out now is one no live
            // block holds.
            // (Past the filler blocks, in the cache and on their pages.)
            let again: Vec<usize> = (0..256).map(|_| new_block()).collect();
            let mut seen: HashSet<usize> = q.iter().copied().collect();
            let twice = again.iter().filter(|&&b| !seen.insert(b)).count();
            for b in again.into_iter().chain(q) {
                // SAFETY: as above.
                unsafe { dealloc(b as *mut u8, layout) };
            }
            twice
        });
        // The freer frees the other half and exits: what it kept goes back
        // to P as one remote chain, so every block P still counts waits on
        // its `thread_free`.
        let theirs = freer_gets.recv().unwrap();
        s.spawn(move || {
            for b in theirs {
                // SAFETY: a live block of `layout`, freed once.
                unsafe { dealloc(b as *mut u8, layout) };
            }
        })
        .join()
        .unwrap();
        owner_ready.recv().unwrap();
        spf::purge();
        let reclaimed = given_back() - before;
        go.send(()).unwrap();
        let twice = owner.join().unwrap();
        spf::set_decay_ms(1000);
        assert!(
            reclaimed >= 1,
            "no page was reclaimed: the path under test did not run"
        );
        assert_eq!(twice, 0, "{twice} blocks were handed out while live");
    });
}
