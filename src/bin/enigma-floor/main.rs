//! `enigma-floor`: the reference lines `make bench` measures the relay against, on the same
//! machine and at the same load, so that a cost per message reads as "so far from possible".
//!
//! - `enigma-floor forwarder`: a bare WebSocket forwarder on the relay's own stack (axum,
//!   hyper, tokio, jemalloc) and wire format, with nothing in between: no storage, no limits,
//!   no authentication, no session state. `enigma-bench` drives it unchanged.
//! - `enigma-floor redis`: the native Redis commands a stored-and-delivered message needs at
//!   least (XADD, the doorbell PUBLISH, XDEL after delivery), pipelined, at a fixed rate; it
//!   reports the CPU redis-server spent per message.
//!
//! Neither shares code with the relay's sessions or engines: a floor that did would move with
//! the relay and stop being a reference.

mod forwarder;
#[allow(dead_code)]
#[path = "../enigma-bench/procfs.rs"]
mod procfs;
mod redis_floor;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The relay's allocator (see src/bin/enigma-server.rs): the floor must not win on malloc.
#[cfg(all(target_os = "linux", target_env = "gnu", feature = "jemalloc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "enigma-floor", version, about = "Reference floors for enigma-bench's cost per message")]
struct Args {
    #[command(subcommand)]
    floor: Floor,
}

#[derive(Subcommand)]
enum Floor {
    /// A bare WebSocket forwarder: `GET /login/{key}` answers the key as the user id,
    /// `/ws/{userId}` forwards every `{from,to,payload}` frame to `to`'s socket as is.
    Forwarder(forwarder::Args),
    /// XADD + PUBLISH per message, XDEL once "delivered", pipelined at a fixed rate; prints
    /// redis-server's CPU µs per message (JSON with --json).
    Redis(redis_floor::Args),
}

/// The relay's runtime: tokio's multi-threaded default, one worker per CPU.
#[tokio::main]
async fn main() -> ExitCode {
    let result = match Args::parse().floor {
        Floor::Forwarder(args) => forwarder::run(args).await,
        Floor::Redis(args) => redis_floor::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("enigma-floor: {e}");
            ExitCode::from(1)
        }
    }
}
