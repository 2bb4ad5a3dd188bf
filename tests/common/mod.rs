//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses its own subset

pub mod alloc_suite;
pub mod churn;
pub mod large;

use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Counters and the fault mode are process-wide: tests that read them or
/// change the mode take this lock so they do not see each other's faults.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The environment variable that tells a re-executed test binary which
/// scenario to play.
pub const CHILD_VAR: &str = "SPF_TEST_CHILD";

/// Re-runs this test binary as a child process that executes only the test
/// named `entry`, with `SPF_TEST_CHILD=scenario`.
pub fn run_child(entry: &str, scenario: &str) -> Output {
    run_child_with_env(entry, scenario, &[])
}

/// `run_child` with extra environment variables.
pub fn run_child_with_env(entry: &str, scenario: &str, env: &[(&str, &str)]) -> Output {
    child_command(entry, scenario, env).output().unwrap()
}

/// `run_child_with_env`, but a child still running after `deadline` is
/// killed: the output so far, and whether it had to be killed (a hang).
pub fn run_child_until(
    entry: &str,
    scenario: &str,
    env: &[(&str, &str)],
    deadline: Duration,
) -> (Output, bool) {
    let mut child = child_command(entry, scenario, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut hung = false;
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > deadline {
            hung = true;
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (child.wait_with_output().unwrap(), hung)
}

/// Runs the test `name` again in a process of its own, whose allocator
/// holds only what that test frees (no block or page another test left
/// cached or pooled, none taken by another test meanwhile), and checks that
/// it passed within 60 s: true here, in the test's first process; false in
/// that child, which then plays the test. The children run one at a time
/// (`serial`).
pub fn ran_alone(name: &str) -> bool {
    if child_scenario().is_some() {
        return false;
    }
    let _serial = serial();
    let (out, hung) = run_child_until(name, "alone", &[], Duration::from_secs(60));
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    eprintln!("{text}");
    assert!(!hung, "the child hung (a panic under an allocator lock?)");
    assert!(out.status.success(), "the child failed: {}", out.status);
    // A child that ran no test (a misspelt name) also succeeds.
    assert!(
        text.contains(&format!("test {name} ... ok")),
        "the child did not run {name}"
    );
    true
}

fn child_command(entry: &str, scenario: &str, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            entry,
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_VAR, scenario)
        .envs(env.iter().copied());
    command
}

/// The scenario this process should play, if it is a child.
pub fn child_scenario() -> Option<String> {
    std::env::var(CHILD_VAR).ok()
}

/// A byte that depends on where it is and who wrote it.
pub fn pattern(offset: usize, seed: usize) -> u8 {
    (offset.wrapping_mul(31) ^ seed.wrapping_mul(131) ^ (offset >> 12)) as u8
}

/// Writes the pattern into `[ptr, ptr + len)` one word per `stride` bytes
/// and the whole of every `check_every`-th page.
///
/// # Safety
/// The range must be writable memory owned by the caller.
pub unsafe fn fill(ptr: *mut u8, len: usize, seed: usize) {
    for off in 0..len {
        // SAFETY: inside the caller's range.
        unsafe { ptr.add(off).write(pattern(off, seed)) };
    }
}

/// Checks the pattern `fill` wrote; returns the first bad offset.
///
/// # Safety
/// The range must be readable memory owned by the caller.
pub unsafe fn verify(ptr: *const u8, len: usize, seed: usize) -> Option<usize> {
    // SAFETY: inside the caller's range.
    (0..len).find(|&off| unsafe { ptr.add(off).read() } != pattern(off, seed))
}

/// Raw pointers that tests hand to threads.
#[derive(Clone, Copy)]
pub struct SendPtr(pub *mut u8);
// SAFETY: the tests that use it give each thread a disjoint range or only
// read shared data after it is written and joined.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so closures capture the whole `SendPtr`).
    pub fn get(self) -> *mut u8 {
        self.0
    }
}

/// The signal that ended a child, if any.
pub fn signal_of(out: &Output) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    out.status.signal()
}

/// The pattern of the soak test, cheap to write and check in debug builds.
pub mod stamped;

/// The address a child printed after `label` (e.g. `"region at "`), as the
/// text it printed and as a number; panics with the whole output if the
/// child printed none.
pub fn printed_addr(output: &str, label: &str) -> (String, usize) {
    let text = output
        .split(label)
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap_or_else(|| panic!("the child printed no {label:?}: {output}"))
        .to_owned();
    let addr = usize::from_str_radix(text.trim_start_matches("0x"), 16)
        .unwrap_or_else(|_| panic!("not an address after {label:?}: {text}"));
    (text, addr)
}
