//! The Redis engine: any number of replicas share one Redis and act as one server.
//!
//! Keys (every per-user key carries the user id as a `{hash tag}`, so one user's record,
//! inbox, channel and connection counter live in one Redis Cluster slot; see `keys`):
//!
//! | key                        | type    | what                                          |
//! |----------------------------|---------|-----------------------------------------------|
//! | `<p>user:{uid}`            | HASH    | `publicKey`, `createdAt`, `seq` (last message number), `protected` (`1` once claimed), `unusedFrom` (the address prefix it was registered from, until first used); expires (`login`) |
//! | `<p>auth:jti:<id>`         | STRING  | a challenge already answered (`SET NX PX`: single use) |
//! | `<p>auth:token-key`        | STRING  | the token key generated once when none is configured (`SET NX GET`) |
//! | `<p>pk:<sha256(key)>`      | STRING  | uid; makes login idempotent (`SET NX GET`); the key's canonical bytes when its kind is recognised, else (and for records from before that) its exact string (`login`); expires a little before the record |
//! | `<p>unused:<prefix>`       | ZSET    | registrations from an address prefix nobody used yet, uid by expiry (ms); expires with its newest |
//! | `<p>inbox:{uid}`           | STREAM  | accepted envelopes (fields `e`, `s`, `f` sender) until removed |
//! | `<p>shares:{uid}`          | HASH    | per sender `n:<uid>`, `b:<uid>` waiting, `bytes` of all, `x` last TTL refresh (ms); expires with the inbox |
//! | `<p>conn:{uid}`            | STRING  | connection generation counter (takeover); expires after `inbox_ttl_secs` |
//! | `<p>rate:<limit>:<subject>`| HASH    | a rate-limit bucket (`limit.lua`); expires once full again |
//! | `<p>deliver:{uid}`         | channel | doorbell (see `doorbell`): `m<id> <seq>\n<envelope>`, `t<generation>`, `e<replica>:<n>` |
//! | `<p>probe:<replica>`       | channel | this replica's link probe (cluster: one per shard, `<p>probe:{tag}:<replica>`) |
//!
//! A send is one script step: check the inbox's room and the sender's share, take the next
//! message number (which also tells a vanished recipient), XADD, count the share, refresh the
//! TTLs (every 1/64 of the TTL, see `scripts`), PUBLISH:
//! stored and announced, or refused, never announced without being stored. One script call
//! carries the sends of every session of the replica that queued meanwhile (`sender`).
//! Subscriptions run on their own RESP3 connection whose pushes go straight into the hub.
//!
//! The subscription link is watched end to end: every `redis.probe_interval_ms` the replica
//! publishes a probe on its own channel (on a cluster one per shard, in a slot each master
//! owns) and expects it back. A link that dropped (a disconnection push) or went quiet (three
//! probes missing: a hung connection never errors) is rebuilt, every local user is subscribed
//! again and every session catches up from its inbox; while that lasts, `/readyz` fails.
//!
//! On a cluster a node ends the subscriptions of a slot it gives away (migration, failover)
//! with an unasked `sunsubscribe`: those users are subscribed again on the new owner and their
//! sessions catch up from their inboxes, for what was announced to nobody in between.
//!
//! The files: `keys` (names), `scripts` (Lua), `doorbell` (what a channel carries), `conn` and
//! `connect` (connections; `sentinel` for discovery), `push` (what the subscription connection
//! receives: doorbells to the hub, the rest to the link), `link` (the task that alone owns the
//! subscriptions, the probes and the recoveries), `sender`, `remover` (the other background
//! tasks), `commands` (timing), `slots` (cluster slot maths).

mod auth;
mod commands;
mod conn;
mod connect;
pub(crate) mod doorbell;
mod keys;
mod ledger;
mod link;
mod login;
mod push;
mod remover;
mod scripts;
mod sender;
mod sentinel;
mod slots;
mod tree;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use redis::streams::StreamRangeReply;
use redis::{AsyncCommands, RedisResult, Value};
use tokio_util::sync::CancellationToken;

