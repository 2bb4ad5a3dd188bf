//! The large-block cache keeps what it splits and merges what is freed
//! side by side: the tail of a cached block shrunk for a smaller request is
//! cached as a block of its own (its pages kept), and blocks freed next to
//! each other merge back into one. Each test runs in a process of its own
//! (`ran_alone`), so that the cache holds only that test's blocks: a block
//! another test left cached could be the better fit for a request, which
//! then would not split the block the test means.

mod common;

use common::large::{layout, region_len};
use common::ran_alone;

use spf::SpfAlloc;
use std::alloc::{alloc, dealloc, realloc, GlobalAlloc};
use std::io::Read;

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

const MIB: usize = 1 << 20;

/// Writes `tag` at every 4 KiB page of `[0, len)`.
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
/// As for `fill`.
unsafe fn check(p: *mut u8, len: usize, tag: u8) {
    for off in (0..len).step_by(4096) {
        // SAFETY: inside the block.
        assert_eq!(
            unsafe { p.add(off).read() },
            tag ^ (off >> 12) as u8,
            "byte {off} of {p:p}"
        );
    }
}

#[test]
fn the_tail_of_a_shrunk_cached_block_serves_a_later_request_and_merges_back() {
    if ran_alone("the_tail_of_a_shrunk_cached_block_serves_a_later_request_and_merges_back") {
        return;
    }
    spf::set_decay_ms(60_000);
    let before = spf::alloc_stats();
    // The only blocks in this process's cache are this test's.
    let (big, head, tail) = (layout(200 * MIB), layout(120 * MIB), layout(80 * MIB));
    // SAFETY: valid layouts; every access stays inside the blocks.
    unsafe {
        let p = alloc(big);
        assert!(!p.is_null());
        fill(p, big.size(), 0x71);
        dealloc(p, big);
        let q = alloc(head);
        assert_eq!(q, p, "the 120 MiB request did not reuse the 200 MiB block");
        assert_eq!(region_len(q), head.size(), "L1");
        // The tail was split off and cached as a block of its own, its
        // pages kept: it serves the next request in place.
        let r = alloc(tail);
        assert_eq!(
            r,
            p.add(head.size()),
            "the shrunk block's tail did not serve the 80 MiB request"
        );
        assert_eq!(region_len(r), tail.size(), "L1");
        fill(r, tail.size(), 0x17);
        fill(q, head.size(), 0x33);
        check(r, tail.size(), 0x17);
        check(q, head.size(), 0x33);
        // Memory from `SpfAlloc::new()` works with system calls.
        let buf = std::slice::from_raw_parts_mut(r, tail.size());
        std::fs::File::open("/dev/zero")
            .unwrap()
            .read_exact(buf)
            .expect("read() into a reused tail");
        dealloc(q, head);
        dealloc(r, tail);
        // Freed side by side, the two merge back into one cached block (one
        // region), which serves the whole size again in place.
        let info = spf::region_at(p).unwrap();
        assert!(
            info.start == p as usize && info.len == big.size(),
            "the freed head and tail did not merge: the region at {p:p} is {:#x}+{:#x}",
            info.start,
            info.len
        );
        let again = alloc(big);
        assert_eq!(again, p, "the merged block did not serve its whole size");
        dealloc(again, big);
    }
    let after = spf::alloc_stats();
    assert!(after.large_reused >= before.large_reused + 2);
}

/// Minor page faults this process has taken so far.
fn minor_faults() -> i64 {
    // SAFETY: getrusage writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) }, 0);
    ru.ru_minflt
}

#[test]
fn a_fork_leaves_cached_blocks_unshared() {
    if ran_alone("a_fork_leaves_cached_blocks_unshared") {
        return;
    }
    spf::set_decay_ms(60_000);
    let l = layout(64 * MIB);
    // SAFETY: valid layouts; every access stays inside the blocks; the
    // child only exits.
    unsafe {
        let p = alloc(l);
        assert!(!p.is_null());
        fill(p, l.size(), 0x5c);
        dealloc(p, l);
        let pid = libc::fork();
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            libc::_exit(0);
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        let q = alloc(l);
        assert_eq!(q, p, "the cached block was not reused");
        // The cached block's pages stayed resident and were never shared
        // with the child: writing them takes no copy-on-write (or
        // write-protect) fault, where it took one per page (16,384).
        let before = minor_faults();
        fill(q, l.size(), 0x3a);
        let faults = minor_faults() - before;
        assert!(
            faults < 1_000,
            "{faults} faults writing a reused cached block after a fork"
        );
        check(q, l.size(), 0x3a);
        dealloc(q, l);
    }
}

