//! The names the two sides agree on: the subprotocol, error codes and close codes.
//!
//! Each has one table here (`as_str`, `as_u16`) and its parse is that table read backwards,
//! so a code cannot be spelt one way by the server and another by a client.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// WebSocket subprotocol of the acknowledging extension (see `docs/protocol.md`).
pub const SUBPROTOCOL_V1: &str = "enigma.v1";

/// Prefix of the `Sec-WebSocket-Protocol` entry that carries a bearer token for clients that
/// cannot set `Authorization` on a WebSocket (browsers): `enigma.bearer.<token>`. The server
/// never echoes it, so such a client must offer [`SUBPROTOCOL_V1`] as well.
pub const BEARER_PROTOCOL_PREFIX: &str = "enigma.bearer.";

/// Machine-readable error codes carried by error frames and HTTP error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidJson,
    InvalidFrame,
    BinaryNotSupported,
    Forbidden,
    UserNotFound,
    PayloadTooLarge,
    InboxFull,
    Unavailable,
    Internal,
    /// No such HTTP endpoint.
    NotFound,
    /// The user is protected (or the server requires a token) and no valid token was shown.
    Unauthorized,
    /// The user's registered key is of a kind that cannot prove possession (see `docs/security.md`).
    UnsupportedKey,
    /// A rate limit refused the request; retry after `retry_after_ms` (or `Retry-After`).
    RateLimited,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidFrame,
        ErrorCode::BinaryNotSupported,
        ErrorCode::Forbidden,
        ErrorCode::UserNotFound,
        ErrorCode::PayloadTooLarge,
        ErrorCode::InboxFull,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::NotFound,
        ErrorCode::Unauthorized,
        ErrorCode::UnsupportedKey,
        ErrorCode::RateLimited,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidFrame => "invalid_frame",
            ErrorCode::BinaryNotSupported => "binary_not_supported",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::UserNotFound => "user_not_found",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::InboxFull => "inbox_full",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::UnsupportedKey => "unsupported_key",
            ErrorCode::RateLimited => "rate_limited",
        }
    }

    pub fn parse(s: &str) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|code| code.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// An error code as a client reads it: one this build knows, or one a newer server sent
/// (kept as spelt, so it can still be shown and logged).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AnyErrorCode {
    Known(ErrorCode),
    Unknown(String),
}

impl AnyErrorCode {
    pub fn parse(s: &str) -> AnyErrorCode {
        ErrorCode::parse(s).map_or_else(|| AnyErrorCode::Unknown(s.to_owned()), AnyErrorCode::Known)
    }

    pub fn as_str(&self) -> &str {
        match self {
            AnyErrorCode::Known(code) => code.as_str(),
            AnyErrorCode::Unknown(code) => code,
        }
    }

    /// Whether `self` is the known code `code`.
    pub fn is(&self, code: ErrorCode) -> bool {
        *self == AnyErrorCode::Known(code)
    }
}

impl From<ErrorCode> for AnyErrorCode {
    fn from(code: ErrorCode) -> Self {
        AnyErrorCode::Known(code)
    }
}

impl fmt::Display for AnyErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for AnyErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AnyErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(AnyErrorCode::parse(&code))
    }
}

/// Close codes of the protocol: those the server sends (4000–4999 are private-use codes in
/// RFC 6455) and the standard ones a client must tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// The peer is done (also what a client's own close says).
    Normal,
    /// The server is shutting down; reconnect (to another replica).
    GoingAway,
    /// The client broke the WebSocket protocol.
    ProtocolError,
    /// The peer sent a kind of data it does not accept.
    UnsupportedData,
    /// A close frame without a code (never sent; what a reader reports instead).
    NoStatus,
    /// Text that is not UTF-8.
    InvalidPayload,
    PolicyViolation,
    /// A frame over the size limit (far beyond the payload limit).
    MessageTooBig,
    /// The server cannot serve right now (storage unreachable); reconnect later.
    TryAgainLater,
    /// The user of the socket does not exist.
    UserNotFound,
    /// The socket needs a valid token (a protected user, or `auth.mode = required`).
    Unauthorized,
    /// Nothing arrived from the peer within the idle timeout.
    IdleTimeout,
    /// A newer connection of the same user took over.
    Replaced,
    /// The client does not read fast enough; its messages stay stored.
    SlowConsumer,
    /// Any other code.
    Other(u16),
}

impl CloseCode {
    const NAMED: [CloseCode; 14] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::UnsupportedData,
        CloseCode::NoStatus,
        CloseCode::InvalidPayload,
        CloseCode::PolicyViolation,
        CloseCode::MessageTooBig,
        CloseCode::TryAgainLater,
        CloseCode::UserNotFound,
        CloseCode::Unauthorized,
        CloseCode::IdleTimeout,
        CloseCode::Replaced,
        CloseCode::SlowConsumer,
    ];

    pub const fn as_u16(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::UnsupportedData => 1003,
            CloseCode::NoStatus => 1005,
            CloseCode::InvalidPayload => 1007,
            CloseCode::PolicyViolation => 1008,
            CloseCode::MessageTooBig => 1009,
            CloseCode::TryAgainLater => 1013,
            CloseCode::UserNotFound => 4404,
            CloseCode::Unauthorized => 4401,
            CloseCode::IdleTimeout => 4408,
            CloseCode::Replaced => 4409,
            CloseCode::SlowConsumer => 4429,
            CloseCode::Other(code) => code,
        }
    }

    pub fn from_u16(code: u16) -> CloseCode {
        Self::NAMED.into_iter().find(|c| c.as_u16() == code).unwrap_or(CloseCode::Other(code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
            let any: AnyErrorCode = serde_json::from_value(serde_json::to_value(code).unwrap()).unwrap();
            assert!(any.is(code));
        }
        assert_eq!(ErrorCode::NotFound.as_str(), "not_found");
        let newer: AnyErrorCode = serde_json::from_str(r#""sender_banned""#).unwrap();
        assert_eq!(newer, AnyErrorCode::Unknown("sender_banned".into()));
        assert_eq!(serde_json::to_string(&newer).unwrap(), r#""sender_banned""#);
    }

    #[test]
    fn close_codes_round_trip() {
        for code in CloseCode::NAMED {
            assert_eq!(CloseCode::from_u16(code.as_u16()), code);
        }
        assert_eq!(CloseCode::from_u16(4999), CloseCode::Other(4999));
        assert_eq!(CloseCode::Replaced.as_u16(), 4409);
        assert_eq!(CloseCode::UserNotFound.as_u16(), 4404);
        assert_eq!(CloseCode::Unauthorized.as_u16(), 4401);
    }
}