use self::commands::{Command, timed};
use self::conn::CLUSTER_CONCURRENCY;
use self::connect::{Connections, Connector};
use self::keys::Keys;
use self::link::events::LinkEvents;
use self::link::requests::SubscriptionQueue;
use self::link::{EVENT_QUEUE, Link, SUBSCRIPTION_QUEUE};
use self::push::PushHandler;
use self::remover::{Gone, REMOVAL_QUEUE, RemovalQueue, remover};
use self::scripts::{Scripts, send_replies};
use self::sender::{MESSAGES_PER_CALL, Message, SEND_QUEUE, SendQueue, sender};
use super::errors::SendError;
use super::records::Written;
use super::unavailable::Unavailable;
use crate::config::{Limits, Settings};
use crate::hub::{Hub, Mailbox};
use crate::limits::bucket::{Ask, Subject, Verdict};
use crate::limits::storage::{Holder, Pressure};
use crate::protocol::{Delivery, MsgId, UserId};
use crate::telemetry::metric;

#[derive(Clone)]
pub struct RedisEngine {
    inner: Arc<Inner>,
}

struct Inner {
    hub: Arc<Hub>,
    keys: Keys,
    limits: Limits,
    timeout: Duration,
    connections: Arc<Connections>,
    subscriptions: SubscriptionQueue,
    removals: RemovalQueue,
    sends: SendQueue,
    scripts: Scripts,
    /// How full Redis is, sampled every second (`ledger`).
    pressure: Arc<Pressure>,
    /// Whether registrations are recorded for the key directory (`directory.enabled`).
    publishes: bool,
    /// Ends the background tasks (sender, remover, link) when the engine is dropped.
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl RedisEngine {
    pub async fn connect(settings: &Settings, hub: Arc<Hub>) -> Result<Self, Unavailable> {
        let timeout = Duration::from_millis(settings.redis.command_timeout_ms);
        let keys = Keys { prefix: settings.redis.prefix.clone() };

        let replica: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
        let (subscriptions, requests) = SubscriptionQueue::new(SUBSCRIPTION_QUEUE);
        let (link_events, heard) = LinkEvents::new(EVENT_QUEUE, hub.clone());
        let push = PushHandler::new(hub.clone(), keys.clone(), replica.clone(), link_events);
        let connector = Connector::from_settings(settings, timeout, &push)?;
        // Where, for the log while it is not reachable yet (passwords never shown).
        let target = crate::secrets::redact_url(settings.redis_url().unwrap_or_default());
        let connections = Arc::new(Connections::open(connector, push, timeout, &target).await?);

        for counter in [metric::REDIS_RESUBSCRIPTIONS, metric::REDIS_DEAD_LINKS, metric::REDIS_MOVED_SUBSCRIPTIONS] {
            metrics::counter!(counter).increment(0);
        }
        let stop = CancellationToken::new();
        let (removals, removal_queue) = RemovalQueue::new(REMOVAL_QUEUE);
        let ledger = settings.limits.storage.charged();
        let remover = remover(connections.clone(), keys.clone(), removal_queue, ledger);
        tokio::spawn(stop.clone().run_until_cancelled_owned(remover));
        let scripts = Scripts::new(connections.publish_command());
        let (sends, send_queue) = SendQueue::new(SEND_QUEUE);
        let send_task = sender(
            connections.clone(),
            hub.clone(),
            scripts.send.clone(),
            keys.clone(),
            settings.limits.clone(),
            send_queue,
        );
        tokio::spawn(stop.clone().run_until_cancelled_owned(send_task));
        let interval = Duration::from_millis(settings.redis.probe_interval_ms);
        let mut link = Link::new(connections.clone(), hub.clone(), keys.clone(), replica, interval, heard);
        // The first link check doubles as the initial subscription of the probe channels.
        link.start().await;
        tokio::spawn(stop.clone().run_until_cancelled_owned(link.run(requests)));
        // Until a sample says otherwise: the configured capacity, else the assumed one, empty.
        let capacity = match settings.limits.storage.capacity_bytes {
            0 => ledger::UNKNOWN_CAPACITY,
            bytes => bytes,
        };
        let pressure = Arc::new(Pressure::new(capacity));
        let sampler =
            ledger::sample_pressure(connections.clone(), pressure.clone(), settings.limits.storage.capacity_bytes);
        tokio::spawn(stop.clone().run_until_cancelled_owned(sampler));

        Ok(Self {
            inner: Arc::new(Inner {
                hub,
                keys,
                limits: settings.limits.clone(),
                publishes: settings.directory.enabled,
                timeout,
                scripts,
                connections,
                subscriptions,
                removals,
                sends,
                pressure,
                stop,
            }),
        })
    }

    pub async fn public_key(&self, user: &UserId) -> Result<Option<String>, Unavailable> {
        let mut con = self.inner.connections.cmd();
        self.inner.timed(Command::Lookup, con.hget(self.inner.keys.user(user), "publicKey")).await
    }

    /// Stores sends of `from`, in order: with every other session's sends of the moment in one
    /// round trip (`sender`), or on a cluster one call per recipient.
    /// Each entry names the sender's address `prefix` (the storage ledger's release reads it).
    pub async fn send_many(
        &self,
        from: &UserId,
        prefix: ipnet::IpNet,
        sends: Vec<(UserId, Bytes)>,
    ) -> Vec<Result<MsgId, SendError>> {
        let this = &self.inner;
        let prefix = prefix.to_string();
        if this.connections.is_cluster() {
            return self.send_per_recipient(from, &prefix, &sends).await;
        }
        this.sends.send(from, prefix, sends, this.timeout).await
    }

    /// On a cluster a script must stay in one slot (and redis-rs retries a whole pipeline
    /// when any reply in it is a redirect, which would store the others twice): each
    /// recipient's sends are one call (or one after the other, over `MESSAGES_PER_CALL`), in
    /// order, and different recipients' at once.
    async fn send_per_recipient(
        &self,
        from: &UserId,
        prefix: &str,
        sends: &[(UserId, Bytes)],
    ) -> Vec<Result<MsgId, SendError>> {
        let this = &self.inner;
        let mut by_recipient: HashMap<&UserId, Vec<usize>> = HashMap::new();
        for (i, (to, _)) in sends.iter().enumerate() {
            by_recipient.entry(to).or_default().push(i);
        }
        let per_recipient = by_recipient.into_values().map(|indices| async move {
            let mut results = Vec::with_capacity(indices.len());
            for call in indices.chunks(MESSAGES_PER_CALL) {
                let messages: Vec<Message<'_>> =
                    call.iter().map(|&i| Message::new(&this.hub, from, prefix, &sends[i].0, &sends[i].1)).collect();
                let invocation = sender::invocation(&this.scripts.send, &this.keys, &this.limits, &messages);
                let mut con = this.connections.cmd();
                let stored = match this.timed(Command::Send, invocation.invoke_async(&mut con)).await {
                    Ok(reply) => send_replies(reply, call.len()),
                    Err(e) => sender::unavailable(call.len(), e),
                };
                let replies = sender::deliver_here(&this.hub, &messages, stored);
                results.extend(call.iter().copied().zip(replies));
            }
            results
        });
        let done: Vec<_> = stream::iter(per_recipient).buffer_unordered(CLUSTER_CONCURRENCY).collect().await;
        let mut results: Vec<_> = done.into_iter().flatten().collect();
        results.sort_unstable_by_key(|(i, _)| *i);
        results.into_iter().map(|(_, result)| result).collect()
    }

    /// One rate-limit check: one script call on the bucket's key (one slot).
    pub async fn take_tokens(&self, kind: &str, subject: Subject<'_>, asks: &[Ask]) -> Result<Verdict, Unavailable> {
        let this = &self.inner;
        let ttl = asks.iter().map(|a| a.rate.refill_time()).max().unwrap_or_default();
        let mut invocation = this.scripts.limit.prepare_invoke();
        invocation.key(this.keys.rate(kind, subject)).arg(ttl.as_millis().max(1000) as u64);
        for ask in asks {
            invocation.arg(ask.rate.burst).arg(ask.rate.per_second).arg(ask.want).arg(ask.min);
        }
        let mut con = this.connections.cmd();
        let reply: Vec<u64> = this.timed(Command::Limit, invocation.invoke_async(&mut con)).await?;
        match reply.as_slice() {
            [1, granted @ ..] if granted.len() == asks.len() => Ok(Verdict::Granted(granted.to_vec())),
            [0, wait] => Ok(Verdict::Limited(Duration::from_millis(*wait))),
            _ => Err(Unavailable::said(format!("unexpected reply to a rate-limit check: {reply:?}"))),
        }
    }

    pub async fn backlog(
        &self,
        user: &UserId,
        after: Option<MsgId>,
        limit: usize,
    ) -> Result<Vec<Delivery>, Unavailable> {
        let mut con = self.inner.connections.cmd();
        let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let reply: StreamRangeReply = self
            .inner
            .timed(Command::Backlog, con.xrange_count(self.inner.keys.inbox(user), start, "+", limit))
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .filter_map(|entry| {
                let id: MsgId = entry.id.parse().ok()?;
                let (mut envelope, mut seq) = (None, 0);
                for (field, value) in entry.map {
                    match (field.as_str(), value) {
                        ("e", Value::BulkString(bytes)) => envelope = Some(Bytes::from(bytes)),
                        ("s", Value::BulkString(n)) => seq = std::str::from_utf8(&n).ok()?.parse().ok()?,
                        _ => {}
                    }
                }
                Some(Delivery { id, ts: id.ms, seq, envelope: envelope? })
            })
            .collect())
    }

