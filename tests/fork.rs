//! `fork()` while regions are live and other threads fault: the child reads
//! the parent's committed data and faults in new granules of its own.

mod common;

use common::{fill, verify, SendPtr};
use spf::{HandlerAllocGuard, Region, RegionOptions};
use std::alloc::System;
use std::sync::atomic::{AtomicBool, Ordering};

#[global_allocator]
static GLOBAL: HandlerAllocGuard<System> = HandlerAllocGuard(System);

#[test]
fn the_child_reads_parent_data_and_faults_new_granules() {
    let region = Region::reserve(8 << 20, RegionOptions::default().granule(16 << 10)).unwrap();
    let half = region.len() / 2;
    // SAFETY: our region; the first half is committed before the fork.
    unsafe { fill(region.as_ptr(), half, 42) };
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..4 {
            let stop = &stop;
            s.spawn(move || {
                let r = Region::reserve(4 << 20, RegionOptions::default().granule(4096)).unwrap();
                let mut round = 0;
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: this thread's region.
                    unsafe { fill(r.as_ptr(), r.len(), t + round) };
                    r.decommit(0..r.len()).unwrap();
                    round += 1;
                }
            });
        }
        let base = SendPtr(region.as_ptr());
        for _ in 0..3 {
            // SAFETY: fork in a process whose other threads are ours; the
            // child only touches memory and calls spf, then _exit.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                // SAFETY: the parent's data is in the child's copy.
                let parent_ok = unsafe { verify(base.get(), half, 42) }.is_none();
                // SAFETY: the second half was never touched: the child's
                // faults commit it in the child only.
                unsafe { fill(base.get().add(half), half, 7) };
                // SAFETY: as above.
                let child_ok = unsafe { verify(base.get().add(half), half, 7) }.is_none();
                let code = if parent_ok && child_ok { 0 } else { 1 };
                // SAFETY: _exit skips atexit handlers and destructors that
                // belong to the parent's threads.
                unsafe { libc::_exit(code) };
            }
            let mut status = 0;
            // SAFETY: pid is our child.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
            assert_eq!(libc::WEXITSTATUS(status), 0, "child saw wrong data");
        }
        stop.store(true, Ordering::Relaxed);
    });
    // The child's commits stayed in the child.
    assert!(!region.is_committed(half));
    // SAFETY: our region.
    assert_eq!(unsafe { verify(region.as_ptr(), half, 42) }, None);
}
