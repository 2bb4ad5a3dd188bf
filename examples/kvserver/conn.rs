//! A connection's input: request lines and data blocks read from one
//! buffer, with the protocol's limits, and a counting writer for its
//! output.
//!
//! Invariants:
//! - C1 `buf[start..end]` holds the bytes read and not yet consumed; a
//!   line or block handed out has been consumed (the next read starts
//!   after it).
//! - C2 the buffer never grows past [`MAX_GET_LINE`] + a read's worth: a
//!   line longer than its limit is refused before the buffer grows.
//! - C3 a data block goes straight from the buffer and the socket into the
//!   item's own `Vec` (sized once, written once from user mode before the
//!   kernel writes into it, never copied again).

use crate::protocol::{MAX_GET_LINE, MAX_LINE};
use std::io::{self, Read, Write};

/// Why no line was read.
#[derive(Debug)]
pub enum LineError {
    /// The peer closed the connection (mid-line or between lines).
    Closed,
    /// No newline within the limit (`CLIENT_ERROR line too long`).
    TooLong,
    Io(io::Error),
}

impl From<io::Error> for LineError {
    fn from(e: io::Error) -> Self {
        LineError::Io(e)
    }
}

/// A data block, or the evidence that the client sent something else.
#[derive(Debug)]
pub enum Block {
    Data(Vec<u8>),
    /// The block was not followed by `\r\n`; the two bytes read in its
    /// place were consumed, and the rest of that line too.
    BadChunk,
}

const INITIAL_BUF: usize = 16 << 10;

/// The input side of a connection.
pub struct Reader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes read from `inner` since the last [`Reader::take_count`].
    count: u64,
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Self {
        Reader {
            inner,
            buf: vec![0; INITIAL_BUF],
            start: 0,
            end: 0,
            count: 0,
        }
    }

    /// Whether bytes are waiting in the buffer (a pipelined request):
    /// replies are flushed only when none are.
    pub fn has_buffered(&self) -> bool {
        self.start < self.end
    }

    /// Bytes read since the last call.
    pub fn take_count(&mut self) -> u64 {
        std::mem::take(&mut self.count)
    }

    /// Reads more bytes after `end`, making room first; `Ok(0)` at EOF.
    fn fill(&mut self) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let len = (self.buf.len() * 2).min(MAX_GET_LINE + INITIAL_BUF);
                self.buf.resize(len, 0);
            }
        }
        // C2: a line past its limit was refused before the buffer filled.
        debug_assert!(self.end < self.buf.len(), "reader buffer full");
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    self.count += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next request line, without its `\n` or `\r\n`. A line is too
    /// long past [`MAX_LINE`] bytes ([`MAX_GET_LINE`] for retrievals),
    /// however it arrives.
    pub fn read_line(&mut self) -> Result<&[u8], LineError> {
        let mut scanned = 0;
        loop {
            let pending = &self.buf[self.start..self.end];
            let limit = if pending.starts_with(b"get ") || pending.starts_with(b"gets ") {
                MAX_GET_LINE
            } else {
                MAX_LINE
            };
            if let Some(i) = pending[scanned..].iter().position(|&b| b == b'\n') {
                if scanned + i > limit {
                    return Err(LineError::TooLong);
                }
                let nl = self.start + scanned + i;
                let line_start = self.start;
                self.start = nl + 1;
                let mut line = &self.buf[line_start..nl];
                if let [rest @ .., b'\r'] = line {
                    line = rest;
                }
                return Ok(line);
            }
            scanned = pending.len();
            if pending.len() > limit {
                return Err(LineError::TooLong);
            }
            if self.fill()? == 0 {
                return Err(LineError::Closed);
            }
        }
    }

    /// Makes at least `n` bytes available in the buffer (`n` is small).
    fn want(&mut self, n: usize) -> io::Result<()> {
        while self.end - self.start < n {
            if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }

    /// A data block of `len` bytes and its `\r\n` (C3).
    ///
    /// The block's buffer is zero-filled before the kernel writes into it.
    /// Under `SPF_COMMIT=touch`, a fresh large block is committed on first
    /// touch by spf's `SIGSEGV` handler, and the handler sees only faults
    /// taken in user mode: `recv` into an untouched page fails with
    /// `EFAULT` instead. Writing the buffer first commits it (and costs
    /// every allocator the same `memset`). Not `vec![0; len]`: that asks
    /// for zeroed memory, which a fresh region is already, untouched.
    pub fn read_block(&mut self, len: usize) -> io::Result<Block> {
        #[expect(
            clippy::slow_vector_initialization,
            reason = "vec![0; len] would leave a fresh region untouched"
        )]
        let mut data = {
            let mut v = Vec::with_capacity(len);
            v.resize(len, 0);
            v
        };
        let buffered = (self.end - self.start).min(len);
        data[..buffered].copy_from_slice(&self.buf[self.start..self.start + buffered]);
        self.start += buffered;
        self.inner.read_exact(&mut data[buffered..])?;
        self.count += (len - buffered) as u64;
        self.want(2)?;
        let end = [self.buf[self.start], self.buf[self.start + 1]];
        self.start += 2;
        if end == *b"\r\n" {
            return Ok(Block::Data(data));
        }
        if end[1] != b'\n' {
            // Back in step at the next line: discard the rest of this one.
            self.skip_line()?;
        }
        Ok(Block::BadChunk)
    }

    /// Discards input up to and including the next `\n` (or up to
    /// `MAX_LINE` bytes, whichever comes first).
    fn skip_line(&mut self) -> io::Result<()> {
        let mut skipped = 0;
        loop {
            let pending = &self.buf[self.start..self.end];
            if let Some(i) = pending.iter().position(|&b| b == b'\n') {
                self.start += i + 1;
                return Ok(());
            }
            skipped += pending.len();
            self.start = self.end;
            if skipped > MAX_LINE || self.fill()? == 0 {
                return Ok(());
            }
        }
    }

    /// Discards `n` bytes: a refused command's data block.
    pub fn skip(&mut self, mut n: usize) -> io::Result<()> {
        while n > 0 {
            if self.start == self.end && self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let k = (self.end - self.start).min(n);
            self.start += k;
            n -= k;
        }
        Ok(())
    }
}

