//! One WebSocket's life, from the upgrade to the close frame.
//!
//! One task per socket: it reads client frames, talks to the engine, and writes to the socket
//! itself; frames are buffered and flushed once per step, so a burst of deliveries leaves in
//! one write. What waits for a socket is bounded: the hub's queue (frames and bytes; past it a
//! re-read of the inbox), and the socket's own buffers. A write that cannot complete within
//! `limits.send_timeout_ms` closes the socket with 4429; its messages stay in the inbox.
//! Deliveries are ordered and de-duplicated by inbox id: the backlog is read after the doorbell
//! is subscribed, and live notifications at or below the last id sent are skipped.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::future::Future;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{FutureExt, SinkExt};
use serde::Deserialize;

use crate::AppState;
use crate::engine::{Engine, SendError};
use crate::hub::Link;
use crate::protocol::{Delivery, ErrorCode, MsgId, RawPayload, SUBPROTOCOL_V1, UserId, close, envelope, error_frame};
use crate::telemetry::{self, metric};

/// Inbox entries read per round trip while catching up.
const BACKLOG_PAGE: usize = 256;
/// Sends stored in one engine call at most.
const SEND_BATCH: usize = 64;
/// Queued live deliveries written before one flush.
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
    let link = state.hub.register(&user);
    let attached = Attached { engine: state.engine.clone(), link };
    match state.engine.attach(&attached.link).await {
        Ok(()) => Admission::Accepted(attached),
        Err(e) => {
            tracing::warn!(error = %e, "cannot attach session");
            Admission::Unavailable
        }
    }
}

/// Serves one upgraded socket until it closes.
pub async fn serve(mut socket: WebSocket, state: AppState, admission: Admission) {
    let acknowledging = socket.protocol().is_some_and(|p| p.as_bytes() == SUBPROTOCOL_V1.as_bytes());
    let attached = match admission {
        Admission::Accepted(attached) => attached,
        Admission::UnknownUser => {
            let frame = error_frame(ErrorCode::UserNotFound, "user not found", None);
            return reject(&mut socket, frame, Closing { code: close::USER_NOT_FOUND, reason: "user not found" }).await;
        }
        Admission::Unavailable => {
            let frame = error_frame(ErrorCode::Unavailable, "service unavailable, retry later", None);
            return reject(&mut socket, frame, Closing::UNAVAILABLE).await;
        }
    };
    let link = attached.link.clone();
    let user = link.user.clone();

    metrics::gauge!(metric::CONNECTIONS_OPEN).increment(1.0);
    metrics::counter!(metric::CONNECTIONS_OPENED).increment(1);
    let send_timeout = state.settings.limits.send_timeout();
    let mut session = Session {
        state,
        user,
        link,
        acknowledging,
        socket,
        pending: Vec::new(),
        written: Vec::new(),
        unflushed: false,
        send_timeout,
        last_sent: None,
        last_seq: None,
        last_seen: Instant::now(),
        stale: false,
    };
    let closing = session.run().await;

    drop(attached); // detach before the close frame: a reconnect may come right after it
    metrics::gauge!(metric::CONNECTIONS_OPEN).decrement(1.0);
    metrics::counter!(metric::CONNECTIONS_CLOSED, "reason" => close_reason_label(closing.code)).increment(1);
    if closing == Closing::REPLACED {
        metrics::counter!(metric::CONNECTIONS_DISPLACED).increment(1);
    }
    tracing::debug!(user = %session.user, code = closing.code, reason = closing.reason, "session closed");
    // Always tried: it also flushes the reply to a client's own close (queued by tungstenite)
    // and tells a slow reader it was cut off; on a dead socket it fails at once.
    let _ = tokio::time::timeout(CLOSE_GRACE, session.socket.send(close_message(closing))).await;
}

