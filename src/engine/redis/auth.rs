//! What authentication keeps in Redis: the `protected` field of the user record (read with
//! the key in one round trip when a socket opens), burnt challenge ids, and the token key a
//! deployment without a configured one generates once and shares between its replicas.

use std::time::Duration;

use super::RedisEngine;
use super::commands::{Command, once_loaded};
use crate::engine::records::{Upkeep, UserRecord, renewal_due};
use crate::engine::unavailable::Unavailable;
use crate::protocol::UserId;

/// `publicKey`, `protected`, `unusedFrom` of a user record.
type Fields = (Option<String>, Option<String>, Option<String>);

impl RedisEngine {
    /// The registered key, whether the user is protected and where the record stands against
    /// its expiry (`Upkeep`): one `HMGET` and a `PTTL` of the same key, in one round trip.
    pub async fn user_record(&self, user: &UserId) -> Result<Option<UserRecord>, Unavailable> {
        let this = &self.inner;
        let mut con = this.connections.cmd();
        let key = this.keys.user(user);
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET").arg(&key).arg("publicKey").arg("protected").arg("unusedFrom").pttl(&key);
        let ((public_key, protected, unused_from), pttl): (Fields, i64) =
            this.timed(Command::Admit, pipe.query_async(&mut con)).await?;
        let Some(public_key) = public_key else { return Ok(None) };
        let term =
            Duration::from_millis(super::login::record_ttl_ms(Duration::from_secs(this.limits.inactive_user_ttl_secs)));
        let upkeep = match (unused_from, u64::try_from(pttl)) {
            // A prefix that does not parse cannot be taken out of its set: it leaves it on expiry.
            (Some(prefix), _) => prefix.parse().map_or(Upkeep::Due, Upkeep::Unused),
            (None, Ok(ms)) if !renewal_due(Duration::from_millis(ms), term) => Upkeep::Kept,
            // No expiry (a record from before records expired) or one that lost a day.
            (None, _) => Upkeep::Due,
        };
        Ok(Some(UserRecord { public_key, protected: protected.is_some_and(|p| p == "1"), upkeep }))
    }

    /// Marks a user protected, in the user's own record (so it lives and dies with the key,
    /// survives restarts with the data, and sits in the user's cluster slot). Only called for a
    /// user whose record was just read; a record goes only by expiring (`login`), and the claim
    /// that calls this also renews it (`mark_used`). The expiry is set with the field: were the
    /// record to expire just before, what this writes expires too (it has no key, so it is no
    /// user).
    pub async fn protect(&self, user: &UserId) -> Result<(), Unavailable> {
        let this = &self.inner;
        let mut con = this.connections.cmd();
        let key = this.keys.user(user);
        let ttl = super::login::record_ttl_ms(Duration::from_secs(this.limits.inactive_user_ttl_secs));
        let mut pipe = redis::pipe();
        pipe.hset(&key, "protected", "1").ignore().pexpire(&key, ttl as i64).ignore();
        this.timed(Command::Auth, pipe.query_async::<()>(&mut con)).await
    }

    /// Burns a challenge id for `ttl_ms`: true the first time, false on every replay, on any
    /// replica.
    pub async fn burn_challenge(&self, jti: &str, ttl_ms: u64) -> Result<bool, Unavailable> {
        let this = &self.inner;
        let mut con = this.connections.cmd();
        let mut set = redis::cmd("SET");
        set.arg(this.keys.burnt_challenge(jti)).arg("1").arg("NX").arg("PX").arg(ttl_ms.max(1));
        let reply: Option<String> = this.timed(Command::Auth, set.query_async(&mut con)).await?;
        Ok(reply.is_some())
    }

    /// The deployment's shared token key: `candidate` if no replica stored one before, else
    /// the stored one (`SET NX GET`: whoever is first wins, everyone reads the winner). Read at
    /// startup, which cannot go on without it: while Redis is loading its dataset this waits
    /// for the load to end (the replica not serving yet, as while Redis is not reachable).
    pub async fn shared_token_key(&self, candidate: &str) -> Result<String, Unavailable> {
        let this = &self.inner;
        let mut set = redis::cmd("SET");
        set.arg(this.keys.token_key()).arg(candidate).arg("NX").arg("GET");
        let previous: Option<String> = once_loaded(Command::Auth, this.timeout, || {
            let mut con = this.connections.cmd();
            let set = set.clone();
            async move { set.query_async(&mut con).await }
        })
        .await?;
        Ok(previous.unwrap_or_else(|| candidate.to_owned()))
    }
}
