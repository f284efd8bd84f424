//! The last step of a session that the server ends (displaced by a newer connection, drained,
//! idle, cut off as a slow reader): frames the client already wrote are read and stored, or
//! answered with an error, before the close frame. A session that stops reading at the kick
//! would otherwise drop sends the client believes were taken: neither stored nor answered,
//! and, with unread bytes in the kernel's buffer, the close becomes a TCP reset that loses the
//! close frame too.

use std::time::Duration;

use axum::extract::ws::Message;

use super::Session;
use super::closing::Closing;

/// Frames read after the end at most: what the client wrote before it, not a new session.
const MAX_FRAMES: usize = 1024;
/// Sends stored per engine call while answering (as `requests` batches them).
const BATCH: usize = 64;
/// No frame for this long after the end: the client wrote nothing more before it.
const QUIET: Duration = Duration::from_millis(50);
/// How long reading and answering may wait for room in the socket; the close frame has its own grace.
const ANSWER_GRACE: Duration = Duration::from_secs(1);

impl Session {
    /// Reads the frames already received (waiting only for a short quiet spell), stores their sends and
    /// answers each frame as a live session would. Answers are best effort (a slow reader's
    /// socket has no room); storing is not: every send read is stored or refused.
    pub(super) async fn answer_what_was_read(&mut self, closing: Closing) {
        if closing.peer_ended() {
            return; // the client closed or broke the stream: there is nothing after it to read
        }
        let deadline = tokio::time::Instant::now() + ANSWER_GRACE;
        self.ending = Some(deadline);
        for read in 1..=MAX_FRAMES {
            // Not `now_or_never`: the runtime learns that bytes arrived only when its reactor
            // turns, so a frame already in the kernel's buffer can look not-yet-received. A
            // short quiet spell (or the deadline) says the client wrote nothing more.
            let quiet = deadline.min(tokio::time::Instant::now() + QUIET);
            let message = match tokio::time::timeout_at(quiet, self.socket.recv()).await {
                Ok(Some(Ok(message))) => message,
                _ => break, // quiet, or the stream ended
            };
            if matches!(message, Message::Close(_)) {
                break;
            }
            // Failures here are answers that could not be written; the sends are stored.
            let _ = self.on_message(message).await;
            if read % BATCH == 0 {
                let _ = self.store_pending().await;
            }
        }
        let _ = self.store_pending().await;
    }
}
