//! The client's REST side: login, key lookup and the key cache, and opening one socket
//! (with the acknowledging subprotocol). [`Client::connect`] hands the socket to a
//! [`Connection`](super::connection::Connection), which keeps it alive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{ProtocolError, SubProtocolError};
use tokio_tungstenite::tungstenite::{self};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::connection::{ConnectOptions, Connection};
use super::crypto::{Content, Identity, PublicKey};
use super::error::{Error, OpenError};
use crate::protocol::{ErrorBody, LoginResponse, LookupResponse};

/// The WebSocket subprotocol of acknowledged delivery (`docs/protocol.md`).
pub use crate::protocol::SUBPROTOCOL_V1 as SUBPROTOCOL;

pub(super) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A client of one server with one identity. Cheap to clone; clones share the key cache.
#[derive(Clone)]
pub struct Client {
    pub(super) inner: Arc<ClientInner>,
}

pub(super) struct ClientInner {
    pub(super) http: reqwest::Client,
    base: Url,
    identity: Identity,
    /// The last access token (see `auth`), reused until shortly before it expires.
    pub(super) token: Mutex<Option<super::auth::CachedToken>>,
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
        Ok(Client {
            inner: Arc::new(ClientInner { http, base, identity, token: Mutex::default(), keys: Mutex::default() }),
        })
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

    /// Puts `user`'s key in the cache, as a lookup would (tests open payloads without a server).
    #[cfg(test)]
    pub(super) fn remember_key(&self, user: &str, key: PublicKey) {
        self.inner.keys.lock().expect("not poisoned").insert(user.to_owned(), key);
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
        let socket = self.open_socket(&url, user, options.connect_timeout).await?;
        Ok(Connection::start(self.clone(), user.to_owned(), url, options, socket))
    }

    pub(super) fn endpoint(&self, segments: &[&str]) -> Url {
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
        self.read_body(response).await
    }

    /// The status and JSON body (or the text as a JSON string) of a response.
    pub(super) async fn read_body(&self, response: reqwest::Response) -> Result<(u16, serde_json::Value), Error> {
        let unreachable = |e: reqwest::Error| {
            let reason = std::error::Error::source(&e).map(chain).unwrap_or_else(|| e.to_string());
            Error::Unreachable { url: self.inner.base.to_string(), reason }
        };
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

pub(super) fn http_error(status: u16, body: &serde_json::Value) -> Error {
    let message = ErrorBody::deserialize(body).map(|b| b.error).unwrap_or_else(|_| body.to_string());
    Error::Http { status, message }
}

/// An error with its causes, which is where reqwest and tungstenite say what happened
/// ("Connection refused").
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

/// Opens a socket, showing `token` (if any) as `Authorization: Bearer`.
pub(super) async fn open_socket(url: &Url, limit: Duration, token: Option<&str>) -> Result<Socket, Error> {
    let unreachable = |reason: String| Error::Unreachable { url: url.to_string(), reason };
    let mut request = url.as_str().into_client_request().map_err(|e| unreachable(chain(&e)))?;
    request.headers_mut().insert("Sec-WebSocket-Protocol", SUBPROTOCOL.parse().expect("valid header value"));
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().map_err(|_| Error::Protocol("unusable token".into()))?;
        request.headers_mut().insert("Authorization", value);
    }
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
}
