//! The memcached text protocol: one request line parsed into a [`Request`],
//! and every error reply as a [`ProtocolError`].
//!
//! Commands, as memcached's `protocol.txt` gives them:
//!
//! ```text
//! get|gets <key>*                                  VALUE <key> <flags> <bytes> [<cas>] … END
//! set|add|replace|append|prepend <key> <flags> <exptime> <bytes> [noreply]
//! cas <key> <flags> <exptime> <bytes> <cas unique> [noreply]
//! delete <key> [0] [noreply]                       DELETED | NOT_FOUND
//! incr|decr <key> <delta> [noreply]                <value> | NOT_FOUND
//! touch <key> <exptime> [noreply]                  TOUCHED | NOT_FOUND
//! flush_all [<delay>] [noreply]                    OK
//! version | verbosity <level> [noreply] | stats [settings|reset] | quit
//! ```
//!
//! Tokens are separated by runs of spaces; the line's `\r\n` (or a bare
//! `\n`) is already stripped.
//!
//! Invariants:
//! - P1 parsing allocates only the key of a storage command, which must
//!   outlive the line (the data block is read after it).
//! - P2 every malformed line maps to exactly one [`ProtocolError`]; its
//!   [`reply`](ProtocolError::reply) is what memcached sends, and its
//!   [`swallow`](ProtocolError::swallow) is the number of bytes (data block
//!   and its `\r\n`) the client sends after the line, which the connection
//!   discards to stay in step. Unlike memcached, a storage command whose
//!   line is malformed but whose `<bytes>` field is a valid length has its
//!   block swallowed too: otherwise the block would be read as commands,
//!   and a value that happens to read `delete k` would run.
//! - P3 `version`, `quit` and `stats` take no `noreply` (memcached < 1.6):
//!   any extra token is an error.

use crate::store::StoreMode;

/// Longest key memcached accepts.
pub const MAX_KEY_LEN: usize = 250;
/// Largest data block accepted (memcached's default item size limit).
pub const MAX_VALUE_LEN: usize = 1 << 20;
/// Longest request line, except retrievals (memcached's limit).
pub const MAX_LINE: usize = 2048;
/// Longest `get`/`gets` line: many keys fit in one multi-get.
pub const MAX_GET_LINE: usize = 64 << 10;
/// Tokens kept for commands other than retrievals; a line with more is
/// malformed.
const MAX_TOKENS: usize = 8;

/// One parsed request line: a storage command, whose data block is still
/// to be read (its key is owned, P1), or any other request.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    Store(StoreHeader),
    Request(Request<'a>),
}

/// A request other than a storage command, borrowing its line.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// `get` (`with_cas` false) or `gets` (true).
    Get {
        keys: Keys<'a>,
        with_cas: bool,
    },
    Delete {
        key: &'a [u8],
        noreply: bool,
    },
    /// `incr` (`incr` true) or `decr`.
    Arith {
        key: &'a [u8],
        delta: u64,
        incr: bool,
        noreply: bool,
    },
    Touch {
        key: &'a [u8],
        exptime: i64,
        noreply: bool,
    },
    FlushAll {
        delay: u32,
        noreply: bool,
    },
    Version,
    Verbosity {
        level: u32,
        noreply: bool,
    },
    Stats(StatsGroup),
    Quit,
}

/// The keys of a retrieval, validated (at least one, each a valid key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keys<'a>(&'a [u8]);

impl<'a> Keys<'a> {
    /// The keys in request order.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> {
        tokens(self.0)
    }
}

/// The line of a storage command.
#[derive(Debug, PartialEq, Eq)]
pub struct StoreHeader {
    pub mode: StoreMode,
    pub key: Box<[u8]>,
    pub flags: u32,
    pub exptime: i64,
    /// Length of the data block that follows (≤ [`MAX_VALUE_LEN`]).
    pub len: usize,
    pub noreply: bool,
}

/// What `stats` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsGroup {
    General,
    Settings,
    Reset,
}

