//! Hostile input: frames and closes a careless or malicious client sends. Each case gets a
//! clear refusal and changes nothing for anyone else.

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::harness::{Backend, DEADLINE, Ws};

both_engines!(
    a_json_array_is_never_taken_as_an_envelope,
    a_payload_with_a_lone_surrogate_is_refused,
    escaped_payloads_are_limited_by_what_is_stored,
    a_clients_close_is_answered_with_a_close_frame_when_idle,
    a_clients_close_is_answered_with_a_close_frame_mid_batch,
    a_clients_close_is_answered_with_a_close_frame_while_catching_up,
);

/// `["from", "to", "payload"]` has the three values of an envelope in a sequence; serde would
/// build the struct from it. Only an object is an envelope.
async fn a_json_array_is_never_taken_as_an_envelope(b: Backend) {
    let server = b.server();
    let (alice, bob) = (server.new_user().await, server.new_user().await);
    let mut a = server.connect(&alice).await;
    let mut bo = server.connect(&bob).await;
    for frame in [
        json!([alice, bob, "smuggled"]),
        json!([alice, bob, "smuggled", "extra"]),
        json!([alice, bob]),
        json!("a string"),
        json!(5),
        json!(null),
        json!(true),
        json!({"sender": alice, "recipient": bob, "body": "x"}),
    ] {
        a.send_json(frame.clone()).await;
        let reply = a.recv_json().await;
        assert_eq!(reply["code"], "invalid_frame", "{frame} answered {reply}");
    }
    // The first frame Bob receives is the real message sent after all of those.
    a.send_msg(&alice, &bob, "real").await;
    let got = bo.recv_json().await;
    assert_eq!(got, json!({"from": alice, "to": bob, "payload": "real"}));
}

/// `\ude00` alone is valid JSON syntax but no string: stored as sent, it would reach the
/// recipient as a frame its JSON parser refuses (found by the client_frame fuzzer).
async fn a_payload_with_a_lone_surrogate_is_refused(b: Backend) {
    let server = b.server();
    let (alice, bob) = (server.new_user().await, server.new_user().await);
    let mut a = server.connect(&alice).await;
    let mut bo = server.connect(&bob).await;
    a.send_text(&format!(r#"{{"from":"{alice}","to":"{bob}","payload":"x\ude00"}}"#)).await;
    let reply = a.recv_json().await;
    assert_eq!(reply["code"], "invalid_frame", "{reply}");
    a.send_text(&format!(r#"{{"from":"{alice}","to":"{bob}","payload":"pair \ud83d\ude00"}}"#)).await;
    assert_eq!(bo.recv_json().await["payload"], "pair 😀", "the first frame Bob gets is the valid one");
}

/// The limit is about what is stored: a payload that decodes to the limit but is written with
/// escapes (six bytes each) would cost up to six times the limit in storage.
async fn escaped_payloads_are_limited_by_what_is_stored(b: Backend) {
    let server = b.server();
    let (alice, bob) = (server.new_user().await, server.new_user().await);
    let mut a = server.connect(&alice).await;
    // 65,536 bytes once decoded, ~145 KB as written: inside the frame limit (2 × 64 KiB + 16 KiB).
    let escaped = format!("{}{}", "\\u0041".repeat(16_000), "A".repeat(65_536 - 16_000));
    a.send_text(&format!(r#"{{"from":"{alice}","to":"{bob}","payload":"{escaped}"}}"#)).await;
    let reply = a.recv_json().await;
    assert_eq!(reply["code"], "payload_too_large", "{reply}");
    // A payload at the limit written plainly is still accepted and delivered.
    let plain = "A".repeat(65_536);
    a.send_msg(&alice, &bob, &plain).await;
    let mut bo = server.connect(&bob).await;
    let got = bo.recv_json().await;
    assert_eq!(got["payload"].as_str().map(str::len), Some(65_536));
}

/// Sends a close frame (1000) and requires the server's close frame back (RFC 6455 §5.5.1);
/// a server that just drops TCP shows up as an error or the end of the stream.
async fn close_and_expect_reply(ws: &mut Ws) {
    let frame = CloseFrame { code: CloseCode::Normal, reason: "bye".into() };
    ws.inner.send(Message::Close(Some(frame))).await.expect("send close");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.inner.next()).await.expect("timed out waiting for the close");
        match next {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 1000, "the server echoes the client's code");
                return;
            }
            Some(Ok(Message::Close(None))) => return,
            Some(Ok(_)) => continue, // deliveries and answers already on their way
            Some(Err(e)) => panic!("no close frame from the server, the socket failed: {e}"),
            None => panic!("no close frame from the server: the stream ended"),
        }
    }
}

async fn a_clients_close_is_answered_with_a_close_frame_when_idle(b: Backend) {
    let server = b.server();
    for path in ["/connect/", "/ws/"] {
        let user = server.new_user().await;
        let mut ws = Ws::connect(&server.ws_url(&format!("{path}{user}")), None).await;
        close_and_expect_reply(&mut ws).await;
        let mut v1 = Ws::connect(&server.ws_url(&format!("{path}{user}")), Some("enigma.v1")).await;
        close_and_expect_reply(&mut v1).await;
    }
}

async fn a_clients_close_is_answered_with_a_close_frame_mid_batch(b: Backend) {
    let server = b.server();
    let peer = server.new_user().await;
    for path in ["/connect/", "/ws/"] {
        let user = server.new_user().await;
        let mut ws = Ws::connect(&server.ws_url(&format!("{path}{user}")), None).await;
        // Many sends written at once, the close right behind them: one read picks them all up.
        for i in 0..200 {
            let frame = json!({"from": user, "to": peer, "payload": format!("m{i}")}).to_string();
            ws.inner.feed(Message::Text(frame.into())).await.expect("feed");
        }
        close_and_expect_reply(&mut ws).await;
    }
}

async fn a_clients_close_is_answered_with_a_close_frame_while_catching_up(b: Backend) {
    let server = b.server();
    let sender = server.new_user().await;
    for path in ["/connect/", "/ws/"] {
        let user = server.new_user().await;
        let mut s = server.connect(&sender).await;
        for i in 0..2_000 {
            let frame = json!({"from": sender, "to": user, "payload": format!("backlog {i} {}", "x".repeat(200))});
            s.inner.feed(Message::Text(frame.to_string().into())).await.expect("feed");
        }
        s.inner.flush().await.expect("flush");
        s.close().await;
        // Acknowledging, so the backlog stays until acknowledged whatever happens here.
        let mut ws = Ws::connect(&server.ws_url(&format!("{path}{user}")), Some("enigma.v1")).await;
        close_and_expect_reply(&mut ws).await;
    }
}

/// SIGTERM and the client's close cross: the client still gets a close frame (1001 or the echo
/// of its own), never a reset.
#[tokio::test]
async fn a_clients_close_is_answered_with_a_close_frame_while_draining() {
    let server = crate::harness::Server::start(&crate::harness::ServerConfig::memory());
    let user = server.new_user().await;
    let mut ws = server.connect(&user).await;
    let status = std::process::Command::new("kill").args(["-TERM", &server.pid().to_string()]).status();
    assert!(status.expect("kill").success());
    let frame = CloseFrame { code: CloseCode::Normal, reason: "bye".into() };
    let _ = ws.inner.send(Message::Close(Some(frame))).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, ws.inner.next()).await.expect("timed out waiting for the close") {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert!([1000, 1001].contains(&u16::from(frame.code)), "closed with {frame:?}");
                return;
            }
            Some(Ok(_)) => continue,
            other => panic!("no close frame while draining: {other:?}"),
        }
    }
}
