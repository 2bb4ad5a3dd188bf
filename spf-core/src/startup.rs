//! Start-up: the one `Space` of the process, made on first use — reads
//! `SPF_*`, reserves the address space in its zones, starts the commit
//! backend, maps the tables, installs the fault handler and the fork
//! handlers, then publishes the space.
//!
//! Invariant U1: the space is published (`SPACE`, Release) only once fully
//! built and with its handler installed; `Space::ready` (Acquire) is the
//! handler's only way to it, so a fault before that chains onwards.

use crate::backend::{self, Backend, BackendChoice};
use crate::descriptor::DescriptorTable;
use crate::error::Error;
use crate::granule::GranuleTable;
use crate::lock::SpaceLock;
use crate::map::{RegionMap, CHUNK};
use crate::options;
use crate::space::{fork, Space, Zone};
use crate::stats;
use crate::sys::{self, PAGE_SIZE};
use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicPtr, AtomicU8, Ordering};

const UNINIT: u8 = 0;
const STARTING: u8 = 1;
const READY: u8 = 2;
const FAILED: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(UNINIT);
static SPACE: AtomicPtr<Space> = AtomicPtr::new(core::ptr::null_mut());

struct Slot<T>(UnsafeCell<MaybeUninit<T>>);
// SAFETY: written once by the thread that wins STARTING, read only after
// STATE (Release) says READY or FAILED.
unsafe impl<T> Sync for Slot<T> {}

static STORAGE: Slot<Space> = Slot(UnsafeCell::new(MaybeUninit::uninit()));
static START_ERROR: Slot<Error> = Slot(UnsafeCell::new(MaybeUninit::uninit()));

impl Space {
    /// The space, started on first use: reads `SPF_*`, reserves the address
    /// space, maps the tables and installs the fault handler.
    pub fn get() -> Result<&'static Space, Error> {
        if let Some(s) = Space::ready() {
            return Ok(s);
        }
        Space::start()
    }

    /// The space if it has started. Async-signal-safe (one atomic load).
    #[inline]
    pub fn ready() -> Option<&'static Space> {
        // Acquire pairs with the Release store in `start`: the Space's
        // fields are initialised before the pointer is seen.
        let p = SPACE.load(Ordering::Acquire);
        // SAFETY: a non-null pointer points at STORAGE, initialised and
        // never changed again.
        unsafe { p.as_ref() }
    }

    #[cold]
    fn start() -> Result<&'static Space, Error> {
        loop {
            match STATE.compare_exchange(UNINIT, STARTING, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => break,
                Err(READY) => return Ok(Space::ready().expect("READY implies a space")),
                // SAFETY: FAILED is stored only after START_ERROR was written.
                Err(FAILED) => return Err(unsafe { (*START_ERROR.0.get()).assume_init() }),
                Err(_) => sys::yield_now(),
            }
        }
        match Space::build() {
            Ok(space) => {
                // SAFETY: we won STARTING, so nobody else writes STORAGE, and
                // nobody reads it before SPACE is published below.
                let p = unsafe { (*STORAGE.0.get()).write(space) as *mut Space };
                // The handler goes in before the space is published: until
                // then it finds no space and chains every fault onwards.
                if let Err(e) = crate::signal::install() {
                    // SAFETY: as above, only the STARTING winner writes it.
                    unsafe { (*START_ERROR.0.get()).write(e) };
                    STATE.store(FAILED, Ordering::Release);
                    return Err(e);
                }
                // Fork handlers before the space is published: whoever uses
                // the space registers theirs after ours (their prepare runs
                // first, taking their locks before our space lock).
                sys::at_fork(fork::prepare, fork::parent, fork::child);
                SPACE.store(p, Ordering::Release);
                STATE.store(READY, Ordering::Release);
                if options::stats_at_exit() {
                    sys::at_exit(stats::print_at_exit);
                }
                // SAFETY: just published.
                Ok(unsafe { &*p })
            }
            Err(e) => {
                // SAFETY: as above, only the STARTING winner writes it.
                unsafe { (*START_ERROR.0.get()).write(e) };
                STATE.store(FAILED, Ordering::Release);
                Err(e)
            }
        }
    }

    fn build() -> Result<Space, Error> {
        options::load_from_env();
        if sys::kernel_page_size() != PAGE_SIZE {
            return Err(Error::Unsupported {
                reason: "spf is built for 4 KiB base pages",
            });
        }
        // Each zone (see `backend`) is SPF_RESERVE bytes of whole chunks;
        // the lazy zone is given back if the backend has none.
        let zone_len = options::reserve_bytes().next_multiple_of(CHUNK);
        let choice = backend::choice();
        let zones = if choice == BackendChoice::Only(Backend::Mprotect) {
            1
        } else {
            2
        };
        let sys_err = |call| move |errno| Error::System { call, errno };
        let mut len = zones * zone_len;
        let mut choice = choice;
        let base = match sys::reserve(len, CHUNK) {
            Ok(base) => base,
            // Address space may be limited (ulimit -v): `auto` settles for
            // one zone and the backend that needs no other.
            Err(_) if zones == 2 && choice == BackendChoice::Auto => {
                len = zone_len;
                choice = BackendChoice::Only(Backend::Mprotect);
                sys::reserve(len, CHUNK).map_err(sys_err("mmap (reservation)"))?
            }
            Err(errno) => return Err(sys_err("mmap (reservation)")(errno)),
        };
        let max_regions = options::max_regions();
        let backend = backend::start(base, len, choice)?;
        if backend == Backend::Mprotect && len == 2 * zone_len {
            sys::unreserve(base + zone_len, zone_len);
            len = zone_len;
        }
        let pages = len / PAGE_SIZE;
        let (lazy_start, lazy_end) = backend::lazy_zone();
        let extent_err = sys_err("mmap (extent table)");
        let (protected, lazy) = if backend == Backend::Mprotect {
            (Zone::new(base, len, max_regions).map_err(extent_err)?, None)
        } else {
            (
                Zone::new(base, lazy_start - base, max_regions).map_err(extent_err)?,
                Some(
                    Zone::new(lazy_start, lazy_end - lazy_start, max_regions)
                        .map_err(extent_err)?,
                ),
            )
        };
        Ok(Space {
            base,
            len,
            reassert_handler: crate::signal::ensure_installed,
            lock: SpaceLock::new(),
            map: RegionMap::new(base, len).map_err(sys_err("mmap (region map)"))?,
            granules: GranuleTable::new(base, pages).map_err(sys_err("mmap (granule table)"))?,
            descs: DescriptorTable::new(max_regions).map_err(sys_err("mmap (descriptors)"))?,
            protected,
            lazy,
        })
    }
}
