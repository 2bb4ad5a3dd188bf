//! What must stay true under every commit backend (`SPF_BACKEND`), each
//! scenario played in a child process started with the backend it checks.
//! A backend this machine refuses is reported by name on standard error
//! (and fails the test where `SPF_REQUIRE_BACKENDS` names it, as CI does),
//! never skipped silently.
//!
//! - scattered commits: 100,000 commits of every other page of one lazy
//!   region succeed under `uffd` and `guard`, and `/proc/self/maps` stays
//!   small (under `mprotect` the kernel's `vm.max_map_count` ends it, see
//!   `foreign_faults.rs`);
//! - a purge of committed lazy memory: the pages read back as zero (under
//!   `uffd` they are missing again and the next touch refills them);
//! - `SpfAlloc`'s default (eager) blocks, reused after a purge, take
//!   `read(2)` without `EFAULT` under every backend;
//! - a `SIGBUS` that is not ours (a file mapping read past its end) reaches
//!   the previous handler, or kills by `SIGBUS` without a word from spf;
//! - 2 MiB granules get transparent huge pages (`AnonHugePages`) under
//!   every backend;
//! - fork: a child and a grandchild touch lazy regions (their faults reach
//!   spf: the child registered its own userfaultfd), allocate and start
//!   threads;
//! - `UFFDIO_COPY` failing (fault injection): once with `ENOMEM` or
//!   `EAGAIN` the fault falls back to the classic path and every byte
//!   lands; always, and the process ends with one message naming the call.

mod common;

use common::{child_scenario, fill, run_child_with_env, signal_of, verify};
use spf::testing::inject::{self, Call};
use spf::{Region, RegionOptions, SpfAlloc};
use std::alloc::{GlobalAlloc, Layout};
use std::process::Output;

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

const BACKENDS: [&str; 3] = ["uffd", "guard", "mprotect"];
/// A child's exit code for "this backend cannot start here".
const REFUSED: i32 = 77;

/// Runs `scenario` in a child under `backend`; `None` if the machine
/// refuses the backend (said loudly; a failure where it is required).
fn under(backend: &str, scenario: &str) -> Option<Output> {
    let out = run_child_with_env(
        "child_entry",
        scenario,
        &[("SPF_BACKEND", backend), ("SPF_TEST_BACKEND", backend)],
    );
    if out.status.code() == Some(REFUSED) {
        let why = String::from_utf8_lossy(&out.stdout);
        eprintln!("backends: {backend} NOT TESTED, this machine refuses it: {why}");
        let required = std::env::var("SPF_REQUIRE_BACKENDS").unwrap_or_default();
        assert!(
            !required.split(',').any(|b| b == backend),
            "SPF_REQUIRE_BACKENDS names {backend}, which cannot run here: {why}"
        );
        return None;
    }
    Some(out)
}

