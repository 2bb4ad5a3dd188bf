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
    Exhausted {
        /// Bytes asked for (with alignment padding).
        requested: usize,
        /// Bytes left in the arena.
        remaining: usize,
    },
    /// Allocating would let committed memory pass the arena's limit.
    CommitLimit {
        /// The arena's commit limit in bytes.
        limit: usize,
        /// Bytes that would be committed.
        needed: usize,
    },
    /// A prefault range outside what the arena has handed out.
    BadRange {
        /// Start of the range, in bytes from the arena's start.
        start: usize,
        /// End of the range.
        end: usize,
        /// Bytes the arena has handed out.
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
///
/// Memory is committed by spf's fault handler on first touch, so a thread
/// that blocks `SIGSEGV` or `SIGBUS` (`sigfillset` + `pthread_sigmask`, as
/// servers do in worker threads) is killed by the kernel when it first
/// touches uncommitted arena memory — the kernel forces a blocked fault
/// signal to its default action before any handler runs. In such threads
/// [`Arena::prefault`] what will be touched, or unblock those two signals;
/// `spf_core::check_signal_mask()` tells a thread which case it is in.
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
    /// `limit` bytes. The arena then reserves no more than the limit
    /// (rounded down to 64 KiB; [`Arena::capacity`] says what it got):
    /// a bump arena never hands out memory past its limit before a reset,
    /// and the fault path's commit-ahead, which commits granules ahead of
    /// the touch, stops at the region's end.
    pub fn with_commit_limit(bytes: usize, limit: usize) -> Result<Arena, ArenaError> {
        let opts = RegionOptions::default()
            .granule(GRANULE)
            .commit_ahead(1 << 20);
        // At least one granule: a region cannot be empty, and a limit below
        // a granule refuses every allocation anyway (`alloc`).
        let usable = (limit / GRANULE * GRANULE).max(GRANULE);
        Ok(Arena {
            region: Region::reserve(bytes.min(usable), opts)?,
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
            // Committed memory is at most the granules covering [0, end)
            // (the region ends within the limit, so commit-ahead too).
            let needed = end.checked_next_multiple_of(GRANULE).unwrap_or(usize::MAX);
            if needed > self.limit {
                return Err(ArenaError::CommitLimit {
                    limit: self.limit,
                    needed,
                });
            }
            if end > cap {
                return Err(ArenaError::Exhausted {
                    requested: layout.size(),
                    remaining: cap - cur,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_threads_bump_disjoint_blocks() {
        let arena = Arena::with_capacity(64 << 20).unwrap();
        let blocks: Vec<Vec<(usize, usize)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|t| {
                    let arena = &arena;
                    s.spawn(move || {
                        (0..2_000)
                            .map(|i| {
                                let len = 1 + (i * 37 + t) % 700;
                                let layout = Layout::from_size_align(len, 1 << (i % 7)).unwrap();
                                let p = arena.alloc(layout).unwrap();
                                assert_eq!(p.as_ptr() as usize % layout.align(), 0);
                                // SAFETY: a fresh block of `len` bytes; the
                                // writes commit it.
                                unsafe { p.as_ptr().write_bytes(t as u8, len) };
                                (p.as_ptr() as usize, len)
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (t, list) in blocks.iter().enumerate() {
            for &(p, len) in list {
                // SAFETY: blocks stay valid until the arena is reset or dropped.
                let bytes = unsafe { core::slice::from_raw_parts(p as *const u8, len) };
                assert!(bytes.iter().all(|&b| b == t as u8), "blocks overlap");
            }
        }
        assert!(arena.committed() >= arena.used().next_multiple_of(GRANULE) / 2);
    }

    #[test]
    fn limits_reset_and_errors() {
        let mut arena = Arena::with_commit_limit(8 << 20, 1 << 20).unwrap();
        let p = arena
            .alloc(Layout::from_size_align(900 << 10, 8).unwrap())
            .unwrap();
        // SAFETY: inside the block.
        unsafe { p.as_ptr().write(1) };
        let err = arena
            .alloc(Layout::from_size_align(200 << 10, 8).unwrap())
            .unwrap_err();
        assert!(
            matches!(err, ArenaError::CommitLimit { limit, .. } if limit == 1 << 20),
            "{err}"
        );
        assert!(err.to_string().contains("commit limit"));
        assert!(arena.committed() > 0);
        arena.reset();
        assert_eq!((arena.committed(), arena.used()), (0, 0));
        let q = arena.alloc(Layout::new::<u64>()).unwrap();
        assert_eq!(q, p, "reset starts over");
        // SAFETY: decommitted memory reads as zero once touched again.
        assert_eq!(unsafe { q.as_ptr().read() }, 0);
        let big = Arena::with_capacity(1 << 20).unwrap();
        let err = big
            .alloc(Layout::from_size_align(2 << 20, 8).unwrap())
            .unwrap_err();
        assert!(matches!(err, ArenaError::Exhausted { .. }), "{err}");
    }

    #[test]
    fn prefault_makes_arena_memory_safe_for_system_calls() {
        let arena = Arena::with_capacity(4 << 20).unwrap();
        let buf = arena
            .alloc(Layout::from_size_align(256 << 10, 4096).unwrap())
            .unwrap();
        let mut fds = [0; 2];
        // SAFETY: room for two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let data = [0x5au8; 4096];
        let read = |fds: &[i32; 2]| -> isize {
            // SAFETY: a valid buffer; the pipe holds it.
            unsafe { libc::write(fds[1], data.as_ptr().cast(), data.len()) };
            // SAFETY: the kernel checks `buf` itself.
            unsafe { libc::read(fds[0], buf.as_ptr().cast(), data.len()) }
        };
        assert_eq!(read(&fds), -1, "untouched arena memory must give EFAULT");
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EFAULT)
        );
        arena.prefault_block(buf, 256 << 10).unwrap();
        // The first read's data is still in the pipe: drain it, then read.
        assert_eq!(read(&fds), 4096);
        // SAFETY: just read into it.
        assert_eq!(unsafe { buf.as_ptr().add(4095).read() }, 0x5a);
        // SAFETY: opened above.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        assert!(matches!(
            arena.prefault(0..(8 << 20)),
            Err(ArenaError::BadRange { .. })
        ));
    }
}
