//! A churn of tagged blocks for the allocator's race tests: owner threads
//! allocate blocks, write a pattern derived from a tag into every byte,
//! keep some and send the rest to remote freer threads; whoever frees a
//! block first checks its bytes. What the load exercises (hand-over of
//! pages, holes) is up to the caller's sizes, proportions and decay time.
#![allow(dead_code)] // each test binary uses its own subset

use super::alloc_suite::Rng;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::sync::Mutex;

/// Writes `tag`'s pattern into every byte of `b`.
pub fn fill_tagged(b: &mut [u8], tag: u64) {
    for (i, x) in b.iter_mut().enumerate() {
        *x = (tag as usize).wrapping_mul(31).wrapping_add(i) as u8;
    }
}

/// Whether every byte of `b` still holds `tag`'s pattern.
pub fn is_tagged(b: &[u8], tag: u64) -> bool {
    b.iter()
        .enumerate()
        .all(|(i, &x)| x == (tag as usize).wrapping_mul(31).wrapping_add(i) as u8)
}

/// The shape of one churn.
pub struct Churn {
    /// Owner `t`'s generator starts from `seed + t`.
    pub seed: u64,
    /// Rounds per owner.
    pub rounds: u64,
    /// Blocks each owner allocates per round.
    pub blocks_per_round: u64,
    /// A block's length, drawn per block.
    pub len: fn(&mut Rng) -> usize,
    /// Out of eight blocks, how many go to a remote freer.
    pub remote_eighths: u64,
    /// Live blocks an owner keeps after each round (it frees the others,
    /// chosen at random, itself).
    pub keep: usize,
    /// Every this many rounds an owner sleeps 2 ms, so that decay time
    /// passes (0: never).
    pub nap_every: u64,
}

/// Runs `c` with 4 owners and 2 remote freers; returns how many blocks
/// had lost their bytes when freed.
pub fn owners_and_remote_freers(c: &Churn) -> usize {
    let (tx, rx) = channel::<(u64, Box<[u8]>)>();
    let rx = Mutex::new(rx);
    let bad = AtomicUsize::new(0);
    let verify = |b: &[u8], tag: u64, bad: &AtomicUsize| {
        if !is_tagged(b, tag) {
            bad.fetch_add(1, Ordering::Relaxed);
        }
    };
    std::thread::scope(|s| {
        for _ in 0..2 {
            let (rx, bad) = (&rx, &bad);
            s.spawn(move || loop {
                let msg = rx.lock().unwrap().recv();
                let Ok((tag, b)) = msg else { return };
                verify(&b, tag, bad);
            });
        }
        for t in 0..4u64 {
            let (tx, bad) = (tx.clone(), &bad);
            s.spawn(move || {
                let mut rng = Rng(c.seed + t);
                let mut mine: Vec<(u64, Box<[u8]>)> = Vec::new();
                for round in 0..c.rounds {
                    for i in 0..c.blocks_per_round {
                        let tag = (t << 48) | (round << 16) | i;
                        let mut b = vec![0u8; (c.len)(&mut rng)].into_boxed_slice();
                        fill_tagged(&mut b, tag);
                        if rng.below(8) < c.remote_eighths {
                            tx.send((tag, b)).unwrap();
                        } else {
                            mine.push((tag, b));
                        }
                    }
                    while mine.len() > c.keep {
                        let k = rng.below(mine.len() as u64) as usize;
                        let (tag, b) = mine.swap_remove(k);
                        verify(&b, tag, bad);
                    }
                    if c.nap_every > 0 && round % c.nap_every == 0 {
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                }
                for (tag, b) in mine {
                    verify(&b, tag, bad);
                }
            });
        }
        drop(tx);
    });
    bad.into_inner()
}
