//! The one table of options: every setting spf-core reads, its environment
//! variable, its default, and the setter that changes it from code.
//!
//! | variable          | values                         | default  |
//! |-------------------|--------------------------------|----------|
//! | `SPF_MODE`        | `spf`, `classic`               | `spf`    |
//! | `SPF_CAP`         | bytes per CPU (`k`, `m`, `g`)  | `8m`     |
//! | `SPF_CAP_POLICY`  | `shrink`, `classic`            | `shrink` |
//! | `SPF_GRANULE`     | `4k` … `2m`, a power of two    | `64k`    |
//! | `SPF_STATS`       | `0`, `1`                       | `0`      |
//! | `SPF_RESERVE`     | bytes of address space per zone (`backend`) | `256g` |
//! | `SPF_MAX_REGIONS` | live regions at once           | `1048576`|
//! | `SPF_BACKEND`     | `auto`, `uffd`, `guard`, `mprotect` | `auto` |
//!
//! Variables are read once, when the space starts, without allocating. A
//! bad value prints a message naming the variable and the accepted values,
//! and the default is used.
//!
//! Invariant I1: every option is a plain atomic, so the fault handler reads
//! them without locks or lazy initialisation.

use crate::report::report;
use crate::sys;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::Relaxed};

/// Which fault path serves faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Find and validate the region without the space lock (the default).
    Speculative,
    /// Take the space lock for every fault: the BASE column of the kernel series' ebizzy tables.
    Classic,
}

/// What a speculative fault does when its CPU's in-flight budget is spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapPolicy {
    /// Commit only the faulting granule, with no commit-ahead and no
    /// populate: the fault stays speculative and allocates nothing ahead.
    Shrink,
    /// Hand the fault to the classic path, which the space lock serializes.
    Classic,
}

/// The default per-CPU budget of bytes committed or populated ahead of touch.
pub const DEFAULT_CAP: usize = 8 << 20;
/// The default granule of `RegionOptions::default()`.
pub const DEFAULT_GRANULE: usize = 64 << 10;
/// The default size of the address-space reservation.
pub const DEFAULT_RESERVE: usize = 256 << 30;
/// The default limit on live regions.
pub const DEFAULT_MAX_REGIONS: usize = 1 << 20;

static MODE: AtomicU8 = AtomicU8::new(0);
static CAP: AtomicUsize = AtomicUsize::new(DEFAULT_CAP);
static CAP_AT_START: AtomicUsize = AtomicUsize::new(DEFAULT_CAP);
static CAP_POLICY: AtomicU8 = AtomicU8::new(0);
static GRANULE: AtomicUsize = AtomicUsize::new(DEFAULT_GRANULE);
static STATS_AT_EXIT: AtomicBool = AtomicBool::new(false);
static RESERVE: AtomicUsize = AtomicUsize::new(DEFAULT_RESERVE);
static MAX_REGIONS: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_REGIONS);

/// The fault path in use.
#[inline]
pub fn mode() -> Mode {
    if MODE.load(Relaxed) == 0 {
        Mode::Speculative
    } else {
        Mode::Classic
    }
}

/// Switches the fault path; takes effect for the next fault.
pub fn set_mode(mode: Mode) {
    MODE.store((mode == Mode::Classic) as u8, Relaxed);
}

/// The per-CPU budget, in bytes, of speculative commit-ahead and populate.
#[inline]
pub fn cap() -> usize {
    CAP.load(Relaxed)
}

/// The cap `SPF_CAP` chose at start (8 MiB per CPU if it is unset).
pub fn cap_default() -> usize {
    CAP_AT_START.load(Relaxed)
}

/// Sets the per-CPU budget; `0` allows no speculative allocation ahead.
pub fn set_cap(bytes: usize) {
    CAP.store(bytes, Relaxed);
}

/// What a fault over the per-CPU cap does (`SPF_CAP_POLICY`).
#[inline]
pub fn cap_policy() -> CapPolicy {
    if CAP_POLICY.load(Relaxed) == 0 {
        CapPolicy::Shrink
    } else {
        CapPolicy::Classic
    }
}

/// Sets what a fault over the per-CPU cap does; takes effect for the
/// next fault.
pub fn set_cap_policy(policy: CapPolicy) {
    CAP_POLICY.store((policy == CapPolicy::Classic) as u8, Relaxed);
}

/// The granule `RegionOptions::default()` uses (`SPF_GRANULE`).
pub fn default_granule() -> usize {
    GRANULE.load(Relaxed)
}

/// Whether the counters are printed to standard error at exit.
pub fn stats_at_exit() -> bool {
    STATS_AT_EXIT.load(Relaxed)
}

pub(crate) fn reserve_bytes() -> usize {
    RESERVE.load(Relaxed)
}

pub(crate) fn max_regions() -> usize {
    MAX_REGIONS.load(Relaxed)
}

