//! The allocator suite in every fault mode and commit mode: speculative or
//! classic faults (`SPF_MODE`), large blocks committed when allocated or on
//! touch (`SPF_COMMIT`). Each combination runs in a child process, since
//! the settings are read once; the counters show that the intended fault
//! path ran.

mod common;

use common::alloc_suite::{collections, random_blocks};
use common::{child_scenario, run_child_with_env};
use spf::SpfAlloc;

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

#[test]
#[ignore = "child-process entry point, run by the other tests of this file"]
fn child_entry() {
    if child_scenario().is_none() {
        return;
    }
    collections(64, 50_000);
    random_blocks(4, 800, 16 << 20);
    let st = spf::alloc_stats().core;
    println!(
        "faults={} spf={} classic={} fatal={}",
        st.faults, st.spf, st.classic, st.fatal
    );
    // A lazy region faults whatever SPF_COMMIT says: the fault mode shows
    // even where the allocator's own blocks never fault (eager commit).
    let region = spf::Region::reserve(4 << 20, spf::RegionOptions::default()).unwrap();
    for off in (0..region.len()).step_by(4096) {
        // SAFETY: inside the live region; each first touch faults.
        unsafe { region.as_ptr().add(off).write_volatile(1) };
    }
    let lazy = spf::alloc_stats().core.since(&st);
    println!(
        "region: faults={} spf={} classic={} fatal={}",
        lazy.faults, lazy.spf, lazy.classic, lazy.fatal
    );
}

/// The suite's fault counters, then those of the lazy region touched after
/// it: `(faults, spf, classic)` each.
type Counts = (u64, u64, u64);

fn run(mode: &str, commit: &str) -> (Counts, Counts) {
    let env = [
        ("SPF_MODE", mode),
        ("SPF_COMMIT", commit),
        ("SPF_STATS", "1"),
    ];
    let out = run_child_with_env("child_entry", "suite", &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Allocator stats for spf:"),
        "SPF_STATS=1 printed nothing: {stderr}"
    );
    // The table's last row: the table is not cut short.
    assert!(
        stderr.contains("cache_given_back\n"),
        "SPF_STATS=1 printed the allocator's table cut short: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{mode}/{commit}: {out:?}");
    let counts = |prefix: &str| -> Counts {
        // libtest may print "test child_entry ... " on the same line.
        let line = stdout
            .lines()
            .filter(|l| l.contains("region: ") == (prefix == "region: "))
            .find_map(|l| l.find("faults=").map(|i| &l[i..]))
            .unwrap_or_else(|| panic!("no {prefix:?} counters in {stdout}"));
        let field = |name: &str| -> u64 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {line}"))
        };
        assert_eq!(field("fatal="), 0);
        (field("faults="), field("spf="), field("classic="))
    };
    (counts(""), counts("region: "))
}

/// 256 first touches of 64 KiB granules (4 MiB), all in `mode`.
fn assert_region_faults(region: Counts, classic_mode: bool) {
    let (faults, spf, classic) = region;
    assert!(faults >= 64, "the lazy region faulted {faults} times");
    assert_eq!(faults, spf + classic);
    if classic_mode {
        assert_eq!((spf, classic), (0, faults), "SPF_MODE=classic");
    } else {
        assert!(spf * 10 >= faults * 9, "{spf} of {faults} speculative");
    }
}

#[test]
fn classic_faults_eager_commit() {
    let ((faults, spf, classic), region) = run("classic", "eager");
    // Eager commit: the allocator's blocks are committed when handed out,
    // so the whole suite takes no fault at all.
    assert_eq!((faults, spf, classic), (0, 0, 0), "eager blocks faulted");
    assert_region_faults(region, true);
}

#[test]
fn speculative_faults_commit_on_touch() {
    let ((faults, spf, classic), region) = run("spf", "touch");
    assert!(faults > 0, "touch mode must fault large blocks in");
    assert_eq!(faults, spf + classic);
    assert!(spf * 10 >= faults * 9, "{spf} of {faults} speculative");
    assert_region_faults(region, false);
}

#[test]
fn classic_faults_commit_on_touch() {
    let ((faults, spf, classic), region) = run("classic", "touch");
    assert!(faults > 0);
    assert_eq!(spf, 0);
    assert_eq!(classic, faults);
    assert_region_faults(region, true);
}
