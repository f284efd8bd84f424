//! Open-loop traffic between user pairs.
//!
//! Every message has a send time fixed in advance: message `k` of a step at `start + k / rate`,
//! owned by pair `k % pairs`. A sender that wakes up late sends everything that is due at once,
//! and latency is measured from the scheduled time, so a server that slows the generator down
//! (TCP back-pressure) shows up as latency and shortfall, never as a lower offered rate (no
//! coordinated omission).
//!
//! Timer precision: tokio's timer has a 1 ms resolution and rounds deadlines up, so a sender
//! sleeping until a send time wakes 1-2 ms late, slack that would be counted as server latency.
//! Instead a sender wakes up to [`HORIZON_NS`] *before* its next send time and releases every
//! message due within the horizon; a message released early is stamped with its actual send
//! time. The stamp, from which latency is measured, is therefore the earlier of the scheduled
//! and the actual send time: the scheduled time when the sender is late (what a real client
//! would have waited), the real one when it is early (nobody waited before it existed). The
//! offered rate is kept exactly, with a granularity of the horizon (a server that cannot absorb
//! such bursts shows it as latency); a generator that falls behind shows up in the send lag
//! (actual minus scheduled time, when positive).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

use crate::churn::{self, Link, Schedule};
use crate::report::{Percentiles, Step};
use crate::target::Ws;
use crate::wire::{FrameBuilder, Received, classify};

/// Frames written before a flush: one syscall carries many frames when a sender is behind.
const SEND_BATCH: usize = 64;
/// How long a client waits before opening a socket the server refused with 1013 (try again
/// later) again; going away and restarting (1001, 1012) are reopened at once.
const AFTER_REFUSAL: Duration = Duration::from_millis(250);
/// How long the reply to a server's close frame may take to leave.
const CLOSE_REPLY: Duration = Duration::from_secs(1);
/// How far ahead of their scheduled time messages may be released: tokio rounds a deadline up
/// to its next 1 ms tick and the worker parks with a millisecond timeout, so a sleep ends up to
/// ~2 ms after its deadline.
pub const HORIZON_NS: u64 = 2_000_000;
/// Stats are sharded by pair so that the two halves of the runtime rarely wait on one lock.
const SHARDS: usize = 32;
/// Largest latency recorded (µs); beyond it values saturate.
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// The drain after a step ends early when nothing arrived for this long.
const DRAIN_QUIET: Duration = Duration::from_secs(2);

/// Nanoseconds since the start of the run, shared by senders and receivers (one process, one
/// monotonic clock: no clock skew between the two ends).
#[derive(Clone, Copy)]
pub struct Clock {
    base: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock { base: Instant::now() }
    }
    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
    pub fn at(&self, ns: u64) -> Instant {
        self.base + Duration::from_nanos(ns)
    }
}

/// What one shard saw during the current step.
pub struct Tally {
    sent: u64,
    /// Sent on a socket the server refused before reading anything from it (see
    /// [`come_back`]): never stored, so neither delivered nor lost.
    refused: u64,
    pub delivered: u64,
    pub in_window: u64,
    /// Received again with nothing allowing it (see `ack`).
    pub duplicated: u64,
    /// Received again as `enigma.v1` allows: unacknowledged on a socket that closed.
    pub redelivered: u64,
    /// Deliveries acknowledged (acknowledgement frames written).
    pub acknowledged: u64,
    /// Sockets closed and opened again by `--churn`.
    pub reconnects: u64,
    pub reordered: u64,
    pub late: u64,
    errors: BTreeMap<String, u64>,
    pub latency_us: Histogram<u64>,
    send_lag_us: Histogram<u64>,
}

impl Tally {
    fn new() -> Tally {
        let histogram = || Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds");
        Tally {
            sent: 0,
            refused: 0,
            delivered: 0,
            in_window: 0,
            duplicated: 0,
            redelivered: 0,
            acknowledged: 0,
            reconnects: 0,
            reordered: 0,
            late: 0,
            errors: BTreeMap::new(),
            latency_us: histogram(),
            send_lag_us: histogram(),
        }
    }

