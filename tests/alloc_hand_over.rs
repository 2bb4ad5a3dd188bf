//! Pages of a thread heap whose blocks were all freed by other threads go
//! to the thread that needs a page next, before it touches fresh memory,
//! even while their owner lives (it may be descheduled, or busy with other
//! classes). And the hand-over never races the owner: owners allocating
//! and freeing while other threads free their blocks and take their pages
//! keep every byte.

mod common;

use common::churn::{fill_tagged, is_tagged, owners_and_remote_freers, Churn};
use spf::SpfAlloc;
use std::sync::mpsc::channel;
use std::sync::{Barrier, Mutex};

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

/// The tests change the process-wide decay time: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Blocks the producer allocates (1 KiB: 16 MiB of small pages) and the
/// consumer allocates next (2 KiB, another class of the same page kind).
const PRODUCED: usize = 16 << 10;
const CONSUMED: usize = 8 << 10;

/// A producer allocates 16 MiB of small blocks and hands them to this
/// thread, which frees them all (remote frees), while the producer stays
/// alive and takes no slow path. A third thread then allocates 16 MiB of
/// another small class: it reuses the producer's pages instead of
/// touching new memory. Decay is off, so nothing else gives them back.
#[test]
fn remotely_freed_pages_go_to_the_next_thread_that_needs_a_page() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    spf::set_decay_ms(600_000);
    static PARKED: Barrier = Barrier::new(2);
    let handed_before = spf::alloc_stats().pages_handed_over;
    let (tx, rx) = channel::<Vec<(u64, Box<[u8]>)>>();
    let (grown, handed, bad) = std::thread::scope(|s| {
        s.spawn(move || {
            let blocks = (0..PRODUCED as u64)
                .map(|tag| {
                    let mut b = vec![0u8; 1024].into_boxed_slice();
                    fill_tagged(&mut b, tag);
                    (tag, b)
                })
                .collect();
            tx.send(blocks).unwrap();
            // Alive and idle until the consumer is done.
            PARKED.wait();
        });
        let mut bad = 0;
        for (tag, b) in rx.recv().unwrap() {
            bad += usize::from(!is_tagged(&b, tag));
            drop(b); // a remote free into the producer's page
        }
        let before = spf::alloc_stats().resident;
        let consumer = s.spawn(|| {
            let blocks: Vec<(u64, Box<[u8]>)> = (0..CONSUMED as u64)
                .map(|tag| {
                    let mut b = vec![0u8; 2048].into_boxed_slice();
                    fill_tagged(&mut b, tag);
                    (tag, b)
                })
                .collect();
            let after = spf::alloc_stats().resident;
            let bad = blocks.iter().filter(|(t, b)| !is_tagged(b, *t)).count();
            (after, bad)
        });
        let (after, bad_consumed) = consumer.join().unwrap();
        PARKED.wait();
        let handed = spf::alloc_stats().pages_handed_over - handed_before;
        (after.saturating_sub(before), handed, bad + bad_consumed)
    });
    spf::set_decay_ms(1000);
    eprintln!(
        "resident grew {} KiB while 16 MiB were allocated; {handed} pages handed over",
        grown >> 10
    );
    assert_eq!(bad, 0, "blocks lost their bytes");
    // Without the hand-over the consumer touches 16 MiB of new pages; with
    // it, all but the producer's first and last page are reused.
    assert!(
        grown < 6 << 20,
        "resident memory grew by {} KiB: the producer's free pages were not reused",
        grown >> 10
    );
    assert!(handed >= 200, "only {handed} pages handed over");
}

/// Owners allocate and free (locally and through other threads) blocks of
/// small and medium classes, with decay 0 so that every pooled page is
/// purged at once and every new page they need runs a hand-over pass over
/// the others' heaps: every block keeps its bytes, and pages were handed
/// over while the owners ran. Whether a pass finds a page depends on the
/// remote freers keeping up, which a loaded machine may not allow in one
/// churn: up to five churns run, each checked, until pages were handed
/// over.
#[test]
fn hand_over_races_owners_and_remote_freers() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    spf::set_decay_ms(0);
    let handed_before = spf::alloc_stats().pages_handed_over;
    let mut handed = 0;
    for attempt in 0..5 {
        let bad = owners_and_remote_freers(&Churn {
            seed: 1 + 16 * attempt,
            rounds: if cfg!(debug_assertions) { 40 } else { 200 },
            blocks_per_round: 300,
            len: |rng| match rng.below(8) {
                0 => 40 << 10,
                1 => 4096,
                _ => 16 + rng.below(1_500) as usize,
            },
            remote_eighths: 6,
            keep: 50,
            nap_every: 0,
        });
        assert_eq!(bad, 0, "blocks lost their bytes (churn {attempt})");
        handed = spf::alloc_stats().pages_handed_over - handed_before;
        eprintln!("churn {attempt}: {handed} pages handed over so far");
        if handed > 0 {
            break;
        }
    }
    spf::set_decay_ms(1000);
    assert!(handed > 0, "the hand-over path never ran in five churns");
}
