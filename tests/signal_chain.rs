//! spf chains `SIGSEGV` and `SIGBUS` as the kernel delivers them: every
//! scenario runs twice in a child process, once with spf and once without
//! (the control), and the two must end the same way and print the same
//! lines. With spf, lazy memory must keep working between the steps.
//!
//! The scenarios cover the previous action of each kind — std's own
//! handler (what every Rust program has), `SIG_DFL`, `SIG_IGN`, a plain
//! `sa_handler`, an `SA_SIGINFO` handler, `SA_RESETHAND`, an `sa_mask`,
//! `SA_NODEFER`, a handler that leaves without returning, and a handler
//! installed after spf that chains back to the action it replaced — each
//! for a signal a process sent (`raise`) and for a real fault outside spf's
//! space (a `PROT_NONE` page for `SIGSEGV`, a file mapping past its end for
//! `SIGBUS`).

mod common;

use common::{child_scenario, signal_of};
use spf::{HandlerAllocGuard, Region, RegionOptions};
use std::alloc::System;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::time::Duration;

#[global_allocator]
static GLOBAL: HandlerAllocGuard<System> = HandlerAllocGuard(System);

const PAGE: usize = 4096;
const GRANULE: usize = 64 << 10;

/// The page whose access faults outside spf's space.
static TRAP: AtomicUsize = AtomicUsize::new(0);
/// The memfd behind the `SIGBUS` trap page.
static TRAP_FD: AtomicI32 = AtomicI32::new(-1);
/// The signal under test.
static SIG: AtomicI32 = AtomicI32::new(0);
/// The lazy region's base (0 without spf) and the next untouched granule.
static LAZY: AtomicUsize = AtomicUsize::new(0);
static NEXT_GRANULE: AtomicUsize = AtomicUsize::new(0);
/// The action a handler installed after spf replaced (chain-back case).
static mut REPLACED: std::mem::MaybeUninit<libc::sigaction> = std::mem::MaybeUninit::uninit();

/// Async-signal-safe output to stdout.
fn out(msg: &[u8]) {
    // SAFETY: write is async-signal-safe; `msg` is readable.
    unsafe { libc::write(1, msg.as_ptr().cast(), msg.len()) };
}

fn sig_name(sig: i32) -> &'static [u8] {
    if sig == libc::SIGBUS {
        b"SIGBUS"
    } else {
        b"SIGSEGV"
    }
}

/// Installs a handler (`handler` is a function address, `SIG_DFL` or
/// `SIG_IGN`) for `sig` with `flags` and `mask`.
fn set_action(sig: i32, handler: usize, flags: i32, mask: &[i32]) {
    // SAFETY: a zeroed sigaction filled in with a valid disposition.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = handler;
        act.sa_flags = flags;
        libc::sigemptyset(&mut act.sa_mask);
        for &m in mask {
            libc::sigaddset(&mut act.sa_mask, m);
        }
        assert_eq!(libc::sigaction(sig, &act, std::ptr::null_mut()), 0);
    }
}

