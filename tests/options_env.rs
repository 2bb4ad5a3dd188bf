//! `SPF_*` variables: good values take effect at start, bad ones print a
//! message naming the variable and the accepted values, and the default is
//! used. Each case runs in a child process, since the variables are read
//! once.

mod common;

use common::{child_scenario, run_child_with_env};
use spf::{HandlerAllocGuard, Mode, Region, RegionOptions};
use std::alloc::System;

#[global_allocator]
static GLOBAL: HandlerAllocGuard<System> = HandlerAllocGuard(System);

#[test]
#[ignore = "child-process entry point, run by the other tests of this file"]
fn child_entry() {
    if child_scenario().is_none() {
        return;
    }
    spf::init().unwrap();
    let r = Region::reserve(1 << 20, RegionOptions::default()).unwrap();
    // SAFETY: inside the live region.
    unsafe { r.as_ptr().write(1) };
    println!(
        "mode={:?} cap={} granule={}",
        spf::mode(),
        spf::cap(),
        r.granule()
    );
}

fn child(env: &[(&str, &str)]) -> (String, String) {
    let out = run_child_with_env("child_entry", "options", env);
    assert!(out.status.success(), "{out:?}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn good_values_take_effect() {
    let (stdout, stderr) = child(&[
        ("SPF_MODE", "classic"),
        ("SPF_CAP", "2m"),
        ("SPF_GRANULE", "16k"),
    ]);
    assert!(
        stdout.contains(&format!(
            "mode={:?} cap={} granule=16384",
            Mode::Classic,
            2 << 20
        )),
        "{stdout}"
    );
    assert!(!stderr.contains("spf:"), "{stderr}");
}

#[test]
fn bad_values_are_named_and_the_defaults_kept() {
    let (stdout, stderr) = child(&[
        ("SPF_MODE", "fast"),
        ("SPF_CAP", "lots"),
        ("SPF_GRANULE", "3000"),
        ("SPF_STATS", "maybe"),
    ]);
    assert!(
        stderr.contains("spf: SPF_MODE=fast is not valid; accepted values: spf, classic."),
        "{stderr}"
    );
    assert!(
        stderr.contains("spf: SPF_CAP=lots is not valid"),
        "{stderr}"
    );
    assert!(
        stderr.contains("spf: SPF_GRANULE=3000 is not valid; accepted values: a power of two"),
        "{stderr}"
    );
    assert!(
        stderr.contains("spf: SPF_STATS=maybe is not valid; accepted values: 0, 1."),
        "{stderr}"
    );
    assert!(
        stdout.contains(&format!(
            "mode={:?} cap={} granule={}",
            Mode::Speculative,
            8 << 20,
            64 << 10
        )),
        "{stdout}"
    );
}

#[test]
fn spf_stats_prints_the_counters_at_exit() {
    let (_, stderr) = child(&[("SPF_STATS", "1")]);
    assert!(
        stderr.contains("Performance counter stats for spf (commit backend: "),
        "{stderr}"
    );
    let faults = stderr
        .lines()
        .find(|l| l.trim_end().ends_with(" faults"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(faults.is_some_and(|n| n >= 1), "{stderr}");
}
