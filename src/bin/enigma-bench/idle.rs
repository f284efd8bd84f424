//! `--connections N`: hold N idle sockets and weigh them in the server's resident memory.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::procfs::rss_kib;
use crate::progress::Progress;
use crate::report::Idle;
use crate::target::{self, Replica, Ws};

/// Sockets per source address. One address has ~28k ephemeral ports (32768-60999) towards
/// one server port, but the kernel's search for a free port slows down long before they run
/// out: 19,000 sockets from one address took 10 s to open here, from four 4.4 s.
pub const SOCKETS_PER_SOURCE: u64 = 5_000;
/// Opening stops after this many failures: with a server that hangs, every attempt would wait
/// for its timeout, and tens of thousands of them would take hours.
const MAX_FAILURES: u64 = 100;
/// Time for the server to finish setting up the last sockets before its RSS is read.
const SETTLE: Duration = Duration::from_secs(1);
/// Before the sockets open, the server's RSS is read once it has stopped moving: right after
/// the logins its allocator still holds pages the logins freed (jemalloc gives them back a
/// second or two later), and a figure read then made the per-socket difference swing by
/// ±1.5 KiB between runs of the same server. Sampled every [`RSS_SAMPLE`], read when it moved
/// less than [`RSS_STILL_KIB`] over two intervals in a row (three samples), or after
/// [`RSS_WAIT`] at most.
const RSS_SAMPLE: Duration = Duration::from_millis(500);
const RSS_STILL_KIB: u64 = 256;
const RSS_WAIT: Duration = Duration::from_secs(10);

/// The source address of socket `i`: the default one while it suffices, else 127.0.0.2,
/// 127.0.0.3, … (every 127/8 address is local on Linux, no configuration needed).
pub fn source_for(i: u64, sources: u64) -> Option<Ipv4Addr> {
    (sources > 1).then(|| Ipv4Addr::new(127, 0, 0, 2 + (i % sources) as u8))
}

pub struct Plan<'a> {
    pub replicas: &'a [Replica],
    pub users: &'a [String],
    pub sources: u64,
    pub concurrency: usize,
    pub hold: Duration,
    pub server_pids: &'a [String],
}

/// Opens every socket, holds them for the hold time while answering pings, and reports.
/// Returns the idle report and the time the connects took.
pub async fn hold(plan: Plan<'_>, progress: &Progress) -> (Idle, Duration) {
    let requested = plan.users.len() as u64;
    let before = settled_rss(plan.server_pids).await;
    let own_before = rss_kib("self");
    let cancel = CancellationToken::new();
    let open = Arc::new(AtomicU64::new(0));
    let config = target::ws_config(4096);

    let started = tokio::time::Instant::now();
    let mut first_error = None;
    let (mut opened, mut failed) = (0u64, 0u64);
    let mut holders = Vec::with_capacity(plan.users.len());
    let mut attempts = futures_util::stream::iter(plan.users.iter().enumerate())
        .map(|(i, user)| {
            let replica = &plan.replicas[i % plan.replicas.len()];
            target::open_ws(replica, user, source_for(i as u64, plan.sources), config)
        })
        .buffer_unordered(plan.concurrency);
    while let Some(result) = attempts.next().await {
        match result {
            Ok(ws) => {
                opened += 1;
                holders.push(tokio::spawn(hold_one(ws, cancel.clone(), open.clone())));
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
                if failed >= MAX_FAILURES {
                    break;
                }
            }
        }
        progress.set(opened + failed, &format!("open {opened} failed {failed}"));
    }
    drop(attempts);
    let connect_time = started.elapsed();

    tokio::time::sleep(SETTLE).await;
    progress.set(requested, &format!("holding {} sockets", open.load(Ordering::Relaxed)));
    tokio::time::sleep(plan.hold).await;
    let after = server_rss(plan.server_pids);
    let own_after = rss_kib("self");
    let still_open = open.load(Ordering::Relaxed);

    cancel.cancel();
    let closing = async {
        for holder in holders {
            let _ = holder.await;
        }
    };
    // Close frames go out in a moment; a server that stopped reading must not keep us here.
    let _ = tokio::time::timeout(Duration::from_secs(10), closing).await;
    let per = |before: Option<u64>, after: Option<u64>| match (before, after) {
        (Some(b), Some(a)) if opened > 0 => Some((a as f64 - b as f64) / opened as f64),
        _ => None,
    };
    let idle = Idle {
        requested,
        opened,
        failed,
        still_open,
        hold_secs: plan.hold.as_secs_f64(),
        source_addresses: plan.sources,
        server_rss_before_kib: before,
        server_rss_after_kib: after,
        server_kib_per_connection: per(before, after),
        generator_kib_per_connection: per(own_before, own_after),
        first_error: first_error.map(|e| advise(e, requested, plan.sources)),
    };
    (idle, connect_time)
}

/// The servers' RSS once it stopped moving (see [`RSS_SAMPLE`]).
async fn settled_rss(pids: &[String]) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + RSS_WAIT;
    let mut last = server_rss(pids)?;
    let mut still = 0;
    while still < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(RSS_SAMPLE).await;
        let now = server_rss(pids)?;
        still = if now.abs_diff(last) < RSS_STILL_KIB { still + 1 } else { 0 };
        last = now;
    }
    Some(last)
}

/// The replicas' RSS together (sockets are spread over them).
fn server_rss(pids: &[String]) -> Option<u64> {
    if pids.is_empty() { None } else { pids.iter().map(|p| rss_kib(p)).sum() }
}

/// Holds one socket: reads it (so the server's pings are answered) until the end.
async fn hold_one(mut ws: Ws, cancel: CancellationToken, open: Arc<AtomicU64>) {
    open.fetch_add(1, Ordering::Relaxed);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            message = ws.next() => match message {
                Some(Ok(m)) if !m.is_close() => {}
                _ => {
                    open.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
    open.fetch_sub(1, Ordering::Relaxed);
    let _ = ws.close(None).await;
}

/// Port exhaustion and fd limits look alike from here; say what to do about them.
fn advise(error: String, requested: u64, sources: u64) -> String {
    if error.contains("Cannot assign requested address") || error.contains("Address already in use") {
        format!(
            "{error} (out of local ports: {requested} sockets over {sources} source address(es); \
             use --source-ips or widen net.ipv4.ip_local_port_range)"
        )
    } else if error.contains("Too many open files") {
        format!("{error} (raise the limit with `ulimit -n`, for this process and the server)")
    } else {
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_sources_only_when_needed() {
        assert_eq!(source_for(5, 1), None);
        assert_eq!(source_for(0, 3), Some(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(source_for(4, 3), Some(Ipv4Addr::new(127, 0, 0, 3)));
    }
}
