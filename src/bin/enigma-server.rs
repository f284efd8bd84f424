//! `enigma-server`: the relay. Configuration from defaults, `--config FILE` and
//! `ENIGMA__SECTION__KEY` environment variables (see README.md).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// jemalloc rather than glibc's malloc: glibc keeps what a burst allocated (a backlog while
/// Redis stalls) resident for good, jemalloc gives it back within about a second (its settings:
/// .cargo/config.toml); it also costs less per idle socket. docs/BENCHMARKS.md has the
/// measurements. Linux/glibc only: elsewhere jemalloc has no background thread to purge with.
/// Feature `jemalloc` (a default one; `make run` builds without it, for a shorter first build).
#[cfg(all(target_os = "linux", target_env = "gnu", feature = "jemalloc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "enigma-server",
    version,
    about = "Relay server for the Enigma end-to-end-encrypted messaging protocol"
)]
struct Args {
    /// TOML configuration file (optional; environment variables override it).
    #[arg(long, short, env = "ENIGMA_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let settings = match enigma::config::Settings::load(args.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("enigma-server: {e}");
            return ExitCode::from(2);
        }
    };
    enigma::telemetry::init_logging(&settings.log);
    let shutdown = enigma::shutdown_signal();
    let listener = match listen(settings.listen_addr()) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("enigma-server: cannot listen on {}: {e}", settings.server.addr);
            return ExitCode::from(1);
        }
    };
    match enigma::run(settings, listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "enigma-server stopped");
            eprintln!("enigma-server: {e}");
            ExitCode::from(1)
        }
    }
}

/// Binds with a deep accept queue: when a replica goes away, its users reconnect to the others
/// all at once, and a short queue (the OS default here is 128) drops their SYNs, which costs
/// each of them a retransmission second.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}
