//! The Redis floor: per message the three native commands a stored-and-delivered message
//! cannot do without — `XADD` of the envelope to the recipient's stream, the doorbell `PUBLISH`
//! (with a subscriber listening, as every relay replica does), and `XDEL` once it is delivered
//! — pipelined in batches through the relay's `redis` crate, at a fixed rate. It reports the
//! CPU time redis-server spent (from /proc) per message.
//!
//! Left out, because they are what the relay's scripts add: the inbox share, the sequence
//! counter, TTL refreshes, the send budgets, and running it all as Lua.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::AsyncCommands;

use crate::procfs;

#[derive(clap::Args)]
pub struct Args {
    /// The redis-server to load (loopback only).
    #[arg(long, default_value = "redis://127.0.0.1:6379/")]
    url: String,
    /// Its pid, for its CPU time (/proc/PID/stat).
    #[arg(long)]
    redis_pid: u32,
    /// Messages in total (bounded: the run ends after them).
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Messages per second.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Recipients (one stream and one doorbell channel each), like the bench's pairs.
    #[arg(long, default_value_t = 100)]
    recipients: u64,
    /// Envelope payload in bytes (the envelope is a `{from,to,payload}` frame around it).
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Commands per pipeline, in messages.
    #[arg(long, default_value_t = 100)]
    batch: u64,
    /// JSON on stdout instead of a line of text.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> Result<(), String> {
    let rest = args.url.strip_prefix("redis://").ok_or("--url: redis://HOST:PORT/ only")?;
    if !["127.", "localhost", "[::1]"].iter().any(|l| rest.starts_with(l)) {
        return Err(format!("--url {}: loopback only", args.url));
    }
    if args.messages == 0 || args.rate == 0 || args.recipients == 0 || args.batch == 0 {
        return Err("--messages, --rate, --recipients and --batch must be positive".into());
    }
    let pid = args.redis_pid.to_string();
    let client = redis::Client::open(args.url.as_str()).map_err(|e| format!("--url: {e}"))?;
    let mut conn = client.get_multiplexed_async_connection().await.map_err(|e| format!("Redis: {e}"))?;
    let prefix = format!("enigma-floor:{}:", std::process::id());
    let (inbox, bell) = (|r: u64| format!("{prefix}inbox:{r}"), |r: u64| format!("{prefix}bell:{r}"));

    // The doorbell's listener: a relay replica subscribes to its users' channels and reads
    // every ring; so does this one (the messages are counted, nothing else).
    let mut pubsub = client.get_async_pubsub().await.map_err(|e| format!("Redis subscribe: {e}"))?;
    for r in 0..args.recipients {
        pubsub.subscribe(bell(r)).await.map_err(|e| format!("Redis subscribe: {e}"))?;
    }
    let rings = Arc::new(AtomicU64::new(0));
    let listener = tokio::spawn({
        let rings = rings.clone();
        async move {
            let mut stream = pubsub.into_on_message();
            while stream.next().await.is_some() {
                rings.fetch_add(1, Ordering::Relaxed);
            }
        }
    });

    let payload = "x".repeat(args.payload_bytes);
    let envelope =
        |r: u64| format!(r#"{{"from":"floor-sender-{r}","to":"floor-recipient-{r}","payload":"{payload}"}}"#);
    let cpu_before =
        procfs::cpu_ticks(&pid).ok_or_else(|| format!("--redis-pid {pid}: cannot read /proc/{pid}/stat"))?;
    let started = Instant::now();
    let period = Duration::from_secs_f64(args.batch as f64 / args.rate as f64);
    // The previous batch's (stream, id): "delivered" by the time the next one goes out.
    let mut delivered: Vec<(u64, String)> = Vec::new();
    let mut sent = 0u64;
    let mut batches = 0u64;
    while sent < args.messages {
        tokio::time::sleep_until((started + period * batches as u32).into()).await;
        let count = args.batch.min(args.messages - sent);
        let mut pipe = redis::pipe();
        for (r, id) in &delivered {
            pipe.xdel(inbox(*r), &[id]).ignore();
        }
        let recipients: Vec<u64> = (sent..sent + count).map(|m| m % args.recipients).collect();
        for &r in &recipients {
            let e = envelope(r);
            pipe.xadd(inbox(r), "*", &[("e", &e)]);
            pipe.publish(bell(r), &e).ignore();
        }
        let ids: Vec<String> = pipe.query_async(&mut conn).await.map_err(|e| format!("Redis: {e}"))?;
        delivered = recipients.into_iter().zip(ids).collect();
        sent += count;
        batches += 1;
    }
    let mut pipe = redis::pipe();
    for (r, id) in &delivered {
        pipe.xdel(inbox(*r), &[id]).ignore();
    }
    let () = pipe.query_async(&mut conn).await.map_err(|e| format!("Redis: {e}"))?;
    let elapsed = started.elapsed().as_secs_f64();
    // The last rings are on their way: a bounded wait, so the count says whether the listener
    // heard them (it is reported, not judged).
    let heard = Instant::now();
    while rings.load(Ordering::Relaxed) < sent && heard.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rings = rings.load(Ordering::Relaxed);
    let cpu_after = procfs::cpu_ticks(&pid).ok_or_else(|| format!("redis-server {pid} went away"))?;
    let redis_secs = (cpu_after - cpu_before) as f64 / procfs::TICKS_PER_SEC;
    let us_per_msg = redis_secs * 1e6 / sent as f64;

    // Leave nothing behind: the streams are empty but still exist.
    let keys: Vec<String> = (0..args.recipients).map(inbox).collect();
    let _: () = conn.del(keys).await.map_err(|e| format!("Redis: {e}"))?;
    drop(conn);
    listener.abort();
    if args.json {
        let report = serde_json::json!({
            "messages": sent,
            "offered_rate": args.rate,
            "achieved_rate": sent as f64 / elapsed,
            "seconds": elapsed,
            "batch": args.batch,
            "payload_bytes": args.payload_bytes,
            "rings_heard": rings,
            "redis_cpu_secs": redis_secs,
            "redis_us_per_msg": us_per_msg,
        });
        println!("{report}");
    } else {
        println!(
            "{sent} messages in {elapsed:.1} s ({:.0}/s, batches of {}, {rings} rings heard): \
             redis-server {us_per_msg:.2} CPU µs/msg",
            sent as f64 / elapsed,
            args.batch
        );
    }
    Ok(())
}
