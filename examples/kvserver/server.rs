//! The server: a listener, a thread per connection, and the dispatch of
//! each parsed request to the store and the statistics.
//!
//! A thread per connection keeps every connection's code straight-line
//! (blocking reads and writes, no state machine); it suits a test server
//! of up to a few hundred connections, and `max_connections` (memcached's
//! `-c`, 1024 by default) bounds it. A connection past the bound gets
//! `SERVER_ERROR too many open connections` and is closed, as memcached
//! does.
//!
//! Replies are buffered and flushed when no further request is waiting in
//! the input buffer, so pipelined requests get their replies in one write.
//! Every protocol error is answered and the connection goes on, except a
//! line too long (answered, then closed, like memcached); an I/O error or
//! EOF ends only that connection.

use crate::conn::{Block, Counting, LineError, Reader};
use crate::protocol::{self, Parsed, ProtocolError, Request, StatsGroup, StoreHeader};
use crate::stats::{self, Allocator, Counters};
use crate::store::{NonNumeric, Store, StoreError};
use std::io::{self, BufWriter, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;

/// What `version` answers: below 1.6, so that clients expect the older,
/// stricter handling of extra tokens (P3 in `protocol`).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "-kvserver");

/// Stack of a connection thread: the request path uses little stack.
const CONN_STACK: usize = 256 << 10;
/// Buffered replies per connection before a write.
const OUT_BUF: usize = 64 << 10;

/// How a server is set up.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen (127.0.0.1:11211 by default; port 0 picks one).
    pub listen: SocketAddr,
    /// The memory limit for items, bytes.
    pub memory_limit: usize,
    pub max_connections: usize,
    /// The global allocator this binary runs on, for `stats`.
    pub allocator: Allocator,
    /// The initial verbosity: 1 logs protocol errors, 2 also connections.
    pub verbosity: u32,
}

/// What every connection shares.
struct Shared {
    store: Arc<Store>,
    counters: Arc<Counters>,
    config: Config,
    verbosity: AtomicU32,
}