    pub fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_string()).or_default() += 1;
    }

    fn merge(&mut self, other: &Tally) {
        self.sent += other.sent;
        self.refused += other.refused;
        self.delivered += other.delivered;
        self.in_window += other.in_window;
        self.duplicated += other.duplicated;
        self.redelivered += other.redelivered;
        self.acknowledged += other.acknowledged;
        self.reconnects += other.reconnects;
        self.reordered += other.reordered;
        self.late += other.late;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.latency_us.add(&other.latency_us).expect("same bounds");
        self.send_lag_us.add(&other.send_lag_us).expect("same bounds");
    }
}

/// State shared by the run's tasks.
pub struct Shared {
    pub clock: Clock,
    shards: Vec<Mutex<Tally>>,
    /// Scheduled start of the current step: earlier stamps are late arrivals of a past step.
    pub step_start_ns: AtomicU64,
    /// End of the current step's sending window, for the achieved rate.
    pub window_end_ns: AtomicU64,
    /// Sockets closed or failed since the start of the run.
    pub closed: AtomicU64,
    /// Stops the receivers at the end of the run.
    pub cancel: CancellationToken,
    /// Failures whose reason has been printed (the first few only).
    failures_noted: AtomicU64,
}

impl Shared {
    pub fn new(clock: Clock) -> Arc<Shared> {
        Arc::new(Shared {
            clock,
            shards: (0..SHARDS).map(|_| Mutex::new(Tally::new())).collect(),
            step_start_ns: AtomicU64::new(0),
            window_end_ns: AtomicU64::new(u64::MAX),
            closed: AtomicU64::new(0),
            cancel: CancellationToken::new(),
            failures_noted: AtomicU64::new(0),
        })
    }

    /// Prints why a socket failed (the first few reasons: the counts are in the report).
    pub fn note_failure(&self, reason: &str) {
        if self.failures_noted.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("enigma-bench: {reason}");
        }
    }

    pub fn shard(&self, pair: usize) -> MutexGuard<'_, Tally> {
        self.shards[pair % SHARDS].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (sent, delivered) so far in this step.
    pub fn progress(&self) -> (u64, u64) {
        self.shards.iter().fold((0, 0), |(s, d), shard| {
            let t = shard.lock().unwrap_or_else(|e| e.into_inner());
            (s + t.sent, d + t.delivered)
        })
    }

    /// Takes the step's figures and starts a fresh tally.
    fn take(&self) -> Tally {
        let mut total = Tally::new();
        for shard in &self.shards {
            let t = std::mem::replace(&mut *shard.lock().unwrap_or_else(|e| e.into_inner()), Tally::new());
            total.merge(&t);
        }
        total
    }
}

/// The sending half of a pair: the sender's socket, its frame builder and next sequence
/// number, where the socket is opened again and, with `--churn`, when.
pub struct Sender {
    pair: usize,
    ws: Ws,
    /// Messages written on this socket.
    written_here: u64,
    frames: FrameBuilder,
    next_seq: u64,
    link: Link,
    churn: Option<Schedule>,
}

impl Sender {
    pub fn new(pair: usize, ws: Ws, link: Link, churn: Option<Schedule>, to: &str, payload_bytes: usize) -> Sender {
        let frames = FrameBuilder::new(&link.user, to, payload_bytes);
        Sender { pair, ws, written_here: 0, frames, next_seq: 0, link, churn }
    }
}

/// One step's schedule.
struct Plan {
    start_ns: u64,
    rate: u64,
    pairs: u64,
    total: u64,
}

impl Plan {
    /// How many of the step's messages belong to `pair`.
    fn count(&self, pair: usize) -> u64 {
        let pair = pair as u64;
        if pair >= self.total { 0 } else { (self.total - 1 - pair) / self.pairs + 1 }
    }

    /// When `pair` sends its `j`-th message of the step.
    fn scheduled_ns(&self, pair: usize, j: u64) -> u64 {
        let k = u128::from(pair as u64 + j * self.pairs);
        self.start_ns + (k * 1_000_000_000 / u128::from(self.rate)) as u64
    }
}

