//! The per-CPU cap on speculative allocation in flight: with a small cap
//! and many more threads than CPUs, the bytes committed or populated ahead
//! of touch and in flight on one CPU never exceed the cap, and the faults
//! that would have exceeded it are counted as `spf_cap`.

mod common;

use common::{fill, serial, verify, SendPtr};
use spf::{CapPolicy, HandlerAllocGuard, Mode, Region, RegionOptions};
use std::alloc::System;

#[global_allocator]
static GLOBAL: HandlerAllocGuard<System> = HandlerAllocGuard(System);

const THREADS: usize = 16;
const CAP: usize = 512 << 10;

/// Every thread streams through its own region with populate and 1 MiB of
/// commit-ahead, so most faults ask for far more than the cap allows.
fn oversubscribed_run() -> spf::Stats {
    spf::reset_peaks();
    spf::testing::reset_ahead_peaks();
    let before = spf::stats();
    let opts = RegionOptions::default()
        .granule(64 << 10)
        .commit_ahead(1 << 20)
        .populate(true);
    let regions: Vec<Region> = (0..THREADS)
        .map(|_| Region::reserve(4 << 20, opts).unwrap())
        .collect();
    std::thread::scope(|s| {
        for (t, r) in regions.iter().enumerate() {
            let (p, len) = (SendPtr(r.as_ptr()), r.len());
            s.spawn(move || {
                // SAFETY: each thread owns its region.
                unsafe { fill(p.get(), len, t) };
                // SAFETY: as above.
                assert_eq!(unsafe { verify(p.get(), len, t) }, None);
            });
        }
    });
    let st = spf::stats().since(&before);
    drop(regions);
    spf::check_invariants().unwrap();
    st
}

#[test]
fn in_flight_bytes_never_exceed_the_cap() {
    let _s = serial();
    spf::set_mode(Mode::Speculative);
    spf::set_cap(CAP);
    for policy in [CapPolicy::Shrink, CapPolicy::Classic] {
        spf::set_cap_policy(policy);
        let st = oversubscribed_run();
        eprintln!("{policy:?}:\n{st}");
        assert!(st.max_inflight_bytes as usize <= CAP, "{policy:?}: {st}");
        // The same bound, measured at the commits themselves rather than
        // read back from the cap's own admission (spf-core's test-build
        // watch): no speculative commit carries more than the cap, and all
        // of them at once carry no more than the cap on every CPU.
        let (all, one) = spf::testing::ahead_peaks();
        eprintln!("{policy:?}: ahead bytes in commit calls: {all} at once, {one} in one");
        assert!(
            one as usize <= CAP,
            "{policy:?}: one commit carried {one} ahead"
        );
        assert!(
            all as usize <= CAP * cpus(),
            "{policy:?}: {all} ahead bytes in commits at once on {} CPUs",
            cpus()
        );
        assert!(st.max_inflight_bytes > 0, "the budget was never used: {st}");
        assert!(st.spf_cap > 0, "{policy:?}: the cap never bit: {st}");
        assert!(st.commit_ahead > 0, "commit-ahead never ran: {st}");
        if policy == CapPolicy::Classic {
            assert!(
                st.classic >= st.spf_cap,
                "capped faults must go classic: {st}"
            );
        }
    }
    spf::set_cap_policy(CapPolicy::Shrink);
    spf::set_cap(spf::cap_default());
}

fn cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize
}

/// Without the cap the same run commits far more than the cap ahead in
/// single commits: the measurement above sees real commits, so its bound
/// can fail.
#[test]
fn without_the_cap_commits_carry_more_than_it() {
    let _s = serial();
    spf::set_mode(Mode::Speculative);
    spf::set_cap(usize::MAX);
    spf::set_cap_policy(CapPolicy::Shrink);
    let st = oversubscribed_run();
    spf::set_cap(spf::cap_default());
    let (all, one) = spf::testing::ahead_peaks();
    eprintln!("uncapped: ahead bytes in commit calls: {all} at once, {one} in one");
    assert_eq!(st.spf_cap, 0, "{st}");
    assert!(
        one as usize > CAP,
        "one commit carried only {one} ahead: {st}"
    );
}

#[test]
fn a_zero_cap_allows_no_speculative_allocation_ahead() {
    let _s = serial();
    spf::set_mode(Mode::Speculative);
    spf::set_cap(0);
    spf::set_cap_policy(CapPolicy::Shrink);
    let st = oversubscribed_run();
    spf::set_cap(spf::cap_default());
    assert_eq!(st.max_inflight_bytes, 0, "{st}");
    assert_eq!(
        spf::testing::ahead_peaks(),
        (0, 0),
        "ahead bytes under a zero cap"
    );
    assert_eq!(st.commit_ahead, 0, "{st}");
    assert_eq!(st.classic, 0, "shrinking keeps faults speculative: {st}");
}
