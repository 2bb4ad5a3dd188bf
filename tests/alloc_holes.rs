//! Free memory inside pages that still hold live blocks goes back to the
//! kernel at 4 KiB granularity: every 4 KiB run of a page covered only by
//! free blocks becomes a hole on `spf::purge()` or the owner's decay, the
//! live blocks keep their bytes, and the holes' blocks are handed out
//! again (once each) before new memory is carved.

mod common;

use common::churn::{fill_tagged, is_tagged, owners_and_remote_freers, Churn};
use spf::SpfAlloc;
use std::collections::HashSet;
use std::sync::Mutex;

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

/// The tests change the process-wide decay time: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const RUN: usize = 4096;

/// Whether the 4 KiB page at `run` (aligned) is resident.
fn resident(run: usize) -> bool {
    let mut v = [0u8; 1];
    // SAFETY: a page of a live segment of ours; mincore only reads the
    // page tables.
    let rc = unsafe { libc::mincore(run as *mut libc::c_void, RUN, v.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    v[0] & 1 != 0
}

/// 64-byte blocks filling 16 small pages; the blocks in every other 4 KiB
/// run are freed (by their owner), the rest kept. `spf::purge()` gives the
/// free runs back; the kept blocks keep their bytes; allocating as many
/// blocks again reuses the holes, each block once.
#[test]
fn purge_gives_back_free_runs_inside_partly_used_small_pages() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    spf::set_decay_ms(600_000);
    let purged_before = spf::alloc_stats().page_runs_purged;
    // On a thread of its own: a fresh heap, its pages holding only these.
    std::thread::spawn(|| {
        let n = 16 * 1024;
        let mut blocks: Vec<(u64, Box<[u8; 64]>)> = Vec::with_capacity(n);
        for tag in 0..n as u64 {
            let mut b = Box::new([0u8; 64]);
            fill_tagged(&mut b[..], tag);
            blocks.push((tag, b));
        }
        let run_of = |b: &[u8; 64]| b.as_ptr() as usize & !(RUN - 1);
        let (keep, free): (Vec<_>, Vec<_>) = blocks
            .into_iter()
            .partition(|(_, b)| run_of(b) / RUN % 2 == 1);
        let freed_runs: HashSet<usize> = free.iter().map(|(_, b)| run_of(b)).collect();
        let kept_runs: HashSet<usize> = keep.iter().map(|(_, b)| run_of(b)).collect();
        let freed_runs: Vec<usize> = freed_runs.difference(&kept_runs).copied().collect();
        let count = free.len();
        drop(free);
        let before = freed_runs.iter().filter(|&&r| resident(r)).count();
        spf::purge();
        let after = freed_runs.iter().filter(|&&r| resident(r)).count();
        eprintln!(
            "{} free 4 KiB runs: {before} resident before purge, {after} after",
            freed_runs.len()
        );
        assert!(
            freed_runs.len() >= 100,
            "the layout is not what the test expects"
        );
        assert!(
            after * 10 < freed_runs.len(),
            "{after} of {} free runs still resident after purge",
            freed_runs.len()
        );
        for (tag, b) in &keep {
            assert!(is_tagged(&b[..], *tag), "kept block {tag} changed");
        }
        // The holes are handed out again, each block once, and hold bytes.
        let live: HashSet<usize> = keep.iter().map(|(_, b)| b.as_ptr() as usize).collect();
        let mut again = Vec::with_capacity(count);
        for tag in 0..count as u64 {
            let mut b = Box::new([0u8; 64]);
            fill_tagged(&mut b[..], tag);
            again.push((tag, b));
        }
        let mut seen = HashSet::new();
        let mut reused = 0;
        for (tag, b) in &again {
            let p = b.as_ptr() as usize;
            assert!(!live.contains(&p), "a live block handed out again");
            assert!(seen.insert(p), "a block handed out twice");
            assert!(is_tagged(&b[..], *tag), "new block {tag} changed");
            reused += usize::from(freed_runs.contains(&(p & !(RUN - 1))));
        }
        for (tag, b) in &keep {
            assert!(is_tagged(&b[..], *tag), "kept block {tag} changed");
        }
        eprintln!("{reused} of {count} new blocks in refilled holes");
        assert!(reused * 2 > count, "the holes were not reused");
    })
    .join()
    .unwrap();
    spf::set_decay_ms(1000);
    let purged = spf::alloc_stats().page_runs_purged - purged_before;
    assert!(purged >= 100, "only {purged} runs counted purged");
}

/// Owners allocate and free blocks of small and medium classes (most
/// freed by themselves in random order, some sent to other threads to
/// free) with a 1 ms decay, so their slow paths purge free runs into holes
/// and refill them all along: every block keeps its bytes, and runs were
/// purged.
#[test]
fn holes_race_owners_and_remote_freers() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    spf::set_decay_ms(1);
    let purged_before = spf::alloc_stats().page_runs_purged;
    let bad = owners_and_remote_freers(&Churn {
        seed: 11,
        rounds: if cfg!(debug_assertions) { 60 } else { 300 },
        blocks_per_round: 400,
        len: |rng| match rng.below(16) {
            0 => 12 << 10,
            1 => 5000,
            _ => 16 + rng.below(700) as usize,
        },
        remote_eighths: 1,
        // A sparse live set: pages stay partly used.
        keep: 300,
        nap_every: 16,
    });
    spf::set_decay_ms(1000);
    let purged = spf::alloc_stats().page_runs_purged - purged_before;
    eprintln!("{purged} runs purged into holes while the owners ran");
    assert_eq!(bad, 0, "blocks lost their bytes");
    assert!(purged > 0, "the hole path never ran");
}