/// A writer that counts the bytes it passes on.
pub struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Counting<W> {
    pub fn new(inner: W) -> Self {
        Counting { inner, count: 0 }
    }

    /// Bytes written since the last call.
    pub fn take_count(&mut self) -> u64 {
        std::mem::take(&mut self.count)
    }
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(b)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most `step` bytes per read.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn reader(data: &[u8], step: usize) -> Reader<Trickle<'_>> {
        Reader::new(Trickle { data, step })
    }

    #[test]
    fn lines_and_blocks_in_any_split() {
        let input = b"set k 0 0 5\r\nhello\r\nget k\nset j 0 0 3\r\nabcd\r\nversion\r\n";
        for step in [1, 2, 3, 7, 64] {
            let mut r = reader(input, step);
            assert_eq!(r.read_line().unwrap(), b"set k 0 0 5");
            assert!(matches!(r.read_block(5).unwrap(), Block::Data(d) if d == b"hello"));
            assert_eq!(r.read_line().unwrap(), b"get k");
            assert_eq!(r.read_line().unwrap(), b"set j 0 0 3");
            assert!(matches!(r.read_block(3).unwrap(), Block::BadChunk));
            assert_eq!(r.read_line().unwrap(), b"version");
            assert!(matches!(r.read_line(), Err(LineError::Closed)));
            assert_eq!(r.take_count(), input.len() as u64);
        }
    }

    #[test]
    fn long_lines_are_refused_except_retrievals() {
        let mut long = vec![b'x'; MAX_LINE + 10];
        long.extend_from_slice(b"\r\n");
        assert!(matches!(
            reader(&long, 4096).read_line(),
            Err(LineError::TooLong)
        ));
        let mut get = b"get ".to_vec();
        for i in 0..3000 {
            get.extend_from_slice(format!("key{i} ").as_bytes());
        }
        get.extend_from_slice(b"\r\n");
        assert!(get.len() > MAX_LINE && get.len() < MAX_GET_LINE);
        let mut r = reader(&get, 1000);
        assert_eq!(r.read_line().unwrap(), &get[..get.len() - 2]);
    }

    #[test]
    fn skip_spans_reads() {
        let mut r = reader(b"0123456789version\r\n", 3);
        r.skip(10).unwrap();
        assert_eq!(r.read_line().unwrap(), b"version");
    }
}
