//! `Region`: the safe public handle to a lazily committed block of address
//! space, and the options it is created with.
//!
//! A `Region` owns its range: dropping it destroys the region. Its memory is
//! reached through the raw pointer [`Region::as_ptr`]; what is written there
//! is the user's business, as with any allocation.
//!
//! # The `EFAULT` rule
//!
//! A lazy region's untouched granules are inaccessible until the fault
//! handler commits them on first touch. The kernel does not raise `SIGSEGV`
//! when a *system call* touches such a page: `read(fd, ptr, n)` into an
//! untouched granule fails with `EFAULT`. Before handing lazy memory to the
//! kernel, commit it with [`Region::commit`] (the prefault), or touch it.
//! Under the userfaultfd backend (the default where the kernel allows it)
//! the same holds after [`Region::purge`]: a purged page of a lazy region is
//! *missing* again until touched (the touch refills it with zeros), so
//! touch or `commit` purged lazy memory before a system call writes into
//! it. Eager regions never have this problem: they live where a purged
//! page reads back as zero for system calls too (see [`Backend`]).
//!
//! # Blocked signals
//!
//! Lazy memory is committed by a signal handler (`SIGBUS` under the
//! userfaultfd backend, `SIGSEGV` otherwise). A thread that blocks those
//! signals and touches an uncommitted granule is killed by the kernel,
//! which forces a blocked synchronous fault signal to its default action
//! (the process dies by that signal, with no message: spf's handler never
//! runs). Servers often block every signal in worker threads (`sigfillset`
//! and `pthread_sigmask`): leave `SIGSEGV` and `SIGBUS` out of that mask, or
//! [`commit`](Region::commit) the memory such a thread will touch.
//! [`check_signal_mask`](crate::check_signal_mask) tells a thread whether
//! it can take lazy commits, with what to do if not.
//!
//! [`Backend`]: crate::Backend
//!
//! ```
//! use spf_core::{Region, RegionOptions};
//! let region = Region::reserve(1 << 20, RegionOptions::default()).unwrap();
//! let p = region.as_ptr();
//! // SAFETY: p points into the region, which is alive; the first touch
//! // commits the granule.
//! unsafe { p.add(4096).write(7) };
//! assert_eq!(unsafe { p.add(4096).read() }, 7);
//! assert_eq!(region.committed(), 64 << 10); // one 64 KiB granule
//! ```

use crate::error::Error;
use crate::granule::GranuleState;
use crate::map::RegionIdx;
use crate::space::{RegionSpec, Space};
use core::ops::Range;
use core::sync::atomic::Ordering;

/// A commit granule: a power of two from 4 KiB to 2 MiB. Regions with
/// 2 MiB granules ask for transparent huge pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Granule(usize);

impl Granule {
    /// 4 KiB: one page per fault (slow: one signal per page).
    pub const PAGE: Granule = Granule(4 << 10);
    /// 64 KiB, the default.
    pub const KIB_64: Granule = Granule(64 << 10);
    /// 2 MiB: one transparent huge page per fault.
    pub const HUGE: Granule = Granule(2 << 20);

    /// `None` unless `bytes` is a power of two from 4 KiB to 2 MiB.
    pub const fn new(bytes: usize) -> Option<Granule> {
        if bytes.is_power_of_two() && bytes >= 4 << 10 && bytes <= 2 << 20 {
            Some(Granule(bytes))
        } else {
            None
        }
    }

    /// The granule in bytes.
    pub const fn bytes(self) -> usize {
        self.0
    }
}

/// What a region's memory allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    /// Reads and writes commit the granule.
    ReadWrite,
    /// Reads commit zero pages; a write is a fatal fault.
    ReadOnly,
}

/// How a region is created. `RegionOptions::default()` is lazy, read/write,
/// speculative, with the `SPF_GRANULE` granule (64 KiB unless set), no
/// commit-ahead and no populate.
#[derive(Clone, Copy, Debug)]
pub struct RegionOptions {
    pub(crate) granule: usize,
    pub(crate) eager: bool,
    pub(crate) commit_ahead: usize,
    pub(crate) align: usize,
    pub(crate) populate: bool,
    pub(crate) speculative: bool,
    pub(crate) read_only: bool,
}

impl Default for RegionOptions {
    fn default() -> Self {
        RegionOptions {
            granule: crate::options::default_granule(),
            eager: false,
            commit_ahead: 0,
            align: 0,
            populate: false,
            speculative: true,
            read_only: false,
        }
    }
}

