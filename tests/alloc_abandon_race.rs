//! Remote frees racing with abandonment and adoption: short-lived producer
//! threads hand their blocks to long-lived consumers and exit while the
//! consumers are still freeing them (the frees land on pages being
//! abandoned, or already abandoned, or adopted meanwhile by a third thread
//! that allocates the same sizes). Every block's bytes are checked, nothing
//! stays allocated, and the pages emptied by the consumers go back to the
//! pool (the free that empties an abandoned page gives it back).

mod common;

use common::alloc_suite::{check, fill, Rng};
use spf::SpfAlloc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

const ROUNDS: usize = if cfg!(debug_assertions) { 40 } else { 150 };
const PRODUCERS: usize = 6;
const CONSUMERS: usize = 3;
const BLOCKS: usize = 3_000;

fn size(rng: &mut Rng) -> usize {
    if rng.below(64) == 0 {
        10_000 + rng.below(60_000) as usize // medium pages too
    } else {
        1 + rng.below(2_000) as usize
    }
}

/// A block made by a producer: its bytes come from `seed`.
struct Block {
    bytes: Vec<u8>,
    seed: u64,
}

fn make(rng: &mut Rng, seed: u64) -> Block {
    let len = size(rng);
    let mut bytes = Vec::with_capacity(len);
    // SAFETY: `len` bytes of capacity; set_len after they are written.
    unsafe {
        fill(bytes.as_mut_ptr(), len, seed);
        bytes.set_len(len);
    }
    Block { bytes, seed }
}

#[test]
fn remote_frees_race_with_abandonment_and_adoption() {
    // Warm up: channel buffers, thread stacks, first pages.
    drop((0..1000).map(|i| vec![i as u8; 100]).collect::<Vec<_>>());
    let before = spf::alloc_stats();
    let stop = AtomicBool::new(false);
    let (tx, rx) = sync_channel::<Vec<Block>>(64);
    let rx = std::sync::Mutex::new(rx);
    std::thread::scope(|s| {
        let consumers: Vec<_> = (0..CONSUMERS)
            .map(|_| {
                s.spawn(|| loop {
                    let batch = rx.lock().unwrap().recv();
                    let Ok(batch) = batch else { return };
                    for b in batch {
                        // SAFETY: the Vec's initialised bytes.
                        unsafe {
                            check(b.bytes.as_ptr(), b.bytes.len(), b.seed, "handed-off block")
                        };
                    }
                })
            })
            .collect();
        // The adopter: allocates the producers' sizes, so it adopts their
        // abandoned pages while consumers free into them.
        let adopter = s.spawn(|| {
            let mut rng = Rng(7);
            let mut kept: Vec<Block> = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                kept.push(make(&mut rng, n));
                n += 1;
                if kept.len() == 500 {
                    for b in kept.drain(..) {
                        // SAFETY: as above.
                        unsafe { check(b.bytes.as_ptr(), b.bytes.len(), b.seed, "adopter block") };
                    }
                }
            }
        });
        for round in 0..ROUNDS {
            let producers: Vec<_> = (0..PRODUCERS)
                .map(|t| {
                    let tx = tx.clone();
                    s.spawn(move || {
                        let id = (round * PRODUCERS + t) as u64;
                        let mut rng = Rng(id + 1);
                        let mut batch = Vec::new();
                        for i in 0..BLOCKS {
                            batch.push(make(&mut rng, id << 20 | i as u64));
                            if batch.len() == 500 {
                                tx.send(std::mem::take(&mut batch)).unwrap();
                            }
                        }
                        tx.send(batch).unwrap();
                        // Exits now: its heap is abandoned while the
                        // consumers still free its blocks.
                    })
                })
                .collect();
            for p in producers {
                p.join().unwrap();
            }
        }
        drop(tx);
        // Consumers end when the channel is drained; then the adopter.
        for c in consumers {
            c.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        // Joined explicitly: a scope's own wait does not wait for the
        // thread's exit (its heap's abandonment runs after its closure).
        adopter.join().unwrap();
    });
    let after = spf::alloc_stats();
    eprintln!("before:\n{before}\nafter:\n{after}");
    let leaked = after.allocated.saturating_sub(before.allocated);
    assert!(leaked < 1 << 20, "{leaked} bytes still allocated");
    // Every producer's page was emptied by remote frees after (or while)
    // its heap was abandoned; pages left in use would show here. A few
    // pages stay with the live heaps (this thread's, the pool's spares).
    let grown = after.active.saturating_sub(before.active);
    assert!(
        grown <= 8 << 20,
        "{grown} more bytes of pages in use after every block was freed: emptied abandoned pages were not given back"
    );
}
