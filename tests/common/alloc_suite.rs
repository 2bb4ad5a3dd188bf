//! Allocator workloads shared by the allocator tests, so the same suite can
//! run in every fault mode and commit mode (see `alloc_modes.rs`). Each
//! verifies every byte it wrote and panics on the first difference.
#![allow(dead_code)] // each test binary uses its own subset

use std::alloc::{alloc, alloc_zeroed, dealloc, realloc, Layout};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// A small deterministic generator (tests must be reproducible).
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn word(seed: u64, i: usize) -> u64 {
    (seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).rotate_left((i % 61) as u32)
}

/// Byte `i` of the pattern: the same whether it was written as part of a
/// word or alone, so any prefix of a filled block checks.
fn byte(seed: u64, i: usize) -> u8 {
    word(seed, i / 8).to_le_bytes()[i % 8]
}

/// Fills `len` bytes at `p` with a pattern derived from `seed`.
///
/// # Safety
/// `p..p+len` is writable memory the caller owns.
pub unsafe fn fill(p: *mut u8, len: usize, seed: u64) {
    let words = len / 8;
    for i in 0..words {
        // SAFETY: inside the caller's block; unaligned writes are fine.
        unsafe { (p.add(i * 8) as *mut u64).write_unaligned(word(seed, i).to_le()) };
    }
    for i in words * 8..len {
        // SAFETY: inside the caller's block.
        unsafe { p.add(i).write(byte(seed, i)) };
    }
}

/// Checks a block filled by `fill`; `len` may be a prefix of what was filled.
///
/// # Safety
/// `p..p+len` is readable memory the caller owns.
pub unsafe fn check(p: *const u8, len: usize, seed: u64, what: &str) {
    let words = len / 8;
    for i in 0..words {
        // SAFETY: inside the caller's block.
        let v = u64::from_le(unsafe { (p.add(i * 8) as *const u64).read_unaligned() });
        assert_eq!(
            v,
            word(seed, i),
            "{what}: word {i} of {len} bytes corrupted"
        );
    }
    for i in words * 8..len {
        // SAFETY: inside the caller's block.
        assert_eq!(
            unsafe { p.add(i).read() },
            byte(seed, i),
            "{what}: byte {i} corrupted"
        );
    }
}

/// std collections under load: a Vec grown to `vec_mib` MiB, a HashMap and a
/// BTreeMap of `entries` entries, and String churn.
pub fn collections(vec_mib: usize, entries: u64) {
    let n = (vec_mib << 20) / 8;
    let mut v: Vec<u64> = Vec::new();
    for i in 0..n as u64 {
        v.push(i.wrapping_mul(3));
    }
    assert!(
        v.iter()
            .enumerate()
            .all(|(i, &x)| x == (i as u64).wrapping_mul(3)),
        "Vec content"
    );
    drop(v);

    let mut h: HashMap<u64, String> = HashMap::new();
    for i in 0..entries {
        h.insert(i, format!("value-{i}"));
    }
    for i in (0..entries).step_by(3) {
        h.remove(&i);
    }
    for i in 0..entries {
        match h.get(&i) {
            Some(s) => assert_eq!(*s, format!("value-{i}")),
            None => assert_eq!(i % 3, 0),
        }
    }
    drop(h);

    let mut b: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for i in 0..entries {
        b.insert(format!("{i:08}"), vec![i as u8; (i % 700) as usize]);
    }
    for (k, v) in &b {
        let i: u64 = k.parse().unwrap();
        assert_eq!(v.len(), (i % 700) as usize);
        assert!(v.iter().all(|&x| x == i as u8));
    }
    drop(b);

    let mut strings: Vec<String> = Vec::new();
    let mut rng = Rng(7);
    for round in 0..entries {
        let mut s = String::new();
        for _ in 0..rng.below(20) {
            s.push_str("spf");
            s.push(char::from(b'a' + (round % 26) as u8));
        }
        if strings.len() < 1000 {
            strings.push(s);
        } else {
            let i = rng.below(1000) as usize;
            let old = std::mem::replace(&mut strings[i], s);
            assert!(
                old.len() % 4 == 0 && old.matches("spf").count() == old.len() / 4,
                "{old}"
            );
        }
    }
}

struct Block {
    p: usize,
    layout: Layout,
    seed: u64,
}

/// Operations per thread for `random_blocks`: fewer in debug builds, where
/// filling and checking 64 MiB blocks byte by byte is slow.
pub const RANDOM_OPS: usize = if cfg!(debug_assertions) { 1_500 } else { 4_000 };

