//! ebizzy's command line: LTP ebizzy-0.3's flags and defaults, plus spf's
//! own (`--mode`, `--native`, `--alloc`, `--ltp-rng`, `--granule`).

use std::fmt;

/// Which fault path serves the `-m` buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeArg {
    Spf,
    Classic,
    /// BASE then SPF, with the series' `BASE SPF delta` table.
    Both,
}

/// Which allocator serves the malloc paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocArg {
    Spf,
    Jemalloc,
    Mimalloc,
    System,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Args {
    /// `-l`: copy with a byte loop instead of memcpy.
    pub byte_copy: bool,
    /// `-m`: buffers are mappings (spf regions, or the kernel's with `--native`).
    pub mmap: bool,
    /// `-M`: tell glibc malloc not to use mmap.
    pub no_malloc_mmap: bool,
    /// `-n`: number of chunks.
    pub chunks: usize,
    /// `-p`: make even chunks read-only so mappings do not merge.
    pub protect_even: bool,
    /// `-P`: leave a one-page hole after each chunk.
    pub holes: bool,
    /// `-R`: copy a random multiple of 8 bytes up to the chunk size.
    pub random_size: bool,
    /// `-s`: chunk size in bytes.
    pub chunk_size: usize,
    /// `-S`: seconds to run.
    pub seconds: f64,
    /// `-t`: worker threads.
    pub threads: usize,
    /// `-v`: verbose.
    pub verbose: bool,
    /// `-z`: linear instead of binary search.
    pub linear: bool,
    /// `-T`: only touch one byte per page of each buffer.
    pub touch_only: bool,
    pub mode: ModeArg,
    /// `--native`: `-m` uses the kernel's mmap/munmap too, as a third column.
    pub native: bool,
    pub alloc: AllocArg,
    /// `--ltp-rng`: LTP's generator, which always returns 0.
    pub ltp_rng: bool,
    /// `--granule`: the granule of `-m` regions.
    pub granule: usize,
    /// No flags were given: the series' comparison (see [`parse`]).
    pub showcase: bool,
}

impl Args {
    pub fn defaults(cpus: usize) -> Args {
        Args {
            byte_copy: false,
            mmap: false,
            no_malloc_mmap: false,
            chunks: 10,
            protect_even: false,
            holes: false,
            random_size: false,
            chunk_size: 512 << 10,
            seconds: 10.0,
            threads: 2 * cpus,
            verbose: false,
            linear: false,
            touch_only: false,
            mode: ModeArg::Both,
            native: false,
            alloc: AllocArg::Spf,
            ltp_rng: false,
            // spf's default granule: one signal per 16 pages. At 4 KiB
            // every backend is bound by one signal per page.
            granule: 64 << 10,
            showcase: false,
        }
    }
}

/// A command line ebizzy rejects; the message says why.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ebizzy: {}\n{USAGE}", self.0)
    }
}

pub const USAGE: &str =
    "usage: ebizzy [-lmMpPRTvz] [-n chunks] [-s chunk_size] [-S seconds] [-t threads]
              [--mode spf|classic|both] [--native] [--alloc spf|jemalloc|mimalloc|system]
              [--ltp-rng] [--granule bytes]";

fn number(flag: &str, value: Option<String>) -> Result<usize, UsageError> {
    let v = value.ok_or_else(|| UsageError(format!("{flag} needs a value")))?;
    let n = spf::parse_size(v.as_bytes())
        .ok_or_else(|| UsageError(format!("{flag}: '{v}' is not a number")))?;
    if n == 0 {
        return Err(UsageError(format!("{flag} must be at least 1")));
    }
    Ok(n)
}

/// The flags of the run with no arguments: the speculative page fault series' comparison — `-m`
/// buffers committed on touch, BASE then SPF, then the kernel's own mmap —
/// short enough (3 × 5 s) to show the speculative path at work in a minute.
pub const SHOWCASE: &[&str] = &["-mTR", "--native", "-S", "5"];

/// Parses ebizzy's flags. Single-letter flags may be bundled (`-mTRp`).
/// With no flags at all, runs [`SHOWCASE`]; any flag gives LTP's defaults
/// for everything not set.
pub fn parse(argv: impl IntoIterator<Item = String>, cpus: usize) -> Result<Args, UsageError> {
    let argv: Vec<String> = argv.into_iter().collect();
    if argv.is_empty() {
        let mut a = parse_flags(SHOWCASE.iter().map(|s| s.to_string()).collect(), cpus)?;
        a.showcase = true;
        return Ok(a);
    }
    parse_flags(argv, cpus)
}

