//! The Redis engine: any number of replicas share one Redis and act as one server.
//!
//! Keys (every per-user key carries the user id as a `{hash tag}`, so one user's record,
//! inbox, channel and connection counter live in one Redis Cluster slot):
//!
//! | key                        | type    | what                                          |
//! |----------------------------|---------|-----------------------------------------------|
//! | `<p>user:{uid}`            | HASH    | `publicKey`, `createdAt`                      |
//! | `<p>pk:<sha256(key)>`      | STRING  | uid; makes login idempotent (`SET NX GET`)    |
//! | `<p>inbox:{uid}`           | STREAM  | accepted envelopes (field `e`) until removed  |
//! | `<p>conn:{uid}`            | STRING  | connection generation counter (takeover)      |
//! | `<p>deliver:{uid}`         | channel | doorbell: `m<id>\n<envelope>` or `t<generation>` |
//!
//! A send is one script: check the recipient, check the inbox's room, XADD, refresh the TTL,
//! PUBLISH: stored and announced, or refused, never announced without being stored.
//! Subscriptions run on their own RESP3 connection whose pushes go straight into the hub.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::StreamRangeReply;
use redis::{AsyncCommands, ProtocolVersion, PushInfo, PushKind, RedisResult, Script, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc, oneshot};

use super::{SendError, Unavailable};
use crate::config::{Limits, Settings};
use crate::hub::{Hub, Link};
use crate::protocol::{Delivery, MsgId, UserId};

/// Appends an envelope to the recipient's inbox and rings its doorbell, in one step.
/// KEYS: user record, inbox, channel. ARGV: envelope, capacity, ttl (ms).
/// Returns the stream id, -1 for an unknown recipient, -2 for a full inbox.
const SEND_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[2]) then return -2 end
local id = redis.call('XADD', KEYS[2], '*', 'e', ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PUBLISH', KEYS[3], 'm' .. id .. '\n' .. ARGV[1])
return id
"#;

/// Claims the next connection generation of a user and announces it, so that older
/// connections on every replica end. KEYS: counter, channel. ARGV: ttl (ms).
const ATTACH_SCRIPT: &str = r#"
local generation = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PUBLISH', KEYS[2], 't' .. generation)
return generation
"#;

/// Channels per SUBSCRIBE command when many users are (re)subscribed at once.
const SUBSCRIBE_CHUNK: usize = 1000;

#[derive(Clone)]
pub struct RedisEngine {
    inner: Arc<Inner>,
}

struct Inner {
    hub: Arc<Hub>,
    keys: Keys,
    limits: Limits,
    timeout: Duration,
    cmd: ConnectionManager,
    pubsub: ConnectionManager,
    subscriptions: mpsc::UnboundedSender<SubRequest>,
    link_up: Arc<AtomicBool>,
    send_script: Script,
    attach_script: Script,
}

#[derive(Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn user(&self, user: &UserId) -> String {
        format!("{}user:{{{user}}}", self.prefix)
    }
    fn inbox(&self, user: &UserId) -> String {
        format!("{}inbox:{{{user}}}", self.prefix)
    }
    fn generation(&self, user: &UserId) -> String {
        format!("{}conn:{{{user}}}", self.prefix)
    }
    fn channel(&self, user: &UserId) -> String {
        format!("{}deliver:{{{user}}}", self.prefix)
    }
    fn key_index(&self, public_key: &str) -> String {
        let digest = Sha256::digest(public_key.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}pk:{hex}", self.prefix)
    }
    /// The user of a doorbell channel name, if it is one of ours.
    fn channel_user(&self, channel: &[u8]) -> Option<UserId> {
        let rest = channel.strip_prefix(self.prefix.as_bytes())?.strip_prefix(b"deliver:{")?;
        let uid = rest.strip_suffix(b"}")?;
        UserId::parse(std::str::from_utf8(uid).ok()?)
    }
}

enum SubRequest {
    /// Bring the user's subscription in line with the hub; answer once it is.
    Sync(UserId, Option<oneshot::Sender<Result<(), Unavailable>>>),
    /// Subscribe every user the hub holds again (after the link was down).
    All(oneshot::Sender<Result<(), Unavailable>>),
}

