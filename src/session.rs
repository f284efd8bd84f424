//! One WebSocket's life, from the upgrade to the close frame.
//!
//! The socket is split: this task reads client frames, talks to the engine and decides what
//! to send; a writer task owns the sink and drains a bounded outbox (frames and bytes). A
//! client that does not read fills the outbox and is closed with 4429; its messages stay in
//! the inbox. Deliveries are ordered and de-duplicated by inbox id: the backlog is read after
//! the doorbell is subscribed, live notifications at or below the last id sent are skipped.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::AppState;
use crate::engine::{Engine, SendError};
use crate::hub::Link;
use crate::protocol::{Delivery, ErrorCode, MsgId, RawPayload, SUBPROTOCOL_V1, UserId, close, envelope, error_frame};
use crate::telemetry::{self, metric};

/// Inbox entries read per round trip while catching up.
const BACKLOG_PAGE: usize = 256;
/// Deliveries written before the writer flushes the socket (and removes them, in spec mode).
const WRITE_BATCH: usize = 64;
/// How long a closing socket may take to get its close frame out.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How a delivery reached the session (a metrics label).
#[derive(Debug, Clone, Copy)]
enum Path {
    Live,
    Backlog,
}

/// Why a session ends, as the close frame will say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Closing {
    code: u16,
    reason: &'static str,
}

impl Closing {
    const PEER_GONE: Closing = Closing { code: 1000, reason: "" };
    /// The socket failed while being written to (the writer task ended).
    const WRITER_GONE: Closing = Closing { code: 1006, reason: "" };
    const SLOW: Closing = Closing { code: close::SLOW_CONSUMER, reason: "slow consumer: outbound queue full" };
    const SHUTDOWN: Closing = Closing { code: close::GOING_AWAY, reason: "server shutting down; reconnect" };
    const REPLACED: Closing = Closing { code: close::REPLACED, reason: "replaced by a newer connection" };
    const IDLE: Closing = Closing { code: close::IDLE_TIMEOUT, reason: "idle timeout: no pong received" };
    const UNAVAILABLE: Closing = Closing { code: close::TRY_AGAIN_LATER, reason: "storage unavailable; retry later" };

    fn from_read_error(error: axum::Error) -> Closing {
        match error.into_inner().downcast::<tungstenite::Error>().map(|e| *e) {
            Ok(tungstenite::Error::Capacity(_)) => {
                Closing { code: close::MESSAGE_TOO_BIG, reason: "frame exceeds the size limit" }
            }
            Ok(tungstenite::Error::Protocol(_)) => Closing { code: close::PROTOCOL_ERROR, reason: "protocol error" },
            _ => Closing::PEER_GONE,
        }
    }

    fn from_kick(code: u16) -> Closing {
        match code {
            close::REPLACED => Closing::REPLACED,
            _ => Closing::SHUTDOWN,
        }
    }
}

/// The outcome of checking a connecting user, decided before the upgrade completes, so that
/// when a client sees its socket open it already is the user's live connection (and a
/// connection opened after it is newer, on any replica).
pub enum Admission {
    Accepted(Attached),
    UnknownUser,
    Unavailable,
}

/// A session registered in the hub and attached to the engine; detached when dropped, also
/// if the upgrade never completes.
pub struct Attached {
    engine: Engine,
    link: Arc<Link>,
    deliveries: Option<mpsc::Receiver<Delivery>>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.engine.detach(&self.link);
    }
}

pub async fn admit(state: &AppState, user_id: &str) -> Admission {
    let Some(user) = UserId::parse(user_id) else { return Admission::UnknownUser };
    match state.engine.public_key(&user).await {
        Ok(Some(_)) => {}
        Ok(None) => return Admission::UnknownUser,
        Err(e) => {
            tracing::warn!(error = %e, "cannot check user on connect");
            return Admission::Unavailable;
        }
    }
    let (link, deliveries) = state.hub.register(&user);
    let attached = Attached { engine: state.engine.clone(), link, deliveries: Some(deliveries) };
    match state.engine.attach(&attached.link).await {
        Ok(()) => Admission::Accepted(attached),
        Err(e) => {
            tracing::warn!(error = %e, "cannot attach session");
            Admission::Unavailable
        }
    }
}

