//! Edges a new user hits: sizes that do not fit (refused with an error or
//! null, never a panic, a hang or a wrap), writes racing a decommit
//! (memory that comes back reads zero), an arena's commit limit against
//! commit-ahead, a `protect` whose `mprotect` fails, and the invariant
//! checker reporting a broken invariant with `SpfAlloc` as the global
//! allocator. Scenarios that could hang or end the process run in a child
//! with a deadline.

mod common;

use common::{child_scenario, serial};
use spf::testing::inject::{self, Call};
use spf::{Arena, ArenaError, Error, Protection, Region, RegionOptions, SpfAlloc};
use std::alloc::{GlobalAlloc, Layout};
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::Duration;

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

/// Runs the scenario in a child, killed if it has not finished within
/// `deadline` (a hang is then a failure that says so, not a stuck suite).
fn child_with_deadline(scenario: &str, env: &[(&str, &str)], deadline: Duration) -> Output {
    let (out, hung) = common::run_child_until("child_entry", scenario, env, deadline);
    assert!(
        !hung,
        "{scenario}: still running after {deadline:?} (a hang): stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn assert_child_ok(scenario: &str, env: &[(&str, &str)]) {
    let out = child_with_deadline(scenario, env, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("scenario done"),
        "{scenario}: {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "child-process entry point, run by the other tests of this file"]
fn child_entry() {
    let Some(scenario) = child_scenario() else {
        return;
    };
    match scenario.as_str() {
        "huge_vec_reserve" => huge_vec_reserve(),
        "protect_fails" => protect_fails(),
        other => panic!("unknown scenario {other}"),
    }
    println!("scenario done");
}

// --- 1. sizes that do not fit -------------------------------------------

/// A new user's program: a `Vec` asked to reserve 16 TiB more must say no.
fn huge_vec_reserve() {
    let mut v: Vec<u8> = Vec::with_capacity(300_000);
    v.extend((0..300_000).map(|i| i as u8));
    assert!(v.try_reserve_exact((1 << 44) + 300_000).is_err());
    assert!(v.try_reserve((1 << 44) + 300_000).is_err());
    assert!(v.try_reserve(isize::MAX as usize).is_err());
    assert!(v.iter().enumerate().all(|(i, &b)| b == i as u8));
    // The map still works: more blocks come and go.
    let blocks: Vec<Vec<u8>> = (0..16).map(|i| vec![i as u8; 1 << 20]).collect();
    for (i, b) in blocks.iter().enumerate() {
        assert!(b.iter().all(|&x| x == i as u8));
    }
    drop(blocks);
    spf::check_invariants().unwrap();
}

#[test]
fn a_vec_reserving_16_tib_more_gets_an_error() {
    assert_child_ok("huge_vec_reserve", &[]);
}

#[test]
fn region_sizes_that_do_not_fit_are_refused() {
    let _s = serial();
    for len in [usize::MAX, usize::MAX - 4095, isize::MAX as usize, 1 << 60] {
        let err = Region::reserve(len, RegionOptions::default()).unwrap_err();
        assert!(
            matches!(err, Error::BadSize { .. }),
            "reserve({len}): {err}"
        );
    }
    let mut r = Region::reserve(256 << 10, RegionOptions::default()).unwrap();
    // SAFETY: inside the live region.
    unsafe { r.as_ptr().write(7) };
    let len = r.len();
    for new_len in [usize::MAX - 4095, usize::MAX, isize::MAX as usize, 1 << 44] {
        let err = r.grow(new_len).unwrap_err();
        assert!(
            matches!(err, Error::BadSize { .. } | Error::CannotGrowInPlace { .. }),
            "grow({new_len}): {err}"
        );
        assert_eq!(r.len(), len, "grow({new_len}) changed the length");
    }
    r.shrink(usize::MAX);
    assert_eq!(r.len(), len, "shrink(usize::MAX) is no shrink");
    r.shrink(usize::MAX - 4095);
    assert_eq!(r.len(), len);
    #[allow(clippy::reversed_empty_ranges)] // a reversed range is one of the bad inputs
    let bad = [
        0..usize::MAX,
        usize::MAX - 1..usize::MAX,
        len..len + 1,
        4096..0,
    ];
    for range in bad {
        assert!(r.commit(range.clone()).is_err(), "commit({range:?})");
        assert!(r.decommit(range.clone()).is_err(), "decommit({range:?})");
        assert!(r.purge(range.clone()).is_err(), "purge({range:?})");
    }
    assert!(!r.is_committed(len) && !r.is_committed(usize::MAX));
    // SAFETY: a bad range is refused before anything is touched.
    assert!(unsafe { spf::purge_pages(r.as_ptr(), usize::MAX - 4095) }.is_err());
    // SAFETY: as above.
    assert!(unsafe { spf::purge_pages(r.as_ptr(), usize::MAX & !4095) }.is_err());
    // SAFETY: inside the live region.
    assert_eq!(unsafe { r.as_ptr().read() }, 7);
    spf::check_invariants().unwrap();
    drop(r);
    spf::check_invariants().unwrap();
}

#[test]
fn global_alloc_refuses_what_does_not_fit() {
    let _s = serial();
    let a = &GLOBAL;
    for (size, align) in [
        (isize::MAX as usize, 1),
        (isize::MAX as usize - 4095, 4096),
        (1 << 62, 1 << 20),
        (1 << 45, 8),
        (1, 1 << 62),
        (1 << 20, 1 << 50),
    ] {
        let layout = Layout::from_size_align(size, align).unwrap();
        // SAFETY: a valid layout; null is an answer.
        let p = unsafe { a.alloc(layout) };
        assert!(p.is_null(), "alloc({layout:?}) gave {p:p}");
        // SAFETY: as above.
        let p = unsafe { a.alloc_zeroed(layout) };
        assert!(p.is_null(), "alloc_zeroed({layout:?}) gave {p:p}");
    }
    for old in [100, 300_000, 4 << 20] {
        let layout = Layout::from_size_align(old, 8).unwrap();
        // SAFETY: a valid layout.
        let p = unsafe { a.alloc(layout) };
        assert!(!p.is_null());
        // SAFETY: a fresh block of `old` bytes.
        unsafe { p.write_bytes(0x5a, old) };
        for new in [
            isize::MAX as usize - 7,
            (1 << 44) + 300_000,
            1 << 45,
            isize::MAX as usize / 2,
        ] {
            // SAFETY: `p` is live with `layout`; `new` with align 8 is a
            // valid layout size.
            let q = unsafe { a.realloc(p, layout, new) };
            assert!(q.is_null(), "realloc({old} -> {new}) gave {q:p}");
        }
        // SAFETY: the failed reallocs left the block alone.
        let bytes = unsafe { std::slice::from_raw_parts(p, old) };
        assert!(
            bytes.iter().all(|&b| b == 0x5a),
            "a failed realloc lost bytes"
        );
        // SAFETY: live, freed once.
        unsafe { a.dealloc(p, layout) };
    }
    spf::check_invariants().unwrap();
}

#[test]
fn arena_sizes_that_do_not_fit_are_refused() {
    let _s = serial();
    assert!(Arena::with_capacity(usize::MAX).is_err());
    assert!(Arena::with_capacity(1 << 60).is_err());
    let arena = Arena::with_capacity(1 << 20).unwrap();
    for (size, align) in [
        (isize::MAX as usize, 1),
        (1, 1 << 62),
        (isize::MAX as usize - ((1 << 40) - 1), 1 << 40),
        ((1 << 20) + 1, 1),
    ] {
        let layout = Layout::from_size_align(size, align).unwrap();
        let err = arena.alloc(layout).unwrap_err();
        assert!(
            matches!(
                err,
                ArenaError::Exhausted { .. } | ArenaError::CommitLimit { .. }
            ),
            "{layout:?}: {err}"
        );
    }
    let p = arena.alloc(Layout::new::<u64>()).unwrap();
    assert!(arena.prefault_block(p, usize::MAX).is_err());
    assert!(arena.prefault(8..usize::MAX).is_err());
    spf::check_invariants().unwrap();
}

// --- 4. writes racing a decommit ------------------------------------------

/// One writer stores into every page of the region, round after round,
/// while this thread decommits the whole region under it. A write that
/// lands after the pages are dropped but before access is revoked would
/// survive, invisible, in an `Uncommitted` granule; memory committed again
/// must read zero.
fn race_writers_against_decommit(opts: RegionOptions, rounds: usize) -> usize {
    const LEN: usize = 256 << 10;
    let region = Region::reserve(LEN, opts.granule(4096)).unwrap();
    let base = common::SendPtr(region.as_ptr());
    let stop = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let running = AtomicBool::new(false);
    let start = Barrier::new(2);
    let end = Barrier::new(2);
    let writes = AtomicUsize::new(0);
    let mut seen_dirty = 0;
    std::thread::scope(|s| {
        s.spawn(|| loop {
            start.wait();
            if done.load(Ordering::Acquire) {
                return;
            }
            let mut n = 0usize;
            let mut page = 0;
            while !stop.load(Ordering::Acquire) {
                // SAFETY: inside the live region; a write to a decommitted
                // granule commits it again.
                unsafe { base.get().add(page * 4096 + 8).write_volatile(0xa5) };
                page = (page + 1) % (LEN / 4096);
                n += 1;
                running.store(true, Ordering::Release);
            }
            running.store(false, Ordering::Relaxed);
            writes.fetch_add(n, Ordering::Relaxed);
            end.wait();
        });
        for _ in 0..rounds {
            region.commit(0..LEN).unwrap();
            start.wait();
            // Let the writer get going, then pull the pages from under it.
            while !running.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            region.decommit(0..LEN).unwrap();
            stop.store(true, Ordering::Release);
            end.wait();
            stop.store(false, Ordering::Relaxed);
            // Granules the writer did not commit again must read zero once
            // committed: the decommit dropped everything in them.
            for g in 0..LEN / 4096 {
                if !region.is_committed(g * 4096) {
                    region.commit(g * 4096..(g + 1) * 4096).unwrap();
                    // SAFETY: committed just above.
                    let v = unsafe { region.as_ptr().add(g * 4096 + 8).read_volatile() };
                    if v != 0 {
                        seen_dirty += 1;
                    }
                }
            }
        }
        done.store(true, Ordering::Release);
        start.wait();
    });
    assert!(writes.load(Ordering::Relaxed) > 0, "the writer never ran");
    drop(region);
    seen_dirty
}

#[test]
fn a_write_racing_a_decommit_never_survives_it() {
    let _s = serial();
    let backend = spf::backend().map(|b| b.name()).unwrap_or("none");
    for (what, opts) in [
        ("lazy", RegionOptions::default()),
        ("eager", RegionOptions::default().eager()),
    ] {
        let dirty = race_writers_against_decommit(opts, 400);
        assert_eq!(
            dirty, 0,
            "{what} region under {backend}: {dirty} granules held a write made during a \
             decommit and read it back after being committed again"
        );
    }
    spf::check_invariants().unwrap();
}

// --- 5. an arena's commit limit against commit-ahead ------------------------

#[test]
fn an_arena_never_commits_past_its_limit() {
    let _s = serial();
    for limit in [1536 << 10, (1 << 20) + 1, 3 << 20, 64 << 10] {
        let mut arena = Arena::with_commit_limit(8 << 20, limit).unwrap();
        for _ in 0..2 {
            let size = limit / 2;
            let mut blocks = Vec::new();
            while let Ok(p) = arena.alloc(Layout::from_size_align(size.max(1), 8).unwrap()) {
                blocks.push(p);
                // SAFETY: a fresh block of `size` bytes: touching every byte
                // in order is the sequential run commit-ahead follows.
                unsafe { p.as_ptr().write_bytes(1, size) };
                assert!(
                    arena.committed() <= limit,
                    "limit {limit}: {} bytes committed",
                    arena.committed()
                );
            }
            assert!(!blocks.is_empty() || limit < 64 << 10);
            let err = arena.alloc(Layout::from_size_align(limit, 1).unwrap());
            assert!(
                matches!(err, Err(ArenaError::CommitLimit { .. })),
                "{err:?}"
            );
            assert!(arena.committed() <= limit, "{}", arena.committed());
            arena.reset();
        }
    }
    spf::check_invariants().unwrap();
}

// --- 6. a protect whose mprotect fails ---------------------------------------

/// The permissions (`rw-p`, `r--p`, …) of the kernel mapping holding `addr`.
fn perms_at(addr: usize) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let range = fields.next().unwrap();
        let perms = fields.next().unwrap();
        let (lo, hi) = range.split_once('-').unwrap();
        let lo = usize::from_str_radix(lo, 16).unwrap();
        let hi = usize::from_str_radix(hi, 16).unwrap();
        if (lo..hi).contains(&addr) {
            return perms[..3].to_owned();
        }
    }
    panic!("{addr:#x} is in no mapping");
}

/// `protect` fails part-way (the second `mprotect`, or the only one):
/// the region keeps its old flags and every committed page its old
/// protection, and a later `protect` works.
fn protect_fails() {
    const G: usize = 64 << 10;
    for (what, opts) in [
        ("eager", RegionOptions::default().eager()),
        ("lazy", RegionOptions::default()),
    ] {
        let r = Region::reserve(8 * G, opts.granule(G)).unwrap();
        if what == "lazy" {
            // Three committed runs with uncommitted granules between.
            for g in [0, 1, 3, 6, 7] {
                r.commit(g * G..(g + 1) * G).unwrap();
            }
        } else {
            r.decommit(2 * G..3 * G).unwrap();
            r.decommit(4 * G..6 * G).unwrap();
        }
        let committed: Vec<usize> = (0..8).filter(|g| r.is_committed(g * G)).collect();
        for &g in &committed {
            // SAFETY: a committed granule of the live region.
            unsafe { r.as_ptr().add(g * G).write(g as u8 + 1) };
        }
        for (skip, to, from) in [
            (1, Protection::ReadOnly, Protection::ReadWrite),
            (0, Protection::ReadOnly, Protection::ReadWrite),
        ] {
            let before = inject::injected(Call::MprotectCommit);
            inject::fail(Call::MprotectCommit, libc::ENOMEM, skip, 1);
            let err = r.protect(to);
            let injected = inject::injected(Call::MprotectCommit) - before;
            inject::clear(Call::MprotectCommit);
            if injected == 0 {
                // One mprotect covers a lazy-zone region: nothing to skip.
                assert!(skip > 0 && err.is_ok(), "{what}: {err:?}");
                r.protect(from).unwrap();
                continue;
            }
            assert!(
                err.is_err(),
                "{what}: protect succeeded despite the failure"
            );
            let info = spf::region_at(r.as_ptr()).unwrap();
            assert_eq!(
                info.read_only,
                from == Protection::ReadOnly,
                "{what}, skip {skip}: the failed protect changed the flags"
            );
            for &g in &committed {
                let perms = perms_at(r.as_ptr() as usize + g * G);
                assert_eq!(
                    perms, "rw-",
                    "{what}, skip {skip}: granule {g} has {perms} after a failed protect;                      the region's flags say read/write"
                );
                // SAFETY: committed and writable, as just checked.
                unsafe { r.as_ptr().add(g * G + 1).write(9) };
            }
            spf::check_invariants().unwrap();
        }
        // Read-only now, and a failed protect back keeps it read-only.
        r.protect(Protection::ReadOnly).unwrap();
        inject::fail(Call::MprotectCommit, libc::ENOMEM, 0, 1);
        let err = r.protect(Protection::ReadWrite);
        inject::clear(Call::MprotectCommit);
        assert!(err.is_err(), "{what}: protect(ReadWrite) hid the failure");
        assert!(spf::region_at(r.as_ptr()).unwrap().read_only, "{what}");
        for &g in &committed {
            assert_eq!(perms_at(r.as_ptr() as usize + g * G), "r--", "{what}: {g}");
        }
        r.protect(Protection::ReadWrite).unwrap();
        for &g in &committed {
            // SAFETY: read/write again.
            unsafe { r.as_ptr().add(g * G + 2).write(3) };
            // SAFETY: as above.
            assert_eq!(unsafe { r.as_ptr().add(g * G).read() }, g as u8 + 1);
        }
        spf::check_invariants().unwrap();
    }
}

#[test]
fn a_failed_protect_keeps_the_old_flags_and_protections() {
    assert_child_ok("protect_fails", &[]);
}
