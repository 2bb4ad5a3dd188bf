//! Memory allocated on one thread and freed on another, for millions of
//! blocks: the data arrives intact, and resident memory does not grow
//! beyond a fixed bound once the run is over (remote frees return to the
//! producer's pages instead of piling up).

mod common;

use common::alloc_suite::Rng;
use spf::SpfAlloc;
use std::sync::mpsc::sync_channel;

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

const BLOCKS: u64 = if cfg!(debug_assertions) {
    600_000
} else {
    3_000_000
};
/// Resident growth allowed over the whole run: the live set is at most
/// 4,096 blocks of ≤ 2 KiB in flight (8 MiB); the rest is slack for pages
/// that hold a few live blocks and for the channel's own buffers.
const RSS_BOUND: u64 = 48 << 20;

fn produce_and_consume(blocks: u64) {
    let (tx, rx) = sync_channel::<Box<[u8]>>(4096);
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut rng = Rng(99);
            for i in 0..blocks {
                let len = 16 + rng.below(2032) as usize;
                let b: Box<[u8]> = (0..len).map(|j| (i as usize ^ j) as u8).collect();
                tx.send(b).unwrap();
            }
        });
        s.spawn(move || {
            let mut i = 0u64;
            while let Ok(b) = rx.recv() {
                assert!(
                    b.iter()
                        .enumerate()
                        .all(|(j, &x)| x == (i as usize ^ j) as u8),
                    "block {i}"
                );
                i += 1;
            }
            assert_eq!(i, blocks);
        });
    });
}

#[test]
fn producer_consumer_keeps_resident_memory_bounded() {
    // Warm up so that the channel, thread stacks and first pages exist.
    produce_and_consume(50_000);
    let before = spf::alloc_stats();
    produce_and_consume(BLOCKS);
    let after = spf::alloc_stats();
    eprintln!("before:\n{before}\nafter:\n{after}");
    let growth = after.resident.saturating_sub(before.resident);
    assert!(
        growth <= RSS_BOUND,
        "resident memory grew by {growth} bytes over {BLOCKS} cross-thread blocks"
    );
    let leaked = after.allocated.saturating_sub(before.allocated);
    assert!(
        leaked < 1 << 20,
        "{leaked} bytes still allocated after every block was freed"
    );
}
