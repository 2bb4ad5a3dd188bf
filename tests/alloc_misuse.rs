//! Misuse of the allocator that spf can recognise ends the process with a
//! message naming the pointer, instead of handing memory out twice: a
//! double free of a large block, and a large free of a pointer spf never
//! gave out.

mod common;

use common::{child_scenario, run_child, signal_of};
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
            other => panic!("unknown scenario {other}"),
        }
    }
    println!("survived");
}

#[test]
fn a_double_free_of_a_large_block_is_reported() {
    let out = run_child("child_entry", "double_free");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let block = stderr
        .split("block at ")
        .nth(1)
        .and_then(|r| r.lines().next())
        .unwrap_or("?");
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
