//! Where the load goes: replica addresses (loopback only), logins over HTTP and WebSockets
//! opened over our own TCP sockets, so that a source address can be chosen per socket.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use enigma::protocol::LoginResponse;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// One client WebSocket.
pub type Ws = WebSocketStream<TcpStream>;

/// How long one login or one WebSocket handshake may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A server replica.
#[derive(Debug, Clone)]
pub struct Replica {
    /// `host:port` as given, for the `Host` header and the report.
    pub authority: String,
    /// The resolved address the TCP sockets connect to.
    pub addr: SocketAddr,
}

impl Replica {
    /// Parses `http://host:port`, `ws://host:port` or `host:port`. The tool refuses anything
    /// that does not resolve to a loopback address: it is a load generator, and a typo must not
    /// point tens of thousands of messages per second at somebody else's machine.
    pub fn parse(url: &str) -> Result<Replica, String> {
        let rest = ["http://", "ws://"].iter().find_map(|s| url.strip_prefix(s)).unwrap_or(url);
        if rest.contains("://") {
            return Err(format!("{url}: only http:// and ws:// URLs are supported"));
        }
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(format!("{url}: expected http://HOST:PORT with no path"));
        }
        let with_port = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addrs: Vec<SocketAddr> =
            with_port.to_socket_addrs().map_err(|e| format!("{url}: cannot resolve: {e}"))?.collect();
        let Some(addr) = addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()).copied() else {
            return Err(format!("{url}: resolves to no address"));
        };
        if !addrs.iter().all(|a| a.ip().is_loopback()) {
            return Err(format!("{url}: not a loopback address; enigma-bench only sends traffic to this machine"));
        }
        Ok(Replica { authority: with_port, addr })
    }
}

/// An HTTP client for logins: keep-alive connections, no proxy (a proxy from the environment
/// would send loopback traffic elsewhere); plain http only, so TLS is configured but unused.
pub fn http_client(concurrency: usize) -> Result<reqwest::Client, String> {
    let tls = enigma::sdk::tls::plain_http_config().map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(concurrency)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// A public key nobody else uses: the run's nonce and the user's index, base64 alphabet only.
pub fn unique_key(nonce: &str, index: usize) -> String {
    format!("enigmabench{nonce}u{index:08}")
}

/// A per-run nonce, so that runs against a shared Redis never reuse each other's users.
pub fn run_nonce() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{:x}{:x}", nanos as u64, std::process::id())
}

/// `GET /login/{key}` → the user id.
pub async fn login(client: &reqwest::Client, replica: &Replica, key: &str) -> Result<String, String> {
    let url = format!("http://{}/login/{key}", replica.authority);
    let response =
        client.get(&url).send().await.map_err(|e| format!("login on {}: {}", replica.authority, chain(&e)))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(format!("login on {}: HTTP {status}: {body}", replica.authority));
    }
    let body: LoginResponse =
        response.json().await.map_err(|e| format!("login on {}: {}", replica.authority, chain(&e)))?;
    Ok(body.user_id)
}

/// An error with its causes: reqwest's own message ("error sending request") hides the one
/// that says what went wrong ("Connection refused").
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Client socket settings. The read buffer must stay small: tungstenite allocates it eagerly
/// (the default 128 KiB per idle socket would make the generator the memory hog) and zeroes it
/// before each read (a large one costs a large memset per message).
pub fn ws_config(read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(read_buffer)
}

/// Opens `ws://replica/ws/{user}`, from `source` when given. Binding the client side to one of
/// several 127.0.0.x addresses multiplies the ~28k ephemeral ports one source address has.
pub async fn open_ws(
    replica: &Replica,
    user: &str,
    source: Option<Ipv4Addr>,
    config: WebSocketConfig,
) -> Result<Ws, String> {
    open_ws_as(replica, user, source, config, None).await
}

/// Like [`open_ws`], asking for `subprotocol` (e.g. `enigma.v1`): tungstenite refuses a
/// handshake whose answer does not name it, so a socket returned here speaks it.
pub async fn open_ws_as(
    replica: &Replica,
    user: &str,
    source: Option<Ipv4Addr>,
    config: WebSocketConfig,
    subprotocol: Option<&str>,
) -> Result<Ws, String> {
    let open = async {
        let socket = if replica.addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
            .map_err(|e| format!("socket: {e}"))?;
        if let Some(ip) = source.filter(|_| replica.addr.is_ipv4()) {
            socket.bind(SocketAddr::new(IpAddr::V4(ip), 0)).map_err(|e| format!("bind {ip}: {e}"))?;
        }
        let stream = socket.connect(replica.addr).await.map_err(|e| format!("connect {}: {e}", replica.addr))?;
        // Latency is the point of the exercise: never let Nagle hold a frame back.
        stream.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        let url = format!("ws://{}/ws/{user}", replica.authority);
        let mut request = url.into_client_request().map_err(|e| format!("WebSocket request: {e}"))?;
        if let Some(protocol) = subprotocol {
            let value = protocol.parse().map_err(|_| format!("subprotocol {protocol:?}: not a header value"))?;
            request.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, value);
        }
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .map_err(|e| format!("WebSocket handshake with {}: {e}", replica.authority))?;
        Ok(ws)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, open)
        .await
        .unwrap_or_else(|_| Err(format!("WebSocket to {} timed out", replica.authority)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loopback_urls() {
        let r = Replica::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!(r.authority, "127.0.0.1:8000");
        assert_eq!(r.addr, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(Replica::parse("ws://127.0.0.1:9/").unwrap().authority, "127.0.0.1:9");
        assert_eq!(Replica::parse("127.0.0.2:8000").unwrap().addr.ip().to_string(), "127.0.0.2");
        assert!(Replica::parse("localhost:8000").unwrap().addr.ip().is_loopback());
    }

    #[test]
    fn refuses_other_hosts_and_paths() {
        assert!(Replica::parse("http://10.1.2.3:8000").unwrap_err().contains("loopback"));
        assert!(Replica::parse("https://127.0.0.1:8000").is_err());
        assert!(Replica::parse("http://127.0.0.1:8000/ws").is_err());
    }

    #[test]
    fn keys_use_the_base64_alphabet() {
        let key = unique_key(&run_nonce(), 42);
        assert!(key.bytes().all(|b| b.is_ascii_alphanumeric()), "{key}");
        assert_ne!(unique_key("n", 1), unique_key("n", 2));
    }
}
