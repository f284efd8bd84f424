//! An acknowledged WebSocket connection that survives reconnects without losing or
//! duplicating a message.
//!
//! A [`Connection`] runs two tasks:
//! - the *driver* owns the socket. It writes sends (each with a `ref`) and acknowledgements,
//!   matches receipts and error frames to the waiting senders, answers liveness with pings,
//!   and on a lost connection reconnects with exponential backoff and jitter, then replays
//!   every send that got neither a receipt nor an error (the recipient drops the duplicate by
//!   the message id inside the sealed payload). The close codes for "replaced" and "unknown
//!   user" stop it for good: reconnecting would fight the newer connection, or fail forever.
//! - the *opener* takes deliveries in order, fetches the sender's key (cached), opens the
//!   payload, hands the message to the application and only then acknowledges it. Messages
//!   the server redelivers after a reconnect are recognised by inbox id and not handed out
//!   twice. A payload that cannot be opened is reported as an error item and acknowledged,
//!   since it would otherwise come back on every connection forever.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use reqwest::Url;
use serde_json::value::to_raw_value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::channels::{Command, FromServer, Stop, backoff};
use super::client::{Client, Socket};
use super::crypto::{Content, PublicKey};
use super::driver::Driver;
use super::error::{Error, OpenError};
use crate::protocol::{ClientFrame, SendFrame};

pub use super::channels::{ConnectOptions, Status};
/// The WebSocket subprotocol of acknowledged delivery (`docs/protocol.md`).
pub use crate::protocol::SUBPROTOCOL_V1 as SUBPROTOCOL;

/// A decrypted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Position in the recipient's inbox, assigned by the server (what [`Connection::ack`] takes).
    pub id: String,
    /// When the server accepted it, in milliseconds since the Unix epoch.
    pub ts: u64,
    pub from: String,
    pub text: String,
    /// The sender's id for the message (the same for every retry of one send).
    pub message_id: String,
    /// When the sender sealed it, by the sender's clock.
    pub sent_at: u64,
}

/// The server's confirmation that a message is stored in the recipient's inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Inbox id the server assigned.
    pub id: String,
    /// The id sealed inside the payload.
    pub message_id: String,
}

/// Sends messages over a [`Connection`]. Cheap to clone, usable from many tasks at once.
#[derive(Clone)]
pub struct Sender {
    client: Client,
    user: Arc<str>,
    commands: mpsc::UnboundedSender<Command>,
    seq: Arc<AtomicU64>,
    stopped: Arc<OnceLock<Stop>>,
    send_timeout: Duration,
    max_payload_bytes: usize,
}

