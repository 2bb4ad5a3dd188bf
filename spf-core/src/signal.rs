//! The `SIGSEGV` handler: installed once, chained to the handler it
//! replaced, and a thin layer over [`fault::handle`](crate::fault::handle).
//!
//! Classify, then act: `fault::handle` returns an outcome, and the handler
//! matches on it —
//! - `NotOurs`: call the previous handler exactly as the kernel would have
//!   (see [`chain`]); Rust's stack-overflow report still appears;
//! - `Handled`: return, and the access restarts;
//! - `Fatal`: write a message naming the address and what is there, restore
//!   the default action and return, so the access faults again and the
//!   process ends by `SIGSEGV` as it would without us.
//!
//! Invariant H1: `PREVIOUS` is written once, before `PREVIOUS_SET` is set
//! (Release), and read only after `PREVIOUS_SET` is seen (Acquire).

use crate::error::Error;
use crate::fault::{self, AccessKind, FatalFault, Outcome};
use crate::handler_guard::HandlerScope;
use crate::report::report;
use crate::space::Space;
use crate::sys::{self, PreviousHandler};
use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, Ordering};

struct Previous(UnsafeCell<MaybeUninit<sys::SigAction>>);
// SAFETY: H1 — one write before publication, reads after.
unsafe impl Sync for Previous {}

static PREVIOUS: Previous = Previous(UnsafeCell::new(MaybeUninit::uninit()));
static PREVIOUS_SET: AtomicBool = AtomicBool::new(false);

/// Installs the handler (once; the space calls it when it starts).
pub(crate) fn install() -> Result<(), Error> {
    let old = sys::install_segv_handler(on_segv).map_err(|errno| Error::System {
        call: "sigaction",
        errno,
    })?;
    // SAFETY: H1 — the only write, before PREVIOUS_SET.
    unsafe { (*PREVIOUS.0.get()).write(old) };
    PREVIOUS_SET.store(true, Ordering::Release);
    Ok(())
}

extern "C" fn on_segv(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // The interrupted code may be between a failing call and its read of
    // errno; our own calls (futex, madvise, mprotect) must not change it.
    let _errno = sys::ErrnoGuard::save();
    let _scope = HandlerScope::enter();
    // SAFETY: the kernel passes a valid siginfo and ucontext to a SA_SIGINFO handler.
    let (addr, write) = unsafe { (sys::fault_address(info), sys::fault_is_write(context)) };
    let access = match write {
        Some(true) => AccessKind::Write,
        Some(false) => AccessKind::Read,
        None => AccessKind::Unknown,
    };
    let outcome = match Space::ready() {
        Some(space) => fault::handle(space, addr, access),
        None => Outcome::NotOurs,
    };
    match outcome {
        Outcome::Handled => {}
        Outcome::NotOurs => chain(sig, info, context),
        Outcome::Fatal(why) => {
            report_fatal(addr, access, why);
            sys::default_segv();
        }
    }
}

/// Hands a foreign fault to the previous handler, covering the three cases:
/// an `SA_SIGINFO` handler, a one-argument handler, and `SIG_DFL`/`SIG_IGN`
/// (restore it and return: the access re-executes and the kernel acts).
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    if !PREVIOUS_SET.load(Ordering::Acquire) {
        sys::default_segv();
        return;
    }
    // SAFETY: H1 — PREVIOUS_SET was seen, so PREVIOUS is written.
    let previous = unsafe { (*PREVIOUS.0.get()).assume_init_ref() };
    match sys::classify_previous(previous) {
        PreviousHandler::Default => sys::restore_segv_handler(previous),
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
        FatalFault::WriteToReadOnly { start, end } => report!(
            "spf: fatal {what} at {addr:#x}: write to the read-only region [{start:#x}, {end:#x})\n"
        ),
        FatalFault::CommitFailed { start, end, errno } => report!(
            "spf: fatal {what} at {addr:#x}: cannot commit in region [{start:#x}, {end:#x}): \
             mprotect failed with {errno}; if ENOMEM, the kernel's vm.max_map_count is exhausted \
             by scattered commits: use larger granules or commit-ahead\n"
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
