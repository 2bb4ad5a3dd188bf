//! Many threads faulting the same and different regions at once, in both
//! fault modes, with every byte verified and the counters showing which
//! path ran.

mod common;

use common::{fill, serial, verify, SendPtr};
use spf::{HandlerAllocGuard, Mode, Region, RegionOptions};
use std::alloc::System;

#[global_allocator]
static GLOBAL: HandlerAllocGuard<System> = HandlerAllocGuard(System);

const THREADS: usize = 16;
const PAGE: usize = 4096;

/// Each thread writes its own pages of one shared region — interleaved so
/// that neighbouring pages, and so the same granules, belong to different
/// threads — and all of a private region; then everything is checked.
fn fault_storm(granule: usize) -> spf::Stats {
    let shared = Region::reserve(8 << 20, RegionOptions::default().granule(granule)).unwrap();
    let privates: Vec<Region> = (0..THREADS)
        .map(|_| Region::reserve(1 << 20, RegionOptions::default().granule(granule)).unwrap())
        .collect();
    let before = spf::stats();
    let base = SendPtr(shared.as_ptr());
    let pages = shared.len() / PAGE;
    std::thread::scope(|s| {
        for (t, private) in privates.iter().enumerate() {
            let own = SendPtr(private.as_ptr());
            let len = private.len();
            s.spawn(move || {
                for p in (t..pages).step_by(THREADS) {
                    // SAFETY: page p of the shared region belongs to thread t alone.
                    unsafe { fill(base.get().add(p * PAGE), PAGE, p) };
                }
                // SAFETY: the private region is this thread's.
                unsafe { fill(own.get(), len, 1000 + t) };
            });
        }
    });
    let after = spf::stats().since(&before);
    for p in 0..pages {
        // SAFETY: all writers have been joined.
        let bad = unsafe { verify(shared.as_ptr().add(p * PAGE), PAGE, p) };
        assert_eq!(bad, None, "shared page {p} corrupted");
    }
    for (t, private) in privates.iter().enumerate() {
        // SAFETY: as above.
        let bad = unsafe { verify(private.as_ptr(), private.len(), 1000 + t) };
        assert_eq!(bad, None, "private region {t} corrupted");
    }
    let granules = (shared.len() + THREADS * (1 << 20)) / granule;
    assert_eq!(
        shared.committed() + privates.iter().map(Region::committed).sum::<usize>(),
        granules * granule,
        "every granule touched must be committed exactly once"
    );
    assert!(after.faults as usize >= granules, "{after}");
    spf::check_invariants().unwrap();
    after
}

#[test]
fn speculative_mode_serves_most_faults_without_the_lock() {
    let _s = serial();
    spf::set_mode(Mode::Speculative);
    for granule in [4 << 10, 64 << 10] {
        let st = fault_storm(granule);
        eprintln!("granule {granule}:\n{st}");
        assert_eq!(st.faults, st.spf + st.classic + st.fatal, "{st}");
        assert_eq!(st.fatal, 0);
        assert!(st.spf * 10 >= st.faults * 9, "granule {granule}: {st}");
    }
}

#[test]
fn classic_mode_takes_the_lock_for_every_fault() {
    let _s = serial();
    spf::set_mode(Mode::Classic);
    let st = fault_storm(16 << 10);
    spf::set_mode(Mode::Speculative);
    assert_eq!(st.spf, 0, "{st}");
    assert_eq!(st.classic, st.faults, "{st}");
}

#[test]
fn contended_granules_are_counted_as_pte_lock() {
    // Many threads touch the same few huge granules at once: some must find
    // the granule being committed by another.
    let _s = serial();
    spf::set_mode(Mode::Speculative);
    let before = spf::stats();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while spf::stats().since(&before).spf_pte_lock == 0 {
        assert!(std::time::Instant::now() < deadline, "no spf_pte_lock seen");
        let r = Region::reserve(
            32 << 20,
            RegionOptions::default().granule(2 << 20).populate(true),
        )
        .unwrap();
        let base = SendPtr(r.as_ptr());
        let barrier = std::sync::Barrier::new(THREADS);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    for g in 0..16 {
                        // SAFETY: each thread writes its own byte of each granule.
                        unsafe { base.get().add(g * (2 << 20) + t * PAGE).write(t as u8) };
                    }
                });
            }
        });
        for g in 0..16 {
            for t in 0..THREADS {
                // SAFETY: writers joined.
                assert_eq!(
                    unsafe { r.as_ptr().add(g * (2 << 20) + t * PAGE).read() },
                    t as u8
                );
            }
        }
    }
    spf::check_invariants().unwrap();
}
