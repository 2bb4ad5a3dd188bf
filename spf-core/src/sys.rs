//! The operating-system contract: the only module that calls `mmap`,
//! `mprotect`, `madvise`, `sigaction`, `futex` and friends.
//!
//! Everything above this module speaks in addresses, lengths and [`Prot`];
//! this module speaks libc. Each function says whether it is
//! async-signal-safe, because the fault handler may only call those that are.
//!
//! Invariants:
//! - I1: every function taking `(addr, len)` expects `addr` and `len` to be
//!   multiples of [`PAGE_SIZE`]; callers guarantee it (debug-asserted here).
//! - I2: nothing here allocates from the global allocator.
//! - I3: `mmap`, `mprotect` and `madvise` go through `inject::check` first,
//!   so tests can make them fail (feature `fault-injection`; a no-op
//!   without it).

use crate::inject::{self, Call};
use core::ffi::CStr;
use core::fmt;
use core::mem::MaybeUninit;
use core::ptr;

/// The base page size spf is built for. Checked against the kernel at start.
pub const PAGE_SIZE: usize = 4096;

/// `MADV_POPULATE_READ` / `MADV_POPULATE_WRITE` (Linux 5.14); not in every
/// libc release, so spelled here.
const MADV_POPULATE_READ: libc::c_int = 22;
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// An `errno` value, printed with the system's description.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    fn last() -> Errno {
        // SAFETY: `__errno_location` returns this thread's errno slot, always valid.
        Errno(unsafe { *libc::__errno_location() })
    }

    /// The symbolic name for the values spf's callers act on.
    pub fn name(self) -> &'static str {
        match self.0 {
            libc::ENOMEM => "ENOMEM",
            libc::EAGAIN => "EAGAIN",
            libc::EINVAL => "EINVAL",
            libc::EFAULT => "EFAULT",
            libc::EPERM => "EPERM",
            libc::EACCES => "EACCES",
            libc::EEXIST => "EEXIST",
            libc::ENOSYS => "ENOSYS",
            _ => "errno",
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// Restores this thread's `errno` when dropped. Async-signal-safe.
pub struct ErrnoGuard(i32);

impl ErrnoGuard {
    pub fn save() -> ErrnoGuard {
        ErrnoGuard(Errno::last().0)
    }
}

impl Drop for ErrnoGuard {
    fn drop(&mut self) {
        // SAFETY: `__errno_location` returns this thread's errno slot.
        unsafe { *libc::__errno_location() = self.0 };
    }
}

/// Page protection as spf uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prot {
    None,
    Read,
    ReadWrite,
}

impl Prot {
    fn bits(self) -> libc::c_int {
        match self {
            Prot::None => libc::PROT_NONE,
            Prot::Read => libc::PROT_READ,
            Prot::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
        }
    }
}

fn check_range(addr: usize, len: usize) {
    debug_assert!(addr % PAGE_SIZE == 0 && len % PAGE_SIZE == 0, "I1");
}

/// The kernel's page size. Not signal-safe (only used at start).
pub fn kernel_page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// Where an anonymous mapping goes.
enum Place {
    /// Wherever the kernel chooses: a fresh range that aliases nothing.
    Anywhere,
    /// Exactly over `[addr, addr + len)` (`MAP_FIXED`), replacing it.
    Over(usize),
}

