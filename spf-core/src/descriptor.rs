//! `RegionDesc`: one region's descriptor (the kernel's `vm_area_struct`), and
//! the `DescriptorTable` that holds them all.
//!
//! Descriptors are *type-stable*: the table is mapped once and never
//! unmapped, and a descriptor is recycled for a new region rather than
//! freed. A fault handler holding a stale index therefore always reads a
//! valid descriptor, and its sequence count (which only grows, S1) tells it
//! whether what it read still holds. The kernel's `SLAB_TYPESAFE_BY_RCU`
//! VMAs play the same trick.
//!
//! Invariants:
//! - D1: fields other than `committed` are written only under the space lock,
//!   between `seq.write_begin()` and `seq.write_end()`.
//! - D2: `committed` is the bytes of this region whose granule state is
//!   `Committed`; it is changed by the owner of those granule locks.
//! - D3: a descriptor is reused only after an epoch grace period following
//!   its region's destruction (see `space`), and `generation` grows on reuse.

use crate::map::RegionIdx;
use crate::seq::SeqCount;
use crate::sys;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};

/// A region's flags, packed into one word (read in one load by the handler).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionFlags(u32);

impl RegionFlags {
    const SHIFT_MASK: u32 = 0x1f;
    const LIVE: u32 = 1 << 8;
    const READ_ONLY: u32 = 1 << 9;
    const POPULATE: u32 = 1 << 10;
    const NO_SPECULATION: u32 = 1 << 11;
    const HUGE: u32 = 1 << 12;
    const EAGER: u32 = 1 << 13;

    pub fn new(granule_shift: u32, read_only: bool, populate: bool, speculative: bool) -> Self {
        let mut bits = granule_shift & Self::SHIFT_MASK | Self::LIVE;
        if read_only {
            bits |= Self::READ_ONLY;
        }
        if populate {
            bits |= Self::POPULATE;
        }
        if !speculative {
            bits |= Self::NO_SPECULATION;
        }
        if granule_shift >= crate::map::CHUNK_SHIFT {
            bits |= Self::HUGE;
        }
        RegionFlags(bits)
    }

    pub fn granule(self) -> usize {
        1 << (self.0 & Self::SHIFT_MASK)
    }
    pub fn live(self) -> bool {
        self.0 & Self::LIVE != 0
    }
    pub fn read_only(self) -> bool {
        self.0 & Self::READ_ONLY != 0
    }
    pub fn populate(self) -> bool {
        self.0 & Self::POPULATE != 0
    }
    pub fn speculative(self) -> bool {
        self.0 & Self::NO_SPECULATION == 0
    }
    pub fn with_eager(self, eager: bool) -> Self {
        if eager {
            RegionFlags(self.0 | Self::EAGER)
        } else {
            RegionFlags(self.0 & !Self::EAGER)
        }
    }
    pub fn eager(self) -> bool {
        self.0 & Self::EAGER != 0
    }
    pub fn huge(self) -> bool {
        self.0 & Self::HUGE != 0
    }
    pub fn prot(self) -> sys::Prot {
        if self.read_only() {
            sys::Prot::Read
        } else {
            sys::Prot::ReadWrite
        }
    }
    pub fn with_read_only(self, read_only: bool) -> Self {
        if read_only {
            RegionFlags(self.0 | Self::READ_ONLY)
        } else {
            RegionFlags(self.0 & !Self::READ_ONLY)
        }
    }
    pub fn dead(self) -> Self {
        RegionFlags(self.0 & !Self::LIVE)
    }
}

#[repr(align(64))]
#[derive(Default)]
pub struct RegionDesc {
    pub seq: SeqCount,
    start: AtomicUsize,
    len: AtomicUsize,
    flags: AtomicU32,
    /// Commit-ahead limit in granules (0: none).
    ahead_max: AtomicU32,
    /// Bytes committed in this region (D2).
    pub committed: AtomicUsize,
    pub generation: AtomicU32,
    /// Link in the spare list (under the space lock).
    next_spare: AtomicU32,
}

/// A consistent copy of a descriptor's fields, validated by its sequence
/// count (S2).
#[derive(Clone, Copy, Debug)]
pub struct Snapshot {
    pub seq: u64,
    pub start: usize,
    pub end: usize,
    pub flags: RegionFlags,
    pub ahead_max: usize,
}

