//! The fault handler must fit on std's alternate signal stack: 8 KiB on
//! x86-64, of which the kernel's signal frame takes `AT_MINSIGSTKSZ` (about
//! 3.4 KiB with AVX-512). This test runs faults on a painted alternate
//! stack and measures how much of it each fault path used.

mod common;

use common::serial;
use spf::{HandlerAllocGuard, Mode, Region, RegionOptions};
use std::alloc::System;

#[global_allocator]
static GLOBAL: HandlerAllocGuard<System> = HandlerAllocGuard(System);

/// What the handler's own frames may use beyond the kernel's signal frame.
/// Measured here: about 0.3 KiB in release and 1.6 KiB in debug builds.
const HANDLER_BUDGET: usize = 3 << 10;

/// Runs `f` with a painted alternate signal stack and returns the bytes of
/// it that were written.
fn altstack_bytes_used(f: impl FnOnce()) -> usize {
    const SIZE: usize = 64 << 10;
    let mut stack = vec![0xA5u8; SIZE];
    // SAFETY: a zeroed stack_t is valid to fill in; the new stack lives
    // until the old one is restored below, before `stack` is dropped.
    unsafe {
        let mut ss: libc::stack_t = std::mem::zeroed();
        ss.ss_sp = stack.as_mut_ptr().cast();
        ss.ss_size = SIZE;
        let mut old: libc::stack_t = std::mem::zeroed();
        assert_eq!(libc::sigaltstack(&ss, &mut old), 0);
        f();
        assert_eq!(libc::sigaltstack(&old, std::ptr::null_mut()), 0);
    }
    SIZE - stack.iter().take_while(|&&b| b == 0xA5).count()
}

fn kernel_frame() -> usize {
    // SAFETY: getauxval has no preconditions; 0 means "not provided".
    let n = unsafe { libc::getauxval(libc::AT_MINSIGSTKSZ) } as usize;
    if n == 0 {
        2048
    } else {
        n
    }
}

#[test]
fn every_fault_path_fits_the_alternate_stack() {
    let _s = serial();
    spf::init().unwrap();
    let limit = kernel_frame() + HANDLER_BUDGET;
    let cases: [(&str, Mode, RegionOptions); 4] = [
        (
            "speculative",
            Mode::Speculative,
            RegionOptions::default().granule(4096),
        ),
        (
            "classic",
            Mode::Classic,
            RegionOptions::default().granule(4096),
        ),
        (
            "commit-ahead + populate",
            Mode::Speculative,
            RegionOptions::default()
                .granule(64 << 10)
                .commit_ahead(1 << 20)
                .populate(true),
        ),
        (
            "not speculative",
            Mode::Speculative,
            RegionOptions::default().speculative(false),
        ),
    ];
    for (name, mode, opts) in cases {
        let r = Region::reserve(8 << 20, opts).unwrap();
        spf::set_mode(mode);
        let before = spf::stats();
        // SAFETY: inside the live region.
        let used = altstack_bytes_used(|| unsafe { r.as_ptr().add(64 << 10).write_volatile(1) });
        spf::set_mode(Mode::Speculative);
        assert!(
            spf::stats().since(&before).faults >= 1,
            "{name}: no fault was taken"
        );
        eprintln!(
            "{name}: {used} bytes of alternate stack (kernel frame {})",
            kernel_frame()
        );
        assert!(
            used <= limit,
            "{name}: the handler used {used} bytes, over {limit}"
        );
    }
}
