//! One WebSocket's life, from the upgrade to the close frame.
//!
//! One task per socket: it reads client frames, talks to the engine, and writes to the socket
//! itself; frames are buffered and flushed once per step, so a burst of deliveries leaves in
//! one write. What waits for a socket is bounded: the hub's queue (frames and bytes; past it a
//! catch-up from the inbox), and the socket's own buffers. A write that cannot complete within
//! `limits.send_timeout_ms` closes the socket with 4429; its messages stay in the inbox.
//!
//! The files: `attachment` (the hub and engine registration, one guard), `socket` (the loop
//! that moves bytes), `cursor` (ordering and de-duplication, pure), `requests` (what a client
//! frame asks: sends, acks, and the replies; the frame itself is parsed by
//! `protocol::ClientFrame`), `closing` (close codes, reasons and their metric labels), `ending`
//! (what was read before the end is stored or answered before the close frame).

mod attachment;
mod closing;
mod cursor;
mod ending;
mod rejected;
mod requests;
mod socket;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use futures_util::SinkExt;
use futures_util::future::Either;
use ipnet::IpNet;
use tracing::Instrument;

use crate::auth::Refusal;
use crate::engine::Written;
use crate::hub::Mailbox;
use crate::limits::lease::StorageLease;
use crate::limits::{self, Refused, SendBudget};
use crate::protocol::{ErrorCode, SUBPROTOCOL_V1, UserId, error_frame, rate_limited_frame};
use crate::server::connections::ConnectionSlot;
use crate::server::state::AppState;
use crate::telemetry::metric;

pub use self::attachment::Attached;
pub use self::rejected::RejectReason;

use self::closing::Closing;
use self::cursor::Cursor;

/// How long a closing socket may take to get its close frame out.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The outcome of checking a connecting user, decided before the upgrade completes, so that
/// when a client sees its socket open it already is the user's live connection (and a
/// connection opened after it is newer, on any replica).
pub enum Admission {
    Accepted(Attached),
    UnknownUser,
    Unavailable,
    /// No valid token for a protected user (or in `required` mode): refused before the
    /// session registers anywhere, so the user's live connection is not displaced.
    Unauthorized(Refusal),
    /// Authenticated, but over the user's socket budget (or the budget could not be read):
    /// answered with 429 (or 503) before the upgrade.
    Limited(Refused),
}

/// Checks the user and the bearer `token` (already taken from the request; `Err` if what was
/// shown is not a bearer token at all), then makes the session the user's live connection.
pub async fn admit(state: &AppState, user_id: &str, token: Result<Option<String>, Refusal>) -> Admission {
    let Some(user) = UserId::parse(user_id) else { return Admission::UnknownUser };
    // The key and the protection in one round trip: a token check adds no storage call.
    let record = match state.engine.user_record(&user).await {
        Ok(Some(record)) => record,
        Ok(None) => return Admission::UnknownUser,
        Err(e) => {
            tracing::warn!(user = %user, error = %e, "cannot check user on connect");
            return Admission::Unavailable;
        }
    };
    let checked = token.map_err(Refusal::count).and_then(|token| state.auth.admit(token.as_deref(), &user, &record));
    if let Err(refusal) = checked {
        tracing::info!(user = %user, reason = refusal.as_str(), "socket refused: not authenticated");
        return Admission::Unauthorized(refusal);
    }
    // Only now, with the right to act as the user shown, does the open cost the user's budget.
    if let Err(refused) = limits::check_socket_user(&state.engine, &state.settings.rate, &user).await {
        return Admission::Limited(refused);
    }
    match Attached::attach(state, &user).await {
        Ok(attached) => {
            // An admitted socket is a use: the id is kept (`limits.inactive_user_ttl_secs`), no
            // longer an unused registration. At most one write a day (`engine::Upkeep`); a
            // failure is mended by the next socket.
            if let Err(e) = state.engine.mark_used(&user, &record).await {
                tracing::warn!(user = %user, error = %e, "cannot renew the user's record");
            }
            Admission::Accepted(attached)
        }
        Err(e) => {
            tracing::warn!(user = %user, error = %e, "cannot attach session");
            Admission::Unavailable
        }
    }
}

