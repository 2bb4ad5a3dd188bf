//! ebizzy's workload: chunks of sorted records; worker threads that copy a
//! random chunk into a fresh buffer, search it for a random key and free
//! the buffer, counting records per second.
//!
//! A buffer comes from the chosen allocator (`--alloc`), or with `-m` from
//! a fresh mapping: an spf region committed on touch by the fault handler
//! (the speculative or the classic path, by `--mode`), or with `--native`
//! the kernel's own anonymous mmap.

use crate::args::{AllocArg, Args};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const PAGE: usize = 4096;
const RECORD: usize = 8;

static SPF: spf::SpfAlloc = spf::SpfAlloc::new();
static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
static MIMALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Where `-m` buffers and chunks come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// spf regions committed on touch.
    Spf,
    /// The kernel's mmap/munmap.
    Native,
}

/// What one run measured.
#[derive(Debug)]
pub struct Outcome {
    pub records: u64,
    pub real: f64,
    pub user: f64,
    pub sys: f64,
    pub stats: spf::Stats,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.real
    }
}

fn allocator(a: AllocArg) -> &'static (dyn GlobalAlloc + Sync) {
    match a {
        AllocArg::Spf => &SPF,
        AllocArg::Jemalloc => &JEMALLOC,
        AllocArg::Mimalloc => &MIMALLOC,
        AllocArg::System => &System,
    }
}

/// ebizzy's generator, or LTP's, whose state starts at 0 and is only ever
/// multiplied: it always returns 0.
struct Rng {
    state: u64,
    ltp: bool,
}

impl Rng {
    fn next(&mut self, max: usize) -> usize {
        if self.ltp {
            self.state = self.state.wrapping_mul(1_103_515_245);
            return (self.state % max as u64) as usize;
        }
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state % max as u64) as usize
    }
}

/// One buffer: from the allocator or a mapping.
enum Buffer {
    Heap(*mut u8, Layout, &'static (dyn GlobalAlloc + Sync)),
    Region(spf::Region),
    Native(*mut u8, usize),
}

impl Buffer {
    fn new(a: &Args, len: usize, mapping: Option<Mapping>) -> Result<Buffer, String> {
        match mapping {
            None => {
                let layout = Layout::from_size_align(len, RECORD).map_err(|e| e.to_string())?;
                let alloc = allocator(a.alloc);
                // SAFETY: a valid, non-zero layout.
                let p = unsafe { alloc.alloc(layout) };
                if p.is_null() {
                    return Err(format!("allocation of {len} bytes failed"));
                }
                Ok(Buffer::Heap(p, layout, alloc))
            }
            Some(Mapping::Spf) => {
                let opts = spf::RegionOptions::default().granule(a.granule);
                spf::Region::reserve(len, opts)
                    .map(Buffer::Region)
                    .map_err(|e| e.to_string())
            }
            Some(Mapping::Native) => {
                // SAFETY: a fresh private anonymous mapping.
                let p = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )
                };
                if p == libc::MAP_FAILED {
                    return Err(format!(
                        "mmap of {len} bytes failed: {}",
                        std::io::Error::last_os_error()
                    ));
                }
                Ok(Buffer::Native(p.cast(), len))
            }
        }
    }

    fn ptr(&self) -> *mut u8 {
        match self {
            Buffer::Heap(p, _, _) => *p,
            Buffer::Region(r) => r.as_ptr(),
            Buffer::Native(p, _) => *p,
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        match self {
            // SAFETY: allocated with this layout by this allocator.
            Buffer::Heap(p, layout, alloc) => unsafe { alloc.dealloc(*p, *layout) },
            Buffer::Region(_) => {} // the Region destroys itself
            // SAFETY: our own mapping of this length.
            Buffer::Native(p, len) => unsafe {
                libc::munmap(p.cast(), *len);
            },
        }
    }
}

// SAFETY: a Buffer is an owned allocation; the chunks are only read by the
// workers once written.
unsafe impl Send for Buffer {}
unsafe impl Sync for Buffer {}

/// Makes the chunks: `records[j] = j`; with `-p` even chunks become
/// read-only, with `-P` each is followed by a page that stays inaccessible.
fn make_chunks(a: &Args, mapping: Option<Mapping>) -> Result<Vec<Buffer>, String> {
    let hole = if a.holes && mapping.is_some() {
        PAGE
    } else {
        0
    };
    // The hole starts on a page boundary.
    let body = if hole > 0 {
        a.chunk_size.next_multiple_of(PAGE)
    } else {
        a.chunk_size
    };
    let mut chunks = Vec::with_capacity(a.chunks);
    for i in 0..a.chunks {
        let b = Buffer::new(a, body + hole, mapping)?;
        let records = b.ptr() as *mut u64;
        for j in 0..a.chunk_size / RECORD {
            // SAFETY: inside the chunk.
            unsafe { records.add(j).write(j as u64) };
        }
        if a.protect_even && i % 2 == 0 {
            match &b {
                Buffer::Region(r) => r
                    .protect(spf::Protection::ReadOnly)
                    .map_err(|e| e.to_string())?,
                // SAFETY: the chunk part of our own mapping.
                Buffer::Native(p, _) => unsafe {
                    libc::mprotect(p.cast(), body, libc::PROT_READ);
                },
                Buffer::Heap(..) => {}
            }
        }
        if hole > 0 {
            if let Buffer::Native(p, _) = &b {
                // SAFETY: the last page of our own mapping, page aligned.
                if unsafe { libc::mprotect(p.add(body).cast(), hole, libc::PROT_NONE) } != 0 {
                    return Err(format!(
                        "mprotect of the hole failed: {}",
                        std::io::Error::last_os_error()
                    ));
                }
            }
            // An spf region's last page is never touched: it stays
            // uncommitted. (spf regions never merge into one kernel mapping
            // anyway; the hole keeps the layout comparable.)
        }
        chunks.push(b);
    }
    Ok(chunks)
}

