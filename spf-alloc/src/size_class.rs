//! Size classes: which block size serves a request, and which kind of page
//! holds blocks of that size.
//!
//! | classes | block sizes | spacing | page |
//! |---|---|---|---|
//! | 0–7   | 16, 32, …, 128 | 16 B | small page, 64 KiB |
//! | 8–31  | 160 … 8 KiB | 4 per doubling | small page, 64 KiB |
//! | 32–51 | 10 KiB … 256 KiB | 4 per doubling | medium page, 256 KiB (25 down to 1 block; a page's uncarved tail, up to 96 KiB in the 160 KiB class, is never touched) |
//! | —     | above 256 KiB, or alignment above 64 KiB | — | a large block: its own spf-core region |
//!
//! Past 128 B, the four classes of each doubling `(2^k, 2^(k+1)]` are
//! `2^k × 1.25, 1.5, 1.75, 2`, so a block is at most 25 % larger than the
//! request (bound W1); up to 128 B it is at most 15 B larger (16 B spacing).
//!
//! Alignment: every block size of a class is a multiple of the largest
//! power of two that divides it, and blocks start at multiples of the block
//! size from a 64 KiB-aligned page start. A request with alignment `a` takes
//! the first class at or above `max(size, a)` whose block size is a multiple
//! of `a` (at most four steps on), so its blocks are `a`-aligned.

/// Number of small classes (64 KiB pages).
pub const SMALL_CLASSES: usize = 32;
/// Number of small and medium classes.
pub const CLASSES: usize = 52;
/// The largest small block (the test below checks it against the table).
pub const SMALL_MAX: usize = 8 << 10;
/// The largest medium block; above this, requests are large.
pub const MEDIUM_MAX: usize = 256 << 10;
/// The largest alignment small and medium pages can give.
pub const MAX_PAGE_ALIGN: usize = 64 << 10;

/// Block sizes by class, and classes by `size.div_ceil(16)` up to 1 KiB:
/// one load each on the fast path. `const`s, not `static`s: code inlined
/// into other crates reaches a `static` of this crate through the GOT, one
/// more load on every allocation and free.
const BLOCK_SIZES: [u32; CLASSES] = {
    let mut t = [0u32; CLASSES];
    let mut c = 0;
    while c < CLASSES {
        t[c] = compute_block_size(c) as u32;
        c += 1;
    }
    t
};
const SMALL_CLASS_OF: [u8; 65] = {
    let mut t = [0u8; 65];
    let mut i = 1;
    while i <= 64 {
        t[i] = compute_class_of(i * 16) as u8;
        i += 1;
    }
    t
};

/// The block size of class `c`.
#[inline]
pub fn block_size(c: usize) -> usize {
    BLOCK_SIZES[c] as usize
}

/// The smallest class whose blocks hold `size` bytes (`1..=MEDIUM_MAX`).
#[inline]
pub fn class_of(size: usize) -> usize {
    debug_assert!(size > 0 && size <= MEDIUM_MAX);
    if size <= 1024 {
        SMALL_CLASS_OF[size.div_ceil(16)] as usize
    } else {
        compute_class_of(size)
    }
}

pub(crate) const fn compute_block_size(c: usize) -> usize {
    if c < 8 {
        (c + 1) * 16
    } else {
        let band = 7 + (c - 8) / 4;
        let sub = (c - 8) % 4;
        (1 << band) + ((sub + 1) << (band - 2))
    }
}

const fn compute_class_of(size: usize) -> usize {
    if size <= 128 {
        size.div_ceil(16) - 1
    } else {
        let s = size - 1;
        let band = (usize::BITS - 1 - s.leading_zeros()) as usize;
        let sub = (s >> (band - 2)) & 3;
        8 + (band - 7) * 4 + sub
    }
}

/// The class serving `size` bytes aligned to `align`, or `None` when the
/// request is large.
#[inline]
pub fn class_for(size: usize, align: usize) -> Option<usize> {
    if align <= 16 {
        // The table first, with one comparison: the common request. Size 0
        // indexes entry 0, class 0, as size 1 would.
        if size <= 1024 {
            return Some(SMALL_CLASS_OF[size.div_ceil(16)] as usize);
        }
        return (size <= MEDIUM_MAX).then(|| compute_class_of(size));
    }
    if align > MAX_PAGE_ALIGN {
        return None;
    }
    let s = size.max(align);
    if s > MEDIUM_MAX {
        return None;
    }
    let mut c = class_of(s);
    while c < CLASSES && block_size(c) % align != 0 {
        c += 1;
    }
    (c < CLASSES).then_some(c)
}

/// Whether class `c` lives in small (64 KiB) pages.
#[inline]
pub const fn is_small(c: usize) -> bool {
    c < SMALL_CLASSES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_increasing_and_ends_where_documented() {
        for c in 1..CLASSES {
            assert!(block_size(c) > block_size(c - 1));
        }
        assert_eq!(block_size(SMALL_CLASSES - 1), SMALL_MAX);
        assert_eq!(block_size(CLASSES - 1), MEDIUM_MAX);
        assert_eq!(block_size(8), 160);
    }

    #[test]
    fn every_size_gets_the_tightest_class_within_the_waste_bound() {
        for size in 1..=MEDIUM_MAX {
            let c = class_of(size);
            assert!(block_size(c) >= size, "size {size}");
            assert!(c == 0 || block_size(c - 1) < size, "size {size} not tight");
            if size > 128 {
                assert!(block_size(c) * 4 <= size * 5, "W1 broken at {size}");
            } else {
                assert!(block_size(c) - size < 16);
            }
        }
    }

    #[test]
    fn size_zero_takes_the_smallest_class() {
        assert_eq!(class_for(0, 1), Some(0));
        assert_eq!(class_for(0, 16), Some(0));
        assert_eq!(class_for(1024, 8), Some(class_of(1024)));
        assert_eq!(class_for(1025, 8), Some(class_of(1025)));
    }

    #[test]
    fn aligned_requests_get_aligned_block_sizes() {
        let mut align = 1;
        while align <= MAX_PAGE_ALIGN {
            for size in [1, 7, 100, 1000, 5000, 70_000, 200_000] {
                match class_for(size, align) {
                    Some(c) => {
                        assert!(block_size(c) >= size.max(align));
                        assert_eq!(
                            block_size(c) % align.max(16),
                            0,
                            "size {size} align {align}"
                        );
                    }
                    None => assert!(size.max(align) > MEDIUM_MAX),
                }
            }
            align *= 2;
        }
        assert_eq!(class_for(10, 128 << 10), None);
        assert_eq!(class_for(MEDIUM_MAX + 1, 8), None);
    }
}