impl RedisEngine {
    pub async fn connect(settings: &Settings, hub: Arc<Hub>) -> Result<Self, Unavailable> {
        let url = settings.redis_url().expect("redis engine needs redis.url");
        let timeout = Duration::from_millis(settings.redis.command_timeout_ms);
        let keys = Keys { prefix: settings.redis.prefix.clone() };
        let unavailable = |e: redis::RedisError| Unavailable(e.to_string());

        let client = redis::Client::open(url).map_err(unavailable)?;
        let info = client.get_connection_info().clone();
        let resp3 = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
        let pubsub_client = redis::Client::open(info.set_redis_settings(resp3)).map_err(unavailable)?;

        let config = || {
            ConnectionManagerConfig::new()
                .set_response_timeout(Some(timeout))
                .set_connection_timeout(Some(timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(2))
        };
        let cmd = retry_connect(|| client.get_connection_manager_with_config(config())).await?;

        let disconnected = Arc::new(Notify::new());
        let push_sender = {
            let (hub, keys, disconnected) = (hub.clone(), keys.clone(), disconnected.clone());
            move |info: PushInfo| {
                match info.kind {
                    PushKind::Message => on_message(&hub, &keys, info.data),
                    PushKind::Disconnection => disconnected.notify_one(),
                    _ => {}
                }
                Ok::<(), redis::aio::SendError>(())
            }
        };
        let pubsub = retry_connect(|| {
            pubsub_client.get_connection_manager_with_config(
                config().set_push_sender(push_sender.clone()).set_automatic_resubscription(),
            )
        })
        .await?;

        let (subscriptions, requests) = mpsc::unbounded_channel();
        let link_up = Arc::new(AtomicBool::new(true));
        tokio::spawn(subscriber(pubsub.clone(), hub.clone(), keys.clone(), requests));
        tokio::spawn(reconnect_monitor(
            pubsub.clone(),
            subscriptions.clone(),
            hub.clone(),
            link_up.clone(),
            disconnected,
            timeout,
        ));

        Ok(Self {
            inner: Arc::new(Inner {
                hub,
                keys,
                limits: settings.limits.clone(),
                timeout,
                cmd,
                pubsub,
                subscriptions,
                link_up,
                send_script: Script::new(SEND_SCRIPT),
                attach_script: Script::new(ATTACH_SCRIPT),
            }),
        })
    }

    pub async fn login(&self, public_key: &str) -> Result<UserId, Unavailable> {
        let this = &self.inner;
        let index = this.keys.key_index(public_key);
        let mut con = this.cmd.clone();
        let existing: Option<String> = this.timed(con.get(&index)).await?;
        if let Some(user) = existing {
            return parse_indexed(&user);
        }
        // Create the record first, then claim the key: whoever claims it first wins, and a
        // loser's record (never announced to anyone) is removed again.
        let user = UserId::random();
        let record = this.keys.user(&user);
        let created = super::memory::unix_ms();
        let mut pipe = redis::pipe();
        pipe.hset_multiple(&record, &[("publicKey", public_key), ("createdAt", &created.to_string())])
            .ignore()
            .cmd("SET")
            .arg(&index)
            .arg(user.as_str())
            .arg("NX")
            .arg("GET");
        let (previous,): (Option<String>,) = this.timed(pipe.query_async(&mut con)).await?;
        match previous {
            None => Ok(user),
            Some(winner) => {
                let _: RedisResult<()> = con.del(&record).await;
                parse_indexed(&winner)
            }
        }
    }

    pub async fn public_key(&self, user: &UserId) -> Result<Option<String>, Unavailable> {
        let mut con = self.inner.cmd.clone();
        self.inner.timed(con.hget(self.inner.keys.user(user), "publicKey")).await
    }

    pub async fn send(&self, to: &UserId, envelope: Bytes) -> Result<MsgId, SendError> {
        let this = &self.inner;
        let mut con = this.cmd.clone();
        let mut invocation = this.send_script.prepare_invoke();
        invocation
            .key(this.keys.user(to))
            .key(this.keys.inbox(to))
            .key(this.keys.channel(to))
            .arg(envelope.as_ref())
            .arg(this.limits.inbox_capacity)
            .arg(this.limits.inbox_ttl_secs.saturating_mul(1000));
        let reply: Value = this.timed(invocation.invoke_async(&mut con)).await?;
        match reply {
            Value::Int(-1) => Err(SendError::UserNotFound),
            Value::Int(-2) => Err(SendError::InboxFull),
            Value::BulkString(id) => parse_id(&id).ok_or_else(|| Unavailable("unexpected stream id".into()).into()),
            Value::SimpleString(id) => {
                parse_id(id.as_bytes()).ok_or_else(|| Unavailable("unexpected stream id".into()).into())
            }
            other => Err(Unavailable(format!("unexpected reply to send: {other:?}")).into()),
        }
    }

    pub async fn backlog(
        &self,
        user: &UserId,
        after: Option<MsgId>,
        limit: usize,
    ) -> Result<Vec<Delivery>, Unavailable> {
        let mut con = self.inner.cmd.clone();
        let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let reply: StreamRangeReply =
            self.inner.timed(con.xrange_count(self.inner.keys.inbox(user), start, "+", limit)).await?;
        Ok(reply
            .ids
            .into_iter()
            .filter_map(|entry| {
                let id: MsgId = entry.id.parse().ok()?;
                let envelope = match entry.map.into_iter().find(|(field, _)| field == "e")?.1 {
                    Value::BulkString(bytes) => Bytes::from(bytes),
                    _ => return None,
                };
                Some(Delivery { id, ts: id.ms, envelope })
            })
            .collect())
    }

    pub async fn remove(&self, user: &UserId, ids: &[MsgId]) -> Result<(), Unavailable> {
        let mut con = self.inner.cmd.clone();
        let ids: Vec<String> = ids.iter().map(MsgId::to_string).collect();
        let _: usize = self.inner.timed(con.xdel(self.inner.keys.inbox(user), &ids)).await?;
        Ok(())
    }

    pub async fn attach(&self, link: &Link) -> Result<(), Unavailable> {
        let this = &self.inner;
        // Subscribe first, read later: a message stored after the subscription is announced
        // to us, one stored before it is in the backlog the session reads next.
        let (done, subscribed) = oneshot::channel();
        let _ = this.subscriptions.send(SubRequest::Sync(link.user.clone(), Some(done)));
        match tokio::time::timeout(this.timeout * 2, subscribed).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => return Err(Unavailable("subscriber stopped".into())),
            Err(_) => return Err(Unavailable("subscribe timed out".into())),
        }
        let mut con = this.cmd.clone();
        let mut invocation = this.attach_script.prepare_invoke();
        invocation
            .key(this.keys.generation(&link.user))
            .key(this.keys.channel(&link.user))
            .arg(this.limits.inbox_ttl_secs.saturating_mul(1000));
        let generation: u64 = this.timed(invocation.invoke_async(&mut con)).await?;
        this.hub.set_generation(link, generation);
        Ok(())
    }