fn parse_flags(argv: Vec<String>, cpus: usize) -> Result<Args, UsageError> {
    let mut a = Args::defaults(cpus);
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        if let Some(long) = arg.strip_prefix("--") {
            match long {
                "mode" => {
                    a.mode = match it.next().as_deref() {
                        Some("spf") => ModeArg::Spf,
                        Some("classic") | Some("base") => ModeArg::Classic,
                        Some("both") => ModeArg::Both,
                        other => {
                            return Err(UsageError(format!(
                                "--mode: '{}' is not spf, classic or both",
                                other.unwrap_or("")
                            )))
                        }
                    }
                }
                "alloc" => {
                    a.alloc = match it.next().as_deref() {
                        Some("spf") => AllocArg::Spf,
                        Some("jemalloc") => AllocArg::Jemalloc,
                        Some("mimalloc") => AllocArg::Mimalloc,
                        Some("system") | Some("glibc") => AllocArg::System,
                        other => {
                            return Err(UsageError(format!(
                                "--alloc: '{}' is not spf, jemalloc, mimalloc or system",
                                other.unwrap_or("")
                            )))
                        }
                    }
                }
                "native" => a.native = true,
                "ltp-rng" => a.ltp_rng = true,
                "granule" => {
                    a.granule = number("--granule", it.next())?;
                    if spf::Granule::new(a.granule).is_none() {
                        return Err(UsageError(
                            "--granule must be a power of two from 4096 to 2097152".into(),
                        ));
                    }
                }
                _ => return Err(UsageError(format!("unknown option --{long}"))),
            }
            continue;
        }
        let Some(letters) = arg.strip_prefix('-').filter(|l| !l.is_empty()) else {
            return Err(UsageError(format!("unexpected argument '{arg}'")));
        };
        let letters: Vec<char> = letters.chars().collect();
        for (i, c) in letters.iter().enumerate() {
            let takes_value = matches!(c, 'n' | 's' | 'S' | 't');
            // As getopt: a value flag takes the rest of its group (`-n3`),
            // or else the next argument.
            let rest: String = letters[i + 1..].iter().collect();
            let mut value = || {
                if rest.is_empty() {
                    it.next()
                } else {
                    Some(rest.clone())
                }
            };
            match c {
                'l' => a.byte_copy = true,
                'm' => a.mmap = true,
                'M' => a.no_malloc_mmap = true,
                'p' => a.protect_even = true,
                'P' => a.holes = true,
                'R' => a.random_size = true,
                'T' => a.touch_only = true,
                'v' => a.verbose = true,
                'z' => a.linear = true,
                'n' => a.chunks = number("-n", value())?,
                's' => a.chunk_size = number("-s", value())?,
                't' => a.threads = number("-t", value())?,
                'S' => a.seconds = number("-S", value())? as f64,
                other => return Err(UsageError(format!("unknown flag -{other}"))),
            }
            if takes_value {
                break;
            }
        }
    }
    if a.mmap && a.no_malloc_mmap {
        return Err(UsageError("-m and -M cannot be used together".into()));
    }
    if a.chunk_size < 8 {
        return Err(UsageError(
            "-s: a chunk must hold at least one 8-byte record".into(),
        ));
    }
    // Only whole records count, as in ebizzy.
    a.chunk_size -= a.chunk_size % 8;
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Args, UsageError> {
        parse(s.split_whitespace().map(String::from), 2)
    }

    #[test]
    fn defaults_are_ebizzys() {
        let a = p("-v").unwrap();
        assert_eq!(
            (a.chunks, a.chunk_size, a.seconds, a.threads),
            (10, 512 << 10, 10.0, 4)
        );
        assert_eq!(a.mode, ModeArg::Both);
        assert!(!a.mmap && !a.showcase);
    }

    #[test]
    fn no_flags_run_the_seeds_comparison() {
        let a = p("").unwrap();
        assert!(a.showcase && a.mmap && a.touch_only && a.random_size && a.native);
        assert_eq!(
            (a.seconds, a.mode, a.granule),
            (5.0, ModeArg::Both, 64 << 10)
        );
    }

    #[test]
    fn bundled_flags_and_values() {
        let a = p("-mTRp -t 16 -S 2 -s 64k --mode classic --native --ltp-rng").unwrap();
        assert!(a.mmap && a.touch_only && a.random_size && a.protect_even);
        assert_eq!((a.threads, a.seconds, a.chunk_size), (16, 2.0, 64 << 10));
        assert!(a.native && a.ltp_rng);
        assert_eq!(a.mode, ModeArg::Classic);
        let a = p("-lzn3 -s 1001 --alloc jemalloc").unwrap();
        assert!(a.byte_copy && a.linear && a.chunks == 3 && a.alloc == AllocArg::Jemalloc);
        assert_eq!(a.chunk_size, 1000, "whole records only");
        let a = p("-t8 -S 1").unwrap();
        assert_eq!((a.threads, a.seconds), (8, 1.0));
    }

    #[test]
    fn bad_input_is_rejected_with_a_reason() {
        for (cmd, why) in [
            ("-m -M", "-m and -M"),
            ("-x", "unknown flag -x"),
            ("-t", "-t needs a value"),
            ("-t zero", "'zero' is not a number"),
            ("-t 0", "at least 1"),
            ("-tS", "'S' is not a number"),
            ("--mode fast", "not spf, classic or both"),
            ("--alloc tcmalloc", "not spf, jemalloc"),
            ("--granule 3000", "power of two"),
            ("--frobnicate", "unknown option"),
            ("stray", "unexpected argument"),
            ("-s 4", "8-byte record"),
        ] {
            let err = p(cmd).unwrap_err();
            assert!(err.0.contains(why), "{cmd}: {}", err.0);
        }
    }
}
