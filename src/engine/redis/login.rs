//! Login: a public key's user id, created on first use (`pk:<sha256>` index, `SET NX GET`).
//!
//! The index is keyed by the key's canonical bytes when its kind is recognised
//! (`auth::canonical`), so every spelling of one key finds one user. Records made before
//! that change are indexed by their exact string: that entry is read too and, when found,
//! wins for its own string and is copied to the canonical entry if that is still free. Two
//! records made before the change for two spellings of one key stay two users (each
//! spelling keeps its id; nothing is merged silently); docs/security.md.

use redis::AsyncCommands;

use super::commands::Command;
use super::{RedisEngine, parse_indexed};
use crate::auth::canonical::index_material;
use crate::engine::Unavailable;
use crate::protocol::UserId;

impl RedisEngine {
    pub async fn login(&self, public_key: &str) -> Result<UserId, Unavailable> {
        let this = &self.inner;
        let material = index_material(public_key);
        let index = this.keys.key_index(&material.primary);
        let legacy = material.legacy.as_deref().map(|m| this.keys.key_index(m));
        let mut con = this.connections.cmd();
        let (existing, legacy_user): (Option<String>, Option<String>) = match &legacy {
            None => (this.timed(Command::LoginGet, con.get(&index)).await?, None),
            // Different slots on a cluster: two commands; elsewhere one round trip.
            Some(legacy) if this.connections.is_cluster() => (
                this.timed(Command::LoginGet, con.get(&index)).await?,
                this.timed(Command::LoginGet, con.get(legacy)).await?,
            ),
            Some(legacy) => {
                let mut pipe = redis::pipe();
                pipe.get(&index).get(legacy);
                this.timed(Command::LoginGet, pipe.query_async(&mut con)).await?
            }
        };
        if let Some(old) = legacy_user {
            let user = parse_indexed(&old)?;
            match existing {
                None => {
                    // Adopt the old record for every spelling; a concurrent adopter or
                    // registrant may have taken the entry meanwhile: this spelling keeps its own.
                    let mut adopt = redis::cmd("SET");
                    adopt.arg(&index).arg(user.as_str()).arg("NX");
                    let _: Option<String> = this.timed(Command::LoginClaim, adopt.query_async(&mut con)).await?;
                }
                Some(canonical) if canonical != old => tracing::warn!(
                    user = %user, other = %canonical,
                    "one key has two user records from before key normalisation; this spelling keeps its own"
                ),
                Some(_) => {}
            }
            return Ok(user);
        }
        if let Some(user) = existing {
            return parse_indexed(&user);
        }
        // Create the record first, then claim the key: whoever claims it first wins, and a
        // loser's record (never announced to anyone) is removed again.
        let user = UserId::random();
        let record = this.keys.user(&user);
        let created = crate::engine::memory::unix_ms();
        let fields = [("publicKey", public_key), ("createdAt", &created.to_string())];
        let mut claim = redis::cmd("SET");
        claim.arg(&index).arg(user.as_str()).arg("NX").arg("GET");
        let previous: Option<String> = if this.connections.is_cluster() {
            // The record and the index are in different slots: two commands, in this order.
            let _: () = this.timed(Command::LoginClaim, con.hset_multiple(&record, &fields)).await?;
            this.timed(Command::LoginClaim, claim.query_async(&mut con)).await?
        } else {
            let mut pipe = redis::pipe();
            pipe.hset_multiple(&record, &fields).ignore().add_command(claim);
            let (previous,): (Option<String>,) = this.timed(Command::LoginClaim, pipe.query_async(&mut con)).await?;
            previous
        };
        match previous {
            None => Ok(user),
            Some(winner) => {
                let _: redis::RedisResult<()> = con.del(&record).await;
                parse_indexed(&winner)
            }
        }
    }
}