    /// Adds `people` to `user`'s contacts (one script call in the user's slot).
    pub async fn add_contacts(&self, user: &UserId, people: &[UserId]) -> Result<(), Unavailable> {
        let this = &self.inner;
        let mut invocation = this.scripts.contacts.prepare_invoke();
        invocation
            .key(this.keys.contacts(user))
            .arg(this.limits.contacts_ttl_secs.saturating_mul(1000))
            .arg(this.limits.max_contacts);
        for person in people {
            invocation.arg(person.as_str());
        }
        let mut con = this.connections.cmd();
        let _: u64 = this.timed(Command::Contacts, invocation.invoke_async(&mut con)).await?;
        Ok(())
    }

    pub async fn remove(&self, user: &UserId, ids: &[MsgId]) -> Result<(), Unavailable> {
        let this = &self.inner;
        let mut con = this.connections.cmd();
        let acknowledged: Vec<Gone> = ids.iter().map(|&id| Gone::acknowledged(id)).collect();
        let release = ledger::Release::new(&this.connections, &this.keys, this.limits.storage.charged());
        let invocation = remover::removal(&this.scripts.remove, &this.keys, release.arg(), user, &acknowledged);
        let reply: redis::Value = this.timed(Command::Remove, invocation.invoke_async(&mut con)).await?;
        if release == ledger::Release::After {
            ledger::release(&this.connections, &this.keys, ledger::removal_reply(&reply).1).await;
        }
        Ok(())
    }

