//! A nested fault — a signal handler that interrupted spf's fault handler
//! touches lazy memory — is fatal only when the granule it needs may be
//! held by the fault it interrupted (waiting would never end). A granule
//! that *another* thread is committing is waited for, as any fault does.
//!
//! Staged with the commit hold of `fault-injection`: thread B's commit of
//! granule H and thread A's commit of granule G both wait at the hold with
//! their granules locked `Committing`; a `SIGUSR1` sent to A runs a handler
//! on top of A's fault that touches H (nested, owned by B) or G (nested,
//! owned by A's own interrupted fault); then the hold is lifted.
//! Each scenario runs in a child process.

mod common;

use common::{child_scenario, run_child, signal_of};
use spf::testing::inject;
use spf::{HandlerAllocGuard, Region, RegionOptions};
use std::alloc::System;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

#[global_allocator]
static GLOBAL: HandlerAllocGuard<System> = HandlerAllocGuard(System);

const GRANULE: usize = 64 << 10;

/// Where the `SIGUSR1` handler writes, and what it reports.
static TARGET: AtomicUsize = AtomicUsize::new(0);
static STAGE: AtomicU8 = AtomicU8::new(0);
const TOUCHING: u8 = 1;
const TOUCHED: u8 = 2;

extern "C" fn on_usr1(_: libc::c_int) {
    STAGE.store(TOUCHING, Ordering::SeqCst);
    let p = TARGET.load(Ordering::SeqCst) as *mut u8;
    // SAFETY: inside the test's live lazy region.
    unsafe { p.write_volatile(0x5A) };
    STAGE.store(TOUCHED, Ordering::SeqCst);
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..20_000 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("timed out waiting for {what}");
}

#[test]
#[ignore = "child-process entry point, run by the other tests of this file"]
fn child_entry() {
    let Some(scenario) = child_scenario() else {
        return;
    };
    let r = Region::reserve(16 * GRANULE, RegionOptions::default().granule(GRANULE)).unwrap();
    let base = r.as_ptr() as usize;
    let (g, h) = (base + 2 * GRANULE, base + 9 * GRANULE);
    TARGET.store(
        match scenario.as_str() {
            "other_thread" => h + 123,
            "own_fault" => g + 4096,
            other => panic!("unknown scenario {other}"),
        },
        Ordering::SeqCst,
    );
    // SAFETY: a zeroed sigaction filled in with a valid handler.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_usr1 as *const () as usize;
        assert_eq!(
            libc::sigaction(libc::SIGUSR1, &act, std::ptr::null_mut()),
            0
        );
    }
    inject::hold_commits(true);
    let b = std::thread::spawn(move || {
        // SAFETY: inside the live region.
        unsafe { (h as *mut u8).write_volatile(0xB0) };
    });
    wait_until("B's commit to be held", || inject::held_commits() == 1);
    let (tx, rx) = std::sync::mpsc::channel();
    let a = std::thread::spawn(move || {
        // Three signal frames stack up on A's alternate stack (its fault,
        // SIGUSR1, the nested fault): std's is too small for that where
        // the kernel's frame is large (AMX: ~12 KiB each).
        let stack = vec![0u8; 1 << 20].leak();
        // SAFETY: a zeroed stack_t filled in with a leaked buffer, which
        // outlives the thread.
        unsafe {
            let mut ss: libc::stack_t = std::mem::zeroed();
            ss.ss_sp = stack.as_mut_ptr().cast();
            ss.ss_size = stack.len();
            assert_eq!(libc::sigaltstack(&ss, std::ptr::null_mut()), 0);
        }
        // SAFETY: pthread_self has no preconditions.
        tx.send(unsafe { libc::pthread_self() } as usize).unwrap();
        // SAFETY: inside the live region.
        unsafe { (g as *mut u8).write_volatile(0xA0) };
    });
    let a_id = rx.recv().unwrap();
    wait_until("A's commit to be held", || inject::held_commits() == 2);
    // SAFETY: A is alive: its fault is held.
    assert_eq!(
        unsafe { libc::pthread_kill(a_id as libc::pthread_t, libc::SIGUSR1) },
        0
    );
    wait_until("the nested touch", || {
        STAGE.load(Ordering::SeqCst) >= TOUCHING
    });
    // The nested fault now waits for B (or has been judged fatal).
    std::thread::sleep(Duration::from_millis(100));
    println!(
        "before the hold is lifted: touched = {}",
        STAGE.load(Ordering::SeqCst) == TOUCHED
    );
    inject::hold_commits(false);
    a.join().unwrap();
    b.join().unwrap();
    println!(
        "after: touched = {}",
        STAGE.load(Ordering::SeqCst) == TOUCHED
    );
    // SAFETY: inside the live region, all committed now.
    unsafe {
        assert_eq!((g as *const u8).read_volatile(), 0xA0);
        assert_eq!((h as *const u8).read_volatile(), 0xB0);
        assert_eq!((h as *const u8).add(123).read_volatile(), 0x5A);
    }
    spf::check_invariants().unwrap();
    println!("survived");
}

#[test]
fn a_nested_fault_waits_for_a_granule_another_thread_commits() {
    let out = run_child("child_entry", "other_thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // B's commit was held while the nested fault needed H: it waited.
    assert!(
        stdout.contains("before the hold is lifted: touched = false"),
        "{stdout}"
    );
    assert!(stdout.contains("after: touched = true"), "{stdout}");
    assert!(stdout.contains("survived"), "{stdout}");
}

#[test]
fn a_nested_fault_on_the_granule_its_own_interrupted_fault_holds_is_fatal() {
    let out = run_child("child_entry", "own_fault");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(signal_of(&out), Some(libc::SIGSEGV), "{stderr}");
    assert!(
        stderr.contains("a signal handler touched lazy memory that the fault it interrupted"),
        "{stderr}"
    );
}
