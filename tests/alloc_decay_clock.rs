//! Decay counts allocator activity, not idle stretches: large blocks freed
//! before the program pauses are not purged by the first free after the
//! pause (just as the program comes back to reuse them), but they are
//! purged once the decay time has passed with the allocator in use.
//!
//! Tests of this file run one at a time (`SERIAL`): they set the decay
//! time and expect their own frees to be what is cached.

mod common;

use common::large::{layout, resident_pages};
use spf::SpfAlloc;
use std::alloc::{alloc, dealloc};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

static SERIAL: Mutex<()> = Mutex::new(());

const MIB: usize = 1 << 20;
const THREADS: usize = 4;
/// The decay time of these tests: well above a scheduling hiccup, well
/// below the idle stretch.
const DECAY_MS: u64 = 500;
/// The pause: twice the decay time, so that a wall-clock decay purges
/// everything freed before it.
const IDLE: Duration = Duration::from_millis(2 * DECAY_MS);

/// Thread `t`'s block size: distinct sizes, so each thread's request is
/// served by the block it freed (the smallest that fits), 4 MiB and up
/// (huge pages where the kernel allows).
fn size_of(t: usize) -> usize {
    4 * MIB + t * (256 << 10)
}

/// Writes `tag ^ page` at every 4 KiB page of `[0, len)`.
///
/// # Safety
/// `p` is a live block of at least `len` bytes.
unsafe fn fill(p: *mut u8, len: usize, tag: u8) {
    for off in (0..len).step_by(4096) {
        // SAFETY: inside the block (the caller's contract).
        unsafe { p.add(off).write(tag ^ (off >> 12) as u8) };
    }
}

/// Checks what `fill` wrote.
///
/// # Safety
/// As `fill`.
unsafe fn check(p: *mut u8, len: usize, tag: u8) {
    for off in (0..len).step_by(4096) {
        // SAFETY: inside the block.
        let got = unsafe { p.add(off).read() };
        assert_eq!(got, tag ^ (off >> 12) as u8, "byte {off} of {p:p}");
    }
}

/// Each of `THREADS` threads allocates and fills its block, all at once,
/// and frees it once all are filled (so no thread reuses another's block);
/// returns the blocks' addresses (freed: cached).
fn free_blocks_on_threads(tag: u8) -> Vec<usize> {
    let start = Barrier::new(THREADS);
    let filled = Barrier::new(THREADS);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let (start, filled) = (&start, &filled);
                s.spawn(move || {
                    let l = layout(size_of(t));
                    start.wait();
                    // SAFETY: a valid layout; every access inside the block.
                    unsafe {
                        let p = std::hint::black_box(alloc(l));
                        assert!(!p.is_null());
                        fill(p, l.size(), tag ^ t as u8);
                        filled.wait();
                        check(p, l.size(), tag ^ t as u8);
                        dealloc(p, l);
                        p as usize
                    }
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Allocator activity that leaves the large-block cache alone: small
/// blocks allocated and freed, whose allocation slow paths run the cache's
/// decay (which purges blocks past their decay time) on the clock they
/// read now.
fn churn_small_blocks() {
    for _ in 0..8 {
        let churn: Vec<Box<[u8; 48]>> = (0..20_000).map(|_| Box::new([0u8; 48])).collect();
        drop(std::hint::black_box(churn));
    }
}

/// One test, in this order: the second phase leaves purged blocks in the
/// cache, which blocks freed next to them would merge with (a merged block
/// is only partly resident).
#[test]
fn decay_skips_a_pause_and_resumes_with_activity() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    spf::set_decay_ms(DECAY_MS);
    blocks_freed_before_a_pause_are_reused_resident_after_it();
    blocks_freed_before_a_pause_decay_once_the_allocator_is_used_again();
    spf::set_decay_ms(1000);
}

fn blocks_freed_before_a_pause_are_reused_resident_after_it() {
    let blocks = free_blocks_on_threads(0x5a);
    let before = spf::alloc_stats();
    std::thread::sleep(IDLE);
    // The first allocator activity after the pause: with decay on the
    // wall clock it purged every block above (freed more than a decay
    // time ago).
    churn_small_blocks();
    let after_pause = spf::alloc_stats();
    for (t, &p) in blocks.iter().enumerate() {
        let len = size_of(t);
        let resident = resident_pages(p as *mut u8, len);
        assert_eq!(
            resident,
            len / 4096,
            "thread {t}'s cached block was purged after the pause ({resident} of {} pages resident)",
            len / 4096
        );
    }
    assert!(
        after_pause.decay_idle_stretches > before.decay_idle_stretches,
        "the decay clock skipped no idle stretch"
    );
    // The threads take blocks of their sizes back at once, from the cache
    // (the blocks above, or their merges and splits), and use them.
    free_blocks_on_threads(0xa5);
    let after = spf::alloc_stats();
    // Not necessarily one each: blocks freed side by side merge, and a
    // thread may find the merged block shrunk for another.
    assert!(
        after.large_reused > before.large_reused,
        "no thread's block came from the cache"
    );
}

fn blocks_freed_before_a_pause_decay_once_the_allocator_is_used_again() {
    let blocks = free_blocks_on_threads(0x3c);
    std::thread::sleep(IDLE);
    // Activity every 10 ms or so: the decay clock counts it in full, and
    // the churn runs the cache's decay. On a loaded machine a gap may count
    // for less, so the test waits for the purge, up to a bound far past
    // the decay time.
    let deadline = Instant::now() + Duration::from_secs(30);
    let resident = |blocks: &[usize]| -> usize {
        blocks
            .iter()
            .enumerate()
            .map(|(t, &p)| resident_pages(p as *mut u8, size_of(t)))
            .sum()
    };
    while resident(&blocks) > 0 {
        assert!(
            Instant::now() < deadline,
            "blocks freed before the pause were never purged ({} pages resident)",
            resident(&blocks)
        );
        churn_small_blocks();
        std::thread::sleep(Duration::from_millis(10));
    }
}