impl RegionOptions {
    /// The commit granule in bytes (checked by `reserve`).
    pub fn granule(mut self, bytes: usize) -> Self {
        self.granule = bytes;
        self
    }

    /// Commit the whole region when it is created.
    pub fn eager(mut self) -> Self {
        self.eager = true;
        self
    }

    /// Let a fault that continues a sequential run commit up to `max_bytes`
    /// at once, doubling from one granule like readahead.
    pub fn commit_ahead(mut self, max_bytes: usize) -> Self {
        self.commit_ahead = max_bytes;
        self
    }

    /// Align the region's start to `bytes` (a power of two; the granule is
    /// the minimum, and the default).
    pub fn align(mut self, bytes: usize) -> Self {
        self.align = bytes;
        self
    }

    /// Pre-fault what a fault commits (`MADV_POPULATE_WRITE`), so the
    /// accesses that follow take no kernel page fault.
    pub fn populate(mut self, populate: bool) -> Self {
        self.populate = populate;
        self
    }

    /// Whether faults may be handled speculatively (`false`: every fault in
    /// this region takes the classic path, counted as `spf_vma_notsup`).
    pub fn speculative(mut self, speculative: bool) -> Self {
        self.speculative = speculative;
        self
    }

    /// What the region's memory allows (read/write by default).
    pub fn protection(mut self, protection: Protection) -> Self {
        self.read_only = protection == Protection::ReadOnly;
        self
    }

    /// The start alignment in bytes: at least the granule.
    pub(crate) fn align_bytes(&self, granule: usize) -> Result<usize, Error> {
        if self.align != 0 && !self.align.is_power_of_two() {
            return Err(Error::BadAlignment { align: self.align });
        }
        Ok(self.align.max(granule))
    }

    pub(crate) fn granule_bytes(&self) -> Result<usize, Error> {
        Granule::new(self.granule)
            .map(Granule::bytes)
            .ok_or(Error::BadGranule {
                granule: self.granule,
            })
    }
}

/// A region of lazily committed memory. Dropping it destroys the region.
///
/// A thread that blocks `SIGSEGV` or `SIGBUS` (`sigfillset` +
/// `pthread_sigmask`, as servers do in worker threads) is killed by the
/// kernel when it first touches an uncommitted granule: [`Region::commit`]
/// what such a thread will touch, or unblock those two signals
/// ([`check_signal_mask`](crate::check_signal_mask) tells; see the module
/// docs).
#[derive(Debug)]
pub struct Region {
    idx: RegionIdx,
    start: usize,
    len: usize,
    granule: usize,
    eager: bool,
}

// SAFETY: a Region is an owned address range; every operation on it goes
// through the space, which synchronises with the space lock.
unsafe impl Send for Region {}
// SAFETY: `&Region` methods only read the handle's immutable fields or call
// space operations that take the space lock.
unsafe impl Sync for Region {}

impl Region {
    /// Reserves `len` bytes (rounded up to the granule) of address space,
    /// committed on first touch unless the options say `eager`.
    pub fn reserve(len: usize, options: RegionOptions) -> Result<Region, Error> {
        let space = Space::get()?;
        if !options.eager {
            crate::signal::before_lazy_region();
        }
        let granule = options.granule_bytes()?;
        let spec = RegionSpec {
            granule,
            align: options.align_bytes(granule)?,
            read_only: options.read_only,
            populate: options.populate,
            speculative: options.speculative,
            eager: options.eager,
            commit_ahead: options.commit_ahead,
        };
        let (idx, start, len) = space.create(len, &spec)?;
        Ok(Region {
            idx,
            start,
            len,
            granule: options.granule,
            eager: options.eager,
        })
    }

