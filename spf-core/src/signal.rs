//! The fault signal handler: installed for `SIGSEGV` at start (and for
//! `SIGBUS` under the userfaultfd backend, which reports missing pages with
//! it, with the first lazy region: see [`install`]), chained to the
//! handlers it replaced, and a thin layer over
//! [`fault::handle`](crate::fault::handle).
//!
//! Classify, then act: `fault::handle` returns an outcome, and the handler
//! matches on it —
//! - `NotOurs`: deliver the signal to the actions spf stands in front of
//!   exactly as the kernel would have (see `chain`); Rust's stack-overflow
//!   report still appears;
//! - `Handled`: return, and the access restarts;
//! - `Fatal`: write a message naming the address and what is there, restore
//!   the default action and return, so the access faults again and the
//!   process ends by `SIGSEGV` as it would without us (a fatal `SIGBUS` of
//!   the userfaultfd zone ends it by `SIGSEGV` too: the same bad access
//!   kills the same way under every backend).
//!
//! A signal that a process sent (`kill`, `raise`, `sigqueue`: `si_code <=
//! 0`) is no fault, whatever its `siginfo` seems to say: it is delivered to
//! the chain untouched. A `SIGBUS` outside the userfaultfd zone (a file
//! mapping read past its end, say) is chained exactly like a foreign
//! `SIGSEGV`: only the address tells the two apart, as `si_code` is
//! `BUS_ADRERR` for both. A handler that spf called and that calls back the
//! action it displaced (spf's handler) continues down the chain
//! (`chain::chained_back`).
//!
//! The handler re-asserts itself: a program (or std's runtime, when the
//! allocator's first allocation happens inside std's own start-up, between
//! its check for a default `SIGSEGV` action and its `sigaction`) may install
//! another handler over ours, and a handler spf called may replace the
//! action (std's handler sets `SIG_DFL` and returns for a fault that is not
//! a stack overflow — also for a `SIGSEGV` that `raise` sent). Right after
//! such a call, and before creating a lazy region or decommitting, spf
//! checks and, if displaced, installs itself again, chaining to whoever
//! displaced it — as Android's libsigchain does.
//!
//! Every install goes through `chain::InstallLock` (C2 in `chain`).

use crate::backend::{self, Backend};
use crate::chain::{self, Displaced, InstallLock};
use crate::error::Error;
use crate::fault::{self, AccessKind, FatalFault, Outcome, Trap};
use crate::handler_guard::HandlerScope;
use crate::report::report;
use crate::space::Space;
use crate::sys;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Whether the `SIGBUS` handler is in (userfaultfd backend only).
static SIGBUS_IN: AtomicBool = AtomicBool::new(false);

/// The signals spf's commits need with this backend.
fn needed_signals() -> &'static [libc::c_int] {
    if backend::active() == Backend::Uffd {
        &[libc::SIGSEGV, libc::SIGBUS]
    } else {
        &[libc::SIGSEGV]
    }
}

/// The signals spf handles now.
fn handled_signals() -> &'static [libc::c_int] {
    // Acquire pairs with the Release in `before_lazy_region`.
    if SIGBUS_IN.load(Ordering::Acquire) {
        &[libc::SIGSEGV, libc::SIGBUS]
    } else {
        &[libc::SIGSEGV]
    }
}

/// Installs the `SIGSEGV` handler at start, remembering the action it
/// replaces. The `SIGBUS` handler, which only the userfaultfd backend's
/// lazy zone needs, goes in with the first lazy region
/// ([`before_lazy_region`]): spf often starts inside std's runtime
/// initialisation (the allocator's first allocation), and std installs its
/// stack-overflow handler for `SIGBUS` only where it finds the default
/// action — installing ours there first would leave a Rust program without
/// std's `SIGBUS` handler, so a raised `SIGBUS` would kill where it is
/// survived without spf. (For `SIGSEGV`, std's handler lands over ours and
/// is put behind it by [`ensure_installed`].)
pub(crate) fn install() -> Result<(), Error> {
    debug_assert_ne!(
        entry_a as sys::SigInfoHandler as usize, entry_b as sys::SigInfoHandler as usize,
        "the two entry points were merged"
    );
    let lock = InstallLock::take();
    install_one(&lock, libc::SIGSEGV, Displaced::InFront)
}

