//! The client: REST calls (login, key lookup) and an acknowledged WebSocket connection that
//! survives reconnects without losing or duplicating a message.
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

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use reqwest::Url;
use serde::Deserialize;
use serde_json::value::to_raw_value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{ProtocolError, SubProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::crypto::{Content, Identity, PublicKey};
use super::error::{Error, OpenError};
use crate::protocol::{
    AckFrame, AckIds, ClientFrame, CloseCode, ErrorBody, ErrorCode, LoginResponse, LookupResponse, SendFrame,
    ServerFrame,
};

/// The WebSocket subprotocol of acknowledged delivery (`docs/protocol.md`).
pub use crate::protocol::SUBPROTOCOL_V1 as SUBPROTOCOL;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Tuning of a [`Connection`]. The defaults suit an interactive client on the default server.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Receive messages. A connection that only sends (`enigma send`) sets this to false: it
    /// then neither reads nor acknowledges its user's inbox, which stays for the next reader.
    pub receive: bool,
    /// Acknowledge each message as soon as the application has taken it from
    /// [`Connection::recv`]. When false the application calls [`Connection::ack`] once it has
    /// processed (printed, saved) the message; until then a reconnect redelivers it.
    pub auto_ack: bool,
    /// How long [`Sender::send`] waits for the receipt, across reconnects.
    pub send_timeout: Duration,
    /// Largest sealed payload sent (the server's `limits.max_payload_bytes`, 64 KiB by default).
    pub max_payload_bytes: usize,
    /// First reconnect delay; it doubles on each failed attempt up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How often the client pings; the server also pings every 20 s by default.
    pub ping_interval: Duration,
    /// A socket on which nothing arrives for this long is considered dead and reopened.
    pub idle_timeout: Duration,
    /// Limit for opening one socket (TCP and WebSocket handshake).
    pub connect_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            receive: true,
            auto_ack: true,
            send_timeout: Duration::from_secs(30),
            max_payload_bytes: 64 * 1024,
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// A client of one server with one identity. Cheap to clone; clones share the key cache.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    http: reqwest::Client,
    base: Url,
    identity: Identity,
    /// Public keys by user id. A user id names one key forever (the server derives nothing
    /// from it and never rebinds it), so entries never go stale.
    keys: Mutex<HashMap<String, PublicKey>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("server", &self.inner.base.as_str()).finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the server at `server` (`http://host:port`, optionally with a path
    /// prefix; `host:port` alone means http).
    pub fn new(server: &str, identity: Identity) -> Result<Client, Error> {
        let base = parse_server_url(server)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::InvalidUrl { url: server.into(), reason: chain(&e) })?;
        Ok(Client { inner: Arc::new(ClientInner { http, base, identity, keys: Mutex::default() }) })
    }

    pub fn server(&self) -> &Url {
        &self.inner.base
    }

    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// Registers this client's public key and returns its user id. Idempotent: the same key
    /// always gets the same id from a server.
    pub async fn login(&self) -> Result<String, Error> {
        let key = self.identity().public_key().to_base64url();
        let (status, body) = self.get(&["login", &key]).await?;
        if status != 200 {
            return Err(http_error(status, &body));
        }
        let LoginResponse { user_id: user, .. } = LoginResponse::deserialize(&body)
            .map_err(|_| Error::Protocol(format!("login answer without `userId`: {body}")))?;
        self.inner.keys.lock().expect("not poisoned").insert(user.clone(), self.identity().public_key().clone());
        Ok(user)
    }

    /// The public key registered for `user`, exactly as the directory holds it (whatever
    /// client registered it).
    pub async fn lookup_raw(&self, user: &str) -> Result<String, Error> {
        let (status, body) = self.get(&["connect", user]).await?;
        match status {
            200 => LookupResponse::deserialize(&body)
                .map(|found| found.public_key)
                .map_err(|_| Error::Protocol(format!("lookup answer without `publicKey`: {body}"))),
            404 => Err(Error::UserNotFound(user.to_owned())),
            _ => Err(http_error(status, &body)),
        }
    }

    /// The Enigma public key of `user`, from the cache or the directory.
    pub async fn lookup(&self, user: &str) -> Result<PublicKey, Error> {
        if let Some(key) = self.inner.keys.lock().expect("not poisoned").get(user) {
            return Ok(key.clone());
        }
        let raw = self.lookup_raw(user).await?;
        let key = PublicKey::from_base64url(&raw)
            .map_err(|e| Error::UnsupportedKey { user: user.to_owned(), reason: e.to_string() })?;
        self.inner.keys.lock().expect("not poisoned").insert(user.to_owned(), key.clone());
        Ok(key)
    }

    /// Seals `content` from `from` (this client's user) to `to`, looking up `to`'s key.
    pub async fn seal(&self, from: &str, to: &str, content: &Content) -> Result<String, Error> {
        let recipient = self.lookup(to).await?;
        Ok(self.identity().seal(from, to, &recipient, &content.to_bytes()))
    }

    /// Opens a payload `from` sent to `to` (this client's user), looking up `from`'s key.
    /// The outer error is a failure to look the key up (perhaps temporary); the inner one
    /// means the payload itself is unacceptable.
    pub async fn open(&self, from: &str, to: &str, payload: &str) -> Result<Result<Content, OpenError>, Error> {
        let sender = match self.lookup(from).await {
            Ok(key) => key,
            Err(Error::UserNotFound(_)) => return Ok(Err(OpenError::UnknownSender)),
            Err(Error::UnsupportedKey { reason, .. }) => return Ok(Err(OpenError::UnsupportedSenderKey(reason))),
            Err(e) => return Err(e),
        };
        Ok(self.identity().open(from, to, &sender, payload).and_then(|plain| Content::from_bytes(&plain)))
    }

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
        if registered != self.identity().public_key().to_base64url() {
            return Err(Error::KeyMismatch { user: user.to_owned() });
        }
        let mut url = self.endpoint(&["ws", user]);
        url.set_scheme("ws").expect("http and ws are both special schemes");
        let socket = open_socket(&url, options.connect_timeout).await?;
        Ok(Connection::start(self.clone(), user.to_owned(), url, options, socket))
    }

    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        url.path_segments_mut().expect("validated http URL").pop_if_empty().extend(segments);
        url
    }

    async fn get(&self, segments: &[&str]) -> Result<(u16, serde_json::Value), Error> {
        let url = self.endpoint(segments);
        // reqwest's own message repeats the URL; its causes say what went wrong.
        let unreachable = |e: reqwest::Error| {
            let reason = std::error::Error::source(&e).map(chain).unwrap_or_else(|| e.to_string());
            Error::Unreachable { url: self.inner.base.to_string(), reason }
        };
        let response = self.inner.http.get(url).send().await.map_err(unreachable)?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(unreachable)?;
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Ok((status, body))
    }
}