    /// The region's first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.start as *mut u8
    }

    /// The region's length in bytes (a multiple of its granule).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region has been shrunk to nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The region's granule in bytes: what one fault commits.
    pub fn granule(&self) -> usize {
        self.granule
    }

    fn space(&self) -> &'static Space {
        Space::ready().expect("a Region exists only once the space has started")
    }

    /// `range` widened to whole granules, checked against the region.
    fn granules_of(&self, range: &Range<usize>) -> Result<(usize, usize), Error> {
        let bad = Error::BadRange {
            offset: range.start,
            len: range.end.wrapping_sub(range.start),
            region_len: self.len,
            granule: self.granule,
        };
        if range.start > range.end || range.end > self.len {
            return Err(bad);
        }
        let from = range.start & !(self.granule - 1);
        let to = range.end.next_multiple_of(self.granule);
        Ok((self.start + from, self.start + to))
    }

    /// Commits the granules that cover `range` (byte offsets) now: the
    /// prefault for memory about to be handed to a system call (see the
    /// `EFAULT` rule in the module docs).
    pub fn commit(&self, range: Range<usize>) -> Result<(), Error> {
        let (from, to) = self.granules_of(&range)?;
        self.space().commit(self.idx, from, to)
    }

    /// Drops the pages of `range` and makes it inaccessible again; the next
    /// touch commits fresh zeroed memory. `range` must be granule aligned.
    pub fn decommit(&self, range: Range<usize>) -> Result<(), Error> {
        let (from, to) = self.granules_of(&range)?;
        if from != self.start + range.start || to != self.start + range.end {
            return Err(Error::BadRange {
                offset: range.start,
                len: range.end - range.start,
                region_len: self.len,
                granule: self.granule,
            });
        }
        self.space().decommit(self.idx, from, to);
        Ok(())
    }

    /// Gives the pages of `range` back to the kernel but keeps them
    /// committed: they stay accessible and read as zero. `range` must be
    /// page aligned; its contents are lost. The next touch takes an
    /// ordinary kernel page fault, except in a lazy region under the
    /// userfaultfd backend, where it takes spf's fault, which refills the
    /// granule (and where a system call writing into a purged page fails
    /// with `EFAULT` until then: the `EFAULT` rule above).
    pub fn purge(&self, range: Range<usize>) -> Result<(), Error> {
        let bad = Error::BadRange {
            offset: range.start,
            len: range.end.wrapping_sub(range.start),
            region_len: self.len,
            granule: crate::PAGE_SIZE,
        };
        if range.start > range.end
            || range.end > self.len
            || range.start % crate::PAGE_SIZE != 0
            || range.end % crate::PAGE_SIZE != 0
        {
            return Err(bad);
        }
        self.space()
            .purge(self.start + range.start, self.start + range.end)
    }

    /// Changes what the region allows; committed memory changes with it.
    pub fn protect(&self, protection: Protection) -> Result<(), Error> {
        self.space()
            .protect(self.idx, protection == Protection::ReadOnly)
    }

    /// Grows the region in place to `new_len` bytes, if the address space
    /// after it is free; otherwise `Error::CannotGrowInPlace`, or
    /// `Error::BadSize` for a length no region can have (past the
    /// reservation). A `new_len` no larger than the region changes
    /// nothing. An eager
    /// region commits the new part too; if that commit fails, the region
    /// has grown (see [`Region::len`]) but the new part stays lazy.
    pub fn grow(&mut self, new_len: usize) -> Result<(), Error> {
        let old_len = self.len;
        self.len = self.space().grow(self.idx, new_len)?;
        if self.eager && self.len > old_len {
            self.commit(old_len..self.len)?;
        }
        Ok(())
    }

    /// Shrinks the region in place to `new_len` bytes (at least one
    /// granule); the tail's pages are dropped. A `new_len` no smaller than
    /// the region changes nothing.
    pub fn shrink(&mut self, new_len: usize) {
        self.len = self.space().shrink(self.idx, new_len);
    }

    /// Splits the region in two at byte `at` (a multiple of the granule,
    /// strictly inside): `self` keeps `[0, at)` and the returned region
    /// holds the rest, with the same options. Nothing is committed,
    /// dropped or moved — both parts keep their pages and contents, and a
    /// fault racing the split (in either part) is served by the part that
    /// holds its address. An allocator can so keep the tail of a block it
    /// shrinks as a block of its own, instead of dropping its pages.
    /// `Error::BadRange` for an `at` that does not split, and
    /// `Error::TooManyRegions` when no descriptor is free for the tail.
    pub fn split_off(&mut self, at: usize) -> Result<Region, Error> {
        let (idx, start, len) = self.space().split(self.idx, at)?;
        self.len = at;
        Ok(Region {
            idx,
            start,
            len,
            granule: self.granule,
            eager: self.eager,
        })
    }

    /// Merges `next`, the region that starts where this one ends, into
    /// this one: the inverse of [`Region::split_off`]. Both must have been
    /// reserved with the same options. Nothing is committed, dropped or
    /// moved; a fault racing the merge is served by the merged region.
    /// `Error::CannotMerge` (with `next` handed back) for regions that are
    /// not adjacent or whose options differ.
    pub fn merge(&mut self, next: Region) -> Result<(), (Region, Error)> {
        if let Err(e) = self.space().merge(self.idx, next.idx) {
            return Err((next, e));
        }
        self.len += next.len;
        // Its range is now this region's; its descriptor is freed by `merge`.
        core::mem::forget(next);
        Ok(())
    }

    /// Bytes of this region committed now.
    pub fn committed(&self) -> usize {
        self.space()
            .descs
            .get(self.idx)
            .committed
            .load(Ordering::Relaxed)
    }

    /// Whether the granule holding byte `offset` is committed (`false` for
    /// an offset outside the region).
    pub fn is_committed(&self, offset: usize) -> bool {
        if offset >= self.len {
            return false;
        }
        let head = self.start + (offset & !(self.granule - 1));
        self.space().granules.state(head) == GranuleState::Committed
    }
}