    pub fn detach(&self, link: &Link) {
        if self.inner.hub.unregister(link) {
            let _ = self.inner.subscriptions.send(SubRequest::Sync(link.user.clone(), None));
        }
    }

    pub async fn ready(&self) -> bool {
        let this = &self.inner;
        if !this.link_up.load(Ordering::Acquire) {
            return false;
        }
        let mut cmd = this.cmd.clone();
        let mut pubsub = this.pubsub.clone();
        let ping = redis::cmd("PING");
        let (a, b) = tokio::join!(
            this.timed(ping.query_async::<()>(&mut cmd)),
            this.timed(ping.query_async::<()>(&mut pubsub)),
        );
        a.is_ok() && b.is_ok()
    }
}

impl Inner {
    async fn timed<T>(&self, fut: impl Future<Output = RedisResult<T>>) -> Result<T, Unavailable> {
        timed(self.timeout, fut).await
    }
}

async fn timed<T>(limit: Duration, fut: impl Future<Output = RedisResult<T>>) -> Result<T, Unavailable> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Unavailable(e.to_string())),
        Err(_) => Err(Unavailable(format!("no answer from Redis within {limit:?}"))),
    }
}

fn parse_id(raw: &[u8]) -> Option<MsgId> {
    std::str::from_utf8(raw).ok()?.parse().ok()
}

fn parse_indexed(user: &str) -> Result<UserId, Unavailable> {
    UserId::parse(user).ok_or_else(|| Unavailable(format!("key index holds a malformed user id {user:?}")))
}