/// Every error reply of the protocol (P2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// Unknown command or empty line: `ERROR`.
    UnknownCommand,
    /// Wrong number of tokens, a bad key or a bad number; `swallow` bytes of
    /// data block follow.
    BadFormat { swallow: usize },
    /// `delete <key> <time>` with a time other than 0.
    DeleteTime,
    /// `incr`/`decr` with a delta that is not a 64-bit unsigned number.
    InvalidDelta,
    /// `touch` with an exptime that is not a number.
    InvalidExptime,
    /// A data block longer than [`MAX_VALUE_LEN`], swallowed.
    TooLarge { swallow: usize },
    /// The data block is not followed by `\r\n`.
    BadDataChunk,
    /// `incr`/`decr` on a value that is not a decimal number.
    NonNumeric,
    /// The item cannot fit under the memory limit, or an append would
    /// make it larger than the item limit.
    OutOfMemory,
    /// A request line longer than the limit; the connection is closed.
    LineTooLong,
}

impl ProtocolError {
    /// The reply line, `\r\n` included.
    pub fn reply(self) -> &'static [u8] {
        match self {
            Self::UnknownCommand => b"ERROR\r\n",
            Self::BadFormat { .. } => b"CLIENT_ERROR bad command line format\r\n",
            Self::DeleteTime => {
                b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
            }
            Self::InvalidDelta => b"CLIENT_ERROR invalid numeric delta argument\r\n",
            Self::InvalidExptime => b"CLIENT_ERROR invalid exptime argument\r\n",
            Self::TooLarge { .. } => b"SERVER_ERROR object too large for cache\r\n",
            Self::BadDataChunk => b"CLIENT_ERROR bad data chunk\r\n",
            Self::NonNumeric => b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
            Self::OutOfMemory => b"SERVER_ERROR out of memory storing object\r\n",
            Self::LineTooLong => b"CLIENT_ERROR line too long\r\n",
        }
    }

    /// Bytes after the line that belong to the failed command (P2).
    pub fn swallow(self) -> usize {
        match self {
            Self::BadFormat { swallow } | Self::TooLarge { swallow } => swallow,
            _ => 0,
        }
    }
}

/// The space-separated tokens of `s`.
fn tokens(s: &[u8]) -> impl Iterator<Item = &[u8]> {
    s.split(|&b| b == b' ').filter(|t| !t.is_empty())
}

/// A key is 1–250 bytes (spaces cannot occur: they separate tokens).
/// `protocol.txt` forbids control characters in keys, but memcached does
/// not check, and a real client relies on it: memaslap's keys begin with
/// eight binary bytes. So neither do we.
pub fn valid_key(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN
}

/// A decimal number of at most 64 bits: digits only, no sign.
pub fn parse_u64(t: &[u8]) -> Option<u64> {
    if t.is_empty() || t.len() > 20 {
        return None;
    }
    t.iter().try_fold(0u64, |n, &b| {
        let d = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

fn parse_u32(t: &[u8]) -> Option<u32> {
    parse_u64(t).and_then(|n| u32::try_from(n).ok())
}

/// A decimal number with an optional leading `-`.
fn parse_i64(t: &[u8]) -> Option<i64> {
    match t.split_first() {
        Some((b'-', rest)) => parse_u64(rest)
            .and_then(|n| i64::try_from(n).ok())
            .map(|n| -n),
        _ => parse_u64(t).and_then(|n| i64::try_from(n).ok()),
    }
}

/// Splits a trailing `noreply` off the arguments.
fn split_noreply<'a, 'b>(args: &'b [&'a [u8]]) -> (&'b [&'a [u8]], bool) {
    match args.split_last() {
        Some((&b"noreply", rest)) => (rest, true),
        _ => (args, false),
    }
}

/// Parses one request line (without its line ending).
pub fn parse(line: &[u8]) -> Result<Parsed<'_>, ProtocolError> {
    let mut it = tokens(line);
    let Some(cmd) = it.next() else {
        return Err(ProtocolError::UnknownCommand);
    };
    if cmd == b"get" || cmd == b"gets" {
        // The keys are the rest of the line, after the command.
        let start = cmd.as_ptr() as usize - line.as_ptr() as usize + cmd.len();
        return parse_get(&line[start..], cmd == b"gets").map(Parsed::Request);
    }
    let mut buf: [&[u8]; MAX_TOKENS] = [&[]; MAX_TOKENS];
    let mut n = 0;
    for t in it {
        if n == MAX_TOKENS {
            // Too many tokens: a storage command's block is still known
            // only by its fourth argument.
            return Err(bad_format(cmd, &buf[..n]));
        }
        buf[n] = t;
        n += 1;
    }
    let args = &buf[..n];
    let request = match cmd {
        b"set" => parse_store(StoreMode::Set, args),
        b"add" => parse_store(StoreMode::Add, args),
        b"replace" => parse_store(StoreMode::Replace, args),
        b"append" => parse_store(StoreMode::Append, args),
        b"prepend" => parse_store(StoreMode::Prepend, args),
        b"cas" => parse_store(StoreMode::Cas(0), args),
        _ => return parse_other(cmd, args).map(Parsed::Request),
    };
    request.map(Parsed::Store)
}

