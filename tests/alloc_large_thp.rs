//! Eager large blocks of 2 MiB or more are backed by transparent huge
//! pages by default (2 MiB-aligned, advised `MADV_HUGEPAGE`), not with
//! `SPF_THP=off`, and the advice leaves with the block: a range spf-core
//! gets back must not make a later segment fault in 2 MiB at a time. The
//! checks read `/proc/self/smaps` (`VmFlags` `hg`, `AnonHugePages`). On a
//! kernel without THP (or with it set to `never`) they say loudly that they
//! did not run, and fail under CI.

mod common;

use common::{child_scenario, run_child_with_env};
use spf::SpfAlloc;
use std::alloc::{alloc, dealloc, Layout};
use std::sync::Mutex;

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

static SERIAL: Mutex<()> = Mutex::new(());

const MIB: usize = 1 << 20;
const HUGE: usize = 2 * MIB;

/// The bracketed word of a THP setting file, if the kernel has THP.
fn thp_setting(file: &str) -> Option<String> {
    let text =
        std::fs::read_to_string(format!("/sys/kernel/mm/transparent_hugepage/{file}")).ok()?;
    let start = text.find('[')? + 1;
    let end = text[start..].find(']')? + start;
    Some(text[start..end].to_owned())
}

/// False (after saying so loudly; a failure under CI) when this kernel
/// gives no transparent huge pages, so the checks cannot run.
fn thp_available() -> bool {
    match thp_setting("enabled") {
        Some(mode) if mode != "never" => true,
        found => {
            let why = match found {
                Some(_) => "transparent huge pages are set to `never` on this machine".to_owned(),
                None => "this kernel has no transparent huge pages".to_owned(),
            };
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(!ci, "{why}; CI (CI=true) requires this test to run");
            eprintln!(
                "\n!!!!!!!!\n!!! NOT RUN: {why}.\n!!! This check did not run. CI (CI=true) \
                 fails instead.\n!!!!!!!!\n"
            );
            false
        }
    }
}

/// What `/proc/self/smaps` says of the mappings overlapping
/// `[start, start + len)`: whether any carries `VmFlags` `hg`
/// (`MADV_HUGEPAGE`), and their `AnonHugePages` in bytes.
fn smaps_of(start: usize, len: usize) -> (bool, usize) {
    let text = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let (mut inside, mut advised, mut huge) = (false, false, 0);
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                inside = a < start + len && start < b;
                continue;
            }
        }
        if !inside {
            continue;
        }
        if let Some(kb) = line.strip_prefix("AnonHugePages:") {
            let kb: usize = kb.trim().trim_end_matches("kB").trim().parse().unwrap();
            huge += kb << 10;
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            advised |= flags.split_whitespace().any(|f| f == "hg");
        }
    }
    (advised, huge)
}

/// Allocates an 8 MiB block, writes every page, and returns what smaps
/// says of it (the block stays allocated).
fn touched_block() -> (usize, bool, usize) {
    let layout = Layout::from_size_align(8 * MIB, 8).unwrap();
    // SAFETY: a non-zero size.
    let p = unsafe { alloc(layout) };
    assert!(!p.is_null());
    for off in (0..layout.size()).step_by(4096) {
        // SAFETY: inside the block.
        unsafe { p.add(off).write_volatile(off as u8 | 1) };
    }
    let (advised, huge) = smaps_of(p as usize, layout.size());
    (p as usize, advised, huge)
}

#[test]
fn child_entry() {
    let Some(scenario) = child_scenario() else {
        return;
    };
    match scenario.as_str() {
        "touch_8mib" => {
            let (p, advised, huge) = touched_block();
            println!("RESULT {p:#x} {advised} {huge}");
        }
        other => panic!("unknown scenario {other}"),
    }
}

/// Runs `touched_block` in a child with `env`: (address, advised, huge bytes).
fn touched_block_in_child(env: &[(&str, &str)]) -> (usize, bool, usize) {
    let out = run_child_with_env("child_entry", "touch_8mib", env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no result from the child: {stdout}"));
    let mut words = line.split_whitespace();
    let p = usize::from_str_radix(words.next().unwrap().trim_start_matches("0x"), 16).unwrap();
    let advised = words.next().unwrap().parse().unwrap();
    let huge = words.next().unwrap().parse().unwrap();
    (p, advised, huge)
}

#[test]
fn a_large_block_gets_huge_pages_by_default() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !thp_available() {
        return;
    }
    // A fresh process: no cached block (made without the advice) to reuse.
    let (p, advised, huge) = touched_block_in_child(&[]);
    assert_eq!(p % HUGE, 0, "a huge-page block starts on a 2 MiB boundary");
    assert!(
        advised,
        "the block's mapping is advised MADV_HUGEPAGE (VmFlags hg)"
    );
    // The kernel compacts for an advised fault unless defrag says never;
    // with `never` it may fall back to 4 KiB pages when memory is fragmented.
    if thp_setting("defrag").is_some_and(|d| d != "never") {
        assert!(
            huge >= HUGE,
            "an 8 MiB block written through holds {huge} bytes of huge pages"
        );
    }
}

#[test]
fn spf_thp_off_keeps_4k_pages() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !thp_available() {
        return;
    }
    let (_, advised, huge) = touched_block_in_child(&[("SPF_THP", "off")]);
    assert!(!advised, "SPF_THP=off: no MADV_HUGEPAGE advice");
    if thp_setting("enabled").as_deref() == Some("madvise") {
        assert_eq!(
            huge, 0,
            "SPF_THP=off: no huge pages where THP is madvise-only"
        );
    }
}

#[test]
fn a_destroyed_block_takes_its_advice_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !thp_available() {
        return;
    }
    // Larger than the cache holds (1 GiB): freeing it destroys its region
    // at once, and spf-core may hand the range to a segment next.
    let layout = Layout::from_size_align((1 << 30) + HUGE, 8).unwrap();
    // SAFETY: a non-zero size.
    let p = unsafe { alloc(layout) };
    assert!(!p.is_null());
    for off in (0..4 * MIB).step_by(4096) {
        // SAFETY: inside the block.
        unsafe { p.add(off).write_volatile(1) };
    }
    assert!(smaps_of(p as usize, layout.size()).0, "advised while live");
    // SAFETY: allocated above with this layout.
    unsafe { dealloc(p, layout) };
    let (advised, huge) = smaps_of(p as usize, layout.size());
    assert!(!advised, "the freed range still carries MADV_HUGEPAGE");
    assert_eq!(huge, 0, "the freed range still holds huge pages");
}
