//! The driver of a [`Connection`](super::connection::Connection): the task that owns the
//! socket across reconnects, writes sends and acknowledgements, matches answers to senders,
//! and decides from a close code whether to reconnect or stop.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use reqwest::Url;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_util::sync::CancellationToken;

use super::channels::{Command, ConnectOptions, FromServer, Status, Stop, backoff};
use super::client::{Client, Socket, chain};
use super::error::Error;
use crate::protocol::{AckFrame, AckIds, ClientFrame, CloseCode, ErrorCode, ServerFrame};

/// How a socket's session ended.
enum Outcome {
    Reconnect(String),
    Stop(Stop),
}

/// Owns the socket across reconnects.
pub(super) struct Driver {
    /// Reconnects authenticate through it (a fresh token once the old one is about to expire).
    pub(super) client: Client,
    pub(super) user: String,
    pub(super) url: Url,
    pub(super) options: ConnectOptions,
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
    pub(super) deliveries: Option<mpsc::Sender<FromServer>>,
    pub(super) status: watch::Sender<Status>,
    pub(super) stopped: Arc<OnceLock<Stop>>,
    pub(super) cancel: CancellationToken,
    /// Sends without an answer, in submission order (the `ref` is the sequence number).
    pub(super) pending: BTreeMap<u64, Pending>,
    /// Acknowledgements not yet written.
    pub(super) acks: Vec<String>,
}

pub(super) struct Pending {
    frame: String,
    reply: oneshot::Sender<Result<String, Error>>,
}

impl Driver {
    pub(super) async fn run(mut self, first: Socket) {
        let mut socket = first;
        let mut attempt: u32 = 0;
        loop {
            self.status.send_replace(Status::Connected);
            let opened = Instant::now();
            let mut reason = match self.session(socket).await {
                Outcome::Stop(stop) => return self.finish(stop).await,
                Outcome::Reconnect(reason) => reason,
            };
            // A connection that lasted resets the backoff; one closed at once (a server that
            // accepts and fails) keeps growing it, so a broken server is not hammered.
            if opened.elapsed() >= Duration::from_secs(10) {
                attempt = 0;
            }
            socket = loop {
                let delay = backoff(attempt, self.options.backoff_initial, self.options.backoff_max);
                attempt = attempt.saturating_add(1);
                tracing::debug!(attempt, ?delay, %reason, "reconnecting");
                self.status.send_replace(Status::Reconnecting { attempt, delay, reason: reason.clone() });
                if let Some(stop) = self.wait(delay).await {
                    return self.finish(stop).await;
                }
                let opening = tokio::select! {
                    opening = self.client.open_socket(&self.url, &self.user, self.options.connect_timeout) => opening,
                    _ = self.cancel.cancelled() => return self.finish(Stop::ByClient).await,
                };
                match opening {
                    Ok(socket) => break socket,
                    Err(e) => reason = e.to_string(),
                }
            };
        }
    }