impl Sender {
    /// Seals `text` for `to` and sends it; returns once the server has stored it. Within
    /// `send_timeout` it rides out an unreachable server: the recipient's key lookup is
    /// retried, and the send is repeated on each new socket until it is answered.
    pub async fn send(&self, to: &str, text: &str) -> Result<Receipt, Error> {
        let deadline = tokio::time::Instant::now() + self.send_timeout;
        let content = Content::new(text);
        let mut attempt = 0;
        let payload = loop {
            match self.client.seal(&self.user, to, &content).await {
                Ok(payload) => break payload,
                Err(e) if e.is_retryable() => {
                    let delay = backoff(attempt, Duration::from_millis(250), Duration::from_secs(5));
                    attempt += 1;
                    if tokio::time::Instant::now() + delay >= deadline {
                        return Err(e);
                    }
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        };
        let id = self.send_sealed(to, payload, deadline).await?;
        Ok(Receipt { id, message_id: content.id })
    }

    /// Sends an already sealed payload and returns its inbox id once stored.
    pub async fn send_payload(&self, to: &str, payload: String) -> Result<String, Error> {
        self.send_sealed(to, payload, tokio::time::Instant::now() + self.send_timeout).await
    }

    async fn send_sealed(&self, to: &str, payload: String, deadline: tokio::time::Instant) -> Result<String, Error> {
        if payload.len() > self.max_payload_bytes {
            return Err(Error::PayloadTooLarge { size: payload.len(), max: self.max_payload_bytes });
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let payload = to_raw_value(&payload).expect("a string");
        let frame = ClientFrame::Send(SendFrame {
            from: (&*self.user).into(),
            to: to.into(),
            payload: &payload,
            reference: Some(seq.to_string().into()),
        })
        .to_json();
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Send { seq, frame, reply }).is_err() {
            return Err(self.closed());
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.closed()),
            Err(_) => {
                // Forget it: not replayed on a later socket. It may still have been stored;
                // a retry by the caller is de-duplicated only if it reuses the payload.
                let _ = self.commands.send(Command::Cancel(seq));
                Err(Error::Timeout(self.send_timeout))
            }
        }
    }

    fn closed(&self) -> Error {
        self.stopped.get().map(Stop::to_error).unwrap_or(Error::ConnectionClosed)
    }
}

impl Client {
    /// Opens an acknowledged connection as `user` (this client's user id, see
    /// [`Client::login`]). Fails if the first socket cannot be opened; after that the
    /// connection reconnects by itself.
    pub async fn connect(&self, user: &str, options: ConnectOptions) -> Result<Connection, Error> {
        // Catch a stale user id (another server, another key) with a clear message, before a
        // socket would be closed as unknown or deliver payloads sealed for another key.
        let registered = match self.lookup_raw(user).await {
            Err(Error::UserNotFound(_)) => return Err(Error::UserNotFound(user.to_owned())),
            other => other?,
        };
        // The key, not its spelling: whoever registered it first chose the spelling the
        // directory keeps (docs/security.md, "One key, one user").
        if PublicKey::from_base64url(&registered).ok().as_ref() != Some(self.identity().public_key()) {
            return Err(Error::KeyMismatch { user: user.to_owned() });
        }
        // The owner is the one who can tell their key from an impostor's in the directory.
        self.check_own_history(user).await?;
        let mut url = self.endpoint(&["ws", user]);
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        url.set_scheme(scheme).expect("http(s) and ws(s) are all special schemes");
        let socket = self.open_socket(&url, user, options.connect_timeout).await?;
        Ok(Connection::start(self.clone(), user.to_owned(), url, options, socket))
    }
}

/// An acknowledged connection of one user. Dropping it closes the socket.
pub struct Connection {
    user: String,
    sender: Sender,
    incoming: mpsc::Receiver<Result<Message, Error>>,
    status: watch::Receiver<Status>,
    ledger: Arc<Mutex<Ledger>>,
    cancel: CancellationToken,
    driver: Option<JoinHandle<()>>,
}

impl Connection {
    pub(super) fn start(client: Client, user: String, url: Url, options: ConnectOptions, socket: Socket) -> Connection {
        let client_for_driver = client.clone();
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(Status::Connected);
        let (incoming_tx, incoming) = mpsc::channel(64);
        let cancel = CancellationToken::new();
        let stopped = Arc::new(OnceLock::new());
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let deliveries = options.receive.then(|| {
            let (tx, rx) = mpsc::channel(256);
            let opener = Opener {
                client: client.clone(),
                user: user.clone(),
                deliveries: rx,
                out: incoming_tx,
                commands: commands_tx.clone(),
                ledger: ledger.clone(),
                auto_ack: options.auto_ack,
                cancel: cancel.clone(),
                backoff_max: options.backoff_max,
            };
            tokio::spawn(opener.run());
            tx
        });
        let sender = Sender {
            client,
            user: user.as_str().into(),
            commands: commands_tx,
            seq: Arc::new(AtomicU64::new(1)),
            stopped: stopped.clone(),
            send_timeout: options.send_timeout,
            max_payload_bytes: options.max_payload_bytes,
        };
        let driver = Driver {
            client: client_for_driver,
            user: user.clone(),
            url,
            options,
            commands,
            deliveries,
            status: status_tx,
            stopped,
            cancel: cancel.clone(),
            pending: BTreeMap::new(),
            acks: Vec::new(),
        };
        let driver = tokio::spawn(driver.run(socket));
        Connection { user, sender, incoming, status, ledger, cancel, driver: Some(driver) }
    }

    /// This connection's user id.
    pub fn user_id(&self) -> &str {
        &self.user
    }

    /// A handle for sending from other tasks while this one receives.
    pub fn sender(&self) -> Sender {
        self.sender.clone()
    }

