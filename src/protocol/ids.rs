//! The two identifiers on the wire: who (a user id) and where in an inbox (a message id).
//!
//! Both have exactly one spelling, so that comparing strings, hashing and ordering agree on
//! every replica, in Redis and in clients.

use std::fmt;
use std::str::FromStr;

/// A user id: a canonical (lowercase, hyphenated) UUID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().hyphenated().to_string())
    }
    /// Accepts only the canonical 36-character form, so one user has exactly one spelling.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 36 {
            return None;
        }
        let uuid = uuid::Uuid::try_parse(s).ok()?;
        let canonical = uuid.hyphenated().to_string();
        (canonical == s).then_some(Self(canonical))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Position of a message in a user's inbox: a Redis stream id (`<ms>-<seq>`), used by both
/// engines so that ordering and de-duplication work the same everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MsgId {
    pub ms: u64,
    pub seq: u64,
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for MsgId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (ms, seq) = s.split_once('-').ok_or(())?;
        Ok(Self { ms: ms.parse().map_err(|_| ())?, seq: seq.parse().map_err(|_| ())? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_canonical() {
        let id = UserId::random();
        assert_eq!(UserId::parse(id.as_str()), Some(id.clone()));
        assert!(UserId::parse(&id.as_str().to_uppercase()).is_none());
        assert!(UserId::parse("not-a-uuid").is_none());
        assert!(UserId::parse("").is_none());
    }

    #[test]
    fn msg_ids_order_numerically() {
        let a: MsgId = "9-5".parse().unwrap();
        let b: MsgId = "10-0".parse().unwrap();
        assert!(a < b);
        assert_eq!(b.to_string(), "10-0");
        assert!("10".parse::<MsgId>().is_err());
        assert!("x-1".parse::<MsgId>().is_err());
    }
}
