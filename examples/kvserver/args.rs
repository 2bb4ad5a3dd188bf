//! Command-line flags, memcached's where they exist: `-p` port, `-l`
//! listen address, `-m` memory limit in MiB, `-c` maximum connections,
//! `-v`/`-vv` verbosity.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

pub const USAGE: &str = "\
usage: kvserver [-p PORT] [-l ADDR] [-m MiB] [-c CONNS] [-v|-vv]
  -p, --port PORT          TCP port (default 11211; 0 picks a free one)
  -l, --listen ADDR        address to listen on (default 127.0.0.1)
  -m, --memory-limit MiB   memory for items, LRU eviction beyond (default 64)
  -c, --conn-limit CONNS   most connections open at once (default 1024)
  -v, -vv                  log protocol errors; also connections
  -h, --help               this text
The global allocator is chosen when building: SpfAlloc by default,
--features kvserver-jemalloc or --features kvserver-system.";

/// The parsed flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub listen: SocketAddr,
    pub memory_mib: usize,
    pub max_connections: usize,
    pub verbosity: u32,
}

/// Why the flags were refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ArgsError {
    /// `-h`: print the usage and exit successfully.
    Help,
    MissingValue(String),
    BadValue {
        flag: String,
        value: String,
    },
    Unknown(String),
}

impl fmt::Display for ArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgsError::Help => write!(f, "help requested"),
            ArgsError::MissingValue(flag) => write!(f, "{flag} needs a value"),
            ArgsError::BadValue { flag, value } => write!(f, "bad value for {flag}: {value:?}"),
            ArgsError::Unknown(flag) => write!(f, "unknown flag {flag:?}"),
        }
    }
}

fn value<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Result<T, ArgsError> {
    let v = v.ok_or_else(|| ArgsError::MissingValue(flag.into()))?;
    v.parse().map_err(|_| ArgsError::BadValue {
        flag: flag.into(),
        value: v,
    })
}

/// Parses the flags (without the program name).
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, ArgsError> {
    let mut port: u16 = 11211;
    let mut ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut a = Args {
        listen: SocketAddr::new(ip, port),
        memory_mib: 64,
        max_connections: 1024,
        verbosity: 0,
    };
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        // `--flag=value` as well as `--flag value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut next = || inline.clone().or_else(|| it.next());
        match flag.as_str() {
            "-p" | "--port" => port = value(&flag, next())?,
            "-l" | "--listen" => ip = value(&flag, next())?,
            "-m" | "--memory-limit" => a.memory_mib = value(&flag, next())?,
            "-c" | "--conn-limit" => a.max_connections = value(&flag, next())?,
            "-v" => a.verbosity = 1,
            "-vv" => a.verbosity = 2,
            "-h" | "--help" => return Err(ArgsError::Help),
            _ => return Err(ArgsError::Unknown(arg)),
        }
    }
    if a.memory_mib == 0 {
        return Err(ArgsError::BadValue {
            flag: "-m".into(),
            value: "0".into(),
        });
    }
    a.listen = SocketAddr::new(ip, port);
    Ok(a)
}
