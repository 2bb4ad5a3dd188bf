//! ebizzy, reproduced: the benchmark of the speculative page fault series
//! (LTP `utils/benchmark/ebizzy-0.3`), with spf regions as its mappings.
//!
//! ```text
//! cargo run --release --example ebizzy                  # the series' comparison: -mTR --native -S 5
//! cargo run --release --example ebizzy -- -mTRp -t 16 -S 5 --native
//! ```
//!
//! `-m` buffers are spf regions committed on touch by spf's fault handler:
//! `--mode classic` takes the space lock for every fault (the series' BASE),
//! `--mode spf` faults speculatively (SPF), `--mode both` (the default)
//! runs BASE then SPF and prints the series' `BASE SPF delta` table; `--native` adds the
//! kernel's own mmap as a third column. Without `-m`, buffers come from
//! the allocator named by `--alloc` (spf, jemalloc, mimalloc, system).
//! LTP's random number generator always returns 0; ours works, and
//! `--ltp-rng` brings back the degenerate one for comparison with the
//! figures published with the kernel series.

mod args;
mod bench;

use args::{Args, ModeArg};
use bench::{Mapping, Outcome};

#[global_allocator]
static GLOBAL: spf::SpfAlloc = spf::SpfAlloc::new();

fn report(name: &str, o: &Outcome, verbose: bool) {
    println!("{name}: {:.0} records/s", o.rate());
    println!(
        "real {:.2} s\nuser {:.2} s\nsys  {:.2} s",
        o.real, o.user, o.sys
    );
    let _ = verbose;
    print!("{}", o.stats);
    println!();
}

fn run_or_exit(a: &Args, mode: spf::Mode, mapping: Option<Mapping>) -> Outcome {
    match bench::run(a, mode, mapping) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ebizzy: {e}");
            std::process::exit(1);
        }
    }
}

fn main() {
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let cpus = if online > 0 { online as usize } else { 1 };
    let a = match args::parse(std::env::args().skip(1), cpus) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if a.verbose {
        eprintln!("ebizzy: {a:?}");
    }
    // The backend is chosen when the space starts; start it now to name it.
    let backend = match spf::init() {
        Ok(()) => spf::backend().map_or("none", |b| b.name()),
        Err(e) => {
            eprintln!("ebizzy: {e}");
            std::process::exit(1);
        }
    };
    if a.showcase {
        println!(
            "ebizzy with no flags: the speculative page fault series' comparison `ebizzy {}` ({} threads, {} KiB \
             granules, commit backend {backend}); pass any flag for LTP's defaults",
            args::SHOWCASE.join(" "),
            a.threads,
            a.granule >> 10
        );
    } else {
        println!("ebizzy: commit backend {backend}");
    }
    if a.no_malloc_mmap && a.alloc != args::AllocArg::System {
        eprintln!(
            "ebizzy: -M only changes glibc's malloc: it has no effect without --alloc system"
        );
    }
    let mapping = a.mmap.then_some(Mapping::Spf);
    let mut table = Vec::new();
    if matches!(a.mode, ModeArg::Classic | ModeArg::Both) {
        let o = run_or_exit(&a, spf::Mode::Classic, mapping);
        report("BASE (classic)", &o, a.verbose);
        table.push(("BASE", o.rate()));
    }
    if matches!(a.mode, ModeArg::Spf | ModeArg::Both) {
        let o = run_or_exit(&a, spf::Mode::Speculative, mapping);
        report("SPF (speculative)", &o, a.verbose);
        table.push(("SPF", o.rate()));
    }
    if a.native && a.mmap {
        let o = run_or_exit(&a, spf::Mode::Speculative, Some(Mapping::Native));
        report("native (kernel mmap)", &o, a.verbose);
        table.push(("native", o.rate()));
    }
    if table.len() > 1 {
        for (name, _) in &table {
            print!("{name:>12}");
        }
        if a.mode == ModeArg::Both {
            print!("{:>10}", "delta");
        }
        println!();
        for (_, rate) in &table {
            print!("{rate:>12.0}");
        }
        if a.mode == ModeArg::Both {
            print!("{:>9.1}%", (table[1].1 / table[0].1 - 1.0) * 100.0);
        }
        println!();
    }
}
