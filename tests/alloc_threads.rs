//! Thread churn: thousands of short-lived threads that allocate, free some
//! blocks themselves and hand the rest to the main thread, which frees them
//! after the threads have exited (remote frees into abandoned pages). Heaps
//! are recycled, and nothing stays allocated.

mod common;

use common::alloc_suite::Rng;
use spf::SpfAlloc;

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

const THREADS: usize = if cfg!(debug_assertions) { 2_000 } else { 5_000 };
const AT_ONCE: usize = 16;

#[test]
fn thousands_of_short_lived_threads() {
    let before = spf::alloc_stats();
    let mut kept: Vec<Vec<u8>> = Vec::new();
    for batch in 0..THREADS / AT_ONCE {
        let handles: Vec<_> = (0..AT_ONCE)
            .map(|t| {
                std::thread::spawn(move || {
                    let seed = (batch * AT_ONCE + t) as u64;
                    let mut rng = Rng(seed + 1);
                    let mut out = Vec::new();
                    for i in 0..64 {
                        let len = 1 + rng.below(if i % 16 == 0 { 300_000 } else { 3_000 }) as usize;
                        let v = vec![(seed as u8) ^ (i as u8); len];
                        if i % 2 == 0 {
                            out.push(v);
                        }
                    }
                    out
                })
            })
            .collect();
        for (t, h) in handles.into_iter().enumerate() {
            let seed = (batch * AT_ONCE + t) as u64;
            for (k, v) in h.join().unwrap().into_iter().enumerate() {
                let want = (seed as u8) ^ (2 * k as u8);
                assert!(v.iter().all(|&x| x == want), "thread {seed} block {k}");
                kept.push(v);
            }
        }
        if kept.len() > 4_000 {
            kept.clear();
        }
    }
    kept.clear();
    kept.shrink_to_fit();
    let after = spf::alloc_stats();
    eprintln!("before:\n{before}\nafter:\n{after}");
    spf::purge();
    eprintln!("after purge:\n{}", spf::alloc_stats());
    assert!(
        after.heaps <= before.heaps + 2 * AT_ONCE as u64 + 4,
        "{} heaps for at most {AT_ONCE} threads at once: heaps are not recycled",
        after.heaps
    );
    let leaked = after.allocated.saturating_sub(before.allocated);
    assert!(leaked < 1 << 20, "{leaked} bytes still allocated");
}
