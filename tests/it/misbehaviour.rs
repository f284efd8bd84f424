//! WebSocket and HTTP misbehaviour written byte by byte on raw TCP: broken frames, broken
//! handshakes, oversized and trickled request heads, thousands of half-open connections. Each
//! gets a clear refusal or close code, and two users chatting meanwhile never notice.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{DEADLINE, Server, ServerConfig, Ws, wait_until};

/// A raw TCP connection to the server's port.
struct Raw {
    tcp: TcpStream,
}

impl Raw {
    async fn open(server: &Server) -> Raw {
        let addr = server.url("").trim_start_matches("http://").trim_end_matches('/').to_owned();
        let tcp = TcpStream::connect(addr).await.expect("connect");
        Raw { tcp }
    }

    /// Writes a request head and returns the response head's status and the rest read so far.
    async fn request(&mut self, head: &str) -> (u16, String) {
        self.tcp.write_all(head.as_bytes()).await.expect("write head");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout_at(deadline, self.tcp.read(&mut buf))
                .await
                .expect("timed out reading the response head")
                .expect("read");
            assert!(n > 0, "connection closed before a response head: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got).into_owned();
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
        (status, text)
    }

    async fn upgrade(server: &Server, path: &str) -> Raw {
        let mut raw = Raw::open(server).await;
        let (status, head) = raw.request(&handshake(path, "13", true)).await;
        assert_eq!(status, 101, "{head}");
        raw
    }

    /// Reads server frames until a close frame (its code) or the end of the connection (`None`).
    async fn close_code(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let mut head = [0u8; 2];
            let read = tokio::time::timeout_at(deadline, self.tcp.read_exact(&mut head)).await;
            if read.expect("timed out waiting for a close frame").is_err() {
                return None;
            }
            let mut len = u64::from(head[1] & 0x7f);
            if len == 126 {
                len = u64::from(self.tcp.read_u16().await.ok()?);
            } else if len == 127 {
                len = self.tcp.read_u64().await.ok()?;
            }
            let mut payload = vec![0u8; len as usize];
            self.tcp.read_exact(&mut payload).await.ok()?;
            if head[0] & 0x0f == 0x8 {
                return Some(if payload.len() >= 2 { u16::from_be_bytes([payload[0], payload[1]]) } else { 1005 });
            }
        }
    }
}

fn handshake(path: &str, version: &str, with_key: bool) -> String {
    let key = if with_key { "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" } else { "" };
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{key}\
         Sec-WebSocket-Version: {version}\r\n\r\n"
    )
}

