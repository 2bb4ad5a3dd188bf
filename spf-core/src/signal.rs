//! The fault signal handler: installed once for `SIGSEGV` (and for `SIGBUS`
//! under the userfaultfd backend, which reports missing pages with it),
//! chained to the handler it replaced, and a thin layer over
//! [`fault::handle`](crate::fault::handle).
//!
//! Classify, then act: `fault::handle` returns an outcome, and the handler
//! matches on it —
//! - `NotOurs`: call the previous handler exactly as the kernel would have
//!   (see [`chain`]); Rust's stack-overflow report still appears;
//! - `Handled`: return, and the access restarts;
//! - `Fatal`: write a message naming the address and what is there, restore
//!   the default action and return, so the access faults again and the
//!   process ends by `SIGSEGV` as it would without us (a fatal `SIGBUS` of
//!   the userfaultfd zone ends it by `SIGSEGV` too: the same bad access
//!   kills the same way under every backend).
//!
//! A signal that a process sent (`kill`, `raise`, `sigqueue`: `si_code <=
//! 0`) is no fault, whatever its `siginfo` seems to say: it goes to the
//! previous handler untouched. A `SIGBUS` outside the userfaultfd zone (a
//! file mapping read past its end, say) is chained exactly like a foreign
//! `SIGSEGV`: only the address tells the two apart, as `si_code` is
//! `BUS_ADRERR` for both.
//!
//! The handler re-asserts itself: a program (or std's runtime, when the
//! allocator's first allocation happens inside std's own start-up, between
//! its check for a default `SIGSEGV` action and its `sigaction`) may install
//! another handler over ours. Before creating a lazy region or decommitting,
//! spf checks and, if displaced, installs itself again, chaining to whoever
//! displaced it — as Android's libsigchain does.
//!
//! Invariant H1: per signal, the previous action lives in one of two slots;
//! a new one is written to the slot not in use, then published by storing
//! its index (Release); the handler reads the index (Acquire), then that
//! slot.
//! Installs are serialised by the space lock (or happen before the space is
//! published), so a slot is never written while it is the current one.

use crate::backend::{self, Backend};
use crate::error::Error;
use crate::fault::{self, AccessKind, FatalFault, Outcome, Trap};
use crate::handler_guard::HandlerScope;
use crate::report::report;
use crate::space::Space;
use crate::sys::{self, PreviousHandler};
use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The previous actions: `[signal][slot]`, signal 0 `SIGSEGV`, 1 `SIGBUS`.
struct Previous([[UnsafeCell<MaybeUninit<sys::SigAction>>; 2]; 2]);
// SAFETY: H1 — a slot is written only while it is not the published one.
unsafe impl Sync for Previous {}

static PREVIOUS: Previous = Previous(
    [const {
        [
            UnsafeCell::new(MaybeUninit::uninit()),
            UnsafeCell::new(MaybeUninit::uninit()),
        ]
    }; 2],
);
/// Per signal — 0: none yet; 1 or 2: slot 0 or 1 holds the previous action.
static PREVIOUS_SLOT: [AtomicUsize; 2] = [const { AtomicUsize::new(0) }; 2];

fn index_of(sig: libc::c_int) -> usize {
    usize::from(sig == libc::SIGBUS)
}

/// The signals spf handles with this backend.
fn handled_signals() -> &'static [libc::c_int] {
    if backend::active() == Backend::Uffd {
        &[libc::SIGSEGV, libc::SIGBUS]
    } else {
        &[libc::SIGSEGV]
    }
}

/// Installs the handler for every signal the backend raises, remembering
/// the actions it replaces.
pub(crate) fn install() -> Result<(), Error> {
    for &sig in handled_signals() {
        install_one(sig)?;
    }
    Ok(())
}

fn install_one(sig: libc::c_int) -> Result<(), Error> {
    let old = sys::install_handler(sig, on_fault).map_err(|errno| Error::System {
        call: "sigaction",
        errno,
    })?;
    let i = index_of(sig);
    let next = match PREVIOUS_SLOT[i].load(Ordering::Relaxed) {
        1 => 1,
        _ => 0,
    };
    // SAFETY: H1 — slot `next` is not the published one.
    unsafe { (*PREVIOUS.0[i][next].get()).write(old) };
    PREVIOUS_SLOT[i].store(next + 1, Ordering::Release);
    Ok(())
}

/// Installs the handler again if someone replaced it. Caller holds the
/// space lock (H1). The check costs a system call. Displacement happens in
/// practice at start-up (std's runtime installs its stack-overflow handler
/// over ours when our first allocation came inside its initialisation), so
/// the first 64 calls always check; after that a check runs at most every
/// 10 ms, and a handler installed over ours is noticed by the first region
/// made after that.
pub(crate) fn ensure_installed() {
    const ALWAYS_FIRST: u64 = 64;
    static CHECKS: AtomicU64 = AtomicU64::new(0);
    static NEXT_CHECK_NS: AtomicU64 = AtomicU64::new(0);
    let now = sys::monotonic_ns();
    // Relaxed: both words are only hints for how often to check; the
    // caller's lock orders the reinstallation itself (H1).
    let early = CHECKS.fetch_add(1, Ordering::Relaxed) < ALWAYS_FIRST;
    if !early && now < NEXT_CHECK_NS.load(Ordering::Relaxed) {
        return;
    }
    NEXT_CHECK_NS.store(now + 10_000_000, Ordering::Relaxed);
    for &sig in handled_signals() {
        if sys::current_handler(sig) != on_fault as sys::SigInfoHandler as usize {
            let _ = install_one(sig);
        }
    }
}

extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // The interrupted code may be between a failing call and its read of
    // errno; our own calls (futex, madvise, mprotect, ioctl) must not
    // change it.
    let _errno = sys::ErrnoGuard::save();
    // SAFETY: the kernel passes a valid siginfo to a SA_SIGINFO handler.
    if unsafe { sys::sent_by_process(info) } {
        chain(sig, info, context);
        return;
    }
    // SAFETY: the kernel passes a valid siginfo and ucontext to a SA_SIGINFO handler.
    let (addr, write) = unsafe { (sys::fault_address(info), sys::fault_is_write(context)) };
    let access = match write {
        Some(true) => AccessKind::Write,
        Some(false) => AccessKind::Read,
        None => AccessKind::Unknown,
    };
    let trap = if sig == libc::SIGBUS {
        Trap::Missing
    } else {
        Trap::Protection
    };
    // The "in the handler" mark covers spf's own work only, not the
    // chained handler: that one may leave by `siglongjmp` (a program's own
    // handler recovering from its fault) and never return here, which
    // would leave the thread marked for good — every later allocation
    // refused in debug builds, and a later fault that meets a granule
    // another thread is committing taken for a nested one (fatal).
    let outcome = {
        let _scope = HandlerScope::enter();
        match Space::ready() {
            Some(space) => fault::handle(space, addr, access, trap),
            None => Outcome::NotOurs,
        }
    };
    match outcome {
        Outcome::Handled => {}
        Outcome::NotOurs => chain(sig, info, context),
        Outcome::Fatal(why) => {
            report_fatal(addr, access, why);
            sys::default_handler(libc::SIGSEGV);
            if sig != libc::SIGSEGV {
                // A missing page re-executed would raise SIGBUS again: end
                // the process by SIGSEGV, as the same access does elsewhere.
                sys::raise(libc::SIGSEGV);
            }
        }
    }
}

/// Hands a foreign fault to the previous handler, covering the three cases:
/// an `SA_SIGINFO` handler, a one-argument handler, and `SIG_DFL`/`SIG_IGN`
/// (restore it and return: the access re-executes and the kernel acts).
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let i = index_of(sig);
    let slot = PREVIOUS_SLOT[i].load(Ordering::Acquire);
    if slot == 0 {
        sys::default_handler(sig);
        return;
    }
    // SAFETY: H1 — the published slot is written and stays unchanged.
    let previous = unsafe { (*PREVIOUS.0[i][slot - 1].get()).assume_init_ref() };
    match sys::classify_previous(previous) {
        PreviousHandler::Default => sys::restore_handler(sig, previous),
        PreviousHandler::Info(handler) => handler(sig, info, context),
        PreviousHandler::Plain(handler) => handler(sig),
    }
}

fn report_fatal(addr: usize, access: AccessKind, why: FatalFault) {
    let what = match access {
        AccessKind::Write => "write",
        AccessKind::Read => "read",
        AccessKind::Unknown => "access",
    };
    match why {
        FatalFault::NoRegion => report!(
            "spf: fatal {what} at {addr:#x}: the address is in spf's reservation but in no live \
             region (a destroyed region, or memory never handed out)\n"
        ),
        FatalFault::PastEnd { start, end } => report!(
            "spf: fatal {what} at {addr:#x}: {} bytes past the end of the region [{start:#x}, \
             {end:#x}), in spf's uncommitted space — a buffer overflow? nothing was committed\n",
            addr - end
        ),
        FatalFault::WriteToReadOnly { start, end } => report!(
            "spf: fatal {what} at {addr:#x}: write to the read-only region [{start:#x}, {end:#x})\n"
        ),
        FatalFault::CommitFailed { start, end, errno } => report!(
            "spf: fatal {what} at {addr:#x}: cannot commit in region [{start:#x}, {end:#x}): \
             {} failed with {errno}; if ENOMEM, memory is exhausted or (mprotect) the kernel's \
             vm.max_map_count is exhausted by scattered commits: use larger granules or \
             commit-ahead\n",
            backend::commit_call(addr)
        ),
        FatalFault::LockHeldBySelf => report!(
            "spf: fatal {what} at {addr:#x}: lazy memory touched while this thread holds the \
             space lock (a bug in spf)\n"
        ),
        FatalFault::Nested => report!(
            "spf: fatal {what} at {addr:#x}: a signal handler touched lazy memory that the \
             fault it interrupted is committing; commit that memory before the signal can come\n"
        ),
        FatalFault::Stuck { start, end } => report!(
            "spf: fatal {what} at {addr:#x}: the committed granule of region [{start:#x}, \
             {end:#x}) keeps faulting\n"
        ),
    }
}
