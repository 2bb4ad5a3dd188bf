//! Faults that are not ours reach the previous handler exactly as if spf
//! were not there, and real faults inside our space end the process with a
//! message naming the address and what is there. Each scenario runs in a
//! child process.

mod common;

use common::{child_scenario, printed_addr, run_child, signal_of};
use spf::{HandlerAllocGuard, Protection, Region, RegionOptions};
use std::alloc::System;
use std::process::Output;

#[global_allocator]
static GLOBAL: HandlerAllocGuard<System> = HandlerAllocGuard(System);

#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let buf = std::hint::black_box([depth; 64]);
    if depth == u64::MAX {
        return 0;
    }
    recurse(depth + 1) + buf[depth as usize % 64]
}

fn max_map_count() -> usize {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65_530)
}

/// The child side of every scenario.
#[test]
#[ignore = "child-process entry point, run by the other tests of this file"]
fn child_entry() {
    let Some(scenario) = child_scenario() else {
        return;
    };
    // Our handler goes in first, after std's stack-overflow handler.
    spf::init().unwrap();
    match scenario.as_str() {
        "null" => {
            let p = std::hint::black_box(core::ptr::null_mut::<u8>());
            // SAFETY: none — the null dereference is the point.
            unsafe { p.write_volatile(1) };
        }
        "read_only_write" => {
            let r = Region::reserve(1 << 20, RegionOptions::default()).unwrap();
            // SAFETY: a live region.
            unsafe { r.as_ptr().write(1) };
            r.protect(Protection::ReadOnly).unwrap();
            eprintln!("region at {:#x}", r.as_ptr() as usize);
            // SAFETY: none — the forbidden write is the point.
            unsafe { r.as_ptr().add(70_000).write_volatile(2) };
        }
        "destroyed" => {
            let r = Region::reserve(1 << 20, RegionOptions::default()).unwrap();
            let p = r.as_ptr();
            // SAFETY: a live region.
            unsafe { p.write(1) };
            drop(r);
            eprintln!("region at {:#x}", p as usize);
            // SAFETY: none — touching freed memory is the point.
            unsafe { p.add(4096).write_volatile(2) };
        }
        "max_map_count" => {
            // Commit every other page: each commit splits a kernel VMA until
            // the kernel's map count runs out and mprotect says ENOMEM.
            let pages = 2 * (max_map_count() + 1_000);
            let r = Region::reserve(pages * 4096, RegionOptions::default().granule(4096)).unwrap();
            for p in (0..pages).step_by(2) {
                // SAFETY: inside the live region.
                unsafe { r.as_ptr().add(p * 4096).write_volatile(1) };
            }
        }
        "displaced" => {
            // Someone installs their own handler over spf's. spf takes the
            // first place back when it next creates a lazy region, and
            // chains foreign faults to that handler.
            extern "C" fn custom(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
                let msg = b"custom handler ran\n";
                // SAFETY: write and _exit are async-signal-safe.
                unsafe {
                    libc::write(2, msg.as_ptr().cast(), msg.len());
                    libc::_exit(42);
                }
            }
            // SAFETY: a zeroed sigaction filled in with a valid handler.
            unsafe {
                let mut act: libc::sigaction = std::mem::zeroed();
                act.sa_sigaction = custom as extern "C" fn(_, _, _) as usize;
                act.sa_flags = libc::SA_SIGINFO;
                libc::sigaction(libc::SIGSEGV, &act, std::ptr::null_mut());
            }
            let r = Region::reserve(1 << 20, RegionOptions::default()).unwrap();
            // SAFETY: a live lazy region.
            unsafe { r.as_ptr().add(5000).write_volatile(7) };
            eprintln!("lazy region committed: {}", r.committed());
            let p = std::hint::black_box(core::ptr::null_mut::<u8>());
            // SAFETY: none — the null dereference is the point.
            unsafe { p.write_volatile(1) };
        }
        "stack_overflow" => {
            std::thread::Builder::new()
                .name("deep".into())
                .spawn(|| println!("{}", recurse(0)))
                .unwrap()
                .join()
                .unwrap();
        }
        other => panic!("unknown scenario {other}"),
    }
    println!("survived");
}

fn child(scenario: &str) -> (Output, String) {
    let out = run_child("child_entry", scenario);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("survived"),
        "{scenario}: survived"
    );
    (out, stderr)
}

