//! Remote frees batched per destination page (each thread's remote-free
//! buffer, pushed as one chain per page with one CAS):
//! - threads in a ring free each other's blocks, bytes checked, while some
//!   of them exit (their pages are abandoned with blocks still out, so
//!   buffered chains meet abandoned pages); the counters show that frees
//!   went out in chains of many blocks, and nothing stays allocated;
//! - blocks a thread buffered and then went idle with come back to their
//!   owner when that thread calls `spf::purge()`, and when it exits: the
//!   owner allocates the same addresses again. Without the flush the owner
//!   finds nothing to collect and carves new blocks.
//!
//! The tests share global counters and one size class, so they run one
//! at a time.

use spf::SpfAlloc;
use std::collections::HashSet;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const THREADS: usize = 6;
const ROUNDS: usize = if cfg!(debug_assertions) { 8 } else { 30 };
const PER_ROUND: usize = 2_000;

/// The bytes of block `i` of round `round` made by thread `t`.
fn pattern(t: usize, round: usize, i: usize, len: usize) -> Vec<u8> {
    let seed = (t * 31 + round * 7 + i) as u8;
    (0..len).map(|k| seed.wrapping_add(k as u8)).collect()
}

#[test]
fn threads_freeing_each_others_blocks_push_them_in_chains() {
    let _serial = serial();
    let before = spf::alloc_stats();
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..THREADS {
        let (tx, rx) = channel::<(usize, usize, Vec<Vec<u8>>)>();
        senders.push(tx);
        receivers.push(Some(rx));
    }
    let mut handles = Vec::new();
    let mut freed_total = 0;
    for t in 0..THREADS {
        let next = senders[(t + 1) % THREADS].clone();
        let rx = receivers[t].take().unwrap();
        // Odd threads stop halfway: their pages are abandoned while their
        // blocks wait in the next thread's channel and buffer.
        let rounds = if t % 2 == 1 { ROUNDS / 2 } else { ROUNDS };
        freed_total += rounds * PER_ROUND;
        handles.push(std::thread::spawn(move || {
            let mut checked = 0usize;
            for round in 0..rounds {
                let blocks: Vec<Vec<u8>> = (0..PER_ROUND)
                    .map(|i| pattern(t, round, i, 16 + (i * 37) % 1000))
                    .collect();
                next.send((t, round, blocks)).unwrap();
                // Free what the previous thread sent, after checking it.
                while let Ok((from, r, got)) = rx.try_recv() {
                    checked += check(from, r, got);
                }
            }
            drop(next);
            // Until every sender is gone: the previous thread's last rounds.
            while let Ok((from, r, got)) = rx.recv() {
                checked += check(from, r, got);
            }
            checked
        }));
    }
    drop(senders);
    let checked: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(checked, freed_total, "every block was checked once");
    let after = spf::alloc_stats();
    let batches = after.remote_batches - before.remote_batches;
    let batched = after.remote_batched - before.remote_batched;
    // Blocks were freed by another thread than their maker's, except those
    // of pages a receiver adopted after their maker's exit.
    assert!(
        batched >= freed_total as u64 / 2,
        "only {batched} of {freed_total} remote frees went through the buffer"
    );
    assert!(
        batched >= 4 * batches,
        "{batched} blocks in {batches} chains: frees of one page were not batched"
    );
    assert!(
        after.allocated <= before.allocated + (64 << 10),
        "blocks stay counted: {} bytes before, {} after",
        before.allocated,
        after.allocated
    );
}

/// Checks a batch's bytes and frees it; returns how many blocks it held.
fn check(from: usize, round: usize, blocks: Vec<Vec<u8>>) -> usize {
    for (i, b) in blocks.iter().enumerate() {
        assert_eq!(
            *b,
            pattern(from, round, i, b.len()),
            "block {i} of round {round} from thread {from} changed"
        );
    }
    blocks.len()
}

/// A size class no other code in this test binary uses.
const SIZE: usize = 3000;
/// Blocks handed over: fewer bytes than the buffer's budget, so the
/// freeing thread keeps them all until it flushes.
const N: usize = 16;

/// Allocates `N` blocks of `SIZE` on this thread and has another thread
/// free them, run `flush` and go idle (or exit, with `exit`); then
/// allocates `N` blocks again and asserts that at least half are blocks
/// the other thread freed. The two threads signal
/// through atomics: a channel could allocate on the freeing thread, and
/// its allocation slow path flushes too.
fn hand_to_idle_thread(flush: fn(), exit: bool) {
    let blocks: Vec<Box<[u8; SIZE]>> = (0..N).map(|i| Box::new([i as u8; SIZE])).collect();
    let addrs: HashSet<usize> = blocks.iter().map(|b| b.as_ptr() as usize).collect();
    let state = Arc::new(AtomicUsize::new(0));
    let pushed = Arc::new(AtomicU64::new(0));
    let freer = {
        let (state, pushed) = (state.clone(), pushed.clone());
        std::thread::spawn(move || {
            let before = spf::alloc_stats().remote_batched;
            for (i, b) in blocks.into_iter().enumerate() {
                assert!(b.iter().all(|&x| x == i as u8), "block {i} changed");
            }
            state.store(1, SeqCst);
            wait(&state, 2);
            flush();
            pushed.store(spf::alloc_stats().remote_batched - before, SeqCst);
            state.store(3, SeqCst);
            if !exit {
                // Idle, alive, until the owner has looked.
                wait(&state, 4);
            }
        })
    };
    wait(&state, 1);
    // (`remote_batched` sums every heap's pushes, the exits of earlier
    // tests' threads included, so it says nothing exact about the freer's
    // buffer before its flush; the owner's allocations below do.)
    state.store(2, SeqCst);
    wait(&state, 3);
    let flushed = pushed.load(SeqCst);
    let reused = if exit {
        freer.join().unwrap();
        reuse(&addrs)
    } else {
        assert!(flushed >= N as u64, "purge pushed {flushed} of {N} blocks");
        let reused = reuse(&addrs);
        state.store(4, SeqCst);
        freer.join().unwrap();
        reused
    };
    assert!(
        reused >= N / 2,
        "the owner got {reused} of the {N} blocks another thread freed back"
    );
}