/// Serves one upgraded socket until it closes.
pub async fn serve(socket: WebSocket, state: AppState, admission: Admission) {
    let acknowledging = socket.protocol().is_some_and(|p| p.as_bytes() == SUBPROTOCOL_V1.as_bytes());
    let (mut sink, stream) = socket.split();
    let mut attached = match admission {
        Admission::Accepted(attached) => attached,
        Admission::UnknownUser => {
            let frame = error_frame(ErrorCode::UserNotFound, "user not found", None);
            return reject(&mut sink, frame, Closing { code: close::USER_NOT_FOUND, reason: "user not found" }).await;
        }
        Admission::Unavailable => {
            let frame = error_frame(ErrorCode::Unavailable, "service unavailable, retry later", None);
            return reject(&mut sink, frame, Closing::UNAVAILABLE).await;
        }
    };
    let deliveries = attached.deliveries.take().expect("fresh admission");
    let link = attached.link.clone();
    let user = link.user.clone();

    metrics::gauge!(metric::CONNECTIONS_OPEN).increment(1.0);
    metrics::counter!(metric::CONNECTIONS_OPENED).increment(1);
    let limits = &state.settings.limits;
    let (outbox, close_tx, mut writer) = Outbox::spawn(sink, &state.engine, &link, acknowledging, limits);
    let mut session =
        Session { state, user, link, acknowledging, outbox, last_sent: None, last_seen: Instant::now(), stale: false };
    let closing = session.run(stream, deliveries, &mut writer).await;

    drop(attached); // detach before the close frame: a reconnect may come right after it
    metrics::gauge!(metric::CONNECTIONS_OPEN).decrement(1.0);
    metrics::counter!(metric::CONNECTIONS_CLOSED, "reason" => close_reason_label(closing.code)).increment(1);
    if closing == Closing::REPLACED {
        metrics::counter!(metric::CONNECTIONS_DISPLACED).increment(1);
    }
    tracing::debug!(user = %session.user, code = closing.code, reason = closing.reason, "session closed");
    let _ = close_tx.send(closing);
    drop(session);
    // A writer that already ended was awaited by the loop: a JoinHandle is polled once.
    if closing != Closing::WRITER_GONE && tokio::time::timeout(CLOSE_GRACE, &mut writer).await.is_err() {
        writer.abort();
    }
}

fn close_reason_label(code: u16) -> &'static str {
    match code {
        1000 | 1006 => "peer",
        close::MESSAGE_TOO_BIG => "too_big",
        close::GOING_AWAY => "shutdown",
        close::REPLACED => "replaced",
        close::SLOW_CONSUMER => "slow_consumer",
        close::IDLE_TIMEOUT => "idle",
        close::TRY_AGAIN_LATER => "unavailable",
        _ => "other",
    }
}

/// Refuses a socket: one error frame, then a close frame.
async fn reject(sink: &mut SplitSink<WebSocket, Message>, frame: String, closing: Closing) {
    let send = async {
        sink.send(Message::Text(frame.into())).await?;
        sink.send(close_message(closing)).await
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, send).await;
}

fn close_message(closing: Closing) -> Message {
    Message::Close(Some(CloseFrame { code: closing.code, reason: Utf8Bytes::from_static(closing.reason) }))
}

struct Session {
    state: AppState,
    user: UserId,
    link: Arc<Link>,
    acknowledging: bool,
    outbox: Outbox,
    /// Highest inbox id handed to the writer on this connection.
    last_sent: Option<MsgId>,
    last_seen: Instant,
    /// The last inbox read failed: live deliveries are held back (they could overtake what
    /// was not read) until a retry of the read succeeds.
    stale: bool,
}

/// How soon a failed inbox read is tried again.
const STALE_RETRY: Duration = Duration::from_millis(250);

