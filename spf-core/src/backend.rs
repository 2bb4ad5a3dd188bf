//! Commit backends: the system calls that turn a locked run of granules into
//! memory, and the ones that take it back. Chosen once, when the space
//! starts (`SPF_BACKEND`, [`set_backend`]).
//!
//! With `mprotect` as the only commit, the kernel takes its `mmap_lock` for
//! write and splits a mapping on every fault: our speculative path removed
//! our lock, not the kernel's. The backends below commit without it:
//!
//! | backend    | commit                               | decommit / destroy        | kernel lock              |
//! |------------|--------------------------------------|---------------------------|--------------------------|
//! | `uffd`     | `SIGBUS` → `UFFDIO_COPY` of the run  | `MADV_DONTNEED` (missing) | per-VMA read lock        |
//! | `guard`    | `SIGSEGV` → `MADV_GUARD_REMOVE`      | `MADV_GUARD_INSTALL`      | `mmap_lock` for read     |
//! | `mprotect` | `SIGSEGV` → `mprotect` read/write    | `MADV_DONTNEED` + `PROT_NONE` | `mmap_lock` for write |
//!
//! # Zones
//!
//! The reservation is split once, at start, into two zones:
//!
//! - the *protected zone* `[base, lazy_base)`: `PROT_NONE` until committed
//!   by `mprotect`, whatever the backend. Eager regions live here (the
//!   allocator's segments and the blocks `SpfAlloc` hands out by default),
//!   because a page that a purge drops must read back as zero through a
//!   system call too: under userfaultfd a dropped page is *missing* again,
//!   and `read(2)` into a missing page fails with `EFAULT`. Huge-granule
//!   regions live here too, because `UFFDIO_COPY` never makes a huge page
//!   while `mprotect` + `MADV_HUGEPAGE` does. Eager regions commit once per
//!   region, so the `mprotect` is rare there.
//! - the *lazy zone* `[lazy_base, end)`, run by the chosen backend, for
//!   every other region (lazy, granule below 2 MiB). With the `mprotect`
//!   backend the lazy zone is empty and everything is protected zone.
//!
//! Under `uffd` the lazy zone is one read/write `MAP_NORESERVE` mapping
//! registered for missing-page faults with a `SIGBUS`-mode userfaultfd
//! opened with `UFFD_USER_MODE_ONLY` (no privilege needed). A commit copies
//! the run from a zero source: one ioctl allocates and fills every page of
//! it, with no later demand fault, no mapping change and no `mmap_lock`.
//! (`UFFDIO_ZEROPAGE` would be cheaper to call but each later write then
//! copies-on-write the zero page with a TLB shootdown.) Since a commit
//! allocates at once, the per-CPU cap bounds real memory allocated ahead of
//! the faulting page (see [`CommitPlan::charge`](crate::commit::CommitPlan)).
//!
//! Under `guard` the lazy zone starts `PROT_NONE`; a region made there gets
//! guard markers on every page and is made accessible once (one `mprotect`
//! per region, not per commit). A commit removes the markers of its run,
//! and the kernel's own demand paging does the rest.
//!
//! # Failed commits
//!
//! A commit that fails part-way is not undone under `uffd` and `guard`:
//! pages it already filled (or unguarded) may already hold another thread's
//! writes, and undoing would lose them. The run's granules go back to
//! `Uncommitted`, and the retry that follows (the classic path) commits the
//! rest — `UFFDIO_COPY` skips present pages (`EEXIST`), removing absent
//! markers is a no-op. Decommit and destroy always drop the whole range, so
//! such pages never outlive their region (B2). Under `mprotect` a failed
//! commit is reverted to `PROT_NONE` as before (no page content is lost by
//! a protection change).
//!
//! # fork
//!
//! A child does not inherit the userfaultfd registration: its copy of the
//! lazy zone would silently become ordinary demand-zero memory, and the
//! inherited descriptor still refers to the *parent's* address space. The
//! child's fork handler therefore opens a userfaultfd of its own and
//! registers the lazy zone again before any other code of the child runs;
//! committed pages are inherited as they are, missing ones fault to us as
//! in the parent. If that fails (descriptor limit, seccomp), the child goes
//! on with the zone unregistered — lazy memory then works as plain
//! demand-zero memory, commits are accounted without a system call, and a
//! touch of a destroyed region is no longer reported — and says so once.
//!
//! Invariants:
//! - B1: the backend, the zone bounds and the zero source are written
//!   once, before the space is published; the userfaultfd descriptor is
//!   written then and again only in a fork child's handler, before any
//!   other code of the child runs. Readers load them `Relaxed` after the
//!   `Acquire` load that found the space.
//! - B2: under `uffd`, a page of the lazy zone is present only inside a
//!   live region: in a `Committed` granule (purge may drop such pages; the
//!   next touch refills them), or in an `Uncommitted` granule whose commit
//!   failed part-way and is being retried.
//! - B3: under `guard`, every page of a live region in the lazy zone that
//!   is not in a `Committed` granule carries a guard marker, and every page
//!   of the zone outside live regions is `PROT_NONE` or guarded.

