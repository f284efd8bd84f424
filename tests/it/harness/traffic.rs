//! Acknowledged (`enigma.v1`) traffic that survives faults: senders that retry until
//! receipted, receivers that acknowledge and reconnect, and a tally to check afterwards that
//! every receipted message arrived. The fault tests (replica, Redis, Cluster, Sentinel) share it.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::server::Server;
use super::wait::wait_until;
use super::ws::Ws;

/// Longest any fault test may take to converge.
pub const CONVERGE: Duration = Duration::from_secs(45);

/// Connects `user` with `enigma.v1` to the first of `urls` that accepts.
async fn connect_any(urls: &[String], user: &str) -> Ws {
    let start = Instant::now();
    loop {
        for url in urls {
            if let Ok(ws) = Ws::try_connect(&format!("{url}/ws/{user}"), Some("enigma.v1")).await {
                return ws;
            }
        }
        assert!(start.elapsed() < CONVERGE, "no replica accepts {user}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next text frame as JSON, or `None` when the connection ends. Silence is not an end: a
/// connection that stays open but delivers nothing for `CONVERGE` fails the test (a reconnect
/// would read the stored backlog and hide that live delivery never came back).
pub async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        let Ok(next) = tokio::time::timeout(CONVERGE, ws.inner.next()).await else {
            panic!("the connection stayed open but silent for {CONVERGE:?}");
        };
        match next? {
            Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            _ => return None,
        }
    }
}

/// Counters shared by the clients of a test.
#[derive(Default)]
pub struct Tally {
    pub receipted: AtomicUsize,
    pub send_errors: AtomicUsize,
    /// Connections the receivers opened.
    pub receiver_connections: AtomicUsize,
    /// recipient → payload → times delivered
    pub seen: Mutex<HashMap<String, HashMap<String, usize>>>,
}

impl Tally {
    /// Connections the receivers opened (one each when nothing forced a reconnect).
    pub fn receiver_connections(&self) -> usize {
        self.receiver_connections.load(Ordering::Relaxed)
    }

    /// Waits until `n` sends were receipted (traffic is flowing).
    pub async fn wait_receipted(&self, n: usize) {
        wait_until("receipted sends", CONVERGE, || {
            let done = self.receipted.load(Ordering::Relaxed) >= n;
            async move { done }
        })
        .await;
    }
}

/// An acknowledged exchange from `from` to `to` through `server`: `count` messages, each sent
/// until receipted, and a receiver that acknowledges every delivery. Await both handles.
pub fn exchange(
    server: &Server,
    from: String,
    to: String,
    count: usize,
) -> (Arc<Tally>, tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>) {
    let url = vec![format!("ws://{}", server.addr)];
    let tally = Arc::new(Tally::default());
    let receiver = tokio::spawn(receive_all(url.clone(), to.clone(), count, tally.clone()));
    let sender = tokio::spawn(send_until_receipted(url, from, to, count, tally.clone()));
    (tally, sender, receiver)
}

/// Sends `count` messages `"<seq>"` from `from` to `to`, one at a time, each until it is
/// receipted: errors are retried, a lost connection is re-opened on any of `urls`.
pub async fn send_until_receipted(urls: Vec<String>, from: String, to: String, count: usize, tally: Arc<Tally>) {
    let mut ws = connect_any(&urls, &from).await;
    let mut seq = 0;
    let start = Instant::now();
    while seq < count {
        assert!(start.elapsed() < CONVERGE, "sender {from} stuck at {seq}");
        let frame = json!({"from": from, "to": to, "payload": seq.to_string(), "ref": seq.to_string()});
        if ws.inner.send(Message::Text(frame.to_string().into())).await.is_err() {
            ws = connect_any(&urls, &from).await;
            continue;
        }
        match next_json(&mut ws).await {
            Some(reply) if reply["status"] == "stored" && reply["ref"].as_str() == Some(seq.to_string().as_str()) => {
                tally.receipted.fetch_add(1, Ordering::Relaxed);
                seq += 1;
            }
            Some(reply) if reply["error"].is_string() => {
                assert_eq!(reply["ref"], seq.to_string(), "errors carry the ref: {reply}");
                tally.send_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Some(_) => {} // a delivery to ourselves would land here; senders receive none
            None => ws = connect_any(&urls, &from).await,
        }
    }
}

/// Receives on `user` until every payload `0..count` was seen, acknowledging each
/// delivery; reconnects (to any of `urls`) whenever the connection ends.
pub async fn receive_all(urls: Vec<String>, user: String, count: usize, tally: Arc<Tally>) {
    let start = Instant::now();
    let done = |tally: &Tally| tally.seen.lock().unwrap().get(&user).map_or(0, |m| m.len()) >= count;
    while !done(&tally) {
        assert!(
            start.elapsed() < CONVERGE,
            "receiver {user} got {:?} of {count}",
            tally.seen.lock().unwrap().get(&user).map(|m| m.len())
        );
        let mut ws = connect_any(&urls, &user).await;
        tally.receiver_connections.fetch_add(1, Ordering::Relaxed);
        let mut previous: Option<usize> = None;
        while let Some(frame) = next_json(&mut ws).await {
            let Some(id) = frame["id"].as_str() else { continue }; // an error frame (a failed ack)
            let payload = frame["payload"].as_str().unwrap().to_owned();
            // Within one connection nothing is skipped: the next message is the same one
            // again (a sender's retry stored twice) or the next in sequence.
            let seq: usize = payload.parse().unwrap();
            if let Some(prev) = previous {
                assert!(seq == prev || seq == prev + 1, "{user}: {seq} after {prev} on one connection");
            }
            previous = Some(seq);
            *tally.seen.lock().unwrap().entry(user.clone()).or_default().entry(payload).or_default() += 1;
            if ws.inner.send(Message::Text(json!({"ack": id}).to_string().into())).await.is_err() {
                break;
            }
            if done(&tally) {
                return;
            }
        }
    }
}

/// Deliveries beyond the first of each message (a sender's retry stored twice).
pub fn duplicates(tally: &Tally) -> usize {
    tally.seen.lock().unwrap().values().flat_map(|m| m.values()).map(|n| n - 1).sum()
}

/// Awaits an `exchange` that a fault hit midway (the fault is over, the traffic must not be):
/// every receipted message arrived at `to`, on the one connection its receiver opened.
pub async fn all_delivered_on_one_connection(
    tally: &Tally,
    sender: tokio::task::JoinHandle<()>,
    receiver: tokio::task::JoinHandle<()>,
    to: &str,
    count: usize,
) {
    assert!(!receiver.is_finished(), "the traffic ended before the fault did");
    sender.await.unwrap();
    receiver.await.unwrap();
    assert_all_delivered(tally, &[to.to_owned()], count);
    assert_eq!(tally.receiver_connections(), 1, "the receiver had to reconnect to get its messages");
}

pub fn assert_all_delivered(tally: &Tally, recipients: &[String], count: usize) {
    let seen = tally.seen.lock().unwrap();
    for user in recipients {
        let got: BTreeSet<usize> =
            seen.get(user).map(|m| m.keys().map(|p| p.parse().unwrap()).collect()).unwrap_or_default();
        let missing: Vec<usize> = (0..count).filter(|i| !got.contains(i)).collect();
        assert!(missing.is_empty(), "{user} never got {missing:?}");
    }
}

/// Stores 4 MB of messages for `to` (from a fresh user, each receipted): more than a socket's
/// buffers take in, so a session writing them to a client that does not read is stuck in a
/// write, reading nothing, until it is ended.
pub async fn fill_backlog(server: &Server, to: &str) {
    const COUNT: usize = 256;
    let from = server.new_user().await;
    let mut ws = server.connect_v1(&from).await;
    let payload = "b".repeat(16 * 1024);
    for i in 0..COUNT {
        ws.send_json(json!({"from": from, "to": to, "payload": payload, "ref": i.to_string()})).await;
    }
    for i in 0..COUNT {
        let receipt = ws.recv_json().await;
        assert_eq!(
            (receipt["ref"].as_str(), receipt["status"].as_str()),
            (Some(i.to_string().as_str()), Some("stored"))
        );
    }
}