/// Makes the trap page: `PROT_NONE` anonymous memory for `SIGSEGV`, a page
/// of an empty memfd for `SIGBUS`.
fn make_trap(sig: i32) {
    // SAFETY: fresh mappings; the memfd is kept open for the fix-up.
    unsafe {
        let p = if sig == libc::SIGBUS {
            let fd = libc::memfd_create(c"spf-trap".as_ptr(), 0);
            assert!(fd >= 0);
            TRAP_FD.store(fd, Ordering::Relaxed);
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        } else {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        TRAP.store(p as usize, Ordering::Relaxed);
    }
}

/// Makes the trap page accessible. Async-signal-safe.
fn fix_trap() {
    let sig = SIG.load(Ordering::Relaxed);
    // SAFETY: the trap page and its memfd are ours.
    unsafe {
        if sig == libc::SIGBUS {
            libc::ftruncate(TRAP_FD.load(Ordering::Relaxed), PAGE as libc::off_t);
        } else {
            libc::mprotect(
                TRAP.load(Ordering::Relaxed) as *mut libc::c_void,
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
            );
        }
    }
}

/// A real fault outside spf's space.
fn real_fault() {
    let p = TRAP.load(Ordering::Relaxed) as *mut u8;
    // SAFETY: none until a handler fixes the page — the fault is the point.
    unsafe { p.write_volatile(7) };
    println!("after fault");
}

fn raise() {
    // SAFETY: raise has no preconditions.
    unsafe { libc::raise(SIG.load(Ordering::Relaxed)) };
    println!("after raise");
}

/// Touches the next fresh granule of the lazy region in a new thread and
/// the one after it in this thread (without spf: prints the same lines).
fn lazy_touch() {
    let base = LAZY.load(Ordering::Relaxed);
    if base != 0 {
        let i = NEXT_GRANULE.fetch_add(2, Ordering::Relaxed);
        let touch = move |g: usize| {
            let p = (base + g * GRANULE + 100) as *mut u8;
            // SAFETY: inside the live lazy region, which is never freed.
            unsafe {
                p.write_volatile(g as u8 + 1);
                assert_eq!(p.read_volatile(), g as u8 + 1);
            }
        };
        std::thread::spawn(move || touch(i)).join().unwrap();
        touch(i + 1);
    }
    println!("lazy ok");
}

extern "C" fn plain_fixing(sig: libc::c_int) {
    out(b"plain handler: ");
    out(sig_name(sig));
    out(b"\n");
    fix_trap();
}

extern "C" fn info_fixing(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel's (or a chaining handler's) siginfo.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    out(b"info handler: ");
    out(sig_name(sig));
    if code <= 0 {
        out(b" sent by a process\n");
    } else if addr == TRAP.load(Ordering::Relaxed) {
        out(b" fault at the trap page\n");
        fix_trap();
    } else {
        out(b" fault elsewhere\n");
    }
}

extern "C" fn info_returning(sig: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    out(b"crash handler: ");
    out(sig_name(sig));
    out(b", returning\n");
}

extern "C" fn info_mask(sig: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: a zeroed sigset to fill in; pthread_sigmask only queries.
    let (usr1, own) = unsafe {
        let mut cur: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur);
        (
            libc::sigismember(&cur, libc::SIGUSR1),
            libc::sigismember(&cur, sig),
        )
    };
    out(if usr1 == 1 {
        b"mask handler: SIGUSR1 blocked\n"
    } else {
        b"mask handler: SIGUSR1 not blocked\n"
    });
    out(if own == 1 {
        b"mask handler: own signal blocked\n"
    } else {
        b"mask handler: own signal not blocked\n"
    });
    fix_trap();
}

/// The context the jumping handler leaves to, made before the fault.
static mut JUMP_TO: std::mem::MaybeUninit<libc::ucontext_t> = std::mem::MaybeUninit::uninit();

extern "C" fn info_jumping(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    out(b"jumping handler: leaving\n");
    // SAFETY: JUMP_TO was made by getcontext + makecontext before the
    // fault, with its own stack; setcontext does not return.
    unsafe { libc::setcontext((&raw const JUMP_TO).cast()) };
}

/// Where the jumping handler lands: the program goes on from here.
extern "C" fn after_jump() {
    println!("landed; in spf's handler: {}", spf::in_fault_handler());
    // An allocation: debug builds abort if the thread were still marked.
    let v = std::hint::black_box(vec![1u8; 100]);
    assert_eq!(v.len(), 100);
    lazy_touch();
    println!("survived");
    // SAFETY: _exit ends the process; stdout is line-buffered and flushed.
    unsafe { libc::_exit(0) };
}

