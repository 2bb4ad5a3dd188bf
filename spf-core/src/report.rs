//! Messages written without allocating: a fixed buffer that implements
//! [`core::fmt::Write`], flushed to standard error with one `write(2)`.
//!
//! `core::fmt` with integers and string slices neither allocates nor takes a
//! lock, so formatting into this buffer is safe inside the fault handler and
//! inside the allocator. Output longer than the buffer is cut, never lost
//! silently: the last bytes become `...`.

use crate::sys;
use core::fmt;

/// A fixed-capacity text buffer.
pub struct StackWriter<const N: usize> {
    buf: [u8; N],
    len: usize,
    truncated: bool,
}

impl<const N: usize> StackWriter<N> {
    pub const fn new() -> Self {
        StackWriter {
            buf: [0; N],
            len: 0,
            truncated: false,
        }
    }

    #[cfg(test)]
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Writes the buffer to standard error.
    pub fn flush_to_stderr(&mut self) {
        if self.truncated && N >= 4 {
            self.buf[N - 4..].copy_from_slice(b"...\n");
            self.len = N;
        }
        sys::write_stderr(&self.buf[..self.len]);
        self.len = 0;
        self.truncated = false;
    }
}

impl<const N: usize> Default for StackWriter<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Write for StackWriter<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = N - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() {
            self.truncated = true;
        }
        Ok(())
    }
}

/// Writes one formatted message to standard error without allocating
/// (public as `spf_core::report`, for code that must not allocate, such as
/// an allocator). Never inlined, so that
/// only one buffer is ever on the stack however many `report!` calls a
/// function has: the fault handler may run on std's alternate signal stack
/// (8 KiB, of which the kernel's signal frame takes 3 KiB or more), and a
/// debug build keeps a separate slot for every inlined buffer.
#[cold]
#[inline(never)]
pub fn emit(args: fmt::Arguments<'_>) {
    let mut w = StackWriter::<512>::new();
    let _ = fmt::Write::write_fmt(&mut w, args);
    w.flush_to_stderr();
}

/// Formats a message and writes it to standard error, without allocating.
macro_rules! report {
    ($($arg:tt)*) => {
        $crate::report::emit(format_args!($($arg)*))
    };
}
pub(crate) use report;

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn formats_and_truncates() {
        let mut w = StackWriter::<8>::new();
        write!(w, "{}", 1234).unwrap();
        assert_eq!(w.as_bytes(), b"1234");
        write!(w, "56789").unwrap();
        assert_eq!(w.as_bytes(), b"12345678");
        assert!(w.truncated);
    }
}
