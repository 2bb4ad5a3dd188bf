//! A diagnostic map of where the allocator's resident memory sits: for
//! every small and medium page, by where it is (the first page of a heap's
//! class queue, another page of a queue, abandoned, pooled dirty or
//! purged), its resident bytes (`mincore`), and how much of it holds live
//! blocks, blocks freed remotely and not yet collected, and other free
//! carved blocks; and the segments' headers. For measuring (the
//! `residency` example), not for programs: it reads other threads' pages
//! without their cooperation, so it is only sound while no other thread
//! uses the allocator.

use crate::heap;
use crate::segment::{self, Page, PageKind, Segment, HOLE_RUN, SEGMENT_SIZE, SMALL_PAGE_SIZE};
use crate::size_class::CLASSES;
use core::sync::atomic::Ordering::Relaxed;

/// Pages of one state and kind, and what their bytes hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageBytes {
    /// Pages.
    pub pages: u64,
    /// Resident bytes of those pages (`mincore`).
    pub resident: u64,
    /// Bytes of live blocks (class size × blocks counted in `used` and
    /// not on `thread_free`: this includes blocks a thread freed and holds
    /// in its thread cache or its remote-free buffer, under 576 KiB a
    /// thread).
    pub live: u64,
    /// Bytes of blocks freed by other threads, waiting on `thread_free`.
    pub remote: u64,
    /// Bytes of other carved blocks that are free (on `free`, or in holes).
    pub free: u64,
    /// Resident bytes past the carved blocks (rounded up to 4 KiB): memory
    /// a page kept from an earlier use (a pooled dirty page taken for a new
    /// class) that no block of its class uses yet.
    pub uncarved: u64,
    /// Pages with every block carved and none free (`free` empty, no
    /// remote frees waiting).
    pub full: u64,
}

/// Where a page is.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum Place {
    /// The first page of a heap's class queue.
    First = 0,
    /// The last page of a heap's class queue (not also its first).
    Last = 1,
    /// A page of a heap's class queue between its first and last.
    Queued = 2,
    /// On an abandoned list.
    Abandoned = 3,
    /// In the pool, with its memory.
    PoolDirty = 4,
    /// In the pool, purged.
    PoolPurged = 5,
}

/// The map `residency` returns: `[place][kind]`, places in the order of
/// `PLACES`, kinds small then medium.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Residency {
    /// By place (`PLACES`) and kind (small, medium).
    pub pages: [[PageBytes; 2]; 6],
    /// Segments found.
    pub segments: u64,
    /// Resident bytes of segment headers (and, in medium segments, of the
    /// rest of the first medium page's worth, before the first page).
    pub headers: u64,
    /// By class: resident bytes of pages not holding live blocks (resident
    /// − live, summed over the class's pages in heaps and abandoned).
    pub idle_by_class: [u64; CLASSES],
    /// The process's resident bytes when the map was made.
    pub process: u64,
}

/// Names of the places, in the order of `Residency::pages`.
pub const PLACES: [&str; 6] = [
    "first page of a class queue",
    "last page of a class queue",
    "other queued pages",
    "abandoned pages",
    "pool, dirty",
    "pool, purged",
];

/// Resident bytes of `len` bytes at `addr` (a multiple of 4 KiB, at most
/// a medium page).
fn resident(addr: *mut u8, len: usize) -> u64 {
    let mut v = [0u8; segment::MEDIUM_PAGE_SIZE / HOLE_RUN];
    let n = len / HOLE_RUN;
    // SAFETY: a range inside a live segment (the caller's), and `v` holds
    // a byte per 4 KiB of it.
    let rc = unsafe { libc::mincore(addr.cast(), len, v.as_mut_ptr()) };
    if rc != 0 {
        return 0;
    }
    v[..n].iter().filter(|&&b| b & 1 != 0).count() as u64 * HOLE_RUN as u64
}

/// Segments seen, for the headers' count (no allocation: a fixed table).
struct Seen {
    segs: [usize; 1024],
    n: usize,
}

/// Makes the map.
///
/// # Safety
/// No other thread allocates or frees while it runs (they are parked, e.g.
/// at a barrier): it reads every heap's pages, the first of each queue
/// included, which their owners change without a lock.
pub unsafe fn residency() -> Residency {
    let mut r = Residency {
        pages: Default::default(),
        segments: 0,
        headers: 0,
        idle_by_class: [0; CLASSES],
        process: 0,
    };
    let mut seen = Seen {
        segs: [0; 1024],
        n: 0,
    };
    let mut visit = |page: *mut Page, place: Place| {
        // SAFETY: the caller's contract: the page is live and nobody
        // changes it meanwhile.
        let p = unsafe { &*page };
        let kind = if matches!(place, Place::PoolDirty | Place::PoolPurged) {
            // A pooled page's class may be stale: its segment says.
            // SAFETY: a live segment's header.
            unsafe { segment::kind_of_segment(p.segment()) }
        } else {
            p.kind()
        };
        let seg = p.segment() as usize;
        if !seen.segs[..seen.n].contains(&seg) && seen.n < seen.segs.len() {
            seen.segs[seen.n] = seg;
            seen.n += 1;
        }
        let len = kind.page_size();
        let res = resident(p.area.get(), len);
        let e = &mut r.pages[place as usize][kind as usize];
        e.pages += 1;
        e.resident += res;
        if matches!(place, Place::PoolDirty | Place::PoolPurged) {
            return;
        }
        let size = p.size.get() as u64;
        let used = p.used.load(Relaxed) as u64;
        let remote = if place == Place::Abandoned {
            0
        } else {
            p.remote_waiting() as u64
        };
        let carved = p.capacity.get() as u64 * size;
        e.uncarved += res.saturating_sub(carved.next_multiple_of(HOLE_RUN as u64));
        e.live += (used - remote) * size;
        e.remote += remote * size;
        e.free += carved - used * size;
        if !p.has_listed_free() && remote == 0 && p.capacity.get() == p.reserved.get() {
            e.full += 1;
        }
        r.idle_by_class[p.class.get() as usize] += res.saturating_sub((used - remote) * size);
    };
    // SAFETY: the caller's contract.
    unsafe {
        heap::for_each_queued_page(&mut |page, place| {
            let place = match place {
                0 => Place::First,
                1 => Place::Last,
                _ => Place::Queued,
            };
            visit(page, place)
        });
        heap::for_each_abandoned_page(&mut |page| visit(page, Place::Abandoned));
        segment::for_each_pooled_page(&mut |page| {
            // SAFETY: as above.
            let place = if (*page).purged.get() {
                Place::PoolPurged
            } else {
                Place::PoolDirty
            };
            visit(page, place)
        });
    }
    for &seg in &seen.segs[..seen.n] {
        // SAFETY: a segment holding a page seen above: live.
        let kind = unsafe { segment::kind_of_segment(seg as *mut Segment) };
        let header = match kind {
            PageKind::Small => segment::HEADER_PAGES * SMALL_PAGE_SIZE,
            PageKind::Medium => segment::MEDIUM_PAGE_SIZE,
        };
        debug_assert!(header < SEGMENT_SIZE);
        r.headers += resident(seg as *mut u8, header);
    }
    r.segments = seen.n as u64;
    r.process = spf_core::resident_bytes().unwrap_or(0) as u64;
    r
}
