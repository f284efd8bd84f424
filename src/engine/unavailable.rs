//! Why the store could not be used, with the cause kept: a Redis error, an I/O error, no answer
//! in time, or a reason the relay names itself. What kind of failure it is (a script cache
//! that lost its script, a timeout, a store still loading) is decided here, from the cause's
//! kind, never from its text, so every caller that acts on a kind acts on the same answer.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};

/// The store could not be used (unreachable, timed out, refused); clients should retry.
///
/// The message names the cause as well (a log line prints it whole); `source()` is the cause.
#[derive(Debug, Clone, thiserror::Error)]
#[error("storage unavailable: {cause}")]
pub struct Unavailable {
    #[source]
    cause: Cause,
}

#[derive(Debug, Clone, thiserror::Error)]
enum Cause {
    #[error(transparent)]
    Redis(RedisError),
    /// A Redis error met while doing something the message should name.
    #[error("{doing}: {error}")]
    RedisWhile {
        doing: &'static str,
        #[source]
        error: RedisError,
    },
    #[error("no answer from Redis within {0:?}")]
    Late(Duration),
    #[error("{what}: {error}")]
    Io {
        what: &'static str,
        #[source]
        error: Arc<std::io::Error>,
    },
    /// A reason of the relay's own (a reply it cannot read, a queue that stopped…).
    #[error("{0}")]
    Said(Cow<'static, str>),
}

impl Unavailable {
    /// A failure the relay names itself.
    pub fn said(why: impl Into<Cow<'static, str>>) -> Self {
        Self { cause: Cause::Said(why.into()) }
    }

    /// No answer from the store within `limit`.
    pub fn late(limit: Duration) -> Self {
        Self { cause: Cause::Late(limit) }
    }

    /// A Redis error met while `doing` something.
    pub fn redis_while(doing: &'static str, error: RedisError) -> Self {
        Self { cause: Cause::RedisWhile { doing, error } }
    }

    /// An I/O error on `what` (a file, say).
    pub fn io(what: &'static str, error: std::io::Error) -> Self {
        Self { cause: Cause::Io { what, error: Arc::new(error) } }
    }

    /// The store did not answer in time (its answer may still come: what was asked may have
    /// been done).
    pub fn is_timeout(&self) -> bool {
        match &self.cause {
            Cause::Late(_) => true,
            Cause::Io { error, .. } => error.kind() == std::io::ErrorKind::TimedOut,
            _ => self.redis().is_some_and(RedisError::is_timeout),
        }
    }

    /// Redis does not have the script a call named (restarted, failed over, `SCRIPT FLUSH`):
    /// loading it and calling again is the remedy.
    pub fn is_noscript(&self) -> bool {
        self.redis().is_some_and(is_noscript)
    }

    /// Redis is loading its dataset: "not yet", it answers once loaded.
    pub fn is_loading(&self) -> bool {
        self.redis().is_some_and(is_loading)
    }

    fn redis(&self) -> Option<&RedisError> {
        match &self.cause {
            Cause::Redis(error) | Cause::RedisWhile { error, .. } => Some(error),
            _ => None,
        }
    }
}

impl From<RedisError> for Unavailable {
    fn from(error: RedisError) -> Self {
        Self { cause: Cause::Redis(error) }
    }
}

/// Whether Redis refused a call for lack of its script (`NOSCRIPT`; a pipeline's error is
/// of the kind of its first failure).
pub(crate) fn is_noscript(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

/// Whether Redis refused a command because it is loading its dataset (`LOADING`: started with
/// a large append-only file or snapshot).
pub(crate) fn is_loading(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::BusyLoading)
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    /// A Redis error reply as the redis crate reads it off the wire.
    fn reply(raw: &[u8]) -> RedisError {
        redis::parse_redis_value(raw).unwrap().extract_error().unwrap_err()
    }

    #[test]
    fn the_kind_is_told_by_the_cause_not_by_the_text() {
        let noscript = Unavailable::from(reply(b"-NOSCRIPT No matching script. Please use EVAL.\r\n"));
        assert!(noscript.is_noscript() && !noscript.is_timeout() && !noscript.is_loading());
        let loading = Unavailable::from(reply(b"-LOADING Redis is loading the dataset in memory\r\n"));
        assert!(loading.is_loading() && !loading.is_noscript());
        let late = Unavailable::late(Duration::from_millis(300));
        assert!(late.is_timeout() && !late.is_noscript() && !late.is_loading());
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(Unavailable::redis_while("reconnecting", io).is_timeout());
        // Words in a message are only words.
        for text in [&b"-ERR NOSCRIPT is only a word here\r\n"[..], b"-ERR LOADING too\r\n", b"-BUSY busy\r\n"] {
            let other = Unavailable::from(reply(text));
            assert!(!other.is_noscript() && !other.is_loading() && !other.is_timeout(), "{other}");
        }
        assert!(!Unavailable::said("no answer from Redis within 1s").is_timeout());
    }

    #[test]
    fn the_message_names_the_cause_and_the_source_is_kept() {
        let late = Unavailable::late(Duration::from_millis(300));
        assert_eq!(late.to_string(), "storage unavailable: no answer from Redis within 300ms");
        let noscript = Unavailable::from(reply(b"-NOSCRIPT No matching script.\r\n"));
        assert!(
            noscript.to_string().starts_with("storage unavailable: ")
                && noscript.to_string().contains("No matching script"),
            "{noscript}"
        );
        let source = noscript.source().expect("a source");
        assert!(source.to_string().contains("No matching script"), "{source}");
        let io = Unavailable::io("redis.tls_ca_file", std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(io.to_string().starts_with("storage unavailable: redis.tls_ca_file: "), "{io}");
        let cause = io.source().and_then(Error::source).expect("the I/O error");
        assert!(cause.downcast_ref::<Arc<std::io::Error>>().is_some());
        assert_eq!(Unavailable::said("subscriber stopped").to_string(), "storage unavailable: subscriber stopped");
    }
}
