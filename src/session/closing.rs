//! How a session ends: the close frame's code and reason, and the label the closed connection
//! is counted under. The label vocabulary is one enum so that `session::register_metrics` and
//! the counting share one list; the strings are what dashboards and alerts select on.

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};

use crate::hub::Kick;
use crate::protocol::close;
use crate::telemetry::metric;

/// Why a session ends, as the close frame will say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Closing {
    pub(super) code: u16,
    pub(super) reason: &'static str,
}

impl Closing {
    pub(super) const PEER_GONE: Closing = Closing { code: close::NORMAL, reason: "" };
    pub(super) const SLOW: Closing =
        Closing { code: close::SLOW_CONSUMER, reason: "slow consumer: outbound queue full" };
    pub(super) const SHUTDOWN: Closing = Closing { code: close::GOING_AWAY, reason: "server shutting down; reconnect" };
    pub(super) const REPLACED: Closing = Closing { code: close::REPLACED, reason: "replaced by a newer connection" };
    pub(super) const IDLE: Closing = Closing { code: close::IDLE_TIMEOUT, reason: "idle timeout: no pong received" };
    pub(super) const UNAVAILABLE: Closing =
        Closing { code: close::TRY_AGAIN_LATER, reason: "storage unavailable; retry later" };
    pub(super) const USER_NOT_FOUND: Closing = Closing { code: close::USER_NOT_FOUND, reason: "user not found" };
    pub(super) const UNAUTHORIZED: Closing = Closing { code: close::UNAUTHORIZED, reason: "unauthorized" };

    pub(super) fn from_read_error(error: axum::Error) -> Closing {
        match error.into_inner().downcast::<tungstenite::Error>().map(|e| *e) {
            Ok(tungstenite::Error::Capacity(_)) => {
                Closing { code: close::MESSAGE_TOO_BIG, reason: "frame exceeds the size limit" }
            }
            Ok(tungstenite::Error::Protocol(_)) => Closing { code: close::PROTOCOL_ERROR, reason: "protocol error" },
            // RFC 6455 §8.1: a text frame that is not UTF-8 fails the connection with 1007.
            Ok(tungstenite::Error::Utf8(_)) => {
                Closing { code: close::INVALID_PAYLOAD, reason: "text frame is not valid UTF-8" }
            }
            _ => Closing::PEER_GONE,
        }
    }

    pub(super) fn kicked(kick: Kick) -> Closing {
        match kick {
            Kick::Replaced => Closing::REPLACED,
            Kick::Shutdown => Closing::SHUTDOWN,
        }
    }

    /// The client does not read fast enough; counted where it is decided.
    pub(super) fn slow_consumer() -> Closing {
        metrics::counter!(metric::SLOW_CONSUMERS).increment(1);
        Closing::SLOW
    }

    /// The client ended the stream itself (its close frame, a broken or oversized frame, a
    /// dropped connection): nothing after it is read.
    pub(super) fn peer_ended(self) -> bool {
        !matches!(self.code, close::SLOW_CONSUMER | close::GOING_AWAY | close::REPLACED | close::IDLE_TIMEOUT)
    }

    pub(super) fn label(self) -> CloseReason {
        CloseReason::from_code(self.code)
    }

    pub(super) fn message(self) -> Message {
        Message::Close(Some(CloseFrame { code: self.code, reason: Utf8Bytes::from_static(self.reason) }))
    }
}

/// The `reason` label of `enigma_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Peer,
    TooBig,
    Shutdown,
    Replaced,
    SlowConsumer,
    Idle,
    Unavailable,
    Other,
}

impl CloseReason {
    pub const ALL: [CloseReason; 8] = [
        CloseReason::Peer,
        CloseReason::TooBig,
        CloseReason::Shutdown,
        CloseReason::Replaced,
        CloseReason::SlowConsumer,
        CloseReason::Idle,
        CloseReason::Unavailable,
        CloseReason::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Peer => "peer",
            CloseReason::TooBig => "too_big",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Replaced => "replaced",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Idle => "idle",
            CloseReason::Unavailable => "unavailable",
            CloseReason::Other => "other",
        }
    }

    fn from_code(code: u16) -> CloseReason {
        match code {
            close::NORMAL => CloseReason::Peer,
            close::MESSAGE_TOO_BIG => CloseReason::TooBig,
            close::GOING_AWAY => CloseReason::Shutdown,
            close::REPLACED => CloseReason::Replaced,
            close::SLOW_CONSUMER => CloseReason::SlowConsumer,
            close::IDLE_TIMEOUT => CloseReason::Idle,
            close::TRY_AGAIN_LATER => CloseReason::Unavailable,
            _ => CloseReason::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_way_to_close_has_its_label() {
        let labels = [
            (Closing::PEER_GONE, "peer"),
            (Closing::SLOW, "slow_consumer"),
            (Closing::SHUTDOWN, "shutdown"),
            (Closing::REPLACED, "replaced"),
            (Closing::IDLE, "idle"),
            (Closing::UNAVAILABLE, "unavailable"),
            (Closing { code: close::MESSAGE_TOO_BIG, reason: "" }, "too_big"),
            (Closing { code: close::PROTOCOL_ERROR, reason: "" }, "other"),
        ];
        for (closing, label) in labels {
            assert_eq!(closing.label().as_str(), label, "{closing:?}");
            assert!(CloseReason::ALL.contains(&closing.label()));
        }
    }

    #[test]
    fn kicks_close_as_replaced_or_shutdown() {
        assert_eq!(Closing::kicked(Kick::Replaced), Closing::REPLACED);
        assert_eq!(Closing::kicked(Kick::Shutdown), Closing::SHUTDOWN);
    }
}