    /// See [`Sender::send`].
    pub async fn send(&self, to: &str, text: &str) -> Result<Receipt, Error> {
        self.sender.send(to, text).await
    }

    /// The next decrypted message, or an error item: a message that could not be opened
    /// ([`Error::Undecryptable`], already acknowledged, the stream goes on), or the reason
    /// the connection stopped ([`Error::Replaced`], [`Error::UserNotFound`], ...), after
    /// which the stream ends with `None`.
    pub async fn recv(&mut self) -> Option<Result<Message, Error>> {
        self.incoming.recv().await
    }

    /// Acknowledges a message by inbox id: the server removes it from the inbox. Only needed
    /// with `auto_ack: false`.
    pub fn ack(&self, id: &str) {
        self.ledger.lock().expect("not poisoned").acked.insert(id);
        let _ = self.sender.commands.send(Command::Ack(id.to_owned()));
    }

    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Closes the socket (normal closure) and waits for the connection's task to finish.
    /// Acknowledgements already given are written first.
    pub async fn close(mut self) {
        self.cancel.cancel();
        if let Some(driver) = self.driver.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Ids seen lately, oldest forgotten first: enough to recognise redeliveries and retried
/// sends, bounded so a long-running client does not grow without end.
#[derive(Default)]
pub(super) struct RecentSet {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl RecentSet {
    const CAPACITY: usize = 65_536;

    /// Inserts; false if it was already there.
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == Self::CAPACITY
            && let Some(oldest) = self.order.pop_front()
        {
            self.set.remove(&oldest);
        }
        self.set.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }

    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }
}

/// What this connection has done with deliveries, by inbox id and by sealed message id.
#[derive(Default)]
pub(super) struct Ledger {
    /// Handed to the application (or reported as undecryptable).
    delivered: RecentSet,
    /// Acknowledged: a redelivery means the acknowledgement was lost; send it again.
    acked: RecentSet,
    /// `from` + sealed message id of messages handed out, to drop retried sends.
    contents: RecentSet,
}

/// Opens deliveries in order and hands them to the application.
struct Opener {
    client: Client,
    user: String,
    deliveries: mpsc::Receiver<FromServer>,
    out: mpsc::Sender<Result<Message, Error>>,
    commands: mpsc::UnboundedSender<Command>,
    ledger: Arc<Mutex<Ledger>>,
    auto_ack: bool,
    cancel: CancellationToken,
    backoff_max: Duration,
}

impl Opener {
    async fn run(mut self) {
        while let Some(inbound) = self.deliveries.recv().await {
            let (id, ts, from, payload) = match inbound {
                FromServer::Delivery { id, ts, from, payload } => (id, ts, from, payload),
                FromServer::Stopped(error) => {
                    let _ = self.out.send(Err(error)).await;
                    return;
                }
            };
            {
                let ledger = self.ledger.lock().expect("not poisoned");
                if ledger.acked.contains(&id) {
                    // Redelivered because our acknowledgement was lost with the old socket.
                    drop(ledger);
                    let _ = self.commands.send(Command::Ack(id));
                    continue;
                }
                if ledger.delivered.contains(&id) {
                    continue; // the application has it and will acknowledge it
                }
            }
            let Some(opened) = self.open(&from, &payload).await else { return };
            let item = match opened {
                Ok(content) => {
                    let fresh =
                        self.ledger.lock().expect("not poisoned").contents.insert(&format!("{from}/{}", content.id));
                    if !fresh {
                        // A retried send that had been stored the first time too.
                        self.ledger.lock().expect("not poisoned").delivered.insert(&id);
                        self.ack(&id);
                        continue;
                    }
                    Ok(Message {
                        id: id.clone(),
                        ts,
                        from,
                        text: content.text,
                        message_id: content.id,
                        sent_at: content.ts,
                    })
                }
                Err(reason) => Err(Error::Undecryptable { id: id.clone(), from, ts, reason }),
            };
            let undecryptable = item.is_err();
            self.ledger.lock().expect("not poisoned").delivered.insert(&id);
            if self.out.send(item).await.is_err() {
                return; // the application is gone; unacknowledged messages stay stored
            }
            if self.auto_ack || undecryptable {
                self.ack(&id);
            }
        }
    }