/// One `mmap` of `len` bytes of private anonymous memory with `prot`, plus
/// the flags in `extra` (`MAP_NORESERVE`). Async-signal-safe.
///
/// # Safety
/// With [`Place::Over`], the range must belong to spf's reservation, hold
/// nothing anyone still uses, and have no Rust reference into it (lazy
/// memory is reached only through raw pointers).
unsafe fn map_anonymous(
    place: Place,
    len: usize,
    prot: libc::c_int,
    extra: libc::c_int,
) -> Result<usize, Errno> {
    let (addr, fixed) = match place {
        Place::Anywhere => (ptr::null_mut(), 0),
        Place::Over(addr) => (addr as *mut libc::c_void, libc::MAP_FIXED),
    };
    // SAFETY: an anonymous mapping at the kernel's choice aliases nothing;
    // one over a given range replaces only that range, which the caller
    // vouches for (see # Safety).
    let p = unsafe {
        libc::mmap(
            addr,
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | fixed | extra,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        Err(Errno::last())
    } else {
        Ok(p as usize)
    }
}

/// Reserves `len` bytes of inaccessible address space aligned to `align`
/// (a power of two). The mapping is `MAP_NORESERVE`, so it costs no commit
/// charge until pages are made accessible and touched.
pub fn reserve(len: usize, align: usize) -> Result<usize, Errno> {
    inject::check(Call::Mmap)?;
    let total = len.checked_add(align).ok_or(Errno(libc::ENOMEM))?;
    // SAFETY: a fresh mapping at the kernel's choice.
    let raw =
        unsafe { map_anonymous(Place::Anywhere, total, libc::PROT_NONE, libc::MAP_NORESERVE)? };
    let start = (raw + align - 1) & !(align - 1);
    // Give back the unaligned head and the tail; we own both pieces.
    // SAFETY: both ranges lie inside the mapping just created, which nobody
    // else knows about yet.
    unsafe {
        if start > raw {
            libc::munmap(raw as *mut _, start - raw);
        }
        let end = start + len;
        if raw + total > end {
            libc::munmap(end as *mut _, raw + total - end);
        }
    }
    Ok(start)
}

/// Gives back part of a reservation at start, before anything uses it
/// (the lazy zone when no backend needs one).
pub fn unreserve(addr: usize, len: usize) {
    check_range(addr, len);
    // SAFETY: the range is part of the reservation just made, which nothing
    // has used or published yet.
    unsafe { libc::munmap(addr as *mut _, len) };
}

/// Maps `len` bytes of zeroed read/write memory for spf's own tables. The
/// kernel's demand paging makes it resident as it is touched; spf never
/// unmaps it, so a signal handler may read it at any time.
pub fn map_table(len: usize) -> Result<usize, Errno> {
    inject::check(Call::Mmap)?;
    let len = len.next_multiple_of(PAGE_SIZE);
    // Miri's `mmap` takes no flag beyond these two (and reserves nothing
    // anyway): without `MAP_NORESERVE` there, the table-backed logic of
    // `map` and `extent` runs under Miri (docs/reliability.md).
    let extra = if cfg!(miri) { 0 } else { libc::MAP_NORESERVE };
    // SAFETY: a fresh mapping at the kernel's choice.
    unsafe {
        map_anonymous(
            Place::Anywhere,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            extra,
        )
    }
}

/// Replaces `[addr, addr + len)` with fresh inaccessible memory, as the
/// reservation was made: the pages are dropped (they read as zero when
/// next committed) and access is revoked in one call. The way to drop pages
/// when `madvise` cannot. Async-signal-safe.
pub fn replace_reserved(addr: usize, len: usize) -> Result<(), Errno> {
    check_range(addr, len);
    inject::check(Call::Mmap)?;
    // SAFETY: callers only pass ranges inside spf's reservation (I1) whose
    // contents they have decided to drop.
    unsafe { map_anonymous(Place::Over(addr), len, libc::PROT_NONE, libc::MAP_NORESERVE) }
        .map(|_| ())
}

/// Changes the protection of `[addr, addr + len)`. Async-signal-safe.
pub fn protect(addr: usize, len: usize, prot: Prot) -> Result<(), Errno> {
    check_range(addr, len);
    inject::check(if prot == Prot::None {
        Call::MprotectRevoke
    } else {
        Call::MprotectCommit
    })?;
    // SAFETY: callers only pass ranges inside spf's reservation, which spf
    // owns; changing their protection affects no memory Rust code borrows
    // (lazy memory is reached only through raw pointers).
    let rc = unsafe { libc::mprotect(addr as *mut _, len, prot.bits()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::last())
    }
}

/// `madvise` over a range spf owns. Async-signal-safe.
fn advise(addr: usize, len: usize, advice: libc::c_int) -> Result<(), Errno> {
    check_range(addr, len);
    inject::check(Call::Madvise)?;
    // SAFETY: callers only pass ranges inside spf's reservation (I1), and
    // only advice that the caller has decided is safe for its contents.
    let rc = unsafe { libc::madvise(addr as *mut _, len, advice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::last())
    }
}

/// Drops the pages of `[addr, addr + len)` (they read as zero afterwards);
/// the caller has made sure no live data is there. Async-signal-safe.
pub fn discard(addr: usize, len: usize) -> Result<(), Errno> {
    advise(addr, len, libc::MADV_DONTNEED)
}

/// Pre-faults `[addr, addr + len)` so that the accesses that follow take no
/// kernel page fault. Async-signal-safe. Fails with `EINVAL` before Linux 5.14.
pub fn populate(addr: usize, len: usize, write: bool) -> Result<(), Errno> {
    let advice = if write {
        MADV_POPULATE_WRITE
    } else {
        MADV_POPULATE_READ
    };
    advise(addr, len, advice)
}

/// `MADV_GUARD_INSTALL` / `MADV_GUARD_REMOVE` (Linux 6.13): guard markers
/// in the page tables, which fault like `PROT_NONE` without splitting the
/// kernel's mapping.
const MADV_GUARD_INSTALL: libc::c_int = 102;
const MADV_GUARD_REMOVE: libc::c_int = 103;

/// Installs guard markers on `[addr, addr + len)`: its pages are dropped and
/// every access faults (`SIGSEGV`) until the markers are removed. Takes the
/// kernel's `mmap_lock` for read only. Async-signal-safe. `EINVAL` before
/// Linux 6.13.
pub fn guard_install(addr: usize, len: usize) -> Result<(), Errno> {
    advise(addr, len, MADV_GUARD_INSTALL)
}

/// Removes the guard markers of `[addr, addr + len)`; the next access takes
/// an ordinary demand fault. Async-signal-safe.
pub fn guard_remove(addr: usize, len: usize) -> Result<(), Errno> {
    inject::check(Call::GuardRemove)?;
    advise(addr, len, MADV_GUARD_REMOVE)
}

/// Asks for transparent huge pages on `[addr, addr + len)`.
pub fn advise_huge(addr: usize, len: usize) -> Result<(), Errno> {
    advise(addr, len, libc::MADV_HUGEPAGE)
}

// --- userfaultfd ------------------------------------------------------------
//
// The uapi constants (`linux/userfaultfd.h`; the libc crate has none of
// them). The ioctl numbers are `_IOWR(0xAA, nr, struct)`, the same on every
// architecture spf builds for.

const UFFD_API: u64 = 0xAA;
/// `UFFD_USER_MODE_ONLY` (Linux 5.11): only faults taken in user mode are
/// reported, which is what lets an unprivileged process open the fd.
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
/// `UFFD_FEATURE_SIGBUS`: a missing page raises `SIGBUS` in the faulting
/// thread instead of queueing a message for a reader thread.
const UFFD_FEATURE_SIGBUS: u64 = 1 << 7;
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
/// No thread sleeps on a fault in `SIGBUS` mode, so none needs waking.
const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// Opens a userfaultfd in `SIGBUS` mode (user-mode faults only, so no
/// privilege is needed). Not signal-safe in spirit (used at start and in a
/// fork child), though every call in it is a plain system call.
pub fn uffd_open() -> Result<i32, Errno> {
    inject::check(Call::Userfaultfd)?;
    // SAFETY: userfaultfd takes only flags and returns a new descriptor.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_userfaultfd,
            libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY,
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    let fd = fd as i32;
    let mut api = UffdioApi {
        api: UFFD_API,
        features: UFFD_FEATURE_SIGBUS,
        ioctls: 0,
    };
    // SAFETY: `api` is a valid uffdio_api for the kernel to read and fill.
    if unsafe { libc::ioctl(fd, UFFDIO_API, &mut api) } != 0 {
        let errno = Errno::last();
        close(fd);
        return Err(errno);
    }
    Ok(fd)
}

/// Registers `[addr, addr + len)` with `fd` for missing-page faults.
pub fn uffd_register(fd: i32, addr: usize, len: usize) -> Result<(), Errno> {
    check_range(addr, len);
    inject::check(Call::UffdRegister)?;
    let mut reg = UffdioRegister {
        range: UffdioRange {
            start: addr as u64,
            len: len as u64,
        },
        mode: UFFDIO_REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    // SAFETY: `reg` is a valid uffdio_register; the range is spf's own
    // read/write reservation.
    if unsafe { libc::ioctl(fd, UFFDIO_REGISTER, &mut reg) } != 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Why a `UFFDIO_COPY` stopped, and how far it got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyStopped {
    pub errno: Errno,
    /// Bytes copied before it stopped.
    pub copied: usize,
}

/// Fills the missing pages of `[dst, dst + len)` with a copy of
/// `[src, src + len)`, allocating them at once. Stops at the first page
/// that is already present (`EEXIST`), or part-way with `EAGAIN`; `copied`
/// says how far it got. Takes the kernel's per-VMA lock for read, never
/// `mmap_lock` for write. Async-signal-safe.
pub fn uffd_copy(fd: i32, dst: usize, src: usize, len: usize) -> Result<(), CopyStopped> {
    check_range(dst, len);
    if let Err(errno) = inject::check(Call::UffdCopy) {
        return Err(CopyStopped { errno, copied: 0 });
    }
    let mut copy = UffdioCopy {
        dst: dst as u64,
        src: src as u64,
        len: len as u64,
        mode: UFFDIO_COPY_MODE_DONTWAKE,
        copy: 0,
    };
    // SAFETY: `copy` is a valid uffdio_copy; `dst` is a registered range spf
    // owns, `src` is readable memory of at least `len` bytes (callers pass
    // spf's zero source).
    if unsafe { libc::ioctl(fd, UFFDIO_COPY, &mut copy) } == 0 {
        return Ok(());
    }
    Err(CopyStopped {
        errno: Errno::last(),
        copied: copy.copy.max(0) as usize,
    })
}

/// Closes a descriptor. Async-signal-safe.
pub fn close(fd: i32) {
    // SAFETY: closing a descriptor spf opened and owns.
    unsafe { libc::close(fd) };
}

/// Replaces `[addr, addr + len)` with fresh read/write memory that costs no
/// commit charge until touched (`MAP_NORESERVE`): the userfaultfd zone's
/// mapping. Dropping what was there.
pub fn map_lazy_readwrite(addr: usize, len: usize) -> Result<(), Errno> {
    check_range(addr, len);
    inject::check(Call::Mmap)?;
    // SAFETY: callers pass a range of spf's own reservation that holds
    // nothing anyone still uses.
    unsafe {
        map_anonymous(
            Place::Over(addr),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_NORESERVE,
        )
    }
    .map(|_| ())
}

/// Maps `len` bytes that read as zero and are never written: the source of
/// `UFFDIO_COPY`. Reads of it map the kernel's shared zero page, so it costs
/// no memory.
pub fn map_zero_source(len: usize) -> Result<usize, Errno> {
    inject::check(Call::Mmap)?;
    // SAFETY: a fresh mapping at the kernel's choice.
    unsafe { map_anonymous(Place::Anywhere, len, libc::PROT_READ, libc::MAP_NORESERVE) }
}

/// The first byte of a small `/proc` or `/sys` file (e.g. `b'2'` for
/// `vm.overcommit_memory` in strict mode), read without allocating.
pub fn read_first_byte(path: &CStr) -> Option<u8> {
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut byte = 0u8;
    // SAFETY: one writable byte.
    let n = unsafe { libc::read(fd, (&mut byte as *mut u8).cast(), 1) };
    close(fd);
    (n == 1).then_some(byte)
}

/// The CPU this thread runs on (a vDSO call; async-signal-safe). Returns 0
/// where the kernel cannot tell.
#[inline]
pub fn current_cpu() -> usize {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    if cpu < 0 {
        0
    } else {
        cpu as usize
    }
}

std::thread_local! {
    /// A byte whose address names this thread (see `thread_id`). std's
    /// TLS, not loom's: a plain `#[thread_local]` (const-initialised, no
    /// destructor), which the fault handler may reach.
    static THREAD_MARK: u8 = const { 0 };
}

/// A non-zero number naming the calling thread among the process's live
/// threads: the address of a thread-local byte, so no system call (the
/// space lock records its holder on every acquisition, and a `gettid` each
/// time cost about 8,000 calls a repetition of the mixed torture) and no
/// cached state to go stale (a `vfork` child, or a fork child, shares or
/// copies its parent thread's TLS: it names itself as that thread, which
/// is suspended or absent meanwhile). Not the kernel's thread id.
/// Async-signal-safe.
#[inline]
pub fn thread_id() -> usize {
    THREAD_MARK.with(|mark| mark as *const u8 as usize)
}

/// Gives the CPU to another thread. Async-signal-safe.
#[inline]
pub fn yield_now() {
    // SAFETY: sched_yield has no preconditions.
    unsafe { libc::sched_yield() };
}

/// Sleeps while `*word == expected` (a private futex). Async-signal-safe.
pub fn futex_wait(word: &core::sync::atomic::AtomicU32, expected: u32) {
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            ptr::null::<libc::timespec>(),
        );
    }
}

/// Wakes one thread sleeping on `word`. Async-signal-safe.
pub fn futex_wake_one(word: &core::sync::atomic::AtomicU32) {
    // SAFETY: `word` is a valid, aligned u32.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        );
    }
}