fn wait(state: &AtomicUsize, at_least: usize) {
    while state.load(SeqCst) < at_least {
        std::thread::yield_now();
    }
}

/// Allocates `N` blocks of `SIZE` and counts those at one of `addrs`.
fn reuse(addrs: &HashSet<usize>) -> usize {
    let again: Vec<Box<[u8; SIZE]>> = (0..N).map(|_| Box::new([7u8; SIZE])).collect();
    again
        .iter()
        .filter(|b| addrs.contains(&(b.as_ptr() as usize)))
        .count()
}

#[test]
fn an_idle_threads_buffered_frees_come_back_on_its_purge() {
    let _serial = serial();
    hand_to_idle_thread(spf::purge, false);
}

#[test]
fn an_idle_threads_buffered_frees_come_back_at_its_exit() {
    let _serial = serial();
    hand_to_idle_thread(|| {}, true);
}

/// Resident bytes of `len` bytes at `start` (`mincore`).
fn resident(start: usize, len: usize) -> usize {
    let mut map = vec![0u8; len / 4096];
    // SAFETY: `map` has one byte per 4 KiB page of the range, which lies
    // in a segment spf keeps mapped (reserved) for the process's life.
    let rc = unsafe { libc::mincore(start as *mut libc::c_void, len, map.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    map.iter().filter(|&&b| b & 1 != 0).count() * 4096
}

/// A thread fills one page with `n` blocks of `size` bytes and exits (the
/// page is abandoned with every block out); another thread frees them all
/// and goes idle without allocating again; then `spf::purge()` runs on
/// the main thread. Returns the page's resident bytes after it, and after
/// the idle thread's exit and another `spf::purge()`.
fn abandoned_page_freed_by_an_idle_thread(
    size: usize,
    n: usize,
    page_len: usize,
) -> (usize, usize) {
    let blocks: Vec<Vec<u8>> =
        std::thread::spawn(move || (0..n).map(|i| vec![i as u8; size]).collect())
            .join()
            .unwrap();
    let page = blocks[0].as_ptr() as usize & !(page_len - 1);
    assert!(
        blocks
            .iter()
            .all(|b| b.as_ptr() as usize & !(page_len - 1) == page),
        "the blocks did not come from one page"
    );
    for (i, b) in blocks.iter().enumerate() {
        assert!(b.iter().all(|&x| x == i as u8), "block {i} lost its bytes");
    }
    let state = Arc::new(AtomicUsize::new(0));
    let s = state.clone();
    let freer = std::thread::spawn(move || {
        drop(blocks);
        s.store(1, SeqCst);
        wait(&s, 2); // idle, alive: nothing flushes its buffer
    });
    wait(&state, 1);
    spf::purge();
    let idle = resident(page, page_len);
    state.store(2, SeqCst);
    freer.join().unwrap();
    spf::purge();
    (idle, resident(page, page_len))
}

/// Blocks of a page abandoned by its exited owner are not buffered (B4 in
/// `remote`): the idle freer's last free of a medium block gives the page
/// back, and `spf::purge()` from another thread purges it. When the last
/// block waited in the idle freer's buffer, the page stayed resident (a
/// whole medium page of the time, 1,032,192 of its 1 MiB, in the review
/// that found it). Small blocks go to the idle freer's thread cache first
/// (at most 20 KiB of a class, C2 in `cache`), which nothing but that
/// thread empties: the page keeps at most the 4 KiB runs those blocks
/// cover (the others are purged as free runs of an abandoned page), and
/// none once the freer exits.
#[test]
fn an_idle_freer_holds_no_more_of_an_abandoned_page_than_its_cache() {
    let _serial = serial();
    // A medium page: 5 blocks of 48 KiB in 256 KiB.
    let (idle, after_exit) = abandoned_page_freed_by_an_idle_thread(48 << 10, 5, 256 << 10);
    assert_eq!(
        (idle, after_exit),
        (0, 0),
        "48 KiB blocks: bytes of their abandoned page stayed resident after every block \
         was freed and spf::purge() ran (while the freer idled, after it exited)"
    );
    // A small page: 21 blocks of 3,000 bytes (3,072-byte class) in 64 KiB,
    // of which the cache keeps 6 (18 KiB: five or six 4 KiB runs).
    let (idle, after_exit) = abandoned_page_freed_by_an_idle_thread(3000, 21, 64 << 10);
    assert!(
        idle <= 24 << 10,
        "3,000-byte blocks: {idle} bytes of their abandoned page stayed resident while \
         the freer idled, after spf::purge(): more than its cache holds"
    );
    assert_eq!(
        after_exit, 0,
        "3,000-byte blocks: {after_exit} bytes of their abandoned page stayed resident \
         after the freer exited and spf::purge() ran"
    );
}
