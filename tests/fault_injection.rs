//! System calls that fail: `mmap`, `mprotect` and `madvise` made to fail
//! with `ENOMEM`/`EAGAIN` at chosen points (the `fault-injection` hooks of
//! the `sys` layer). Whatever fails, spf reports it or recovers: the
//! allocator returns null, region calls return an error naming the call,
//! the fault handler falls back or reports once instead of looping,
//! counters and granule states stay consistent, no byte is lost, and once
//! the failure clears the process goes on allocating.
//!
//! Plans are process-wide, so each scenario runs alone in a child process.
//! The scenarios target `mprotect` and `madvise`, so the children run the
//! `mprotect` commit backend whatever `SPF_BACKEND` says; the userfaultfd
//! backend's failures (`UFFDIO_COPY`, `userfaultfd()` refused,
//! `UFFDIO_REGISTER`) are in `backends.rs` and `backend_start.rs`.

mod common;

use common::{child_scenario, fill, printed_addr, run_child_with_env, signal_of};
use spf::testing::inject::{self, Call};
use spf::{Region, RegionOptions, SpfAlloc};
use std::alloc::{GlobalAlloc, Layout};
use std::process::Output;

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

const ALWAYS: u64 = u64::MAX;

fn lazy(len: usize, granule: usize) -> Region {
    Region::reserve(len, RegionOptions::default().granule(granule)).expect("reserve")
}

/// Asserts that `[ptr, ptr + len)` holds `fill`'s pattern for `seed`.
///
/// # Safety
/// The range must be readable memory owned by the caller.
unsafe fn check(ptr: *const u8, len: usize, seed: usize) {
    // SAFETY: the caller's range.
    if let Some(off) = unsafe { common::verify(ptr, len, seed) } {
        panic!("byte {off} of {ptr:p} lost (seed {seed})");
    }
}

/// Bytes allocated now against before: equal but for the little the test
/// harness and `eprintln!` allocate meanwhile (far below one 16 KiB block
/// per thousand, or one large block).
fn assert_near(now: u64, before: u64) {
    assert!(
        now.abs_diff(before) < 256 << 10,
        "allocated bytes {now} against {before} before: a block leaked or was counted twice"
    );
}

fn invariants() {
    spf::check_invariants().expect("spf's invariants hold");
}

/// One failed commit in the fault path: the speculative commit fails, the
/// fault falls back to the classic path, which commits; every byte lands.
fn fault_commit_once(errno: i32) {
    let r = lazy(4 << 20, 64 << 10);
    let before = spf::stats();
    inject::fail(Call::MprotectCommit, errno, 0, 1);
    // SAFETY: the region is ours; the first touch faults.
    unsafe { fill(r.as_ptr(), r.len(), 7) };
    inject::clear(Call::MprotectCommit);
    // SAFETY: as above.
    unsafe { check(r.as_ptr(), r.len(), 7) };
    let st = spf::stats().since(&before);
    assert_eq!(inject::injected(Call::MprotectCommit), 1);
    assert!(
        st.spf_vma_changed >= 1,
        "the failed commit fell back: {st:?}"
    );
    assert!(st.classic >= 1, "the classic path committed: {st:?}");
    assert_eq!(st.fatal, 0);
    assert_eq!(r.committed(), r.len());
    invariants();
}

/// `Region::commit` failing: an error naming the call, nothing committed,
/// then success once the failure clears.
fn region_commit() {
    let r = lazy(1 << 20, 64 << 10);
    let committed = spf::stats().committed_bytes;
    inject::fail(Call::MprotectCommit, libc::ENOMEM, 0, 1);
    let err = r.commit(0..r.len()).expect_err("the commit fails");
    let text = err.to_string();
    assert!(text.contains("mprotect"), "{text}");
    assert!(text.contains("ENOMEM") || text.contains("memory"), "{text}");
    assert_eq!(r.committed(), 0);
    assert_eq!(spf::stats().committed_bytes, committed);
    invariants();
    r.commit(0..r.len())
        .expect("the commit works once the failure clears");
    // SAFETY: committed above.
    unsafe {
        fill(r.as_ptr(), r.len(), 3);
        check(r.as_ptr(), r.len(), 3);
    }
    invariants();
}

/// An eager region whose commit fails is not created, and leaks nothing.
fn reserve_eager() {
    let live = spf::stats().live_regions;
    inject::fail(Call::MprotectCommit, libc::ENOMEM, 0, 1);
    let err = Region::reserve(1 << 20, RegionOptions::default().eager()).expect_err("fails");
    assert!(err.to_string().contains("mprotect"), "{err}");
    assert_eq!(spf::stats().live_regions, live, "no region left behind");
    invariants();
    let r = Region::reserve(1 << 20, RegionOptions::default().eager()).expect("works again");
    // SAFETY: an eager region is committed.
    unsafe {
        fill(r.as_ptr(), r.len(), 5);
        check(r.as_ptr(), r.len(), 5);
    }
}