fn assert_done(backend: &str, out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("scenario done"),
        "{backend}: {:?}\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

#[test]
#[ignore = "child-process entry point, run by the other tests of this file"]
fn child_entry() {
    let Some(scenario) = child_scenario() else {
        return;
    };
    let wanted = std::env::var("SPF_TEST_BACKEND").unwrap();
    if let Err(e) = spf::init() {
        println!("{e}");
        std::process::exit(REFUSED);
    }
    let backend = spf::backend().unwrap();
    assert_eq!(backend.name(), wanted, "SPF_BACKEND chose the backend");
    match scenario.as_str() {
        "scattered" => scattered_commits(),
        "purge" => purge_and_touch_again(),
        "eager-reuse" => eager_blocks_reused_after_purge_take_read(),
        "sigbus-chained" => foreign_sigbus(true),
        "sigbus-default" => foreign_sigbus(false),
        "fork" => fork_children(),
        "copy-once-enomem" => copy_fails_once(libc::ENOMEM, true),
        "copy-once-eagain" => copy_fails_once(libc::EAGAIN, false),
        "copy-always" => copy_always_fails(),
        "huge" => huge_granules_get_huge_pages(),
        other => panic!("unknown scenario {other}"),
    }
    println!("scenario done");
}

fn lazy(len: usize, granule: usize) -> Region {
    Region::reserve(len, RegionOptions::default().granule(granule)).expect("reserve")
}

fn maps_lines() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

/// Every other page of 800 MiB, in a scattered order: 100,000 commits.
fn scattered_commits() {
    const PAGES: usize = 200_000;
    let r = lazy(PAGES * 4096, 4096);
    let before = maps_lines();
    let stats = spf::stats();
    let mut order: Vec<usize> = (0..PAGES / 2).map(|i| 2 * i).collect();
    // A fixed permutation (multiplicative hash), so runs are repeatable.
    order.sort_by_key(|&p| p.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    for &p in &order {
        // SAFETY: inside the live region.
        unsafe { r.as_ptr().add(p * 4096 + 8).write(p as u8 | 1) };
    }
    for &p in &order {
        // SAFETY: as above, committed now.
        assert_eq!(unsafe { r.as_ptr().add(p * 4096 + 8).read() }, p as u8 | 1);
    }
    let after = maps_lines();
    let st = spf::stats().since(&stats);
    println!("maps lines {before} -> {after}, faults {}", st.faults);
    assert_eq!(r.committed(), PAGES / 2 * 4096);
    assert!(st.faults >= (PAGES / 2) as u64, "{st:?}");
    assert!(
        after < before + 100,
        "scattered commits split the kernel's mappings: {before} -> {after} lines"
    );
}

/// Purge keeps memory committed and makes it read zero; a touch after it
/// works (under `uffd`, by a refill) and the region stays consistent.
fn purge_and_touch_again() {
    let r = lazy(4 << 20, 64 << 10);
    // SAFETY: the region is ours.
    unsafe { fill(r.as_ptr(), r.len(), 3) };
    r.purge(0..r.len()).unwrap();
    assert_eq!(r.committed(), r.len(), "purge keeps the memory committed");
    let before = spf::stats();
    // SAFETY: as above.
    let zeros = unsafe { std::slice::from_raw_parts(r.as_ptr(), r.len()) };
    assert!(zeros.iter().all(|&b| b == 0), "purged memory reads zero");
    let st = spf::stats().since(&before);
    if spf::backend() == Some(spf::Backend::Uffd) {
        assert!(
            st.faults >= 64 && st.uffd_copy_calls >= 64,
            "every purged granule was refilled: {st:?}"
        );
    }
    // SAFETY: as above.
    unsafe { fill(r.as_ptr(), r.len(), 4) };
    // SAFETY: as above.
    assert_eq!(unsafe { verify(r.as_ptr(), r.len(), 4) }, None);
    assert_eq!(spf::stats().fatal, 0);
    spf::check_invariants().unwrap();
}

/// `read(2)` into `[p, p + len)` from a pipe fed by another thread.
fn read_into(p: *mut u8, len: usize, seed: u8) {
    let mut fds = [0; 2];
    // SAFETY: room for two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let writer = std::thread::spawn(move || {
        let chunk = vec![seed; 64 << 10];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            // SAFETY: `chunk` is readable for `n` bytes.
            let w = unsafe { libc::write(fds[1], chunk.as_ptr().cast(), n) };
            assert!(w > 0);
            left -= w as usize;
        }
        // SAFETY: our descriptor.
        unsafe { libc::close(fds[1]) };
    });
    let mut done = 0;
    while done < len {
        // SAFETY: the caller's block, writable for `len` bytes.
        let n = unsafe { libc::read(fds[0], p.add(done).cast(), len - done) };
        assert!(
            n > 0,
            "read into a reused block failed: {}",
            std::io::Error::last_os_error()
        );
        done += n as usize;
    }
    writer.join().unwrap();
    // SAFETY: our descriptor.
    unsafe { libc::close(fds[0]) };
    // SAFETY: the caller's block, just filled.
    let bytes = unsafe { std::slice::from_raw_parts(p, len) };
    assert!(bytes.iter().all(|&b| b == seed));
}

/// Blocks from `SpfAlloc` in its default mode, freed, purged (their pages
/// dropped), and handed out again: system calls write into them.
fn eager_blocks_reused_after_purge_take_read() {
    let sizes = [64usize << 10, 200 << 10, 1 << 20, 8 << 20];
    let alloc = SpfAlloc::new();
    let layouts: Vec<Layout> = sizes
        .iter()
        .map(|&s| Layout::from_size_align(s, 64).unwrap())
        .collect();
    for round in 0..3u8 {
        let blocks: Vec<*mut u8> = layouts
            .iter()
            // SAFETY: valid, non-zero layouts.
            .map(|&l| unsafe { alloc.alloc(l) })
            .collect();
        for (&p, &l) in blocks.iter().zip(&layouts) {
            assert!(!p.is_null());
            read_into(p, l.size(), round + 1);
        }
        for (&p, &l) in blocks.iter().zip(&layouts) {
            // SAFETY: allocated above with `l`.
            unsafe { alloc.dealloc(p, l) };
        }
        // Drop every free page: the next round reuses purged memory.
        spf::purge();
    }
    assert_eq!(spf::stats().fatal, 0);
}

static BUS_SEEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

extern "C" fn on_bus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel's siginfo for a SIGBUS.
    let addr = unsafe { (*info).si_addr() } as usize;
    BUS_SEEN.store(addr, std::sync::atomic::Ordering::SeqCst);
    let msg = b"previous SIGBUS handler ran\n";
    // SAFETY: write and _exit are async-signal-safe.
    unsafe {
        libc::write(1, msg.as_ptr().cast(), msg.len());
        libc::_exit(42);
    }
}