impl Session {
    async fn run(
        &mut self,
        mut stream: SplitStream<WebSocket>,
        mut deliveries: mpsc::Receiver<Delivery>,
        writer: &mut JoinHandle<()>,
    ) -> Closing {
        match self.resync(&mut deliveries, false).await {
            Ok(backlog) => metrics::histogram!(metric::BACKLOG_ON_CONNECT).record(backlog as f64),
            Err(closing) => return closing,
        }
        let server = &self.state.settings.server;
        let (ping_every, idle_timeout) = (server.ping_interval(), server.idle_timeout());
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        let link = self.link.clone();
        // Built once, not on every turn of the loop (this loop runs once per message).
        let mut kicked = std::pin::pin!(link.kicked());
        let mut resync = std::pin::pin!(link.resync_requested());
        let mut retry = std::pin::pin!(tokio::time::sleep(STALE_RETRY));
        loop {
            let step = tokio::select! {
                // Biased: a requested re-read must run before any later live delivery, or a
                // delivery could overtake one whose doorbell was missed.
                biased;
                code = &mut kicked => Err(Closing::from_kick(code)),
                frame = stream.next() => match frame {
                    Some(Ok(message)) => {
                        self.last_seen = Instant::now();
                        self.on_message(message).await
                    }
                    Some(Err(e)) => Err(Closing::from_read_error(e)),
                    None => Err(Closing::PEER_GONE),
                },
                _ = &mut resync => {
                    resync.set(link.resync_requested());
                    self.resync(&mut deliveries, true).await.map(drop)
                }
                _ = &mut retry, if self.stale => self.resync(&mut deliveries, true).await.map(drop),
                Some(delivery) = deliveries.recv() => {
                    self.link.dequeued(&delivery);
                    if self.stale { Ok(()) } else { self.forward(delivery, Path::Live).await }
                }
                _ = ping.tick() => {
                    if self.last_seen.elapsed() > idle_timeout {
                        Err(Closing::IDLE)
                    } else {
                        self.outbox.ping();
                        Ok(())
                    }
                }
                _ = &mut *writer => Err(Closing::WRITER_GONE),
            };
            if self.stale {
                retry.as_mut().reset(tokio::time::Instant::now() + STALE_RETRY);
            }
            if let Err(closing) = step {
                return closing;
            }
        }
    }