/// Installed after spf: reports, then chains to the action it replaced,
/// as crash reporters and language runtimes do.
extern "C" fn chaining_back(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    out(b"late handler: chaining back\n");
    // SAFETY: REPLACED was written before this handler was installed.
    let old = unsafe { (&raw const REPLACED).cast::<libc::sigaction>().read() };
    if old.sa_sigaction == libc::SIG_DFL || old.sa_sigaction == libc::SIG_IGN {
        // SAFETY: restoring a disposition sigaction returned.
        unsafe { libc::sigaction(sig, &old, std::ptr::null_mut()) };
    } else if old.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: with SA_SIGINFO the field holds a three-argument handler.
        let h: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(old.sa_sigaction) };
        h(sig, info, ctx);
    } else {
        // SAFETY: without SA_SIGINFO the field holds a one-argument handler.
        let h: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(old.sa_sigaction) };
        h(sig);
    }
}

/// Installed after spf: reports, puts back the action it replaced, and
/// lets that action have the signal — returning to a fault, raising a sent
/// signal again — as crash reporters (Breakpad, Crashpad) do.
extern "C" fn restoring_back(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    out(b"late handler: restoring the old action\n");
    // SAFETY: REPLACED was written before this handler was installed; the
    // kernel's siginfo.
    unsafe {
        libc::sigaction(sig, (&raw const REPLACED).cast(), std::ptr::null_mut());
        if (*info).si_code <= 0 {
            libc::raise(sig);
        }
    }
}

/// The child: `SPF_TEST_CHILD=scenario:signal:spf|none`.
#[test]
#[ignore = "child-process entry point, run by the other tests of this file"]
fn child_entry() {
    let Some(arg) = child_scenario() else {
        return;
    };
    let mut parts = arg.split(':');
    let (scenario, sig, with_spf) = (
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().parse::<i32>().unwrap(),
        parts.next() == Some("spf"),
    );
    SIG.store(sig, Ordering::Relaxed);
    make_trap(sig);
    let handler = |f: usize, flags| set_action(sig, f, flags, &[]);
    // The previous action, set before spf starts (std's handler is there
    // already: Rust's runtime installs it for SIGSEGV and SIGBUS).
    match scenario.as_str() {
        "raise_std" | "fault_std" | "chain_back_raise" | "chain_back_fault"
        | "restore_back_raise" | "restore_back_fault" => {}
        "raise_dfl" | "fault_dfl" => handler(libc::SIG_DFL, 0),
        "raise_ign" | "fault_ign" => handler(libc::SIG_IGN, 0),
        "raise_info" | "fault_info" => handler(info_fixing as *const () as usize, libc::SA_SIGINFO),
        "fault_plain" => handler(plain_fixing as *const () as usize, 0),
        "fault_resethand" => handler(
            info_returning as *const () as usize,
            libc::SA_SIGINFO | libc::SA_RESETHAND,
        ),
        "fault_mask" => set_action(
            sig,
            info_mask as *const () as usize,
            libc::SA_SIGINFO,
            &[libc::SIGUSR1],
        ),
        "fault_nodefer" => set_action(
            sig,
            info_mask as *const () as usize,
            libc::SA_SIGINFO | libc::SA_NODEFER,
            &[libc::SIGUSR1],
        ),
        "fault_jump" => handler(info_jumping as *const () as usize, libc::SA_SIGINFO),
        other => panic!("unknown scenario {other}"),
    }
    if with_spf {
        spf::init().unwrap();
        let r = Region::reserve(64 * GRANULE, RegionOptions::default().granule(GRANULE)).unwrap();
        LAZY.store(r.as_ptr() as usize, Ordering::Relaxed);
        std::mem::forget(r);
    }
    if scenario.starts_with("chain_back") || scenario.starts_with("restore_back") {
        let late = if scenario.starts_with("chain_back") {
            chaining_back as *const () as usize
        } else {
            restoring_back as *const () as usize
        };
        // SAFETY: REPLACED is written once, before the handler that reads
        // it is installed.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = late;
            act.sa_flags = libc::SA_SIGINFO;
            assert_eq!(libc::sigaction(sig, &act, (&raw mut REPLACED).cast()), 0);
        }
        if with_spf {
            // spf takes the first place back when it next makes a region.
            let r = Region::reserve(GRANULE, RegionOptions::default()).unwrap();
            std::mem::forget(r);
        }
    }
    if scenario == "fault_jump" {
        let stack = vec![0u8; 1 << 20].leak();
        // SAFETY: JUMP_TO is made here, before the fault that uses it; its
        // stack is leaked, so it outlives the jump.
        unsafe {
            let ctx = (&raw mut JUMP_TO).cast::<libc::ucontext_t>();
            assert_eq!(libc::getcontext(ctx), 0);
            (*ctx).uc_stack.ss_sp = stack.as_mut_ptr().cast();
            (*ctx).uc_stack.ss_size = stack.len();
            (*ctx).uc_link = std::ptr::null_mut();
            libc::makecontext(ctx, after_jump, 0);
        }
    }
    lazy_touch();
    match scenario.as_str() {
        "raise_std" | "raise_ign" | "raise_info" | "chain_back_raise" | "restore_back_raise" => {
            // A process sends the signal: handled as without spf, twice
            // (std's handler leaves SIG_DFL behind: the second kills).
            raise();
            lazy_touch();
            raise();
            lazy_touch();
            real_fault();
        }
        "raise_dfl" => raise(),
        "fault_info" | "fault_plain" | "fault_mask" | "fault_nodefer" => {
            real_fault();
            lazy_touch();
            // Fixed: a fresh trap page faults again.
            make_trap(sig);
            real_fault();
            lazy_touch();
        }
        _ => real_fault(),
    }
    println!("survived");
}