impl Snapshot {
    pub fn contains(&self, addr: usize) -> bool {
        self.start <= addr && addr < self.end
    }
    pub fn granule(&self) -> usize {
        self.flags.granule()
    }
    /// The first byte of the granule holding `addr`.
    pub fn head_of(&self, addr: usize) -> usize {
        self.start + ((addr - self.start) & !(self.granule() - 1))
    }
}

impl RegionDesc {
    /// Reads the fields without a lock. `None` if a writer is inside or
    /// finished in between (S2). Async-signal-safe.
    #[inline]
    pub fn snapshot(&self) -> Option<Snapshot> {
        let seq = self.seq.read_begin()?;
        let start = self.start.load(Relaxed);
        let len = self.len.load(Relaxed);
        let flags = RegionFlags(self.flags.load(Relaxed));
        let ahead_max = self.ahead_max.load(Relaxed) as usize;
        self.seq.read_validate(seq).then_some(Snapshot {
            seq,
            start,
            end: start.wrapping_add(len),
            flags,
            ahead_max,
        })
    }

    /// Sets every field of a new region (D1: inside a write section).
    pub fn init(&self, start: usize, len: usize, flags: RegionFlags, ahead_max: u32) {
        self.start.store(start, Relaxed);
        self.len.store(len, Relaxed);
        self.flags.store(flags.0, Relaxed);
        self.ahead_max.store(ahead_max, Relaxed);
        self.committed.store(0, Relaxed);
    }

    pub fn set_len(&self, len: usize) {
        self.len.store(len, Relaxed);
    }

    pub fn set_flags(&self, flags: RegionFlags) {
        self.flags.store(flags.0, Relaxed);
    }

    /// Fields read by the lock holder, who needs no snapshot.
    pub fn start(&self) -> usize {
        self.start.load(Relaxed)
    }
    pub fn len(&self) -> usize {
        self.len.load(Relaxed)
    }
    pub fn flags(&self) -> RegionFlags {
        RegionFlags(self.flags.load(Relaxed))
    }
    pub fn ahead_max(&self) -> u32 {
        self.ahead_max.load(Relaxed)
    }
}

/// All descriptors, by index. Index 0 is never used (0 means "none" in the map).
pub struct DescriptorTable {
    descs: &'static [RegionDesc],
    /// Under the space lock: the spare list and the high-water mark.
    spare: AtomicU32,
    unused: AtomicU32,
}

impl DescriptorTable {
    pub fn new(capacity: usize) -> Result<DescriptorTable, sys::Errno> {
        let n = capacity + 1;
        let mem = sys::map_table(n * core::mem::size_of::<RegionDesc>())?;
        // SAFETY: a zeroed mapping of the right size and alignment (mmap is
        // page aligned), never unmapped; an all-zero RegionDesc is its
        // Default (every field an atomic zero).
        let descs = unsafe { core::slice::from_raw_parts(mem as *const RegionDesc, n) };
        Ok(DescriptorTable {
            descs,
            spare: AtomicU32::new(0),
            unused: AtomicU32::new(1),
        })
    }

    #[inline]
    pub fn get(&self, idx: RegionIdx) -> &RegionDesc {
        &self.descs[idx as usize]
    }

    /// A descriptor for a new region, or `None` if all are live or waiting
    /// out their grace period. Under the space lock.
    pub fn alloc(&self) -> Option<RegionIdx> {
        let s = self.spare.load(Relaxed);
        let idx = if s != 0 {
            self.spare
                .store(self.descs[s as usize].next_spare.load(Relaxed), Relaxed);
            s
        } else {
            let u = self.unused.load(Relaxed);
            if u as usize >= self.descs.len() {
                return None;
            }
            self.unused.store(u + 1, Relaxed);
            u
        };
        self.descs[idx as usize].generation.fetch_add(1, Relaxed);
        Some(idx)
    }

    /// Returns a descriptor whose grace period has ended. Under the space lock.
    pub fn free(&self, idx: RegionIdx) {
        self.descs[idx as usize]
            .next_spare
            .store(self.spare.load(Relaxed), Relaxed);
        self.spare.store(idx, Relaxed);
    }

    /// Indices ever handed out (for invariant checks).
    pub fn used(&self) -> impl Iterator<Item = RegionIdx> {
        1..self.unused.load(Relaxed)
    }

    pub fn capacity(&self) -> usize {
        self.descs.len() - 1
    }
}
