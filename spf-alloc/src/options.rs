//! The allocator's settings, read once without allocating.
//!
//! | variable | values | default |
//! |---|---|---|
//! | `SPF_COMMIT` | `eager` (large blocks committed when allocated), `touch` (committed on first touch by the fault handler) | `eager` |
//! | `SPF_DECAY_MS` | milliseconds a freed page or large block keeps its memory before it goes back to the kernel; `0` = at once | `1000` |
//! | `SPF_THP` | `on` (eager large blocks of 2 MiB or more are 2 MiB-aligned and advised `MADV_HUGEPAGE`: a first touch faults in 2 MiB, where the kernel's THP setting allows), `off` (4 KiB pages) | `on` |
//!
//! The spf-core settings (`SPF_MODE`, `SPF_CAP`, …) apply too.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};

pub const DEFAULT_DECAY_MS: u64 = 1000;

const UNREAD: u8 = 0;
const EAGER: u8 = 1;
const TOUCH: u8 = 2;

static COMMIT: AtomicU8 = AtomicU8::new(UNREAD);
static DECAY_MS: AtomicU64 = AtomicU64::new(DEFAULT_DECAY_MS);
static HUGE_PAGES: AtomicBool = AtomicBool::new(true);

fn bad(var: &str, value: &[u8], accepted: &str, default: &str) {
    let value = core::str::from_utf8(value).unwrap_or("<not UTF-8>");
    spf_core::report(format_args!(
        "spf: {var}={value} is not valid; accepted values: {accepted}. Using the default ({default}).\n"
    ));
}

#[cold]
fn read_env() -> u8 {
    if let Some(v) = spf_core::getenv(c"SPF_DECAY_MS") {
        match core::str::from_utf8(v)
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
        {
            Some(ms) => DECAY_MS.store(ms, Relaxed),
            None => bad(
                "SPF_DECAY_MS",
                v,
                "a number of milliseconds, 0 to purge at once",
                "1000",
            ),
        }
    }
    match spf_core::getenv(c"SPF_THP") {
        None | Some(b"on") => {}
        Some(b"off") => HUGE_PAGES.store(false, Relaxed),
        Some(v) => bad("SPF_THP", v, "on, off", "on"),
    }
    let mode = match spf_core::getenv(c"SPF_COMMIT") {
        None | Some(b"eager") => EAGER,
        Some(b"touch") => TOUCH,
        Some(v) => {
            bad("SPF_COMMIT", v, "eager, touch", "eager");
            EAGER
        }
    };
    // Racing first readers compute the same value.
    COMMIT.store(mode, Relaxed);
    mode
}

/// Whether large blocks are committed on touch (`SPF_COMMIT=touch`).
#[inline]
pub fn commit_on_touch() -> bool {
    let mode = match COMMIT.load(Relaxed) {
        UNREAD => read_env(),
        m => m,
    };
    mode == TOUCH
}

/// The decay time in nanoseconds.
#[inline]
pub fn decay_ns() -> u64 {
    if COMMIT.load(Relaxed) == UNREAD {
        read_env();
    }
    DECAY_MS.load(Relaxed).saturating_mul(1_000_000)
}

/// Whether eager large blocks ask for transparent huge pages (`SPF_THP`).
#[inline]
pub fn huge_pages() -> bool {
    if COMMIT.load(Relaxed) == UNREAD {
        read_env();
    }
    HUGE_PAGES.load(Relaxed)
}

/// Sets the decay time from code.
pub fn set_decay_ms(ms: u64) {
    if COMMIT.load(Relaxed) == UNREAD {
        read_env();
    }
    DECAY_MS.store(ms, Relaxed);
}
