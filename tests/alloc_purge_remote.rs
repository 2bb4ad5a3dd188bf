//! `spf::purge()` gives back free blocks inside partly used medium pages
//! when other threads freed them, too: blocks waiting on a page's
//! remote-free list are free memory like those on its own list, even when
//! the page also holds blocks its owner freed (a page with both lists
//! keeps its remote chain uncollected on the allocation path's sweeps).

use spf::SpfAlloc;

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

#[test]
fn purge_gives_back_medium_blocks_other_threads_freed() {
    // 30 KiB blocks (the 32 KiB class: 8 to a 256 KiB page), written whole.
    let mut v: Vec<Option<Vec<u8>>> = (0..256).map(|i| Some(vec![i as u8; 30 << 10])).collect();
    // Per page of 8: one freed here (the page's own list is not empty),
    // one kept (the page stays partly used), six handed to another thread.
    let mut remote = Vec::new();
    for (i, b) in v.iter_mut().enumerate() {
        match i % 8 {
            0 => drop(b.take()),
            1 => {}
            _ => remote.push(b.take().unwrap()),
        }
    }
    std::thread::spawn(move || drop(remote)).join().unwrap();
    let before = spf::alloc_stats().resident;
    spf::purge();
    let after = spf::alloc_stats().resident;
    eprintln!(
        "resident {} KiB before purge, {} KiB after",
        before >> 10,
        after >> 10
    );
    // 192 remotely freed blocks of 32 KiB and 32 local ones (4 KiB-aligned,
    // 30 KiB of each written): about 7 MiB.
    assert!(
        before.saturating_sub(after) > 5 << 20,
        "purge gave back only {} KiB of free medium blocks",
        before.saturating_sub(after) >> 10
    );
    for (i, b) in v.iter().enumerate() {
        if let Some(b) = b {
            assert!(b.iter().all(|&x| x == i as u8), "kept block {i}");
        }
    }
}