    pub fn forget_delivered(&self, user: &UserId, written: Vec<Written>) {
        // A full queue skips the removal (see `RemovalQueue::forget`): delivered again later.
        self.inner.removals.forget(user, written.iter().map(Gone::written).collect());
    }

    pub async fn finish_removals(&self) {
        let _ = tokio::time::timeout(self.inner.timeout, self.inner.removals.barrier()).await;
    }

    pub async fn attach(&self, mailbox: &Mailbox) -> Result<(), Unavailable> {
        let this = &self.inner;
        // Removals this replica queued for earlier connections land before this one reads the
        // inbox, so a reconnecting client does not get again what it was just given.
        let _ = tokio::time::timeout(this.timeout, this.removals.barrier()).await;
        // Subscribe first, read later: a message stored after the subscription is announced
        // to us, one stored before it is in the backlog the session reads next.
        // Subscribing may take a few command timeouts on a cluster (subscribe, echo, once more).
        this.subscriptions.settle(&mailbox.user, this.timeout * 4).await?;
        let mut con = this.connections.cmd();
        let mut invocation = this.scripts.attach.prepare_invoke();
        invocation
            .key(this.keys.generation(&mailbox.user))
            .arg(this.keys.channel(&mailbox.user))
            .arg(this.limits.inbox_ttl_secs.saturating_mul(1000));
        let generation: u64 = this.timed(Command::Attach, invocation.invoke_async(&mut con)).await?;
        this.hub.set_generation(mailbox, generation);
        Ok(())
    }

