//! Memory from `SpfAlloc` works with system calls: `read()` from a file and
//! from a pipe into fresh, never-touched blocks of 64 KiB to 64 MiB returns
//! the data. In touch mode (`SPF_COMMIT=touch`) a large block is committed
//! on first touch, so the same `read()` into an untouched block fails with
//! `EFAULT` — the documented rule — and works once the block is touched.

mod common;

use common::{child_scenario, run_child_with_env};
use spf::SpfAlloc;
use std::io::{Read, Write};

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

const SIZES: [usize; 6] = [64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20];

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// `read(2)` straight into the spare capacity of a fresh Vec.
fn read_into_fresh(fd: i32, len: usize) -> Result<Vec<u8>, i32> {
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    let mut got = 0;
    while got < len {
        // SAFETY: the kernel writes at most `len - got` bytes into the
        // Vec's spare capacity, which we own.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().add(got).cast(), len - got) };
        if n < 0 {
            return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
        }
        if n == 0 {
            break;
        }
        got += n as usize;
    }
    // SAFETY: `got` bytes were written by the kernel.
    unsafe { buf.set_len(got) };
    Ok(buf)
}

#[test]
fn read_from_a_file_into_fresh_blocks() {
    use std::os::fd::AsRawFd;
    let path = std::env::temp_dir().join(format!("spf-read-{}", std::process::id()));
    std::fs::write(&path, pattern(64 << 20)).unwrap();
    for len in SIZES {
        let f = std::fs::File::open(&path).unwrap();
        let got = read_into_fresh(f.as_raw_fd(), len).expect("read into a fresh block");
        assert_eq!(got.len(), len);
        assert!(got == pattern(len), "{len}-byte read returned wrong data");
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn read_from_a_pipe_into_fresh_blocks() {
    for len in SIZES {
        let (mut rx, mut tx) = std::io::pipe().unwrap();
        let writer = std::thread::spawn(move || tx.write_all(&pattern(len)).unwrap());
        use std::os::fd::AsRawFd;
        let got = read_into_fresh(rx.as_raw_fd(), len).expect("read into a fresh block");
        writer.join().unwrap();
        let mut rest = Vec::new();
        rx.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        assert!(
            got == pattern(len),
            "{len}-byte pipe read returned wrong data"
        );
    }
}

#[test]
#[ignore = "child-process entry point, run by the other tests of this file"]
fn child_entry() {
    if child_scenario().is_none() {
        return;
    }
    let (rx, mut tx) = std::io::pipe().unwrap();
    tx.write_all(&pattern(4096)).unwrap();
    use std::os::fd::AsRawFd;
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    // SAFETY: the kernel checks the buffer; untouched lazy memory gives EFAULT.
    let n = unsafe { libc::read(rx.as_raw_fd(), buf.as_mut_ptr().cast(), 4096) };
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap();
    println!("untouched: n={n} errno={errno}");
    // Touching the first page commits it (the fault handler), then the
    // same read works.
    // SAFETY: inside the Vec's capacity.
    unsafe { buf.as_mut_ptr().write_volatile(0) };
    // SAFETY: as above.
    let n = unsafe { libc::read(rx.as_raw_fd(), buf.as_mut_ptr().cast(), 4096) };
    // SAFETY: n bytes were written.
    unsafe { buf.set_len(n.max(0) as usize) };
    println!("touched: n={n} ok={}", buf == pattern(4096));
}

#[test]
fn touch_mode_documents_the_efault_rule() {
    let out = run_child_with_env("child_entry", "touch", &[("SPF_COMMIT", "touch")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains(&format!("untouched: n=-1 errno={}", libc::EFAULT)),
        "{stdout}"
    );
    assert!(stdout.contains("touched: n=4096 ok=true"), "{stdout}");
}