fn parse_other<'a>(cmd: &[u8], args: &[&'a [u8]]) -> Result<Request<'a>, ProtocolError> {
    match cmd {
        b"delete" => parse_delete(args),
        b"incr" | b"decr" => parse_arith(cmd == b"incr", args),
        b"touch" => parse_touch(args),
        b"flush_all" => parse_flush(args),
        b"verbosity" => parse_verbosity(args),
        b"version" if args.is_empty() => Ok(Request::Version),
        b"quit" if args.is_empty() => Ok(Request::Quit),
        b"stats" => match args {
            [] => Ok(Request::Stats(StatsGroup::General)),
            [b"settings"] => Ok(Request::Stats(StatsGroup::Settings)),
            [b"reset"] => Ok(Request::Stats(StatsGroup::Reset)),
            _ => Err(ProtocolError::UnknownCommand),
        },
        b"version" | b"quit" => Err(ProtocolError::BadFormat { swallow: 0 }),
        _ => Err(ProtocolError::UnknownCommand),
    }
}

fn parse_get(rest: &[u8], with_cas: bool) -> Result<Request<'_>, ProtocolError> {
    let mut any = false;
    for key in tokens(rest) {
        if !valid_key(key) {
            return Err(ProtocolError::BadFormat { swallow: 0 });
        }
        any = true;
    }
    if !any {
        return Err(ProtocolError::UnknownCommand);
    }
    Ok(Request::Get {
        keys: Keys(rest),
        with_cas,
    })
}

/// The error for a malformed storage line: its block is swallowed when the
/// `<bytes>` argument is a valid length (P2).
fn bad_format(cmd: &[u8], args: &[&[u8]]) -> ProtocolError {
    let is_store = matches!(
        cmd,
        b"set" | b"add" | b"replace" | b"append" | b"prepend" | b"cas"
    );
    let swallow = match args.get(3).and_then(|t| parse_u64(t)) {
        Some(len) if is_store && len <= i32::MAX as u64 => len as usize + 2,
        _ => 0,
    };
    ProtocolError::BadFormat { swallow }
}

fn parse_store(mode: StoreMode, all: &[&[u8]]) -> Result<StoreHeader, ProtocolError> {
    let (args, noreply) = split_noreply(all);
    let cmd: &[u8] = if let StoreMode::Cas(_) = mode {
        b"cas"
    } else {
        b"set"
    };
    let bad = || bad_format(cmd, all);
    let want = if let StoreMode::Cas(_) = mode { 5 } else { 4 };
    if args.len() != want {
        return Err(bad());
    }
    let key = args[0];
    let (Some(flags), Some(exptime), Some(len)) = (
        parse_u32(args[1]),
        parse_i64(args[2]),
        parse_u64(args[3]).filter(|&l| l <= i32::MAX as u64),
    ) else {
        return Err(bad());
    };
    let mode = match mode {
        StoreMode::Cas(_) => StoreMode::Cas(parse_u64(args[4]).ok_or_else(bad)?),
        m => m,
    };
    if !valid_key(key) {
        return Err(bad());
    }
    let len = len as usize;
    if len > MAX_VALUE_LEN {
        return Err(ProtocolError::TooLarge { swallow: len + 2 });
    }
    Ok(StoreHeader {
        mode,
        key: key.into(),
        flags,
        exptime,
        len,
        noreply,
    })
}