/// Serves one upgraded socket until it closes; `slot` (its place under the connection caps) is
/// held until then.
///
/// Not an `async fn`: an async fn keeps its arguments in its own state, and the session moves
/// the socket into itself, so every idle socket's task would carry the WebSocket twice. Built
/// here instead, the session is the only copy the returned future holds.
pub fn serve(
    mut socket: WebSocket,
    state: AppState,
    admission: Admission,
    slot: Option<ConnectionSlot>,
    prefix: IpNet,
) -> impl Future<Output = ()> + Send + 'static {
    let (frame, closing) = match admission {
        Admission::Accepted(attached) => {
            let session = Session::new(socket, state, attached.mailbox().clone(), prefix);
            return Either::Left(session.serve(attached, slot));
        }
        Admission::UnknownUser => (error_frame(ErrorCode::UserNotFound, "user not found", None), Closing::UserNotFound),
        Admission::Unavailable => {
            (error_frame(ErrorCode::Unavailable, "service unavailable, retry later", None), Closing::Unavailable)
        }
        Admission::Unauthorized(refusal) => {
            (error_frame(ErrorCode::Unauthorized, refusal.message(), None), Closing::Unauthorized)
        }
        // `open_socket` answers these with 429 before upgrading; were one upgraded, the client
        // still learns why and when to come back.
        Admission::Limited(Refused::Limited(limited)) => (
            rate_limited_frame("too many socket opens; retry later", None, limited.retry_after_ms()),
            Closing::Unavailable,
        ),
        Admission::Limited(Refused::Unavailable(_)) => {
            (error_frame(ErrorCode::Unavailable, "service unavailable, retry later", None), Closing::Unavailable)
        }
    };
    // Boxed, as rare: the type's size is the larger of the two, and a session's task has it.
    Either::Right(Box::pin(async move {
        reject(&mut socket, frame, closing).await;
        drop(slot);
    }))
}

impl Session {
    fn new(socket: WebSocket, state: AppState, mailbox: Arc<Mailbox>, prefix: IpNet) -> Session {
        let acknowledging = socket.protocol().is_some_and(|p| p.as_bytes() == SUBPROTOCOL_V1.as_bytes());
        let send_timeout = state.settings.limits.send_timeout();
        Session {
            state,
            user: mailbox.user.clone(),
            mailbox,
            acknowledging,
            socket,
            pending: Vec::new(),
            written: Vec::new(),
            unflushed: false,
            send_timeout,
            cursor: Cursor::default(),
            last_seen: Instant::now(),
            budget: SendBudget::default(),
            contacts: std::collections::HashSet::new(),
            prefix,
            storage: StorageLease::default(),
            ending: None,
        }
    }

    /// Not an `async fn`, like the [`serve`] above: an async fn's state keeps its by-value arguments and
    /// the locals it moves them into, so the session would be in every idle task twice. The
    /// block below captures the session once and uses it in place.
    #[allow(clippy::manual_async_fn, reason = "as an async fn, the session would be in its state twice")]
    fn serve(mut self, attached: Attached, slot: Option<ConnectionSlot>) -> impl Future<Output = ()> + Send + 'static {
        async move {
            // Every line logged while serving says whose socket it is.
            let span = tracing::info_span!("session", user = %self.user, conn = self.mailbox.id);
            metrics::gauge!(metric::CONNECTIONS_OPEN).increment(1.0);
            metrics::counter!(metric::CONNECTIONS_OPENED).increment(1);
            let closing = self.run().instrument(span.clone()).await;

            drop(attached); // detach before the close frame: a reconnect may come right after it
            // What the client wrote before the end is stored or answered before the close frame.
            // Boxed: its state (engine calls) would otherwise be reserved in every idle socket's task.
            Box::pin(self.answer_what_was_read(closing)).instrument(span.clone()).await;
            let lease = std::mem::take(&mut self.storage);
            let shares = &self.state.settings.limits.storage;
            Box::pin(lease.give_back(&self.state.engine, shares, self.prefix, &self.user)).await;
            metrics::gauge!(metric::CONNECTIONS_OPEN).decrement(1.0);
            metrics::counter!(metric::CONNECTIONS_CLOSED, "reason" => closing.label()).increment(1);
            if closing == Closing::Replaced {
                metrics::counter!(metric::CONNECTIONS_DISPLACED).increment(1);
            }
            tracing::debug!(parent: &span, code = closing.code().as_u16(), reason = closing.reason(), "session closed");
            // Tells a slow reader it was cut off, a replaced socket why, and so on; on a dead socket it
            // fails at once. After the client's own close, tungstenite has queued the echo of it and
            // refuses a second close frame: that echo must still be flushed, or the client sees the
            // TCP connection drop without a close handshake (RFC 6455 §5.5.1; browsers report 1006).
            let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, async {
                if self.socket.send(closing.message()).await.is_err() {
                    let _ = self.socket.flush().await;
                }
            }))
            .await;
            drop(slot); // the socket counted against the connection caps until now
        }
    }
}