fn parse_server_url(server: &str) -> Result<Url, Error> {
    let invalid = |reason: &str| Error::InvalidUrl { url: server.into(), reason: reason.into() };
    let with_scheme = if server.contains("://") { server.to_owned() } else { format!("http://{server}") };
    let url = Url::parse(&with_scheme).map_err(|e| invalid(&e.to_string()))?;
    match url.scheme() {
        "http" => {}
        "https" => return Err(invalid("https is not supported by this build (no TLS); use http:// or a TLS proxy")),
        _ => return Err(invalid("the scheme must be http://")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("a server URL has no query or fragment"));
    }
    Ok(url)
}

fn http_error(status: u16, body: &serde_json::Value) -> Error {
    let message = ErrorBody::deserialize(body).map(|b| b.error).unwrap_or_else(|_| body.to_string());
    Error::Http { status, message }
}

/// An error with its causes, which is where reqwest and tungstenite say what happened
/// ("Connection refused").
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

async fn open_socket(url: &Url, limit: Duration) -> Result<Socket, Error> {
    let unreachable = |reason: String| Error::Unreachable { url: url.to_string(), reason };
    let mut request = url.as_str().into_client_request().map_err(|e| unreachable(chain(&e)))?;
    request.headers_mut().insert("Sec-WebSocket-Protocol", SUBPROTOCOL.parse().expect("valid header value"));
    let connecting = tokio_tungstenite::connect_async_with_config(request, None, true);
    match tokio::time::timeout(limit, connecting).await {
        Err(_) => Err(Error::Timeout(limit)),
        Ok(Ok((socket, _response))) => Ok(socket),
        Ok(Err(tungstenite::Error::Protocol(ProtocolError::SecWebSocketSubProtocolError(
            SubProtocolError::NoSubProtocol,
        )))) => Err(Error::NoSubprotocol),
        Ok(Err(tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            let body = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body.into_owned()));
            Err(http_error(status, &body))
        }
        Ok(Err(e)) => Err(unreachable(chain(&e))),
    }
}

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

