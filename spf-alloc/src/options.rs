//! The allocator's settings, read once without allocating.
//!
//! | variable | values | default |
//! |---|---|---|
//! | `SPF_COMMIT` | `eager` (large blocks committed when allocated), `touch` (committed on first touch by the fault handler) | `eager` |
//! | `SPF_DECAY_MS` | milliseconds a freed page or large block keeps its memory before it goes back to the kernel; `0` = at once | `1000` |
//!
//! The spf-core settings (`SPF_MODE`, `SPF_CAP`, …) apply too.

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};

pub const DEFAULT_DECAY_MS: u64 = 1000;

const UNREAD: u8 = 0;
const EAGER: u8 = 1;
const TOUCH: u8 = 2;

static COMMIT: AtomicU8 = AtomicU8::new(UNREAD);
static DECAY_MS: AtomicU64 = AtomicU64::new(DEFAULT_DECAY_MS);

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

/// Sets the decay time from code.
pub fn set_decay_ms(ms: u64) {
    if COMMIT.load(Relaxed) == UNREAD {
        read_env();
    }
    DECAY_MS.store(ms, Relaxed);
}
