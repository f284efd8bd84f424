//! The relay floor: what serving the bench's traffic costs on the relay's stack with nothing
//! in between. Per message it does what no relay can skip: read the frame, find the recipient
//! (`to`) in it, hand the frame's own bytes to the recipient's socket and write them there.
//!
//! Left out, because they are what the relay adds: storage, receipts, acknowledgements,
//! limits, authentication, sessions with ordering cursors, metrics and logs. A message for a
//! user with no open socket is dropped. Any user id is accepted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tower::ServiceExt;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (loopback: the floor has no limits and no authentication).
    #[arg(long, default_value = "127.0.0.1:8000")]
    addr: SocketAddr,
}

/// Each open socket's mailbox, by user id. Unbounded: the floor has no limits.
type Mailboxes = Arc<RwLock<HashMap<String, mpsc::UnboundedSender<Utf8Bytes>>>>;

/// What routing a frame needs: the recipient, and a payload that is a JSON string.
#[derive(Deserialize)]
struct Send<'a> {
    #[serde(borrow)]
    to: &'a str,
    #[serde(borrow)]
    payload: &'a RawValue,
}

pub async fn run(args: Args) -> Result<(), String> {
    if !args.addr.ip().is_loopback() {
        return Err(format!("--addr {}: loopback only (the floor has no limits and no authentication)", args.addr));
    }
    let listener = listen(args.addr).map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
    println!("listening on {}", listener.local_addr().map_err(|e| e.to_string())?);
    serve(listener).await;
    Ok(())
}

/// Accepts connections until the process is stopped, each served like the relay serves its
/// own: hyper-util's auto builder with upgrades, `TCP_NODELAY`.
pub async fn serve(listener: tokio::net::TcpListener) {
    let router = router();
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let _ = tcp.set_nodelay(true);
        let (router, builder) = (router.clone(), builder.clone());
        tokio::spawn(async move {
            let service = tower::service_fn(move |request: Request<Incoming>| router.clone().oneshot(request));
            let service = TowerToHyperService::new(service);
            let _ = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service).await;
        });
    }
}

fn router() -> Router {
    let mailboxes = Mailboxes::default();
    Router::new().route("/login/{key}", get(login)).route("/ws/{user_id}", get(socket)).with_state(mailboxes)
}

/// The key is the user id: every run's keys are unique, and nobody registers.
async fn login(Path(key): Path<String>) -> Response {
    axum::Json(enigma::protocol::LoginResponse::new(&key)).into_response()
}

/// The relay's socket buffers (src/http.rs), so the floor writes and reads the same way.
async fn socket(upgrade: WebSocketUpgrade, Path(user): Path<String>, State(mailboxes): State<Mailboxes>) -> Response {
    upgrade
        .read_buffer_size(2 * 1024)
        .write_buffer_size(16 * 1024)
        .on_upgrade(move |socket| forward(socket, user, mailboxes))
}

/// One socket: its frames go to their recipients' mailboxes, its mailbox goes to the socket
/// in batches (one flush per batch, as the relay's writer does). Either side ending ends both.
async fn forward(socket: WebSocket, user: String, mailboxes: Mailboxes) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    mailboxes.write().expect("mailboxes").insert(user.clone(), tx.clone());
    let (mut sink, mut stream) = socket.split();
    let write = async {
        let mut batch = Vec::with_capacity(64);
        while rx.recv_many(&mut batch, 64).await > 0 {
            for frame in batch.drain(..) {
                sink.feed(Message::Text(frame)).await?;
            }
            sink.flush().await?;
        }
        Ok::<_, axum::Error>(())
    };
    let read = async {
        while let Some(Ok(message)) = stream.next().await {
            let Message::Text(text) = message else { continue };
            let Ok(send) = serde_json::from_str::<Send>(text.as_str()) else { continue };
            if !send.payload.get().starts_with('"') {
                continue;
            }
            let mailbox = mailboxes.read().expect("mailboxes").get(send.to).cloned();
            if let Some(mailbox) = mailbox {
                let _ = mailbox.send(text.clone());
            }
        }
    };
    tokio::select! {
        _ = write => {}
        () = read => {}
    }
    let mut open = mailboxes.write().expect("mailboxes");
    if open.get(&user).is_some_and(|current| current.same_channel(&tx)) {
        open.remove(&user);
    }
}

/// The relay's listen backlog (src/bin/enigma-server.rs).
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}