/// Where a connection stands; watch it with [`Connection::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Connected,
    /// The socket was lost; the next attempt starts after `delay`.
    Reconnecting {
        attempt: u32,
        delay: Duration,
        reason: String,
    },
    /// Stopped for good (see the error items of [`Connection::recv`]).
    Closed,
}

/// Why a connection stopped for good.
#[derive(Debug, Clone)]
enum Stop {
    ByClient,
    Replaced,
    UserNotFound(String),
    Closed { code: u16, reason: String },
}

impl Stop {
    fn to_error(&self) -> Error {
        match self {
            Stop::ByClient => Error::ConnectionClosed,
            Stop::Replaced => Error::Replaced,
            Stop::UserNotFound(user) => Error::UserNotFound(user.clone()),
            Stop::Closed { code, reason } => Error::Closed { code: *code, reason: reason.clone() },
        }
    }
}

enum Command {
    Send { seq: u64, frame: String, reply: oneshot::Sender<Result<String, Error>> },
    Cancel(u64),
    Ack(String),
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
    fn start(client: Client, user: String, url: Url, options: ConnectOptions, socket: Socket) -> Connection {
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
struct RecentSet {
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
struct Ledger {
    /// Handed to the application (or reported as undecryptable).
    delivered: RecentSet,
    /// Acknowledged: a redelivery means the acknowledgement was lost; send it again.
    acked: RecentSet,
    /// `from` + sealed message id of messages handed out, to drop retried sends.
    contents: RecentSet,
}

enum Inbound {
    Delivery {
        id: String,
        ts: u64,
        from: String,
        payload: String,
    },
    /// The connection stopped: the last item of the stream.
    Stopped(Error),
}

/// How a socket's session ended.
enum Outcome {
    Reconnect(String),
    Stop(Stop),
}

/// Owns the socket across reconnects.
struct Driver {
    url: Url,
    options: ConnectOptions,
    commands: mpsc::UnboundedReceiver<Command>,
    deliveries: Option<mpsc::Sender<Inbound>>,
    status: watch::Sender<Status>,
    stopped: Arc<OnceLock<Stop>>,
    cancel: CancellationToken,
    /// Sends without an answer, in submission order (the `ref` is the sequence number).
    pending: BTreeMap<u64, Pending>,
    /// Acknowledgements not yet written.
    acks: Vec<String>,
}

struct Pending {
    frame: String,
    reply: oneshot::Sender<Result<String, Error>>,
}

impl Driver {
    async fn run(mut self, first: Socket) {
        let mut socket = first;
        let mut attempt: u32 = 0;
        loop {
            self.status.send_replace(Status::Connected);
            let opened = Instant::now();
            let mut reason = match self.session(socket).await {
                Outcome::Stop(stop) => return self.finish(stop).await,
                Outcome::Reconnect(reason) => reason,
            };
            // A connection that lasted resets the backoff; one closed at once (a server that
            // accepts and fails) keeps growing it, so a broken server is not hammered.
            if opened.elapsed() >= Duration::from_secs(10) {
                attempt = 0;
            }
            socket = loop {
                let delay = backoff(attempt, self.options.backoff_initial, self.options.backoff_max);
                attempt = attempt.saturating_add(1);
                tracing::debug!(attempt, ?delay, %reason, "reconnecting");
                self.status.send_replace(Status::Reconnecting { attempt, delay, reason: reason.clone() });
                if let Some(stop) = self.wait(delay).await {
                    return self.finish(stop).await;
                }
                let opening = tokio::select! {
                    opening = open_socket(&self.url, self.options.connect_timeout) => opening,
                    _ = self.cancel.cancelled() => return self.finish(Stop::ByClient).await,
                };
                match opening {
                    Ok(socket) => break socket,
                    Err(e) => reason = e.to_string(),
                }
            };
        }
    }

    /// Waits while disconnected, still taking commands (sends queue up for the next socket).
    async fn wait(&mut self, delay: Duration) -> Option<Stop> {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return None,
                _ = self.cancel.cancelled() => return Some(Stop::ByClient),
                command = self.commands.recv() => match command {
                    None => return Some(Stop::ByClient),
                    Some(command) => {
                        self.take(command);
                    }
                },
            }
        }
    }

    /// Records a command; the socket session writes what it implies.
    fn take(&mut self, command: Command) -> Option<String> {
        match command {
            Command::Send { seq, frame, reply } => {
                self.pending.insert(seq, Pending { frame: frame.clone(), reply });
                return Some(frame);
            }
            Command::Cancel(seq) => {
                self.pending.remove(&seq);
            }
            Command::Ack(id) => self.acks.push(id),
        }
        None
    }

    async fn session(&mut self, mut socket: Socket) -> Outcome {
        // Replay on the new socket: acknowledgements not yet written and every send without
        // an answer, in the order they were made.
        let replay: Vec<String> = self.pending.values().map(|p| p.frame.clone()).collect();
        if let Err(e) = self.write(&mut socket, replay).await {
            return Outcome::Reconnect(e);
        }
        let mut ping = tokio::time::interval(self.options.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                frame = socket.next() => {
                    last_heard = Instant::now();
                    match frame {
                        Some(Ok(WsMessage::Text(text))) => {
                            if let Some(outcome) = self.on_text(text.as_str()).await {
                                return outcome;
                            }
                        }
                        Some(Ok(WsMessage::Close(frame))) => return self.on_close(frame),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Outcome::Reconnect(format!("connection lost: {}", chain(&e))),
                        None => return Outcome::Reconnect("connection lost".into()),
                    }
                }
                command = self.commands.recv() => {
                    let Some(command) = command else {
                        close_politely(socket).await;
                        return Outcome::Stop(Stop::ByClient);
                    };
                    // Take everything queued, then write it in one flush.
                    let mut frames: Vec<String> = self.take(command).into_iter().collect();
                    while let Ok(command) = self.commands.try_recv() {
                        frames.extend(self.take(command));
                    }
                    if let Err(e) = self.write(&mut socket, frames).await {
                        return Outcome::Reconnect(e);
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() >= self.options.idle_timeout {
                        return Outcome::Reconnect(format!("no answer from the server for {:?}", self.options.idle_timeout));
                    }
                    if let Err(e) = socket.send(WsMessage::Ping(Default::default())).await {
                        return Outcome::Reconnect(format!("connection lost: {}", chain(&e)));
                    }
                }
                _ = self.cancel.cancelled() => {
                    // Acknowledgements given before the close still go out.
                    while let Ok(command) = self.commands.try_recv() {
                        self.take(command);
                    }
                    let _ = self.write(&mut socket, Vec::new()).await;
                    close_politely(socket).await;
                    return Outcome::Stop(Stop::ByClient);
                }
            }
        }
    }

    /// Writes `frames` and any pending acknowledgements (as one `ack` frame), then flushes.
    async fn write(&mut self, socket: &mut Socket, frames: Vec<String>) -> Result<(), String> {
        let lost = |e: tungstenite::Error| format!("connection lost: {}", chain(&e));
        if !self.acks.is_empty() {
            let acks = std::mem::take(&mut self.acks);
            let frame = ClientFrame::Ack(AckFrame { ids: AckIds::Many(acks), reference: None }).to_json();
            socket.feed(WsMessage::Text(frame.into())).await.map_err(lost)?;
        }
        for frame in frames {
            socket.feed(WsMessage::Text(frame.into())).await.map_err(lost)?;
        }
        socket.flush().await.map_err(lost)
    }

    async fn on_text(&mut self, text: &str) -> Option<Outcome> {
        let frame = match ServerFrame::parse(text) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a frame that is not a JSON object");
                return None;
            }
        };
        // Receipts and errors without a known ref: a send that was cancelled, or an answer
        // to a frame we did not send with a ref (an `ack`).
        let answered = frame.reference().and_then(|r| r.parse::<u64>().ok()).and_then(|seq| self.pending.remove(&seq));
        match (frame, answered) {
            (ServerFrame::Error(error), Some(pending)) => {
                let _ = pending.reply.send(Err(Error::Refused { code: error.code, message: error.error.into_owned() }));
            }
            (ServerFrame::Error(error), None) => {
                tracing::warn!(code = %error.code, error = %error.error, "error frame from the server");
            }
            (ServerFrame::Receipt(receipt), Some(pending)) => {
                let _ = pending.reply.send(Ok(receipt.id.into_owned()));
            }
            (_, Some(pending)) => {
                let _ = pending.reply.send(Err(Error::Protocol(format!("unexpected answer to a send: {text}"))));
            }
            (ServerFrame::Delivery(delivery), None) if delivery.id.is_some() => {
                if let Some(deliveries) = &self.deliveries {
                    // Waiting here when the application does not keep up stops reading the
                    // socket: the server's bounded queue then decides (a slow-consumer close, messages kept).
                    let delivery = Inbound::Delivery {
                        id: delivery.id.unwrap_or_default(),
                        ts: delivery.ts.unwrap_or(0),
                        from: delivery.from,
                        payload: delivery.payload,
                    };
                    if deliveries.send(delivery).await.is_err() {
                        self.deliveries = None;
                    }
                }
            }
            _ => tracing::debug!(frame = %text, "ignoring an unknown frame"),
        }
        None
    }

    fn on_close(&mut self, frame: Option<CloseFrame>) -> Outcome {
        let (code, reason) = frame
            .map(|f| (u16::from(f.code), f.reason.to_string()))
            .unwrap_or((CloseCode::NoStatus.as_u16(), String::new()));
        match CloseCode::from_u16(code) {
            CloseCode::Replaced => Outcome::Stop(Stop::Replaced),
            CloseCode::UserNotFound => Outcome::Stop(Stop::UserNotFound(
                self.url.path_segments().and_then(|mut s| s.next_back()).unwrap_or_default().to_owned(),
            )),
            // We broke the protocol: reconnecting would repeat it.
            CloseCode::ProtocolError
            | CloseCode::UnsupportedData
            | CloseCode::InvalidPayload
            | CloseCode::PolicyViolation => Outcome::Stop(Stop::Closed { code, reason }),
            CloseCode::MessageTooBig => {
                // A frame far over the server's limit. It is the largest unanswered send;
                // fail it rather than replaying it on every connection.
                let largest = self.pending.iter().max_by_key(|(_, p)| p.frame.len()).map(|(seq, _)| *seq);
                if let Some(pending) = largest.and_then(|seq| self.pending.remove(&seq)) {
                    let _ = pending.reply.send(Err(Error::Refused {
                        code: ErrorCode::PayloadTooLarge.into(),
                        message: "the frame exceeds the server's size limit".into(),
                    }));
                }
                Outcome::Reconnect(format!("closed by the server: {reason} ({code})"))
            }
            _ => Outcome::Reconnect(format!("closed by the server: {reason} ({code})")),
        }
    }

    async fn finish(mut self, stop: Stop) {
        let _ = self.stopped.set(stop.clone());
        self.status.send_replace(Status::Closed);
        for (_, pending) in std::mem::take(&mut self.pending) {
            let _ = pending.reply.send(Err(stop.to_error()));
        }
        if !matches!(stop, Stop::ByClient)
            && let Some(deliveries) = self.deliveries.take()
        {
            let _ = deliveries.send(Inbound::Stopped(stop.to_error())).await;
        }
    }
}

