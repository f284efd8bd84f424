//! The client's REST side: login, key lookup (checked against pinned keys, see `pins`) and
//! the key cache, and opening one socket (with the acknowledging subprotocol, over TLS for an
//! https:// server). `Client::connect` (in `connection`) hands the socket to a
//! [`Connection`](super::connection::Connection), which keeps it alive.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{ProtocolError, SubProtocolError};
use tokio_tungstenite::tungstenite::{self};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::crypto::{Content, Identity, PublicKey};
use super::directory::state::{DirectoryPolicy, DirectoryState};
use super::error::{Error, OpenError};
use super::pins::{Pin, Pins, Verdict};
use super::tls::{client_config, parse_server_url, plain_http_config};
use crate::protocol::{ErrorBody, LoginResponse, LookupResponse};

/// The WebSocket subprotocol of acknowledged delivery (`docs/protocol.md`).
pub use crate::protocol::SUBPROTOCOL_V1 as SUBPROTOCOL;

pub(super) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a [`Client`] reaches its server and whom it trusts.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Trust only the CA certificates in this PEM file (a private CA) instead of the
    /// platform's roots.
    pub ca_file: Option<PathBuf>,
    /// Accept plain http:// to hosts other than this machine (see [`super::tls`]).
    pub insecure_http: bool,
    /// Contacts' keys pinned on first use; without it every lookup is taken on trust.
    pub pins: Option<Arc<Pins>>,
    /// Whether a server without a key directory may be used (with pins alone).
    pub directory: DirectoryPolicy,
    /// How long a lookup waits for a user the directory has not published yet
    /// (default [`super::directory::PUBLISH_WAIT`]).
    pub publish_wait: Option<Duration>,
}

/// A client of one server with one identity. Cheap to clone; clones share the key cache.
#[derive(Clone)]
pub struct Client {
    pub(super) inner: Arc<ClientInner>,
}

pub(super) struct ClientInner {
    pub(super) http: reqwest::Client,
    base: Url,
    identity: Identity,
    /// The TLS configuration of an https:// server (also used for its wss:// sockets).
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    pins: Option<Arc<Pins>>,
    /// The last access token (see `auth`), reused until shortly before it expires.
    pub(super) token: Mutex<Option<CachedToken>>,
    /// Public keys by user id, once proven by the directory and checked against the pins. A
    /// user id names one key for as long as the directory's history says so; a swap is caught by
    /// the directory (and the pins) at the next process.
    keys: Mutex<HashMap<String, PublicKey>>,
    /// The key directory: its presence and the newest verified root (`directory`).
    pub(super) directory: tokio::sync::Mutex<DirectoryState>,
    pub(super) directory_policy: DirectoryPolicy,
    publish_wait: Duration,
}

/// An access token as `auth` keeps it: for whom, and until when (ms since the Unix epoch).
pub(super) struct CachedToken {
    pub(super) user: String,
    pub(super) token: String,
    pub(super) expires_at: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("server", &self.inner.base.as_str()).finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the server at `server` (`https://host[:port]`, or `http://` to this
    /// machine; optionally with a path prefix; `host:port` alone means http), trusting the
    /// platform's roots, pinning nothing.
    pub fn new(server: &str, identity: Identity) -> Result<Client, Error> {
        Client::with_options(server, identity, ClientOptions::default())
    }

    pub fn with_options(server: &str, identity: Identity, options: ClientOptions) -> Result<Client, Error> {
        let base = parse_server_url(server, options.insecure_http)?;
        let mut builder =
            reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).timeout(Duration::from_secs(30));
        let tls = if base.scheme() == "https" {
            let config = client_config(options.ca_file.as_deref())?;
            builder = builder.tls_backend_preconfigured((*config).clone()).https_only(true);
            Some(config)
        } else {
            builder = builder.tls_backend_preconfigured(plain_http_config()?);
            None
        };
        let http = builder.build().map_err(|e| Error::InvalidUrl { url: server.into(), reason: chain(&e) })?;
        Ok(Client {
            inner: Arc::new(ClientInner {
                http,
                base,
                identity,
                tls,
                pins: options.pins,
                token: Mutex::default(),
                keys: Mutex::default(),
                directory: tokio::sync::Mutex::default(),
                directory_policy: options.directory,
                publish_wait: options.publish_wait.unwrap_or(super::directory::state::PUBLISH_WAIT),
            }),
        })
    }

