//! A Rust program with `SpfAlloc::lazy()` as its global allocator — spf
//! starts inside std's own start-up, and std's stack-overflow handler ends
//! up behind spf's — survives a `raise(SIGSEGV)` (and `SIGBUS`) as it does
//! without spf (std's handler puts the default action back and returns),
//! its lazy large blocks keep working in every thread afterwards, and the
//! next raise kills it by that signal, as it would without spf.

mod common;

use common::{child_scenario, run_child, signal_of};
use spf::SpfAlloc;

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::lazy();

/// A fresh lazy large block, touched page by page in a new thread and
/// checked in this one.
fn lazy_block_in_a_thread(seed: u8) {
    let v = std::thread::spawn(move || {
        let mut v: Vec<u8> = Vec::with_capacity(8 << 20);
        v.resize(8 << 20, seed);
        v
    })
    .join()
    .unwrap();
    assert!(v.iter().all(|&b| b == seed));
    let mut w: Vec<u8> = Vec::with_capacity(4 << 20);
    w.resize(4 << 20, seed ^ 0xFF);
    assert!(w.iter().all(|&b| b == seed ^ 0xFF));
    println!("lazy ok");
}

#[test]
#[ignore = "child-process entry point, run by the other tests of this file"]
fn child_entry() {
    let Some(scenario) = child_scenario() else {
        return;
    };
    let sig = if scenario == "SIGBUS" {
        libc::SIGBUS
    } else {
        libc::SIGSEGV
    };
    lazy_block_in_a_thread(1);
    // SAFETY: raise has no preconditions.
    unsafe { libc::raise(sig) };
    println!("after the first raise");
    lazy_block_in_a_thread(2);
    lazy_block_in_a_thread(3);
    // SAFETY: as above; std's handler left the default action behind.
    unsafe { libc::raise(sig) };
    println!("after the second raise");
}

#[test]
fn a_raised_fault_signal_is_survived_once_and_lazy_memory_keeps_working() {
    for (name, sig) in [("SIGSEGV", libc::SIGSEGV), ("SIGBUS", libc::SIGBUS)] {
        let out = run_child("child_entry", name);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(signal_of(&out), Some(sig), "{name}: {stdout}\n{stderr}");
        assert!(stdout.contains("after the first raise"), "{name}: {stdout}");
        assert_eq!(
            stdout.matches("lazy ok").count(),
            3,
            "{name}: {stdout}\n{stderr}"
        );
        assert!(
            !stdout.contains("after the second raise"),
            "{name}: {stdout}"
        );
    }
}
