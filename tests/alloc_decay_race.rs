//! Decay and `spf::purge()` purge pooled pages with the pool unlocked: the
//! pages being purged are off the pool meanwhile, so no thread can be
//! handed one and see its blocks zeroed under it. Threads take pages from
//! the pool and give them back as fast as they can, with a decay time of
//! 1 ms and another thread purging all the while; every byte is checked.

mod common;

use common::alloc_suite::{check, fill, Rng};
use spf::SpfAlloc;
use std::sync::atomic::{AtomicBool, Ordering};

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

const THREADS: usize = 4;
const ROUNDS: usize = if cfg!(debug_assertions) { 60 } else { 300 };

#[test]
fn pages_purged_unlocked_are_never_handed_out_meanwhile() {
    spf::set_decay_ms(1);
    let before = spf::alloc_stats();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                spf::purge();
                std::thread::yield_now();
            }
        });
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn(move || {
                    let mut rng = Rng(t as u64 + 1);
                    for round in 0..ROUNDS {
                        // Enough blocks to fill several small and medium
                        // pages, all freed at the end of the round: the
                        // pages go back to the pool and come out again.
                        let blocks: Vec<(Vec<u8>, u64)> = (0..200)
                            .map(|i| {
                                let len = if i % 10 == 0 {
                                    20_000 + rng.below(100_000) as usize
                                } else {
                                    1 + rng.below(4_000) as usize
                                };
                                let seed = (t * ROUNDS + round) as u64 * 1000 + i;
                                let mut v = Vec::with_capacity(len);
                                // SAFETY: `len` bytes of capacity, written
                                // before `set_len`.
                                unsafe {
                                    fill(v.as_mut_ptr(), len, seed);
                                    v.set_len(len);
                                }
                                (v, seed)
                            })
                            .collect();
                        std::thread::yield_now();
                        for (v, seed) in &blocks {
                            // SAFETY: the Vec's initialised bytes.
                            unsafe { check(v.as_ptr(), v.len(), *seed, "block") };
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    spf::set_decay_ms(1000);
    let after = spf::alloc_stats();
    let leaked = after.allocated.saturating_sub(before.allocated);
    assert!(leaked < 1 << 20, "{leaked} bytes still allocated");
}