    pub fn server(&self) -> &Url {
        &self.inner.base
    }

    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    pub(super) fn pins(&self) -> Option<&Pins> {
        self.inner.pins.as_deref()
    }

    pub(super) fn publish_wait(&self) -> Duration {
        self.inner.publish_wait
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

    /// Puts `user`'s key in the cache, as a lookup would (tests open payloads without a server).
    #[cfg(test)]
    pub(super) fn remember_key(&self, user: &str, key: PublicKey) {
        self.inner.keys.lock().expect("not poisoned").insert(user.to_owned(), key);
    }

    /// The Enigma public key of `user`, from the cache or the directory, proven by the key
    /// directory ([`super::directory`]); with pins, a key other than the pinned one is
    /// [`Error::KeyChanged`] (and nothing is sealed to it).
    pub async fn lookup(&self, user: &str) -> Result<PublicKey, Error> {
        if let Some(key) = self.inner.keys.lock().expect("not poisoned").get(user) {
            return Ok(key.clone());
        }
        let key = self.lookup_unchecked(user).await?;
        if let Some(pins) = &self.inner.pins {
            pins.check(self.inner.base.as_str(), user, &key)?;
        }
        self.inner.keys.lock().expect("not poisoned").insert(user.to_owned(), key.clone());
        Ok(key)
    }

    /// The directory's Enigma key of `user`, proven by the key directory (when the server has
    /// one), not compared with any pin.
    pub async fn lookup_unchecked(&self, user: &str) -> Result<PublicKey, Error> {
        let raw = self.lookup_raw(user).await?;
        let key = PublicKey::from_base64url(&raw)
            .map_err(|e| Error::UnsupportedKey { user: user.to_owned(), reason: e.to_string() })?;
        // Proven, or a server without a directory that this client's policy accepts.
        self.prove_key(user, &raw).await?;
        Ok(key)
    }

    /// The pin of `user` on this server, if this client keeps pins and has one.
    pub fn pin(&self, user: &str) -> Result<Option<Pin>, Error> {
        match &self.inner.pins {
            Some(pins) => pins.get(self.inner.base.as_str(), user),
            None => Ok(None),
        }
    }

    /// Accepts the key the directory now holds for `user` (after the user checked its
    /// fingerprint): returns it and the pin it replaces.
    pub async fn trust(&self, user: &str) -> Result<(PublicKey, Option<Pin>), Error> {
        let pins = self.inner.pins.as_ref().ok_or_else(|| Error::Protocol("this client keeps no pins".into()))?;
        let key = self.lookup_unchecked(user).await?;
        let previous = pins.trust(self.inner.base.as_str(), user, &key)?;
        self.inner.keys.lock().expect("not poisoned").insert(user.to_owned(), key.clone());
        Ok((key, previous))
    }

    /// Whether `key` is the one pinned for `user` (pinning it if nothing was): `None` when this
    /// client keeps no pins.
    pub fn check_pin(&self, user: &str, key: &PublicKey) -> Result<Option<Verdict>, Error> {
        match &self.inner.pins {
            Some(pins) => pins.check(self.inner.base.as_str(), user, key).map(Some),
            None => Ok(None),
        }
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
            Err(e @ Error::KeyChanged { .. }) => return Ok(Err(OpenError::SenderKeyChanged(e.to_string()))),
            Err(e @ (Error::Directory(_) | Error::NoDirectory { .. } | Error::DirectoryWithdrawn { .. })) => {
                return Ok(Err(OpenError::SenderKeyUnproven(e.to_string())));
            }
            Err(e) => return Err(e),
        };
        Ok(self.identity().open(from, to, &sender, payload).and_then(|plain| Content::from_bytes(&plain)))
    }

