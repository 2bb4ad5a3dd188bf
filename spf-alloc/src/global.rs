//! `SpfAlloc`: the `GlobalAlloc` front. It classifies a request by its
//! `Layout` — a size class (small or medium) or large — and delegates; the
//! same `Layout` comes back to `dealloc` and `realloc`, so classifying
//! again finds the same place without any lookup.

use crate::size_class::{block_size, class_for, is_small};
use crate::{heap, large, options};
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::null_mut;
use likely_stable::unlikely;

/// The spf allocator. Install it with
///
/// ```
/// #[global_allocator]
/// static GLOBAL: spf_alloc::SpfAlloc = spf_alloc::SpfAlloc::new();
/// # fn main() { let v = vec![1u8; 1 << 20]; assert_eq!(v[12345], 1); }
/// ```
///
/// Large blocks (above 256 KiB) are committed when allocated, unless
/// `SPF_COMMIT=touch` is set or the allocator is [`SpfAlloc::lazy`].
#[derive(Debug)]
pub struct SpfAlloc {
    commit: Commit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commit {
    /// As `SPF_COMMIT` says (eager unless `touch`).
    FromEnv,
    /// Always on touch.
    Touch,
}

impl SpfAlloc {
    /// The allocator, with large blocks committed as `SPF_COMMIT` says
    /// (eager by default).
    pub const fn new() -> Self {
        SpfAlloc {
            commit: Commit::FromEnv,
        }
    }

    /// The allocator with large blocks committed on first touch by the
    /// speculative fault path. Memory from it must be touched (or
    /// prefaulted) before a system call writes into it: the kernel answers
    /// such a call with `EFAULT`. That holds for `alloc_zeroed` too (so
    /// for `vec![0; n]`): a fresh region reads as zero without being
    /// touched, so a zeroed large block comes back untouched; write to it
    /// (e.g. `resize` with zeros, or one byte per page) before a `read()`
    /// or `recv()` into it. Under the userfaultfd commit backend this also
    /// holds for a large block reused from the cache after decay purged it:
    /// its pages are missing until touched. (Blocks from [`SpfAlloc::new`]
    /// never have this problem under any backend.)
    ///
    /// A thread that blocks `SIGSEGV` or `SIGBUS` (`sigfillset` +
    /// `pthread_sigmask`, as servers do in worker threads) is killed by the
    /// kernel when it first touches an untouched large block from `lazy()`:
    /// the kernel forces a blocked fault signal to its default action before
    /// spf's handler can run. Leave those two signals unblocked in threads
    /// that use lazy memory (`spf_core::check_signal_mask()` tells), or use
    /// [`SpfAlloc::new`], which commits large blocks before returning them.
    pub const fn lazy() -> Self {
        SpfAlloc {
            commit: Commit::Touch,
        }
    }

    #[inline]
    fn lazy_large(&self) -> bool {
        self.commit == Commit::Touch || options::commit_on_touch()
    }

    // The large paths apart, so the small ones keep no registers across a
    // call (no prologue).
    #[cold]
    #[inline(never)]
    fn alloc_large(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        large::alloc(layout.size(), layout.align(), self.lazy_large(), zeroed)
    }

    #[cold]
    #[inline(never)]
    fn dealloc_large(&self, ptr: *mut u8, layout: Layout) {
        large::dealloc(ptr, layout.size(), self.lazy_large())
    }

    #[inline]
    fn guard(&self) {
        // The fault handler must never allocate (spf-core's rule); debug
        // builds check it here, as `HandlerAllocGuard` does.
        #[cfg(debug_assertions)]
        if spf_core::in_fault_handler() {
            spf_core::report(format_args!("spf: allocation inside the fault handler\n"));
            std::process::abort();
        }
    }
}

impl Default for SpfAlloc {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every block returned is at least `layout.size()` bytes, aligned
// to `layout.align()` (size classes W1/alignment rule in `size_class`, large
// regions aligned by spf-core), not aliased until freed; failures return
// null; `dealloc` and `realloc` find the block from the same layout.
unsafe impl GlobalAlloc for SpfAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.guard();
        match class_for(layout.size(), layout.align()) {
            // SAFETY: `class_for` gives classes below CLASSES.
            Some(class) => unsafe { heap::alloc(class) },
            None => self.alloc_large(layout, false),
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.guard();
        // The layout gives the class the block was allocated in (`realloc`
        // keeps a block only within its class): a small block goes to the
        // thread cache without its page being read.
        match class_for(layout.size(), layout.align()) {
            // SAFETY: the GlobalAlloc contract: `ptr` is a live block we
            // handed out for `layout`, so a block of class `c`.
            Some(c) if is_small(c) => unsafe { heap::dealloc_small(ptr, c) },
            // SAFETY: as above: a medium block.
            Some(_) => unsafe { heap::dealloc(ptr) },
            None => self.dealloc_large(ptr, layout),
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.guard();
        match class_for(layout.size(), layout.align()) {
            Some(class) => {
                // SAFETY: `class_for` gives classes below CLASSES.
                let p = unsafe { heap::alloc(class) };
                if !p.is_null() {
                    // SAFETY: a fresh block of at least `size` bytes.
                    unsafe { core::ptr::write_bytes(p, 0, layout.size()) };
                }
                p
            }
            // Fresh regions are zero already; only reused dirty ones are
            // cleared (see `large`).
            None => self.alloc_large(layout, true),
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.guard();
        let align = layout.align();
        let old = class_for(layout.size(), align);
        let new = class_for(new_size, align);
        match (old, new) {
            (Some(a), Some(b)) if a == b => return ptr,
            (None, None) => {
                return large::realloc(ptr, layout.size(), align, new_size, self.lazy_large())
            }
            _ => {}
        }
        // SAFETY: the GlobalAlloc contract makes `new_size` with `align` a
        // valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, align) };
        // SAFETY: forwarded to our own alloc.
        let p = unsafe { self.alloc(new_layout) };
        if unlikely(p.is_null()) {
            return null_mut();
        }
        let keep = layout.size().min(new_size);
        if new.is_none() && self.lazy_large() {
            // docs/DESIGN.md: commit lazy memory before the allocator writes into it.
            // SAFETY: `p` is the large block just allocated.
            if let Some(r) = unsafe { spf_core::Region::from_raw(p) } {
                let _ = r.commit(0..keep);
                r.into_raw();
            }
        }
        // SAFETY: both blocks are live and distinct; `keep` bytes are valid
        // in both.
        unsafe { core::ptr::copy_nonoverlapping(ptr, p, keep) };
        // SAFETY: `ptr` was allocated with `layout` and is freed once.
        unsafe { self.dealloc(ptr, layout) };
        p
    }
}

/// The usable size of a block allocated with `layout`.
pub fn usable_size(layout: Layout) -> usize {
    match class_for(layout.size(), layout.align()) {
        Some(class) => block_size(class),
        None => large::round(layout.size()).unwrap_or(0),
    }
}
