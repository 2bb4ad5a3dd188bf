//! The per-thread part: which heap this thread uses, where heaps come from,
//! what happens at thread exit and around `fork()`.
//!
//! The heap pointer is a `const`-initialised thread-local with no
//! destructor — reading it never allocates or registers anything, so the
//! allocator can use it from its first call on a thread, and even inside
//! other thread-local destructors. Thread exit is caught with a `pthread`
//! key whose destructor abandons the heap (glibc runs key destructors after
//! Rust's thread-local destructors, which may still free memory).
//!
//! Heaps live in an eagerly committed spf-core region carved by a bump
//! pointer and recycled through a free list; they are never freed, so a
//! pointer to one is always safe to read (the remote-free counter relies on
//! it).
//!
//! Lock order (for `fork()` and for nesting): fallback heap → heap pool →
//! each heap's own lock → abandoned lists → page pool → large cache. A
//! thread holds at most one heap's lock (its own, or the one it reclaims
//! pages from: S5 in `segment`).

use crate::heap::{self, Heap};
use crate::lock::SpinLock;
use crate::{large, segment};
use core::cell::Cell;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use spf_core::{Region, RegionOptions};

// Neither is null: a page's `heap` is null or a live heap, so a free can
// compare it with this thread's heap pointer without checking that the
// pointer is live.
const UNSET: usize = 1;
const DEAD: usize = 2;

thread_local! {
    static HEAP: Cell<*mut Heap> = const { Cell::new(UNSET as *mut Heap) };
}

/// This thread's heap pointer: UNSET (none yet), DEAD (exiting), or a heap.
#[inline]
pub fn heap() -> *mut Heap {
    HEAP.with(Cell::get)
}

#[inline]
pub fn is_live(h: *mut Heap) -> bool {
    h as usize > DEAD
}

#[inline]
pub fn is_unset(h: *mut Heap) -> bool {
    h as usize == UNSET
}

/// Room for heaps: one region at a time, 4 MiB each.
struct HeapPool {
    /// Heaps of exited threads (abandoned), linked through their
    /// `next_free`, reused before new ones are carved.
    free: *mut Heap,
    /// The next unused byte of the current chunk, where a new heap is
    /// carved.
    next: usize,
    /// The end of the current chunk.
    end: usize,
}
// SAFETY: reached only under its lock.
unsafe impl Send for HeapPool {}

static POOL: SpinLock<HeapPool> = SpinLock::new(HeapPool {
    free: null_mut(),
    next: 0,
    end: 0,
});
const HEAP_CHUNK: usize = 4 << 20;

/// A heap from the pool, or null when memory is exhausted.
pub fn heap_new() -> *mut Heap {
    // A multiple of the heap's alignment (128), so every heap carved from
    // a 128-aligned start is aligned.
    let size = core::mem::size_of::<Heap>();
    loop {
        {
            let mut pool = POOL.lock();
            if !pool.free.is_null() {
                let h = pool.free;
                // SAFETY: the head of the free list, under the pool's lock.
                pool.free = unsafe { heap::next_free(h) };
                return h;
            }
            if pool.next + size <= pool.end {
                let mem = pool.next as *mut Heap;
                pool.next += size;
                // SAFETY: fresh committed memory from our heap region, aligned
                // to 64 bytes, handed out once.
                return unsafe { Heap::init(mem) };
            }
        }
        // Out of room: a new chunk, made with no lock held (R1).
        let opts = RegionOptions::default().granule(64 << 10).eager();
        let Ok(region) = Region::reserve(HEAP_CHUNK, opts) else {
            return null_mut();
        };
        let start = region.into_raw() as usize;
        let mut pool = POOL.lock();
        if pool.next + size <= pool.end {
            // Another thread refilled meanwhile: keep its chunk, give ours
            // back without the lock (R1).
            drop(pool);
            // SAFETY: the region we just made, still ours alone.
            drop(unsafe { Region::from_raw(start as *mut u8) });
            continue;
        }
        // Any room left in the old chunk is abandoned: under one Heap.
        // Heaps start half a page in: the class queues are read on every
        // allocation, right after a store to a block, and blocks of the
        // first classes often start on a 4 KiB boundary; keeping the two
        // off the same offset within a page avoids the processor's false
        // 4 KiB aliasing stalls (measured: 16 B alloc+free pairs went from
        // 11.2 to 5.5 ns).
        pool.next = start + 2048;
        pool.end = start + HEAP_CHUNK;
    }
}