    pub(super) fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        url.path_segments_mut().expect("validated http URL").pop_if_empty().extend(segments);
        url
    }

    async fn get(&self, segments: &[&str]) -> Result<(u16, serde_json::Value), Error> {
        let url = self.endpoint(segments);
        let response = self.inner.http.get(url).send().await.map_err(|e| self.unreachable(&e))?;
        self.read_body(response).await
    }

    /// Whether the server answers HTTP at all (any status will do): tells "the server is
    /// down or elsewhere" apart from mistakes it would answer.
    pub async fn reachable(&self) -> Result<(), Error> {
        self.get(&["healthz"]).await.map(|_| ())
    }

    /// The server could not be reached for a REST call.
    pub(super) fn unreachable(&self, error: &reqwest::Error) -> Error {
        // reqwest's own message repeats the URL; its causes say what went wrong.
        let reason = socket_failure(error)
            .or_else(|| std::error::Error::source(error).map(chain))
            .unwrap_or_else(|| error.to_string());
        Error::Unreachable { url: self.inner.base.to_string(), reason }
    }

    /// The status and JSON body (or the text as a JSON string) of a response.
    pub(super) async fn read_body(&self, response: reqwest::Response) -> Result<(u16, serde_json::Value), Error> {
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| self.unreachable(&e))?;
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Ok((status, body))
    }
}

pub(super) fn http_error(status: u16, body: &serde_json::Value) -> Error {
    let message = ErrorBody::deserialize(body).map(|b| b.error).unwrap_or_else(|_| body.to_string());
    Error::Http { status, message }
}

/// What went wrong on the socket, when an I/O error among `error`'s causes says so in words a
/// person can act on ("connection refused", "timed out"), without the layers above it.
pub(super) fn socket_failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    use std::io::ErrorKind::*;
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            let kind = io.kind();
            let telling = [
                ConnectionRefused,
                ConnectionReset,
                ConnectionAborted,
                TimedOut,
                HostUnreachable,
                NetworkUnreachable,
                AddrNotAvailable,
                BrokenPipe,
                UnexpectedEof,
            ];
            return telling.contains(&kind).then(|| kind.to_string());
        }
        cause = e.source();
    }
    None
}

/// An error with its causes, which is where reqwest and tungstenite say what happened
/// (a TLS failure, a name that does not resolve).
pub(super) fn chain(error: &dyn std::error::Error) -> String {
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

/// Opens a socket (over TLS with `tls` for wss://), showing `token` (if any) as
/// `Authorization: Bearer`.
pub(super) async fn open_socket(
    url: &Url,
    limit: Duration,
    token: Option<&str>,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Socket, Error> {
    let unreachable = |reason: String| Error::Unreachable { url: url.to_string(), reason };
    let mut request = url.as_str().into_client_request().map_err(|e| unreachable(chain(&e)))?;
    request.headers_mut().insert("Sec-WebSocket-Protocol", SUBPROTOCOL.parse().expect("valid header value"));
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().map_err(|_| Error::Protocol("unusable token".into()))?;
        request.headers_mut().insert("Authorization", value);
    }
    let connector = tls.map(Connector::Rustls);
    let connecting = tokio_tungstenite::connect_async_tls_with_config(request, None, true, connector);
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
        Ok(Err(e)) => Err(unreachable(socket_failure(&e).unwrap_or_else(|| chain(&e)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        assert_eq!(parse_server_url("http://localhost:8000", false).unwrap().as_str(), "http://localhost:8000/");
        assert_eq!(parse_server_url("localhost:8000", false).unwrap().as_str(), "http://localhost:8000/");
        assert!(parse_server_url("ftp://example.org", false).is_err());
        assert!(parse_server_url("http://x/?a=b", true).is_err());
        let insecure = ClientOptions { insecure_http: true, ..Default::default() };
        let client = Client::with_options("http://example.org/relay/", Identity::generate(), insecure.clone()).unwrap();
        assert_eq!(client.endpoint(&["login", "abc"]).as_str(), "http://example.org/relay/login/abc");
        let client = Client::with_options("http://example.org", Identity::generate(), insecure).unwrap();
        assert_eq!(client.endpoint(&["connect", "a/b"]).as_str(), "http://example.org/connect/a%2Fb");
    }
}
