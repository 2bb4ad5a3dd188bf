//! A thread that frees other threads' blocks before it ever allocates (a
//! consumer) gets a heap of its own, as its first allocation would give
//! it: its frees are then counted in that heap, not in a global counter
//! every such free would update with a locked instruction. The bytes come
//! back all the same.

use spf::SpfAlloc;
use std::sync::mpsc::sync_channel;

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

#[test]
fn a_thread_that_only_frees_gets_a_heap() {
    // Warm up this thread's heap and the channel's.
    drop((0..100).map(|i| vec![i as u8; 100]).collect::<Vec<_>>());
    let (tx, rx) = sync_channel::<usize>(1);
    let blocks: Vec<Box<[u8; 48]>> = (0..10_000).map(|i| Box::new([i as u8; 48])).collect();
    let before = spf::alloc_stats();
    std::thread::spawn(move || {
        // Frees only: the vector and its blocks were allocated by the
        // main thread.
        let mut sum = 0usize;
        for b in blocks {
            sum += b.iter().map(|&x| x as usize).sum::<usize>();
        }
        let during = spf::alloc_stats();
        tx.send(sum).unwrap();
        assert_eq!(
            during.heaps,
            before.heaps + 1,
            "the freeing thread made no heap of its own"
        );
    })
    .join()
    .unwrap();
    let sum = rx.recv().unwrap();
    assert_eq!(sum, (0..10_000usize).map(|i| (i % 256) * 48).sum::<usize>());
    let after = spf::alloc_stats();
    assert!(
        after.allocated + 10_000 * 48 <= before.allocated + 4096,
        "the freed blocks are still counted: {} before, {} after",
        before.allocated,
        after.allocated
    );
}