use crate::error::Error;
use crate::report::report;
use crate::stats::{self, Counter};
use crate::sys::{self, Errno, Prot, PAGE_SIZE};
use core::fmt;
use core::sync::atomic::{AtomicI32, AtomicU8, AtomicUsize, Ordering::Relaxed};

/// The commit primitive in use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// userfaultfd in `SIGBUS` mode; a commit is one `UFFDIO_COPY`.
    Uffd,
    /// Guard markers (Linux 6.13+); a commit is one `MADV_GUARD_REMOVE`.
    Guard,
    /// `PROT_NONE` reservation; a commit is one `mprotect` (the fallback
    /// that works everywhere).
    #[default]
    Mprotect,
}

impl Backend {
    /// The name `SPF_BACKEND` takes.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Uffd => "uffd",
            Backend::Guard => "guard",
            Backend::Mprotect => "mprotect",
        }
    }

    fn from_raw(raw: u8) -> Backend {
        match raw {
            1 => Backend::Uffd,
            2 => Backend::Guard,
            _ => Backend::Mprotect,
        }
    }

    fn raw(self) -> u8 {
        match self {
            Backend::Mprotect => 0,
            Backend::Uffd => 1,
            Backend::Guard => 2,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which backend to start with (`SPF_BACKEND`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// The first that works here: `uffd`, then `guard`, then `mprotect`.
    #[default]
    Auto,
    /// This one, or the space does not start (with an error saying why).
    Only(Backend),
}

static CHOICE: AtomicU8 = AtomicU8::new(AUTO);
const AUTO: u8 = u8::MAX;

/// Chooses the backend the space starts with. Takes effect only if called
/// before the space starts (before the first region or allocation);
/// `SPF_BACKEND` is read at start and overrides it.
pub fn set_backend(choice: BackendChoice) {
    let raw = match choice {
        BackendChoice::Auto => AUTO,
        BackendChoice::Only(b) => b.raw(),
    };
    CHOICE.store(raw, Relaxed);
}

pub(crate) fn choice() -> BackendChoice {
    match CHOICE.load(Relaxed) {
        AUTO => BackendChoice::Auto,
        raw => BackendChoice::Only(Backend::from_raw(raw)),
    }
}

static BACKEND: AtomicU8 = AtomicU8::new(0);
static LAZY_BASE: AtomicUsize = AtomicUsize::new(usize::MAX);
static LAZY_END: AtomicUsize = AtomicUsize::new(usize::MAX);
static UFFD: AtomicI32 = AtomicI32::new(-1);
static ZERO_SOURCE: AtomicUsize = AtomicUsize::new(0);

/// Bytes of the zero source: the most one `UFFDIO_COPY` fills.
const ZERO_SOURCE_LEN: usize = 2 << 20;

/// The backend in use (`mprotect` before the space starts).
pub fn active() -> Backend {
    Backend::from_raw(BACKEND.load(Relaxed))
}

/// Where a region goes: the lazy zone takes lazy regions below huge
/// granules, when the backend has a lazy zone.
pub(crate) fn wants_lazy_zone(eager: bool, huge: bool) -> bool {
    active() != Backend::Mprotect && !eager && !huge
}

/// The lazy zone `[start, end)` (empty under `mprotect`).
pub(crate) fn lazy_zone() -> (usize, usize) {
    (LAZY_BASE.load(Relaxed), LAZY_END.load(Relaxed))
}

/// Which primitive serves `addr`. Async-signal-safe.
#[inline]
pub(crate) fn at(addr: usize) -> Backend {
    if addr.wrapping_sub(LAZY_BASE.load(Relaxed)) < LAZY_END.load(Relaxed) - LAZY_BASE.load(Relaxed)
    {
        active()
    } else {
        Backend::Mprotect
    }
}

/// Whether a `SIGBUS` at `addr` can be ours: a missing page of the
/// userfaultfd zone. Async-signal-safe.
#[inline]
pub(crate) fn missing_page_possible(addr: usize) -> bool {
    at(addr) == Backend::Uffd
}

/// Starts a backend over the reservation `[base, base + len)` (`PROT_NONE`,
/// just mapped), as `choice` says: the upper half becomes the lazy zone of
/// the first backend that works. Called once, before the space is published.
pub(crate) fn start(base: usize, len: usize, choice: BackendChoice) -> Result<Backend, Error> {
    let lazy_base = base + len / 2;
    let candidates: &[Backend] = match choice {
        BackendChoice::Auto => &[Backend::Uffd, Backend::Guard, Backend::Mprotect],
        BackendChoice::Only(Backend::Uffd) => &[Backend::Uffd],
        BackendChoice::Only(Backend::Guard) => &[Backend::Guard],
        BackendChoice::Only(Backend::Mprotect) => &[Backend::Mprotect],
    };
    let mut refusal = None;
    for &backend in candidates {
        let started = match backend {
            Backend::Uffd => start_uffd(lazy_base, base + len),
            Backend::Guard => start_guard(lazy_base),
            Backend::Mprotect => Ok(()),
        };
        match started {
            Ok(()) => {
                let (zone_start, zone_end) = match backend {
                    Backend::Mprotect => (base + len, base + len),
                    _ => (lazy_base, base + len),
                };
                LAZY_BASE.store(zone_start, Relaxed);
                LAZY_END.store(zone_end, Relaxed);
                BACKEND.store(backend.raw(), Relaxed);
                return Ok(backend);
            }
            Err((reason, errno)) => {
                refusal = Some(Error::BackendUnavailable {
                    backend: backend.name(),
                    reason,
                    errno,
                })
            }
        }
    }
    Err(refusal.expect("mprotect always starts, so a failure names a backend"))
}

type Refusal = (&'static str, Option<Errno>);

fn start_uffd(zone_start: usize, zone_end: usize) -> Result<(), Refusal> {
    // Strict overcommit charges a read/write mapping in full, MAP_NORESERVE
    // or not: half the reservation would be charged at once.
    if sys::read_first_byte(c"/proc/sys/vm/overcommit_memory") == Some(b'2') {
        return Err((
            "strict overcommit (vm.overcommit_memory=2) would charge the whole read/write \
             zone against the commit limit",
            None,
        ));
    }
    let fd = sys::uffd_open().map_err(|errno| {
        let why = match errno.0 {
            libc::EPERM | libc::EACCES => {
                "userfaultfd() was refused (a seccomp filter, as containers often install, or \
                 vm.unprivileged_userfaultfd=0 on a kernel without UFFD_USER_MODE_ONLY)"
            }
            libc::ENOSYS => "this kernel has no userfaultfd (CONFIG_USERFAULTFD)",
            libc::EINVAL => {
                "this kernel lacks UFFD_USER_MODE_ONLY or UFFD_FEATURE_SIGBUS (Linux 5.11+)"
            }
            _ => "userfaultfd() or its UFFDIO_API handshake failed",
        };
        (why, Some(errno))
    })?;
    let give_up = |why: &'static str, errno: Errno| {
        sys::close(fd);
        // Back to inaccessible reserved memory, as the zone was before.
        let _ = sys::replace_reserved(zone_start, zone_end - zone_start);
        (why, Some(errno))
    };
    let zero = sys::map_zero_source(ZERO_SOURCE_LEN)
        .map_err(|e| give_up("mapping the zero source failed", e))?;
    sys::map_lazy_readwrite(zone_start, zone_end - zone_start).map_err(|e| {
        give_up(
            "mapping the read/write zone failed (strict overcommit, or ulimit -v)",
            e,
        )
    })?;
    sys::uffd_register(fd, zone_start, zone_end - zone_start)
        .map_err(|e| give_up("UFFDIO_REGISTER of the lazy zone failed", e))?;
    UFFD.store(fd, Relaxed);
    ZERO_SOURCE.store(zero, Relaxed);
    Ok(())
}

fn start_guard(zone_start: usize) -> Result<(), Refusal> {
    // Probe on one page of the zone: markers on a PROT_NONE page are
    // harmless, and the call tells whether the kernel knows them.
    sys::guard_install(zone_start, PAGE_SIZE).map_err(|errno| {
        let why = if errno.0 == libc::EINVAL {
            "this kernel has no guard markers (MADV_GUARD_INSTALL needs Linux 6.13+)"
        } else {
            "MADV_GUARD_INSTALL failed"
        };
        (why, Some(errno))
    })
}

/// The system call a commit at `addr` makes, for error messages.
pub(crate) fn commit_call(addr: usize) -> &'static str {
    match at(addr) {
        Backend::Uffd => "ioctl (UFFDIO_COPY)",
        Backend::Guard => "madvise (MADV_GUARD_REMOVE)",
        Backend::Mprotect => "mprotect",
    }
}

/// Makes a new region's range `[addr, addr + len)` — a new region, or the
/// part a region grows by — ready for commits with protection `prot`:
/// under `guard`, markers on every page, then access (one `mprotect` per
/// region); under `uffd`, the zone's read-write protection changed to
/// `prot` where it differs (a read-only region growing). Without that, the
/// new part of a read-only region would be writable once committed, and
/// the kernel would hold the region in two mappings, across which
/// `UFFDIO_COPY` fails (`ENOENT`). Nothing to do in the protected zone,
/// where each commit applies `prot`.
pub(crate) fn prepare(addr: usize, len: usize, prot: Prot) -> Result<(), (&'static str, Errno)> {
    match at(addr) {
        Backend::Mprotect => Ok(()),
        Backend::Uffd if prot == Prot::ReadWrite => Ok(()),
        Backend::Uffd => {
            stats::count(Counter::Mprotect);
            sys::protect(addr, len, prot).map_err(|errno| {
                // The caller frees the range, and the next region there
                // (read-write, which `prepare` leaves alone) must find
                // the zone's protection: a partly applied mprotect is
                // undone. If even that fails, the zone's protection could
                // no longer be trusted.
                if let Err(again) = sys::protect(addr, len, Prot::ReadWrite) {
                    fatal_zone_protection(addr, len, again);
                }
                ("mprotect", errno)
            })
        }
        Backend::Guard => {
            sys::guard_install(addr, len).map_err(|e| ("madvise (guard markers)", e))?;
            stats::count(Counter::Mprotect);
            sys::protect(addr, len, prot).map_err(|e| ("mprotect", e))
        }
    }
}

/// Makes `[addr, addr + len)` accessible with `prot` (step 7 of a fault,
/// and explicit commits): the caller owns the granule words of the range.
/// On failure the range may be partly committed (see the module docs);
/// the caller returns the words to `Uncommitted`. Async-signal-safe.
pub(crate) fn commit(addr: usize, len: usize, prot: Prot, populate: bool) -> Result<(), Errno> {
    crate::inject::commit_hold_point();
    match at(addr) {
        Backend::Mprotect => {
            stats::count(Counter::Mprotect);
            if let Err(errno) = sys::protect(addr, len, prot) {
                // A partly applied mprotect may have let another thread
                // write there: revoke, then drop what it wrote (the range
                // must read zero when it is committed again).
                revert_protection(addr, len);
                let _ = sys::discard(addr, len);
                return Err(errno);
            }
            if populate {
                // Only a hint: a failure (before Linux 5.14) costs the
                // faults it would have saved.
                let _ = sys::populate(addr, len, prot == Prot::ReadWrite);
            }
            Ok(())
        }
        Backend::Uffd => fill_missing(addr, len),
        Backend::Guard => {
            stats::count(Counter::GuardRemove);
            sys::guard_remove(addr, len)?;
            if populate {
                let _ = sys::populate(addr, len, prot == Prot::ReadWrite);
            }
            Ok(())
        }
    }
}

/// Fills the missing pages of `[addr, addr + len)` of a committed granule
/// that a purge dropped (userfaultfd zone only). Present pages are kept.
/// Async-signal-safe.
pub(crate) fn refill(addr: usize, len: usize) -> Result<(), Errno> {
    fill_missing(addr, len)
}

/// `UFFDIO_COPY` from the zero source over `[addr, addr + len)`, skipping
/// present pages. A zone that lost its registration (a fork child that
/// could not register again) is plain demand-zero memory: nothing to do.
fn fill_missing(addr: usize, len: usize) -> Result<(), Errno> {
    let fd = UFFD.load(Relaxed);
    if fd < 0 {
        return Ok(());
    }
    let zero = ZERO_SOURCE.load(Relaxed);
    let end = addr + len;
    let mut at = addr;
    // EAGAIN without progress means the address space is changing under the
    // call; a bounded number of retries keeps a fault from spinning forever.
    let mut stalls = 0u32;
    while at < end {
        let chunk = (end - at).min(ZERO_SOURCE_LEN);
        stats::count(Counter::UffdCopy);
        match sys::uffd_copy(fd, at, zero, chunk) {
            Ok(()) => at += chunk,
            Err(stop) if stop.errno.0 == libc::EEXIST => {
                // The page at `at` is present (a racing commit, or a page a
                // purge kept): keep it, go on after it.
                at += stop.copied.max(PAGE_SIZE);
            }
            Err(stop) if stop.errno.0 == libc::EAGAIN => {
                if stop.copied > 0 {
                    at += stop.copied;
                    stalls = 0;
                } else {
                    stalls += 1;
                    if stalls > 64 {
                        return Err(stop.errno);
                    }
                    sys::yield_now();
                }
            }
            Err(stop) => return Err(stop.errno),
        }
    }
    Ok(())
}

/// Drops the pages of `[addr, addr + len)` and makes every later access
/// fault to us (decommit, shrink, destroy): afterwards the range reads as
/// zero when next committed. Never fails: if the kernel refuses, the range
/// is replaced by fresh memory; if even that fails, granule states could no
/// longer describe the pages, and the process ends with a message.
///
/// Access is revoked *before* the pages are dropped, under every backend:
/// a write racing the decommit then faults to us (and waits for the
/// granule words the writer holds) instead of landing between the drop and
/// the revoke, where it would survive in an inaccessible page and be read
/// back when the range is next committed — breaking "a fresh region reads
/// zero", which `alloc_zeroed` relies on. Under `uffd` dropping *is* the
/// revoke (a dropped page is missing), and `MADV_GUARD_INSTALL` zaps each
/// page as it installs its marker, so both are one step.
pub(crate) fn drop_pages(addr: usize, len: usize) {
    match at(addr) {
        Backend::Mprotect => {
            stats::count(Counter::Mprotect);
            // Revoking can fail (ENOMEM when the kernel cannot split a
            // mapping): fresh reserved memory then revokes and drops at once.
            if sys::protect(addr, len, Prot::None).is_ok() && sys::discard(addr, len).is_ok() {
                return;
            }
            if let Err(errno) = sys::replace_reserved(addr, len) {
                fatal_drop(addr, len, "mprotect or madvise, then mmap, failed", errno);
            }
        }
        Backend::Uffd => {
            // Missing again: the next touch raises SIGBUS (B2).
            if sys::discard(addr, len).is_ok() {
                return;
            }
            let fd = UFFD.load(Relaxed);
            let fresh = sys::map_lazy_readwrite(addr, len).and_then(|()| {
                if fd < 0 {
                    Ok(())
                } else {
                    sys::uffd_register(fd, addr, len)
                }
            });
            if let Err(errno) = fresh {
                fatal_drop(
                    addr,
                    len,
                    "madvise, then mmap + UFFDIO_REGISTER failed",
                    errno,
                );
            }
        }
        Backend::Guard => {
            // Installing markers drops the pages under them too (B3).
            if sys::guard_install(addr, len).is_ok() {
                return;
            }
            let again = sys::discard(addr, len).and_then(|()| sys::guard_install(addr, len));
            if let Err(errno) = again {
                fatal_drop(addr, len, "MADV_GUARD_INSTALL failed twice", errno);
            }
        }
    }
}

#[cold]
fn fatal_zone_protection(addr: usize, len: usize, errno: Errno) -> ! {
    report!(
        "spf: fatal: cannot make [{addr:#x}, {:#x}) read-write again after a failed \
         mprotect: {errno}; the kernel's vm.max_map_count may be exhausted\n",
        addr + len
    );
    sys::abort();
}

#[cold]
fn fatal_drop(addr: usize, len: usize, what: &str, errno: Errno) -> ! {
    report!(
        "spf: fatal: cannot drop the pages of [{addr:#x}, {:#x}): {what} ({errno}); the \
         kernel's vm.max_map_count may be exhausted\n",
        addr + len
    );
    sys::abort();
}

/// Makes `[addr, addr + len)` inaccessible after a failed `mprotect`
/// commit. If even that fails, granule states could no longer describe the
/// pages, so the process ends with a message (async-signal-safe: `write`
/// and `abort`).
pub(crate) fn revert_protection(addr: usize, len: usize) {
    stats::count(Counter::Mprotect);
    if let Err(errno) = sys::protect(addr, len, Prot::None) {
        report!(
            "spf: fatal: cannot make [{addr:#x}, {:#x}) inaccessible after a failed commit: \
             mprotect failed with {errno}; the kernel's vm.max_map_count may be exhausted\n",
            addr + len
        );
        sys::abort();
    }
}

/// Changes the protection of a whole region `[start, end)` in the lazy
/// zone (under `uffd` and `guard`, uncommitted pages are missing or guarded
/// whatever their protection, so one call covers the region). Returns
/// `None` in the protected zone, where only committed runs change.
pub(crate) fn protect_region(start: usize, end: usize, prot: Prot) -> Option<Result<(), Errno>> {
    if at(start) == Backend::Mprotect {
        return None;
    }
    stats::count(Counter::Mprotect);
    Some(sys::protect(start, end - start, prot))
}

/// The fork child's half of B1: a registration of its own (see the module
/// docs). Runs in the child's fork handler, before any other code of it.
pub(crate) fn after_fork_in_child() {
    let inherited = UFFD.load(Relaxed);
    if inherited < 0 || active() != Backend::Uffd {
        return;
    }
    // The inherited descriptor names the parent's address space: never use
    // it here.
    sys::close(inherited);
    let (start, end) = lazy_zone();
    let fresh = sys::uffd_open().and_then(|fd| match sys::uffd_register(fd, start, end - start) {
        Ok(()) => Ok(fd),
        Err(e) => {
            sys::close(fd);
            Err(e)
        }
    });
    match fresh {
        Ok(fd) => UFFD.store(fd, Relaxed),
        Err(errno) => {
            UFFD.store(-1, Relaxed);
            report!(
                "spf: this fork child cannot register its lazy memory with userfaultfd ({errno}); \
                 lazy regions work as plain demand-zero memory here, and touches of destroyed \
                 regions are no longer reported\n"
            );
        }
    }
}