fn parse_delete<'a>(all: &[&'a [u8]]) -> Result<Request<'a>, ProtocolError> {
    let (args, noreply) = split_noreply(all);
    let key = match args {
        [key] | [key, b"0"] => *key,
        [_, t] if parse_u64(t).is_some() => return Err(ProtocolError::DeleteTime),
        _ => return Err(ProtocolError::BadFormat { swallow: 0 }),
    };
    if !valid_key(key) {
        return Err(ProtocolError::BadFormat { swallow: 0 });
    }
    Ok(Request::Delete { key, noreply })
}

fn parse_arith<'a>(incr: bool, all: &[&'a [u8]]) -> Result<Request<'a>, ProtocolError> {
    let (args, noreply) = split_noreply(all);
    let [key, delta] = args else {
        return Err(ProtocolError::BadFormat { swallow: 0 });
    };
    if !valid_key(key) {
        return Err(ProtocolError::BadFormat { swallow: 0 });
    }
    let delta = parse_u64(delta).ok_or(ProtocolError::InvalidDelta)?;
    Ok(Request::Arith {
        key,
        delta,
        incr,
        noreply,
    })
}

fn parse_touch<'a>(all: &[&'a [u8]]) -> Result<Request<'a>, ProtocolError> {
    let (args, noreply) = split_noreply(all);
    let [key, exptime] = args else {
        return Err(ProtocolError::BadFormat { swallow: 0 });
    };
    if !valid_key(key) {
        return Err(ProtocolError::BadFormat { swallow: 0 });
    }
    let exptime = parse_i64(exptime).ok_or(ProtocolError::InvalidExptime)?;
    Ok(Request::Touch {
        key,
        exptime,
        noreply,
    })
}

fn parse_flush(all: &[&[u8]]) -> Result<Request<'static>, ProtocolError> {
    let (args, noreply) = split_noreply(all);
    let delay = match args {
        [] => 0,
        [t] => parse_u32(t).ok_or(ProtocolError::BadFormat { swallow: 0 })?,
        _ => return Err(ProtocolError::BadFormat { swallow: 0 }),
    };
    Ok(Request::FlushAll { delay, noreply })
}