/// One WebSocket frame as a client writes it (RFC 6455 §5.2), masked unless told otherwise.
fn frame(fin: bool, rsv: u8, opcode: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x12, 0x34, 0x56, 0x78];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Two users exchanging messages in the background for the whole attack. Any failure to
/// exchange fails the test.
struct Chat {
    rounds: Arc<AtomicUsize>,
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

impl Chat {
    async fn start(server: &Server) -> Chat {
        let (alice, bob) = (server.new_user().await, server.new_user().await);
        let mut a = server.connect(&alice).await;
        let mut b = server.connect(&bob).await;
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let rounds = Arc::new(AtomicUsize::new(0));
        let counter = rounds.clone();
        let done = tokio::spawn(async move {
            for round in 0.. {
                a.send_msg(&alice, &bob, &format!("ping {round}")).await;
                assert_eq!(b.recv_json().await["payload"], format!("ping {round}"));
                b.send_msg(&bob, &alice, &format!("pong {round}")).await;
                assert_eq!(a.recv_json().await["payload"], format!("pong {round}"));
                counter.fetch_add(1, Ordering::Relaxed);
                if stopped.try_recv().is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Chat { rounds, stop, done }
    }

    /// Requires the chat to have gone on through the attack and to still go on: a few more
    /// round trips after it, within the deadline.
    async fn finish(self) {
        let after_attack = self.rounds.load(Ordering::Relaxed);
        wait_until("the users keep chatting", DEADLINE, || {
            let rounds = self.rounds.clone();
            async move { rounds.load(Ordering::Relaxed) >= after_attack + 3 }
        })
        .await;
        let _ = self.stop.send(());
        tokio::time::timeout(DEADLINE, self.done).await.expect("chat stuck").expect("chat failed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_websocket_frames_get_clear_close_codes() {
    let server = Server::start(&ServerConfig::memory());
    let chat = Chat::start(&server).await;
    let user = server.new_user().await;
    let mut ping_126 = vec![b'p'; 126];
    ping_126[0] = b'P';
    let cases: [(&str, Vec<u8>, u16); 6] = [
        ("unmasked client frame", frame(true, 0, 0x1, false, b"{}"), 1002),
        ("reserved bit set", frame(true, 0b100, 0x1, true, b"{}"), 1002),
        ("fragmented ping", frame(false, 0, 0x9, true, b"x"), 1002),
        ("continuation without a start", frame(true, 0, 0x0, true, b"{}"), 1002),
        ("invalid UTF-8 in a text frame", frame(true, 0, 0x1, true, &[b'"', 0xff, 0xfe, b'"']), 1007),
        ("ping over 125 bytes", frame(true, 0, 0x9, true, &ping_126), 1002),
    ];
    for (what, bytes, code) in cases {
        let mut raw = Raw::upgrade(&server, &format!("/ws/{user}")).await;
        raw.tcp.write_all(&bytes).await.expect("write frame");
        assert_eq!(raw.close_code().await, Some(code), "{what}");
    }
    chat.finish().await;
}

#[tokio::test]
async fn broken_handshakes_are_refused_with_a_reason() {
    let server = Server::start(&ServerConfig::memory());
    let user = server.new_user().await;
    for path in [format!("/ws/{user}"), format!("/connect/{user}")] {
        for (what, head) in [("wrong version", handshake(&path, "8", true)), ("no key", handshake(&path, "13", false))]
        {
            let mut raw = Raw::open(&server).await;
            let (status, response) = raw.request(&head).await;
            assert!((400..500).contains(&status), "{what} on {path}: {response}");
        }
    }
}

#[tokio::test]
async fn oversized_request_heads_get_431() {
    let server = Server::start(&ServerConfig::memory());
    let mut raw = Raw::open(&server).await;
    let head = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(100 * 1024));
    let (status, _) = raw.request(&head).await;
    assert_eq!(status, 431);
    // A login with the longest key, percent-encoded, still fits.
    let key = "%2B".repeat(8 * 1024);
    let mut raw = Raw::open(&server).await;
    let (status, response) = raw.request(&format!("GET /login/{key} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
    assert_eq!(status, 200, "{response}");
}

/// A client still writing its request when the answer comes (an oversized head, a body the
/// server will not read) reads that answer and a clean end: the server closes in stages
/// instead of resetting the connection under the client's writes (RFC 9112 §9.6).
#[tokio::test]
async fn an_answer_that_ends_the_connection_reaches_a_client_still_writing() {
    let server = Server::start(&ServerConfig::memory());
    let head = format!("GET /login/{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100 * 1024));
    let response = write_on_after_the_answer(&server, head.as_bytes(), 40 * 1024).await;
    assert!(response.starts_with("HTTP/1.1 431 "), "{response}");

    // Over the connection cap: 503 with `Connection: close`, before the body is read.
    let server = Server::start(&ServerConfig::memory().with("ENIGMA__SERVER__MAX_CONNECTIONS_PER_ADDRESS", 1));
    let held = Raw::open(&server).await;
    let body = format!("{{\"user_id\":\"{}\"}}", "a".repeat(128 * 1024));
    let request = format!(
        "POST /auth/challenge HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let response = write_on_after_the_answer(&server, request.as_bytes(), 8 * 1024).await;
    assert!(response.starts_with("HTTP/1.1 503 "), "{response}");
    drop(held);
}

/// Writes the first `answered_after` bytes of `request`, waits for the answer to arrive, writes
/// the rest and reads the answer to the end of the connection, which must close cleanly.
async fn write_on_after_the_answer(server: &Server, request: &[u8], answered_after: usize) -> String {
    let mut raw = Raw::open(server).await;
    let (first, rest) = request.split_at(answered_after);
    raw.tcp.write_all(first).await.expect("write the start of the request");
    let mut peeked = [0u8; 1];
    tokio::time::timeout(DEADLINE, raw.tcp.peek(&mut peeked))
        .await
        .expect("no answer while the request was still being written")
        .expect("peek");
    // In pieces, as a client streaming its request does: a reset shows at the next write.
    for piece in rest.chunks(4096) {
        raw.tcp.write_all(piece).await.expect("the rest of the request was refused: the connection was reset");
    }
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, raw.tcp.read_to_end(&mut response))
        .await
        .expect("the connection stayed open after its last answer")
        .expect("the connection was reset instead of closed");
    String::from_utf8_lossy(&response).into_owned()
}

/// HTTP/2 frame types and flags (RFC 9113 §6) a prior-knowledge cleartext client needs.
mod h2 {
    pub const HEADERS: u8 = 0x1;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const ACK: u8 = 0x1;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    /// SETTINGS parameters (§6.5.2).
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// One HTTP/2 frame as a client writes it.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// One HTTP/2 frame read: type, flags, stream and payload; `None` at the end of the connection.
async fn read_h2_frame(tcp: &mut TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    tcp.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], stream, payload))
}

/// An HTTP/2 connection (cleartext, prior knowledge) that made one request and then only
/// answers the server's PINGs is sent GOAWAY and closed once it has had no request in progress
/// for `server.request_head_timeout_ms`, as an idle HTTP/1 connection is; the server announces
/// its stream and header-size bounds.
#[tokio::test]
async fn an_idle_http2_connection_is_closed_however_it_answers_pings() {
    let idle = Duration::from_millis(1000);
    let server =
        Server::start(&ServerConfig::memory().with("ENIGMA__SERVER__REQUEST_HEAD_TIMEOUT_MS", idle.as_millis()));
    let mut raw = Raw::open(&server).await;
    let mut hello = h2::PREFACE.to_vec();
    hello.extend(h2_frame(h2::SETTINGS, 0, 0, &[]));
    // GET /healthz on stream 1, in HPACK (RFC 7541 appendix A): :method GET and :scheme http
    // from the static table, :path and :authority as literals with indexed names.
    let mut block = vec![0x82, 0x86, 0x04, 8];
    block.extend(b"/healthz");
    block.extend([0x01, 1, b'x']);
    hello.extend(h2_frame(h2::HEADERS, h2::END_STREAM | h2::END_HEADERS, 1, &block));
    raw.tcp.write_all(&hello).await.expect("write the preface and a request");

    let deadline = tokio::time::Instant::now() + DEADLINE;
    let (mut settings, mut answered, mut goaway) = (None, None, None);
    loop {
        let frame = tokio::time::timeout_at(deadline, read_h2_frame(&mut raw.tcp))
            .await
            .unwrap_or_else(|_| panic!("the idle HTTP/2 connection is still open after {DEADLINE:?}"));
        let Some((kind, flags, stream, payload)) = frame else { break };
        match kind {
            h2::SETTINGS if flags & h2::ACK == 0 => {
                settings = Some(payload);
                raw.tcp.write_all(&h2_frame(h2::SETTINGS, h2::ACK, 0, &[])).await.expect("ack settings");
            }
            h2::PING if flags & h2::ACK == 0 => {
                // Answered even after GOAWAY: the server's graceful shutdown pings too.
                raw.tcp.write_all(&h2_frame(h2::PING, h2::ACK, 0, &payload)).await.expect("answer a ping");
            }
            h2::HEADERS if stream == 1 => {
                assert_eq!(payload.first(), Some(&0x88), "expected :status 200 on stream 1");
                answered = Some(Instant::now());
            }
            h2::GOAWAY => goaway = goaway.or(Some(Instant::now())),
            _ => {}
        }
    }
    let answered = answered.expect("the request on stream 1 was not answered");
    let goaway = goaway.expect("the connection was closed without GOAWAY");
    let waited = goaway - answered;
    assert!(waited >= idle * 4 / 5, "GOAWAY {waited:?} after the last answer, before the idle bound {idle:?}");

    let settings = settings.expect("no SETTINGS from the server");
    let setting = |id: u16| {
        settings
            .chunks_exact(6)
            .find(|s| u16::from_be_bytes([s[0], s[1]]) == id)
            .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
    };
    assert_eq!(setting(h2::MAX_CONCURRENT_STREAMS), Some(100), "streams per connection");
    assert_eq!(setting(h2::MAX_HEADER_LIST_SIZE), Some(32 * 1024), "the request head bound");
}

/// Reads until the server closes the connection; returns how long that took.
async fn closed_within(tcp: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit, tcp.read(&mut buf)).await {
            Err(_) => panic!("still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_request_head_is_cut_off() {
    let server = Server::start(&ServerConfig::memory().with("ENIGMA__SERVER__REQUEST_HEAD_TIMEOUT_MS", 1000));
    let chat = Chat::start(&server).await;
    let mut raw = Raw::open(&server).await;
    let head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: yes\r\n";
    let started = Instant::now();
    for byte in head {
        if raw.tcp.write_all(&[*byte]).await.is_err() {
            break; // cut off while trickling
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = closed_within(&mut raw.tcp, Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_secs(4), "the head trickled for {:?}", started.elapsed());
    chat.finish().await;
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("server status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS value")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_half_open_connections_cost_little_and_are_closed() {
    const CONNECTIONS: usize = 5_000;
    let server = Server::start(&ServerConfig::memory().with("ENIGMA__SERVER__REQUEST_HEAD_TIMEOUT_MS", 2000));
    let chat = Chat::start(&server).await;
    let before = rss_kib(server.pid());
    let mut held = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let mut raw = Raw::open(&server).await;
        // Half of them start a request head and never finish it.
        if i % 2 == 0 {
            raw.tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.expect("write");
        }
        held.push(raw);
    }
    let during = rss_kib(server.pid());
    let per_connection = (during.saturating_sub(before)) * 1024 / CONNECTIONS as u64;
    assert!(per_connection < 16 * 1024, "{per_connection} bytes of RSS per half-open connection");
    let deadline = Duration::from_secs(10);
    for raw in &mut held {
        closed_within(&mut raw.tcp, deadline).await;
    }
    chat.finish().await;
    // The server still takes new users afterwards.
    let (status, body) = server.get("/healthz").await;
    assert_eq!(status, 200, "{body}");
    let mut ws = Ws::connect(&server.ws_url(&format!("/ws/{}", server.new_user().await)), None).await;
    ws.send_text("{}").await;
    assert_eq!(ws.recv_json().await["code"], "invalid_frame");
}

/// A request whose body never comes (`Content-Length: 100`, one byte sent) is answered 408
/// within the head timeout and its connection closed, on HTTP/1 as a slow head is: it would
/// otherwise hold its connection, and its place under the caps, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_never_comes_is_answered_408() {
    let server = Server::start(&ServerConfig::memory().with("ENIGMA__SERVER__REQUEST_HEAD_TIMEOUT_MS", 1000));
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let head = "POST /auth/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{";
    tcp.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(read.is_ok(), "no answer and still open after 5 s: {answer:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(4), "answered after {:?}", started.elapsed());
}
