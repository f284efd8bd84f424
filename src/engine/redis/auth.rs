//! What authentication keeps in Redis: the `protected` field of the user record (read with
//! the key in one round trip when a socket opens), burnt challenge ids, and the token key a
//! deployment without a configured one generates once and shares between its replicas.

use redis::AsyncCommands;

use super::RedisEngine;
use super::commands::{Command, once_loaded};
use crate::engine::{Unavailable, UserRecord};
use crate::protocol::UserId;

impl RedisEngine {
    /// The registered key and whether the user is protected: one `HMGET`.
    pub async fn user_record(&self, user: &UserId) -> Result<Option<UserRecord>, Unavailable> {
        let this = &self.inner;
        let mut con = this.connections.cmd();
        let mut hmget = redis::cmd("HMGET");
        hmget.arg(this.keys.user(user)).arg("publicKey").arg("protected");
        let (key, protected): (Option<String>, Option<String>) =
            this.timed(Command::Admit, hmget.query_async(&mut con)).await?;
        Ok(key.map(|public_key| UserRecord { public_key, protected: protected.is_some_and(|p| p == "1") }))
    }

    /// Marks a user protected, in the user's own record (so it lives and dies with the key,
    /// survives restarts with the data, and sits in the user's cluster slot). Only called for a
    /// user whose record was just read; records are never deleted once announced.
    pub async fn protect(&self, user: &UserId) -> Result<(), Unavailable> {
        let this = &self.inner;
        let mut con = this.connections.cmd();
        this.timed(Command::Auth, con.hset::<_, _, _, ()>(this.keys.user(user), "protected", "1")).await
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