/// Writes all of `bytes` to standard error, ignoring failures.
/// Async-signal-safe.
pub fn write_stderr(bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        // SAFETY: `rest` is a valid readable buffer of the given length.
        let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        if n <= 0 {
            if n < 0 && Errno::last().0 == libc::EINTR {
                continue;
            }
            return;
        }
        rest = &rest[n as usize..];
    }
}

/// Ends the process at once (`SIGABRT`). Async-signal-safe.
pub fn abort() -> ! {
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

/// Reads an environment variable without allocating (public as
/// `spf_core::getenv`). Not signal-safe; meant for reading settings once.
pub fn env(name: &CStr) -> Option<&'static [u8]> {
    // SAFETY: `name` is NUL-terminated. The returned string lives in the
    // environment block, which spf treats as read-only; it stays valid as
    // long as nobody calls setenv on that name, which spf documents.
    unsafe {
        let p = libc::getenv(name.as_ptr());
        if p.is_null() {
            None
        } else {
            Some(CStr::from_ptr(p).to_bytes())
        }
    }
}

/// Registers `f` to run at normal process exit.
pub fn at_exit(f: extern "C" fn()) {
    // SAFETY: `f` is a plain function with the signature atexit wants.
    unsafe { libc::atexit(f) };
}

/// Registers fork handlers (see `Space::fork_*`).
pub fn at_fork(prepare: extern "C" fn(), parent: extern "C" fn(), child: extern "C" fn()) {
    // SAFETY: the three are plain functions with the signature pthread_atfork wants.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}

/// Whether `addr` can be read right now, found without touching it: `write(2)`
/// of one byte from it into a pipe fails with `EFAULT` if the page is not
/// readable. Used by tests and invariant checks, never by the handler.
pub fn probe_readable(addr: usize) -> bool {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return false;
    }
    // SAFETY: the kernel checks `addr` itself; a bad address gives EFAULT.
    let n = unsafe { libc::write(fds[1], addr as *const _, 1) };
    // SAFETY: both descriptors were just opened here.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    n == 1
}