/// Installs the `SIGBUS` handler before the first lazy region is made, if
/// the backend needs it (see [`install`]).
pub(crate) fn before_lazy_region() {
    if backend::active() != Backend::Uffd || SIGBUS_IN.load(Ordering::Acquire) {
        return;
    }
    let lock = InstallLock::take();
    if !SIGBUS_IN.load(Ordering::Relaxed)
        && install_one(&lock, libc::SIGBUS, Displaced::InFront).is_ok()
    {
        // Release pairs with the Acquire in `handled_signals`.
        SIGBUS_IN.store(true, Ordering::Release);
    }
}

/// Per signal, the entry point spf installed last (0: none yet). Written
/// under the install lock (C2 in `chain`).
static LATEST: [AtomicUsize; 2] = [const { AtomicUsize::new(0) }; 2];

fn latest(sig: libc::c_int) -> &'static AtomicUsize {
    &LATEST[usize::from(sig == libc::SIGBUS)]
}

/// Installs spf's handler for `sig` in front of the action it replaces,
/// which enters the chain as `how` says. Each install uses the entry point
/// the previous one did not, so the action a displacing handler saved
/// (spf's, as it was) can be told from spf's install in front of that
/// handler: a handler that puts its saved action back (see
/// [`after_chained_call`]) is seen to leave.
fn install_one(lock: &InstallLock, sig: libc::c_int, how: Displaced) -> Result<(), Error> {
    let replaced_ours = latest(sig).load(Ordering::Relaxed);
    let entry: sys::SigInfoHandler = if replaced_ours == entry_a as sys::SigInfoHandler as usize {
        entry_b
    } else {
        entry_a
    };
    let mut old = MaybeUninit::uninit();
    if let Err(errno) = sys::install_handler(sig, entry, &mut old) {
        return Err(Error::System {
            call: "sigaction",
            errno,
        });
    }
    // SAFETY: the call succeeded: the kernel wrote the replaced action.
    chain::record(
        lock,
        sig,
        unsafe { old.assume_init_ref() },
        how,
        replaced_ours,
    );
    latest(sig).store(entry as usize, Ordering::Relaxed);
    Ok(())
}

fn is_ours(handler: usize) -> bool {
    handler == entry_a as sys::SigInfoHandler as usize
        || handler == entry_b as sys::SigInfoHandler as usize
}

/// Installs the handler for `sig` again if something replaced it, chaining
/// to what replaced it as `how` says. Async-signal-safe.
pub(crate) fn reinstall_if_displaced(sig: libc::c_int, how: Displaced) {
    if is_ours(sys::current_handler(sig)) {
        return;
    }
    let lock = InstallLock::take();
    // Checked again under the lock: another thread may have done it.
    if !is_ours(sys::current_handler(sig)) {
        let _ = install_one(&lock, sig, how);
    }
}

/// After a handler at `level` of the chain returned: if it replaced the
/// action, what it installed becomes the chain (without spf it would have
/// replaced everything) and spf goes back in front; if it put back the
/// action it had replaced — spf's, as it was then — it and everything
/// newer leave the chain, as they would have without spf in front.
/// Async-signal-safe.
pub(crate) fn after_chained_call(sig: libc::c_int, level: usize) {
    let now = sys::current_handler(sig);
    if !is_ours(now) {
        return reinstall_if_displaced(sig, Displaced::Instead);
    }
    if now == latest(sig).load(Ordering::Relaxed) {
        return;
    }
    let lock = InstallLock::take();
    let now = sys::current_handler(sig);
    if is_ours(now) && now != latest(sig).load(Ordering::Relaxed) {
        chain::leave_if_restored(&lock, sig, level, now);
        latest(sig).store(now, Ordering::Relaxed);
    }
}

