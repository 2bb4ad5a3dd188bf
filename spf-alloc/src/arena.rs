//! `Arena`: a reserve/commit arena. `with_capacity` reserves address space;
//! allocation bumps a pointer (from any number of threads, with one CAS);
//! memory is committed on first touch by spf's fault handler; `reset`
//! decommits everything at once.
//!
//! # The `EFAULT` rule
//!
//! Arena memory is committed on *touch*. A system call that writes into
//! untouched arena memory — `read(fd, buf, n)`, `recv`, … — fails with
//! `EFAULT` instead of faulting it in, because the kernel does not raise a
//! signal for its own accesses. Call [`Arena::prefault`] on a buffer before
//! handing it to the kernel (or write to it first).
//!
//! ```
//! use spf_alloc::Arena;
//! use std::alloc::Layout;
//! let arena = Arena::with_capacity(64 << 20).unwrap();
//! let p = arena.alloc(Layout::new::<[u64; 512]>()).unwrap();
//! // SAFETY: 4 KiB of fresh arena memory; the write commits it.
//! unsafe { p.as_ptr().cast::<u64>().write(42) };
//! assert!(arena.committed() >= 4096);
//! ```

use core::alloc::Layout;
use core::fmt;
use core::ops::Range;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};
use spf_core::{Region, RegionOptions};

/// Why an arena could not be made or could not allocate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArenaError {
    /// The arena's capacity is used up.
    Exhausted { requested: usize, remaining: usize },
    /// Allocating would let committed memory pass the arena's limit.
    CommitLimit { limit: usize, needed: usize },
    /// A prefault range outside what the arena has handed out.
    BadRange {
        start: usize,
        end: usize,
        used: usize,
    },
    /// spf-core could not reserve or commit.
    Region(spf_core::Error),
}

impl fmt::Display for ArenaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ArenaError::Exhausted {
                requested,
                remaining,
            } => write!(
                f,
                "spf arena: {requested} bytes requested but only {remaining} remain; make the \
                 arena larger or reset it"
            ),
            ArenaError::CommitLimit { limit, needed } => write!(
                f,
                "spf arena: this allocation would need {needed} bytes committed, over the \
                 arena's commit limit of {limit}; reset the arena or raise the limit"
            ),
            ArenaError::BadRange { start, end, used } => write!(
                f,
                "spf arena: range {start}..{end} is outside the {used} bytes handed out"
            ),
            ArenaError::Region(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ArenaError {}

impl From<spf_core::Error> for ArenaError {
    fn from(e: spf_core::Error) -> Self {
        ArenaError::Region(e)
    }
}

/// A bump arena of lazily committed memory.
pub struct Arena {
    region: Region,
    next: AtomicUsize,
    limit: usize,
}

const GRANULE: usize = 64 << 10;

impl Arena {
    /// Reserves `bytes` of address space (rounded up to 64 KiB); nothing is
    /// committed until touched.
    pub fn with_capacity(bytes: usize) -> Result<Arena, ArenaError> {
        Self::with_commit_limit(bytes, usize::MAX)
    }

    /// As `with_capacity`, and allocation fails with
    /// [`ArenaError::CommitLimit`] rather than let committed memory pass
    /// `limit` bytes.
    pub fn with_commit_limit(bytes: usize, limit: usize) -> Result<Arena, ArenaError> {
        let opts = RegionOptions::default()
            .granule(GRANULE)
            .commit_ahead(1 << 20);
        Ok(Arena {
            region: Region::reserve(bytes, opts)?,
            next: AtomicUsize::new(0),
            limit,
        })
    }

    /// Bumps out a block for `layout`. Thread-safe.
    pub fn alloc(&self, layout: Layout) -> Result<NonNull<u8>, ArenaError> {
        let base = self.region.as_ptr() as usize;
        let cap = self.region.len();
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            let start = (base + cur).next_multiple_of(layout.align()) - base;
            let end = start.saturating_add(layout.size());
            if end > cap {
                return Err(ArenaError::Exhausted {
                    requested: layout.size(),
                    remaining: cap - cur,
                });
            }
            // Committed memory is at most the granules covering [0, end).
            let needed = end.next_multiple_of(GRANULE);
            if needed > self.limit {
                return Err(ArenaError::CommitLimit {
                    limit: self.limit,
                    needed,
                });
            }
            // Relaxed: the bump only hands out disjoint ranges; the memory
            // itself is published by whoever writes it.
            match self
                .next
                .compare_exchange_weak(cur, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                // SAFETY: base + start lies inside the live region, not null.
                Ok(_) => return Ok(unsafe { NonNull::new_unchecked((base + start) as *mut u8) }),
                Err(seen) => cur = seen,
            }
        }
    }

    /// Commits the granules covering `range` (byte offsets into what the
    /// arena has handed out) now, so the kernel can write there (see the
    /// `EFAULT` rule).
    pub fn prefault(&self, range: Range<usize>) -> Result<(), ArenaError> {
        let used = self.used();
        if range.start > range.end || range.end > used {
            return Err(ArenaError::BadRange {
                start: range.start,
                end: range.end,
                used,
            });
        }
        Ok(self.region.commit(range)?)
    }

    /// Commits the memory of a block this arena handed out.
    pub fn prefault_block(&self, ptr: NonNull<u8>, len: usize) -> Result<(), ArenaError> {
        let off = (ptr.as_ptr() as usize).wrapping_sub(self.region.as_ptr() as usize);
        self.prefault(off..off.saturating_add(len))
    }

    /// Forgets every allocation and gives all memory back (decommit).
    pub fn reset(&mut self) {
        self.region
            .decommit(0..self.region.len())
            .expect("the whole region is granule aligned");
        *self.next.get_mut() = 0;
    }

    /// Bytes committed now.
    pub fn committed(&self) -> usize {
        self.region.committed()
    }

    /// Bytes handed out (with alignment padding).
    pub fn used(&self) -> usize {
        self.next.load(Ordering::Relaxed)
    }

    /// Bytes reserved.
    pub fn capacity(&self) -> usize {
        self.region.len()
    }
}