    /// Re-reads the inbox after `last_sent`, then forwards what is still queued only if no
    /// doorbell was missed meanwhile (otherwise the next re-read gets it). `check_generation`:
    /// a takeover announced while doorbells were being missed may have been missed too.
    async fn resync(
        &mut self,
        deliveries: &mut mpsc::Receiver<Delivery>,
        check_generation: bool,
    ) -> Result<usize, Closing> {
        self.link.begin_resync();
        if check_generation {
            match self.state.engine.generation(&self.user).await {
                Ok(Some(newest)) => self.state.hub.takeover(&self.user, newest),
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "cannot check the connection generation"),
            }
        }
        let sent = match self.catch_up().await? {
            Some(sent) => sent,
            None => {
                self.stale = true;
                return Ok(0);
            }
        };
        self.stale = false;
        while let Ok(delivery) = deliveries.try_recv() {
            self.link.dequeued(&delivery);
            if !self.link.is_lagged() {
                self.forward(delivery, Path::Live).await?;
            }
        }
        Ok(sent)
    }

    /// Sends everything stored after `last_sent`; returns how many messages that was, or
    /// `None` if the inbox could not be read.
    async fn catch_up(&mut self) -> Result<Option<usize>, Closing> {
        let mut sent = 0;
        loop {
            if let Some(code) = self.link.is_kicked() {
                return Err(Closing::from_kick(code));
            }
            let page = match self.state.engine.backlog(&self.user, self.last_sent, BACKLOG_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read backlog; will retry");
                    return Ok(None);
                }
            };
            let full = page.len() == BACKLOG_PAGE;
            sent += page.len();
            for delivery in page {
                self.forward(delivery, Path::Backlog).await?;
            }
            if !full {
                return Ok(Some(sent));
            }
        }
    }

    async fn forward(&mut self, delivery: Delivery, path: Path) -> Result<(), Closing> {
        if self.last_sent.is_some_and(|last| delivery.id <= last) {
            return Ok(()); // already sent on this connection
        }
        self.last_sent = Some(delivery.id);
        let hot = telemetry::hot();
        match path {
            Path::Live => hot.delivered_live.increment(1),
            Path::Backlog => hot.delivered_backlog.increment(1),
        }
        // Envelopes are JSON the server itself serialized: always UTF-8.
        let Ok(text) = Utf8Bytes::try_from(delivery.frame(self.acknowledging)) else {
            tracing::error!(id = %delivery.id, "stored envelope is not UTF-8; skipped");
            return Ok(());
        };
        self.outbox.push(text, Some(delivery.id)).await
    }

    async fn on_message(&mut self, message: Message) -> Result<(), Closing> {
        match message {
            Message::Text(text) => self.on_text(text.as_str()).await,
            Message::Binary(_) => {
                self.error(
                    ErrorCode::BinaryNotSupported,
                    "binary frames are not supported; send JSON text frames",
                    None,
                )
                .await
            }
            Message::Close(_) => Err(Closing::PEER_GONE),
            Message::Ping(_) | Message::Pong(_) => Ok(()),
        }
    }

    async fn on_text(&mut self, text: &str) -> Result<(), Closing> {
        let frame: Inbound = match serde_json::from_str(text) {
            Ok(frame) => frame,
            Err(e) => {
                let (code, message) = describe_parse_error(text, &e);
                return self.error(code, &message, None).await;
            }
        };
        // Only acknowledging clients get receipts, so only theirs carry a `ref` back.
        let reference = frame.reference.as_deref().filter(|_| self.acknowledging);
        if let Some(ack) = frame.ack {
            return self.on_ack(ack, reference).await;
        }
        let (Some(from), Some(to), Some(payload)) = (&frame.from, &frame.to, &frame.payload) else {
            let missing = ["from", "to", "payload"]
                .into_iter()
                .zip([frame.from.is_none(), frame.to.is_none(), frame.payload.is_none()])
                .filter_map(|(name, absent)| absent.then_some(name))
                .collect::<Vec<_>>()
                .join("`, `");
            return self.error(ErrorCode::InvalidFrame, &format!("missing field `{missing}`"), reference).await;
        };
        if from.as_ref() != self.user.as_str() {
            metrics::counter!(metric::MESSAGES_REJECTED, "reason" => "forbidden").increment(1);
            return self.error(ErrorCode::Forbidden, "`from` must be your own user id", reference).await;
        }
        let Some(payload) = RawPayload::new(payload) else {
            return self.error(ErrorCode::InvalidFrame, "field `payload` must be a string", reference).await;
        };
        let (max, len) = (self.state.settings.limits.max_payload_bytes, payload.decoded_len());
        if len > max {
            metrics::counter!(metric::MESSAGES_REJECTED, "reason" => "too_large").increment(1);
            return self.error(ErrorCode::PayloadTooLarge, &format!("payload exceeds {max} bytes"), reference).await;
        }
        if len == 0 {
            return self.error(ErrorCode::InvalidFrame, "payload is empty", reference).await;
        }
        let Some(to) = UserId::parse(to) else {
            metrics::counter!(metric::MESSAGES_REJECTED, "reason" => "user_not_found").increment(1);
            return self.error(ErrorCode::UserNotFound, "user not found", reference).await;
        };
        let envelope = envelope(&self.user, &to, payload);
        match self.state.engine.send(&to, envelope.into()).await {
            Ok(id) => {
                telemetry::hot().accepted.increment(1);
                match reference {
                    Some(reference) => self.receipt(reference, id).await,
                    None => Ok(()),
                }
            }
            Err(e) => {
                let (code, message, label) = match &e {
                    SendError::UserNotFound => (ErrorCode::UserNotFound, "user not found", "user_not_found"),
                    SendError::InboxFull => {
                        (ErrorCode::InboxFull, "recipient's inbox is full; retry later", "inbox_full")
                    }
                    SendError::Unavailable(err) => {
                        tracing::warn!(error = %err, "send failed");
                        (ErrorCode::Unavailable, "service unavailable, retry later", "unavailable")
                    }
                };
                metrics::counter!(metric::MESSAGES_REJECTED, "reason" => label).increment(1);
                self.error(code, message, reference).await
            }
        }
    }

    async fn on_ack(&mut self, ack: Acks, reference: Option<&str>) -> Result<(), Closing> {
        if !self.acknowledging {
            return self
                .error(ErrorCode::InvalidFrame, "acknowledgements need the enigma.v1 subprotocol", reference)
                .await;
        }
        let ids: Option<Vec<MsgId>> = match &ack {
            Acks::One(id) => id.parse().ok().map(|id| vec![id]),
            Acks::Many(ids) => ids.iter().map(|id| id.parse().ok()).collect(),
        };
        let Some(ids) = ids.filter(|ids| !ids.is_empty()) else {
            return self
                .error(ErrorCode::InvalidFrame, "`ack` must be a message id or a non-empty list of ids", reference)
                .await;
        };
        match self.state.engine.remove(&self.user, &ids).await {
            Ok(()) => {
                metrics::counter!(metric::ACKS).increment(ids.len() as u64);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "ack failed");
                self.error(ErrorCode::Unavailable, "service unavailable, retry the acknowledgement", reference).await
            }
        }
    }

    async fn receipt(&mut self, reference: &str, id: MsgId) -> Result<(), Closing> {
        #[derive(serde::Serialize)]
        struct Receipt<'a> {
            #[serde(rename = "ref")]
            reference: &'a str,
            id: String,
            status: &'static str,
        }
        let frame = serde_json::to_string(&Receipt { reference, id: id.to_string(), status: "stored" }).expect("plain");
        self.outbox.push(frame.into(), None).await
    }

    async fn error(&mut self, code: ErrorCode, message: &str, reference: Option<&str>) -> Result<(), Closing> {
        self.outbox.push(error_frame(code, message, reference).into(), None).await
    }
}