/// Installs the handler again if someone replaced it. The check costs a
/// system call. Displacement happens in practice at start-up (std's
/// runtime installs its stack-overflow handler over ours when our first
/// allocation came inside its initialisation), so the first 64 calls always
/// check; after that a check runs at most every 10 ms, and a handler
/// installed over ours is noticed by the first region made after that.
pub(crate) fn ensure_installed() {
    const ALWAYS_FIRST: u64 = 64;
    static CHECKS: AtomicU64 = AtomicU64::new(0);
    static NEXT_CHECK_NS: AtomicU64 = AtomicU64::new(0);
    let now = sys::monotonic_ns();
    // Relaxed: both words are only hints for how often to check; the
    // install lock orders the reinstallation itself (C2).
    let early = CHECKS.fetch_add(1, Ordering::Relaxed) < ALWAYS_FIRST;
    if !early && now < NEXT_CHECK_NS.load(Ordering::Relaxed) {
        return;
    }
    NEXT_CHECK_NS.store(now + 10_000_000, Ordering::Relaxed);
    for &sig in handled_signals() {
        reinstall_if_displaced(sig, Displaced::InFront);
    }
}

/// Puts the handler back in front now if someone replaced it, with no rate
/// limit (one `sigaction` query per signal): for an allocator about to
/// hand out lazy memory it did not make a region for (a cached block),
/// or that it made within `ensure_installed`'s 10 ms. Not under the space
/// lock needed; never allocates.
pub(crate) fn ensure_installed_now() {
    for &sig in handled_signals() {
        reinstall_if_displaced(sig, Displaced::InFront);
    }
}

/// Whether this thread blocks `sig` and spf's commits need it.
pub(crate) fn blocked_fault_signal(sig: libc::c_int) -> bool {
    needed_signals().contains(&sig) && sys::signal_blocked(sig)
}

/// spf's handler, under one of its two entry points (see [`install_one`]).
/// Their bodies differ (the entry's number), or the compiler would merge
/// them into one address.
extern "C" fn entry_a(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    on_fault(sig, info, context, 0);
}

extern "C" fn entry_b(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    on_fault(sig, info, context, 1);
}

#[inline(never)]
fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void, entry: u32) {
    core::hint::black_box(entry);
    // The interrupted code may be between a failing call and its read of
    // errno; our own calls (futex, madvise, mprotect, ioctl) must not
    // change it.
    let _errno = sys::ErrnoGuard::save();
    // SAFETY: the kernel passes a valid siginfo to a SA_SIGINFO handler
    // (and a handler calling back passes the one it was given).
    let sent = unsafe { sys::sent_by_process(info) };
    if let Some(level) = chain::chained_back(sig, info) {
        chain::deliver(sig, info, context, level + 1, sent);
        return;
    }
    if sent {
        chain::deliver(sig, info, context, 0, true);
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
    // refused in debug builds, and a later nested fault taken for one.
    let outcome = {
        let _scope = HandlerScope::enter();
        match Space::ready() {
            Some(space) => fault::handle(space, addr, access, trap),
            None => Outcome::NotOurs,
        }
    };
    match outcome {
        Outcome::Handled => {}
        Outcome::NotOurs => chain::deliver(sig, info, context, 0, false),
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
             fault it interrupted is committing (or that another thread, itself stopped the \
             same way, kept committing for 5 s); commit that memory before the signal can come\n"
        ),
        FatalFault::Stuck { start, end } => report!(
            "spf: fatal {what} at {addr:#x}: the committed granule of region [{start:#x}, \
             {end:#x}) keeps faulting\n"
        ),
    }
}