/// This process's resident memory in bytes, from `/proc/self/statm`,
/// read without allocating; `None` where it cannot be read.
pub fn resident_bytes() -> Option<usize> {
    let mut buf = [0u8; 128];
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe {
        libc::open(
            c"/proc/self/statm".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: `buf` is writable for its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: opened above.
    unsafe { libc::close(fd) };
    if n <= 0 {
        return None;
    }
    // The second field is the resident set, in pages.
    let text = &buf[..n as usize];
    let field = text.split(|&b| b == b' ').nth(1)?;
    let pages = crate::options::parse_size(field)?;
    Some(pages * kernel_page_size())
}

/// Nanoseconds of a monotonic clock. Async-signal-safe.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to fill in.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The saved disposition of a signal.
pub type SigAction = libc::sigaction;

/// The signature of an `SA_SIGINFO` handler.
pub type SigInfoHandler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

/// Installs `handler` for `sig` (`SIGSEGV` or `SIGBUS`) and writes the
/// action it replaced to `old`.
///
/// Flags:
/// - `SA_SIGINFO`: the handler needs `si_addr` and the register context.
/// - `SA_ONSTACK`: a fault caused by stack overflow can only be handled on the
///   alternate stack that std installs; the handler is small enough for it.
/// - `SA_NODEFER`: a fault raised while the handler runs (inside a chained
///   handler, say) must be delivered rather than blocked: a blocked
///   synchronous `SIGSEGV` makes the kernel kill the process silently.
///
/// Small frames, debug builds included: this runs inside spf's handler when
/// a handler it chained to chains back into it, nested on std's 8 KiB
/// alternate stack. The old action goes to the caller's slot, and the new
/// one is built in place: returning the old one and `mem::zeroed` copies
/// made this frame 1.2 KiB in a debug build, and the alternate stack
/// overflowed on a CPU whose signal frame takes 3.4 KiB of it.
pub fn install_handler(
    sig: libc::c_int,
    handler: SigInfoHandler,
    old: &mut MaybeUninit<SigAction>,
) -> Result<(), Errno> {
    let mut new = MaybeUninit::<SigAction>::zeroed();
    let p = new.as_mut_ptr();
    // SAFETY: an all-zero sigaction is valid (no handler, no flags, an empty
    // mask); sigemptyset and sigaction are given valid pointers, and the
    // kernel fills `old` whole when the call succeeds.
    unsafe {
        (*p).sa_sigaction = handler as usize;
        (*p).sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
        libc::sigemptyset(&mut (*p).sa_mask);
        if libc::sigaction(sig, p, old.as_mut_ptr()) != 0 {
            return Err(Errno::last());
        }
    }
    Ok(())
}

/// The handler address installed for `sig` now.
pub fn current_handler(sig: libc::c_int) -> usize {
    // SAFETY: a zeroed sigaction is valid to fill in; a null new action
    // only queries.
    unsafe {
        let mut now: libc::sigaction = core::mem::zeroed();
        libc::sigaction(sig, ptr::null(), &mut now);
        now.sa_sigaction
    }
}

/// Resets `sig` to the default disposition. Async-signal-safe.
pub fn default_handler(sig: libc::c_int) {
    // SAFETY: a zeroed sigaction with SIG_DFL is a valid disposition.
    unsafe {
        let mut dfl: libc::sigaction = core::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(sig, &dfl, ptr::null_mut());
    }
}

/// Sends `sig` to the calling thread. Async-signal-safe.
pub fn raise(sig: libc::c_int) {
    // SAFETY: raise has no preconditions.
    unsafe { libc::raise(sig) };
}

/// `SIG_DFL` with no flags and an empty mask, as a saved disposition.
pub fn default_action() -> SigAction {
    // SAFETY: a zeroed sigaction is a valid value; SIG_DFL is 0.
    let mut dfl: libc::sigaction = unsafe { core::mem::zeroed() };
    dfl.sa_sigaction = libc::SIG_DFL;
    dfl
}

/// A thread's set of blocked signals.
pub type SigSet = libc::sigset_t;

/// Blocks every signal on this thread; returns the mask it replaced.
/// Async-signal-safe.
pub fn block_all_signals() -> SigSet {
    // SAFETY: zeroed sigsets are valid to fill in; pthread_sigmask is given
    // valid pointers.
    unsafe {
        let mut all: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut all);
        let mut old: libc::sigset_t = core::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        old
    }
}

/// Adds `mask` and, if `sig` is not 0, `sig` to this thread's blocked
/// signals; returns the mask it replaced. Async-signal-safe.
pub fn block_signals(mask: &SigSet, sig: libc::c_int) -> SigSet {
    // SAFETY: as in `block_all_signals`.
    unsafe {
        let mut add = *mask;
        if sig != 0 {
            libc::sigaddset(&mut add, sig);
        }
        let mut old: libc::sigset_t = core::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &add, &mut old);
        old
    }
}

