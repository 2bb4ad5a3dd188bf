//! Misuse of the allocator that spf can recognise ends the process with a
//! message naming the pointer, instead of handing memory out twice: a
//! double free of a large block, and a large free of a pointer spf never
//! gave out; a write past the end of a large block into spf's uncommitted
//! space is reported as an overflow, not committed.

mod common;

use common::{child_scenario, printed_addr, run_child, signal_of};
use spf::SpfAlloc;
use std::alloc::{alloc, dealloc, Layout};

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

#[test]
#[ignore = "child-process entry point, run by the other tests of this file"]
fn child_entry() {
    let Some(scenario) = child_scenario() else {
        return;
    };
    let layout = Layout::from_size_align(1 << 20, 8).unwrap();
    // SAFETY: none in the second free or the foreign pointer — the misuse
    // is the point, and spf must catch it before anything is corrupted.
    unsafe {
        let p = alloc(layout);
        eprintln!("block at {p:p}");
        match scenario.as_str() {
            "double_free" => {
                dealloc(p, layout);
                dealloc(p, layout);
            }
            "foreign" => {
                let mut local = [0u8; 64];
                dealloc(local.as_mut_ptr(), layout);
            }
            "overflow" => {
                // Find a block with free (uncommitted, unmapped) space after
                // it: the next extent may hold another live region, and an
                // access there cannot be told from a legitimate one.
                let mut block = p;
                let mut held = Vec::new();
                while spf::region_at(block.add(layout.size())).is_some() {
                    held.push(block);
                    block = alloc(layout);
                    assert!(held.len() < 64, "no block with free space after it");
                }
                eprintln!("overflowing {block:p}");
                block.add(layout.size() + 100).write_volatile(1);
            }
            "small_double_free" | "small_interior" | "small_foreign" | "small_remote_double" => {
                // A class nothing else here uses, so that the block is not
                // handed out again between the two frees (spawning a thread
                // allocates).
                let small = Layout::from_size_align(5000, 8).unwrap();
                let q = alloc(small);
                eprintln!("small block at {q:p}");
                match scenario.as_str() {
                    "small_double_free" => {
                        dealloc(q, small);
                        dealloc(q, small);
                    }
                    "small_interior" => dealloc(q.add(16), small),
                    "small_foreign" => {
                        let mut local = [0u8; 64];
                        eprintln!("foreign {:p}", local.as_mut_ptr());
                        dealloc(local.as_mut_ptr(), small);
                    }
                    _ => {
                        // The second free comes from another thread: the
                        // remote path checks too.
                        dealloc(q, small);
                        let q = q as usize;
                        std::thread::spawn(move || dealloc(q as *mut u8, small))
                            .join()
                            .unwrap();
                    }
                }
            }
            other => panic!("unknown scenario {other}"),
        }
    }
    println!("survived");
}

#[test]
fn a_double_free_of_a_large_block_is_reported() {
    let out = run_child("child_entry", "double_free");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (block, _) = printed_addr(&stderr, "block at ");
    assert!(
        stderr.contains(&format!(
            "spf: double free of a large block (it is already free): {block}"
        )),
        "{stderr}"
    );
    assert_eq!(signal_of(&out), Some(libc::SIGABRT));
}

#[test]
fn a_foreign_pointer_is_reported() {
    let out = run_child("child_entry", "foreign");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("spf: free of a pointer that is not a live large block from spf"),
        "{stderr}"
    );
    assert_eq!(signal_of(&out), Some(libc::SIGABRT));
}

#[test]
fn an_overflow_past_a_large_block_is_reported_not_committed() {
    let out = run_child("child_entry", "overflow");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (_, block) = printed_addr(&stderr, "overflowing ");
    let end = block + (1 << 20);
    assert!(
        stderr.contains(&format!(
            "spf: fatal write at {:#x}: 100 bytes past the end of the region [{block:#x}, {end:#x})",
            end + 100
        )),
        "{stderr}"
    );
    assert_eq!(signal_of(&out), Some(libc::SIGSEGV));
}

/// Small and medium blocks are checked in debug builds only (release
/// builds would pay for it on the fast path).
#[cfg(debug_assertions)]
#[test]
fn small_block_misuse_is_reported_in_debug_builds() {
    for (scenario, message) in [
        (
            "small_double_free",
            "double free of a small block (it is already free)",
        ),
        (
            "small_remote_double",
            "double free of a small block (it is already free)",
        ),
        (
            "small_interior",
            "free of a pointer that is not the start of a small block",
        ),
        (
            "small_foreign",
            "free of a pointer that is not a small block from spf",
        ),
    ] {
        let out = run_child("child_entry", scenario);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let ptr = match scenario {
            "small_foreign" => printed_addr(&stderr, "foreign ").0,
            "small_interior" => format!("{:#x}", printed_addr(&stderr, "small block at ").1 + 16),
            _ => printed_addr(&stderr, "small block at ").0,
        };
        assert!(
            stderr.contains(&format!("spf: {message}")) && stderr.contains(&ptr),
            "{scenario}: {stderr}"
        );
        assert_eq!(signal_of(&out), Some(libc::SIGABRT), "{scenario}: {stderr}");
    }
}
