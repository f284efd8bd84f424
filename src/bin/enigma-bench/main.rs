//! `enigma-bench`: an open-loop load generator for the Enigma relay. (A little over 600 lines:
//! the arguments and the three modes' drivers read best together; the work is in the other files.)
//!
//! It talks raw HTTP and WebSocket (spec frames), not the SDK, so that it measures the server
//! and not a client library. Three modes:
//! - fixed rate (default): `--pairs` sender→recipient pairs, `--rate` messages/s in total for
//!   `--duration`, latency from the scheduled send time (see `traffic`);
//! - `--ramp`: constant-rate steps growing by `--ramp-factor` until saturation (achieved rate
//!   below `--min-delivery` of the offered rate, p99 above `--max-p99-ms`, or any loss or
//!   error), then a few bisection steps between the last rate that held and the first that
//!   failed;
//! - `--connections N`: N idle sockets and the server's RSS per connection (`--server-pid`).
//!
//! In the traffic modes, `--ack` makes the recipients acknowledging `enigma.v1` clients (`ack`,
//! `receiver`) and `--churn PERIOD` closes and reopens every socket about every PERIOD (`churn`).
//!
//! Everything is bounded: a fixed number of steps, timeouts on every login, connect and drain,
//! and traffic only to loopback addresses. The process exits by itself.

mod ack;
mod churn;
mod cost;
mod idle;
mod procfs;
mod progress;
mod receiver;
mod report;
mod target;
mod traffic;
mod wire;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use futures_util::StreamExt;

use crate::churn::{Link, Schedule};
use crate::progress::Progress;
use crate::receiver::Recipient;
use crate::report::{ProcessCost, Report, Saturation, Setup, Step};
use crate::target::Replica;
use crate::traffic::{Clock, Sender, Shared};

#[derive(Parser, Debug)]
#[command(
    name = "enigma-bench",
    version,
    about = "Open-loop load generator for the Enigma relay (loopback only)",
    after_help = "Examples:\n  enigma-bench --url http://127.0.0.1:8000 --pairs 100 --rate 20000 --duration 10\n  \
                  enigma-bench --url http://127.0.0.1:8001,http://127.0.0.1:8002 --ramp --rate 5000\n  \
                  enigma-bench --url http://127.0.0.1:8000 --connections 10000 --server-pid $(pgrep -n enigma-server)"
)]
struct Args {
    /// Server replicas (loopback only), repeated or comma-separated. With more than one, each
    /// pair's sender and recipient are on different replicas.
    #[arg(long = "url", value_delimiter = ',', default_value = "http://127.0.0.1:8000")]
    urls: Vec<String>,
    /// Sender→recipient user pairs, each user with its own WebSocket.
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// Target total rate in messages/s (the first step's rate with --ramp).
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Sending time of the run (of each step with --ramp): 10, 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Traffic at the first rate before measuring (connections warm, buffers grown).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Payload length in bytes (at least 32: sequence number and send time).
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Longest wait for in-flight messages after a step; what has not arrived by then is lost.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drain: Duration,
    /// Recipients use the acknowledged subprotocol (enigma.v1) and acknowledge every delivery
    /// (in batches); re-deliveries it allows after a reconnect are counted apart from duplicates.
    #[arg(long)]
    ack: bool,
    /// Reconnect churn: every socket is closed and opened again about every PERIOD (jittered,
    /// spread over the pairs) while the traffic keeps its schedule: 10s, 500ms, 1m.
    #[arg(long, value_name = "PERIOD", value_parser = parse_duration)]
    churn: Option<Duration>,