fn parse_verbosity(all: &[&[u8]]) -> Result<Request<'static>, ProtocolError> {
    let (args, noreply) = split_noreply(all);
    let level = match args {
        // memcached reads `verbosity noreply` as level 0, quietly.
        [] if noreply => 0,
        [t] => parse_u32(t).ok_or(ProtocolError::BadFormat { swallow: 0 })?,
        _ => return Err(ProtocolError::BadFormat { swallow: 0 }),
    };
    Ok(Request::Verbosity { level, noreply })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(r: Result<Parsed<'_>, ProtocolError>) -> StoreHeader {
        match r {
            Ok(Parsed::Store(h)) => h,
            other => panic!("not a storage command: {other:?}"),
        }
    }

    /// `parse` for lines that are not storage commands.
    fn req(line: &[u8]) -> Result<Request<'_>, ProtocolError> {
        match parse(line)? {
            Parsed::Request(r) => Ok(r),
            Parsed::Store(h) => panic!("a storage command: {h:?}"),
        }
    }

    #[test]
    fn storage_lines() {
        let h = header(parse(b"set k 5 -1 10 noreply"));
        assert_eq!(
            h,
            StoreHeader {
                mode: StoreMode::Set,
                key: (*b"k").into(),
                flags: 5,
                exptime: -1,
                len: 10,
                noreply: true,
            }
        );
        let h = header(parse(b"cas  key  0 0  3   77"));
        assert_eq!(h.mode, StoreMode::Cas(77));
        assert!(!h.noreply);
        assert_eq!(header(parse(b"append k 0 0 0")).mode, StoreMode::Append);
        assert_eq!(
            parse(b"set k 0 0 1048577"),
            Err(ProtocolError::TooLarge { swallow: 1048579 })
        );
        assert_eq!(header(parse(b"set k 0 0 1048576")).len, MAX_VALUE_LEN);
    }

    #[test]
    fn malformed_storage_lines_swallow_their_block_when_its_length_is_known() {
        for (line, swallow) in [
            (&b"set k x 0 5"[..], 7),
            (b"set k 0 zz 5", 7),
            (b"set k 4294967296 0 5", 7),
            (b"set k 0 0 5 extra", 7),
            (b"set k 0 0 -5", 0),
            (b"set k 0 0 five", 0),
            (b"set k 0 0", 0),
            (b"set", 0),
            (b"cas k 0 0 5", 7),
            (b"cas k 0 0 5 notanumber", 7),
            (b"set k 0 0 5 a b c d e f", 7),
        ] {
            assert_eq!(
                parse(line),
                Err(ProtocolError::BadFormat { swallow }),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        let long_key = [b'k'; 251];
        let mut line = b"set ".to_vec();
        line.extend_from_slice(&long_key);
        line.extend_from_slice(b" 0 0 2");
        assert_eq!(parse(&line), Err(ProtocolError::BadFormat { swallow: 4 }));
    }

    #[test]
    fn retrievals() {
        let Ok(Request::Get { keys, with_cas }) = req(b"gets a  bb ccc") else {
            panic!()
        };
        assert!(with_cas);
        assert_eq!(keys.iter().collect::<Vec<_>>(), [&b"a"[..], b"bb", b"ccc"]);
        assert_eq!(req(b"get"), Err(ProtocolError::UnknownCommand));
        assert_eq!(req(b"get   "), Err(ProtocolError::UnknownCommand));
        let mut long = b"get a ".to_vec();
        long.extend_from_slice(&[b'k'; 251]);
        assert_eq!(req(&long), Err(ProtocolError::BadFormat { swallow: 0 }));
        assert!(req(b"get \x10\x10key").is_ok());
    }

    #[test]
    fn other_commands() {
        assert_eq!(
            req(b"delete k noreply"),
            Ok(Request::Delete {
                key: b"k",
                noreply: true
            })
        );
        assert!(matches!(req(b"delete k 0"), Ok(Request::Delete { .. })));
        assert_eq!(req(b"delete k 10"), Err(ProtocolError::DeleteTime));
        assert!(req(b"delete").is_err());
        assert!(req(b"delete a b c d e").is_err());
        assert_eq!(
            req(b"incr k 18446744073709551615"),
            Ok(Request::Arith {
                key: b"k",
                delta: u64::MAX,
                incr: true,
                noreply: false
            })
        );
        assert_eq!(
            req(b"decr k 18446744073709551616"),
            Err(ProtocolError::InvalidDelta)
        );
        assert_eq!(req(b"incr k -1"), Err(ProtocolError::InvalidDelta));
        assert_eq!(req(b"touch k x"), Err(ProtocolError::InvalidExptime));
        assert_eq!(
            req(b"flush_all 10 noreply"),
            Ok(Request::FlushAll {
                delay: 10,
                noreply: true
            })
        );
        assert!(req(b"flush_all soon").is_err());
        assert_eq!(req(b"version"), Ok(Request::Version));
        assert!(req(b"version noreply").is_err());
        assert!(req(b"quit now").is_err());
        assert_eq!(
            req(b"verbosity noreply"),
            Ok(Request::Verbosity {
                level: 0,
                noreply: true
            })
        );
        assert!(req(b"verbosity").is_err());
        assert!(req(b"verbosity foo bar my").is_err());
        assert_eq!(req(b"stats noreply"), Err(ProtocolError::UnknownCommand));
        assert_eq!(req(b""), Err(ProtocolError::UnknownCommand));
        assert_eq!(req(b"bogus"), Err(ProtocolError::UnknownCommand));
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b"+1"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_i64(b"-30"), Some(-30));
        assert_eq!(parse_i64(b"--30"), None);
        assert_eq!(parse_i64(b"-"), None);
    }
}