/// A client frame: an envelope (`from`, `to`, `payload`, optional `ref`) or an `ack`.
#[derive(Debug, Deserialize)]
struct Inbound<'a> {
    #[serde(borrow, default)]
    from: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    to: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    payload: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default, rename = "ref")]
    reference: Option<Cow<'a, str>>,
    #[serde(default)]
    ack: Option<Acks>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Acks {
    One(String),
    Many(Vec<String>),
}

/// Turns a parse failure into a message that names what is wrong.
fn describe_parse_error(text: &str, error: &serde_json::Error) -> (ErrorCode, String) {
    use serde_json::Value;
    if !error.is_data() {
        return (ErrorCode::InvalidJson, format!("invalid JSON: {error}"));
    }
    // The cold path: parse again, loosely, to say which field has the wrong type.
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) else {
        return (ErrorCode::InvalidFrame, "a frame must be a JSON object".into());
    };
    for field in ["from", "to", "payload", "ref"] {
        if map.get(field).is_some_and(|v| !v.is_string() && !v.is_null()) {
            return (ErrorCode::InvalidFrame, format!("field `{field}` must be a string"));
        }
    }
    if map.contains_key("ack") {
        return (ErrorCode::InvalidFrame, "`ack` must be a message id or a list of ids".into());
    }
    (ErrorCode::InvalidFrame, format!("invalid frame: {error}"))
}

/// What the session hands the writer.
enum Out {
    Frame { text: Utf8Bytes, id: Option<MsgId>, _permit: OwnedSemaphorePermit },
    Ping,
}

/// The bounded queue between the session and its socket writer.
struct Outbox {
    link: Arc<Link>,
    tx: mpsc::Sender<Out>,
    bytes: Arc<Semaphore>,
    max_bytes: u32,
    timeout: Duration,
}

impl Outbox {
    fn spawn(
        sink: SplitSink<WebSocket, Message>,
        engine: &Engine,
        link: &Arc<Link>,
        acknowledging: bool,
        limits: &crate::config::Limits,
    ) -> (Outbox, oneshot::Sender<Closing>, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(limits.outbound_queue_frames);
        let (close_tx, close_rx) = oneshot::channel();
        let max_bytes = u32::try_from(limits.outbound_queue_bytes).unwrap_or(u32::MAX);
        // Spec clients cannot acknowledge: what was written to their socket leaves the inbox.
        let remover = (!acknowledging).then(|| (engine.clone(), link.user.clone()));
        let writer = tokio::spawn(write_loop(sink, rx, close_rx, remover));
        let outbox = Outbox {
            link: link.clone(),
            tx,
            bytes: Arc::new(Semaphore::new(max_bytes as usize)),
            max_bytes,
            timeout: limits.send_timeout(),
        };
        (outbox, close_tx, writer)
    }

