//! Sentinel discovery: connects to the master the Sentinels name, and remembers which master
//! each connection reached, so the link can tell when a failover moved it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::RedisResult;
use redis::aio::ConnectionManagerConfig;

use super::super::unavailable::Unavailable;
use super::conn::{Conn, with_resp3};
use crate::config::Settings;

/// Which of a replica's two connections, as an index into `SentinelConnector::reached`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Commands = 0,
    Subscriptions = 1,
}

pub(super) struct SentinelConnector {
    sentinel: tokio::sync::Mutex<redis::sentinel::Sentinel>,
    /// The Sentinels, for the link's "which master now?", and a connection to each once
    /// made.
    sentinels: Vec<redis::Client>,
    asked: tokio::sync::Mutex<Vec<Option<redis::aio::MultiplexedConnection>>>,
    /// The Sentinel that answered last (asked first next time).
    answered: AtomicUsize,
    master: String,
    /// Credentials and database for the master (those of the first Sentinel URL).
    node: redis::sentinel::SentinelNodeConnectionInfo,
    /// The master's address the command and the subscription connection were made for.
    reached: Mutex<[Option<String>; 2]>,
}

impl SentinelConnector {
    pub(super) fn from_settings(settings: &Settings) -> Result<Self, Unavailable> {
        let unavailable = Unavailable::from;
        // The URLs' credentials and database are the master's; a Sentinel has no
        // databases, so it is asked with database 0.
        let mut node = None;
        let mut sentinels = Vec::new();
        for url in settings.redis_urls() {
            let info = redis::Client::open(url).map_err(unavailable)?.get_connection_info().clone();
            node.get_or_insert_with(|| info.redis_settings().clone());
            let db0 = info.redis_settings().clone().set_db(0);
            sentinels.push(redis::Client::open(info.set_redis_settings(db0)).map_err(unavailable)?);
        }
        let node = node.ok_or_else(|| Unavailable::said("redis.url names no Sentinel"))?;
        let infos = sentinels.iter().map(|c| c.get_connection_info().clone()).collect();
        Ok(SentinelConnector {
            sentinel: tokio::sync::Mutex::new(redis::sentinel::Sentinel::build(infos).map_err(unavailable)?),
            asked: tokio::sync::Mutex::new(sentinels.iter().map(|_| None).collect()),
            answered: AtomicUsize::default(),
            sentinels,
            master: settings.redis.sentinel_master.trim().to_owned(),
            node: redis::sentinel::SentinelNodeConnectionInfo::default().set_redis_connection_info(node),
            reached: Mutex::default(),
        })
    }

    /// A client for the current master (Sentinel's answer, checked with `ROLE` on the master).
    async fn master(&self) -> RedisResult<redis::Client> {
        self.sentinel.lock().await.async_master_for(&self.master, Some(&self.node)).await
    }

    pub(super) async fn connect(&self, role: Role, config: ConnectionManagerConfig) -> RedisResult<Conn> {
        let mut client = self.master().await?;
        let address = client.get_connection_info().addr().to_string();
        if role == Role::Subscriptions {
            client = with_resp3(&client)?;
        }
        let con = client.get_connection_manager_with_config(config).await?;
        self.reached.lock().unwrap_or_else(|e| e.into_inner())[role as usize] = Some(address);
        Ok(Conn::Single(con))
    }

    /// The master's address, if the Sentinels now name another one than a connection reached:
    /// one `SENTINEL GET-MASTER-ADDR-BY-NAME` on a kept connection (cheap enough for every
    /// tick), and only when that differs, the full lookup that also checks `ROLE` on the master
    /// (so a Sentinel with a stale view does not move the connections back and forth).
    pub(super) async fn moved(&self, timeout: Duration) -> RedisResult<Option<String>> {
        let reached = self.reached.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let differs = |address: &str| reached.iter().any(|r| r.as_deref() != Some(address));
        if !differs(&self.named_master(timeout).await?) {
            return Ok(None);
        }
        let address = self.master().await?.get_connection_info().addr().to_string();
        Ok(differs(&address).then_some(address))
    }

    /// The master's address as the first Sentinel that answers names it, starting with the one
    /// that answered last; each gets an equal share of `timeout`, so a hung one cannot use it up.
    async fn named_master(&self, timeout: Duration) -> RedisResult<String> {
        let share = (timeout / self.sentinels.len().max(1) as u32).max(Duration::from_millis(50));
        let config =
            redis::AsyncConnectionConfig::new().set_connection_timeout(Some(share)).set_response_timeout(Some(share));
        let mut asked = self.asked.lock().await;
        let count = self.sentinels.len();
        let first = self.answered.load(Ordering::Relaxed);
        let mut last_error = None;
        for i in (0..count).map(|k| (first + k) % count) {
            // Taken out while in use: a connection that fails (or hangs past the share) is
            // dropped, not kept for the next tick.
            let con = match asked[i].take() {
                Some(con) => Ok(con),
                None => self.sentinels[i].get_multiplexed_async_connection_with_config(&config).await,
            };
            let mut con = match con {
                Ok(con) => con,
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            let mut ask = redis::cmd("SENTINEL");
            ask.arg("GET-MASTER-ADDR-BY-NAME").arg(&self.master);
            let answer = tokio::time::timeout(share, ask.query_async::<Option<(String, u16)>>(&mut con)).await;
            match answer {
                Ok(Ok(Some((host, port)))) => {
                    asked[i] = Some(con);
                    self.answered.store(i, Ordering::Relaxed);
                    return Ok(format!("{host}:{port}"));
                }
                Ok(Ok(None)) => {
                    asked[i] = Some(con);
                    last_error = Some(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "the Sentinel does not know the master",
                        self.master.clone(),
                    )));
                }
                Ok(Err(e)) => last_error = Some(e),
                Err(_) => last_error = Some((redis::ErrorKind::Io, "no answer from the Sentinel").into()),
            }
        }
        Err(last_error.unwrap_or_else(|| (redis::ErrorKind::Client, "no Sentinel configured").into()))
    }
}
