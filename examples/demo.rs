//! The smallest demonstration: threads fault a lazily committed region in
//! both fault modes — BASE (classic: every fault takes the space lock) and
//! SPF (speculative) — and the example prints throughput and spf's
//! counters for each, `perf stat` style. (`examples/ebizzy` is the fuller
//! comparison.)
//!
//! ```text
//! cargo run --release --example demo -- [--threads N] [--mib M] [--granule BYTES] [--rounds R]
//! ```

use spf::{Mode, Region, RegionOptions};
use std::time::Instant;

const PAGE: usize = 4096;

struct Args {
    threads: usize,
    mib: usize,
    granule: usize,
    rounds: usize,
}

fn parse_args() -> Result<Args, String> {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut a = Args {
        threads: 2 * cpus,
        mib: 64,
        granule: 16 << 10,
        rounds: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let n = spf::parse_size(value.as_bytes()).ok_or(format!("{flag}: bad number {value}"))?;
        match flag.as_str() {
            "--threads" if n > 0 => a.threads = n,
            "--mib" if n > 0 => a.mib = n,
            "--granule" => a.granule = n,
            "--rounds" if n > 0 => a.rounds = n,
            _ => return Err(format!("unknown flag or bad value: {flag} {value}")),
        }
    }
    Ok(a)
}

/// Each thread owns a slice of one shared region: it touches every page,
/// checks what it wrote, and decommits its slice for the next round, so
/// every round faults again while other threads change the same region.
fn run(args: &Args, mode: Mode) -> Result<(f64, spf::Stats), spf::Error> {
    spf::set_mode(mode);
    let region = Region::reserve(
        args.mib << 20,
        RegionOptions::default().granule(args.granule),
    )?;
    let slice = (region.len() / args.threads) & !(args.granule - 1);
    if slice == 0 {
        eprintln!(
            "demo: the region is too small for {} threads at this granule",
            args.threads
        );
        std::process::exit(2);
    }
    let base = region.as_ptr() as usize;
    let before = spf::stats();
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..args.threads {
            let region = &region;
            s.spawn(move || {
                let mine = base + t * slice;
                for round in 0..args.rounds {
                    for off in (0..slice).step_by(PAGE) {
                        // SAFETY: this thread's slice of the live region.
                        unsafe { ((mine + off) as *mut u64).write((off ^ round) as u64) };
                    }
                    for off in (0..slice).step_by(PAGE) {
                        // SAFETY: as above.
                        let v = unsafe { ((mine + off) as *const u64).read() };
                        assert_eq!(v, (off ^ round) as u64, "lost data");
                    }
                    region
                        .decommit(t * slice..(t + 1) * slice)
                        .expect("decommit");
                }
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let st = spf::stats().since(&before);
    spf::set_mode(Mode::Speculative);
    Ok((st.faults as f64 / secs, st))
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("demo: {e}\nusage: demo [--threads N] [--mib M] [--granule BYTES] [--rounds R]");
        std::process::exit(2)
    });
    println!(
        "spf demo: {} threads, {} MiB region, {} KiB granules, {} rounds",
        args.threads,
        args.mib,
        args.granule >> 10,
        args.rounds
    );
    let mut rates = Vec::new();
    for (name, mode) in [
        ("BASE (classic)", Mode::Classic),
        ("SPF (speculative)", Mode::Speculative),
    ] {
        let (rate, st) = run(&args, mode).unwrap_or_else(|e| {
            eprintln!("demo: {e}");
            std::process::exit(1)
        });
        println!("\n{name}: {rate:.0} faults/s\n{st}");
        rates.push(rate);
    }
    println!(
        "{:>12} {:>12} {:>8}\n{:>12.0} {:>12.0} {:>7.1}%",
        "BASE",
        "SPF",
        "delta",
        rates[0],
        rates[1],
        (rates[1] / rates[0] - 1.0) * 100.0
    );
}