/// A large block whose commit fails: null, nothing counted as allocated;
/// then the same request succeeds.
fn alloc_large() {
    let l = Layout::from_size_align(8 << 20, 8).unwrap();
    let allocated = spf::alloc_stats().allocated;
    inject::fail(Call::MprotectCommit, libc::ENOMEM, 0, ALWAYS);
    // SAFETY: a valid layout; a null result is checked.
    let p = unsafe { GLOBAL.alloc(l) };
    inject::clear(Call::MprotectCommit);
    assert!(p.is_null(), "a failed commit gives null");
    assert!(inject::injected(Call::MprotectCommit) >= 1);
    assert_near(spf::alloc_stats().allocated, allocated);
    // SAFETY: as above; the block is freed once with its layout.
    unsafe {
        let p = GLOBAL.alloc(l);
        assert!(!p.is_null());
        fill(p, l.size(), 9);
        check(p, l.size(), 9);
        GLOBAL.dealloc(p, l);
    }
    assert_near(spf::alloc_stats().allocated, allocated);
    invariants();
}

/// Small blocks until a new segment is needed while commits fail: null at
/// that point, every block handed out before it intact, and allocation
/// goes on once the failure clears.
fn alloc_small() {
    let l = Layout::from_size_align(16 << 10, 8).unwrap();
    let mut blocks: Vec<usize> = Vec::with_capacity(100_000);
    let allocated = spf::alloc_stats().allocated;
    inject::fail(Call::MprotectCommit, libc::ENOMEM, 0, ALWAYS);
    let mut saw_null = false;
    while blocks.len() < blocks.capacity() {
        // SAFETY: a valid layout; null is checked.
        let p = unsafe { GLOBAL.alloc(l) };
        if p.is_null() {
            saw_null = true;
            break;
        }
        // SAFETY: a fresh block of `l.size()` bytes.
        unsafe { fill(p, 64, blocks.len()) };
        blocks.push(p as usize);
    }
    inject::clear(Call::MprotectCommit);
    assert!(saw_null, "a new segment was needed within 1.6 GB");
    assert!(
        inject::injected(Call::MprotectCommit) >= 1,
        "null came from the failed commit"
    );
    eprintln!("null after {} blocks", blocks.len());
    for _ in 0..1_000 {
        // SAFETY: a valid layout; null is checked.
        let p = unsafe { GLOBAL.alloc(l) };
        assert!(!p.is_null(), "allocation goes on after the failure clears");
        // SAFETY: a fresh block.
        unsafe { fill(p, 64, blocks.len()) };
        blocks.push(p as usize);
    }
    for (i, &p) in blocks.iter().enumerate() {
        // SAFETY: each block was filled with its index and is freed once.
        unsafe {
            check(p as *mut u8, 64, i);
            GLOBAL.dealloc(p as *mut u8, l);
        }
    }
    assert_near(spf::alloc_stats().allocated, allocated);
    invariants();
}

/// `madvise` failing: `Region::purge` says so, `spf::purge` returns without
/// looping and keeps its blocks; once it clears, purging gives memory back.
fn madvise_purge() {
    let r = lazy(4 << 20, 64 << 10);
    // SAFETY: the region is ours.
    unsafe { fill(r.as_ptr(), r.len(), 1) };
    inject::fail(Call::Madvise, libc::EAGAIN, 0, ALWAYS);
    let err = r.purge(0..r.len()).expect_err("purge fails");
    assert!(err.to_string().contains("madvise"), "{err}");
    // SAFETY: nothing was dropped: the data is still there.
    unsafe { check(r.as_ptr(), r.len(), 1) };

    let l = Layout::from_size_align(32 << 20, 8).unwrap();
    // SAFETY: valid layout; freed once.
    unsafe {
        let p = GLOBAL.alloc(l);
        assert!(!p.is_null());
        fill(p, l.size(), 2);
        GLOBAL.dealloc(p, l);
    }
    let resident = spf::alloc_stats().resident;
    spf::purge();
    assert!(inject::injected(Call::Madvise) >= 2);
    inject::clear(Call::Madvise);
    let still = spf::alloc_stats().resident;
    spf::purge();
    let after = spf::alloc_stats().resident;
    eprintln!("resident: {resident} before, {still} after a failed purge, {after} after purge");
    assert!(still + (8 << 20) > resident, "a failed purge drops nothing");
    assert!(after + (24 << 20) < still, "purge gives the block back");
    invariants();
}