/// Random sizes (1 B to `max_size`) and alignments (1 B to 2 MiB),
/// alloc/realloc/free in random order on `threads` threads, handing blocks
/// between threads so that frees are often remote; every block is filled
/// and checked before it is freed, and zeroed blocks are checked zero.
pub fn random_blocks(threads: usize, ops: usize, max_size: usize) {
    let exchange: Mutex<Vec<Block>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..threads {
            let exchange = &exchange;
            s.spawn(move || {
                let mut rng = Rng(0xDEAD_BEEF ^ ((t as u64 + 1) * 0x1234_5679));
                let mut mine: Vec<Block> = Vec::new();
                for op in 0..ops {
                    match rng.below(10) {
                        0..=3 => {
                            let size = random_size(&mut rng, max_size);
                            let align = random_align(&mut rng);
                            let layout = Layout::from_size_align(size, align).unwrap();
                            let zeroed = rng.below(4) == 0;
                            // SAFETY: a valid non-zero layout.
                            let p = unsafe {
                                if zeroed {
                                    alloc_zeroed(layout)
                                } else {
                                    alloc(layout)
                                }
                            };
                            assert!(!p.is_null(), "allocation of {size} bytes failed");
                            assert_eq!(
                                p as usize % align,
                                0,
                                "{size} bytes misaligned for {align}"
                            );
                            if zeroed {
                                // SAFETY: a fresh block of `size` bytes.
                                let nonzero = unsafe { (0..size).find(|&i| p.add(i).read() != 0) };
                                assert_eq!(nonzero, None, "alloc_zeroed({size}, {align}) not zero");
                            }
                            let seed = rng.next();
                            // SAFETY: ours.
                            unsafe { fill(p, size, seed) };
                            mine.push(Block {
                                p: p as usize,
                                layout,
                                seed,
                            });
                        }
                        4..=5 if !mine.is_empty() => {
                            let b = mine.swap_remove(rng.below(mine.len() as u64) as usize);
                            // SAFETY: ours, filled by `fill`.
                            unsafe {
                                check(b.p as *const u8, b.layout.size(), b.seed, "before free")
                            };
                            // SAFETY: allocated with this layout.
                            unsafe { dealloc(b.p as *mut u8, b.layout) };
                        }
                        6 if !mine.is_empty() => {
                            let i = rng.below(mine.len() as u64) as usize;
                            let b = &mut mine[i];
                            let new_size = random_size(&mut rng, max_size);
                            // SAFETY: ours; the new size is non-zero.
                            let p = unsafe { realloc(b.p as *mut u8, b.layout, new_size) };
                            assert!(!p.is_null(), "realloc to {new_size} failed");
                            assert_eq!(p as usize % b.layout.align(), 0, "realloc lost alignment");
                            let kept = b.layout.size().min(new_size);
                            // SAFETY: the first `kept` bytes moved with the block.
                            unsafe { check(p, kept, b.seed, "after realloc") };
                            b.p = p as usize;
                            b.layout = Layout::from_size_align(new_size, b.layout.align()).unwrap();
                            b.seed = rng.next();
                            // SAFETY: ours.
                            unsafe { fill(p, new_size, b.seed) };
                        }
                        7 if !mine.is_empty() => {
                            // Hand a block to whichever thread takes it next.
                            let b = mine.swap_remove(rng.below(mine.len() as u64) as usize);
                            exchange.lock().unwrap().push(b);
                        }
                        8 => {
                            let taken = exchange.lock().unwrap().pop();
                            if let Some(b) = taken {
                                mine.push(b);
                            }
                        }
                        _ => {}
                    }
                    if op % 64 == 0 && mine.len() > 200 {
                        let b = mine.swap_remove(0);
                        // SAFETY: ours.
                        unsafe { check(b.p as *const u8, b.layout.size(), b.seed, "trim") };
                        // SAFETY: allocated with this layout.
                        unsafe { dealloc(b.p as *mut u8, b.layout) };
                    }
                }
                for b in mine {
                    // SAFETY: ours.
                    unsafe { check(b.p as *const u8, b.layout.size(), b.seed, "at the end") };
                    // SAFETY: allocated with this layout.
                    unsafe { dealloc(b.p as *mut u8, b.layout) };
                }
            });
        }
    });
    for b in exchange.into_inner().unwrap() {
        // SAFETY: handed over, never freed.
        unsafe {
            check(
                b.p as *const u8,
                b.layout.size(),
                b.seed,
                "left in exchange",
            )
        };
        // SAFETY: allocated with this layout.
        unsafe { dealloc(b.p as *mut u8, b.layout) };
    }
}

fn random_size(rng: &mut Rng, max: usize) -> usize {
    let cap = match rng.below(100) {
        0..=69 => 1024,
        70..=89 => 256 << 10,
        90..=98 => 4 << 20,
        _ => max,
    };
    1 + rng.below(cap.min(max) as u64) as usize
}

fn random_align(rng: &mut Rng) -> usize {
    match rng.below(20) {
        0 => 1 << (17 + rng.below(5)), // 128 KiB .. 2 MiB
        1..=3 => 1 << rng.below(17),   // 1 B .. 64 KiB
        _ => 8,
    }
}