pub fn close_kind(frame: Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        Some(frame) => format!("closed:{}", u16::from(frame.code)),
        None => "closed:no_code".into(),
    }
}

pub fn socket_closed(shared: &Shared, pair: usize, kind: String) {
    shared.closed.fetch_add(1, Ordering::Relaxed);
    shared.shard(pair).error(&kind);
}

/// Whether a client opens its socket again after the server closed it with `code`, as a
/// real client does: the server is going away or restarting (1001, 1012), or refused the
/// socket for now (1013: at capacity, or its storage unavailable when the socket was attached;
/// the relay then has read nothing from the socket). The close still counts as an error.
pub fn come_back(code: CloseCode) -> bool {
    matches!(code, CloseCode::Away | CloseCode::Restart | CloseCode::Again)
}

/// Counts a socket the server closed; `Some(code)` if the client should open it again (see
/// [`come_back`]).
pub fn closed_by_server(
    shared: &Shared,
    pair: usize,
    frame: Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>,
) -> Option<CloseCode> {
    let code = frame.as_ref().map(|frame| frame.code).filter(|code| come_back(*code));
    socket_closed(shared, pair, close_kind(frame));
    code
}

/// Answers the server's close frame (best effort, bounded) before the socket is dropped, and
/// waits a moment if the server asked to try again later.
pub async fn leave_closed(ws: &mut Ws, code: CloseCode) {
    let _ = tokio::time::timeout(CLOSE_REPLY, ws.flush()).await;
    if code == CloseCode::Again {
        tokio::time::sleep(AFTER_REFUSAL).await;
    }
}

/// Opens a socket of `pair` again (with back-off, see [`Link::reopen`]), moving its churn
/// schedule on; counted as a reconnection, or as a failure (`None`) if it cannot be opened.
pub async fn open_again(link: &Link, churn: Option<&mut Schedule>, shared: &Shared, pair: usize) -> Option<Ws> {
    let reopened = link.reopen().await;
    if let Some(schedule) = churn {
        schedule.advance(shared.clock.now_ns());
    }
    match reopened {
        Ok(ws) => {
            shared.shard(pair).reconnects += 1;
            Some(ws)
        }
        Err(e) => {
            shared.note_failure(&e);
            socket_closed(shared, pair, "reconnect_failed".into());
            None
        }
    }
}

/// What a frame read on a sender's socket leaves it in.
enum SenderSocket {
    Open,
    /// Closed or failed for good.
    Gone,
    /// Closed by the server with a code asking the client to come back.
    ComeBack(CloseCode),
}

/// Handles a frame arriving on a sender's socket (only errors are expected there).
fn on_sender_frame(
    shared: &Shared,
    pair: usize,
    message: Option<Result<Message, impl std::fmt::Display>>,
) -> SenderSocket {
    match message {
        Some(Ok(Message::Text(text))) => {
            on_sender_text(shared, pair, text.as_str());
            SenderSocket::Open
        }
        Some(Ok(Message::Close(frame))) => match closed_by_server(shared, pair, frame) {
            Some(code) => SenderSocket::ComeBack(code),
            None => SenderSocket::Gone,
        },
        Some(Err(_)) | None => {
            socket_closed(shared, pair, "closed:lost".into());
            SenderSocket::Gone
        }
        Some(Ok(_)) => SenderSocket::Open,
    }
}

fn on_sender_text(shared: &Shared, pair: usize, text: &str) {
    match classify(text, false) {
        Received::Error(code) => shared.shard(pair).error(&code),
        _ => shared.shard(pair).error("unexpected_frame"),
    }
}

/// Churns a sender's socket: closes it (reading the answers to what it sent) and opens a new
/// one. Messages that fall due meanwhile wait in the schedule (bounded by it) and go out, late,
/// on the new socket; if it cannot be opened, the pair's remaining messages are unsent.
async fn reconnect_sender(mut sender: Sender, shared: &Shared) -> Option<Sender> {
    let pair = sender.pair;
    churn::close(sender.ws, |text| on_sender_text(shared, pair, text)).await;
    sender.ws = open_again(&sender.link, sender.churn.as_mut(), shared, pair).await?;
    sender.written_here = 0;
    Some(sender)
}

