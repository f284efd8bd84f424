//! The socket loop: one `select!` over kicks, client frames, catching up (when the session
//! fell behind, or to retry a failed catch-up), live deliveries and pings. It moves bytes: what
//! a delivery means and when to catch up is the cursor's decision, what a client frame asks is
//! `requests`' business.
//!
//! Deliveries are ordered and de-duplicated by inbox id: the backlog is read after the doorbell
//! is subscribed, and live notifications at or below the last id sent are skipped.

use std::future::Future;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, Utf8Bytes};
use futures_util::SinkExt;

use super::Session;
use super::closing::Closing;
use super::cursor::Decision;
use crate::engine::Written;
use crate::hub::{Kick, Mailbox};
use crate::protocol::Delivery;
use crate::telemetry::{self, metric};

/// Inbox entries read per round trip while catching up.
const BACKLOG_PAGE: usize = 256;
/// Queued live deliveries written before one flush.
const WRITE_BATCH: usize = 64;

/// How a delivery reached the session (a metrics label).
#[derive(Debug, Clone, Copy)]
enum Path {
    Live,
    Backlog,
}

impl Session {
    pub(super) async fn run(&mut self) -> Closing {
        match Box::pin(self.catch_up()).await {
            Ok(backlog) => metrics::histogram!(metric::BACKLOG_ON_CONNECT).record(backlog as f64),
            Err(closing) => return closing,
        }
        let server = &self.state.settings.server;
        let (ping_every, idle_timeout) = (server.ping_interval(), server.idle_timeout());
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        let mailbox = self.mailbox.clone();
        // Built once, not on every turn of the loop (this loop runs once per message).
        let mut kicked = std::pin::pin!(mailbox.kicked());
        let mut fell_behind = std::pin::pin!(mailbox.fell_behind());
        // Armed for the cursor's retry time whenever that changes.
        let mut retry = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        let mut retry_armed = None;
        loop {
            if let Some(at) = self.cursor.retry_at()
                && retry_armed != Some(at)
            {
                retry.as_mut().reset(at);
                retry_armed = Some(at);
            }
            let step = tokio::select! {
                // Biased: catching up must run before any later live delivery, or a delivery
                // could overtake one whose doorbell was missed.
                biased;
                kick = &mut kicked => Err(Closing::kicked(kick)),
                frame = self.socket.recv() => match frame {
                    Some(Ok(message)) => {
                        self.last_seen = Instant::now();
                        // Boxed: its state (an engine call) would otherwise sit in every idle
                        // socket's task.
                        Box::pin(self.on_frames(message)).await
                    }
                    Some(Err(e)) => Err(Closing::from_read_error(e)),
                    None => Err(Closing::PeerGone),
                },
                _ = &mut fell_behind => {
                    fell_behind.set(mailbox.fell_behind());
                    Box::pin(self.catch_up()).await.map(drop)
                }
                _ = &mut retry, if self.cursor.retry_at().is_some() => Box::pin(self.catch_up()).await.map(drop),
                // Boxed, like the steps above and the ping below: the largest step's state is
                // reserved in every idle socket's task, so only the select stays inline.
                delivery = mailbox.next() => Box::pin(self.forward_live(delivery)).await,
                _ = ping.tick() => {
                    if self.last_seen.elapsed() > idle_timeout {
                        Err(Closing::Idle)
                    } else {
                        Box::pin(self.feed(Message::Ping(Default::default()))).await
                    }
                }
            };
            let step = match step {
                Ok(()) => self.flush().await,
                Err(closing) => Err(closing),
            };
            if let Err(closing) = step {
                return closing;
            }
        }
    }

