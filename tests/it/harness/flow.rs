//! Live acknowledged (`enigma.v1`) traffic that runs for as long as a fault lasts, not for a
//! count: a paced sender that retries each message until receipted and a receiver that
//! acknowledges, both reconnecting to any of their URLs. Afterwards it says what was receipted,
//! what arrived (how often, how late) and what the clients went through, so a test can check
//! that nothing receipted was lost and report latency percentiles.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::ws::Ws;

/// Longest a flow may take to deliver everything once it is stopped.
const FINISH: Duration = Duration::from_secs(60);
/// A connection that carries nothing for this long is presumed dead (what a client's heartbeat
/// would find) and replaced.
const SILENCE: Duration = Duration::from_secs(3);

/// What one flow saw.
#[derive(Default)]
pub struct FlowTally {
    /// Messages (sequence numbers) that got a receipt.
    pub receipted: Mutex<BTreeSet<usize>>,
    /// Error frames the sender got, by code.
    pub errors: Mutex<HashMap<String, usize>>,
    /// seq → times delivered.
    pub seen: Mutex<HashMap<usize, usize>>,
    /// Delivery minus the start of the send attempt that was stored, per delivered message.
    pub latencies: Mutex<Vec<Duration>>,
    pub sender_connections: AtomicUsize,
    pub receiver_connections: AtomicUsize,
    /// The longest the sender went without a receipt (a reconnection's cost, seen by a user).
    pub longest_gap: Mutex<Duration>,
    /// Set when the sender has stopped (its last message is receipted or abandoned).
    sender_done: AtomicBool,
    attempts: Mutex<HashMap<usize, Instant>>,
}