/// Sends a normal close and waits briefly for the server's close frame.
async fn close_politely(mut socket: Socket) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = socket.close(None).await;
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}

/// The delay before reconnect attempt `attempt` (0-based): exponential, capped, with the upper
/// half randomised so that clients dropped together do not come back together.
fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let ceiling = initial.saturating_mul(2u32.saturating_pow(attempt.min(20))).min(max);
    let half = ceiling / 2;
    let random = uuid::Uuid::new_v4().as_u128() as u64; // 122 random bits; no extra RNG crate
    half + Duration::from_micros(random % (half.as_micros() as u64 + 1))
}

/// Opens deliveries in order and hands them to the application.
struct Opener {
    client: Client,
    user: String,
    deliveries: mpsc::Receiver<Inbound>,
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
                Inbound::Delivery { id, ts, from, payload } => (id, ts, from, payload),
                Inbound::Stopped(error) => {
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
    fn server_urls() {
        assert_eq!(parse_server_url("http://localhost:8000").unwrap().as_str(), "http://localhost:8000/");
        assert_eq!(parse_server_url("localhost:8000").unwrap().as_str(), "http://localhost:8000/");
        assert!(parse_server_url("https://example.org").unwrap_err().to_string().contains("TLS"));
        assert!(parse_server_url("ftp://example.org").is_err());
        assert!(parse_server_url("http://x/?a=b").is_err());
        let client = Client::new("http://example.org/relay/", Identity::generate()).unwrap();
        assert_eq!(client.endpoint(&["login", "abc"]).as_str(), "http://example.org/relay/login/abc");
        let client = Client::new("http://example.org", Identity::generate()).unwrap();
        assert_eq!(client.endpoint(&["connect", "a/b"]).as_str(), "http://example.org/connect/a%2Fb");
    }

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
}