/// A read past the end of a file mapping raises a `SIGBUS` that is none
/// of spf's business.
fn foreign_sigbus(with_handler: bool) {
    if with_handler {
        // SAFETY: a valid SA_SIGINFO action for SIGBUS.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_bus as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            assert_eq!(libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut()), 0);
        }
        // spf re-asserts itself over a handler installed after it (when
        // regions are made, at most every 10 ms), chaining to that handler.
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(lazy(1 << 20, 64 << 10));
    }
    let path = std::env::temp_dir().join(format!("spf-sigbus-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.set_len(4096).unwrap();
    // SAFETY: a shared read mapping of our own file, two pages long.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
        )
    } as *const u8;
    assert_ne!(p as *mut libc::c_void, libc::MAP_FAILED);
    std::fs::remove_file(&path).unwrap();
    println!(
        "reading past the end of the file at {:p}",
        p.wrapping_add(4096)
    );
    // SAFETY: the second page lies past the end of the file: SIGBUS.
    let v = unsafe { std::ptr::read_volatile(p.add(4096)) };
    println!("no SIGBUS? read {v}");
}

/// A child and a grandchild touch lazy regions, allocate and start threads.
fn fork_children() {
    let r = lazy(8 << 20, 64 << 10);
    // SAFETY: the region is ours; the first half is committed here.
    unsafe { fill(r.as_ptr(), 4 << 20, 1) };
    let generation = |depth: u32| -> i32 {
        // Inherited memory keeps its bytes; the rest faults in this process.
        // SAFETY: inside the live region (inherited by the fork).
        if unsafe { verify(r.as_ptr(), 4 << 20, 1) }.is_some() {
            return 10;
        }
        // SAFETY: as above.
        unsafe { fill(r.as_ptr().add(4 << 20), 4 << 20, 2 + depth as usize) };
        // A region of this process's own: every granule faults here.
        let own = lazy(4 << 20, 64 << 10);
        let before = spf::stats();
        // SAFETY: the region is ours.
        unsafe { fill(own.as_ptr(), own.len(), depth as usize) };
        let faults = spf::stats().since(&before).faults;
        let fresh = lazy(4 << 20, 64 << 10);
        let handles: Vec<_> = (0..3)
            .map(|t| {
                let p = common::SendPtr(fresh.as_ptr());
                std::thread::spawn(move || {
                    let v: Vec<u64> = (0..10_000).collect();
                    // SAFETY: each thread its own MiB of the region.
                    unsafe { fill(p.get().add(t << 20), 1 << 20, t) };
                    v.iter().sum::<u64>()
                })
            })
            .collect();
        for h in handles {
            if h.join().unwrap() != 49_995_000 {
                return 11;
            }
        }
        for t in 0..3 {
            // SAFETY: as filled by the threads.
            if unsafe { verify(fresh.as_ptr().add(t << 20), 1 << 20, t) }.is_some() {
                return 12;
            }
        }
        if spf::backend() == Some(spf::Backend::Uffd) && faults < 64 {
            // The child's touches must reach spf: it registered again.
            return 13;
        }
        if spf::check_invariants().is_err() {
            return 14;
        }
        0
    };
    // SAFETY: fork in a child process whose test harness runs one test.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let mut code = generation(1);
        if code == 0 {
            // SAFETY: as above, from the child.
            let grandchild = unsafe { libc::fork() };
            if grandchild == 0 {
                // SAFETY: _exit skips the parent's atexit work.
                unsafe { libc::_exit(generation(2)) };
            }
            code = match wait(grandchild) {
                0 => 0,
                failed => 20 + failed,
            };
        }
        // SAFETY: as above.
        unsafe { libc::_exit(code) };
    }
    assert_eq!(wait(child), 0, "child or grandchild failed");
    // SAFETY: the parent's bytes are untouched by the children.
    assert_eq!(unsafe { verify(r.as_ptr(), 4 << 20, 1) }, None);
}

/// The exit code of `pid` (or 100 + the signal that ended it).
fn wait(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        return 0; // already reaped
    }
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        100 + libc::WTERMSIG(status)
    }
}

/// One failed `UFFDIO_COPY`: `ENOMEM` sends the fault to the classic path;
/// an `EAGAIN` that made no progress is retried in place.
/// `AnonHugePages` of the mapping that holds `addr`, in KiB, from
/// `/proc/self/smaps`.
fn anon_huge_kib(addr: usize) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((lo, hi)) = range.split_once('-') {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = (lo..hi).contains(&addr);
                    continue;
                }
            }
        }
        if inside {
            if let Some(kib) = line.strip_prefix("AnonHugePages:") {
                return kib.trim().trim_end_matches(" kB").trim().parse().unwrap();
            }
        }
    }
    0
}

