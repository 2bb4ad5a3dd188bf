//! Instructions per small alloc+free pair, for callgrind: runs `N` pairs of
//! `SIZE`-byte blocks through the named allocator (the same `pairs`
//! workload as the benchmarks, called through `&dyn GlobalAlloc`).
//!
//! ```text
//! scripts/pair-instructions.sh [SIZE]
//! ```
//!
//! The script runs this under `valgrind --tool=callgrind` with two values
//! of `N` and divides the difference in instructions by the difference in
//! pairs, so start-up and warm-up cancel out.

#[path = "../benches/workloads/mod.rs"]
mod workloads;

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: pair_count ALLOCATOR SIZE N";
    let name = args.next().expect(usage);
    let size: usize = args.next().and_then(|s| s.parse().ok()).expect(usage);
    let n: u64 = args.next().and_then(|s| s.parse().ok()).expect(usage);
    let s = workloads::subject_named(&name).expect("unknown allocator");
    s.run(|a| workloads::pairs(a, size, n));
}