fn cpu_seconds() -> (f64, f64) {
    // SAFETY: a zeroed rusage is valid to fill in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(ru.ru_utime), secs(ru.ru_stime))
}

/// One worker's loop until `stop`.
fn worker(
    a: &Args,
    chunks: &[Buffer],
    mapping: Option<Mapping>,
    seed: u64,
    stop: &AtomicBool,
) -> Result<u64, String> {
    let mut rng = Rng {
        state: if a.ltp_rng {
            0
        } else {
            seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
        },
        ltp: a.ltp_rng,
    };
    let mut records = 0;
    while !stop.load(Ordering::Relaxed) {
        let chunk = &chunks[rng.next(chunks.len())];
        let size = if a.random_size {
            (rng.next(a.chunk_size / RECORD) + 1) * RECORD
        } else {
            a.chunk_size
        };
        let buf = Buffer::new(a, size, mapping)?;
        let dst = buf.ptr();
        if a.touch_only {
            for off in (0..size).step_by(PAGE) {
                // SAFETY: inside the buffer; the first touch commits it.
                unsafe { dst.add(off).write_volatile(0) };
            }
        } else {
            let src = chunk.ptr();
            if a.byte_copy {
                for i in 0..size {
                    // SAFETY: both ranges hold `size` bytes.
                    unsafe { dst.add(i).write(src.add(i).read()) };
                }
            } else {
                // SAFETY: distinct buffers of at least `size` bytes.
                unsafe { std::ptr::copy_nonoverlapping(src, dst, size) };
            }
            let n = size / RECORD;
            let key = rng.next(n) as u64;
            // SAFETY: the buffer holds n copied records.
            let recs = unsafe { std::slice::from_raw_parts(dst as *const u64, n) };
            let found = if a.linear {
                recs.iter().position(|&r| r == key)
            } else {
                recs.binary_search(&key).ok()
            };
            if found != Some(key as usize) {
                return Err(format!("search for key {key} in {n} records failed"));
            }
            // Fresh mappings read as zero, so key 0 is found even in a copy
            // that never happened: check the last record too.
            if recs[n - 1] != (n - 1) as u64 {
                return Err(format!("record {} was not copied", n - 1));
            }
        }
        drop(buf);
        records += 1;
    }
    Ok(records)
}

/// Runs the workload once with `mode` serving the faults.
pub fn run(a: &Args, mode: spf::Mode, mapping: Option<Mapping>) -> Result<Outcome, String> {
    if a.no_malloc_mmap {
        // SAFETY: glibc's mallopt with a documented parameter.
        unsafe { libc::mallopt(libc::M_MMAP_MAX, 0) };
    }
    spf::set_mode(mode);
    let chunks = make_chunks(a, mapping)?;
    let stop = AtomicBool::new(false);
    let go = AtomicBool::new(false);
    let ready = AtomicU64::new(0);
    let total = AtomicU64::new(0);
    let mut failure = None;
    let before = spf::stats();
    let mut started = Instant::now();
    let (mut u0, mut s0) = (0.0, 0.0);
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for t in 0..a.threads {
            let (chunks, stop, go, ready, total) = (&chunks, &stop, &go, &ready, &total);
            let spawned = std::thread::Builder::new().spawn_scoped(s, move || {
                ready.fetch_add(1, Ordering::AcqRel);
                // All threads start together, on the flag.
                while !go.load(Ordering::Acquire) {
                    std::thread::yield_now();
                }
                let r = worker(a, chunks, mapping, t as u64 + 1, stop);
                match &r {
                    Ok(n) => {
                        total.fetch_add(*n, Ordering::Relaxed);
                    }
                    // A failed search is fatal: stop everyone now.
                    Err(_) => stop.store(true, Ordering::Relaxed),
                }
                r
            });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    failure = Some(format!("cannot start thread {t}: {e}"));
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
            }
        }
        while ready.load(Ordering::Acquire) < handles.len() as u64 {
            std::thread::yield_now();
        }
        (u0, s0) = cpu_seconds();
        started = Instant::now();
        go.store(true, Ordering::Release);
        let deadline = started + Duration::from_secs_f64(a.seconds);
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10).min(deadline - now));
        }
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            if let Err(e) = h.join().expect("worker panicked") {
                failure = Some(e);
            }
        }
    });
    let real = started.elapsed().as_secs_f64();
    let (u1, s1) = cpu_seconds();
    let stats = spf::stats().since(&before);
    drop(chunks);
    spf::set_mode(spf::Mode::Speculative);
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(Outcome {
        records: total.load(Ordering::Relaxed),
        real,
        user: u1 - u0,
        sys: s1 - s0,
        stats,
    })
}