/// The first connection may take a while (Redis starting next to us): retry with backoff.
async fn retry_connect<F, Fut>(mut connect: F) -> Result<ConnectionManager, Unavailable>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = RedisResult<ConnectionManager>>,
{
    let mut delay = Duration::from_millis(100);
    for attempt in 1.. {
        match connect().await {
            Ok(con) => return Ok(con),
            Err(e) if attempt >= 8 => return Err(Unavailable(e.to_string())),
            Err(e) => {
                tracing::warn!(error = %e, attempt, "Redis not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    unreachable!()
}

/// A pub/sub push: a stored message (`m<id>\n<envelope>`) or a takeover (`t<generation>`).
fn on_message(hub: &Hub, keys: &Keys, data: Vec<Value>) {
    let mut data = data.into_iter();
    let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) = (data.next(), data.next()) else {
        return;
    };
    let Some(user) = keys.channel_user(&channel) else { return };
    match payload.first() {
        Some(b'm') => {
            let Some(newline) = payload.iter().position(|&b| b == b'\n') else { return };
            let Some(id) = parse_id(&payload[1..newline]) else { return };
            let envelope = Bytes::from(payload).slice(newline + 1..);
            hub.deliver(&user, Delivery { id, ts: id.ms, envelope });
        }
        Some(b't') => {
            if let Some(generation) = std::str::from_utf8(&payload[1..]).ok().and_then(|g| g.parse().ok()) {
                hub.takeover(&user, generation);
            }
        }
        _ => {}
    }
}

/// Owns the subscription state of this replica. Requests are handled in order, in batches,
/// and each is decided from the hub's state at that moment, so a subscribe and an
/// unsubscribe of the same user can never overtake each other.
async fn subscriber(
    pubsub: ConnectionManager,
    hub: Arc<Hub>,
    keys: Keys,
    mut requests: mpsc::UnboundedReceiver<SubRequest>,
) {
    let mut subscribed: HashSet<UserId> = HashSet::new();
    let mut batch = Vec::new();
    while requests.recv_many(&mut batch, SUBSCRIBE_CHUNK).await > 0 {
        let mut users = HashSet::new();
        let mut waiters = Vec::new();
        let mut everyone = false;
        for request in batch.drain(..) {
            match request {
                SubRequest::Sync(user, waiter) => {
                    users.insert(user);
                    waiters.extend(waiter);
                }
                SubRequest::All(waiter) => {
                    everyone = true;
                    waiters.push(waiter);
                }
            }
        }
        let mut to_subscribe = Vec::new();
        let mut to_unsubscribe = Vec::new();
        if everyone {
            subscribed.clear();
            users.extend(hub.users());
        }
        for user in users {
            match (hub.is_registered(&user), subscribed.contains(&user)) {
                (true, false) => to_subscribe.push(user),
                (false, true) => to_unsubscribe.push(user),
                _ => {}
            }
        }
        let mut con = pubsub.clone();
        let mut result = Ok(());
        for chunk in to_subscribe.chunks(SUBSCRIBE_CHUNK) {
            let channels: Vec<String> = chunk.iter().map(|u| keys.channel(u)).collect();
            match con.subscribe(&channels).await {
                Ok(()) => subscribed.extend(chunk.iter().cloned()),
                Err(e) => result = Err(Unavailable(format!("subscribe failed: {e}"))),
            }
        }
        for chunk in to_unsubscribe.chunks(SUBSCRIBE_CHUNK) {
            let channels: Vec<String> = chunk.iter().map(|u| keys.channel(u)).collect();
            for user in chunk {
                subscribed.remove(user);
            }
            if let Err(e) = con.unsubscribe(&channels).await {
                // A stale subscription only brings doorbells the hub ignores.
                tracing::warn!(error = %e, "unsubscribe failed");
            }
        }
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }
}

/// After the subscription link drops: wait until Redis answers again, subscribe every local
/// user again, then have every session re-read its inbox (announcements made while the link
/// was down are gone; the inboxes are not).
async fn reconnect_monitor(
    pubsub: ConnectionManager,
    subscriptions: mpsc::UnboundedSender<SubRequest>,
    hub: Arc<Hub>,
    link_up: Arc<AtomicBool>,
    disconnected: Arc<Notify>,
    timeout: Duration,
) {
    loop {
        disconnected.notified().await;
        link_up.store(false, Ordering::Release);
        tracing::warn!("Redis subscription link lost; reconnecting");
        let mut delay = Duration::from_millis(50);
        loop {
            let mut con = pubsub.clone();
            if timed(timeout, redis::cmd("PING").query_async::<()>(&mut con)).await.is_ok() {
                let (done, resubscribed) = oneshot::channel();
                if subscriptions.send(SubRequest::All(done)).is_err() {
                    return; // engine dropped
                }
                if matches!(resubscribed.await, Ok(Ok(()))) {
                    break;
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        link_up.store(true, Ordering::Release);
        hub.resync_all();
        tracing::info!(users = hub.len(), "Redis subscription link restored; sessions resynchronised");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_user_as_hash_tag() {
        let keys = Keys { prefix: "t:".into() };
        let user = UserId::random();
        assert_eq!(keys.inbox(&user), format!("t:inbox:{{{user}}}"));
        assert_eq!(keys.channel_user(keys.channel(&user).as_bytes()), Some(user.clone()));
        assert_eq!(keys.channel_user(b"other:deliver:{x}"), None);
        assert!(keys.key_index("abc").starts_with("t:pk:"));
        assert_eq!(keys.key_index("abc").len(), "t:pk:".len() + 64);
    }
}
