//! A page taken dirty from the page pool to start a thread's queue of a
//! class keeps only its first 16 blocks' worth of memory resident: the
//! rest goes back to the kernel before any block is carved, as a thread's
//! first page of a class often serves a few blocks for its whole life.
//! And threads made and ended while others free their blocks keep every
//! byte.

mod common;

use common::churn::{fill_tagged, is_tagged, owners_and_remote_freers, Churn};
use spf::SpfAlloc;
use std::sync::Mutex;

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

/// The counter and the pool are process-wide: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// spf-alloc's small page, and the 4 KiB runs of one.
const PAGE: usize = 64 << 10;
const RUN: usize = 4096;

/// Which 4 KiB runs of the small page at `page` are resident.
fn resident_runs(page: usize) -> Vec<bool> {
    let mut v = vec![0u8; PAGE / RUN];
    // SAFETY: a page of a live segment of ours; mincore only reads the
    // kernel's page tables.
    let rc = unsafe { libc::mincore(page as *mut libc::c_void, PAGE, v.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    v.iter().map(|b| b & 1 != 0).collect()
}

/// One thread fills two small pages with 2 KiB blocks (exactly: the second
/// is still the first of its queue), frees them and exits: both go to the
/// pool, dirty, the second (every byte written) last, at the front. A new thread's first block of another
/// class (1,792-byte blocks) starts its queue with one of them: past the
/// first 16 blocks (28 KiB), none of the page is resident.
#[test]
fn a_dirty_page_starting_a_class_queue_keeps_only_its_head_resident() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    spf::set_decay_ms(600_000);
    let before = spf::alloc_stats().dirty_tails_purged;
    std::thread::spawn(|| {
        let blocks: Vec<Box<[u8]>> = (0..2 * PAGE as u64 / 2048)
            .map(|i| {
                let mut b = vec![0u8; 2048].into_boxed_slice();
                fill_tagged(&mut b, i);
                b
            })
            .collect();
        drop(blocks);
    })
    .join()
    .unwrap();
    let (page, resident, ok) = std::thread::spawn(|| {
        let mut b = vec![0u8; 1700].into_boxed_slice();
        fill_tagged(&mut b, 7);
        let page = b.as_ptr() as usize & !(PAGE - 1);
        let resident = resident_runs(page);
        (page, resident, is_tagged(&b, 7))
    })
    .join()
    .unwrap();
    spf::set_decay_ms(1000);
    let purged = spf::alloc_stats().dirty_tails_purged - before;
    eprintln!("page {page:#x}: resident runs {resident:?}; dirty_tails_purged +{purged}");
    assert!(ok, "the block lost its bytes");
    // 16 blocks of 1,792 bytes: 28 KiB, 7 runs kept.
    let tail: Vec<usize> = (7..PAGE / RUN).filter(|&r| resident[r]).collect();
    assert!(
        tail.is_empty(),
        "runs {tail:?} of the new queue's first page are resident: its dirty tail was kept"
    );
    assert!(purged > 0, "no dirty tail was purged");
}

/// Owners and remote freers made afresh in each of several churns (so
/// each churn's threads start their class queues with pages the last one
/// left dirty): every block keeps its bytes, and dirty tails were purged.
#[test]
fn dirty_tails_purged_under_thread_churn_and_remote_frees() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = spf::alloc_stats().dirty_tails_purged;
    for churn in 0..4 {
        let bad = owners_and_remote_freers(&Churn {
            seed: 3 + 16 * churn,
            rounds: if cfg!(debug_assertions) { 20 } else { 60 },
            blocks_per_round: 200,
            len: |rng| 16 + rng.below(3_000) as usize,
            remote_eighths: 5,
            keep: 100,
            nap_every: 0,
        });
        assert_eq!(bad, 0, "blocks lost their bytes (churn {churn})");
    }
    let purged = spf::alloc_stats().dirty_tails_purged - before;
    eprintln!("dirty_tails_purged +{purged}");
    assert!(purged > 0, "no dirty tail was purged in four churns");
}