/// A bound server, not yet accepting.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Server {
    /// Binds the listening socket (`config.listen`, port 0 for any).
    pub fn bind(mut config: Config) -> io::Result<Server> {
        let listener = TcpListener::bind(config.listen)?;
        config.listen = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let store = Arc::new(Store::new(config.memory_limit, Arc::clone(&counters)));
        let verbosity = AtomicU32::new(config.verbosity);
        Ok(Server {
            listener,
            shared: Arc::new(Shared {
                store,
                counters,
                config,
                verbosity,
            }),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.config.listen
    }

    /// The item store (for tests: `check_invariants`).
    pub fn store(&self) -> Arc<Store> {
        Arc::clone(&self.shared.store)
    }

    /// Accepts connections until accepting fails.
    pub fn run(self) -> io::Error {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(e) if is_transient(&e) => {
                    // Out of descriptors or an aborted handshake: wait a
                    // little and go on, as memcached does.
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return e,
            }
        }
    }

    fn admit(&self, mut stream: TcpStream) {
        let c = &self.shared.counters;
        let open = c.curr_connections.load(Relaxed);
        if open >= self.shared.config.max_connections as u64 {
            c.rejected_connections.fetch_add(1, Relaxed);
            let _ = stream.write_all(b"SERVER_ERROR too many open connections\r\n");
            return;
        }
        c.curr_connections.fetch_add(1, Relaxed);
        c.total_connections.fetch_add(1, Relaxed);
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new()
            .name("kv-conn".into())
            .stack_size(CONN_STACK)
            .spawn(move || {
                let peer = stream.peer_addr().ok();
                let verbose = shared.verbosity.load(Relaxed) >= 2;
                if verbose {
                    eprintln!("kvserver: {peer:?} connected");
                }
                let result = serve(stream, &shared);
                shared.counters.curr_connections.fetch_sub(1, Relaxed);
                if verbose {
                    eprintln!("kvserver: {peer:?} closed ({result:?})");
                }
            });
        if let Err(e) = spawned {
            c.curr_connections.fetch_sub(1, Relaxed);
            c.rejected_connections.fetch_add(1, Relaxed);
            eprintln!("kvserver: cannot start a connection thread: {e}");
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// What happens after a request.
enum Flow {
    Continue,
    Close,
}

type Out = BufWriter<Counting<TcpStream>>;

/// One connection, until the client quits or the connection fails.
fn serve(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut input = Reader::new(stream.try_clone()?);
    let mut out = BufWriter::with_capacity(OUT_BUF, Counting::new(stream));
    let result = serve_requests(&mut input, &mut out, shared);
    let flushed = out.flush();
    account(&mut input, &mut out, &shared.counters);
    result.and(flushed)
}

fn account(input: &mut Reader<TcpStream>, out: &mut Out, c: &Counters) {
    c.bytes_read.fetch_add(input.take_count(), Relaxed);
    c.bytes_written
        .fetch_add(out.get_mut().take_count(), Relaxed);
}

fn serve_requests(input: &mut Reader<TcpStream>, out: &mut Out, shared: &Shared) -> io::Result<()> {
    loop {
        if !input.has_buffered() {
            out.flush()?;
            account(input, out, &shared.counters);
        }
        let line = match input.read_line() {
            Ok(line) => line,
            Err(LineError::Closed) => return Ok(()),
            Err(LineError::TooLong) => {
                reply_error(out, shared, ProtocolError::LineTooLong)?;
                return Ok(());
            }
            Err(LineError::Io(e)) => return Err(e),
        };
        let flow = match protocol::parse(line) {
            Ok(Parsed::Store(header)) => store(header, input, out, shared)?,
            Ok(Parsed::Request(request)) => execute(request, out, shared)?,
            Err(e) => {
                input.skip(e.swallow())?;
                reply_error(out, shared, e)?;
                Flow::Continue
            }
        };
        if let Flow::Close = flow {
            return Ok(());
        }
    }
}

fn reply_error(out: &mut Out, shared: &Shared, e: ProtocolError) -> io::Result<()> {
    if shared.verbosity.load(Relaxed) >= 1 {
        eprintln!(
            "kvserver: {}",
            String::from_utf8_lossy(e.reply()).trim_end()
        );
    }
    out.write_all(e.reply())
}

/// A storage command: its data block, then the store. Errors are
/// answered even under `noreply` (as memcached ≥ 1.5 does).
fn store(
    h: StoreHeader,
    input: &mut Reader<TcpStream>,
    out: &mut Out,
    shared: &Shared,
) -> io::Result<Flow> {
    let data = match input.read_block(h.len)? {
        Block::Data(data) => data,
        Block::BadChunk => {
            reply_error(out, shared, ProtocolError::BadDataChunk)?;
            return Ok(Flow::Continue);
        }
    };
    match shared.store.store(h.mode, h.key, h.flags, h.exptime, data) {
        Ok(outcome) if !h.noreply => out.write_all(outcome.reply())?,
        Ok(_) => {}
        Err(StoreError::OutOfMemory) => reply_error(out, shared, ProtocolError::OutOfMemory)?,
    }
    Ok(Flow::Continue)
}

fn execute(request: Request<'_>, out: &mut Out, shared: &Shared) -> io::Result<Flow> {
    let store = &*shared.store;
    match request {
        Request::Get { keys, with_cas } => {
            for key in keys.iter() {
                let Some(hit) = store.get(key) else { continue };
                out.write_all(b"VALUE ")?;
                out.write_all(key)?;
                write!(out, " {} {}", hit.flags, hit.data.len())?;
                if with_cas {
                    write!(out, " {}", hit.cas)?;
                }
                out.write_all(b"\r\n")?;
                out.write_all(&hit.data)?;
                out.write_all(b"\r\n")?;
            }
            out.write_all(b"END\r\n")?;
        }
        Request::Delete { key, noreply } => {
            let reply: &[u8] = if store.delete(key) {
                b"DELETED\r\n"
            } else {
                b"NOT_FOUND\r\n"
            };
            if !noreply {
                out.write_all(reply)?;
            }
        }
        Request::Arith {
            key,
            delta,
            incr,
            noreply,
        } => match store.arith(key, delta, incr) {
            Ok(Some(v)) if !noreply => write!(out, "{v}\r\n")?,
            Ok(None) if !noreply => out.write_all(b"NOT_FOUND\r\n")?,
            Ok(_) => {}
            Err(NonNumeric) => reply_error(out, shared, ProtocolError::NonNumeric)?,
        },
        Request::Touch {
            key,
            exptime,
            noreply,
        } => {
            let reply: &[u8] = if store.touch(key, exptime) {
                b"TOUCHED\r\n"
            } else {
                b"NOT_FOUND\r\n"
            };
            if !noreply {
                out.write_all(reply)?;
            }
        }
        Request::FlushAll { delay, noreply } => {
            store.flush_all(delay);
            if !noreply {
                out.write_all(b"OK\r\n")?;
            }
        }
        Request::Version => write!(out, "VERSION {VERSION}\r\n")?,
        Request::Verbosity { level, noreply } => {
            shared.verbosity.store(level, Relaxed);
            if !noreply {
                out.write_all(b"OK\r\n")?;
            }
        }
        Request::Stats(group) => {
            let report = match group {
                StatsGroup::General => stats::general(store, &shared.counters, &shared.config),
                StatsGroup::Settings => {
                    stats::settings(store, &shared.config, shared.verbosity.load(Relaxed))
                }
                StatsGroup::Reset => {
                    shared.counters.reset();
                    b"RESET\r\n".to_vec()
                }
            };
            out.write_all(&report)?;
        }
        Request::Quit => return Ok(Flow::Close),
    }
    Ok(Flow::Continue)
}
