//! Helpers of the libspf.so tests: where the library is, compiling C with
//! the system compiler, finding the real programs, running a command with
//! and without the preload.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `libspf.so`, built for this test run's profile. Cargo does not build a
/// `cdylib` for integration tests (they cannot link it), so the first call
/// builds it with `cargo build -p spf-preload` into a target folder of its
/// own — the running `cargo test` holds the main one's lock — and later
/// calls reuse it (Cargo rebuilds only what changed).
pub fn libspf() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("libspf-build");
            let release = !cfg!(debug_assertions);
            let mut cargo = Command::new(env!("CARGO"));
            cargo
                .args(["build", "--quiet", "-p", "spf-preload", "--manifest-path"])
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
                .env("CARGO_TARGET_DIR", &target);
            if release {
                cargo.arg("--release");
            }
            let status = cargo.status().expect("run cargo build -p spf-preload");
            assert!(status.success(), "cargo build -p spf-preload failed");
            let lib = target
                .join(if release { "release" } else { "debug" })
                .join("libspf.so");
            assert!(
                lib.is_file(),
                "{} is missing after the build",
                lib.display()
            );
            lib
        })
        .clone()
}

/// An empty scratch folder `name` for a test's builds and files (emptied
/// again by the next run; names are unique across the tests).
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("spf-preload")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("make the scratch folder");
    dir
}

/// Whether a missing tool must fail the test: in CI (`CI=true`, as
/// `.ci/run` sets), or when `SPF_REQUIRE_TOOLS=1`.
pub fn tools_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("SPF_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

/// The first of `names` on `PATH` (or an absolute path that exists).
/// Missing: fails in CI, otherwise says so loudly and returns `None`, so
/// the caller skips.
pub fn tool(names: &[&str], package: &str) -> Option<PathBuf> {
    for name in names {
        let p = Path::new(name);
        if p.is_absolute() && p.is_file() {
            return Some(p.to_path_buf());
        }
        if let Some(found) = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(name))
                .find(|c| c.is_file())
        }) {
            return Some(found);
        }
    }
    assert!(
        !tools_required(),
        "{} is not installed (apt-get install {package}); CI requires it",
        names[0]
    );
    eprintln!(
        "\n!!!!!!!!\n!!! SKIPPED: {} is not installed (apt-get install {package});\n\
         !!! this check did not run. CI (CI=true) fails instead.\n!!!!!!!!\n",
        names[0]
    );
    None
}

/// Compiles `sources` (paths under `spf-preload/tests/c/`) with the
/// system compiler `compiler` into `out`, with `flags`.
pub fn compile(compiler: &Path, sources: &[&str], out: &Path, flags: &[&str]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c");
    let result = Command::new(compiler)
        .args(["-O1", "-g", "-Wall"])
        .args(flags)
        .args(sources.iter().map(|s| dir.join(s)))
        .arg("-o")
        .arg(out)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", compiler.display()));
    assert!(
        result.status.success(),
        "{} {sources:?} failed:\n{}",
        compiler.display(),
        String::from_utf8_lossy(&result.stderr)
    );
}

/// `cmd` with `LD_PRELOAD` set to libspf.so (or cleared, with `None`).
pub fn preload(mut cmd: Command, lib: Option<&Path>) -> Command {
    match lib {
        Some(lib) => cmd.env("LD_PRELOAD", lib),
        None => cmd.env_remove("LD_PRELOAD"),
    };
    cmd
}

/// Output of a run that must succeed, with its stderr shown on failure.
pub fn ok(mut cmd: Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The PIDs' maps show libspf.so loaded.
pub fn maps_have_libspf(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|m| m.contains("/libspf.so"))
}

/// `cmd` under the preload, with the dynamic loader logging its symbol
/// bindings into files under `log_dir` (`LD_DEBUG=bindings`, one file per
/// process), for [`bound_to_libspf`].
pub fn preload_logged(cmd: Command, log_dir: &Path) -> Command {
    let mut cmd = preload(cmd, Some(&libspf()));
    cmd.env("LD_DEBUG", "bindings")
        .env("LD_DEBUG_OUTPUT", log_dir.join("ld"));
    cmd
}

/// Whether the loader logs under `log_dir` show the program's `malloc` and
/// `free` bound to libspf.so: proof that spf served it, even for programs
/// that close standard error before `SPF_STATS=1` could print (coreutils
/// and xz do, from their own `atexit` handler).
pub fn bound_to_libspf(log_dir: &Path) -> bool {
    let logs: String = std::fs::read_dir(log_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect();
    ["malloc", "free"].iter().all(|sym| {
        let bound = format!("/libspf.so [0]: normal symbol `{sym}'");
        logs.lines().any(|l| l.contains(&bound))
    })
}