    /// Catches up: reads the inbox after the last id sent, then forwards what is still queued
    /// only if the session did not fall behind meanwhile (otherwise the next catch-up gets it).
    /// A takeover announced while doorbells were being missed may have been missed too: the
    /// generation is checked.
    async fn catch_up(&mut self) -> Result<usize, Closing> {
        // What fell behind until now, this catch-up covers.
        self.mailbox.take_fell_behind();
        let state = match self.state.engine.read_mark(&self.user).await {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the inbox state; will retry");
                self.cursor.catch_up_failed(tokio::time::Instant::now());
                return Ok(0);
            }
        };
        if let Some(newest) = state.generation {
            self.state.hub.takeover(&self.user, newest); // no-op unless newer than ours
        }
        let Some(sent) = self.read_backlog().await? else {
            self.cursor.catch_up_failed(tokio::time::Instant::now());
            return Ok(0);
        };
        self.cursor.caught_up(state.sequence);
        while let Some(delivery) = self.mailbox.try_next() {
            self.forward(delivery, Path::Live).await?;
        }
        self.flush().await?;
        Ok(sent)
    }

    /// Sends everything stored after the last id sent; returns how many messages that was, or
    /// `None` if the inbox could not be read.
    async fn read_backlog(&mut self) -> Result<Option<usize>, Closing> {
        let mut sent = 0;
        loop {
            if let Some(kick) = self.mailbox.is_kicked() {
                return Err(Closing::kicked(kick));
            }
            let after = self.cursor.read_after();
            let page = match self.state.engine.backlog(&self.user, after, BACKLOG_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read backlog; will retry");
                    return Ok(None);
                }
            };
            let full = page.len() == BACKLOG_PAGE;
            sent += page.len();
            for delivery in page {
                self.forward(delivery, Path::Backlog).await?;
            }
            self.flush().await?;
            if !full {
                return Ok(Some(sent));
            }
        }
    }

    /// Writes a delivery if the cursor lets it through.
    async fn forward(&mut self, delivery: Delivery, path: Path) -> Result<(), Closing> {
        let decision = match path {
            Path::Backlog => self.cursor.backlog(&delivery),
            Path::Live => {
                // Queued deliveries may sit behind a gap the hub noticed.
                if self.mailbox.take_fell_behind() {
                    self.cursor.fall_behind();
                }
                self.cursor.live(&delivery)
            }
        };
        match decision {
            Decision::Send => {}
            Decision::Skip | Decision::HoldBack => return Ok(()),
            Decision::CatchUp => {
                self.mailbox.fall_behind(); // wakes the loop to catch up
                return Ok(());
            }
        }
        let hot = telemetry::hot();
        match path {
            Path::Live => hot.delivered_live.increment(1),
            Path::Backlog => hot.delivered_backlog.increment(1),
        }
        // Envelopes are JSON the server itself serialized: always UTF-8.
        let Ok(text) = Utf8Bytes::try_from(delivery.frame(self.acknowledging)) else {
            tracing::error!(id = %delivery.id, "stored envelope is not UTF-8; skipped");
            return Ok(());
        };
        self.written.push(Written { id: delivery.id, envelope: delivery.envelope });
        self.feed(Message::Text(text)).await
    }

    /// A live delivery, and whatever else is queued behind it (one flush for all of them).
    async fn forward_live(&mut self, first: Delivery) -> Result<(), Closing> {
        let mut next = Some(first);
        let mut count = 0;
        while let Some(delivery) = next {
            if let Some(kick) = self.mailbox.is_kicked() {
                return Err(Closing::kicked(kick));
            }
            self.forward(delivery, Path::Live).await?;
            count += 1;
            next = if count < WRITE_BATCH { self.mailbox.try_next() } else { None };
        }
        Ok(())
    }

    /// Hands a frame to the socket's buffer (written out by `flush`, or earlier when full).
    pub(super) async fn feed(&mut self, message: Message) -> Result<(), Closing> {
        self.unflushed = true;
        if let Some(deadline) = self.ending {
            // The session has ended (a kick is why): answers wait for room until the deadline.
            // Boxed: it happens once, at the end; inline, its timer would sit in every idle task.
            return match Box::pin(tokio::time::timeout_at(deadline, self.socket.feed(message))).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) | Err(_) => Err(Closing::PeerGone),
            };
        }
        let mailbox = self.mailbox.clone();
        match bounded_unless_kicked(self.send_timeout, self.socket.feed(message), &mailbox).await {
            Waited::Done(Ok(())) => Ok(()),
            Waited::Done(Err(_)) => Err(Closing::PeerGone),
            Waited::TimedOut => Err(Closing::slow_consumer()),
            Waited::Kicked(kick) => Err(Closing::kicked(kick)),
        }
    }

    /// Writes out what was fed. A spec client cannot acknowledge, so what was written to its
    /// socket leaves the inbox now; if the write fails, it stays and comes again next time.
    async fn flush(&mut self) -> Result<(), Closing> {
        if !self.unflushed {
            return Ok(());
        }
        let mailbox = self.mailbox.clone();
        match bounded_unless_kicked(self.send_timeout, self.socket.flush(), &mailbox).await {
            Waited::Done(Ok(())) => self.unflushed = false,
            Waited::Done(Err(_)) => return Err(Closing::PeerGone),
            Waited::TimedOut => return Err(Closing::slow_consumer()),
            Waited::Kicked(kick) => return Err(Closing::kicked(kick)),
        }
        if self.written.is_empty() {
            return Ok(());
        }
        // Inbox ids carry the acceptance time (ms), so latency needs no extra bookkeeping.
        let now = crate::clock::unix_ms();
        let latency = &telemetry::hot().delivery_latency;
        for written in &self.written {
            latency.record(now.saturating_sub(written.id.ms) as f64 / 1000.0);
        }
        if self.acknowledging {
            self.written.clear();
        } else {
            self.state.engine.forget_delivered(&self.user, std::mem::take(&mut self.written));
        }
        Ok(())
    }
}

enum Waited<T> {
    Done(T),
    TimedOut,
    Kicked(Kick),
}

/// Runs `fut` to completion unless it takes longer than `limit` or the session is kicked: a
/// socket blocked on a slow reader must not hold up a takeover or a shutdown. Polled once
/// before any timer is armed: the common case (a socket with room) costs no timer at all. The
/// wait for room (a timer and a kick listener) is boxed: inline, it would be reserved in every
/// idle socket's task.
async fn bounded_unless_kicked<F: Future>(limit: Duration, fut: F, mailbox: &Mailbox) -> Waited<F::Output> {
    let mut fut = std::pin::pin!(fut);
    tokio::select! {
        biased;
        out = &mut fut => return Waited::Done(out),
        _ = std::future::ready(()) => {}
    }
    Box::pin(async move {
        tokio::select! {
            waited = tokio::time::timeout(limit, fut) => match waited {
                Ok(out) => Waited::Done(out),
                Err(_) => Waited::TimedOut,
            },
            kick = mailbox.kicked() => Waited::Kicked(kick),
        }
    })
    .await
}