/// How a child ended and what it printed on stdout (the harness's own
/// lines left out).
#[derive(Debug, PartialEq)]
struct Ending {
    how: String,
    lines: Vec<String>,
}

fn run(scenario: &str, sig: i32, with_spf: bool) -> (Ending, String) {
    let arg = format!("{scenario}:{sig}:{}", if with_spf { "spf" } else { "none" });
    // A handler that returns to a fault that was not fixed loops for ever
    // (the kernel does the same): such a child is ended, and says so.
    let (output, hung) = common::run_child_until("child_entry", &arg, &[], Duration::from_secs(20));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let how = if hung {
        "hung (killed after 20 s)".to_owned()
    } else if let Some(s) = signal_of(&output) {
        format!("killed by signal {s}")
    } else {
        format!("exit {:?}", output.status.code())
    };
    // The harness prints "test child_entry ... " before the child's first
    // line, and its own summary after.
    let lines = stdout
        .lines()
        .map(|l| l.trim_start_matches("test child_entry ... "))
        .filter(|l| {
            !l.is_empty()
                && *l != "ok"
                && !l.starts_with("running ")
                && !l.contains("test result:")
                && !l.contains("finished in")
        })
        .take(40)
        .map(str::to_owned)
        .collect();
    (
        Ending { how, lines },
        format!("{arg}\nstdout:\n{stdout}\nstderr:\n{stderr}"),
    )
}

/// Runs `scenario` with and without spf for both signals and checks that
/// both end as `expect` says and print the same lines.
fn same_as_without_spf(scenario: &str, expect: impl Fn(i32) -> &'static str, lines: &[&str]) {
    for sig in [libc::SIGSEGV, libc::SIGBUS] {
        let (control, control_log) = run(scenario, sig, false);
        let (with_spf, log) = run(scenario, sig, true);
        let name = if sig == libc::SIGBUS {
            "SIGBUS"
        } else {
            "SIGSEGV"
        };
        let expected = expect(sig);
        assert_eq!(
            control.how, expected,
            "{scenario} {name}: the control run ended otherwise\n{control_log}"
        );
        for l in lines {
            let l = l.replace("{sig}", name);
            assert!(
                control.lines.contains(&l),
                "{scenario} {name}: the control printed no {l:?}\n{control_log}"
            );
        }
        assert_eq!(
            with_spf, control,
            "{scenario} {name}: spf changed the outcome\n{log}\ncontrol: {control_log}"
        );
    }
}

fn killed(sig: i32) -> &'static str {
    if sig == libc::SIGBUS {
        "killed by signal 7"
    } else {
        "killed by signal 11"
    }
}