#[test]
fn a_null_dereference_dies_by_sigsegv_without_an_spf_message() {
    let (out, stderr) = child("null");
    assert_eq!(signal_of(&out), Some(libc::SIGSEGV), "{stderr}");
    assert!(!stderr.contains("spf:"), "{stderr}");
}

#[test]
fn a_write_to_a_read_only_region_names_the_region() {
    let (out, stderr) = child("read_only_write");
    assert_eq!(signal_of(&out), Some(libc::SIGSEGV), "{stderr}");
    let (start, base) = printed_addr(&stderr, "region at ");
    let addr = base + 70_000;
    let expected =
        format!("spf: fatal write at {addr:#x}: write to the read-only region [{start}, ");
    assert!(stderr.contains(&expected), "{stderr}");
}

#[test]
fn touching_a_destroyed_region_is_reported() {
    let (out, stderr) = child("destroyed");
    assert_eq!(signal_of(&out), Some(libc::SIGSEGV), "{stderr}");
    let addr = printed_addr(&stderr, "region at ").1 + 4096;
    let expected = format!(
        "spf: fatal write at {addr:#x}: the address is in spf's reservation but in no live region"
    );
    assert!(stderr.contains(&expected), "{stderr}");
}

#[test]
fn a_stack_overflow_still_gets_rusts_message() {
    let (out, stderr) = child("stack_overflow");
    // Newer std prints the thread id too: "thread 'deep' (1234) has overflowed its stack".
    let line = stderr
        .lines()
        .find(|l| l.contains("has overflowed its stack"));
    assert!(
        line.is_some_and(|l| l.starts_with("thread 'deep'")),
        "{stderr}"
    );
    assert_eq!(signal_of(&out), Some(libc::SIGABRT), "{stderr}");
}

/// The most `vm.max_map_count` the test exhausts as it is: past it, the
/// child would need millions of faults and gigabytes of page tables.
const MAP_COUNT_TESTABLE: usize = 1 << 20;

/// Puts `vm.max_map_count` back when dropped (the test lowered it).
struct RestoreMapCount(usize);

impl Drop for RestoreMapCount {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write("/proc/sys/vm/max_map_count", self.0.to_string()) {
            eprintln!(
                "!!! could not restore vm.max_map_count to {}: {e}; set it back by hand",
                self.0
            );
        }
    }
}

#[test]
fn running_out_of_kernel_mappings_ends_with_a_clear_message() {
    let _lowered = if max_map_count() > MAP_COUNT_TESTABLE {
        // The limit is one system-wide setting, with no per-process value:
        // as root, lower it for the child's run (the default 65530) and
        // put it back after; anything else cannot exhaust it.
        let was = max_map_count();
        match std::fs::write("/proc/sys/vm/max_map_count", "65530") {
            Ok(()) => {
                eprintln!("vm.max_map_count lowered from {was} to 65530 for this test");
                Some(RestoreMapCount(was))
            }
            Err(e) => {
                let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
                let why = format!(
                    "vm.max_map_count is {was} here (too many faults to exhaust) and it cannot \
                     be lowered for the test ({e}; it needs root)"
                );
                assert!(!ci, "{why}; CI (CI=true) requires this test to run");
                eprintln!(
                    "\n!!!!!!!!\n!!! NOT RUN: {why}.\n!!! This check did not run. CI (CI=true) \
                     fails instead.\n!!!!!!!!\n"
                );
                return;
            }
        }
    } else {
        None
    };
    // The wall is mprotect's: every other backend commits without splitting
    // a kernel mapping (tests/backends.rs shows 100,000 such commits).
    let out = common::run_child_with_env(
        "child_entry",
        "max_map_count",
        &[("SPF_BACKEND", "mprotect")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(signal_of(&out), Some(libc::SIGSEGV), "{stderr}");
    assert!(stderr.contains("mprotect failed with ENOMEM"), "{stderr}");
    assert!(stderr.contains("vm.max_map_count"), "{stderr}");
}

#[test]
fn a_displaced_handler_is_reinstalled_and_chained_to() {
    let out = run_child("child_entry", "displaced");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lazy region committed: 65536"), "{stderr}");
    assert!(stderr.contains("custom handler ran"), "{stderr}");
    assert_eq!(out.status.code(), Some(42), "{stderr}");
}