fn close_reason_label(code: u16) -> &'static str {
    match code {
        1000 => "peer",
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
async fn reject(socket: &mut WebSocket, frame: String, closing: Closing) {
    let send = async {
        socket.send(Message::Text(frame.into())).await?;
        socket.send(close_message(closing)).await
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, send).await;
}

enum Waited<T> {
    Done(T),
    TimedOut,
    Kicked(u16),
}

/// Runs `fut` to completion unless it takes longer than `limit` or the session is kicked: a
/// socket blocked on a slow reader must not hold up a takeover or a shutdown. Polled once
/// before any timer is armed: the common case (a socket with room) costs no timer at all.
async fn bounded_unless_kicked<F: Future>(limit: Duration, fut: F, link: &Link) -> Waited<F::Output> {
    let mut fut = std::pin::pin!(fut);
    tokio::select! {
        biased;
        out = &mut fut => return Waited::Done(out),
        _ = std::future::ready(()) => {}
    }
    tokio::select! {
        waited = tokio::time::timeout(limit, fut) => match waited {
            Ok(out) => Waited::Done(out),
            Err(_) => Waited::TimedOut,
        },
        code = link.kicked() => Waited::Kicked(code),
    }
}

fn close_message(closing: Closing) -> Message {
    Message::Close(Some(CloseFrame { code: closing.code, reason: Utf8Bytes::from_static(closing.reason) }))
}

struct Session {
    state: AppState,
    user: UserId,
    link: Arc<Link>,
    acknowledging: bool,
    socket: WebSocket,
    /// Validated sends waiting to be stored (see `on_frames`).
    pending: Vec<PendingSend>,
    /// Inbox ids fed to the socket since the last flush.
    written: Vec<MsgId>,
    /// Frames were fed since the last flush.
    unflushed: bool,
    send_timeout: Duration,
    /// Highest inbox id written on this connection.
    last_sent: Option<MsgId>,
    /// Number of the last message known to be sent to the user (read before each inbox read,
    /// raised by each delivery): a live delivery must carry the next one, or a doorbell was
    /// missed. `None` until the first read; `Some(0)`: the user never got a message.
    last_seq: Option<u64>,
    last_seen: Instant,
    /// The last inbox read failed: live deliveries are held back (they could overtake what
    /// was not read) until a retry of the read succeeds.
    stale: bool,
}

/// How soon a failed inbox read is tried again.
const STALE_RETRY: Duration = Duration::from_millis(250);

impl Session {
    async fn run(&mut self) -> Closing {
        match Box::pin(self.resync()).await {
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
            let was_stale = self.stale;
            let mut reread = false;
            let step = tokio::select! {
                // Biased: a requested re-read must run before any later live delivery, or a
                // delivery could overtake one whose doorbell was missed.
                biased;
                code = &mut kicked => Err(Closing::from_kick(code)),
                frame = self.socket.recv() => match frame {
                    Some(Ok(message)) => {
                        self.last_seen = Instant::now();
                        // Boxed: its state (an engine call) would otherwise sit in every idle
                        // socket's task.
                        Box::pin(self.on_frames(message)).await
                    }
                    Some(Err(e)) => Err(Closing::from_read_error(e)),
                    None => Err(Closing::PEER_GONE),
                },
                _ = &mut resync => {
                    resync.set(link.resync_requested());
                    reread = true;
                    Box::pin(self.resync()).await.map(drop)
                }
                _ = &mut retry, if self.stale => {
                    reread = true;
                    Box::pin(self.resync()).await.map(drop)
                }
                delivery = link.next() => self.forward_live(delivery).await,
                _ = ping.tick() => {
                    if self.last_seen.elapsed() > idle_timeout {
                        Err(Closing::IDLE)
                    } else {
                        self.feed(Message::Ping(Default::default())).await
                    }
                }
            };
            let step = match step {
                Ok(()) => self.flush().await,
                Err(closing) => Err(closing),
            };
            // Armed when the session becomes stale and after each failed re-read; other traffic
            // must not keep pushing the retry away.
            if self.stale && (!was_stale || reread) {
                retry.as_mut().reset(tokio::time::Instant::now() + STALE_RETRY);
            }
            if let Err(closing) = step {
                return closing;
            }
        }
    }

    /// Re-reads the inbox after `last_sent`, then forwards what is still queued only if no
    /// doorbell was missed meanwhile (otherwise the next re-read gets it). A takeover announced
    /// while doorbells were being missed may have been missed too: the generation is checked.
    async fn resync(&mut self) -> Result<usize, Closing> {
        self.link.begin_resync();
        let state = match self.state.engine.resync_state(&self.user).await {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the inbox state; will retry");
                self.stale = true;
                return Ok(0);
            }
        };
        if let Some(newest) = state.generation {
            self.state.hub.takeover(&self.user, newest); // no-op unless newer than ours
        }
        let sent = match self.catch_up().await? {
            Some(sent) => sent,
            None => {
                self.stale = true;
                return Ok(0);
            }
        };
        self.stale = false;
        self.last_seq = Some(self.last_seq.unwrap_or(0).max(state.sequence));
        while let Some(delivery) = self.link.try_next() {
            if !self.link.is_lagged() {
                self.forward(delivery, Path::Live).await?;
            }
        }
        self.flush().await?;
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
            self.flush().await?;
            if !full {
                return Ok(Some(sent));
            }
        }
    }

    async fn forward(&mut self, delivery: Delivery, path: Path) -> Result<(), Closing> {
        if self.last_sent.is_some_and(|last| delivery.id <= last) {
            return Ok(()); // already sent on this connection
        }
        let skipped = self.last_seq.is_some_and(|last| delivery.seq > last + 1);
        if matches!(path, Path::Live) && delivery.seq > 0 && skipped {
            // A number was skipped: its doorbell never came (e.g. a cluster slot changed hands
            // and the subscription moved late). Re-read the inbox rather than overtake it.
            self.link.request_resync();
            return Ok(());
        }
        self.last_seq = Some(self.last_seq.unwrap_or(0).max(delivery.seq));
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
        self.written.push(delivery.id);
        self.feed(Message::Text(text)).await
    }

    /// A live delivery, and whatever else is queued behind it (one flush for all of them).
    async fn forward_live(&mut self, first: Delivery) -> Result<(), Closing> {
        let mut next = Some(first);
        let mut count = 0;
        while let Some(delivery) = next {
            if let Some(code) = self.link.is_kicked() {
                return Err(Closing::from_kick(code));
            }
            // A missed doorbell (lagged) may sit before this delivery: leave it to the re-read
            // that is already requested, or it would overtake the missed one.
            if !self.stale && !self.link.is_lagged() {
                self.forward(delivery, Path::Live).await?;
            }
            count += 1;
            next = if count < WRITE_BATCH { self.link.try_next() } else { None };
        }
        Ok(())
    }

    /// Hands a frame to the socket's buffer (written out by `flush`, or earlier when full).
    async fn feed(&mut self, message: Message) -> Result<(), Closing> {
        self.unflushed = true;
        let link = self.link.clone();
        match bounded_unless_kicked(self.send_timeout, self.socket.feed(message), &link).await {
            Waited::Done(Ok(())) => Ok(()),
            Waited::Done(Err(_)) => Err(Closing::PEER_GONE),
            Waited::TimedOut => Err(slow_consumer()),
            Waited::Kicked(code) => Err(Closing::from_kick(code)),
        }
    }

    /// Writes out what was fed. A spec client cannot acknowledge, so what was written to its
    /// socket leaves the inbox now; if the write fails, it stays and comes again next time.
    async fn flush(&mut self) -> Result<(), Closing> {
        if !self.unflushed {
            return Ok(());
        }
        let link = self.link.clone();
        match bounded_unless_kicked(self.send_timeout, self.socket.flush(), &link).await {
            Waited::Done(Ok(())) => self.unflushed = false,
            Waited::Done(Err(_)) => return Err(Closing::PEER_GONE),
            Waited::TimedOut => return Err(slow_consumer()),
            Waited::Kicked(code) => return Err(Closing::from_kick(code)),
        }
        if self.written.is_empty() {
            return Ok(());
        }
        // Inbox ids carry the acceptance time (ms), so latency needs no extra bookkeeping.
        let now = crate::engine::unix_ms();
        let latency = &telemetry::hot().delivery_latency;
        for id in &self.written {
            latency.record(now.saturating_sub(id.ms) as f64 / 1000.0);
        }
        if self.acknowledging {
            self.written.clear();
        } else {
            self.state.engine.forget_delivered(&self.user, std::mem::take(&mut self.written));
        }
        Ok(())
    }

    async fn on_message(&mut self, message: Message) -> Result<(), Closing> {
        match message {
            Message::Text(text) => self.on_text(text.as_str()).await,
            Message::Binary(_) => {
                self.store_pending().await?; // answers stay in the order of the frames
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

    /// A frame from the client, and every further frame already received (none is waited
    /// for): their sends are stored together, so a busy socket costs one round trip per batch
    /// rather than per message, while a quiet one still sends each message at once.
    async fn on_frames(&mut self, first: Message) -> Result<(), Closing> {
        let mut message = first;
        // Every frame counts, not only sends: a client flooding acks or bad frames must not
        // keep this loop from kicks, pings and deliveries.
        for _ in 1..SEND_BATCH {
            if let Err(closing) = self.on_message(message).await {
                // A send followed by a Close (or a broken frame) is still stored.
                let _ = self.store_pending().await;
                return Err(closing);
            }
            match self.socket.recv().now_or_never() {
                Some(Some(Ok(next))) => message = next,
                Some(Some(Err(e))) => {
                    let _ = self.store_pending().await;
                    return Err(Closing::from_read_error(e));
                }
                Some(None) => {
                    let _ = self.store_pending().await;
                    return Err(Closing::PEER_GONE);
                }
                None => return self.store_pending().await,
            }
        }
        if let Err(closing) = self.on_message(message).await {
            let _ = self.store_pending().await;
            return Err(closing);
        }
        self.store_pending().await
    }

    async fn on_text(&mut self, text: &str) -> Result<(), Closing> {
        let frame: Inbound = match serde_json::from_str(text) {
            Ok(frame) => frame,
            Err(e) => {
                let (code, message) = describe_parse_error(text, &e);
                self.store_pending().await?; // answers stay in the order of the frames
                return self.error(code, &message, None).await;
            }
        };
        // Only acknowledging clients get receipts, so only theirs carry a `ref` back.
        let reference = frame.reference.as_deref().filter(|_| self.acknowledging);
        if let Some(ack) = frame.ack {
            self.store_pending().await?;
            return self.on_ack(ack, reference).await;
        }
        match self.validate_send(&frame) {
            Ok((to, envelope)) => {
                self.pending.push(PendingSend { to, envelope, reference: reference.map(str::to_owned) });
                Ok(())
            }
            Err((code, message, label)) => {
                if let Some(label) = label {
                    metrics::counter!(metric::MESSAGES_REJECTED, "reason" => label).increment(1);
                }
                self.store_pending().await?; // answers stay in the order of the frames
                self.error(code, &message, reference).await
            }
        }
    }

    /// A send frame's recipient and envelope, or why it is refused (error code, message, and
    /// the rejection label for metrics, if it counts as a rejected message).
    fn validate_send(&self, frame: &Inbound<'_>) -> Result<(UserId, bytes::Bytes), Refusal> {
        let (Some(from), Some(to), Some(payload)) = (&frame.from, &frame.to, &frame.payload) else {
            let missing = ["from", "to", "payload"]
                .into_iter()
                .zip([frame.from.is_none(), frame.to.is_none(), frame.payload.is_none()])
                .filter_map(|(name, absent)| absent.then_some(name))
                .collect::<Vec<_>>()
                .join("`, `");
            return Err((ErrorCode::InvalidFrame, format!("missing field `{missing}`"), None));
        };
        if from.as_ref() != self.user.as_str() {
            return Err((ErrorCode::Forbidden, "`from` must be your own user id".into(), Some("forbidden")));
        }
        let Some(payload) = RawPayload::new(payload) else {
            return Err((ErrorCode::InvalidFrame, "field `payload` must be a string".into(), None));
        };
        let (max, len) = (self.state.settings.limits.max_payload_bytes, payload.decoded_len());
        if len > max {
            return Err((ErrorCode::PayloadTooLarge, format!("payload exceeds {max} bytes"), Some("too_large")));
        }
        if len == 0 {
            return Err((ErrorCode::InvalidFrame, "payload is empty".into(), None));
        }
        let Some(to) = UserId::parse(to) else {
            return Err((ErrorCode::UserNotFound, "user not found".into(), Some("user_not_found")));
        };
        let envelope = envelope(&self.user, &to, payload).into();
        Ok((to, envelope))
    }

    /// Stores the queued sends, in order, in one engine call (one Redis round trip), and
    /// answers each with its receipt or error.
    async fn store_pending(&mut self) -> Result<(), Closing> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        let sends: Vec<(UserId, bytes::Bytes)> = batch.iter().map(|s| (s.to.clone(), s.envelope.clone())).collect();
        let results = self.state.engine.send_many(&sends).await;
        for (send, result) in batch.iter().zip(results) {
            self.report_send(send.reference.as_deref(), result).await?;
        }
        Ok(())
    }

    async fn report_send(&mut self, reference: Option<&str>, result: Result<MsgId, SendError>) -> Result<(), Closing> {
        match result {
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
        self.feed(Message::Text(frame.into())).await
    }

    async fn error(&mut self, code: ErrorCode, message: &str, reference: Option<&str>) -> Result<(), Closing> {
        self.feed(Message::Text(error_frame(code, message, reference).into())).await
    }
}

/// Why a send is refused: error code, message, and its label among rejected messages.
type Refusal = (ErrorCode, String, Option<&'static str>);

/// A validated send, waiting to be stored with the others of its batch.
struct PendingSend {
    to: UserId,
    envelope: bytes::Bytes,
    reference: Option<String>,
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

fn slow_consumer() -> Closing {
    metrics::counter!(metric::SLOW_CONSUMERS).increment(1);
    Closing::SLOW
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