/// `MADV_POPULATE_WRITE` failing is only a lost hint: the touches commit.
fn populate_hint() {
    let opts = RegionOptions::default()
        .granule(64 << 10)
        .commit_ahead(1 << 20)
        .populate(true);
    let r = Region::reserve(8 << 20, opts).unwrap();
    let before = spf::stats();
    inject::fail(Call::Madvise, libc::EAGAIN, 0, ALWAYS);
    // SAFETY: the region is ours.
    unsafe { fill(r.as_ptr(), r.len(), 4) };
    inject::clear(Call::Madvise);
    // SAFETY: as above.
    unsafe { check(r.as_ptr(), r.len(), 4) };
    assert!(inject::injected(Call::Madvise) >= 1);
    assert_eq!(spf::stats().since(&before).fatal, 0);
    invariants();
}

/// Decommit whose `madvise` fails: the pages are still dropped (by the
/// `mmap` replacement), so the next commit reads zeros, never old data.
fn decommit_without_madvise() {
    let r = lazy(2 << 20, 64 << 10);
    // SAFETY: the region is ours.
    unsafe { fill(r.as_ptr(), r.len(), 6) };
    inject::fail(Call::Madvise, libc::EAGAIN, 0, ALWAYS);
    r.decommit(0..r.len()).expect("decommit");
    inject::clear(Call::Madvise);
    assert!(inject::injected(Call::Madvise) >= 1);
    assert_eq!(r.committed(), 0);
    invariants();
    for off in (0..r.len()).step_by(4096) {
        // SAFETY: inside the region; the read commits the granule.
        let b = unsafe { r.as_ptr().add(off).read_volatile() };
        assert_eq!(b, 0, "old data at offset {off} after decommit");
    }
}

/// The failure that does not clear: the fault cannot commit at all. One
/// message naming the region and the errno, then SIGSEGV — no loop.
fn fault_commit_always() {
    let r = lazy(1 << 20, 64 << 10);
    eprintln!("region at {:#x}", r.as_ptr() as usize);
    inject::fail(Call::MprotectCommit, libc::ENOMEM, 0, ALWAYS);
    // SAFETY: none — the commit cannot happen; the process must end.
    unsafe { r.as_ptr().add(100).write_volatile(1) };
}

#[test]
#[ignore = "child-process entry point, run by the other tests of this file"]
fn child_entry() {
    let Some(scenario) = child_scenario() else {
        return;
    };
    spf::init().unwrap();
    match scenario.as_str() {
        "fault_commit_enomem" => fault_commit_once(libc::ENOMEM),
        "fault_commit_eagain" => fault_commit_once(libc::EAGAIN),
        "region_commit" => region_commit(),
        "reserve_eager" => reserve_eager(),
        "alloc_large" => alloc_large(),
        "alloc_small" => alloc_small(),
        "madvise_purge" => madvise_purge(),
        "populate_hint" => populate_hint(),
        "decommit_without_madvise" => decommit_without_madvise(),
        "fault_commit_always" => fault_commit_always(),
        other => panic!("unknown scenario {other}"),
    }
    println!("scenario done");
}

/// A scenario in a child running the `mprotect` backend.
fn run_child(entry: &str, scenario: &str) -> Output {
    run_child_with_env(entry, scenario, &[("SPF_BACKEND", "mprotect")])
}

fn survives(scenario: &str) -> Output {
    let out = run_child("child_entry", scenario);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("scenario done"),
        "{scenario}: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn a_failed_speculative_commit_falls_back_and_keeps_every_byte() {
    survives("fault_commit_enomem");
    survives("fault_commit_eagain");
}

#[test]
fn region_commit_reports_the_failed_call_then_works() {
    survives("region_commit");
    survives("reserve_eager");
}

#[test]
fn the_allocator_returns_null_then_goes_on() {
    survives("alloc_large");
    survives("alloc_small");
}

#[test]
fn madvise_failures_lose_nothing_and_leak_no_old_data() {
    survives("madvise_purge");
    survives("populate_hint");
    survives("decommit_without_madvise");
}

#[test]
fn a_commit_that_never_succeeds_is_reported_once() {
    let out = run_child("child_entry", "fault_commit_always");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (region, _) = printed_addr(&stderr, "region at ");
    assert_eq!(signal_of(&out), Some(libc::SIGSEGV), "{stderr}");
    assert_eq!(stderr.matches("spf: fatal").count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot commit in region [{region}"))
            && stderr.contains("mprotect failed with ENOMEM"),
        "{stderr}"
    );
}