/// Opens a sender's socket again after the server closed it with `code` (see [`come_back`]).
/// With 1013 the server refused the socket before reading from it: what was written on it is
/// counted as refused (never stored), not as lost.
async fn sender_comes_back(mut sender: Sender, shared: &Shared, code: CloseCode) -> Option<Sender> {
    let pair = sender.pair;
    if code == CloseCode::Again {
        shared.shard(pair).refused += sender.written_here;
    }
    leave_closed(&mut sender.ws, code).await;
    sender.ws = open_again(&sender.link, sender.churn.as_mut(), shared, pair).await?;
    sender.written_here = 0;
    Some(sender)
}

/// Sends one pair's share of a step on schedule; gives the sender back unless its socket died.
async fn send_step(mut sender: Sender, plan: Arc<Plan>, shared: Arc<Shared>) -> Option<Sender> {
    let pair = sender.pair;
    let count = plan.count(pair);
    let mut lags = [0u64; SEND_BATCH];
    let mut j = 0;
    // Refusals are charged to the step they happen in, for what it sent (see `refused`).
    sender.written_here = 0;
    while j < count {
        if sender.churn.as_ref().is_some_and(|c| c.due(shared.clock.now_ns())) {
            sender = reconnect_sender(sender, &shared).await?;
            continue;
        }
        // A sender behind its schedule never waits below, so it reads here what the server
        // said meanwhile (an error, a refusal) before it writes more.
        if let Some(message) = sender.ws.next().now_or_never() {
            match on_sender_frame(&shared, pair, message) {
                SenderSocket::Open => {}
                SenderSocket::Gone => return None,
                SenderSocket::ComeBack(code) => sender = sender_comes_back(sender, &shared, code).await?,
            }
            continue;
        }
        let due = plan.scheduled_ns(pair, j);
        if due > shared.clock.now_ns() + HORIZON_NS {
            let wake = sender.churn.as_ref().map_or(due - HORIZON_NS, |c| c.next_ns().min(due - HORIZON_NS));
            // Read while waiting: error frames, close frames and the server's pings.
            tokio::select! {
                biased;
                message = sender.ws.next() => match on_sender_frame(&shared, pair, message) {
                    SenderSocket::Open => {}
                    SenderSocket::Gone => return None,
                    SenderSocket::ComeBack(code) => sender = sender_comes_back(sender, &shared, code).await?,
                },
                _ = tokio::time::sleep_until(shared.clock.at(wake)) => {}
            }
            continue;
        }
        let mut n = 0;
        while j < count && n < SEND_BATCH {
            let due = plan.scheduled_ns(pair, j);
            let now = shared.clock.now_ns();
            if due > now + HORIZON_NS {
                break;
            }
            let frame = sender.frames.frame(sender.next_seq, due.min(now));
            if sender.ws.feed(Message::Text(frame)).await.is_err() {
                socket_closed(&shared, pair, "send_failed".into());
                return None;
            }
            lags[n] = now.saturating_sub(due);
            n += 1;
            j += 1;
            sender.next_seq += 1;
        }
        if sender.ws.flush().await.is_err() {
            socket_closed(&shared, pair, "send_failed".into());
            return None;
        }
        sender.written_here += n as u64;
        let mut tally = shared.shard(pair);
        tally.sent += n as u64;
        for lag in &lags[..n] {
            tally.send_lag_us.saturating_record(lag / 1000);
        }
    }
    Some(sender)
}

