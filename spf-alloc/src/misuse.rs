//! Misuse of the allocator that spf can recognise: the process ends with a
//! message naming the pointer, instead of handing memory out twice.
//!
//! What is checked, and when:
//! - large blocks, always (release too): a double free, or a large free of
//!   a pointer that is not a live large block (`large::check_live`; the
//!   check is a lock-free region lookup, beside a free that already costs
//!   a cache operation or a system call);
//! - small and medium blocks, in debug builds: a free of a pointer outside
//!   spf's segments (a region lookup), a double free, or a free of a
//!   pointer that is not the start of a block (the block ledger below).
//!   Release builds do not check them: the check would cost the fast path
//!   a read-modify-write per allocation and per free.
//!
//! The block ledger (debug builds): one bit per block of a page, set when
//! the block is handed out and cleared when it is freed, with atomic
//! read-modify-writes because remote frees clear bits from other threads.
//! Invariant: bit set ⟺ the block is allocated (not on its page's `free`,
//! `local_free` or `thread_free`, nor cached or buffered by a thread that
//! freed it).

use crate::segment::Page;
#[cfg(debug_assertions)]
use crate::{segment::SEGMENT_SIZE, size_class::block_size};

/// Reports a small or medium free of a pointer outside spf's segments,
/// before anything reads the segment it would mask to.
#[cfg(debug_assertions)]
pub fn check_in_segment(ptr: *const u8) {
    let segment = ptr as usize & !(SEGMENT_SIZE - 1);
    if !spf_core::region_at(ptr).is_some_and(|r| r.start == segment && r.len == SEGMENT_SIZE) {
        report(
            ptr,
            "free of a pointer that is not a small block from spf (a foreign pointer, a \
             double free of a freed segment, or a wrong Layout)",
        );
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn check_in_segment(_ptr: *const u8) {}

/// Ends the process: `what` names the misuse, `ptr` the pointer.
#[cold]
#[inline(never)]
pub fn report(ptr: *const u8, what: &str) -> ! {
    spf_core::report(format_args!("spf: {what}: {ptr:p}\n"));
    std::process::abort();
}

/// The block's index in its page, or a report if `ptr` is not the start of
/// a block the page has carved.
#[cfg(debug_assertions)]
fn block_index(p: &Page, ptr: *const u8) -> usize {
    let size = block_size(p.class.get() as usize);
    let off = (ptr as usize).wrapping_sub(p.area.get() as usize);
    if off % size != 0 || off / size >= p.capacity.get() as usize {
        report(
            ptr,
            "free of a pointer that is not the start of a small block from spf (a foreign or \
             interior pointer, or a wrong Layout)",
        );
    }
    off / size
}

/// Records that `ptr` is handed out. A set bit means the free lists held a
/// block that is also allocated: spf's own bug, or a double free that slipped
/// past the free check (it cannot in debug builds).
#[cfg(debug_assertions)]
pub fn on_alloc(p: &Page, ptr: *const u8) {
    let i = block_index(p, ptr);
    let bit = 1u64 << (i % 64);
    // Relaxed: the ledger orders nothing; each bit is changed only by the
    // one thread that owns the block at that moment.
    let was = p.ledger[i / 64].fetch_or(bit, core::sync::atomic::Ordering::Relaxed);
    if was & bit != 0 {
        report(ptr, "a small block handed out twice (heap corruption)");
    }
}

/// Records that `ptr` is freed; reports a double free.
#[cfg(debug_assertions)]
pub fn on_free(p: &Page, ptr: *const u8) {
    let i = block_index(p, ptr);
    let bit = 1u64 << (i % 64);
    // Relaxed: as in `on_alloc`.
    let was = p.ledger[i / 64].fetch_and(!bit, core::sync::atomic::Ordering::Relaxed);
    if was & bit == 0 {
        report(ptr, "double free of a small block (it is already free)");
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn on_alloc(_p: &Page, _ptr: *const u8) {}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn on_free(_p: &Page, _ptr: *const u8) {}
