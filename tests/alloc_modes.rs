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
}

fn run(mode: &str, commit: &str) -> (u64, u64, u64) {
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
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{mode}/{commit}: {out:?}");
    // libtest may print "test child_entry ... " on the same line.
    let line = stdout
        .lines()
        .find_map(|l| l.find("faults=").map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no counters in {stdout}"));
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    assert_eq!(field("fatal="), 0);
    (field("faults="), field("spf="), field("classic="))
}

#[test]
fn classic_faults_eager_commit() {
    let (faults, spf, classic) = run("classic", "eager");
    assert_eq!(spf, 0);
    assert_eq!(classic, faults);
}

#[test]
fn speculative_faults_commit_on_touch() {
    let (faults, spf, classic) = run("spf", "touch");
    assert!(faults > 0, "touch mode must fault large blocks in");
    assert_eq!(faults, spf + classic);
    assert!(spf * 10 >= faults * 9, "{spf} of {faults} speculative");
}

#[test]
fn classic_faults_commit_on_touch() {
    let (faults, spf, classic) = run("classic", "touch");
    assert!(faults > 0);
    assert_eq!(spf, 0);
    assert_eq!(classic, faults);
}
