//! Real programs no one here wrote, under libspf.so: each must produce
//! byte-identical output with and without the preload, and must really
//! have run on spf (the loader's binding log names libspf.so for `malloc`
//! and `free`; `git` also prints `SPF_STATS=1` figures from each of its
//! processes).
//! - `sort --parallel=2` (coreutils, threaded) on a generated 16 MiB file;
//! - `xz -T2` (threaded) compressing a generated file, and decompressing;
//! - `python3` running an allocation-heavy script in four threads
//!   (`tests/programs/alloc_heavy.py`), with extension modules dlopened;
//! - `git`: a generated repository, commits with fixed dates, `repack`
//!   with two threads, `fsck`, `log -p`.

mod common;

use common::{bound_to_libspf, libspf, ok, preload, preload_logged, scratch, tool};
use std::path::Path;
use std::process::Command;

/// Lines of text from a fixed-seed generator: `n` lines like
/// `1f3a9c07 hbgjd 712340`.
fn generated_lines(n: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        state >> 33
    };
    let mut out = Vec::with_capacity(n * 40);
    for _ in 0..n {
        let word_len = 1 + next() % 30;
        let word: String = (0..word_len)
            .map(|_| (b'a' + (next() % 10) as u8) as char)
            .collect();
        out.extend_from_slice(format!("{:08x} {word} {}\n", next(), next() % 1_000_000).as_bytes());
    }
    out
}

/// Runs `make()` without and with the preload (loader logs in a folder
/// named after `name`), checks that spf served
/// the second run (the loader bound its `malloc` and `free` to libspf.so)
/// and returns both outputs.
fn both(name: &str, make: impl Fn() -> Command) -> (Vec<u8>, Vec<u8>) {
    let plain = ok(preload(make(), None));
    let logs = scratch(&format!("ld-debug-{name}"));
    let spf = ok(preload_logged(make(), &logs));
    assert!(
        bound_to_libspf(&logs),
        "{:?}: the loader did not bind malloc and free to libspf.so",
        make()
    );
    (plain.stdout, spf.stdout)
}

fn assert_identical(what: &str, (plain, spf): (Vec<u8>, Vec<u8>)) {
    assert!(!plain.is_empty(), "{what}: no output");
    assert!(
        plain == spf,
        "{what}: output differs under libspf.so ({} vs {} bytes)",
        plain.len(),
        spf.len()
    );
}

#[test]
fn sort_parallel() {
    let Some(sort) = tool(&["sort"], "coreutils") else {
        return;
    };
    let dir = scratch("sort");
    let input = dir.join("lines.txt");
    std::fs::write(&input, generated_lines(400_000)).unwrap();
    let out = both("sort", || {
        let mut c = Command::new(&sort);
        c.args(["--parallel=2", "-S", "64M", "-k2,2", "-k3,3n", "-k1,1"])
            .arg(&input)
            .env("LC_ALL", "C");
        c
    });
    assert_eq!(
        out.0.len(),
        std::fs::metadata(&input).unwrap().len() as usize
    );
    assert_identical("sort --parallel=2", out);
}

#[test]
fn xz_two_threads() {
    let Some(xz) = tool(&["xz"], "xz-utils") else {
        return;
    };
    let dir = scratch("xz");
    let input = dir.join("lines.txt");
    let data = generated_lines(150_000);
    std::fs::write(&input, &data).unwrap();
    let (plain, spf) = both("xz", || {
        let mut c = Command::new(&xz);
        c.args(["-T2", "-3", "--block-size=512KiB", "-c"])
            .arg(&input);
        c
    });
    assert!(plain.len() < data.len() * 3 / 4, "xz did not compress");
    let packed = dir.join("lines.txt.xz");
    std::fs::write(&packed, &spf).unwrap();
    assert_identical("xz -T2", (plain, spf));
    let unpacked = both("unxz", || {
        let mut c = Command::new(&xz);
        c.args(["-T2", "-d", "-c"]).arg(&packed);
        c
    });
    assert!(unpacked.0 == data, "xz -d does not give the input back");
    assert_identical("xz -d -T2", unpacked);
}

#[test]
fn python_threads() {
    let Some(python) = tool(&["/usr/bin/python3", "python3"], "python3") else {
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/alloc_heavy.py");
    let out = both("python", || {
        let mut c = Command::new(&python);
        c.arg(&script);
        c
    });
    assert_eq!(String::from_utf8_lossy(&out.0).lines().count(), 4);
    assert_identical("python3 alloc_heavy.py", out);
}

/// Builds a repository of generated files in `dir` with `git` (with or
/// without the preload) and returns what `log -p`, `ls-tree` and
/// `count-objects` say after a threaded `repack` and `fsck`.
fn git_session(git: &Path, dir: &Path, lib: Option<&Path>) -> Vec<u8> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let run = |args: &[&str]| -> Vec<u8> {
        let mut c = preload(Command::new(git), lib);
        c.current_dir(dir)
            .args([
                "-c",
                "user.name=spf",
                "-c",
                "user.email=spf@example.invalid",
            ])
            .args(["-c", "init.defaultBranch=main", "-c", "pack.threads=2"])
            .args(args)
            .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir);
        if lib.is_some() {
            c.env("SPF_STATS", "1");
        }
        let out = ok(c);
        if lib.is_some() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("Allocator stats for spf:"),
                "git {args:?}: {stderr}"
            );
        }
        out.stdout
    };
    run(&["init", "-q"]);
    let lines = generated_lines(30_000);
    for round in 0..4 {
        for f in 0..60 {
            let start = (f * 4099 + round * 977) % (lines.len() - 20_000);
            let body = &lines[start..start + 2_000 + f * 250];
            std::fs::write(dir.join(format!("file{f:02}.txt")), body).unwrap();
        }
        run(&["add", "-A"]);
        run(&["commit", "-q", "-m", &format!("round {round}")]);
    }
    run(&["repack", "-a", "-d", "-f", "-q"]);
    run(&["fsck", "--full", "--no-progress"]);
    let mut out = run(&["log", "-p", "--stat"]);
    out.extend(run(&["ls-tree", "-r", "HEAD"]));
    out.extend(run(&["rev-list", "--objects", "--all"]));
    out
}

#[test]
fn git_repository() {
    let Some(git) = tool(&["git"], "git") else {
        return;
    };
    let dir = scratch("git");
    let plain = git_session(&git, &dir.join("plain"), None);
    let spf = git_session(&git, &dir.join("spf"), Some(&libspf()));
    assert_identical("git", (plain, spf));
}
