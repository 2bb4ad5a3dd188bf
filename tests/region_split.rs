//! `Region::split_off` and `Region::merge` racing faulting writers:
//! threads first-touch (and so fault in) their slices of a lazy region
//! while another thread splits it into many parts and merges them back. Every write must land in memory that stays
//! committed, bytes are verified, the parts' committed bytes must add up to
//! what was touched, every address must belong to exactly the part that
//! holds it, and the counters must show both the speculative path and its
//! `spf_vma_changed` fallback (a fault that saw a split under it). Run under
//! each backend with `SPF_BACKEND=uffd|guard|mprotect`.

mod common;

use common::{fill, serial, verify, SendPtr};
use spf::{HandlerAllocGuard, Mode, Region, RegionOptions};
use std::alloc::System;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: HandlerAllocGuard<System> = HandlerAllocGuard(System);

const PAGE: usize = 4096;
const LEN: usize = 8 << 20;
const WRITERS: usize = 8;

/// One round: a fresh lazy region, `WRITERS` threads touching it page by
/// page while this thread splits off 64 parts at pseudo-random granules
/// and, if `merge`, merges them back into one region.
fn round(round: usize, granule: usize, ahead: usize, merge: bool) {
    let opts = RegionOptions::default()
        .granule(granule)
        .commit_ahead(ahead);
    let region = Region::reserve(LEN, opts).unwrap();
    let base = SendPtr(region.as_ptr());
    let slice = LEN / WRITERS;
    let mut parts = vec![region];
    std::thread::scope(|s| {
        for t in 0..WRITERS {
            s.spawn(move || {
                let p = base.get().wrapping_add(t * slice);
                // Page by page so that faults keep coming during the splits.
                for off in (0..slice).step_by(PAGE) {
                    // SAFETY: slice t of the region is this thread's, and
                    // every part of the region stays live until the scope
                    // ends.
                    unsafe { fill(p.add(off), PAGE, round * 31 + t + off) };
                }
            });
        }
        let mut x = (round as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for _ in 0..64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Split the largest part at a granule inside it.
            let i = (0..parts.len()).max_by_key(|&i| parts[i].len()).unwrap();
            let granules = parts[i].len() / granule;
            if granules < 2 {
                break;
            }
            let at = (1 + x as usize % (granules - 1)) * granule;
            let tail = parts[i].split_off(at).unwrap();
            parts.push(tail);
            std::thread::sleep(Duration::from_micros(20));
        }
        if !merge {
            return;
        }
        // Merge them back, in pseudo-random order, while the writers run.
        while parts.len() > 1 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = x as usize % parts.len();
            let end = parts[i].as_ptr() as usize + parts[i].len();
            let Some(j) = parts.iter().position(|r| r.as_ptr() as usize == end) else {
                continue; // the last part: nothing after it
            };
            let next = parts.swap_remove(j);
            // `swap_remove` moved the last part to `j`.
            let i = if i == parts.len() { j } else { i };
            parts[i].merge(next).map_err(|(_, e)| e).unwrap();
            std::thread::sleep(Duration::from_micros(20));
        }
    });
    if merge {
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].len(), LEN, "the parts merged back whole");
    }
    parts.sort_by_key(|r| r.as_ptr() as usize);
    let mut at = base.get() as usize;
    let mut committed = 0;
    for r in &parts {
        assert_eq!(r.as_ptr() as usize, at, "the parts tile the region");
        let info = spf::region_at(r.as_ptr().wrapping_add(r.len() - 1)).unwrap();
        assert_eq!(
            (info.start, info.len),
            (at, r.len()),
            "the map names the part"
        );
        committed += r.committed();
        at += r.len();
    }
    assert_eq!(at, base.get() as usize + LEN);
    assert_eq!(committed, LEN, "committed bytes moved with the parts");
    for t in 0..WRITERS {
        for off in (0..slice).step_by(PAGE) {
            let p = base.get().wrapping_add(t * slice + off);
            // SAFETY: inside a live part.
            let bad = unsafe { verify(p, PAGE, round * 31 + t + off) };
            assert_eq!(bad, None, "round {round}, writer {t}, offset {off:#x}");
        }
    }
    drop(parts);
}

#[test]
fn faults_racing_splits_and_merges_land_in_the_right_part() {
    let _s = serial();
    spf::set_mode(Mode::Speculative);
    let before = spf::stats();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rounds = 0;
    loop {
        // 4 KiB granules without and with commit-ahead (runs that cross a
        // split point), and 64 KiB granules.
        let (granule, ahead) = [(PAGE, 0), (PAGE, 64 << 10), (64 << 10, 0)][rounds % 3];
        round(rounds, granule, ahead, rounds % 2 == 1);
        rounds += 1;
        let st = spf::stats().since(&before);
        if rounds >= 12 && (st.spf_vma_changed > 0 || Instant::now() > deadline) {
            break;
        }
    }
    let st = spf::stats().since(&before);
    eprintln!("{rounds} rounds\n{st}");
    assert!(st.spf > 0, "the speculative path never ran: {st}");
    assert!(
        st.spf_vma_changed > 0,
        "no fault ever saw a split or merge under it: {st}"
    );
    assert_eq!(st.fatal, 0);
    spf::check_invariants().unwrap();
}