    fn ack(&self, id: &str) {
        self.ledger.lock().expect("not poisoned").acked.insert(id);
        let _ = self.commands.send(Command::Ack(id.to_owned()));
    }

    /// Opens a payload, retrying the sender's key lookup while the server is unreachable
    /// (order is kept: later messages wait). `None` when the connection is closed meanwhile.
    async fn open(&self, from: &str, payload: &str) -> Option<Result<Content, OpenError>> {
        let mut attempt = 0;
        loop {
            match self.client.open(from, &self.user, payload).await {
                Ok(result) => return Some(result),
                Err(e) => {
                    let delay = backoff(attempt, Duration::from_millis(250), self.backoff_max);
                    attempt += 1;
                    tracing::warn!(error = %e, ?delay, "cannot fetch the sender's key; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.cancel.cancelled() => return None,
                        _ = self.out.closed() => return None,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(5));
        for attempt in 0..30 {
            let ceiling = (initial * 2u32.pow(attempt.min(10))).min(max);
            let delay = backoff(attempt, initial, max);
            assert!(delay >= ceiling / 2 && delay <= ceiling, "attempt {attempt}: {delay:?}");
        }
    }

    #[test]
    fn recent_sets_forget_the_oldest() {
        let mut set = RecentSet::default();
        assert!(set.insert("a"));
        assert!(!set.insert("a"));
        for i in 0..RecentSet::CAPACITY {
            set.insert(&i.to_string());
        }
        assert!(!set.contains("a"));
        assert!(set.contains(&(RecentSet::CAPACITY - 1).to_string()));
        assert_eq!(set.order.len(), RecentSet::CAPACITY);
    }

    /// The server may deliver one inbox id twice (a redelivery after a lost acknowledgement)
    /// and a retried send under a new id: the application sees the message once, and each
    /// delivery is acknowledged so that it leaves the inbox.
    #[tokio::test]
    async fn repeated_deliveries_reach_the_application_once() {
        use super::super::crypto::Identity;
        let (alice, bob) = (Identity::generate(), Identity::generate());
        // Never contacted: both keys are in the cache.
        let client = Client::new("http://127.0.0.1:9", bob).unwrap();
        client.remember_key("alice", alice.public_key().clone());
        let content = Content::new("once only");
        let sealed = || alice.seal("alice", "bob", client.identity().public_key(), &content.to_bytes());
        let other = Content::new("the next one");
        let (deliveries, delivered) = mpsc::channel(16);
        let (out, mut app) = mpsc::channel(16);
        let (commands, mut acks) = mpsc::unbounded_channel();
        let opener = Opener {
            client: client.clone(),
            user: "bob".into(),
            deliveries: delivered,
            out,
            commands,
            ledger: Arc::default(),
            auto_ack: true,
            cancel: CancellationToken::new(),
            backoff_max: Duration::from_secs(1),
        };
        let delivery =
            |id: &str, payload: String| FromServer::Delivery { id: id.into(), ts: 1, from: "alice".into(), payload };
        let first = sealed();
        deliveries.send(delivery("1-0", first.clone())).await.unwrap();
        deliveries.send(delivery("1-0", first)).await.unwrap(); // the same id again
        deliveries.send(delivery("2-0", sealed())).await.unwrap(); // the same message, resent
        let next = alice.seal("alice", "bob", client.identity().public_key(), &other.to_bytes());
        deliveries.send(delivery("3-0", next)).await.unwrap();
        drop(deliveries);
        opener.run().await;
        let mut seen = Vec::new();
        while let Ok(item) = app.try_recv() {
            let message = item.expect("opened");
            seen.push((message.id, message.text));
        }
        assert_eq!(seen, [("1-0".to_owned(), "once only".to_owned()), ("3-0".into(), "the next one".into())]);
        let mut acked = Vec::new();
        while let Ok(command) = acks.try_recv() {
            if let Command::Ack(id) = command {
                acked.push(id);
            }
        }
        assert_eq!(acked, ["1-0", "1-0", "2-0", "3-0"], "every delivery acknowledged");
    }
}