const KEY_UNSET: u8 = 0;
const KEY_MAKING: u8 = 1;
const KEY_READY: u8 = 2;
static KEY_STATE: AtomicU8 = AtomicU8::new(KEY_UNSET);
static KEY: AtomicU32 = AtomicU32::new(0);

fn exit_key() -> Option<libc::pthread_key_t> {
    loop {
        match KEY_STATE.compare_exchange(
            KEY_UNSET,
            KEY_MAKING,
            Ordering::Acquire,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                // Start spf-core first, so that its fork handlers are
                // registered before ours and ours run first in `prepare`:
                // our locks are taken before the space lock, as in use.
                if let Err(e) = spf_core::init() {
                    report_start_failure(e);
                    KEY_STATE.store(KEY_UNSET, Ordering::Release);
                    return None;
                }
                let mut key = 0;
                // SAFETY: `key` is valid to write; the destructor has the
                // signature pthread wants.
                let ok = unsafe { libc::pthread_key_create(&mut key, Some(on_thread_exit)) } == 0;
                if ok {
                    KEY.store(key, Ordering::Relaxed);
                    register_fork_handlers();
                    crate::register_stats_at_exit();
                    KEY_STATE.store(KEY_READY, Ordering::Release);
                    return Some(key);
                }
                KEY_STATE.store(KEY_UNSET, Ordering::Release);
                return None;
            }
            // KEY is written before KEY_READY is stored (Release), and we
            // saw KEY_READY (Acquire).
            Err(KEY_READY) => return Some(KEY.load(Ordering::Relaxed)),
            Err(_) => std::thread::yield_now(),
        }
    }
}

/// Says once why spf could not start; every allocation then returns null
/// (and Rust's `handle_alloc_error` ends the program) — a start failure is
/// final, since the reservation is the whole of spf's space.
#[cold]
fn report_start_failure(e: spf_core::Error) {
    static REPORTED: AtomicBool = AtomicBool::new(false);
    if !REPORTED.swap(true, Ordering::Relaxed) {
        spf_core::report(format_args!("{e} (the allocator cannot start)\n"));
    }
}

/// Gives this thread a heap (first allocation on the thread).
#[cold]
pub fn heap_init() -> Option<*mut Heap> {
    let key = exit_key()?;
    let h = heap_new();
    if h.is_null() {
        return None;
    }
    // SAFETY: a valid key; glibc keeps the value in the thread descriptor
    // (allocating with its own malloc past the first 32 keys, never ours).
    if unsafe { libc::pthread_setspecific(key, h as *const libc::c_void) } != 0 {
        // Without the key the heap would never be abandoned: give it back
        // and let this thread use the fallback heap.
        let mut pool = POOL.lock();
        // SAFETY: a heap from `heap_new` that no thread has used, under
        // the pool's lock.
        unsafe { heap::set_next_free(h, pool.free) };
        pool.free = h;
        return None;
    }
    HEAP.with(|c| c.set(h));
    Some(h)
}

extern "C" fn on_thread_exit(value: *mut libc::c_void) {
    let h = value as *mut Heap;
    if !is_live(h) {
        return;
    }
    // From here on this thread allocates from the fallback heap.
    HEAP.with(|c| c.set(DEAD as *mut Heap));
    // SAFETY: the heap belonged to this thread, which is exiting.
    heap::abandon(unsafe { &*h });
    let mut pool = POOL.lock();
    // SAFETY: this exiting thread's heap, abandoned above and no longer
    // its heap (`HEAP` says DEAD), under the pool's lock.
    unsafe { heap::set_next_free(h, pool.free) };
    pool.free = h;
}

fn register_fork_handlers() {
    extern "C" fn prepare() {
        heap::fork_lock_fallback();
        POOL.lock_forever();
        heap::fork_lock_heaps();
        heap::fork_lock_abandoned();
        segment::fork_lock();
        large::fork_lock();
    }
    extern "C" fn after() {
        // SAFETY: `prepare` took every one of these locks.
        unsafe {
            large::fork_unlock();
            segment::fork_unlock();
            heap::fork_unlock_abandoned();
            heap::fork_unlock_heaps();
            POOL.unlock_forgotten();
            heap::fork_unlock_fallback();
        }
    }
    // SAFETY: plain functions with the signature pthread_atfork wants.
    unsafe { libc::pthread_atfork(Some(prepare), Some(after), Some(after)) };
}
