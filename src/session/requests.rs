//! What a client frame asks, and the answers: sends are validated, batched and stored in one
//! engine call; acknowledgements remove messages; every refusal is an error frame, in the
//! order of the frames that caused it.

use axum::extract::ws::Message;
use futures_util::FutureExt;

use super::closing::Closing;
use super::rejected::RejectReason;
use super::{PendingSend, Session};
use crate::engine::SendError;
use crate::limits::Refused;
use crate::limits::lease::NotHeld;
use crate::protocol::{
    AckIds, ClientFrame, ErrorCode, MsgId, RawPayload, SendFrame, UserId, envelope, error_frame, rate_limited_frame,
    receipt_frame,
};
use crate::telemetry::{self, metric};

/// Sends stored in one engine call at most.
const SEND_BATCH: usize = 64;

/// When a sender over its share of the store is told to retry.
const STORAGE_RETRY_MS: u64 = 5_000;

/// How many people a socket remembers having made contacts (then it forgets them all and
/// tells the engine again: adding a contact twice changes nothing).
const CONTACTS_REMEMBERED: usize = 1024;

/// Why a send is rejected: error code, message, and its label among rejected messages (none
/// for a malformed frame, which is not counted as a message).
type SendRejected = (ErrorCode, String, Option<RejectReason>);

impl Session {
    /// A frame from the client, and every further frame already received (none is waited
    /// for): their sends are stored together, so a busy socket costs one round trip per batch
    /// rather than per message, while a quiet one still sends each message at once.
    pub(super) async fn on_frames(&mut self, first: Message) -> Result<(), Closing> {
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
                    return Err(Closing::PeerGone);
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

    pub(super) async fn on_message(&mut self, message: Message) -> Result<(), Closing> {
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
            Message::Close(_) => Err(Closing::PeerGone),
            Message::Ping(_) | Message::Pong(_) => Ok(()),
        }
    }

    async fn on_text(&mut self, text: &str) -> Result<(), Closing> {
        // Only acknowledging clients get receipts, so only theirs carry a `ref` back.
        let acknowledging = self.acknowledging;
        let frame = match ClientFrame::parse(text) {
            Ok(frame) => frame,
            Err(bad) => {
                self.store_pending().await?; // answers stay in the order of the frames
                let reference = bad.reference.as_deref().filter(|_| acknowledging);
                return self.error(bad.code, &bad.message, reference).await;
            }
        };
        match frame {
            ClientFrame::Ack(ack) => {
                self.store_pending().await?;
                self.on_ack(&ack.ids, ack.reference.as_deref().filter(|_| acknowledging)).await
            }
            ClientFrame::Send(send) => {
                let reference = send.reference.as_deref().filter(|_| acknowledging);
                match self.validate_send(&send) {
                    Ok((to, envelope)) => {
                        let stored = envelope.len() as u64;
                        let rates = &self.state.settings.rate;
                        match self.budget.spend(&self.state.engine, rates, &self.user, stored).await {
                            Ok(()) => {
                                let shares = &self.state.settings.limits.storage;
                                let (engine, prefix) = (&self.state.engine, self.prefix);
                                if let Err(not_held) =
                                    self.storage.spend(engine, shares, prefix, &self.user, stored).await
                                {
                                    self.store_pending().await?; // answers stay in the order of the frames
                                    return self.not_held(not_held, reference).await;
                                }
                                let reference = reference.map(str::to_owned);
                                self.pending.push(PendingSend { to, envelope, reference });
                                Ok(())
                            }
                            Err(refused) => {
                                self.store_pending().await?; // answers stay in the order of the frames
                                self.refused(refused, reference).await
                            }
                        }
                    }
                    Err((code, message, reason)) => {
                        if let Some(reason) = reason {
                            reason.count();
                        }
                        self.store_pending().await?; // answers stay in the order of the frames
                        self.error(code, &message, reference).await
                    }
                }
            }
        }
    }

    /// A send's recipient and envelope, or why it is refused.
    fn validate_send(&self, send: &SendFrame<'_>) -> Result<(UserId, bytes::Bytes), SendRejected> {
        if send.from.as_ref() != self.user.as_str() {
            let message = "`from` must be your own user id".into();
            return Err((ErrorCode::Forbidden, message, Some(RejectReason::Forbidden)));
        }
        let Some(payload) = RawPayload::new(send.payload) else {
            return Err((ErrorCode::InvalidFrame, "field `payload` must be a string".into(), None));
        };
        if !payload.is_decodable() {
            let message =
                "field `payload` is not a valid JSON string: an escape decodes to no character (a lone surrogate?)";
            return Err((ErrorCode::InvalidFrame, message.into(), None));
        }
        let (max, len) = (self.state.settings.limits.max_payload_bytes, payload.stored_len());
        if len > max {
            let message = format!("payload exceeds {max} bytes");
            return Err((ErrorCode::PayloadTooLarge, message, Some(RejectReason::TooLarge)));
        }
        if len == 0 {
            return Err((ErrorCode::InvalidFrame, "payload is empty".into(), None));
        }
        let Some(to) = UserId::parse(&send.to) else {
            return Err((ErrorCode::UserNotFound, "user not found".into(), Some(RejectReason::UserNotFound)));
        };
        let envelope = envelope(&self.user, &to, payload).into();
        Ok((to, envelope))
    }