/// Makes `mask` this thread's blocked signals. Async-signal-safe.
pub fn set_signal_mask(mask: &SigSet) {
    // SAFETY: `mask` is a valid sigset.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, mask, ptr::null_mut()) };
}

/// Unblocks `sig` on this thread. Async-signal-safe.
pub fn unblock_signal(sig: libc::c_int) {
    // SAFETY: a zeroed sigset filled in with one signal.
    unsafe {
        let mut one: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&mut one);
        libc::sigaddset(&mut one, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &one, ptr::null_mut());
    }
}

/// Whether this thread blocks `sig` now. Async-signal-safe.
pub fn signal_blocked(sig: libc::c_int) -> bool {
    // SAFETY: a zeroed sigset to fill in; a null new set only queries.
    unsafe {
        let mut now: libc::sigset_t = core::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, ptr::null(), &mut now);
        libc::sigismember(&now, sig) == 1
    }
}

/// What the previous disposition of a signal was, for chaining.
pub enum PreviousHandler {
    /// `SIG_DFL`: the process ends by the signal.
    Default,
    /// `SIG_IGN`: a signal a process sent is dropped; a fault kills as with
    /// `SIG_DFL` (the kernel forces the default on an ignored fault).
    Ignore,
    Info(SigInfoHandler),
    Plain(extern "C" fn(libc::c_int)),
}