    /// Queues a frame, waiting up to the send timeout for room; a reader that stays too slow
    /// for that long is closed.
    async fn push(&self, text: Utf8Bytes, id: Option<MsgId>) -> Result<(), Closing> {
        let cost = u32::try_from(text.len() + 64).unwrap_or(u32::MAX).min(self.max_bytes);
        // Fast path, taken unless the reader is behind: no timer to arm and cancel.
        if let Ok(permit) = self.bytes.clone().try_acquire_many_owned(cost) {
            match self.tx.try_reserve() {
                Ok(slot) => {
                    slot.send(Out::Frame { text, id, _permit: permit });
                    return Ok(());
                }
                Err(mpsc::error::TrySendError::Closed(())) => return Err(Closing::PEER_GONE),
                Err(mpsc::error::TrySendError::Full(())) => drop(permit),
            }
        }
        let enqueue = async {
            let permit = self.bytes.clone().acquire_many_owned(cost).await.ok()?;
            let slot = self.tx.reserve().await.ok()?;
            slot.send(Out::Frame { text, id, _permit: permit });
            Some(())
        };
        // Waiting for a slow reader must not delay a takeover or a shutdown.
        tokio::select! {
            waited = tokio::time::timeout(self.timeout, enqueue) => match waited {
                Ok(Some(())) => Ok(()),
                Ok(None) => Err(Closing::PEER_GONE),
                Err(_) => {
                    metrics::counter!(metric::SLOW_CONSUMERS).increment(1);
                    Err(Closing::SLOW)
                }
            },
            code = self.link.kicked() => Err(Closing::from_kick(code)),
        }
    }

    fn ping(&self) {
        let _ = self.tx.try_send(Out::Ping); // a full queue is the slow-reader path's business
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Out>,
    mut close_rx: oneshot::Receiver<Closing>,
    remover: Option<(Engine, UserId)>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut written = Vec::new();
    loop {
        tokio::select! {
            biased;
            closing = &mut close_rx => {
                if let Ok(closing) = closing {
                    let _ = sink.send(close_message(closing)).await;
                }
                return;
            }
            n = rx.recv_many(&mut batch, WRITE_BATCH) => {
                if n == 0 {
                    return;
                }
            }
        }
        for out in batch.drain(..) {
            let (message, id) = match out {
                Out::Frame { text, id, _permit } => (Message::Text(text), id),
                Out::Ping => (Message::Ping(Default::default()), None),
            };
            if sink.feed(message).await.is_err() {
                return;
            }
            written.extend(id);
        }
        if sink.flush().await.is_err() {
            return;
        }
        // Inbox ids carry the acceptance time (ms), so latency needs no extra bookkeeping.
        let now = crate::engine::unix_ms();
        let latency = &telemetry::hot().delivery_latency;
        for id in &written {
            latency.record(now.saturating_sub(id.ms) as f64 / 1000.0);
        }
        if let Some((engine, user)) = &remover
            && let Err(e) = engine.remove(user, &written).await
        {
            // Still stored: delivered again on the next connection rather than lost.
            tracing::warn!(error = %e, "cannot remove delivered messages");
        }
        written.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_the_problem() {
        let check = |text: &str| {
            let err = serde_json::from_str::<Inbound>(text).unwrap_err();
            describe_parse_error(text, &err)
        };
        assert_eq!(check("{nope").0, ErrorCode::InvalidJson);
        assert_eq!(check("[1,2]"), (ErrorCode::InvalidFrame, "a frame must be a JSON object".into()));
        assert_eq!(check(r#"{"from": 5}"#), (ErrorCode::InvalidFrame, "field `from` must be a string".into()));
        assert_eq!(check(r#"{"to": ["x"]}"#), (ErrorCode::InvalidFrame, "field `to` must be a string".into()));
    }

    #[test]
    fn escaped_strings_are_accepted() {
        let f: Inbound = serde_json::from_str(r#"{"from":"a\u0062","to":"b","payload":"x\"y\u00e9"}"#).unwrap();
        assert_eq!(f.from.as_deref(), Some("ab"));
        assert_eq!(f.payload.map(|p| p.get()), Some(r#""x\"y\u00e9""#));
    }
}