    /// The message counter and the connection generation: both keys are in the user's slot,
    /// so one pipeline reads them, on a cluster too.
    pub async fn read_mark(&self, user: &UserId) -> Result<super::records::ReadMark, Unavailable> {
        let this = &self.inner;
        let mut con = this.connections.cmd();
        let mut pipe = redis::pipe();
        pipe.hget(this.keys.user(user), "seq").get(this.keys.generation(user));
        let (sequence, generation): (Option<u64>, Option<u64>) =
            this.timed(Command::ReadMark, pipe.query_async(&mut con)).await?;
        Ok(super::records::ReadMark { sequence: sequence.unwrap_or(0), generation })
    }

    pub fn release(&self, user: &UserId) {
        self.inner.subscriptions.settle_later(user);
    }

    pub async fn ready(&self) -> bool {
        let this = &self.inner;
        if !this.connections.is_up() {
            return false;
        }
        let mut con = this.connections.cmd();
        this.timed(Command::Ping, redis::cmd("PING").query_async::<()>(&mut con)).await.is_ok()
    }
}

/// The storage ledger's operations (`ledger`).
impl RedisEngine {
    /// Charges `want` bytes (negative: gives them back) to `holder`, if it then holds at most
    /// `allowed`; whether it did.
    pub async fn hold(&self, holder: &Holder<'_>, want: i64, allowed: u64) -> Result<bool, Unavailable> {
        let this = &self.inner;
        let key = self.inner.keys.ledger(holder);
        let now = crate::clock::unix_ms();
        // Stored bytes leave with their inbox's TTL; registrations with an inactive user's.
        let kept = match holder {
            Holder::Registrations(_) => this.limits.inactive_user_ttl_secs,
            _ => this.limits.inbox_ttl_secs,
        };
        let keep = kept.div_ceil(86_400) + 1;
        let mut invocation = this.scripts.hold.prepare_invoke();
        invocation
            .key(key)
            .arg(now / ledger::DAY_MS)
            .arg(keep)
            .arg(want)
            .arg(allowed)
            .arg((keep + 1).saturating_mul(ledger::DAY_MS));
        let mut con = this.connections.cmd();
        let reply: Vec<i64> = this.timed(Command::Hold, invocation.invoke_async(&mut con)).await?;
        let held = reply.first() == Some(&1);
        if held {
            // Counted as used until the next sample, so a burst of leases cannot outrun it.
            this.pressure.add(want.max(0) as u64);
        }
        Ok(held)
    }

    /// Gives `bytes` back from `holder` (a lease left unspent): the release script, which runs on
    /// a full Redis too.
    pub async fn give_back(&self, holder: &Holder<'_>, bytes: u64) {
        let key = self.inner.keys.ledger(holder);
        let day = format!("d{}", crate::clock::unix_ms() / ledger::DAY_MS);
        ledger::apply(&self.inner.connections, &[(key, day, -(bytes as i64))]).await;
    }

    /// What the store holds now, as last sampled.
    pub fn pressure(&self) -> &Pressure {
        &self.inner.pressure
    }
}

impl Inner {
    async fn timed<T>(&self, command: Command, fut: impl Future<Output = RedisResult<T>>) -> Result<T, Unavailable> {
        timed(command, self.timeout, fut).await
    }
}

fn parse_indexed(user: &str) -> Result<UserId, Unavailable> {
    UserId::parse(user).ok_or_else(|| Unavailable::said(format!("key index holds a malformed user id {user:?}")))
}
