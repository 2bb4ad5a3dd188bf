//! A thread that blocks the fault signals (`sigfillset` + `pthread_sigmask`,
//! as servers do in worker threads) cannot take spf's lazy commits: the
//! kernel forces a blocked synchronous fault signal to its default action
//! and kills the process before spf's handler can run. These tests pin that
//! down (each in a child process), show the remedies (committing first,
//! eager memory), and check `spf::check_signal_mask`, which tells a thread
//! so before it touches anything.

mod common;

use common::{child_scenario, run_child, signal_of};
use spf::{Backend, HandlerAllocGuard, Region, RegionOptions, SpfAlloc};
use std::alloc::{GlobalAlloc, Layout, System};

#[global_allocator]
static GLOBAL: HandlerAllocGuard<System> = HandlerAllocGuard(System);

/// Blocks every signal on this thread, as a server's worker does.
fn block_all() {
    // SAFETY: a zeroed sigset filled by sigfillset; pthread_sigmask is
    // given valid pointers.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        assert_eq!(
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut()),
            0
        );
    }
}

/// The signal a lazy first touch raises under the backend in use.
fn fault_signal() -> i32 {
    if spf::backend() == Some(Backend::Uffd) {
        libc::SIGBUS
    } else {
        libc::SIGSEGV
    }
}

#[test]
#[ignore = "child-process entry point, run by the other tests of this file"]
fn child_entry() {
    let Some(scenario) = child_scenario() else {
        return;
    };
    let r = Region::reserve(4 << 20, RegionOptions::default()).unwrap();
    let p = r.as_ptr() as usize;
    println!("fault signal {}", fault_signal());
    println!(
        "main thread: {:?}",
        spf::check_signal_mask().map_err(|e| e.to_string())
    );
    std::thread::spawn(move || {
        block_all();
        match spf::check_signal_mask() {
            Ok(()) => println!("blocked thread: Ok"),
            Err(e) => println!("blocked thread: {e}"),
        }
        let p = p as *mut u8;
        match scenario.as_str() {
            "touch" => {
                // SAFETY: inside the live region — the touch is the point.
                unsafe { p.write_volatile(1) };
            }
            "commit_first" => {
                r.commit(0..1 << 20).unwrap();
                // SAFETY: inside the live region, committed.
                unsafe { p.add(70_000).write_volatile(1) };
            }
            "eager_alloc" => {
                // SpfAlloc::new() commits large blocks before returning them.
                let a = SpfAlloc::new();
                let layout = Layout::from_size_align(8 << 20, 4096).unwrap();
                // SAFETY: a valid non-zero layout; freed below.
                unsafe {
                    let q = a.alloc(layout);
                    assert!(!q.is_null());
                    q.add(5 << 20).write_volatile(1);
                    a.dealloc(q, layout);
                }
            }
            other => panic!("unknown scenario {other}"),
        }
        println!("touched");
    })
    .join()
    .unwrap();
    println!("survived");
}

#[test]
fn a_thread_that_blocks_fault_signals_is_killed_by_a_lazy_first_touch() {
    let out = run_child("child_entry", "touch");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let sig: i32 = stdout
        .split("fault signal ")
        .nth(1)
        .and_then(|s| s.lines().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    // The kernel's doing, before any handler runs: no spf message.
    assert_eq!(signal_of(&out), Some(sig), "{stdout}\n{stderr}");
    assert!(!stdout.contains("touched"), "{stdout}");
    assert!(!stderr.contains("spf: fatal"), "{stderr}");
}

#[test]
fn check_signal_mask_names_the_blocked_signal_and_the_remedy() {
    let out = run_child("child_entry", "commit_first");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("main thread: Ok(())"), "{stdout}\n{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("blocked thread: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.contains("this thread blocks SIG"), "{line}");
    assert!(line.contains("pthread_sigmask"), "{line}");
    assert!(line.contains("commit"), "{line}");
}

#[test]
fn a_blocking_thread_works_on_committed_and_eager_memory() {
    for scenario in ["commit_first", "eager_alloc"] {
        let out = run_child("child_entry", scenario);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{scenario}: {stdout}\n{stderr}");
        assert!(stdout.contains("touched"), "{scenario}: {stdout}");
    }
}
