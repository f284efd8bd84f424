//! Login: a public key's user id, created on first use (`pk:<sha256>` index, `SET NX GET`).
//!
//! The index is keyed by the key's canonical bytes when its kind is recognised
//! (`auth::canonical`), so every spelling of one key finds one user. Records made before
//! that change are indexed by their exact string: that entry is read too and, when found,
//! wins for its own string and is copied to the canonical entry if that is still free. Two
//! records made before the change for two spellings of one key stay two users (each
//! spelling keeps its id; nothing is merged silently); docs/security.md.
//!
//! Records expire. A registration is made with `limits.unused_registration_ttl_secs` to live,
//! names the address prefix it came from (field `unusedFrom`) and is a member of that prefix's
//! set of unused registrations (`unused:<prefix>`, at most
//! `limits.max_unused_registrations_per_prefix`). Its first use (`mark_used`: a socket admitted
//! as the user, a claim) takes it out of the set and gives record and index
//! `limits.inactive_user_ttl_secs`; later uses renew that when it has lost a day
//! (`engine::renewal_due`), which the socket's admission reads with the record (`PTTL`). The
//! record always outlives its index by a little (`RECORD_OUTLIVES_INDEX`): the two are in
//! different cluster slots and expire on their own, and an index naming a vanished record would
//! log its key in as a user nobody can find.

use std::time::Duration;

use redis::AsyncCommands;

use super::commands::Command;
use super::keys::TreePart;
use super::{RedisEngine, parse_indexed};
use crate::auth::canonical::index_material;
use crate::engine::errors::LoginError;
use crate::engine::records::{Upkeep, UserRecord};
use crate::engine::unavailable::Unavailable;
use crate::limits::storage::{Holder, registration_bytes};
use crate::protocol::UserId;

/// How much longer a user record lives than its key index: an eighth of the TTL, at most a
/// minute (far above the time between the two commands that set them).
fn record_outlives_index(ttl: Duration) -> Duration {
    (ttl / 8).min(Duration::from_secs(60))
}

/// The record's full TTL, in ms, for an index TTL of `ttl`.
pub(super) fn record_ttl_ms(ttl: Duration) -> u64 {
    (ttl + record_outlives_index(ttl)).as_millis() as u64
}