    /// Waits while disconnected, still taking commands (sends queue up for the next socket).
    async fn wait(&mut self, delay: Duration) -> Option<Stop> {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return None,
                _ = self.cancel.cancelled() => return Some(Stop::ByClient),
                command = self.commands.recv() => match command {
                    None => return Some(Stop::ByClient),
                    Some(command) => {
                        self.take(command);
                    }
                },
            }
        }
    }

    /// Records a command; the socket session writes what it implies.
    fn take(&mut self, command: Command) -> Option<String> {
        match command {
            Command::Send { seq, frame, reply } => {
                self.pending.insert(seq, Pending { frame: frame.clone(), reply });
                return Some(frame);
            }
            Command::Cancel(seq) => {
                self.pending.remove(&seq);
            }
            Command::Ack(id) => self.acks.push(id),
        }
        None
    }

    async fn session(&mut self, mut socket: Socket) -> Outcome {
        // Replay on the new socket: acknowledgements not yet written and every send without
        // an answer, in the order they were made.
        let replay: Vec<String> = self.pending.values().map(|p| p.frame.clone()).collect();
        if let Err(e) = self.write(&mut socket, replay).await {
            return Outcome::Reconnect(e);
        }
        let mut ping = tokio::time::interval(self.options.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                frame = socket.next() => {
                    last_heard = Instant::now();
                    match frame {
                        Some(Ok(WsMessage::Text(text))) => {
                            if let Some(outcome) = self.on_text(text.as_str()).await {
                                return outcome;
                            }
                        }
                        Some(Ok(WsMessage::Close(frame))) => return self.on_close(frame),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Outcome::Reconnect(format!("connection lost: {}", chain(&e))),
                        None => return Outcome::Reconnect("connection lost".into()),
                    }
                }
                command = self.commands.recv() => {
                    let Some(command) = command else {
                        close_politely(socket).await;
                        return Outcome::Stop(Stop::ByClient);
                    };
                    // Take everything queued, then write it in one flush.
                    let mut frames: Vec<String> = self.take(command).into_iter().collect();
                    while let Ok(command) = self.commands.try_recv() {
                        frames.extend(self.take(command));
                    }
                    if let Err(e) = self.write(&mut socket, frames).await {
                        return Outcome::Reconnect(e);
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() >= self.options.idle_timeout {
                        return Outcome::Reconnect(format!("no answer from the server for {:?}", self.options.idle_timeout));
                    }
                    if let Err(e) = socket.send(WsMessage::Ping(Default::default())).await {
                        return Outcome::Reconnect(format!("connection lost: {}", chain(&e)));
                    }
                }
                _ = self.cancel.cancelled() => {
                    // Acknowledgements given before the close still go out.
                    while let Ok(command) = self.commands.try_recv() {
                        self.take(command);
                    }
                    let _ = self.write(&mut socket, Vec::new()).await;
                    close_politely(socket).await;
                    return Outcome::Stop(Stop::ByClient);
                }
            }
        }
    }

    /// Writes `frames` and any pending acknowledgements (as one `ack` frame), then flushes.
    async fn write(&mut self, socket: &mut Socket, frames: Vec<String>) -> Result<(), String> {
        let lost = |e: tungstenite::Error| format!("connection lost: {}", chain(&e));
        if !self.acks.is_empty() {
            let acks = std::mem::take(&mut self.acks);
            let frame = ClientFrame::Ack(AckFrame { ids: AckIds::Many(acks), reference: None }).to_json();
            socket.feed(WsMessage::Text(frame.into())).await.map_err(lost)?;
        }
        for frame in frames {
            socket.feed(WsMessage::Text(frame.into())).await.map_err(lost)?;
        }
        socket.flush().await.map_err(lost)
    }

    async fn on_text(&mut self, text: &str) -> Option<Outcome> {
        let frame = match ServerFrame::parse(text) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a frame that is not a JSON object");
                return None;
            }
        };
        // Receipts and errors without a known ref: a send that was cancelled, or an answer
        // to a frame we did not send with a ref (an `ack`).
        let answered = frame.reference().and_then(|r| r.parse::<u64>().ok()).and_then(|seq| self.pending.remove(&seq));
        match (frame, answered) {
            (ServerFrame::Error(error), Some(pending)) => {
                let _ = pending.reply.send(Err(Error::Refused { code: error.code, message: error.error.into_owned() }));
            }
            (ServerFrame::Error(error), None) => {
                tracing::warn!(code = %error.code, error = %error.error, "error frame from the server");
            }
            (ServerFrame::Receipt(receipt), Some(pending)) => {
                let _ = pending.reply.send(Ok(receipt.id.into_owned()));
            }
            (_, Some(pending)) => {
                let _ = pending.reply.send(Err(Error::Protocol(format!("unexpected answer to a send: {text}"))));
            }
            (ServerFrame::Delivery(delivery), None) if delivery.id.is_some() => {
                if let Some(deliveries) = &self.deliveries {
                    // Waiting here when the application does not keep up stops reading the
                    // socket: the server's bounded queue then decides (a slow-consumer close, messages kept).
                    let delivery = FromServer::Delivery {
                        id: delivery.id.unwrap_or_default(),
                        ts: delivery.ts.unwrap_or(0),
                        from: delivery.from,
                        payload: delivery.payload,
                    };
                    if deliveries.send(delivery).await.is_err() {
                        self.deliveries = None;
                    }
                }
            }
            _ => tracing::debug!(frame = %text, "ignoring an unknown frame"),
        }
        None
    }

    fn on_close(&mut self, frame: Option<CloseFrame>) -> Outcome {
        let (code, reason) = frame
            .map(|f| (u16::from(f.code), f.reason.to_string()))
            .unwrap_or((CloseCode::NoStatus.as_u16(), String::new()));
        match CloseCode::from_u16(code) {
            CloseCode::Replaced => Outcome::Stop(Stop::Replaced),
            CloseCode::Unauthorized => {
                // The token was refused (expired meanwhile, or its key rotated away): the next
                // attempt proves possession again.
                self.client.forget_token();
                Outcome::Reconnect(format!("refused by the server: {reason} ({code})"))
            }
            CloseCode::UserNotFound => Outcome::Stop(Stop::UserNotFound(
                self.url.path_segments().and_then(|mut s| s.next_back()).unwrap_or_default().to_owned(),
            )),
            // We broke the protocol: reconnecting would repeat it.
            CloseCode::ProtocolError
            | CloseCode::UnsupportedData
            | CloseCode::InvalidPayload
            | CloseCode::PolicyViolation => Outcome::Stop(Stop::Closed { code, reason }),
            CloseCode::MessageTooBig => {
                // A frame far over the server's limit. It is the largest unanswered send;
                // fail it rather than replaying it on every connection.
                let largest = self.pending.iter().max_by_key(|(_, p)| p.frame.len()).map(|(seq, _)| *seq);
                if let Some(pending) = largest.and_then(|seq| self.pending.remove(&seq)) {
                    let _ = pending.reply.send(Err(Error::Refused {
                        code: ErrorCode::PayloadTooLarge.into(),
                        message: "the frame exceeds the server's size limit".into(),
                    }));
                }
                Outcome::Reconnect(format!("closed by the server: {reason} ({code})"))
            }
            _ => Outcome::Reconnect(format!("closed by the server: {reason} ({code})")),
        }
    }

    async fn finish(mut self, stop: Stop) {
        let _ = self.stopped.set(stop.clone());
        self.status.send_replace(Status::Closed);
        for (_, pending) in std::mem::take(&mut self.pending) {
            let _ = pending.reply.send(Err(stop.to_error()));
        }
        if !matches!(stop, Stop::ByClient)
            && let Some(deliveries) = self.deliveries.take()
        {
            let _ = deliveries.send(FromServer::Stopped(stop.to_error())).await;
        }
    }
}

/// Sends a normal close and waits briefly for the server's close frame.
async fn close_politely(mut socket: Socket) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = socket.close(None).await;
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}