/// A socket opened over a connection cap: closed at once with 1013 (try again later).
pub async fn refuse_over_capacity(mut socket: WebSocket) {
    let frame = error_frame(ErrorCode::Unavailable, "server is at capacity; retry later", None);
    reject(&mut socket, frame, Closing::Unavailable).await
}

/// Refuses a socket: one error frame, then a close frame, then the closing handshake (RFC 6455
/// §7.1.1): what the client wrote meanwhile is read and dropped unanswered until its close
/// frame (the close says the socket was refused before anything on it was accepted). Dropping
/// the socket with unread data instead would reset the connection, and the client's kernel would
/// discard the error and close frames before the client read them.
async fn reject(socket: &mut WebSocket, frame: String, closing: Closing) {
    let refuse = async {
        socket.send(Message::Text(frame.into())).await?;
        socket.send(closing.message()).await?;
        while let Some(message) = socket.recv().await {
            if let Message::Close(_) = message? {
                break;
            }
        }
        Ok::<(), axum::Error>(())
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, refuse).await;
}

/// Registers the close-reason and rejection counters at 0, so dashboards and alerts see every
/// series.
pub(crate) fn register_metrics() {
    for closing in Closing::ALL {
        metrics::counter!(metric::CONNECTIONS_CLOSED, "reason" => closing.label()).increment(0);
    }
    for reason in RejectReason::ALL {
        metrics::counter!(metric::MESSAGES_REJECTED, "reason" => reason.as_str()).increment(0);
    }
}

/// A validated send, waiting to be stored with the others of its batch.
struct PendingSend {
    to: UserId,
    envelope: bytes::Bytes,
    reference: Option<String>,
}

/// One admitted socket. Its methods live in the files that use them: `socket` (the loop,
/// reading the inbox, writing) and `requests` (answering client frames).
struct Session {
    state: AppState,
    user: UserId,
    mailbox: Arc<Mailbox>,
    acknowledging: bool,
    socket: WebSocket,
    /// Validated sends waiting to be stored together (see `requests`).
    pending: Vec<PendingSend>,
    /// Messages fed to the socket since the last flush.
    written: Vec<Written>,
    /// Frames were fed since the last flush.
    unflushed: bool,
    send_timeout: Duration,
    /// What was sent, and whether live deliveries may go out (see `cursor`).
    cursor: Cursor,
    /// When the peer last sent anything (pings check it against the idle timeout).
    last_seen: Instant,
    /// The slice of the user's send budget this socket holds (see `crate::limits`).
    budget: SendBudget,
    /// Whom this socket has already made the user's contacts (each is told to the engine
    /// once per socket; bounded by `requests::CONTACTS_REMEMBERED`).
    contacts: std::collections::HashSet<UserId>,
    /// The client's address prefix: what its messages are charged to (`limits::storage`).
    prefix: IpNet,
    /// Storage charged ahead to the prefix and the user (`limits::storage`), given back at the end.
    storage: StorageLease,
    /// Set once the session has ended: writes no longer stop at a kick, only at this deadline
    /// (see `ending`).
    ending: Option<tokio::time::Instant>,
}