impl Region {
    /// Gives up the handle without destroying the region, returning its
    /// start. [`Region::from_raw`] takes it back. For allocators that keep
    /// only the address of a block.
    pub fn into_raw(self) -> *mut u8 {
        let p = self.as_ptr();
        core::mem::forget(self);
        p
    }

    /// Takes back a region given up with [`Region::into_raw`]. Returns
    /// `None` if no live region starts at `ptr`.
    ///
    /// # Safety
    /// The region must have been given up with `into_raw` and not taken back
    /// since: two handles to one region would destroy it twice.
    pub unsafe fn from_raw(ptr: *mut u8) -> Option<Region> {
        let space = Space::ready()?;
        let (idx, len, granule, eager) = space.region_starting_at(ptr as usize)?;
        Some(Region {
            idx,
            start: ptr as usize,
            len,
            granule,
            eager,
        })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        self.space().destroy(self.idx);
    }
}

/// Gives the pages of `[ptr, ptr + len)` back to the kernel without
/// changing what is committed: the memory stays accessible and reads as
/// zero. For allocators that keep only addresses (see [`Region::into_raw`]).
///
/// # Safety
/// `[ptr, ptr + len)` must be page aligned, lie inside a live region the
/// caller owns, and hold nothing anyone will read again.
pub unsafe fn purge_pages(ptr: *mut u8, len: usize) -> Result<(), Error> {
    let space = Space::get()?;
    let from = ptr as usize;
    if len == 0 && from % crate::PAGE_SIZE == 0 {
        return Ok(()); // nothing to purge, as for `Region::purge`
    }
    // A length that wraps past the address space ends at its top, outside
    // the reservation: refused below.
    let to = from.saturating_add(len);
    if from % crate::PAGE_SIZE != 0
        || len % crate::PAGE_SIZE != 0
        || !space.contains(from)
        || !space.contains(to - 1)
    {
        return Err(Error::BadRange {
            offset: from.wrapping_sub(space.base),
            len,
            region_len: space.len,
            granule: crate::PAGE_SIZE,
        });
    }
    space.purge(from, to)
}

/// What a normal-path reader learns about the region holding an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// The region's first address.
    pub start: usize,
    /// Its length in bytes.
    pub len: usize,
    /// Its granule in bytes.
    pub granule: usize,
    /// Bytes committed now.
    pub committed: usize,
    /// Whether it is read-only.
    pub read_only: bool,
}

