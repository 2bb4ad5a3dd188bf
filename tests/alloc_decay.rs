//! Freed memory goes back to the kernel: pages freed into the pool and
//! freed large blocks are purged by `spf::purge()` (and by decay), also
//! pages that were used and freed before — while the segments around them
//! stay alive because of a few live blocks.

mod common;

use spf::SpfAlloc;

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

fn resident() -> u64 {
    spf::alloc_stats().resident
}

#[test]
fn purge_returns_freed_pages_and_large_blocks() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Twice round, so the second round frees pages that were pooled and
    // purged once already.
    for round in 0..2 {
        // 48 MiB of 1 KiB blocks: about 12 small segments.
        let mut v: Vec<Box<[u8; 1024]>> = (0..48 * 1024).map(|_| Box::new([7u8; 1024])).collect();
        // Keep one block per segment, so no segment can go back whole.
        let keep: Vec<_> = v.drain(..).step_by(4096).collect();
        // A large block, freed into the cache (black_box: the optimiser
        // may not elide it).
        let big = std::hint::black_box(vec![1u8; 64 << 20]);
        drop(big);
        let before = resident();
        spf::purge();
        let after = resident();
        eprintln!(
            "round {round}: resident {} MiB before purge, {} MiB after",
            before >> 20,
            after >> 20
        );
        assert!(
            before.saturating_sub(after) > 80 << 20,
            "round {round}: purge gave back only {} KiB",
            before.saturating_sub(after) >> 10
        );
        assert!(keep.iter().all(|b| b.iter().all(|&x| x == 7)));
    }
}

#[test]
fn decay_gives_memory_back_after_the_decay_time() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // No decay while the freed memory is measured (a loaded machine would
    // otherwise let some of it decay before `before` is read)...
    spf::set_decay_ms(60_000);
    let mut v: Vec<Box<[u8; 1024]>> = (0..48 * 1024).map(|_| Box::new([7u8; 1024])).collect();
    let keep: Vec<_> = v.drain(..).step_by(4096).collect();
    drop(std::hint::black_box(vec![1u8; 64 << 20]));
    let before = resident();
    // ...then a short decay time, which applies to what is already free.
    spf::set_decay_ms(20);
    std::thread::sleep(std::time::Duration::from_millis(100));
    // Decay runs on allocator activity: allocate and free small blocks.
    for _ in 0..4 {
        let churn: Vec<Box<[u8; 48]>> = (0..20_000).map(|_| Box::new([0u8; 48])).collect();
        drop(std::hint::black_box(churn));
    }
    let after = resident();
    spf::set_decay_ms(1000);
    eprintln!(
        "resident {} MiB after freeing, {} MiB after the decay time",
        before >> 20,
        after >> 20
    );
    assert!(
        before.saturating_sub(after) > 80 << 20,
        "decay gave back only {} KiB",
        before.saturating_sub(after) >> 10
    );
    assert!(keep.iter().all(|b| b.iter().all(|&x| x == 7)));
}

/// Blocks of every medium class, written whole and freed: each class's
/// page ends empty, and is the one page its class keeps for reuse.
fn empty_kept_pages() {
    let mut blocks = Vec::new();
    for kib in [
        10usize, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192,
    ] {
        for _ in 0..4 {
            blocks.push(std::hint::black_box(vec![3u8; kib << 10]));
        }
    }
    drop(blocks);
}

#[test]
fn purge_gives_back_this_threads_empty_pages() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    empty_kept_pages();
    let before = resident();
    spf::purge();
    let after = resident();
    eprintln!(
        "resident {} KiB before purge, {} KiB after",
        before >> 10,
        after >> 10
    );
    // 4 × (10 + … + 192 KiB) = 4.7 MiB written, in pages the heap kept.
    assert!(
        before.saturating_sub(after) > 4 << 20,
        "purge gave back only {} KiB of the thread's empty pages",
        before.saturating_sub(after) >> 10
    );
}

