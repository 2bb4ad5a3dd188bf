//! The statistics: the one list of counters (memcached's names), the
//! `stats` and `stats settings` reports, and beside them the memory figures
//! of the process and, under `SpfAlloc`, of the allocator.
//!
//! Counters are relaxed atomics: each is a tally read on its own, and no
//! other memory is published through them. `stats reset` zeroes the
//! counters but not the gauges (items, bytes, connections).
//!
//! The allocator figures, per allocator:
//! - all: `allocator` (its name), `process_resident_bytes` (VmRSS) and
//!   `process_peak_resident_bytes` (VmHWM) from `/proc/self/status`;
//! - `spf` only: `spf_*`, from `spf::alloc_stats()` — bytes allocated,
//!   active, committed and resident, regions, large blocks, heaps, pages
//!   reclaimed and handed over, 4 KiB runs purged inside pages — and
//!   spf-core's fault counters (`spf_faults`, `spf_faults_speculative`,
//!   `spf_faults_classic`, …). Under jemalloc or the system allocator those
//!   lines are left out rather than printed as zeros.

use crate::server::{Config, VERSION};
use crate::store::Store;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Whether `stats reset` zeroes a statistic.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident: $kind:ident,)*) => {
        /// The server's statistics, under memcached's names.
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl Counters {
            /// Each statistic in report order.
            fn each(&self, mut f: impl FnMut(&'static str, Kind, &AtomicU64)) {
                $(f(stringify!($name), Kind::$kind, &self.$name);)*
            }
        }
    };
}

counters! {
    /// Open connections.
    curr_connections: Gauge,
    total_connections: Counter,
    /// Connections refused because `max_connections` were open.
    rejected_connections: Counter,
    /// Keys asked for by retrievals.
    cmd_get: Counter,
    /// Storage commands whose data block arrived.
    cmd_set: Counter,
    cmd_flush: Counter,
    cmd_touch: Counter,
    get_hits: Counter,
    get_misses: Counter,
    /// Misses on an item that had expired.
    get_expired: Counter,
    /// Misses on an item invisible after a `flush_all`.
    get_flushed: Counter,
    delete_misses: Counter,
    delete_hits: Counter,
    incr_misses: Counter,
    incr_hits: Counter,
    decr_misses: Counter,
    decr_hits: Counter,
    cas_misses: Counter,
    cas_hits: Counter,
    /// `cas` refused because the item changed.
    cas_badval: Counter,
    touch_hits: Counter,
    touch_misses: Counter,
    bytes_read: Counter,
    bytes_written: Counter,
    /// Items stored now.
    curr_items: Gauge,
    total_items: Counter,
    /// Bytes of items stored now (key + data + item overhead).
    bytes: Gauge,
    /// Live items removed to make room.
    evictions: Counter,
    /// Expired or flushed items removed (on access or to make room).
    reclaimed: Counter,
}

impl Counters {
    /// `stats reset`.
    pub fn reset(&self) {
        self.each(|_, kind, c| {
            if kind == Kind::Counter {
                c.store(0, Relaxed);
            }
        });
    }
}

/// The global allocator a server binary was built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocator {
    Spf,
    Jemalloc,
    System,
}

impl Allocator {
    pub fn name(self) -> &'static str {
        match self {
            Allocator::Spf => "spf",
            Allocator::Jemalloc => "jemalloc",
            Allocator::System => "system",
        }
    }
}

fn stat(out: &mut Vec<u8>, name: &str, value: impl std::fmt::Display) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "STAT {name} {value}\r\n");
}

/// The process's user and system CPU time, seconds.
fn cpu_times() -> (f64, f64) {
    // SAFETY: `rusage` is plain old data, for which all zeroes is valid;
    // getrusage writes only into the struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut ru) != 0 {
            return (0.0, 0.0);
        }
        ru
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(ru.ru_utime), secs(ru.ru_stime))
}

/// VmRSS and VmHWM of this process, bytes (0 where unknown).
pub fn process_memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn memory(out: &mut Vec<u8>, allocator: Allocator) {
    let (rss, hwm) = process_memory();
    stat(out, "allocator", allocator.name());
    stat(out, "process_resident_bytes", rss);
    stat(out, "process_peak_resident_bytes", hwm);
    if allocator != Allocator::Spf {
        return;
    }
    let a = spf::alloc_stats();
    for (name, v) in [
        ("spf_allocated_bytes", a.allocated),
        ("spf_active_bytes", a.active),
        ("spf_committed_bytes", a.committed),
        ("spf_peak_committed_bytes", a.core.peak_committed_bytes),
        ("spf_resident_bytes", a.resident),
        ("spf_regions", a.live_regions),
        ("spf_large_blocks", a.large_blocks),
        ("spf_cached_large_bytes", a.cached_large),
        ("spf_heaps", a.heaps),
        ("spf_pages_reclaimed", a.pages_reclaimed),
        ("spf_pages_handed_over", a.pages_handed_over),
        ("spf_page_runs_purged", a.page_runs_purged),
        ("spf_faults", a.core.faults),
        ("spf_faults_speculative", a.core.spf),
        ("spf_faults_classic", a.core.classic),
        ("spf_faults_fatal", a.core.fatal),
        ("spf_vma_changed", a.core.spf_vma_changed),
        ("spf_pte_lock", a.core.spf_pte_lock),
        ("spf_cap", a.core.spf_cap),
        ("spf_commit_ahead", a.core.commit_ahead),
        ("spf_mprotect_calls", a.core.mprotect_calls),
    ] {
        stat(out, name, v);
    }
}

/// The reply to `stats`: memcached's general statistics, then the memory
/// figures, then `END`.
pub fn general(store: &Store, counters: &Counters, config: &Config) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    let clock = store.clock();
    let (user, system) = cpu_times();
    stat(&mut out, "pid", std::process::id());
    stat(&mut out, "uptime", clock.uptime_secs());
    stat(&mut out, "time", clock.unix_secs());
    stat(&mut out, "version", VERSION);
    stat(&mut out, "pointer_size", usize::BITS);
    stat(&mut out, "rusage_user", format_args!("{user:.6}"));
    stat(&mut out, "rusage_system", format_args!("{system:.6}"));
    stat(&mut out, "max_connections", config.max_connections);
    counters.each(|name, _, c| stat(&mut out, name, c.load(Relaxed)));
    stat(&mut out, "limit_maxbytes", store.limit());
    // A thread per connection, and the listener.
    stat(
        &mut out,
        "threads",
        counters.curr_connections.load(Relaxed) + 1,
    );
    memory(&mut out, config.allocator);
    out.extend_from_slice(b"END\r\n");
    out
}

/// The reply to `stats settings`.
pub fn settings(store: &Store, config: &Config, verbosity: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    stat(&mut out, "maxbytes", store.limit());
    stat(&mut out, "maxconns", config.max_connections);
    stat(&mut out, "tcpport", config.listen.port());
    stat(&mut out, "interface", config.listen.ip());
    stat(&mut out, "verbosity", verbosity);
    stat(&mut out, "evictions", "on");
    stat(&mut out, "item_size_max", crate::protocol::MAX_VALUE_LEN);
    stat(&mut out, "shards", store.shard_count());
    stat(&mut out, "allocator", config.allocator.name());
    out.extend_from_slice(b"END\r\n");
    out
}
