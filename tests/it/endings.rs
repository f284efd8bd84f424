//! Every frame the server has read before a session ends is stored, or answered with an error,
//! before the close frame: whichever way the session ends (displaced by a newer connection,
//! the server draining, the client cut off as a slow reader).
//!
//! To have frames waiting when the session ends, the session is made busy first: the client
//! has a backlog larger than the socket's buffers and does not read it, so the session sits in
//! a blocked write and reads nothing more. The client then writes its sends, and the session is
//! ended while they wait unread.

use serde_json::{Value, json};
use std::collections::BTreeSet;

use crate::harness::{Backend, DEADLINE, Server, Ws, fill_backlog, wait_until};

both_engines!(
    multi_thread:
    sends_waiting_when_a_newer_connection_takes_over_are_answered,
    sends_waiting_when_the_server_drains_are_answered,
    sends_waiting_when_a_slow_reader_is_cut_off_are_stored,
);

/// Sends written while the session is busy.
const SENDS: usize = 20;
/// Bob connects (his session starts writing the backlog and blocks), then writes `SENDS`
/// messages to Carol, `ref`s `s0…`, without reading anything.
async fn busy_session_with_sends(s: &Server, bob: &str, carol: &str) -> Ws {
    let mut ws = s.connect_v1(bob).await;
    for i in 0..SENDS {
        ws.send_json(json!({"from": bob, "to": carol, "payload": format!("m{i}"), "ref": format!("s{i}")})).await;
    }
    ws
}

/// Reads everything up to the close frame: the `ref`s answered (receipt or error), those
/// receipted, and the close code.
async fn answers_until_close(ws: &mut Ws) -> (BTreeSet<String>, BTreeSet<String>, u16) {
    let (mut answered, mut stored) = (BTreeSet::new(), BTreeSet::new());
    loop {
        match ws.next().await {
            Some(tokio_tungstenite::tungstenite::Message::Text(t)) => {
                let frame: Value = serde_json::from_str(t.as_str()).unwrap();
                if frame["id"].is_string() && frame["payload"].is_string() {
                    continue; // the backlog
                }
                let reference = frame["ref"].as_str().unwrap_or_else(|| panic!("an answer without a ref: {frame}"));
                answered.insert(reference.to_owned());
                if frame["status"] == "stored" {
                    stored.insert(reference.to_owned());
                }
            }
            Some(tokio_tungstenite::tungstenite::Message::Close(Some(close))) => {
                return (answered, stored, u16::from(close.code));
            }
            other => panic!("the connection ended without a close frame: {other:?}"),
        }
    }
}

fn all_refs() -> BTreeSet<String> {
    (0..SENDS).map(|i| format!("s{i}")).collect()
}

/// What Carol got (she reads everything sent to her, acknowledging nothing).
async fn payloads_received(carol: &mut Ws, count: usize) -> BTreeSet<String> {
    let mut got = BTreeSet::new();
    while got.len() < count {
        let frame = carol.recv_json().await;
        got.insert(frame["payload"].as_str().unwrap().to_owned());
    }
    got
}

async fn sends_waiting_when_a_newer_connection_takes_over_are_answered(b: Backend) {
    let s = b.server();
    let (bob, carol) = (s.new_user().await, s.new_user().await);
    let mut c = s.connect_v1(&carol).await;
    fill_backlog(&s, &bob).await;
    let mut old = busy_session_with_sends(&s, &bob, &carol).await;
    let _newer = s.connect_v1(&bob).await;
    let (answered, _, code) = answers_until_close(&mut old).await;
    assert_eq!(code, 4409, "displaced");
    assert_eq!(answered, all_refs(), "every send read before the takeover is answered before the close frame");
    // Answered with receipts (storage works): Carol gets every one.
    let expected: BTreeSet<String> = (0..SENDS).map(|i| format!("m{i}")).collect();
    assert_eq!(payloads_received(&mut c, SENDS).await, expected);
}

async fn sends_waiting_when_the_server_drains_are_answered(b: Backend) {
    let config = b.config();
    let s = Server::start(&config);
    let (bob, carol) = (s.new_user().await, s.new_user().await);
    fill_backlog(&s, &bob).await;
    let mut busy = busy_session_with_sends(&s, &bob, &carol).await;
    s.sigterm();
    let (answered, stored, code) = answers_until_close(&mut busy).await;
    assert_eq!(code, 1001, "drained");
    assert_eq!(answered, all_refs(), "every send read before the drain is answered before the close frame");
    let status = s.wait_exit(DEADLINE).expect("exits after draining");
    assert!(status.success(), "{status:?}");
    if b.is_redis() {
        // What was receipted is in Carol's inbox: a new replica on the same Redis delivers it.
        let s = Server::start(&config);
        let mut c = s.connect_v1(&carol).await;
        let expected: BTreeSet<String> = stored.iter().map(|r| r.replacen('s', "m", 1)).collect();
        assert_eq!(payloads_received(&mut c, expected.len()).await, expected);
    }
}

async fn sends_waiting_when_a_slow_reader_is_cut_off_are_stored(b: Backend) {
    let config = b.config().with("ENIGMA__LIMITS__SEND_TIMEOUT_MS", 500);
    let s = Server::start(&config);
    let (bob, carol) = (s.new_user().await, s.new_user().await);
    let mut c = s.connect_v1(&carol).await;
    fill_backlog(&s, &bob).await;
    let mut slow = busy_session_with_sends(&s, &bob, &carol).await;
    wait_until("the slow reader to be cut off", DEADLINE, || async {
        s.metric("enigma_slow_consumer_disconnects_total").await >= 1.0
    })
    .await;
    // Read at once, the socket gives what fitted in it, then the close frame says why.
    let (_, _, code) = answers_until_close(&mut slow).await;
    assert_eq!(code, 4429, "cut off as a slow consumer");
    // Its answers could not be written (its socket was full), but every send it wrote was
    // read and stored: Carol gets them all.
    let expected: BTreeSet<String> = (0..SENDS).map(|i| format!("m{i}")).collect();
    assert_eq!(payloads_received(&mut c, SENDS).await, expected);
}