#[test]
fn decay_gives_back_a_live_threads_empty_pages() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    spf::set_decay_ms(60_000);
    empty_kept_pages();
    let before = resident();
    spf::set_decay_ms(20);
    // Two decay times: one for the heap to give its empty pages to the
    // pool, one for the pool to purge them; decay runs on this thread's
    // allocation slow paths.
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(60));
        let churn: Vec<Box<[u8; 48]>> = (0..20_000).map(|_| Box::new([0u8; 48])).collect();
        drop(std::hint::black_box(churn));
    }
    let after = resident();
    spf::set_decay_ms(1000);
    eprintln!(
        "resident {} KiB before decay, {} KiB after",
        before >> 10,
        after >> 10
    );
    // (3 MiB: the churn's own blocks stay resident meanwhile.)
    assert!(
        before.saturating_sub(after) > 3 << 20,
        "decay gave back only {} KiB of the thread's empty pages",
        before.saturating_sub(after) >> 10
    );
}

#[test]
fn purge_gives_back_free_blocks_inside_partly_used_medium_pages() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // 30 KiB blocks (the 32 KiB class: 8 to a 256 KiB page), written
    // whole; one in 8 kept, so every page stays partly used.
    let mut v: Vec<Vec<u8>> = (0..256).map(|i| vec![i as u8; 30 << 10]).collect();
    let keep: Vec<(usize, Vec<u8>)> = v.drain(..).enumerate().step_by(8).collect();
    let before = resident();
    spf::purge();
    let after = resident();
    eprintln!(
        "resident {} KiB before purge, {} KiB after",
        before >> 10,
        after >> 10
    );
    // 224 free blocks of 32 KiB (4 KiB-aligned, 30 KiB of each written):
    // about 7 MiB.
    assert!(
        before.saturating_sub(after) > 5 << 20,
        "purge gave back only {} KiB of free medium blocks",
        before.saturating_sub(after) >> 10
    );
    for (i, b) in &keep {
        assert!(b.iter().all(|&x| x == *i as u8), "kept block {i}");
    }
}

/// A thread fills four small pages with 2,000-byte blocks (the 2 KiB
/// class, 32 to a page) and exits, each page holding one block still in
/// use (here), so the pages are abandoned. No owner's decay reaches them;
/// decay ticks purge their free 4 KiB runs. Without that, all 64 KiB of
/// each page stayed resident (64 of 64 4 KiB pages, the test's first run).
#[test]
fn decay_gives_back_free_runs_of_abandoned_pages() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    spf::set_decay_ms(60_000);
    let kept: Vec<Vec<u8>> = std::thread::spawn(|| {
        let mut v: Vec<Vec<u8>> = (0..4 * 32).map(|i| vec![i as u8; 2000]).collect();
        // One block of each page stays in use (each is a page's first).
        v.drain(..).step_by(32).collect()
    })
    .join()
    .unwrap();
    let pages: Vec<usize> = kept.iter().map(|b| b.as_ptr() as usize & !0xffff).collect();
    let resident = |pages: &[usize]| -> usize {
        pages
            .iter()
            .map(|&p| common::large::resident_pages(p as *mut u8, 64 << 10))
            .sum()
    };
    let before = resident(&pages);
    // A short decay time, then slow paths on another thread: its reclaim
    // ticks purge the abandoned pages.
    spf::set_decay_ms(20);
    std::thread::spawn(|| {
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(500) {
            let churn: Vec<Vec<u8>> = (0..64).map(|_| vec![1u8; 8 << 10]).collect();
            drop(std::hint::black_box(churn));
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    })
    .join()
    .unwrap();
    spf::set_decay_ms(1000);
    let after = resident(&pages);
    eprintln!("abandoned pages: {before} resident 4 KiB pages, {after} after decay");
    assert!(before >= 4 * 15, "the pages were not written: {before}");
    // One run each: the block in use.
    assert!(
        after <= 2 * pages.len(),
        "decay left {after} 4 KiB pages of {} abandoned pages resident",
        pages.len()
    );
    for (i, b) in kept.iter().enumerate() {
        assert!(b.iter().all(|&x| x == (i * 32) as u8), "kept block {i}");
    }
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
