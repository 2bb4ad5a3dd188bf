//! kvserver: a multi-threaded server of the memcached text protocol, on
//! `SpfAlloc` as its global allocator — or, built with `--features
//! kvserver-jemalloc` or `--features kvserver-system`, on jemalloc or the
//! system allocator, so the three can be compared under the same load.
//!
//! ```text
//! cargo run --release --example kvserver -- -p 11211 -m 1024
//! memccapable -a -h 127.0.0.1 -p 11211       # Debian's memcapable
//! scripts/kvserver-load.sh                   # memaslap, all three allocators
//! ```
//!
//! Modules: `args` (flags), `server` (listener, a thread per connection,
//! dispatch), `conn` (a connection's buffered input and its limits),
//! `protocol` (request lines and error replies), `store` (sharded items,
//! LRU, expiry, CAS), `stats` (counters, the `stats` report and the
//! allocator's figures). `docs/kvserver.md` has the protocol details and
//! the measurements.

mod args;
mod conn;
mod protocol;
mod server;
mod stats;
mod store;

use server::{Config, Server};
use stats::Allocator;
use std::io::Write;

#[cfg(feature = "kvserver-jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(all(feature = "kvserver-system", not(feature = "kvserver-jemalloc")))]
#[global_allocator]
static GLOBAL: std::alloc::System = std::alloc::System;

#[cfg(not(any(feature = "kvserver-jemalloc", feature = "kvserver-system")))]
#[global_allocator]
static GLOBAL: spf::SpfAlloc = spf::SpfAlloc::new();

/// The allocator above, for `stats` (jemalloc wins if both features are
/// on, as for `GLOBAL`).
const ALLOCATOR: Allocator = if cfg!(feature = "kvserver-jemalloc") {
    Allocator::Jemalloc
} else if cfg!(feature = "kvserver-system") {
    Allocator::System
} else {
    Allocator::Spf
};

fn main() {
    let a = match args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(args::ArgsError::Help) => {
            println!("{}", args::USAGE);
            return;
        }
        Err(e) => {
            eprintln!("kvserver: {e}\n{}", args::USAGE);
            std::process::exit(2);
        }
    };
    let config = Config {
        listen: a.listen,
        memory_limit: a.memory_mib << 20,
        max_connections: a.max_connections,
        allocator: ALLOCATOR,
        verbosity: a.verbosity,
    };
    let server = match Server::bind(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kvserver: cannot listen on {}: {e}", a.listen);
            std::process::exit(1);
        }
    };
    // One line on stdout, which scripts read for the port.
    println!(
        "kvserver: listening on {} (allocator {}, memory limit {} MiB, {} shards, at most {} connections)",
        server.local_addr(),
        ALLOCATOR.name(),
        a.memory_mib,
        server.store().shard_count(),
        a.max_connections,
    );
    let _ = std::io::stdout().flush();
    let e = server.run();
    eprintln!("kvserver: accept failed: {e}");
    std::process::exit(1);
}