impl RedisEngine {
    pub async fn login(&self, public_key: &str, from: ipnet::IpNet) -> Result<UserId, LoginError> {
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
            return Ok(parse_indexed(&user)?);
        }
        // A new user: counted against its prefix's unused registrations first (refused at the
        // maximum, before anything is stored).
        let user = UserId::random();
        let ttl = Duration::from_secs(this.limits.unused_registration_ttl_secs);
        let unused = this.keys.unused(&from);
        let mut reserve = this.scripts.unused.prepare_invoke();
        reserve
            .key(&unused)
            .arg(user.as_str())
            .arg(ttl.as_millis() as u64)
            .arg(this.limits.max_unused_registrations_per_prefix);
        let wait: u64 = this.timed(Command::LoginClaim, reserve.invoke_async(&mut con)).await?;
        if wait > 0 {
            return Err(LoginError::TooManyUnused { retry_after: Duration::from_millis(wait) });
        }
        // Then against what its prefix registered within a year (`directory_per_prefix`).
        let shares = &this.limits.storage;
        let charge = registration_bytes(public_key);
        if shares.directory_per_prefix > 0.0 {
            let allowed = shares.directory_allowed(&this.pressure);
            if !self.hold(&Holder::Registrations(from), charge as i64, allowed).await? {
                let _: redis::RedisResult<()> = con.zrem(&unused, user.as_str()).await;
                return Err(LoginError::DirectoryShare);
            }
        }
        // Create the record first, then claim the key: whoever claims it first wins, and a
        // loser's record (never announced to anyone) is removed again.
        let record = this.keys.user(&user);
        let created = crate::clock::unix_ms();
        let registered_from = from;
        let from = from.to_string();
        let fields = [("publicKey", public_key), ("createdAt", &created.to_string()), ("unusedFrom", &from)];
        let mut make = redis::pipe();
        make.hset_multiple(&record, &fields).ignore().pexpire(&record, record_ttl_ms(ttl) as i64).ignore();
        // Waiting for the key directory before the key is claimed: a crash cannot lose a
        // registration to it (the publisher drops entries whose claim never came, `tree.rs`).
        let pending = this.keys.tree(TreePart::Pending);
        if this.publishes {
            let entry = RedisEngine::pending_entry(public_key);
            if this.connections.is_cluster() {
                // Another slot: its own call, before the claim.
                let mut wait = redis::cmd("HSET");
                wait.arg(&pending).arg(user.as_str()).arg(entry);
                let _: u64 = this.timed(Command::LoginClaim, wait.query_async(&mut con)).await?;
            } else {
                make.hset(&pending, user.as_str(), entry).ignore();
            }
        }
        let mut claim = redis::cmd("SET");
        claim.arg(&index).arg(user.as_str()).arg("NX").arg("GET").arg("PX").arg(ttl.as_millis() as u64);
        let previous: Option<String> = if this.connections.is_cluster() {
            // The record and the index are in different slots: two calls, in this order.
            let _: () = this.timed(Command::LoginClaim, make.query_async(&mut con)).await?;
            this.timed(Command::LoginClaim, claim.query_async(&mut con)).await?
        } else {
            make.add_command(claim);
            let (previous,): (Option<String>,) = this.timed(Command::LoginClaim, make.query_async(&mut con)).await?;
            previous
        };
        match previous {
            None => Ok(user),
            Some(winner) => {
                let _: redis::RedisResult<()> = con.del(&record).await;
                let _: redis::RedisResult<()> = con.zrem(&unused, user.as_str()).await;
                if this.publishes {
                    let _: redis::RedisResult<()> = con.hdel(&pending, user.as_str()).await;
                }
                if shares.directory_per_prefix > 0.0 {
                    self.give_back(&Holder::Registrations(registered_from), charge).await;
                }
                Ok(parse_indexed(&winner)?)
            }
        }
    }

    /// Keeps a used user's record and key index for `limits.inactive_user_ttl_secs` from now,
    /// and takes a registration out of its prefix's unused set. The record first: an index is
    /// kept only for a record that is still there (and will outlive it).
    pub async fn mark_used(&self, user: &UserId, record: &UserRecord) -> Result<(), Unavailable> {
        let this = &self.inner;
        let ttl = Duration::from_secs(this.limits.inactive_user_ttl_secs);
        let key = this.keys.user(user);
        let mut keep = redis::pipe();
        keep.hdel(&key, "unusedFrom").ignore().pexpire(&key, record_ttl_ms(ttl) as i64);
        let (kept,): (bool,) = this.timed(Command::Admit, keep.query_async(&mut this.connections.cmd())).await?;
        if !kept {
            return Ok(()); // expired meanwhile: nothing left to keep
        }
        let material = index_material(&record.public_key);
        let entries = std::iter::once(material.primary).chain(material.legacy).map(|m| this.keys.key_index(&m));
        let keep_entries = entries.map(|entry| async move {
            let mut invocation = this.scripts.keep_index.prepare_invoke();
            invocation.key(entry).arg(user.as_str()).arg(ttl.as_millis() as u64);
            this.timed(Command::Admit, invocation.invoke_async::<u64>(&mut this.connections.cmd())).await.map(drop)
        });
        let leave_unused = async {
            match &record.upkeep {
                Upkeep::Unused(prefix) => {
                    let mut con = this.connections.cmd();
                    this.timed(Command::Admit, con.zrem::<_, _, u64>(this.keys.unused(prefix), user.as_str()))
                        .await
                        .map(drop)
                }
                _ => Ok(()),
            }
        };
        let (kept, left) = futures_util::join!(futures_util::future::join_all(keep_entries), leave_unused);
        kept.into_iter().chain([left]).collect()
    }
}