    /// Stores the queued sends, in order, in one engine call (one Redis round trip), and
    /// answers each with its receipt or error.
    pub(super) async fn store_pending(&mut self) -> Result<(), Closing> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        self.make_contacts(&batch).await;
        let sends: Vec<(UserId, bytes::Bytes)> = batch.iter().map(|s| (s.to.clone(), s.envelope.clone())).collect();
        let results = self.state.engine.send_many(&self.user, self.prefix, sends).await;
        for (send, result) in batch.iter().zip(&results) {
            if result.is_err() {
                self.storage.refund(send.envelope.len() as u64); // not stored: not held
            }
        }
        for (send, result) in batch.iter().zip(results) {
            self.report_send(send.reference.as_deref(), result).await?;
        }
        Ok(())
    }

    /// Whom the user writes to becomes a contact: their messages back are not a stranger's
    /// (`limits.stranger_pool`). Told to the engine once per socket and person, before the
    /// message is stored, so a reply never finds the writer a stranger. A failure is logged
    /// and tried again at the next message to them.
    async fn make_contacts(&mut self, batch: &[PendingSend]) {
        if self.state.settings.limits.stranger_pool == 0 {
            return;
        }
        let mut new: Vec<UserId> = Vec::new();
        for send in batch {
            if send.to != self.user && !self.contacts.contains(&send.to) && !new.contains(&send.to) {
                new.push(send.to.clone());
            }
        }
        if new.is_empty() {
            return;
        }
        match self.state.engine.add_contacts(&self.user, &new).await {
            Ok(()) => {
                if self.contacts.len() + new.len() > CONTACTS_REMEMBERED {
                    self.contacts.clear();
                }
                self.contacts.extend(new);
            }
            Err(e) => tracing::warn!(error = %e, "cannot add contacts; retried at the next message"),
        }
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
                let (code, message, reason) = match &e {
                    SendError::UserNotFound => (ErrorCode::UserNotFound, "user not found", RejectReason::UserNotFound),
                    SendError::InboxFull => {
                        (ErrorCode::InboxFull, "recipient's inbox is full; retry later", RejectReason::InboxFull)
                    }
                    // The same code (the recipient cannot take more from this sender), its own
                    // words and metric label: it is this sender's share that is used up.
                    SendError::OverShare => (
                        ErrorCode::InboxFull,
                        "you have too many messages waiting for this recipient; retry once they read them",
                        RejectReason::InboxShare,
                    ),
                    // Its own words and label: the recipient takes messages from people it wrote
                    // to, just not from more strangers now.
                    SendError::StrangersFull => (
                        ErrorCode::InboxFull,
                        "the recipient's inbox has no room for messages from people they have not written to; retry later",
                        RejectReason::Strangers,
                    ),
                    // Nothing stored: the sender (or its network) holds its share of the store
                    // until its messages are read; a retry later may pass.
                    SendError::OverStorage => return self.not_held(NotHeld::OverShare, reference).await,
                    SendError::Unavailable(err) => {
                        tracing::warn!(error = %err, "send failed");
                        (ErrorCode::Unavailable, "service unavailable, retry later", RejectReason::Unavailable)
                    }
                };
                reason.count();
                self.error(code, message, reference).await
            }
        }
    }

    async fn on_ack(&mut self, ack: &AckIds, reference: Option<&str>) -> Result<(), Closing> {
        if !self.acknowledging {
            return self
                .error(ErrorCode::InvalidFrame, "acknowledgements need the enigma.v1 subprotocol", reference)
                .await;
        }
        let Some(ids) = ack.msg_ids() else {
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
        self.feed(Message::Text(receipt_frame(reference, id).into())).await
    }

    /// A send the rate limit refused (nothing stored), or whose check could not be made.
    async fn refused(&mut self, refused: Refused, reference: Option<&str>) -> Result<(), Closing> {
        match refused {
            Refused::Limited(limited) => {
                RejectReason::RateLimited.count();
                let message = "sending too fast; retry after retry_after_ms";
                let frame = rate_limited_frame(message, reference, limited.retry_after_ms());
                self.feed(Message::Text(frame.into())).await
            }
            Refused::Unavailable(e) => {
                tracing::warn!(error = %e, "send budget check failed");
                RejectReason::Unavailable.count();
                self.error(ErrorCode::Unavailable, "service unavailable, retry later", reference).await
            }
        }
    }

    /// A send its sender (or its network) could not be charged for: nothing stored.
    async fn not_held(&mut self, not_held: NotHeld, reference: Option<&str>) -> Result<(), Closing> {
        match not_held {
            NotHeld::OverShare => {
                RejectReason::Storage.count();
                let message = "you (or your network) have too much waiting on this server; retry once it is read";
                let frame = rate_limited_frame(message, reference, STORAGE_RETRY_MS);
                self.feed(Message::Text(frame.into())).await
            }
            NotHeld::Unavailable(e) => {
                tracing::warn!(error = %e, "storage charge failed");
                RejectReason::Unavailable.count();
                self.error(ErrorCode::Unavailable, "service unavailable, retry later", reference).await
            }
        }
    }

    async fn error(&mut self, code: ErrorCode, message: &str, reference: Option<&str>) -> Result<(), Closing> {
        self.feed(Message::Text(error_frame(code, message, reference).into())).await
    }
}
