//! libspf.so under C and C++ programs built here with the system compiler
//! (`tests/c/`): every export at its edges, a process's life (threads,
//! fork, daemon, exec, posix_spawn, dlopen, the program's own SIGSEGV and
//! SIGBUS handlers) in both commit modes, C++ new/delete, `SPF_*`
//! variables, and misuse reports.

mod common;

use common::{compile, libspf, ok, preload, scratch, tool};
use std::process::Command;

fn cc() -> Option<std::path::PathBuf> {
    tool(&["cc", "gcc", "clang"], "gcc")
}

#[test]
fn every_export_at_its_edges() {
    let Some(cc) = cc() else { return };
    let dir = scratch("abi");
    let exe = dir.join("abi_edges");
    let flags = [
        "-Wno-deprecated-declarations",
        "-Wno-alloc-size-larger-than",
    ];
    compile(&cc, &["abi_edges.c"], &exe, &flags);
    let lib = libspf();
    let mut cmd = preload(Command::new(&exe), Some(&lib));
    cmd.env("SPF_STATS", "1");
    let out = ok(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.starts_with("abi_edges: ok"), "{stdout}");
    // malloc_stats() once, SPF_STATS=1 at exit once.
    assert_eq!(
        stderr.matches("Allocator stats for spf:").count(),
        2,
        "malloc_stats and SPF_STATS=1 must both print spf's figures:\n{stderr}"
    );
    assert!(
        stderr.contains("Performance counter stats for spf"),
        "{stderr}"
    );
    // SPF_* variables are read at the first malloc, before main.
    let mut cmd = preload(Command::new(&exe), Some(&lib));
    cmd.env("SPF_DECAY_MS", "soon").env("SPF_RESERVE", "lots");
    let out = ok(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for var in [
        "SPF_DECAY_MS=soon is not valid",
        "SPF_RESERVE=lots is not valid",
    ] {
        assert!(stderr.contains(var), "missing {var:?} in:\n{stderr}");
    }
}

#[test]
fn threads_fork_daemon_exec_spawn_dlopen_and_signal_handlers() {
    let Some(cc) = cc() else { return };
    let dir = scratch("lifecycle");
    let exe = dir.join("lifecycle");
    let plugin = dir.join("plugin.so");
    compile(&cc, &["lifecycle.c"], &exe, &["-pthread", "-ldl"]);
    compile(&cc, &["plugin.c"], &plugin, &["-shared", "-fPIC"]);
    for commit in ["eager", "touch"] {
        let mut cmd = preload(Command::new(&exe), Some(&libspf()));
        cmd.arg(&plugin).env("SPF_COMMIT", commit);
        let out = ok(cmd);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.ends_with("lifecycle: ok\n"),
            "SPF_COMMIT={commit}:\n{stdout}"
        );
        for step in [
            "threads",
            "fork",
            "daemon",
            "exec and posix_spawn",
            "dlopen",
        ] {
            assert!(stdout.contains(&format!("{step}: ok")), "{step}: {stdout}");
        }
    }
}

#[test]
fn cxx_new_and_delete_reach_spf() {
    let Some(cxx) = tool(&["c++", "g++", "clang++"], "g++") else {
        return;
    };
    let dir = scratch("cxx");
    let exe = dir.join("cxx");
    compile(&cxx, &["cxx.cpp"], &exe, &["-std=c++17", "-pthread"]);
    let out = ok(preload(Command::new(&exe), Some(&libspf())));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "cxx: ok\n");
}

#[test]
fn pointers_spf_never_handed_out_end_the_process_with_a_message() {
    let Some(cc) = cc() else { return };
    let dir = scratch("misuse");
    let exe = dir.join("misuse");
    compile(
        &cc,
        &["misuse.c"],
        &exe,
        &["-Wno-use-after-free", "-Wno-free-nonheap-object"],
    );
    for (case, call) in [
        ("stack", "free"),
        ("interior", "free"),
        ("interior-large", "free"),
        ("glibc", "free"),
        ("realloc-glibc", "realloc"),
        ("usable-stack", "malloc_usable_size"),
        ("double-free-large", "free"),
    ] {
        let out = preload(Command::new(&exe), Some(&libspf()))
            .arg(case)
            .output()
            .expect("run misuse");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let pointer = stdout
            .lines()
            .find_map(|l| l.strip_prefix("pointer "))
            .unwrap_or_else(|| panic!("{case}: no pointer printed:\n{stdout}{stderr}"));
        let expected =
            format!("spf: {call} of a pointer that is not a block from spf (a foreign pointer");
        assert!(
            stderr.contains(&expected) && stderr.trim_end().ends_with(pointer),
            "{case}: expected {expected:?} naming {pointer}, got:\n{stderr}"
        );
        assert!(!stdout.contains("not caught"), "{case}: {stdout}");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGABRT),
            "{case}: {}",
            out.status
        );
    }
}

#[test]
fn dlopen_of_many_tls_modules_grows_a_running_threads_dtv() {
    let Some(cc) = cc() else { return };
    let dir = scratch("tls_modules");
    let exe = dir.join("tls_modules");
    compile(&cc, &["tls_modules.c"], &exe, &["-pthread", "-ldl"]);
    // More modules than a thread's DTV has spare slots (14 in glibc).
    let n = 24;
    for i in 1..=n {
        let lib = dir.join(format!("libtls{i}.so"));
        compile(&cc, &["tls_module.c"], &lib, &["-shared", "-fPIC"]);
    }
    let mut cmd = preload(Command::new(&exe), Some(&libspf()));
    cmd.arg(&dir).arg(n.to_string());
    let out = ok(cmd);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tls_modules: ok\n");
}