/// Runs one constant-rate step over all live senders and waits for the stragglers.
pub async fn run_step(
    senders: &mut Vec<Sender>,
    shared: &Arc<Shared>,
    total_pairs: usize,
    rate: u64,
    duration: Duration,
    drain: Duration,
    on_progress: &dyn Fn(f64, u64, u64),
) -> Step {
    let clock = shared.clock;
    let duration_ns = duration.as_nanos() as u64;
    // A short lead so every sender task is running before its first send time; it also keeps
    // this step's earliest stamps (start - HORIZON_NS) after the previous step's latest.
    let start_ns = clock.now_ns() + 20_000_000;
    let total = (rate as f64 * duration.as_secs_f64()).round() as u64;
    let plan = Arc::new(Plan { start_ns, rate, pairs: total_pairs as u64, total });
    shared.step_start_ns.store(start_ns, Ordering::Relaxed);
    shared.window_end_ns.store(start_ns + duration_ns, Ordering::Relaxed);
    drop(shared.take());

    // Pairs whose sender died in an earlier step do not send: their messages count as
    // scheduled and not sent.
    let tasks: Vec<JoinHandle<Option<Sender>>> =
        senders.drain(..).map(|s| tokio::spawn(send_step(s, plan.clone(), shared.clone()))).collect();
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    let all_sent = async {
        let mut back = Vec::with_capacity(tasks.len());
        for task in tasks {
            if let Ok(Some(sender)) = task.await {
                back.push(sender);
            }
        }
        back
    };
    tokio::pin!(all_sent);
    loop {
        tokio::select! {
            back = &mut all_sent => {
                *senders = back;
                break;
            }
            _ = ticker.tick() => {
                let (sent, delivered) = shared.progress();
                let elapsed = clock.now_ns().saturating_sub(start_ns) as f64 / duration_ns as f64;
                on_progress(elapsed.min(1.0), sent, delivered);
            }
        }
    }

    // Drain: until everything sent has arrived, nothing arrived for a while, or time is up.
    let drain_until = Instant::now() + drain;
    let (mut last_delivered, mut last_change) = (0, Instant::now());
    loop {
        let (sent, delivered) = shared.progress();
        on_progress(1.0, sent, delivered);
        if delivered >= sent || Instant::now() >= drain_until || last_change.elapsed() >= DRAIN_QUIET {
            break;
        }
        if delivered != last_delivered {
            (last_delivered, last_change) = (delivered, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let t = shared.take();
    let errors = t.errors.values().sum();
    let achieved_rate = t.in_window as f64 / duration.as_secs_f64();
    Step {
        offered_rate: rate,
        duration_secs: duration.as_secs_f64(),
        scheduled: total,
        sent: t.sent,
        delivered: t.delivered,
        achieved_rate,
        achieved_ratio: if rate > 0 { achieved_rate / rate as f64 } else { 0.0 },
        unsent: total.saturating_sub(t.sent),
        refused: t.refused,
        lost: t.sent.saturating_sub(t.refused).saturating_sub(t.delivered),
        duplicated: t.duplicated,
        redelivered: t.redelivered,
        acknowledged: t.acknowledged,
        reconnects: t.reconnects,
        reordered: t.reordered,
        late: t.late,
        errors,
        errors_by_kind: t.errors,
        latency_ms: Percentiles::of(&t.latency_us),
        send_lag_ms: Percentiles::of(&t.send_lag_us),
        generator_cpu_pct: None,
        server_cpu_pct: None,
        cpu: Vec::new(),
        saturated: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_splits_every_message_once() {
        let plan = Plan { start_ns: 1_000, rate: 1000, pairs: 3, total: 10 };
        let counts: Vec<u64> = (0..3).map(|p| plan.count(p)).collect();
        assert_eq!(counts, [4, 3, 3]);
        let mut times: Vec<u64> = (0..3)
            .flat_map(|p| (0..plan.count(p)).map(move |j| (p, j)))
            .map(|(p, j)| plan.scheduled_ns(p, j))
            .collect();
        times.sort();
        let expected: Vec<u64> = (0..10).map(|k| 1_000 + k * 1_000_000).collect();
        assert_eq!(times, expected);
    }

    #[test]
    fn more_pairs_than_messages() {
        let plan = Plan { start_ns: 0, rate: 10, pairs: 100, total: 5 };
        assert_eq!((0..100).map(|p| plan.count(p)).sum::<u64>(), 5);
        assert_eq!(plan.count(5), 0);
    }
}