/// 2 MiB granules keep transparent huge pages under every backend (they
/// live in the protected zone: `UFFDIO_COPY` never makes a huge page).
fn huge_granules_get_huge_pages() {
    let r = lazy(64 << 20, 2 << 20);
    for off in (0..r.len()).step_by(4096) {
        // SAFETY: inside the live region.
        unsafe { r.as_ptr().add(off).write(1) };
    }
    let kib = anon_huge_kib(r.as_ptr() as usize);
    println!("AnonHugePages {kib} kB of 65536");
    assert!(
        kib >= 2048,
        "no huge page in a 2 MiB-granule region: {kib} kB"
    );
}

fn copy_fails_once(errno: i32, falls_back: bool) {
    let r = lazy(4 << 20, 64 << 10);
    let before = spf::stats();
    inject::fail(Call::UffdCopy, errno, 0, 1);
    // SAFETY: the region is ours; the first touch faults.
    unsafe { fill(r.as_ptr(), r.len(), 5) };
    inject::clear(Call::UffdCopy);
    // SAFETY: as above.
    assert_eq!(unsafe { verify(r.as_ptr(), r.len(), 5) }, None);
    let st = spf::stats().since(&before);
    assert_eq!(inject::injected(Call::UffdCopy), 1);
    assert_eq!(st.classic >= 1, falls_back, "{st:?}");
    assert_eq!(st.fatal, 0);
    assert_eq!(r.committed(), r.len());
    spf::check_invariants().unwrap();
}

fn copy_always_fails() {
    let r = lazy(1 << 20, 64 << 10);
    inject::fail(Call::UffdCopy, libc::ENOMEM, 0, u64::MAX);
    println!("touching");
    // SAFETY: the region is ours; the touch faults and cannot commit.
    unsafe { r.as_ptr().write(1) };
    println!("the touch survived");
}

#[test]
fn scattered_commits_leave_the_kernel_mappings_alone() {
    for backend in ["uffd", "guard"] {
        if let Some(out) = under(backend, "scattered") {
            let stdout = assert_done(backend, &out);
            eprintln!("{backend}: {stdout}");
        }
    }
}

#[test]
fn purged_lazy_memory_reads_zero_and_refills() {
    for backend in BACKENDS {
        if let Some(out) = under(backend, "purge") {
            assert_done(backend, &out);
        }
    }
}

#[test]
fn default_blocks_reused_after_a_purge_take_system_calls() {
    for backend in BACKENDS {
        if let Some(out) = under(backend, "eager-reuse") {
            assert_done(backend, &out);
        }
    }
}

#[test]
fn a_foreign_sigbus_reaches_the_previous_handler() {
    for backend in BACKENDS {
        let Some(out) = under(backend, "sigbus-chained") else {
            continue;
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(42), "{backend}: {stdout}\n{stderr}");
        assert!(stdout.contains("previous SIGBUS handler ran"), "{stdout}");
        assert!(!stderr.contains("spf:"), "{backend}: spf spoke: {stderr}");

        let out = under(backend, "sigbus-default").unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(signal_of(&out), Some(libc::SIGBUS), "{backend}: {stderr}");
        assert!(!stderr.contains("spf:"), "{backend}: spf spoke: {stderr}");
    }
}

#[test]
fn fork_children_and_grandchildren_fault_allocate_and_spawn() {
    for backend in BACKENDS {
        if let Some(out) = under(backend, "fork") {
            assert_done(backend, &out);
        }
    }
}

#[test]
fn huge_granules_keep_transparent_huge_pages() {
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if thp.contains("[never]") || thp.is_empty() {
        eprintln!("backends: huge pages NOT TESTED: transparent huge pages are off here ({thp})");
        return;
    }
    for backend in BACKENDS {
        if let Some(out) = under(backend, "huge") {
            let stdout = assert_done(backend, &out);
            eprintln!(
                "{backend}: {}",
                stdout
                    .lines()
                    .find(|l| l.contains("AnonHuge"))
                    .unwrap_or("")
            );
        }
    }
}

#[test]
fn a_failed_uffd_copy_falls_back_or_ends_with_one_message() {
    let Some(out) = under("uffd", "copy-once-enomem") else {
        return;
    };
    assert_done("uffd", &out);
    assert_done("uffd", &under("uffd", "copy-once-eagain").unwrap());
    let out = under("uffd", "copy-always").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(signal_of(&out), Some(libc::SIGSEGV), "{stdout}\n{stderr}");
    assert!(!stdout.contains("survived"), "{stdout}");
    assert_eq!(
        stderr.matches("cannot commit in region").count(),
        1,
        "one message, no loop: {stderr}"
    );
    assert!(
        stderr.contains("UFFDIO_COPY) failed with ENOMEM"),
        "{stderr}"
    );
}