/// Classifies a saved disposition. Async-signal-safe.
pub fn classify_previous(action: &SigAction) -> PreviousHandler {
    let h = action.sa_sigaction;
    if h == libc::SIG_DFL {
        PreviousHandler::Default
    } else if h == libc::SIG_IGN {
        PreviousHandler::Ignore
    } else if action.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: with SA_SIGINFO set, sa_sigaction holds a three-argument handler.
        PreviousHandler::Info(unsafe { core::mem::transmute::<usize, SigInfoHandler>(h) })
    } else {
        // SAFETY: without SA_SIGINFO, the field holds a one-argument handler.
        PreviousHandler::Plain(unsafe {
            core::mem::transmute::<usize, extern "C" fn(libc::c_int)>(h)
        })
    }
}

/// The faulting address of a `SIGSEGV` or `SIGBUS`. Async-signal-safe.
///
/// # Safety
/// `info` must be the `siginfo_t` the kernel passed to the handler.
pub unsafe fn fault_address(info: *const libc::siginfo_t) -> usize {
    // SAFETY: the caller passes the kernel's siginfo for a SIGSEGV or
    // SIGBUS, whose si_addr field is valid.
    unsafe { (*info).si_addr() as usize }
}

/// Whether the signal was sent by a process (`kill`, `raise`, `sigqueue`,
/// `tgkill`: `si_code <= 0`) rather than raised by the kernel for a fault.
/// Async-signal-safe.
///
/// # Safety
/// `info` must be the `siginfo_t` the kernel passed to the handler.
pub unsafe fn sent_by_process(info: *const libc::siginfo_t) -> bool {
    // SAFETY: si_code is valid in every siginfo.
    unsafe { (*info).si_code <= 0 }
}

/// Whether the faulting access was a write, where the architecture says so.
/// Async-signal-safe.
///
/// # Safety
/// `context` must be the `ucontext_t` the kernel passed to the handler.
pub unsafe fn fault_is_write(context: *const libc::c_void) -> Option<bool> {
    #[cfg(all(target_arch = "x86_64", target_env = "gnu"))]
    {
        // Bit 1 of the page-fault error code is set for write accesses.
        let uc = context as *const libc::ucontext_t;
        // SAFETY: the caller passes the kernel's ucontext; REG_ERR is inside gregs.
        let err = unsafe { (*uc).uc_mcontext.gregs[libc::REG_ERR as usize] };
        Some(err & 2 != 0)
    }
    #[cfg(not(all(target_arch = "x86_64", target_env = "gnu")))]
    {
        let _ = context;
        None
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn each_thread_has_its_own_id() {
        let main = thread_id();
        assert_ne!(main, 0);
        assert_eq!(thread_id(), main, "the id changed");
        let others: Vec<usize> = (0..4)
            .map(|_| std::thread::spawn(thread_id))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        for (i, &id) in others.iter().enumerate() {
            assert_ne!(id, main, "thread {i} got the main thread's id");
            assert_ne!(id, 0);
        }
    }
}
