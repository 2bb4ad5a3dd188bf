//! `fork()` from a multi-threaded parent while other threads allocate: the
//! child allocates (small, medium and large blocks, and a thread of its
//! own) and exits cleanly.

use spf::SpfAlloc;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

fn child_work() -> bool {
    let mut m: HashMap<u32, Vec<u8>> = HashMap::new();
    for i in 0..2_000u32 {
        m.insert(i, vec![i as u8; (i as usize * 37) % 70_000]);
    }
    let big = vec![3u8; 8 << 20];
    let t = std::thread::spawn(|| (0..1000).map(|i| vec![1u8; i].len()).sum::<usize>());
    let sum = t.join().map(|s| s == 499_500).unwrap_or(false);
    sum && big[4 << 20] == 3 && m.iter().all(|(k, v)| v.iter().all(|&x| x == *k as u8))
}

#[test]
fn the_child_of_a_busy_parent_can_allocate() {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..4 {
            let stop = &stop;
            s.spawn(move || {
                let mut keep = Vec::new();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    keep.push(vec![t as u8; (i * 131) % 300_000 + 1]);
                    if keep.len() > 64 {
                        keep.drain(..32);
                    }
                    i += 1;
                }
            });
        }
        for _ in 0..20 {
            // SAFETY: the child runs only allocator-using Rust code and _exit.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                let code = if child_work() { 0 } else { 1 };
                // SAFETY: ends the child without running the parent's destructors.
                unsafe { libc::_exit(code) };
            }
            let mut status = 0;
            // SAFETY: our child.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
            assert_eq!(libc::WEXITSTATUS(status), 0, "child saw bad data");
        }
        stop.store(true, Ordering::Relaxed);
    });
}