/// The region that holds `addr`, if any, at one moment: a lock-free lookup
/// validated by the region's sequence count, as the fault handler's is.
/// It neither pins an epoch nor allocates, so an allocator may call it from
/// `dealloc`, even while a thread exits (pinning there could free epoch
/// garbage through that same `dealloc`). Descriptors are type-stable: one
/// recycled meanwhile describes its new region, which does not contain
/// `addr`, so the answer is still right for the moment it was read.
pub fn region_at(addr: *const u8) -> Option<RegionInfo> {
    let space = Space::ready()?;
    let addr = addr as usize;
    if !space.contains(addr) {
        return None;
    }
    loop {
        let idx = space.map.lookup(addr)?;
        let desc = space.descs.get(idx);
        let Some(snap) = desc.snapshot() else {
            core::hint::spin_loop();
            continue;
        };
        let committed = desc.committed.load(Ordering::Relaxed);
        if !desc.seq.read_validate(snap.seq) {
            continue;
        }
        return (snap.flags.live() && snap.contains(addr)).then_some(RegionInfo {
            start: snap.start,
            len: snap.end - snap.start,
            granule: snap.granule(),
            committed,
            read_only: snap.flags.read_only(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn read_into(ptr: *mut u8, len: usize) -> Result<usize, i32> {
        let mut fds = [0; 2];
        // SAFETY: fds has room for two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let data = vec![0xabu8; len];
        // SAFETY: data is a valid buffer; the pipe holds 64 KiB.
        let written = unsafe { libc::write(fds[1], data.as_ptr().cast(), len) };
        assert_eq!(written, len as isize);
        // SAFETY: the kernel checks ptr itself.
        let n = unsafe { libc::read(fds[0], ptr.cast(), len) };
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap();
        // SAFETY: both opened above.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        if n < 0 {
            Err(errno)
        } else {
            Ok(n as usize)
        }
    }

    #[test]
    fn system_calls_into_untouched_lazy_memory_fail_until_committed() {
        let r = Region::reserve(1 << 20, RegionOptions::default()).unwrap();
        assert_eq!(read_into(r.as_ptr(), 4096), Err(libc::EFAULT));
        r.commit(0..4096).unwrap();
        assert!(r.is_committed(0));
        assert_eq!(read_into(r.as_ptr(), 4096), Ok(4096));
        // SAFETY: committed above.
        assert_eq!(unsafe { r.as_ptr().add(4095).read() }, 0xab);
    }

    #[test]
    fn eager_regions_are_committed_at_creation() {
        let r = Region::reserve(256 << 10, RegionOptions::default().eager()).unwrap();
        assert_eq!(r.committed(), r.len());
        assert_eq!(read_into(r.as_ptr(), 8192), Ok(8192));
    }

    #[test]
    fn bad_options_and_ranges_are_errors() {
        let bad = Region::reserve(4096, RegionOptions::default().granule(3000)).unwrap_err();
        assert_eq!(bad, Error::BadGranule { granule: 3000 });
        assert!(bad.to_string().contains("power of two"));
        assert_eq!(
            Region::reserve(0, RegionOptions::default()).unwrap_err(),
            Error::BadSize { len: 0 }
        );
        let r = Region::reserve(1 << 20, RegionOptions::default()).unwrap();
        assert!(matches!(r.decommit(0..100), Err(Error::BadRange { .. })));
        assert!(matches!(
            r.commit(0..(2 << 20)),
            Err(Error::BadRange { .. })
        ));
    }

    #[test]
    fn an_exhausted_reservation_says_so() {
        Space::get().unwrap();
        // Huge granules: both regions go to the protected zone, whatever
        // the backend, and a zone is SPF_RESERVE bytes.
        let zone = crate::options::reserve_bytes();
        let huge = || RegionOptions::default().granule(2 << 20);
        let big = Region::reserve(zone / 4 * 3, huge()).unwrap();
        let err = Region::reserve(zone / 2, huge()).unwrap_err();
        assert!(matches!(err, Error::ReservationExhausted { .. }), "{err}");
        assert!(err.to_string().contains("SPF_RESERVE"));
        drop(big);
    }

    #[test]
    fn decommit_grow_shrink_and_protect() {
        let mut r = Region::reserve(256 << 10, RegionOptions::default().granule(64 << 10)).unwrap();
        let p = r.as_ptr();
        // SAFETY: inside the live region throughout.
        unsafe {
            p.write(1);
            p.add(200_000).write(2);
        }
        assert_eq!(r.committed(), 128 << 10);
        r.decommit(0..(64 << 10)).unwrap();
        assert_eq!(r.committed(), 64 << 10);
        // SAFETY: as above; decommitted memory comes back zeroed.
        assert_eq!(unsafe { p.read() }, 0);
        // SAFETY: as above.
        assert_eq!(unsafe { p.add(200_000).read() }, 2);

        let info = region_at(p.wrapping_add(1000)).unwrap();
        assert_eq!(
            (info.start, info.len, info.granule),
            (p as usize, 256 << 10, 64 << 10)
        );

        // Grow in place when the next range is free, else say why.
        match r.grow(512 << 10) {
            Ok(()) => {
                assert_eq!(r.len(), 512 << 10);
                // SAFETY: the grown part.
                unsafe { p.add(400_000).write(3) };
            }
            Err(e) => assert!(matches!(e, Error::CannotGrowInPlace { .. })),
        }
        r.shrink(100_000);
        assert_eq!(r.len(), 128 << 10);
        // The tail is no longer ours (another test's region may already
        // have been given the freed range: unit tests run in parallel).
        assert!(region_at(p.wrapping_add(300_000)).is_none_or(|i| i.start != p as usize));

        r.protect(Protection::ReadOnly).unwrap();
        assert!(region_at(p).unwrap().read_only);
        // SAFETY: reads stay allowed.
        assert_eq!(unsafe { p.read() }, 0);
        r.protect(Protection::ReadWrite).unwrap();
        // SAFETY: writable again.
        unsafe { p.add(70_000).write(9) };
        drop(r);
        assert!(region_at(p).is_none());
    }

    /// A read-only region grown in place is read-only in its new part too,
    /// and commits across the old and new parts. Under `uffd` the new part
    /// once kept the zone's read-write protection: the kernel then held
    /// the region in two mappings, `UFFDIO_COPY` refuses a range spanning
    /// two (`ENOENT`), and once committed the new part was writable.
    #[test]
    fn a_read_only_region_grown_in_place_is_read_only_throughout() {
        const G: usize = 64 << 10;
        // Unit tests run in parallel: another test's region may take the
        // range after ours, so try a few times.
        let mut grown = None;
        for _ in 0..16 {
            let mut r = Region::reserve(10 * G + 1, RegionOptions::default().granule(G)).unwrap();
            r.protect(Protection::ReadOnly).unwrap();
            if r.grow(24 * G).is_ok() {
                grown = Some(r);
                break;
            }
        }
        let r = grown.expect("no region could grow in place in 16 tries");
        assert_eq!(r.len(), 24 * G);
        r.commit(0..(11 * G + 4096))
            .expect("a commit across the grown boundary");
        r.commit(0..r.len()).unwrap();
        let p = r.as_ptr();
        for at in [0, 10 * G, 11 * G, 23 * G] {
            // SAFETY: committed and readable.
            assert_eq!(unsafe { p.add(at).read_volatile() }, 0);
            // The kernel refuses to write into a read-only page.
            assert_eq!(
                read_into(p.wrapping_add(at), 4096),
                Err(libc::EFAULT),
                "byte {at} of a read-only region is writable"
            );
        }
        // So is a region made read-only.
        let opts = RegionOptions::default()
            .granule(G)
            .protection(Protection::ReadOnly);
        let made = Region::reserve(4 * G, opts).unwrap();
        made.commit(0..made.len()).unwrap();
        assert_eq!(
            read_into(made.as_ptr(), 4096),
            Err(libc::EFAULT),
            "a region made read-only is writable"
        );
    }

    #[test]
    fn split_and_merge_keep_pages_contents_and_committed_bytes() {
        const G: usize = 64 << 10;
        for eager in [false, true] {
            let opts = RegionOptions::default().granule(G);
            let opts = if eager { opts.eager() } else { opts };
            let mut r = Region::reserve(8 * G, opts).unwrap();
            let p = r.as_ptr();
            // Touch granules 1 and 5 (and so commit them, if lazy).
            // SAFETY: inside the live region.
            unsafe {
                p.add(G + 7).write(11);
                p.add(5 * G + 9).write(55);
            }
            let before = r.committed();
            assert!(matches!(r.split_off(0), Err(Error::BadRange { .. })));
            assert!(matches!(r.split_off(8 * G), Err(Error::BadRange { .. })));
            assert!(matches!(r.split_off(G + 4096), Err(Error::BadRange { .. })));
            let tail = r.split_off(4 * G).unwrap();
            assert_eq!((r.len(), tail.len()), (4 * G, 4 * G));
            assert_eq!(tail.as_ptr(), p.wrapping_add(4 * G));
            assert_eq!(r.committed() + tail.committed(), before);
            let (head_c, tail_c) = if eager { (4 * G, 4 * G) } else { (G, G) };
            assert_eq!((r.committed(), tail.committed()), (head_c, tail_c));
            // SAFETY: both parts are live and keep their contents.
            unsafe {
                assert_eq!(p.add(G + 7).read(), 11);
                assert_eq!(p.add(5 * G + 9).read(), 55);
            }
            let info = region_at(p.wrapping_add(6 * G)).unwrap();
            assert_eq!((info.start, info.len), (p as usize + 4 * G, 4 * G));
            let info = region_at(p.wrapping_add(3 * G)).unwrap();
            assert_eq!((info.start, info.len), (p as usize, 4 * G));
            // The tail is a region of its own: it round-trips, faults in
            // its lazy part, and dies alone.
            let tail = tail.into_raw();
            // SAFETY: given up just above.
            let mut tail = unsafe { Region::from_raw(tail) }.unwrap();
            // SAFETY: inside the tail.
            unsafe { tail.as_ptr().add(3 * G).write(3) };
            assert_eq!(tail.committed(), if eager { 4 * G } else { 2 * G });
            // Not adjacent (the tail lies between): refused, `next` handed
            // back.
            let other = Region::reserve(G, opts).unwrap();
            let (other, e) = r.merge(other).unwrap_err();
            assert!(matches!(e, Error::CannotMerge { .. }), "{e}");
            drop(other);
            // Merging is the inverse of splitting: the tail's range and
            // committed bytes come back, and the map names the whole.
            let third = tail.split_off(2 * G).unwrap();
            let third_committed = third.committed();
            let tail_committed = tail.committed();
            tail.merge(third).map_err(|(_, e)| e).unwrap();
            assert_eq!(tail.len(), 4 * G);
            assert_eq!(tail.committed(), tail_committed + third_committed);
            r.merge(tail).map_err(|(_, e)| e).unwrap();
            assert_eq!(
                (r.len(), r.committed()),
                (8 * G, before + if eager { 0 } else { G })
            );
            let info = region_at(p.wrapping_add(7 * G)).unwrap();
            assert_eq!((info.start, info.len), (p as usize, 8 * G));
            // SAFETY: the merged region holds every byte written.
            unsafe {
                assert_eq!(p.add(5 * G + 9).read(), 55);
                assert_eq!(p.add(7 * G).read(), 3);
            }
            let tail = r.split_off(4 * G).unwrap();
            drop(tail);
            assert!(region_at(p.wrapping_add(5 * G)).is_none_or(|i| i.start != p as usize + 4 * G));
            // SAFETY: the head lives on.
            assert_eq!(unsafe { p.add(G + 7).read() }, 11);
            drop(r);
        }
    }

    #[test]
    fn raw_regions_round_trip() {
        let r = Region::reserve(300 << 10, RegionOptions::default().eager()).unwrap();
        let (len, granule) = (r.len(), r.granule());
        let p = r.into_raw();
        // SAFETY: given up just above.
        let back = unsafe { Region::from_raw(p) }.unwrap();
        assert_eq!(
            (back.as_ptr(), back.len(), back.granule(), back.eager),
            (p, len, granule, true)
        );
        // SAFETY: not the start of a region.
        assert!(unsafe { Region::from_raw(p.wrapping_add(4096)) }.is_none());
        drop(back);
    }

    #[test]
    fn alignment_is_honoured_and_checked() {
        let r =
            Region::reserve(4096, RegionOptions::default().granule(4096).align(8 << 20)).unwrap();
        assert_eq!(r.as_ptr() as usize % (8 << 20), 0);
        let err = Region::reserve(4096, RegionOptions::default().align(3 << 20)).unwrap_err();
        assert_eq!(err, Error::BadAlignment { align: 3 << 20 });
    }

    #[test]
    fn purge_keeps_memory_committed_and_zeroes_it() {
        let r = Region::reserve(256 << 10, RegionOptions::default().eager()).unwrap();
        // SAFETY: eager, so committed.
        unsafe { r.as_ptr().add(5000).write(9) };
        r.purge(4096..8192).unwrap();
        assert_eq!(r.committed(), r.len());
        assert!(r.is_committed(5000));
        // SAFETY: still committed; purged pages read as zero.
        assert_eq!(unsafe { r.as_ptr().add(5000).read() }, 0);
        assert!(matches!(r.purge(1..4096), Err(Error::BadRange { .. })));
        assert!(crate::resident_bytes().is_some_and(|b| b > 0));
    }

    #[test]
    fn huge_granule_regions_are_aligned() {
        let r = Region::reserve(5 << 20, RegionOptions::default().granule(2 << 20)).unwrap();
        assert_eq!(r.as_ptr() as usize % (2 << 20), 0);
        assert_eq!(r.len(), 6 << 20);
        // SAFETY: inside the region.
        unsafe { r.as_ptr().add(3 << 20).write(1) };
        assert_eq!(r.committed(), 2 << 20);
    }
}