#[test]
fn realloc_grows_into_and_shrinks_into_cached_neighbours() {
    if ran_alone("realloc_grows_into_and_shrinks_into_cached_neighbours") {
        return;
    }
    spf::set_decay_ms(60_000);
    let (big, grown, shrunk) = (layout(72 * MIB), layout(45 * MIB), layout(9 * MIB));
    // SAFETY: valid layouts; every access stays inside the blocks.
    unsafe {
        let p = alloc(big);
        assert!(!p.is_null());
        fill(p, big.size(), 0x21);
        dealloc(p, big);
        // The cached block holding `p`.
        let cached = spf::region_at(p).unwrap();
        let p = cached.start as *mut u8;
        let small = layout(cached.len - 54 * MIB);
        let q = alloc(small);
        assert_eq!(q, p, "the request did not split the cached block");
        fill(q, small.size(), 0x42);
        // The 54 MiB tail is cached right after `q`: growing `q` takes it
        // in place (before: the range was not free, so the block moved).
        let grown = layout(small.size() + (grown.size() - 18 * MIB));
        let r = realloc(q, small, grown.size());
        assert_eq!(r, q, "realloc did not grow into the cached block after it");
        assert_eq!(region_len(r), grown.size(), "L1");
        check(r, small.size(), 0x42);
        fill(r, grown.size(), 0x43);
        // Shrinking keeps the tail as a cached block: it serves a request
        // of its size in place.
        let s = realloc(r, grown, shrunk.size());
        assert_eq!(s, r);
        assert_eq!(region_len(s), shrunk.size(), "L1");
        check(s, shrunk.size(), 0x43);
        let rest = spf::region_at(s.add(shrunk.size())).expect("the shrunk tail is cached");
        assert_eq!(
            rest.start,
            s as usize + shrunk.size(),
            "the tail was not kept"
        );
        let t = alloc(layout(grown.size() - shrunk.size()));
        assert_eq!(
            t,
            s.add(shrunk.size()),
            "the kept tail did not serve its size"
        );
        dealloc(t, layout(grown.size() - shrunk.size()));
        dealloc(s, shrunk);
    }
    assert!(spf::alloc_stats().large_realloc_into_cached > 0);
}

/// A lazy block cached across a fork keeps faulting in the child: its
/// untouched granules are still uncommitted there. Under the `guard`
/// backend those granules are kept inaccessible by guard markers, which a
/// range marked `MADV_WIPEONFORK` loses in the child: the child then wrote
/// them with no fault, and `check_invariants` found an uncommitted granule
/// readable. (Run by `.ci/run`'s pass under `SPF_BACKEND=guard`; under the
/// other backends it passes either way.)
#[test]
fn a_cached_lazy_block_still_faults_in_a_fork_child() {
    if ran_alone("a_cached_lazy_block_still_faults_in_a_fork_child") {
        return;
    }
    spf::set_decay_ms(60_000);
    let lazy = SpfAlloc::lazy();
    let l = layout(13 * MIB);
    // SAFETY: valid layouts; every access stays inside the blocks; the
    // child reports through its exit status only.
    unsafe {
        let p = lazy.alloc(l);
        assert!(!p.is_null());
        // Commit the first MiB only; the rest stays uncommitted.
        fill(p, MIB, 0x6e);
        lazy.dealloc(p, l);
        let pid = libc::fork();
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let q = lazy.alloc(l);
            if q != p {
                libc::_exit(3);
            }
            let before = spf::stats().faults;
            q.add(10 * MIB).write(0x5a);
            let faulted = spf::stats().faults > before;
            let clean = spf::check_invariants().is_ok();
            libc::_exit(match (faulted, clean) {
                (true, true) => 0,
                (false, _) => 1,
                (true, false) => 2,
            });
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        assert!(libc::WIFEXITED(status), "the child died: status {status}");
        match libc::WEXITSTATUS(status) {
            0 => {}
            1 => panic!("in the fork child, a write to an uncommitted granule of a cached lazy block took no fault"),
            2 => panic!("in the fork child, check_invariants failed after the write"),
            3 => panic!("in the fork child, the cached lazy block was not reused"),
            s => panic!("the child exited with {s}"),
        }
        let q = lazy.alloc(l);
        assert_eq!(q, p, "the cached lazy block was not reused in the parent");
        check(q, MIB, 0x6e);
        lazy.dealloc(q, l);
    }
}

/// A cached block shrunk for a request keeps even a tail smaller than any
/// large request: split off with no system call and its pages resident, it
/// merges back when the head is freed, and the whole block serves its size
/// again without a fault. (Such tails used to be decommitted: an
/// `mprotect` and two `madvise`s each, and the block came back short.)
#[test]
fn a_tail_too_small_for_any_request_is_kept_and_merges_back() {
    if ran_alone("a_tail_too_small_for_any_request_is_kept_and_merges_back") {
        return;
    }
    spf::set_decay_ms(60_000);
    // Below 2 MiB: no huge-page advice to take back from the tail.
    let (whole, head) = (layout(MIB), layout(MIB - 128 * 1024));
    // SAFETY: valid layouts; every access stays inside the blocks.
    unsafe {
        let p = alloc(whole);
        assert!(!p.is_null());
        fill(p, whole.size(), 0x6e);
        dealloc(p, whole);
        let before = spf::stats().mprotect_calls;
        let q = alloc(head);
        assert_eq!(q, p, "the 896 KiB request did not reuse the 1 MiB block");
        assert_eq!(region_len(q), head.size(), "L1");
        let tail = q.add(head.size());
        let kept = spf::region_at(tail).expect("the 128 KiB tail was given back");
        assert_eq!((kept.start, kept.len), (tail as usize, 128 * 1024));
        assert_eq!(
            spf::stats().mprotect_calls,
            before,
            "shrinking the cached block took an mprotect"
        );
        assert_eq!(
            common::large::resident_pages(tail, 128 * 1024),
            32,
            "the kept tail's pages are not resident"
        );
        dealloc(q, head);
        let merged = spf::region_at(p).unwrap();
        assert_eq!(
            (merged.start, merged.len),
            (p as usize, whole.size()),
            "the freed head did not merge with its tail"
        );
        let faults = minor_faults();
        let again = alloc(whole);
        assert_eq!(again, p, "the merged block did not serve its whole size");
        fill(again, whole.size(), 0x6f);
        assert_eq!(minor_faults() - faults, 0, "the merged block faulted");
        check(again, whole.size(), 0x6f);
        dealloc(again, whole);
    }
}