fn survives(_: i32) -> &'static str {
    "exit Some(0)"
}

// Item: a signal a process sent gets what it would get without spf, and
// lazy memory keeps working after it.

#[test]
fn a_raised_signal_with_stds_handler_is_survived_once_and_lazy_memory_still_works() {
    // std's handler puts SIG_DFL back and returns: the first raise is
    // survived, the second kills.
    same_as_without_spf("raise_std", killed, &["after raise", "lazy ok"]);
}

#[test]
fn a_raised_signal_with_the_default_action_kills() {
    same_as_without_spf("raise_dfl", killed, &["lazy ok"]);
}

#[test]
fn a_raised_signal_that_is_ignored_is_ignored() {
    // Then the real fault kills: the kernel forces a fault's default.
    same_as_without_spf("raise_ign", killed, &["after raise", "lazy ok"]);
}

#[test]
fn a_raised_signal_reaches_the_programs_handler_every_time() {
    same_as_without_spf(
        "raise_info",
        survives,
        &["info handler: {sig} sent by a process", "after fault"],
    );
}

// Item: a real fault outside spf's space is chained as the kernel would
// deliver it.

#[test]
fn a_fault_with_stds_handler_kills() {
    same_as_without_spf("fault_std", killed, &["lazy ok"]);
}

#[test]
fn a_fault_with_the_default_action_kills() {
    same_as_without_spf("fault_dfl", killed, &["lazy ok"]);
}

#[test]
fn an_ignored_fault_kills() {
    same_as_without_spf("fault_ign", killed, &["lazy ok"]);
}

#[test]
fn a_plain_handler_gets_the_signal_number() {
    same_as_without_spf(
        "fault_plain",
        survives,
        &["plain handler: {sig}", "after fault"],
    );
}

#[test]
fn an_siginfo_handler_gets_the_fault_address() {
    same_as_without_spf(
        "fault_info",
        survives,
        &["info handler: {sig} fault at the trap page", "after fault"],
    );
}

#[test]
fn a_resethand_handler_that_returns_runs_once_then_the_default_kills() {
    same_as_without_spf(
        "fault_resethand",
        killed,
        &["crash handler: {sig}, returning"],
    );
}

#[test]
fn the_previous_handlers_mask_is_applied() {
    same_as_without_spf(
        "fault_mask",
        survives,
        &[
            "mask handler: SIGUSR1 blocked",
            "mask handler: own signal blocked",
        ],
    );
}

#[test]
fn nodefer_leaves_the_signal_unblocked() {
    same_as_without_spf(
        "fault_nodefer",
        survives,
        &[
            "mask handler: SIGUSR1 blocked",
            "mask handler: own signal not blocked",
        ],
    );
}

#[test]
fn a_handler_that_leaves_without_returning_leaves_spf_working() {
    same_as_without_spf(
        "fault_jump",
        survives,
        &[
            "jumping handler: leaving",
            "landed; in spf's handler: false",
            "lazy ok",
        ],
    );
}

#[test]
fn a_handler_installed_after_spf_chains_back_through_it_on_a_raise() {
    same_as_without_spf(
        "chain_back_raise",
        killed,
        &["late handler: chaining back", "after raise", "lazy ok"],
    );
}

#[test]
fn a_handler_installed_after_spf_chains_back_through_it_on_a_fault() {
    same_as_without_spf("chain_back_fault", killed, &["late handler: chaining back"]);
}

#[test]
fn a_handler_installed_after_spf_that_restores_the_old_action_is_left_on_a_raise() {
    same_as_without_spf(
        "restore_back_raise",
        killed,
        &[
            "late handler: restoring the old action",
            "after raise",
            "lazy ok",
        ],
    );
}

#[test]
fn a_handler_installed_after_spf_that_restores_the_old_action_is_left_on_a_fault() {
    same_as_without_spf(
        "restore_back_fault",
        killed,
        &["late handler: restoring the old action"],
    );
}