/// Parses `123`, `64k`, `2m`, `1g`, `1t` (binary multiples).
pub fn parse_size(text: &[u8]) -> Option<usize> {
    let (digits, shift) = match text.last()?.to_ascii_lowercase() {
        b'k' => (&text[..text.len() - 1], 10),
        b'm' => (&text[..text.len() - 1], 20),
        b'g' => (&text[..text.len() - 1], 30),
        b't' => (&text[..text.len() - 1], 40),
        _ => (text, 0),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut n: usize = 0;
    for &d in digits {
        n = n.checked_mul(10)?.checked_add((d - b'0') as usize)?;
    }
    n.checked_mul(1usize << shift)
}

fn bad_value(var: &str, value: &[u8], accepted: &str, default: &str) {
    let value = core::str::from_utf8(value).unwrap_or("<not UTF-8>");
    report!("spf: {var}={value} is not valid; accepted values: {accepted}. Using the default ({default}).\n");
}

/// Reads the `SPF_*` variables. Called once, when the space starts.
pub(crate) fn load_from_env() {
    if let Some(v) = sys::env(c"SPF_MODE") {
        match v {
            b"spf" | b"speculative" => set_mode(Mode::Speculative),
            b"classic" | b"base" => set_mode(Mode::Classic),
            _ => bad_value("SPF_MODE", v, "spf, classic", "spf"),
        }
    }
    if let Some(v) = sys::env(c"SPF_CAP") {
        match parse_size(v) {
            Some(n) => {
                set_cap(n);
                CAP_AT_START.store(n, Relaxed);
            }
            None => bad_value("SPF_CAP", v, "a byte count such as 8m or 65536", "8m"),
        }
    }
    if let Some(v) = sys::env(c"SPF_CAP_POLICY") {
        match v {
            b"shrink" => set_cap_policy(CapPolicy::Shrink),
            b"classic" => set_cap_policy(CapPolicy::Classic),
            _ => bad_value("SPF_CAP_POLICY", v, "shrink, classic", "shrink"),
        }
    }
    if let Some(v) = sys::env(c"SPF_GRANULE") {
        match parse_size(v) {
            Some(n) if crate::Granule::new(n).is_some() => GRANULE.store(n, Relaxed),
            _ => bad_value(
                "SPF_GRANULE",
                v,
                "a power of two from 4k to 2m (4k, 8k, ..., 64k, ..., 2m)",
                "64k",
            ),
        }
    }
    if let Some(v) = sys::env(c"SPF_STATS") {
        match v {
            b"1" | b"yes" | b"true" => STATS_AT_EXIT.store(true, Relaxed),
            b"0" | b"no" | b"false" | b"" => STATS_AT_EXIT.store(false, Relaxed),
            _ => bad_value("SPF_STATS", v, "0, 1", "0"),
        }
    }
    if let Some(v) = sys::env(c"SPF_RESERVE") {
        match parse_size(v) {
            // Page numbers are 32-bit in the extent allocator: at most 16 TiB.
            Some(n) if (1 << 30..=8 << 40).contains(&n) => RESERVE.store(n, Relaxed),
            _ => bad_value("SPF_RESERVE", v, "a size from 1g to 8t", "256g"),
        }
    }
    if let Some(v) = sys::env(c"SPF_BACKEND") {
        use crate::backend::{set_backend, Backend, BackendChoice};
        match v {
            b"auto" => set_backend(BackendChoice::Auto),
            b"uffd" | b"userfaultfd" => set_backend(BackendChoice::Only(Backend::Uffd)),
            b"guard" => set_backend(BackendChoice::Only(Backend::Guard)),
            b"mprotect" => set_backend(BackendChoice::Only(Backend::Mprotect)),
            _ => bad_value("SPF_BACKEND", v, "auto, uffd, guard, mprotect", "auto"),
        }
    }
    if let Some(v) = sys::env(c"SPF_MAX_REGIONS") {
        match parse_size(v) {
            Some(n) if (16..=1 << 24).contains(&n) => MAX_REGIONS.store(n, Relaxed),
            _ => bad_value(
                "SPF_MAX_REGIONS",
                v,
                "a count from 16 to 16777216",
                "1048576",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size(b"4096"), Some(4096));
        assert_eq!(parse_size(b"64k"), Some(64 << 10));
        assert_eq!(parse_size(b"2M"), Some(2 << 20));
        assert_eq!(parse_size(b"1g"), Some(1 << 30));
        assert_eq!(parse_size(b"1t"), Some(1 << 40));
        assert_eq!(parse_size(b""), None);
        assert_eq!(parse_size(b"k"), None);
        assert_eq!(parse_size(b"12x"), None);
        assert_eq!(parse_size(b"-1"), None);
        assert_eq!(parse_size(b"99999999999999999999999"), None);
    }
}