impl FlowTally {
    pub fn receipted(&self) -> usize {
        self.receipted.lock().unwrap().len()
    }
    pub fn errors(&self) -> usize {
        self.errors.lock().unwrap().values().sum()
    }
    /// Receipted messages never delivered.
    pub fn lost(&self) -> Vec<usize> {
        let seen = self.seen.lock().unwrap();
        self.receipted.lock().unwrap().iter().filter(|s| !seen.contains_key(s)).copied().collect()
    }
    /// Deliveries beyond the first of each message.
    pub fn duplicates(&self) -> usize {
        self.seen.lock().unwrap().values().map(|n| n - 1).sum()
    }
    /// The `q` quantile (0..=1) of the delivery latencies.
    pub fn latency(&self, q: f64) -> Duration {
        let mut all = self.latencies.lock().unwrap().clone();
        all.sort();
        all.get(((all.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or_default()
    }
}

/// One sender and one receiver exchanging paced messages until `stop`.
pub struct Flow {
    pub tally: Arc<FlowTally>,
    stopped: Arc<AtomicBool>,
    sender: tokio::task::JoinHandle<()>,
    receiver: tokio::task::JoinHandle<()>,
}

impl Flow {
    /// `from` sends to `to` every `pace`, through the first of `sender_urls` that accepts; `to`
    /// receives through `receiver_urls` (`ws://host:port` each).
    pub fn start(
        sender_urls: Vec<String>,
        receiver_urls: Vec<String>,
        from: String,
        to: String,
        pace: Duration,
    ) -> Flow {
        let tally = Arc::new(FlowTally::default());
        let stopped = Arc::new(AtomicBool::new(false));
        let sender = tokio::spawn(send(sender_urls, from, to.clone(), pace, tally.clone(), stopped.clone()));
        let receiver = tokio::spawn(receive(receiver_urls, to, tally.clone(), stopped.clone()));
        Flow { tally, stopped, sender, receiver }
    }

    /// Waits until `n` messages were receipted.
    pub async fn wait_receipted(&self, n: usize) {
        super::wait_until("receipted sends", FINISH, || {
            let done = self.tally.receipted() >= n;
            async move { done }
        })
        .await;
    }

    /// Stops sending and waits until the receiver has everything that was receipted.
    pub async fn finish(self) -> Arc<FlowTally> {
        assert!(!self.sender.is_finished() && !self.receiver.is_finished(), "a flow ended before it was stopped");
        self.stopped.store(true, Ordering::Release);
        self.sender.await.expect("sender");
        self.receiver.await.expect("receiver");
        self.tally
    }
}

async fn connect_any(urls: &[String], user: &str) -> Ws {
    let start = Instant::now();
    loop {
        for url in urls {
            // A host cut off drops the SYN: give up on it after `SILENCE`, try the next.
            let url = format!("{url}/ws/{user}");
            if let Ok(Ok(ws)) = tokio::time::timeout(SILENCE, Ws::try_connect(&url, Some("enigma.v1"))).await {
                return ws;
            }
        }
        assert!(start.elapsed() < FINISH, "no replica accepts {user}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next text frame as JSON; `None` when the connection ends or stays silent for `SILENCE`.
async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        match tokio::time::timeout(SILENCE, ws.inner.next()).await.ok()?? {
            Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            _ => return None,
        }
    }
}

async fn send(
    urls: Vec<String>,
    from: String,
    to: String,
    pace: Duration,
    tally: Arc<FlowTally>,
    stop: Arc<AtomicBool>,
) {
    let mut ws = connect_any(&urls, &from).await;
    tally.sender_connections.fetch_add(1, Ordering::Relaxed);
    let mut seq = 0usize;
    let mut last_receipt = Instant::now();
    loop {
        // Stop between messages only: the one in flight is retried until receipted.
        if stop.load(Ordering::Acquire) {
            break;
        }
        let frame = json!({"from": from, "to": to, "payload": seq.to_string(), "ref": seq.to_string()});
        tally.attempts.lock().unwrap().insert(seq, Instant::now());
        let reply = match ws.inner.send(Message::Text(frame.to_string().into())).await {
            Ok(()) => next_json(&mut ws).await,
            Err(_) => None,
        };
        match reply {
            Some(r) if r["status"] == "stored" && r["ref"].as_str() == Some(seq.to_string().as_str()) => {
                tally.receipted.lock().unwrap().insert(seq);
                {
                    let mut gap = tally.longest_gap.lock().unwrap();
                    *gap = (*gap).max(last_receipt.elapsed());
                }
                last_receipt = Instant::now();
                seq += 1;
                tokio::time::sleep(pace).await;
            }
            Some(r) if r["error"].is_string() || r["code"].is_string() => {
                let code = r["code"].as_str().unwrap_or("?").to_owned();
                *tally.errors.lock().unwrap().entry(code).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Some(_) => {} // a late receipt for an earlier attempt: wait for ours
            None => {
                ws = connect_any(&urls, &from).await;
                tally.sender_connections.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    tally.sender_done.store(true, Ordering::Release);
}

async fn receive(urls: Vec<String>, user: String, tally: Arc<FlowTally>, stop: Arc<AtomicBool>) {
    let done = |tally: &FlowTally| {
        tally.sender_done.load(Ordering::Acquire) && {
            let seen = tally.seen.lock().unwrap();
            tally.receipted.lock().unwrap().iter().all(|s| seen.contains_key(s))
        }
    };
    let mut stopped_at: Option<Instant> = None;
    loop {
        let mut ws = connect_any(&urls, &user).await;
        tally.receiver_connections.fetch_add(1, Ordering::Relaxed);
        let mut last_id: Option<String> = None;
        let mut last_heard = Instant::now();
        loop {
            if done(&tally) {
                return;
            }
            if stop.load(Ordering::Acquire) {
                let since = *stopped_at.get_or_insert_with(Instant::now);
                assert!(since.elapsed() < FINISH, "{user} still misses {:?}", tally.lost());
            }
            // A heartbeat, as a real client has: a connection that answers nothing (not even
            // a ping) for `SILENCE` is dead, whatever TCP thinks.
            if last_heard.elapsed() > SILENCE {
                break;
            }
            let frame = match tokio::time::timeout(Duration::from_millis(200), ws.inner.next()).await {
                Err(_) => {
                    let _ = ws.inner.send(Message::Ping(Default::default())).await;
                    continue; // quiet: look at `done` again
                }
                Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<Value>(t.as_str()).unwrap_or_default(),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {
                    last_heard = Instant::now();
                    continue;
                }
                Ok(_) => break, // closed: reconnect
            };
            last_heard = Instant::now();
            let Some(id) = frame["id"].as_str() else { continue };
            // Within one connection ids strictly increase (enigma.v1's promise); a message
            // stored twice by a retried send has two ids and may arrive twice.
            if let Some(last) = &last_id {
                assert!(stream_id_after(id, last), "{user}: id {id} after {last} on one connection");
            }
            last_id = Some(id.to_owned());
            let seq: usize = frame["payload"].as_str().and_then(|p| p.parse().ok()).expect("payload is a number");
            let first = {
                let mut seen = tally.seen.lock().unwrap();
                let count = seen.entry(seq).or_default();
                *count += 1;
                *count == 1
            };
            let attempt = tally.attempts.lock().unwrap().get(&seq).copied();
            if let (true, Some(at)) = (first, attempt) {
                tally.latencies.lock().unwrap().push(at.elapsed());
            }
            if ws.inner.send(Message::Text(json!({"ack": id}).to_string().into())).await.is_err() {
                break;
            }
        }
    }
}

/// Whether Redis stream id `a` (`ms-seq`) comes after `b`.
fn stream_id_after(a: &str, b: &str) -> bool {
    let parse = |s: &str| {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        (ms.parse::<u64>().unwrap_or(0), seq.parse::<u64>().unwrap_or(0))
    };
    parse(a) > parse(b)
}
