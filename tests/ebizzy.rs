//! The ebizzy example, run for one second in each mode with 4 threads: it
//! makes progress, no search fails, and the counters add up — every fault
//! is served speculatively or classically, none in classic mode is
//! speculative, and speculation serves at least 90 % in speculative mode.

#[path = "../examples/ebizzy/args.rs"]
mod args;
#[path = "../examples/ebizzy/bench.rs"]
mod bench;

use bench::Mapping;
use std::sync::Mutex;

// The system allocator under the handler guard: the counters then see only
// the workload's faults, and the handler is checked for allocations.
#[global_allocator]
static GLOBAL: spf::HandlerAllocGuard<std::alloc::System> =
    spf::HandlerAllocGuard(std::alloc::System);

/// The fault mode and counters are process-wide: one run at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn parse(cmd: &str) -> args::Args {
    args::parse(cmd.split_whitespace().map(String::from), 2).unwrap()
}

fn run(cmd: &str, mode: spf::Mode, mapping: Option<Mapping>) -> bench::Outcome {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let o = bench::run(&parse(cmd), mode, mapping).expect("no search may fail");
    eprintln!(
        "{cmd} {mode:?}: {:.0} records/s (user {:.2} s, sys {:.2} s)\n{}",
        o.rate(),
        o.user,
        o.sys,
        o.stats
    );
    assert!(o.records > 0, "{cmd}: no progress");
    let st = &o.stats;
    assert_eq!(st.fatal, 0);
    assert_eq!(
        st.faults,
        st.spf + st.classic,
        "{cmd}: counters do not add up"
    );
    o
}

#[test]
fn mmap_touch_in_classic_mode_takes_the_lock_for_every_fault() {
    let o = run(
        "-mT -t 4 -S 1 -s 128k",
        spf::Mode::Classic,
        Some(Mapping::Spf),
    );
    assert!(o.stats.faults > 0);
    assert_eq!(o.stats.spf, 0);
}

#[test]
fn mmap_touch_in_speculative_mode_is_mostly_speculative() {
    let o = run(
        "-mTR -t 4 -S 1 -s 128k",
        spf::Mode::Speculative,
        Some(Mapping::Spf),
    );
    let st = &o.stats;
    assert!(st.faults > 0);
    assert!(
        st.spf * 10 >= st.faults * 9,
        "{} of {} speculative",
        st.spf,
        st.faults
    );
}

#[test]
fn copy_and_search_through_the_allocators() {
    for alloc in ["spf", "jemalloc", "system"] {
        run(
            &format!("-t 4 -S 1 -s 64k --alloc {alloc}"),
            spf::Mode::Speculative,
            None,
        );
    }
    run(
        "-mRp -t 4 -S 1 -s 64k -z",
        spf::Mode::Speculative,
        Some(Mapping::Spf),
    );
}

#[test]
fn the_ltp_generator_degenerates_to_one_record_of_one_chunk() {
    let o = run(
        "-mTRp --ltp-rng -t 4 -S 1",
        spf::Mode::Speculative,
        Some(Mapping::Spf),
    );
    // One 8-byte buffer per record: one fault per record.
    let per_record = o.stats.faults as f64 / o.records as f64;
    assert!(
        (0.9..=1.1).contains(&per_record),
        "{per_record} faults per record"
    );
}

#[test]
fn native_mappings_take_no_spf_fault() {
    let o = run(
        "-mT -t 4 -S 1 -s 128k",
        spf::Mode::Speculative,
        Some(Mapping::Native),
    );
    assert_eq!(o.stats.faults, 0, "the kernel serves native mappings");
}
