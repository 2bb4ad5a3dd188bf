//! spf cannot start (the reservation's `mmap` fails): `init` and every
//! region call return the error, naming the call and what to change; the
//! allocator says so once and returns null. The failure is final — the
//! reservation is the whole of spf's space — so a later `init` returns the
//! same error instead of retrying.
//!
//! The global allocator here is the system's, so spf starts only when the
//! test asks it to.

mod common;

use common::{child_scenario, run_child};
use spf::testing::inject::{self, Call};
use spf::{Region, RegionOptions, SpfAlloc};
use std::alloc::{GlobalAlloc, Layout, System};

#[global_allocator]
static GLOBAL: System = System;

#[test]
#[ignore = "child-process entry point, run by the other test of this file"]
fn child_entry() {
    if child_scenario().is_none() {
        return;
    }
    // Two failures: with SPF_BACKEND=auto a failed two-zone reservation is
    // retried with one zone (for address-space limits) before giving up.
    inject::fail(Call::Mmap, libc::ENOMEM, 0, 2);
    let err = spf::init().expect_err("the reservation fails");
    inject::clear(Call::Mmap);
    println!("init: {err}");
    assert_eq!(
        spf::init().expect_err("a failed start is final"),
        err,
        "the same error again"
    );
    let region = Region::reserve(1 << 20, RegionOptions::default()).map(|_| ());
    assert_eq!(region, Err(err));
    let spf = SpfAlloc::new();
    let l = Layout::from_size_align(64, 8).unwrap();
    for _ in 0..3 {
        // SAFETY: a valid layout; null is expected and checked.
        let p = unsafe { spf.alloc(l) };
        assert!(
            p.is_null(),
            "no memory from an allocator that did not start"
        );
    }
    println!("scenario done");
}

#[test]
fn a_failed_start_is_reported_with_what_to_change() {
    let out = run_child("child_entry", "start");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("scenario done"), "{stdout}");
    assert!(
        stdout.contains("init: spf: mmap (reservation) failed with ENOMEM")
            && stdout.contains("SPF_RESERVE"),
        "{stdout}"
    );
    assert_eq!(
        stderr.matches("(the allocator cannot start)").count(),
        1,
        "said once, not per allocation: {stderr}"
    );
}
