//! What the parts of a [`Connection`](super::connection::Connection) tell each other: commands
//! from its handles to the driver, what the server sent from the driver to the opener, the
//! status the driver publishes, why it stopped; and the options and backoff all of them use.
//! A leaf: the connection starts the driver, and both read these.

use std::time::Duration;

use tokio::sync::oneshot;

use super::error::Error;

/// Tuning of a [`Connection`](super::Connection). The defaults suit an interactive client on the default server.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Receive messages. A connection that only sends (`enigma send`) sets this to false: it
    /// then neither reads nor acknowledges its user's inbox, which stays for the next reader.
    pub receive: bool,
    /// Acknowledge each message as soon as the application has taken it from
    /// [`Connection::recv`](super::Connection::recv). When false the application calls [`Connection::ack`](super::Connection::ack) once it has
    /// processed (printed, saved) the message; until then a reconnect redelivers it.
    pub auto_ack: bool,
    /// How long [`Sender::send`](super::Sender::send) waits for the receipt, across reconnects.
    pub send_timeout: Duration,
    /// Largest sealed payload sent (the server's `limits.max_payload_bytes`, 64 KiB by default).
    pub max_payload_bytes: usize,
    /// First reconnect delay; it doubles on each failed attempt up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How often the client pings; the server also pings every 20 s by default.
    pub ping_interval: Duration,
    /// A socket on which nothing arrives for this long is considered dead and reopened.
    pub idle_timeout: Duration,
    /// Limit for opening one socket (TCP and WebSocket handshake).
    pub connect_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            receive: true,
            auto_ack: true,
            send_timeout: Duration::from_secs(30),
            max_payload_bytes: 64 * 1024,
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Where a connection stands; watch it with [`Connection::status`](super::Connection::status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Connected,
    /// The socket was lost; the next attempt starts after `delay`.
    Reconnecting {
        attempt: u32,
        delay: Duration,
        reason: String,
    },
    /// Stopped for good (see the error items of [`Connection::recv`](super::Connection::recv)).
    Closed,
}

/// Why a connection stopped for good.
#[derive(Debug, Clone)]
pub(super) enum Stop {
    ByClient,
    Replaced,
    UserNotFound(String),
    Closed { code: u16, reason: String },
}

impl Stop {
    pub(super) fn to_error(&self) -> Error {
        match self {
            Stop::ByClient => Error::ConnectionClosed,
            Stop::Replaced => Error::Replaced,
            Stop::UserNotFound(user) => Error::UserNotFound(user.clone()),
            Stop::Closed { code, reason } => Error::Closed { code: *code, reason: reason.clone() },
        }
    }
}

pub(super) enum Command {
    Send { seq: u64, frame: String, reply: oneshot::Sender<Result<String, Error>> },
    Cancel(u64),
    Ack(String),
}

pub(super) enum FromServer {
    Delivery {
        id: String,
        ts: u64,
        from: String,
        payload: String,
    },
    /// The connection stopped: the last item of the stream.
    Stopped(Error),
}

/// The delay before reconnect attempt `attempt` (0-based): exponential, capped, with the upper
/// half randomised so that clients dropped together do not come back together.
pub(super) fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let ceiling = initial.saturating_mul(2u32.saturating_pow(attempt.min(20))).min(max);
    let half = ceiling / 2;
    let random = uuid::Uuid::new_v4().as_u128() as u64; // 122 random bits; no extra RNG crate
    half + Duration::from_micros(random % (half.as_micros() as u64 + 1))
}
