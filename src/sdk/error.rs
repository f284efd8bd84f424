//! Typed errors of the SDK.
//!
//! Callers need to tell apart what they can fix (a wrong URL, an unknown user, a key file
//! that exists), what will pass by itself (the server is unreachable or busy: retry), and
//! what ends a connection for good (another connection of the same user took over). Every
//! message is written for the person at the terminal, so the CLI prints them as they are.

use std::path::PathBuf;

use crate::protocol::{AnyErrorCode, ErrorCode, SUBPROTOCOL_V1};

/// Anything the SDK can report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    #[error("TLS: {0}")]
    Tls(String),

    #[error("cannot reach the server at {url} ({reason})")]
    Unreachable { url: String, reason: String },

    /// The server answered a REST call with an unexpected status.
    #[error("the server answered {status}: {message}")]
    Http { status: u16, message: String },

    /// The server's answer did not have the expected shape (wrong server, wrong version).
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),

    #[error("user {0} not found on this server")]
    UserNotFound(String),

    /// The directory holds a key for this user that is not an Enigma X25519 key (for
    /// example the RSA key of the protocol's web client).
    #[error("user {user} has a key this client cannot use ({reason}); it was registered by another kind of client")]
    UnsupportedKey { user: String, reason: String },

    /// The server holds another public key for our own user id: the local state is stale.
    #[error("the server holds another public key for user {user}; log in again with this key")]
    KeyMismatch { user: String },

    /// The directory returned another key for a contact than the one pinned earlier
    /// ([`super::pins`]): a key swapped by whoever controls the directory, or a contact who
    /// made a new key. Nothing is sealed to it until the user accepts it.
    #[error(
        "the key of user {user} CHANGED: pinned fingerprint {pinned}, the server now gives {presented}. \
         Someone who can change the server's directory may be intercepting; or the contact made a new key. \
         Nothing was sent. Check the new fingerprint with the contact, then accept it explicitly"
    )]
    KeyChanged { user: String, pinned: String, presented: String },

    /// The key directory's answers were refused ([`enigma_verify::VerifyError`] says which check
    /// failed): nothing is sealed to a key the directory does not prove.
    #[error("key directory: {0}")]
    Directory(#[from] enigma_verify::VerifyError),

    /// A server without a key directory, refused by [`super::DirectoryPolicy::Require`].
    #[error("the server at {url} has no key directory (404 at /directory/root); keys cannot be proven there")]
    NoDirectory { url: String },

    /// A server whose directory this client verified (a root is kept for it) now answers 404 at
    /// `/directory/root`: proofs are not silently dropped.
    #[error(
        "the server at {url} had a key directory (epoch {epoch}) and now says it has none: refusing; \
         `enigma forget-root` (Start again in the page) only if its operator announced that it reset it"
    )]
    DirectoryWithdrawn { url: String, epoch: u64 },

    /// The directory did not publish the user in time: nothing is sealed to an unproven key.
    #[error(
        "user {user} is not in the server's key directory (waited {waited:?}): nothing is sealed to a key the \
         directory does not prove"
    )]
    NotPublished { user: String, waited: std::time::Duration },

    /// The directory's history of our own user id holds a key that is not ours.
    #[error(
        "the directory shows another key for you (user {user}): {}. Whoever holds it may receive messages sealed \
         for you; the server (or someone who controls it) published it",
        if keys.is_empty() { "no key at all".to_owned() } else { keys.join("; ") }
    )]
    AnotherKeyForYou { user: String, keys: Vec<String> },

    #[error("pin file {path}: {reason}")]
    PinFile { path: PathBuf, reason: String },

    /// The server refused a send; `code` is the machine-readable code of its error frame.
    #[error("the server refused the message: {message} ({code})")]
    Refused { code: AnyErrorCode, message: String },

    /// A delivery that could not be opened. It has been acknowledged (it would otherwise be
    /// redelivered forever); the error is reported so that it is not lost silently.
    #[error("message {id} from {from} was refused: {reason}")]
    Undecryptable { id: String, from: String, ts: u64, reason: OpenError },

    /// A newer connection of the same user (another process, another device) took over.
    /// The SDK does not reconnect: two clients would otherwise replace each other forever.
    #[error("replaced by a newer connection of the same user (is another client running with this key?)")]
    Replaced,

    /// The server closed the connection for a reason reconnecting cannot fix.
    #[error("the server closed the connection: {reason} (code {code})")]
    Closed { code: u16, reason: String },

    #[error(
        "the server does not offer the {SUBPROTOCOL_V1} subprotocol (acknowledged delivery); is it an Enigma relay?"
    )]
    NoSubprotocol,

    #[error("the message is {size} bytes once sealed; the limit is {max}")]
    PayloadTooLarge { size: usize, max: usize },

    #[error("timed out after {0:?} waiting for the server")]
    Timeout(std::time::Duration),

    /// The connection was closed by this client, or its task stopped.
    #[error("the connection is closed")]
    ConnectionClosed,

    #[error("invalid key: {0}")]
    InvalidKey(String),

    #[error("key file {path} already exists (use --force to overwrite it)")]
    KeyFileExists { path: PathBuf },

    #[error("key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
}

impl Error {
    /// Whether trying again later may succeed (the server was unreachable, busy, or its
    /// storage was down), as opposed to a mistake that retrying repeats.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unreachable { .. } | Error::Timeout(_) | Error::NotPublished { .. } => true,
            Error::Http { status, .. } => *status >= 500,
            Error::Refused { code, .. } => code.is(ErrorCode::Unavailable) || code.is(ErrorCode::InboxFull),
            _ => false,
        }
    }
}

/// Why a payload could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("not an Enigma payload ({0})")]
    Malformed(&'static str),

    #[error("payload format version {0} is not supported by this client")]
    UnsupportedVersion(u8),

    /// HPKE refused it. The AEAD cannot tell the causes apart, and must not: the ciphertext
    /// was modified, or it was sealed for someone else, or not by the user it claims.
    #[error(
        "authentication failed: the payload was tampered with, is not sealed for you, or was not sealed by its sender"
    )]
    Authentication,

    #[error("the sender is unknown to the server")]
    UnknownSender,

    #[error("the sender's key is not an Enigma key ({0})")]
    UnsupportedSenderKey(String),

    /// The sender's key in the directory is not the one pinned for them ([`Error::KeyChanged`]).
    #[error("{0}")]
    SenderKeyChanged(String),

    /// The key directory does not prove the sender's key ([`Error::Directory`]): the payload is
    /// not opened with it.
    #[error("{0}")]
    SenderKeyUnproven(String),

    #[error("the decrypted content is invalid ({0})")]
    InvalidContent(String),
}
