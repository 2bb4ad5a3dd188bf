//! Choosing a commit backend at start: `SPF_BACKEND=auto` takes the first
//! that works; a backend that is asked for and cannot run is an error that
//! says why and what to set instead. The refusals are made with the
//! `fault-injection` hooks (`userfaultfd()` refused with `EPERM` as under a
//! container's seccomp filter, `UFFDIO_REGISTER` failing, guard markers
//! unknown to the kernel, the two-zone reservation refused as under
//! `ulimit -v`), each in a child process whose spf has not started yet.
//!
//! The global allocator here is the system's, so spf starts only when the
//! child asks it to.

mod common;

use common::{child_scenario, run_child_with_env};
use spf::testing::inject::{self, Call};
use spf::{Backend, Region, RegionOptions};
use std::alloc::System;

#[global_allocator]
static GLOBAL: System = System;

#[test]
#[ignore = "child-process entry point, run by the other tests of this file"]
fn child_entry() {
    let Some(scenario) = child_scenario() else {
        return;
    };
    match scenario.as_str() {
        "uffd-refused" => inject::fail(Call::Userfaultfd, libc::EPERM, 0, 1),
        "register-fails" => inject::fail(Call::UffdRegister, libc::ENOMEM, 0, 1),
        "guard-unknown" => inject::fail(Call::Madvise, libc::EINVAL, 0, 1),
        "two-zones-too-big" => inject::fail(Call::Mmap, libc::ENOMEM, 0, 1),
        "both-refused" => {
            inject::fail(Call::Userfaultfd, libc::EPERM, 0, 1);
            inject::fail(Call::Madvise, libc::EINVAL, 0, 1);
        }
        other => panic!("unknown scenario {other}"),
    }
    match spf::init() {
        Ok(()) => {
            let backend = spf::backend().expect("started");
            println!("started: {backend}");
            // The backend works: a lazy region commits on touch.
            let r = Region::reserve(1 << 20, RegionOptions::default()).unwrap();
            // SAFETY: inside the live region.
            unsafe { r.as_ptr().add(70_000).write(9) };
            assert_eq!(r.committed(), 64 << 10);
            assert_eq!(spf::stats().backend, backend);
            spf::check_invariants().unwrap();
        }
        Err(e) => println!("refused: {e}"),
    }
    println!("scenario done");
}

fn run(scenario: &str, backend: &str) -> String {
    let out = run_child_with_env("child_entry", scenario, &[("SPF_BACKEND", backend)]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("scenario done"), "{stdout}\n{stderr}");
    stdout
}

#[test]
fn a_refused_userfaultfd_is_an_error_naming_the_cause_when_asked_for() {
    let out = run("uffd-refused", "uffd");
    assert!(
        out.contains(
            "refused: spf: the uffd commit backend cannot run here: userfaultfd() was refused"
        ) && out.contains("EPERM")
            && out.contains("SPF_BACKEND=auto"),
        "{out}"
    );
}

#[test]
fn auto_falls_back_past_a_refused_userfaultfd() {
    let out = run("uffd-refused", "auto");
    assert!(out.contains("started: guard"), "{out}");
    let out = run("register-fails", "auto");
    assert!(out.contains("started: guard"), "{out}");
    let out = run("both-refused", "auto");
    assert!(out.contains("started: mprotect"), "{out}");
    // Address space for two zones refused (ulimit -v): one zone, mprotect.
    let out = run("two-zones-too-big", "auto");
    assert!(out.contains("started: mprotect"), "{out}");
}

#[test]
fn a_failed_registration_is_an_error_when_uffd_is_asked_for() {
    let out = run("register-fails", "uffd");
    assert!(
        out.contains("refused: spf: the uffd commit backend cannot run here: UFFDIO_REGISTER")
            && out.contains("ENOMEM"),
        "{out}"
    );
}

#[test]
fn guard_markers_unknown_to_the_kernel_name_the_version_needed() {
    let out = run("guard-unknown", "guard");
    assert!(
        out.contains("refused: spf: the guard commit backend cannot run here")
            && out.contains("Linux 6.13"),
        "{out}"
    );
    // mprotect needs nothing, so it always starts.
    let out = run("both-refused", "mprotect");
    assert!(out.contains("started: mprotect"), "{out}");
    assert_eq!(Backend::default(), Backend::Mprotect);
}
