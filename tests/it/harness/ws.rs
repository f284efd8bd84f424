//! The WebSocket client the tests drive: every wait has a deadline, so a missing frame fails
//! the test instead of hanging it.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::DEADLINE;

/// The handshake request for `url` with extra headers.
fn request_with(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request, tokio_tungstenite::tungstenite::Error> {
    let mut request = url.into_client_request()?;
    for (name, value) in headers {
        request.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    Ok(request)
}

/// A WebSocket client with deadlines on every wait.
pub struct Ws {
    pub inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub protocol: Option<String>,
}

impl Ws {
    pub async fn connect(url: &str, protocol: Option<&str>) -> Ws {
        Self::try_connect(url, protocol).await.expect("WebSocket connect")
    }

    pub async fn try_connect(url: &str, protocol: Option<&str>) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let mut request = url.into_client_request()?;
        if let Some(p) = protocol {
            request.headers_mut().insert("Sec-WebSocket-Protocol", p.parse().unwrap());
        }
        let (inner, response) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(request))
            .await
            .map_err(|_| tokio_tungstenite::tungstenite::Error::ConnectionClosed)??;
        let protocol = response.headers().get("Sec-WebSocket-Protocol").map(|v| v.to_str().unwrap().to_owned());
        Ok(Ws { inner, protocol })
    }

    /// Opens a socket with extra request headers (`Authorization`, several subprotocols…).
    pub async fn try_connect_with(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let request = request_with(url, headers)?;
        let (inner, response) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(request))
            .await
            .map_err(|_| tokio_tungstenite::tungstenite::Error::ConnectionClosed)??;
        let protocol = response.headers().get("Sec-WebSocket-Protocol").map(|v| v.to_str().unwrap().to_owned());
        Ok(Ws { inner, protocol })
    }

    /// Opens a socket from the local address `local` (another "client address" on loopback:
    /// 127.0.0.2, …), with extra request headers.
    pub async fn try_connect_from(
        url: &str,
        local: std::net::IpAddr,
        headers: &[(&str, &str)],
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let request = request_with(url, headers)?;
        let uri = request.uri();
        let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
        let server =
            std::net::SocketAddr::new(host.parse().expect("an IP address in the URL"), uri.port_u16().unwrap());
        let socket = if local.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.bind(std::net::SocketAddr::new(local, 0))?;
        let connect = async {
            let stream = socket.connect(server).await?;
            tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)).await
        };
        let (inner, response) = tokio::time::timeout(DEADLINE, connect)
            .await
            .map_err(|_| tokio_tungstenite::tungstenite::Error::ConnectionClosed)??;
        let protocol = response.headers().get("Sec-WebSocket-Protocol").map(|v| v.to_str().unwrap().to_owned());
        Ok(Ws { inner, protocol })
    }

    /// Sends `payload` from `from` round robin to `to` (an `enigma.v1` socket), each send
    /// answered before the next, until one is refused for lack of room — `inbox_full`,
    /// `rate_limited` (the sender's or its network's share of the store) or `unavailable` (a full
    /// store); how many were stored. Any other answer fails the test.
    pub async fn fill(&mut self, from: &str, to: &[String], payload: &str) -> usize {
        let mut stored = 0;
        for n in 0.. {
            let answer = self.send_answered(from, &to[n % to.len()], payload, &format!("m{n}")).await;
            match (answer["status"].as_str(), answer["code"].as_str()) {
                (Some("stored"), _) => stored += 1,
                (_, Some("inbox_full" | "rate_limited" | "unavailable")) => break,
                other => panic!("unexpected answer {other:?}: {answer}"),
            }
        }
        stored
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.inner.send(Message::Text(text.into())).await.expect("send");
    }

    pub async fn send_binary(&mut self, data: &[u8]) {
        self.inner.send(Message::Binary(Bytes::copy_from_slice(data))).await.expect("send");
    }

    /// Sends a spec envelope.
    pub async fn send_msg(&mut self, from: &str, to: &str, payload: &str) {
        self.send_json(json!({"from": from, "to": to, "payload": payload})).await;
    }

    /// The next data or close frame (pings and pongs skipped).
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            let message =
                tokio::time::timeout(DEADLINE, self.inner.next()).await.expect("timed out waiting for a frame");
            match message {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(m)) => return Some(m),
                _ => return None,
            }
        }
    }

    /// Sends `{from, to, payload, ref}` and returns the one answer to it (receipt or error),
    /// skipping other frames.
    pub async fn send_answered(&mut self, from: &str, to: &str, payload: &str, reference: &str) -> Value {
        self.send_json(serde_json::json!({"from": from, "to": to, "payload": payload, "ref": reference})).await;
        loop {
            let frame = self.recv_json().await;
            if frame["ref"] == reference {
                return frame;
            }
        }
    }

    pub async fn recv_json(&mut self) -> Value {
        match self.next().await {
            Some(Message::Text(t)) => serde_json::from_str(t.as_str()).expect("frame is JSON"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Waits for the close frame and returns its code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.next().await {
                Some(Message::Close(Some(frame))) => return (u16::from(frame.code), frame.reason.to_string()),
                Some(Message::Close(None)) | None => return (u16::from(CloseCode::Abnormal), String::new()),
                Some(_) => continue,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.inner.close(None).await;
    }
}
