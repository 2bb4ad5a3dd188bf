//! Chaining: the actions spf's handler stands in front of, per signal
//! (`SIGSEGV`, `SIGBUS`), and delivering a signal that is not spf's to them
//! exactly as the kernel would have delivered it.
//!
//! What the kernel does, and so what [`deliver`] does:
//! - `SIG_IGN`: a signal a process sent is dropped; a fault is not ignorable
//!   (the kernel forces the default action), so it kills like `SIG_DFL`;
//! - `SIG_DFL`: the process ends by the signal — for a fault, the default
//!   action is restored and the access re-executes; for a sent signal,
//!   which no re-execution repeats, the default is restored and the signal
//!   raised again;
//! - a handler: called with one argument, or three with `SA_SIGINFO`, with
//!   the thread's mask widened by its `sa_mask` and (without `SA_NODEFER`)
//!   the signal itself from the call until spf's handler returns (where
//!   the kernel restores the interrupted mask); with `SA_RESETHAND`
//!   its entry becomes `SIG_DFL` first, so a crash handler that returns
//!   runs once and the fault then kills. `SA_ONSTACK` of the previous
//!   action cannot be honoured: the signal is already on whatever stack
//!   spf's own delivery chose (std's alternate stack in a Rust program).
//!
//! The chain is a short list, oldest first: the action spf replaced at
//! start, then each handler that displaced spf later and was put behind it
//! again (`signal::ensure_installed`). Such a handler usually chains to the
//! action it replaced — spf's handler, which it calls as a function with
//! the same `siginfo`. [`chained_back`] recognises that call (same signal,
//! same `siginfo`, on a deeper stack than the call spf made) and delivery
//! goes on to the next older entry, as it would have without spf in front.
//! When a handler spf called changes the process's action (std's handler
//! sets `SIG_DFL` for a fault that is not a stack overflow), that action
//! would have replaced the whole chain without spf: it becomes the chain,
//! and spf is put back in front (`signal`). When it puts back the action it
//! had replaced — spf's, as crash reporters do before they return or raise
//! the signal again — it leaves the chain with everything newer: spf
//! alternates between two entry points at each install, so the entry a
//! handler saved differs from the one spf installed in front of it
//! (`signal::install_one`, `signal::after_chained_call`).
//!
//! Invariants:
//! - C1: per signal, the chain is published by a generation count, even
//!   when settled; a writer makes it odd, writes the slot no reader of the
//!   published generation reads, and makes it even again. A reader copies
//!   what it needs and accepts the copy only if the count did not move on
//!   to the next write of the slot it read (a seqlock over two slots).
//! - C2: writers hold the [`InstallLock`]: every signal blocked on their
//!   thread, then one flag. A holder is never interrupted, so a handler
//!   that needs the lock spins only on another thread's bounded work.
//!
//! Everything here is async-signal-safe: atomics, `const` thread-locals,
//! `sigaction`, `pthread_sigmask`, `raise`.

use crate::sys::{self, PreviousHandler, SigAction, SigSet};
use core::cell::{Cell, UnsafeCell};
use core::mem::MaybeUninit;
use core::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};

/// How many actions a chain keeps; a handler displacing spf when it is
/// full drops the oldest but one (the end of the line stays).
const DEPTH: usize = 4;

#[derive(Clone, Copy)]
struct Chain {
    len: usize,
    actions: [SigAction; DEPTH],
    /// Per action, the entry point of spf's handler it replaced (0: not
    /// spf's), which is what it puts back if it leaves.
    replaced: [usize; DEPTH],
}

struct Published {
    slots: [UnsafeCell<MaybeUninit<Chain>>; 2],
    /// C1: 2k published in slot k % 2; odd while a writer writes.
    gen: AtomicU64,
}

// SAFETY: C1 and C2 — slots are written only by the lock holder, into the
// slot that the published generation does not name; readers validate.
unsafe impl Sync for Published {}

static CHAINS: [Published; 2] = [const {
    Published {
        slots: [
            UnsafeCell::new(MaybeUninit::uninit()),
            UnsafeCell::new(MaybeUninit::uninit()),
        ],
        gen: AtomicU64::new(0),
    }
}; 2];

fn index_of(sig: libc::c_int) -> usize {
    usize::from(sig == libc::SIGBUS)
}

/// The right to change dispositions and chains (C2); released on drop.
pub(crate) struct InstallLock {
    saved: SigSet,
}

static INSTALLING: AtomicBool = AtomicBool::new(false);

