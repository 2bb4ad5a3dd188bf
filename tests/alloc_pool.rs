//! The page pool between thread generations: a thread that exits leaves
//! its empty pages in the pool with their memory (for the decay time), and
//! the threads after it reuse that memory instead of faulting in fresh
//! pages — a page goes back to the class it last served where one is
//! pooled, and a wholly free segment stays until its memory has decayed;
//! the free blocks of an exited thread's abandoned pages are handed out by
//! the thread that adopts them.

mod common;

use common::{ran_alone, serial};
use spf::SpfAlloc;

#[global_allocator]
static GLOBAL: SpfAlloc = SpfAlloc::new();

/// Medium pages are 256 KiB, 256 KiB-aligned.
const MEDIUM_PAGE: usize = 256 << 10;

/// Resident bytes of `len` bytes at `start` (`mincore`).
fn resident(start: usize, len: usize) -> usize {
    let mut map = vec![0u8; len.div_ceil(4096)];
    // SAFETY: `map` has one byte per 4 KiB page of the range, which lies
    // in a segment: spf keeps its address space mapped (reserved) for the
    // process's life, so `mincore` never sees an unmapped page.
    let rc = unsafe { libc::mincore(start as *mut libc::c_void, len, map.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    map.iter().filter(|&&b| b & 1 != 0).count() * 4096
}

/// Page faults this thread has taken so far.
fn thread_faults() -> i64 {
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid rusage to fill.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
    ru.ru_minflt
}

/// Writes every byte of `b` (so that all its memory is resident).
fn fill(b: &mut [u8], value: u8) {
    for x in b.iter_mut() {
        *x = value;
    }
    std::hint::black_box(b);
}

/// A thread allocates `n` blocks of `size` bytes, writes every byte, and
/// exits having freed them all (its pages go to the pool). Returns where
/// the blocks were.
fn freed_by_an_exited_thread(n: usize, size: usize) -> Vec<usize> {
    std::thread::spawn(move || {
        let mut v: Vec<Vec<u8>> = (0..n).map(|_| vec![0u8; size]).collect();
        for b in v.iter_mut() {
            fill(b, 5);
        }
        v.iter().map(|b| b.as_ptr() as usize).collect()
    })
    .join()
    .unwrap()
}

#[test]
fn a_pooled_page_goes_back_to_the_class_it_served() {
    if ran_alone("a_pooled_page_goes_back_to_the_class_it_served") {
        return;
    }
    spf::set_decay_ms(60_000);
    // Medium sizes of six classes; the first class's page is given back
    // first when the thread exits (its heap is walked by class), so the
    // five others lie before it in the pool, most recently freed first.
    const SIZES: [usize; 6] = [
        20 << 10,
        40 << 10,
        72 << 10,
        100 << 10,
        150 << 10,
        200 << 10,
    ];
    let first = std::thread::spawn(|| {
        let mut blocks: Vec<Vec<u8>> = SIZES.iter().map(|&n| vec![0u8; n]).collect();
        for (i, b) in blocks.iter_mut().enumerate() {
            fill(b, i as u8 + 1);
        }
        blocks[0].as_ptr() as usize
    })
    .join()
    .unwrap();
    let (second, faults) = std::thread::spawn(|| {
        let mut b = vec![0u8; SIZES[0]];
        let before = thread_faults();
        fill(&mut b, 9);
        (b.as_ptr() as usize, thread_faults() - before)
    })
    .join()
    .unwrap();
    spf::set_decay_ms(1000);
    eprintln!("first block {first:#x}, the next thread's {second:#x}: {faults} faults filling it");
    assert_eq!(
        second & !(MEDIUM_PAGE - 1),
        first & !(MEDIUM_PAGE - 1),
        "the next thread's {} KiB block is not in the pooled page that served its class",
        SIZES[0] >> 10
    );
    assert_eq!(
        faults, 0,
        "filling a block of a page whose memory is resident took {faults} faults"
    );
}

#[test]
fn a_free_segment_keeps_its_memory_until_it_decays() {
    let _serial = serial();
    spf::set_decay_ms(60_000);
    // 64 blocks of 200 KiB: 64 medium pages (one block each), five
    // segments, more than the two free segments' worth the pool keeps
    // purged.
    const SIZE: usize = 200 << 10;
    const N: usize = 64;
    let blocks = freed_by_an_exited_thread(N, SIZE);
    // The thread freed every block and exited: all its pages are pooled.
    let total = N * SIZE;
    let freed = blocks.iter().map(|&b| resident(b, SIZE)).sum::<usize>();
    let regions = spf::alloc_stats().live_regions;
    eprintln!(
        "{} of {} KiB still resident after the thread exited, {regions} regions",
        freed >> 10,
        total >> 10
    );
    assert!(
        freed >= total * 9 / 10,
        "only {} of {} KiB stayed resident: free segments went back before the decay time",
        freed >> 10,
        total >> 10
    );

    // A short decay time, which applies to what is pooled already; decay
    // runs on allocator activity: small blocks only (the vector holding
    // them too), so that no medium page is taken back meanwhile.
    spf::set_decay_ms(20);
    std::thread::sleep(std::time::Duration::from_millis(100));
    std::thread::spawn(|| {
        let mut churn: Vec<Box<[u8; 48]>> = Vec::with_capacity(1000);
        for _ in 0..80 {
            churn.extend((0..1000).map(|_| Box::new([0u8; 48])));
            std::hint::black_box(&churn);
            churn.clear();
        }
    })
    .join()
    .unwrap();
    let decayed = blocks.iter().map(|&b| resident(b, SIZE)).sum::<usize>();
    let after = spf::alloc_stats().live_regions;
    spf::set_decay_ms(1000);
    eprintln!(
        "{} KiB resident after the decay time, {after} regions (was {regions})",
        decayed >> 10
    );
    assert!(
        decayed <= total / 10,
        "{} of {} KiB still resident after the decay time",
        decayed >> 10,
        total >> 10
    );
    assert!(
        after < regions,
        "free segments were not given back after their memory decayed: {regions} regions before, {after} after"
    );
}

#[test]
fn a_thread_freeing_very_much_leaves_at_most_32_free_segments_resident() {
    if ran_alone("a_thread_freeing_very_much_leaves_at_most_32_free_segments_resident") {
        return;
    }
    spf::set_decay_ms(60_000);
    // 200 KiB blocks, one to a medium page, fifteen to a segment: 64
    // segments' worth, all freed as the thread exits.
    const SIZE: usize = 200 << 10;
    const PER_SEGMENT: usize = 15;
    const N: usize = 64 * PER_SEGMENT;
    let blocks = freed_by_an_exited_thread(N, SIZE);
    let kept = blocks.iter().map(|&b| resident(b, SIZE)).sum::<usize>();
    let segment_bytes = PER_SEGMENT * SIZE;
    eprintln!(
        "{} of {} MiB resident after the thread exited: {:.1} segments' worth",
        kept >> 20,
        (N * SIZE) >> 20,
        kept as f64 / segment_bytes as f64
    );
    // 32 wholly free segments kept dirty, a little more for the two kept
    // purged and for pages still partly used when the segment count hit 32.
    assert!(
        kept <= 36 * segment_bytes,
        "{} MiB of freed segments stayed resident: more than 32 segments' worth",
        kept >> 20
    );
    assert!(
        kept >= 24 * segment_bytes,
        "only {} MiB stayed resident: free segments went back before the decay time",
        kept >> 20
    );
    spf::set_decay_ms(1000);
}

/// A medium page can hold a single block (160–256 KiB classes), so a
/// thread whose live blocks of a class fill several pages empties one on
/// every free. The heap keeps one empty page a class at the front of its
/// queue: replacing a block (free one, allocate one) then takes no page
/// from the pool. Before it did, every free gave the page to the pool and
/// every allocation took one back (one page taken per replacement).
#[test]
fn replacing_a_one_block_page_takes_no_page_from_the_pool() {
    if ran_alone("replacing_a_one_block_page_takes_no_page_from_the_pool") {
        return;
    }
    const SIZE: usize = 200 << 10; // the 224 KiB class: one a page
    const LIVE: usize = 8;
    const ROUNDS: usize = 1000;
    std::thread::spawn(|| {
        let mut live: Vec<Vec<u8>> = (0..LIVE).map(|i| vec![i as u8; SIZE]).collect();
        let pages: std::collections::HashSet<usize> = live
            .iter()
            .map(|b| b.as_ptr() as usize & !(MEDIUM_PAGE - 1))
            .collect();
        assert_eq!(pages.len(), LIVE, "{SIZE}-byte blocks share pages");
        let before = spf::alloc_stats().pages_taken;
        for round in 0..ROUNDS {
            let i = round % LIVE;
            drop(std::mem::take(&mut live[i]));
            live[i] = vec![round as u8; SIZE];
        }
        let taken = spf::alloc_stats().pages_taken - before;
        eprintln!("{ROUNDS} replacements took {taken} pages");
        assert!(
            taken <= 2,
            "{ROUNDS} replacements of a {SIZE}-byte block took {taken} pages from the pool"
        );
        for (i, b) in live.iter().enumerate() {
            let round = ROUNDS - LIVE + i;
            assert!(
                b.iter().all(|&x| x == round as u8),
                "block {i} lost its bytes"
            );
        }
    })
    .join()
    .unwrap();
}

/// An abandoned medium page of one block is full until that block is
/// freed (its last free gives the page back): another thread's allocation
/// of the class takes a page from the pool rather than adopt it. Before,
/// it adopted every full abandoned page of the class first, moving each to
/// its own queue for nothing.
#[test]
fn a_full_abandoned_page_is_not_adopted() {
    if ran_alone("a_full_abandoned_page_is_not_adopted") {
        return;
    }
    const SIZE: usize = 200 << 10; // the 224 KiB class: one a page
    let abandoned_medium = || {
        // SAFETY: the only other live thread is parked on a channel.
        let r = unsafe { spf::residency::residency() };
        r.pages[3][1].pages
    };
    let kept = std::thread::spawn(|| vec![7u8; SIZE]).join().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<usize>();
    let other = std::thread::spawn(move || {
        let b = vec![9u8; SIZE];
        done_tx.send(b.as_ptr() as usize).unwrap();
        rx.recv().unwrap();
        assert!(b.iter().all(|&x| x == 9));
    });
    let taken = done_rx.recv().unwrap();
    let abandoned = abandoned_medium();
    tx.send(()).unwrap();
    other.join().unwrap();
    eprintln!(
        "kept block {:#x}, the other thread's {taken:#x}, {abandoned} abandoned medium pages",
        kept.as_ptr() as usize
    );
    assert_ne!(
        taken & !(MEDIUM_PAGE - 1),
        kept.as_ptr() as usize & !(MEDIUM_PAGE - 1)
    );
    assert_eq!(
        abandoned, 1,
        "the full abandoned page holding the kept block was adopted by a thread that could not use it"
    );
    assert!(kept.iter().all(|&x| x == 7));
}

/// A thread that exits leaves its own frees on its abandoned pages' lists
/// (`local_free`); the thread that adopts such a page hands them out,
/// rather than new memory.
#[test]
fn an_exited_threads_own_frees_are_handed_out_by_the_adopter() {
    if ran_alone("an_exited_threads_own_frees_are_handed_out_by_the_adopter") {
        return;
    }
    use std::alloc::{alloc, dealloc, Layout};
    use std::collections::HashSet;
    // The 2,048 B class: 32 blocks a 64 KiB page, so 64 blocks fill two
    // pages with nothing carved left over.
    let layout = Layout::from_size_align(1_900, 8).unwrap();
    let (live, freed): (Vec<usize>, Vec<usize>) = std::thread::spawn(move || {
        // SAFETY: a valid layout; each block is freed once, with it.
        let blocks: Vec<usize> = (0..64)
            .map(|_| unsafe { alloc(std::hint::black_box(layout)) } as usize)
            .collect();
        assert!(blocks.iter().all(|&p| p != 0));
        let (mut live, mut freed) = (Vec::new(), Vec::new());
        for (i, &p) in blocks.iter().enumerate() {
            if i % 2 == 1 {
                // SAFETY: as above: a local free, onto its page's own list.
                unsafe { dealloc(p as *mut u8, layout) };
                freed.push(p);
            } else {
                live.push(p);
            }
        }
        // Exits with half of each page live: both pages are abandoned.
        (live, freed)
    })
    .join()
    .unwrap();
    let n = freed.len();
    let got: Vec<usize> = std::thread::spawn(move || {
        // SAFETY: as above.
        (0..n)
            .map(|_| unsafe { alloc(std::hint::black_box(layout)) } as usize)
            .collect()
    })
    .join()
    .unwrap();
    let freed: HashSet<usize> = freed.into_iter().collect();
    let fresh = got.iter().filter(|p| !freed.contains(p)).count();
    for p in got.into_iter().chain(live) {
        // SAFETY: live blocks of `layout`, freed once (remote frees into
        // abandoned pages).
        unsafe { dealloc(p as *mut u8, layout) };
    }
    assert_eq!(
        fresh, 0,
        "{fresh} of the adopter's {n} blocks were not the exited thread's own frees"
    );
}
