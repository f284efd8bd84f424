//! How a session ends: one enum, which gives the close frame's code (the wire's `CloseCode`)
//! and reason, and the label the closed connection is counted under, so that
//! `session::register_metrics` and the counting share one list.

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};

use crate::hub::Kick;
use crate::protocol::CloseCode;
use crate::telemetry::metric;

/// Why a session ends: the close frame's code and reason, and the label it is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Closing {
    /// The client closed or dropped the connection.
    PeerGone,
    /// A frame over the size limit.
    TooBig,
    /// The client broke the WebSocket protocol.
    ProtocolError,
    /// A text frame that is not UTF-8.
    InvalidPayload,
    /// The client does not read fast enough.
    SlowConsumer,
    /// The server shuts down.
    Shutdown,
    /// A newer connection of the same user took over.
    Replaced,
    /// No pong within the idle timeout.
    Idle,
    /// The storage cannot be reached (or the server is at capacity).
    Unavailable,
    UserNotFound,
    Unauthorized,
}

impl Closing {
    pub(super) const ALL: [Closing; 11] = [
        Closing::PeerGone,
        Closing::TooBig,
        Closing::ProtocolError,
        Closing::InvalidPayload,
        Closing::SlowConsumer,
        Closing::Shutdown,
        Closing::Replaced,
        Closing::Idle,
        Closing::Unavailable,
        Closing::UserNotFound,
        Closing::Unauthorized,
    ];

    pub(super) fn from_read_error(error: axum::Error) -> Closing {
        match error.into_inner().downcast::<tungstenite::Error>().map(|e| *e) {
            Ok(tungstenite::Error::Capacity(_)) => Closing::TooBig,
            Ok(tungstenite::Error::Protocol(_)) => Closing::ProtocolError,
            // RFC 6455 §8.1: a text frame that is not UTF-8 fails the connection with 1007.
            Ok(tungstenite::Error::Utf8(_)) => Closing::InvalidPayload,
            _ => Closing::PeerGone,
        }
    }

    pub(super) fn kicked(kick: Kick) -> Closing {
        match kick {
            Kick::Replaced => Closing::Replaced,
            Kick::Shutdown => Closing::Shutdown,
        }
    }

    /// The client does not read fast enough; counted where it is decided.
    pub(super) fn slow_consumer() -> Closing {
        metrics::counter!(metric::SLOW_CONSUMERS).increment(1);
        Closing::SlowConsumer
    }

    pub(super) fn code(self) -> CloseCode {
        match self {
            Closing::PeerGone => CloseCode::Normal,
            Closing::TooBig => CloseCode::MessageTooBig,
            Closing::ProtocolError => CloseCode::ProtocolError,
            Closing::InvalidPayload => CloseCode::InvalidPayload,
            Closing::SlowConsumer => CloseCode::SlowConsumer,
            Closing::Shutdown => CloseCode::GoingAway,
            Closing::Replaced => CloseCode::Replaced,
            Closing::Idle => CloseCode::IdleTimeout,
            Closing::Unavailable => CloseCode::TryAgainLater,
            Closing::UserNotFound => CloseCode::UserNotFound,
            Closing::Unauthorized => CloseCode::Unauthorized,
        }
    }

    /// The close frame's reason.
    pub(super) fn reason(self) -> &'static str {
        match self {
            Closing::PeerGone => "",
            Closing::TooBig => "frame exceeds the size limit",
            Closing::ProtocolError => "protocol error",
            Closing::InvalidPayload => "text frame is not valid UTF-8",
            Closing::SlowConsumer => "slow consumer: outbound queue full",
            Closing::Shutdown => "server shutting down; reconnect",
            Closing::Replaced => "replaced by a newer connection",
            Closing::Idle => "idle timeout: no pong received",
            Closing::Unavailable => "storage unavailable; retry later",
            Closing::UserNotFound => "user not found",
            Closing::Unauthorized => "unauthorized",
        }
    }

    /// The `reason` label of `enigma_connections_closed_total`: what dashboards and alerts
    /// select on.
    pub(super) fn label(self) -> &'static str {
        match self {
            Closing::PeerGone => "peer",
            Closing::TooBig => "too_big",
            Closing::Shutdown => "shutdown",
            Closing::Replaced => "replaced",
            Closing::SlowConsumer => "slow_consumer",
            Closing::Idle => "idle",
            Closing::Unavailable => "unavailable",
            Closing::ProtocolError | Closing::InvalidPayload | Closing::UserNotFound | Closing::Unauthorized => "other",
        }
    }

    /// The client ended the stream itself (its close frame, a broken or oversized frame, a
    /// dropped connection): nothing after it is read.
    pub(super) fn peer_ended(self) -> bool {
        !matches!(self, Closing::SlowConsumer | Closing::Shutdown | Closing::Replaced | Closing::Idle)
    }

    pub(super) fn message(self) -> Message {
        let frame = CloseFrame { code: self.code().as_u16(), reason: Utf8Bytes::from_static(self.reason()) };
        Message::Close(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_way_to_close_has_its_code_and_label() {
        let expected = [
            (Closing::PeerGone, 1000, "peer"),
            (Closing::SlowConsumer, 4429, "slow_consumer"),
            (Closing::Shutdown, 1001, "shutdown"),
            (Closing::Replaced, 4409, "replaced"),
            (Closing::Idle, 4408, "idle"),
            (Closing::Unavailable, 1013, "unavailable"),
            (Closing::TooBig, 1009, "too_big"),
            (Closing::ProtocolError, 1002, "other"),
            (Closing::InvalidPayload, 1007, "other"),
            (Closing::UserNotFound, 4404, "other"),
            (Closing::Unauthorized, 4401, "other"),
        ];
        assert_eq!(expected.len(), Closing::ALL.len());
        for (closing, code, label) in expected {
            assert_eq!(closing.code().as_u16(), code, "{closing:?}");
            assert_eq!(closing.label(), label, "{closing:?}");
            assert!(Closing::ALL.contains(&closing));
        }
    }

    #[test]
    fn kicks_close_as_replaced_or_shutdown() {
        assert_eq!(Closing::kicked(Kick::Replaced), Closing::Replaced);
        assert_eq!(Closing::kicked(Kick::Shutdown), Closing::Shutdown);
    }
}
