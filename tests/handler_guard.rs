//! The fault handler allocates nothing. This binary's global allocator is
//! `HandlerAllocGuard`, which (in debug builds) aborts on any allocation
//! made inside the handler: every fault served here is checked. A child
//! process proves the guard really fires when the handler does allocate.

mod common;

use common::{fill, serial, verify, SendPtr};
use spf::{HandlerAllocGuard, Mode, Region, RegionOptions};
use std::alloc::System;

#[global_allocator]
static GLOBAL: HandlerAllocGuard<System> = HandlerAllocGuard(System);

/// Faults on every path — speculative, classic, commit-ahead, populate,
/// read-only zero pages, contended granules — under the guard.
#[test]
fn normal_faults_never_trip_the_guard() {
    let _s = serial();
    for mode in [Mode::Speculative, Mode::Classic] {
        spf::set_mode(mode);
        let opts = [
            RegionOptions::default().granule(4096),
            RegionOptions::default()
                .granule(64 << 10)
                .commit_ahead(512 << 10)
                .populate(true),
            RegionOptions::default().granule(2 << 20),
            RegionOptions::default().speculative(false),
        ];
        for o in opts {
            let r = Region::reserve(8 << 20, o).unwrap();
            let p = SendPtr(r.as_ptr());
            let len = r.len();
            std::thread::scope(|s| {
                for t in 0..8 {
                    s.spawn(move || {
                        let part = len / 8;
                        // SAFETY: each thread owns one eighth of the region.
                        unsafe { fill(p.get().add(t * part), part, t) };
                        // SAFETY: as above.
                        assert_eq!(unsafe { verify(p.get().add(t * part), part, t) }, None);
                    });
                }
            });
        }
        let ro = Region::reserve(
            1 << 20,
            RegionOptions::default().protection(spf::Protection::ReadOnly),
        )
        .unwrap();
        // SAFETY: reading a read-only region commits zero pages.
        assert_eq!(unsafe { ro.as_ptr().add(5000).read() }, 0);
    }
    spf::set_mode(Mode::Speculative);
    assert!(spf::stats().faults > 0);
}

/// The child side: a handler that allocates must be caught.
#[test]
#[ignore = "child-process entry point, run by the other tests of this file"]
fn child_entry() {
    #[cfg(debug_assertions)]
    if common::child_scenario().as_deref() == Some("allocate_in_handler") {
        let r = Region::reserve(1 << 20, RegionOptions::default()).unwrap();
        spf::testing::set_allocate_in_handler(true);
        // SAFETY: inside the live region; the fault is the point.
        unsafe { r.as_ptr().write(1) };
        spf::testing::set_allocate_in_handler(false);
        println!("the guard did not fire");
    }
}

#[test]
#[cfg(debug_assertions)]
fn the_guard_fires_when_the_handler_allocates() {
    use common::{run_child, signal_of};
    let out = run_child("child_entry", "allocate_in_handler");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("spf: allocation inside the fault handler"),
        "stderr: {stderr}"
    );
    assert_eq!(
        signal_of(&out),
        Some(libc::SIGABRT),
        "status: {:?}",
        out.status
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("did not fire"));
}