    /// Find the saturation point: steps of growing rate.
    #[arg(long)]
    ramp: bool,
    /// Rate multiplier between steps while every step holds.
    #[arg(long, default_value_t = 1.5)]
    ramp_factor: f64,
    /// Bisection steps between the last rate that held and the first that failed.
    #[arg(long, default_value_t = 3)]
    ramp_refine: u32,
    /// Upper bound on the number of steps.
    #[arg(long, default_value_t = 16)]
    ramp_max_steps: u32,
    /// Never offer more than this.
    #[arg(long, default_value_t = 2_000_000)]
    ramp_max_rate: u64,
    /// Saturated when p99 latency exceeds this (ms).
    #[arg(long, default_value_t = 50.0)]
    max_p99_ms: f64,
    /// Saturated when the achieved rate falls below this fraction of the offered rate.
    #[arg(long, default_value_t = 0.95)]
    min_delivery: f64,

    /// Idle-connection mode: log in N users, open N sockets, hold them.
    #[arg(long, value_name = "N")]
    connections: Option<u64>,
    /// Server processes (repeated or comma-separated): their CPU use is reported per step, and
    /// with --connections their VmRSS is read before and after the sockets open.
    #[arg(long = "server-pid", value_name = "PID", value_delimiter = ',')]
    server_pids: Vec<u32>,
    /// Other processes whose CPU time per delivered message is reported (e.g. redis-server):
    /// `PID` or `LABEL=PID`, repeated or comma-separated (the label defaults to the command
    /// name). The generator and every --server-pid are always reported.
    #[arg(long = "cpu-pid", value_name = "[LABEL=]PID", value_delimiter = ',')]
    cpu_pids: Vec<String>,
    /// How long idle sockets are held before the final RSS reading.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    hold: Duration,
    /// Source addresses for idle sockets (127.0.0.2, 127.0.0.3, …); default: one per 5,000
    /// sockets (one address has ~28k ephemeral ports, and finding a free one slows down as
    /// they fill up).
    #[arg(long, value_name = "K")]
    source_ips: Option<u64>,