impl InstallLock {
    pub(crate) fn take() -> InstallLock {
        let saved = sys::block_all_signals();
        let mut spins = 0u32;
        // Acquire pairs with the Release in `drop`: the previous holder's
        // writes are seen.
        while INSTALLING
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            crate::granule::backoff(&mut spins);
        }
        InstallLock { saved }
    }
}

impl Drop for InstallLock {
    fn drop(&mut self) {
        INSTALLING.store(false, Ordering::Release);
        sys::set_signal_mask(&self.saved);
    }
}

/// A child after `fork` has one thread: a lock held by another thread of
/// the parent at the fork would never be released, and that thread's
/// half-written chain is dropped (the published one is intact, C1).
pub(crate) fn after_fork_in_child() {
    for p in &CHAINS {
        p.gen
            .store(p.gen.load(Ordering::Relaxed) & !1, Ordering::Relaxed);
    }
    INSTALLING.store(false, Ordering::Relaxed);
}

/// How a displacing action enters the chain.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Displaced {
    /// Installed over spf by the program: it may chain back to spf, so it
    /// goes in front of the chain.
    InFront,
    /// Installed by a handler spf called: without spf it would have
    /// replaced the whole chain.
    Instead,
}

/// Records `action`, which spf's handler just replaced for `sig`;
/// `replaced_ours` is the entry point of spf's that `action` had replaced.
pub(crate) fn record(
    _lock: &InstallLock,
    sig: libc::c_int,
    action: &SigAction,
    how: Displaced,
    replaced_ours: usize,
) {
    update(sig, |chain| {
        if how == Displaced::Instead || chain.len == 0 {
            chain.len = 0;
        } else if chain.len == DEPTH {
            chain.actions.copy_within(2.., 1);
            chain.replaced.copy_within(2.., 1);
            chain.len -= 1;
        }
        chain.actions[chain.len] = *action;
        chain.replaced[chain.len] = replaced_ours;
        chain.len += 1;
    });
}

/// The handler at `level` put back `restored`, an entry point of spf's:
/// if that is what it had replaced, it leaves the chain with every newer
/// action (which it had been chaining to through spf).
pub(crate) fn leave_if_restored(
    _lock: &InstallLock,
    sig: libc::c_int,
    level: usize,
    restored: usize,
) {
    update(sig, |chain| {
        if level < chain.len && chain.replaced[chain.len - 1 - level] == restored {
            chain.len -= level + 1;
        }
    });
}

/// Writes the next generation of `sig`'s chain (C1). Caller holds the
/// install lock (C2).
fn update(sig: libc::c_int, change: impl FnOnce(&mut Chain)) {
    let p = &CHAINS[index_of(sig)];
    let gen = p.gen.load(Ordering::Relaxed);
    let (from, to) = ((gen / 2) as usize % 2, (gen / 2 + 1) as usize % 2);
    p.gen.store(gen + 1, Ordering::Relaxed);
    // Release: a reader whose copy saw any write below also sees the odd
    // count (its Acquire fence pairs with this one).
    fence(Ordering::Release);
    // SAFETY: C2 — we are the only writer; slot `to` is not the published
    // one (C1). Slot `from` is initialised once a generation exists.
    unsafe {
        let dst = (*p.slots[to].get()).as_mut_ptr();
        if gen == 0 {
            dst.write(Chain {
                len: 0,
                actions: [sys::default_action(); DEPTH],
                replaced: [0; DEPTH],
            });
        } else {
            dst.copy_from_nonoverlapping((*p.slots[from].get()).as_ptr(), 1);
        }
        change(&mut *dst);
    }
    // Release pairs with the readers' Acquire load of the count.
    p.gen.store(gen + 2, Ordering::Release);
}

/// The action `level` steps behind the front of `sig`'s chain, if the
/// chain is that long.
fn entry(sig: libc::c_int, level: usize) -> Option<SigAction> {
    let p = &CHAINS[index_of(sig)];
    loop {
        let gen = p.gen.load(Ordering::Acquire);
        let published = gen & !1;
        if published == 0 {
            return None;
        }
        let slot = (published / 2) as usize % 2;
        // SAFETY: slot `slot` holds generation `published`, initialised;
        // a writer may overwrite it concurrently, in which case the copy is
        // torn and rejected below (C1). Volatile reads: the copy may race.
        let (len, action) = unsafe {
            let chain = (*p.slots[slot].get()).as_ptr();
            let len = core::ptr::addr_of!((*chain).len).read_volatile();
            let i = len.wrapping_sub(1).wrapping_sub(level).min(DEPTH - 1);
            let action = core::ptr::addr_of!((*chain).actions[i]).read_volatile();
            (len, action)
        };
        fence(Ordering::Acquire);
        // The slot is next written by the writer that moves the count from
        // published + 2 to published + 3.
        if p.gen.load(Ordering::Relaxed) <= published + 2 {
            return (level < len).then_some(action);
        }
    }
}

