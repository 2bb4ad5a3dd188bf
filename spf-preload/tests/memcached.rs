//! The real memcached (Debian's package) under libspf.so, daemonized
//! (`-d`: it forks and the child serves), on a loopback port: Debian's
//! `memcapable -a` (every ASCII protocol test must pass), then a short,
//! bounded `memaslap` load, then `stats` and a clean shutdown.
//! `scripts/preload-table.sh` runs the same server under each allocator
//! for the README's table.

mod common;

use common::{libspf, maps_have_libspf, ok, preload, scratch, tool};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A daemonized memcached, stopped with SIGTERM when dropped.
struct Daemon {
    pid: i32,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of the daemon this test started.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
    }
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

fn start(memcached: &Path, dir: &Path, port: u16) -> Daemon {
    let pidfile = dir.join("memcached.pid");
    let mut cmd = preload(Command::new(memcached), Some(&libspf()));
    cmd.args([
        "-d",
        "-l",
        "127.0.0.1",
        "-U",
        "0",
        "-t",
        "2",
        "-m",
        "64",
        "-c",
        "256",
    ])
    .arg("-p")
    .arg(port.to_string())
    .arg("-P")
    .arg(&pidfile);
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        cmd.args(["-u", "root"]); // memcached refuses root without -u
    }
    ok(cmd); // returns once the daemon has forked
    let mut pid = 0;
    wait_for("memcached's pid file", || {
        pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        pid > 0
    });
    let daemon = Daemon { pid };
    wait_for("memcached to accept", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    daemon
}

/// The server's `stats`, as (name, value) pairs.
fn stats(port: u16) -> Vec<(String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"stats\r\nquit\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            if f.next() != Some("STAT") {
                return None;
            }
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect()
}

#[test]
fn memcached_passes_memcapable_and_serves_memaslap() {
    let Some(memcached) = tool(&["memcached"], "memcached") else {
        return;
    };
    let Some(memcapable) = tool(&["memcapable", "memccapable"], "libmemcached-tools") else {
        return;
    };
    let Some(memaslap) = tool(&["memaslap", "memcaslap"], "libmemcached-tools") else {
        return;
    };
    let dir = scratch("memcached");
    let port = free_port();
    let daemon = start(&memcached, &dir, port);
    assert!(
        maps_have_libspf(daemon.pid as u32),
        "memcached (pid {}) does not have libspf.so mapped",
        daemon.pid
    );

    let mut cmd = Command::new(&memcapable);
    cmd.args(["-a", "-t", "10", "-h", "127.0.0.1", "-p"])
        .arg(port.to_string());
    let out = ok(cmd);
    let text = String::from_utf8_lossy(&out.stdout);
    let passed = text
        .lines()
        .filter(|l| l.trim_end().ends_with("[pass]"))
        .count();
    assert!(
        text.contains("All tests passed") && passed >= 20 && !text.contains("[FAIL]"),
        "memcapable -a against memcached on spf:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Bounded: two seconds, 16 connections, values up to 64 KiB.
    let cfg = dir.join("memaslap.cfg");
    std::fs::write(
        &cfg,
        "key\n16 64 1\nvalue\n16 1024 0.7\n1025 65536 0.3\ncmd\n0 0.2\n1 0.8\n",
    )
    .unwrap();
    let mut cmd = Command::new(&memaslap);
    cmd.arg("-s")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-F")
        .arg(&cfg)
        .args(["-t", "2s", "-T", "2", "-c", "16"]);
    let out = ok(cmd);
    let text = String::from_utf8_lossy(&out.stdout);
    let tps: f64 = text
        .split_whitespace()
        .skip_while(|w| *w != "TPS:")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no TPS in memaslap's output:\n{text}"));
    assert!(tps > 100.0, "memaslap: {tps} ops/s\n{text}");

    let stats = stats(port);
    let stat = |k: &str| -> u64 {
        stats
            .iter()
            .find(|(n, _)| n == k)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in stats: {stats:?}"))
    };
    assert!(stat("curr_items") > 0 && stat("cmd_set") > 0, "{stats:?}");
    assert_eq!(stat("pid"), daemon.pid as u64, "the daemon that answered");

    let pid = daemon.pid;
    drop(daemon);
    wait_for("memcached to exit on SIGTERM", || {
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    });
}