    /// Logins and WebSocket handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// tokio worker threads (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Same as --format json.
    #[arg(long, conflicts_with = "format")]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "PATH")]
    json_file: Option<std::path::PathBuf>,
    /// No progress bar and no per-step lines on stderr.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
    Markdown,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = s.find(|c: char| c.is_ascii_alphabetic()).map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = number.trim().parse().map_err(|_| format!("`{s}`: expected a duration like 10, 10s, 500ms, 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (ms, s, m)")),
    };
    if !(0.0..=3600.0).contains(&secs) {
        return Err(format!("`{s}`: must be between 0 and 1 hour"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl Args {
    fn check(&self) -> Result<(), String> {
        let fail = |cond: bool, msg: &str| if cond { Err(msg.to_string()) } else { Ok(()) };
        fail(self.pairs == 0 || self.pairs > 100_000, "--pairs must be 1..=100000")?;
        fail(self.rate == 0 || self.rate > 10_000_000, "--rate must be 1..=10000000")?;
        fail(self.duration.is_zero(), "--duration must be positive")?;
        fail(!(wire::STAMP_LEN..=60_000).contains(&self.payload_bytes), "--payload-bytes must be 32..=60000")?;
        fail(!(self.ramp_factor > 1.0 && self.ramp_factor <= 10.0), "--ramp-factor must be in (1, 10]")?;
        fail(self.ramp_max_steps == 0 || self.ramp_max_steps > 100, "--ramp-max-steps must be 1..=100")?;
        fail(!(self.min_delivery > 0.0 && self.min_delivery <= 1.0), "--min-delivery must be in (0, 1]")?;
        fail(self.concurrency == 0 || self.concurrency > 4096, "--concurrency must be 1..=4096")?;
        fail(self.threads == Some(0), "--threads must be positive")?;
        fail(self.connections.is_some_and(|n| n == 0 || n > 1_000_000), "--connections must be 1..=1000000")?;
        fail(self.source_ips.is_some_and(|k| k == 0 || k > 250), "--source-ips must be 1..=250")?;
        fail(self.ramp && self.connections.is_some(), "--ramp and --connections are separate modes")?;
        fail(self.churn.is_some_and(|p| p < Duration::from_millis(100)), "--churn must be at least 100ms")?;
        let traffic_only = self.ack || self.churn.is_some();
        fail(traffic_only && self.connections.is_some(), "--ack and --churn drive traffic, not --connections")?;
        Ok(())
    }

    fn format(&self) -> Format {
        if self.json { Format::Json } else { self.format }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = args.check() {
        eprintln!("enigma-bench: {e}");
        return ExitCode::from(2);
    }
    let replicas = match args.urls.iter().map(|u| Replica::parse(u)).collect::<Result<Vec<_>, _>>() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("enigma-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("enigma-bench: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let show_bar = !args.quiet && args.format() == Format::Text && std::io::stdout().is_terminal();
    let progress = Progress::new(show_bar, args.quiet);
    let result = runtime.block_on(async {
        match args.connections {
            Some(n) => run_idle(&args, &replicas, threads, n, &progress).await,
            None => run_traffic(&args, &replicas, threads, &progress).await,
        }
    });
    progress.finish();
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(report) => {
            if let Some(path) = &args.json_file
                && let Err(e) = std::fs::write(path, report.json() + "\n")
            {
                eprintln!("enigma-bench: cannot write {}: {e}", path.display());
                return ExitCode::from(1);
            }
            match args.format() {
                Format::Text => print!("{}", report.text()),
                Format::Json => println!("{}", report.json()),
                Format::Markdown => print!("{}", report.markdown()),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("enigma-bench: {e}");
            ExitCode::from(1)
        }
    }
}

/// Fails early, with advice, when the sockets would not fit in the open-file limit.
fn check_fd_limit(sockets: u64, concurrency: usize) -> Result<(), String> {
    let need = sockets + concurrency as u64 + 64;
    match procfs::open_files_limit("self") {
        Some(limit) if limit < need => Err(format!(
            "{sockets} sockets need about {need} file descriptors but the limit is {limit}: \
             raise it with `ulimit -n` (up to `ulimit -Hn`) or open fewer"
        )),
        _ => Ok(()),
    }
}

/// Logs in `count` users, user `i` on replica `replica_of(i)`; any failure aborts the run.
async fn login_all(
    replicas: &[Replica],
    count: usize,
    replica_of: impl Fn(usize) -> usize,
    concurrency: usize,
    progress: &Progress,
) -> Result<(Vec<String>, Duration), String> {
    let client = target::http_client(concurrency)?;
    let nonce = target::run_nonce();
    progress.start("login", count as u64);
    let started = tokio::time::Instant::now();
    let mut ids = vec![String::new(); count];
    let mut logins = futures_util::stream::iter(0..count)
        .map(|i| {
            let (client, replica, key) = (&client, &replicas[replica_of(i)], target::unique_key(&nonce, i));
            async move { (i, target::login(client, replica, &key).await) }
        })
        .buffer_unordered(concurrency);
    let mut done = 0;
    while let Some((i, result)) = logins.next().await {
        ids[i] = result?;
        done += 1;
        if done % 256 == 0 || done == count {
            progress.set(done as u64, "");
        }
    }
    Ok((ids, started.elapsed()))
}

/// The `--server-pid` processes, checked to exist.
fn server_pids(args: &Args) -> Result<Vec<String>, String> {
    let pids: Vec<String> = args.server_pids.iter().map(|p| p.to_string()).collect();
    match pids.iter().find(|p| procfs::rss_kib(p).is_none()) {
        Some(pid) => Err(format!("--server-pid {pid}: cannot read /proc/{pid}/status")),
        None => Ok(pids),
    }
}

fn per_sec(n: u64, d: Duration) -> f64 {
    if d.is_zero() { 0.0 } else { n as f64 / d.as_secs_f64() }
}

async fn run_traffic(args: &Args, replicas: &[Replica], threads: usize, progress: &Progress) -> Result<Report, String> {
    let pairs = args.pairs;
    check_fd_limit(2 * pairs as u64, args.concurrency)?;
    let server_pids = server_pids(args)?;
    let watched = cost::watched(&args.cpu_pids, &server_pids)?;
    // User 2p sends, user 2p+1 receives; with several replicas they sit on neighbouring ones.
    let replica_of = |u: usize| (u / 2 + u % 2) % replicas.len();
    let (ids, login_time) = login_all(replicas, 2 * pairs, replica_of, args.concurrency, progress).await?;

    progress.start("connect", 2 * pairs as u64);
    let started = tokio::time::Instant::now();
    // Small: tungstenite zeroes `read_buffer_size` bytes before every read (even one that
    // finds nothing), so a large buffer costs a big memset per message.
    let config = target::ws_config(4096);
    // Recipients (odd users) speak enigma.v1 with --ack; senders stay specification clients.
    let links: Vec<Link> = (0..2 * pairs)
        .map(|u| Link {
            replica: replicas[replica_of(u)].clone(),
            user: ids[u].clone(),
            config,
            subprotocol: (args.ack && u % 2 == 1).then_some(enigma::protocol::SUBPROTOCOL_V1),
        })
        .collect();
    let mut sockets: Vec<Option<target::Ws>> = (0..2 * pairs).map(|_| None).collect();
    let mut opens = futures_util::stream::iter(0..2 * pairs)
        .map(|u| {
            let link = &links[u];
            async move { (u, link.open().await) }
        })
        .buffer_unordered(args.concurrency);
    let mut opened = 0;
    while let Some((u, result)) = opens.next().await {
        sockets[u] = Some(result?);
        opened += 1;
        progress.set(opened, "");
    }
    drop(opens);
    let connect_time = started.elapsed();

    let clock = Clock::new();
    let shared = Shared::new(clock);
    let mut senders = Vec::with_capacity(pairs);
    let mut receivers = Vec::with_capacity(pairs);
    let seed = clock.now_ns() ^ u64::from(std::process::id()) << 32;
    let churn = |u: usize| args.churn.map(|period| Schedule::new(period, u, 2 * pairs, seed, clock.now_ns()));
    let mut sockets = sockets.into_iter().zip(links).map(|(s, link)| (s.expect("every socket opened"), link));
    for p in 0..pairs {
        let ((send_ws, send_link), (recv_ws, recv_link)) =
            (sockets.next().expect("2 per pair"), sockets.next().expect("2 per pair"));
        senders.push(Sender::new(p, send_ws, send_link, churn(2 * p), &ids[2 * p + 1], args.payload_bytes));
        let recipient = Recipient { pair: p, link: recv_link, churn: churn(2 * p + 1) };
        receivers.push(receiver::spawn_receiver(recipient, recv_ws, shared.clone()));
    }

    let setup = Setup {
        logins: 2 * pairs as u64,
        login_secs: login_time.as_secs_f64(),
        logins_per_sec: per_sec(2 * pairs as u64, login_time),
        sockets: 2 * pairs as u64,
        connect_secs: connect_time.as_secs_f64(),
        connects_per_sec: per_sec(2 * pairs as u64, connect_time),
    };
    let mut runner = StepRunner { args, shared: &shared, senders: &mut senders, progress, server_pids, watched };
    if !args.warmup.is_zero() {
        runner.run("warmup", args.rate, args.warmup).await;
    }
    let (steps, saturation) = if args.ramp {
        ramp(args, &mut runner).await
    } else {
        let mut step = runner.run("run", args.rate, args.duration).await;
        step.saturated = judge(&step, args);
        (vec![step], None)
    };

    shared.cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        for r in receivers {
            let _ = r.await;
        }
    })
    .await;
    Ok(Report {
        mode: if args.ramp { "ramp" } else { "fixed" },
        urls: replicas.iter().map(|r| r.authority.clone()).collect(),
        threads,
        pairs: Some(pairs),
        payload_bytes: Some(args.payload_bytes),
        acknowledging: args.ack,
        churn_secs: args.churn.map(|p| p.as_secs_f64()),
        setup,
        steps,
        saturation,
        idle: None,
    })
}

struct StepRunner<'a> {
    args: &'a Args,
    shared: &'a std::sync::Arc<Shared>,
    senders: &'a mut Vec<Sender>,
    progress: &'a Progress,
    server_pids: Vec<String>,
    watched: Vec<(procfs::Watched, &'static str)>,
}

impl StepRunner<'_> {
    async fn run(&mut self, label: &str, rate: u64, duration: Duration) -> Step {
        let prefix = format!("{label} {rate}/s");
        self.progress.start(&prefix, 1000);
        let on_progress = |fraction: f64, sent: u64, delivered: u64| {
            self.progress.set((fraction * 1000.0) as u64, &format!("sent {sent} delivered {delivered}"));
        };
        let (generator, server) =
            (procfs::CpuMeter::start(vec!["self".into()]), procfs::CpuMeter::start(self.server_pids.clone()));
        let processes: Vec<procfs::Watched> = self.watched.iter().map(|(w, _)| w.clone()).collect();
        let cost = procfs::CostMeter::start(&processes);
        let pairs = self.args.pairs;
        let mut step =
            traffic::run_step(self.senders, self.shared, pairs, rate, duration, self.args.drain, &on_progress).await;
        // Over the whole step, drain included: a saturated server keeps working while it drains.
        step.generator_cpu_pct = generator.percent();
        step.server_cpu_pct = server.percent();
        let roles = self.watched.iter().map(|(_, role)| *role);
        step.cpu = cost
            .stop()
            .into_iter()
            .zip(roles)
            .map(|(spent, role)| ProcessCost::of(spent, role, step.delivered))
            .collect();
        step
    }
}

/// Why a step counts as saturated, if it does.
fn judge(step: &Step, args: &Args) -> Option<String> {
    let mut why = Vec::new();
    if step.achieved_ratio < args.min_delivery {
        why.push(format!("achieved {:.1}% of offered", step.achieved_ratio * 100.0));
    }
    if step.latency_ms.p99 > args.max_p99_ms {
        why.push(format!("p99 {:.1} ms > {} ms", step.latency_ms.p99, args.max_p99_ms));
    }
    if step.lost + step.duplicated + step.reordered > 0 {
        why.push(format!("lost {} duplicated {} reordered {}", step.lost, step.duplicated, step.reordered));
    }
    if step.errors > 0 {
        why.push(format!("{} errors", step.errors));
    }
    if step.unsent > 0 {
        why.push(format!("{} unsent", step.unsent));
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// Rounds a rate to three significant digits, so that steps read 15000, 22500, 33800.
fn nice_rate(rate: f64) -> u64 {
    let rate = rate.max(1.0);
    let unit = 10f64.powi((rate.log10().floor() as i32 - 2).max(0));
    ((rate / unit).round() * unit) as u64
}

async fn ramp(args: &Args, runner: &mut StepRunner<'_>) -> (Vec<Step>, Option<Saturation>) {
    let mut steps = Vec::new();
    let mut held: Option<u64> = None;
    let mut failed: Option<(u64, String)> = None;
    let mut rate = args.rate;
    let mut refined = 0;
    for n in 1..=args.ramp_max_steps {
        let mut step = runner.run(&format!("step {n}"), rate, args.duration).await;
        step.saturated = judge(&step, args);
        runner.progress.note(&format!(
            "step {n}: offered {rate}/s achieved {:.0}/s ({:.1}%) p99 {:.2} ms max {:.2} ms lost {} errors {} → {}",
            step.achieved_rate,
            step.achieved_ratio * 100.0,
            step.latency_ms.p99,
            step.latency_ms.max,
            step.lost,
            step.errors,
            step.saturated.as_deref().unwrap_or("held"),
        ));
        match &step.saturated {
            None => held = held.max(Some(rate)),
            Some(why) if failed.as_ref().is_none_or(|(r, _)| rate < *r) => failed = Some((rate, why.clone())),
            Some(_) => {}
        }
        let closed = runner.shared.closed.load(std::sync::atomic::Ordering::Relaxed);
        steps.push(step);
        if closed > 0 {
            runner.progress.note(&format!("stopping: {closed} sockets closed, later steps would not be comparable"));
            break;
        }
        rate = match &failed {
            None => {
                let next = nice_rate(rate as f64 * args.ramp_factor).max(rate + 1);
                if next > args.ramp_max_rate {
                    break;
                }
                next
            }
            Some((bad, _)) => {
                let good = held.unwrap_or(0);
                let mid = nice_rate((good + bad) as f64 / 2.0);
                if refined >= args.ramp_refine || mid <= good || mid >= *bad || bad - good <= good / 50 {
                    break;
                }
                refined += 1;
                mid
            }
        };
    }
    let saturation = Saturation {
        max_sustained_rate: held,
        first_failing_rate: failed.as_ref().map(|(r, _)| *r),
        reason: failed.map(|(_, why)| why),
    };
    (steps, Some(saturation))
}

async fn run_idle(
    args: &Args,
    replicas: &[Replica],
    threads: usize,
    count: u64,
    progress: &Progress,
) -> Result<Report, String> {
    check_fd_limit(count, args.concurrency)?;
    let server_pids = server_pids(args)?;
    for pid in &server_pids {
        let share = count.div_ceil(replicas.len() as u64);
        if let Some(limit) = procfs::open_files_limit(pid).filter(|&l| l < share + 64) {
            progress
                .note(&format!("warning: server {pid}'s open-file limit is {limit}: it cannot hold {share} sockets"));
        }
    }
    let sources = args.source_ips.unwrap_or_else(|| count.div_ceil(idle::SOCKETS_PER_SOURCE));
    if sources > 1 && replicas.iter().any(|r| !r.addr.is_ipv4()) {
        return Err("several source addresses need IPv4 replica addresses (127.0.0.1)".into());
    }
    let (users, login_time) =
        login_all(replicas, count as usize, |i| i % replicas.len(), args.concurrency, progress).await?;
    progress.start("connect", count);
    let plan = idle::Plan {
        replicas,
        users: &users,
        sources,
        concurrency: args.concurrency,
        hold: args.hold,
        server_pids: &server_pids,
    };
    let (idle, connect_time) = idle::hold(plan, progress).await;
    Ok(Report {
        mode: "connections",
        urls: replicas.iter().map(|r| r.authority.clone()).collect(),
        threads,
        pairs: None,
        payload_bytes: None,
        acknowledging: false,
        churn_secs: None,
        setup: Setup {
            logins: count,
            login_secs: login_time.as_secs_f64(),
            logins_per_sec: per_sec(count, login_time),
            sockets: idle.opened,
            connect_secs: connect_time.as_secs_f64(),
            connects_per_sec: per_sec(idle.opened, connect_time),
        },
        steps: Vec::new(),
        saturation: None,
        idle: Some(idle),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2.5s").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn nice_rates() {
        assert_eq!(nice_rate(15_000.0), 15_000);
        assert_eq!(nice_rate(33_750.0), 33_800);
        assert_eq!(nice_rate(151.5), 152);
        assert_eq!(nice_rate(7.4), 7);
    }

    #[test]
    fn the_defaults_are_valid() {
        let args = Args::parse_from(["enigma-bench"]);
        args.check().unwrap();
        assert_eq!(args.format(), Format::Text);
        assert!(Args::parse_from(["enigma-bench", "--payload-bytes", "8"]).check().is_err());
    }
}