/// Makes the action at `level` `SIG_DFL` (the kernel's `SA_RESETHAND`).
fn reset_entry(sig: libc::c_int, level: usize) {
    let _lock = InstallLock::take();
    update(sig, |chain| {
        if level < chain.len {
            chain.actions[chain.len - 1 - level] = sys::default_action();
        }
    });
}

/// The call in progress from [`deliver`] to a handler, on this thread.
#[derive(Clone, Copy)]
struct Call {
    sig: libc::c_int,
    info: usize,
    code: i32,
    addr: usize,
    /// A stack address inside `deliver`'s frame.
    sp: usize,
    level: usize,
}

const NO_CALL: Call = Call {
    sig: 0,
    info: 0,
    code: 0,
    addr: 0,
    sp: 0,
    level: 0,
};

thread_local! {
    static CALLING: Cell<Call> = const { Cell::new(NO_CALL) };
}

/// How far below `deliver`'s frame a handler calling back may be: a copied
/// `siginfo` is recognised only that close (a stale record left by a
/// handler that jumped out must not match a later, deeper fault).
const CALL_BACK_REACH: usize = 64 << 10;

#[inline(always)]
fn stack_address() -> usize {
    let probe = 0u8;
    core::hint::black_box(&probe) as *const u8 as usize
}

/// Whether this run of spf's handler is a handler that spf called, calling
/// the action it displaced (spf's handler) for the same signal; returns
/// the level of the handler that called back.
pub(crate) fn chained_back(sig: libc::c_int, info: *mut libc::siginfo_t) -> Option<usize> {
    let call = CALLING.with(Cell::get);
    let sp = stack_address();
    if call.sig != sig || sp >= call.sp {
        return None;
    }
    if call.info == info as usize {
        return Some(call.level);
    }
    // SAFETY: a handler passes a valid siginfo (the kernel's or its copy).
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    (code == call.code && addr == call.addr && call.sp - sp < CALL_BACK_REACH).then_some(call.level)
}

/// Delivers `sig` to the action `level` steps behind the front of the
/// chain, as the kernel would (see the module docs). `sent`: a process
/// sent the signal (`si_code <= 0`); otherwise it is a fault that
/// re-executes when the handler returns.
pub(crate) fn deliver(
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
    level: usize,
    sent: bool,
) {
    let Some(action) = entry(sig, level) else {
        return default_action(sig, sent);
    };
    match sys::classify_previous(&action) {
        PreviousHandler::Ignore if sent => {}
        PreviousHandler::Ignore | PreviousHandler::Default => default_action(sig, sent),
        handler => {
            if action.sa_flags & libc::SA_RESETHAND != 0 {
                reset_entry(sig, level);
            }
            let own = if action.sa_flags & libc::SA_NODEFER != 0 {
                0
            } else {
                sig
            };
            // Widened for the call and left so: the kernel puts the
            // interrupted mask back when spf's handler returns. Narrowing
            // it here would let a signal the handler raised again (blocked
            // meanwhile) in while spf's frame is still on the stack — a
            // second signal frame on std's small alternate stack, which
            // overflows it where frames are large (AMX) — instead of after
            // the return, as without spf.
            sys::block_signals(&action.sa_mask, own);
            // SAFETY: the kernel's (or a calling-back handler's) siginfo.
            let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
            let outer = CALLING.with(|c| {
                c.replace(Call {
                    sig,
                    info: info as usize,
                    code,
                    addr,
                    sp: stack_address(),
                    level,
                })
            });
            match handler {
                PreviousHandler::Info(h) => h(sig, info, context),
                PreviousHandler::Plain(h) => h(sig),
                PreviousHandler::Default | PreviousHandler::Ignore => {}
            }
            // Not reached if the handler jumped out: `chained_back` then
            // tells a stale record by its stack address.
            CALLING.with(|c| c.set(outer));
            crate::signal::after_chained_call(sig, level);
        }
    }
}

/// `SIG_DFL` for a signal whose default ends the process.
fn default_action(sig: libc::c_int, sent: bool) {
    sys::default_handler(sig);
    if sent {
        // No re-execution repeats a sent signal: send it again, unblocked
        // (a handler's mask may block it while it calls back).
        sys::unblock_signal(sig);
        sys::raise(sig);
    }
    // A fault re-executes and the kernel applies the default.
}
