//! An `enigma-server` process per replica, configured for one engine through `ENIGMA__…`
//! variables, with the HTTP and WebSocket calls the tests make against it.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};

use super::DEADLINE;
use super::cluster::RedisCluster;
use super::keys::random_key;
use super::netns::Host;
use super::redis::Redis;
use super::sentinel::Sentinel;
use super::tempdir::TempDir;
use super::ws::Ws;

/// Every per-client limit off (see `Server::start`).
const UNLIMITED: [(&str, &str); 14] = [
    ("ENIGMA__SERVER__MAX_CONNECTIONS_PER_ADDRESS", "0"),
    ("ENIGMA__LIMITS__MAX_UNUSED_REGISTRATIONS_PER_PREFIX", "0"),
    ("ENIGMA__LIMITS__INBOX_SHARE", "0"),
    ("ENIGMA__LIMITS__INBOX_SHARE_BYTES", "0"),
    ("ENIGMA__LIMITS__STRANGER_POOL", "0"),
    ("ENIGMA__LIMITS__STORAGE__PER_PREFIX", "0"),
    ("ENIGMA__LIMITS__STORAGE__PER_SENDER", "0"),
    ("ENIGMA__RATE__LOGIN_PER_ADDRESS__BURST", "0"),
    ("ENIGMA__RATE__CHALLENGE_PER_ADDRESS__BURST", "0"),
    ("ENIGMA__RATE__SOCKET_PER_ADDRESS__BURST", "0"),
    ("ENIGMA__RATE__DIRECTORY_PER_ADDRESS__BURST", "0"),
    ("ENIGMA__RATE__SOCKET_PER_USER__BURST", "0"),
    ("ENIGMA__RATE__SEND_MESSAGES_PER_USER__BURST", "0"),
    ("ENIGMA__RATE__SEND_BYTES_PER_USER__BURST", "0"),
];

/// A running `enigma-server` process.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    /// The embedded engine's data directory, removed once no server or config holds it.
    data: Option<Arc<TempDir>>,
}

/// How to start a replica: engine and any `ENIGMA__…` overrides.
#[derive(Clone, Default)]
pub struct ServerConfig {
    pub redis_url: Option<String>,
    pub prefix: String,
    pub env: Vec<(String, String)>,
    /// The network namespace to run in (listening on its address), instead of loopback.
    pub host: Option<Host>,
    /// Keep the shipped per-client limits instead of turning them off (see `Server::start`).
    pub shipped_limits: bool,
    /// The embedded engine's data directory: every server started from this config (or a
    /// clone) uses it, so a restart finds what the last one kept.
    pub data: Option<Arc<TempDir>>,
}

impl ServerConfig {
    /// The memory engine, chosen explicitly (a server without Redis and without `engine` would
    /// keep its data in `./enigma-data`). `spawn` chooses it too for configs that name neither.
    pub fn memory() -> Self {
        // Without Redis `spawn` names the memory engine unless the config gives a data directory.
        Self::default()
    }
    /// The embedded engine on a fresh data directory of its own.
    pub fn embedded() -> Self {
        let data = Arc::new(TempDir::new("data"));
        Self { data: Some(data.clone()), ..Self::default() }
            .with("ENIGMA__ENGINE", "embedded")
            .with("ENIGMA__DATA_DIR", data.path().display())
    }
    /// The embedded engine's data directory (`embedded` configs only).
    pub fn data_dir(&self) -> &std::path::Path {
        self.data.as_deref().expect("an embedded engine's config").path()
    }
    pub fn redis(redis: &Redis) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        Self {
            redis_url: Some(redis.url()),
            prefix: format!("t{}x{}:", std::process::id(), N.fetch_add(1, Ordering::Relaxed)),
            env: Vec::new(),
            ..Self::default()
        }
    }
    pub fn cluster(cluster: &RedisCluster) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        Self {
            redis_url: Some(cluster.url()),
            prefix: format!("c{}x{}:", std::process::id(), N.fetch_add(1, Ordering::Relaxed)),
            env: vec![("ENIGMA__REDIS__MODE".into(), "cluster".into())],
            ..Self::default()
        }
    }
    pub fn sentinel(sentinel: &Sentinel) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        Self {
            redis_url: Some(sentinel.url()),
            prefix: format!("s{}x{}:", std::process::id(), N.fetch_add(1, Ordering::Relaxed)),
            env: vec![
                ("ENIGMA__REDIS__MODE".into(), "sentinel".into()),
                ("ENIGMA__REDIS__SENTINEL_MASTER".into(), "mymaster".into()),
            ],
            ..Self::default()
        }
    }
    /// Runs the replica inside `host`'s namespace, listening on its address.
    pub fn in_host(mut self, host: &Host) -> Self {
        self.host = Some(host.clone());
        self
    }
    /// The per-client limits as shipped (the defaults a deployment gets), not turned off.
    pub fn with_shipped_limits(mut self) -> Self {
        self.shipped_limits = true;
        self
    }
    pub fn with(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
}

impl Server {
    pub fn start(config: &ServerConfig) -> Server {
        Self::spawn(config, None)
    }

    /// Like `start`, with the server's stderr (its log) written to `log`.
    pub fn start_logging_to(config: &ServerConfig, log: &std::path::Path) -> Server {
        Self::spawn(config, Some(Stdio::from(std::fs::File::create(log).expect("create the log file"))))
    }

    fn spawn(config: &ServerConfig, stderr: Option<Stdio>) -> Server {
        let binary = env!("CARGO_BIN_EXE_enigma-server");
        let (mut command, addr) = match &config.host {
            Some(host) => (host.command(binary), format!("{}:0", host.ip)),
            None => (Command::new(binary), "127.0.0.1:0".to_owned()),
        };
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ENIGMA__SERVER__ADDR", addr)
            .env("ENIGMA__LOG__LEVEL", std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(stderr.unwrap_or_else(|| {
                if std::env::var_os("TEST_LOG").is_some() { Stdio::inherit() } else { Stdio::null() }
            }));
        // The limits (tests/it/limits.rs sets the ones it checks) would refuse the load and
        // slow-reader scenarios of other tests, which send thousands from one user and one
        // address: off unless a test sets them (its variables come later and win).
        if !config.shipped_limits {
            for (k, v) in UNLIMITED {
                command.env(k, v);
            }
        }
        match &config.redis_url {
            Some(url) => command.env("ENIGMA__REDIS__URL", url).env("ENIGMA__REDIS__PREFIX", &config.prefix),
            // Never the default data directory in the checkout; `embedded()` sets its own.
            None => command.env("ENIGMA__ENGINE", "memory"),
        };
        for (k, v) in &config.env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn enigma-server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                panic!("enigma-server did not start listening ({status:?})");
            }
        };
        Server { child, addr, http: reqwest::Client::new(), data: config.data.clone() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Sends a GET over a plain TCP socket (for requests an HTTP client refuses to build) and
    /// returns the response's status code.
    pub async fn raw_get_status(&self, path: &str) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        // The server may answer (and close) before it has read the whole request.
        let _ = stream.write_all(request.as_bytes()).await;
        let mut response = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response)).await;
        let head = String::from_utf8_lossy(&response[..response.len().min(64)]).into_owned();
        head.split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {head:?}"))
    }

    /// A request made from the local address `local` (another client: 127.0.0.2, or one of
    /// thousands of an `Ipv6Net`'s), over a connection of its own, with a JSON body if any:
    /// the status and the JSON answer. Plain HTTP/1.1 on a bound socket, so that thousands cost
    /// no client setup each.
    pub async fn request_from(&self, local: IpAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = if local.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.expect("a socket");
        socket.bind(SocketAddr::new(local, 0)).unwrap_or_else(|e| panic!("bind {local}: {e}"));
        let body = body.map(Value::to_string).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let exchange = async {
            let mut stream = socket.connect(self.addr).await?;
            stream.write_all(request.as_bytes()).await?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await?;
            Ok::<_, std::io::Error>(response)
        };
        let response = tokio::time::timeout(DEADLINE, exchange)
            .await
            .unwrap_or_else(|_| panic!("no answer to {method} {path} from {local}"))
            .unwrap_or_else(|e| panic!("{method} {path} from {local}: {e}"));
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {head:?}"));
        (status, serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned())))
    }

    /// The sum of a metric's series on `/metrics` (0 if absent).
    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics().get(name).await
    }

    /// A handle on `/metrics` that a spawned task can own.
    pub fn metrics(&self) -> Metrics {
        Metrics { http: self.http.clone(), url: self.url("/metrics") }
    }

    /// Logs a key in and returns its user id.
    pub async fn login(&self, key: &str) -> String {
        let (status, body) = self.get(&format!("/login/{key}")).await;
        assert_eq!(status, 200, "login failed: {body}");
        body["userId"].as_str().unwrap().to_owned()
    }

    /// A fresh user with a random key.
    pub async fn new_user(&self) -> String {
        self.login(&random_key()).await
    }

    pub async fn connect(&self, user: &str) -> Ws {
        Ws::connect(&self.ws_url(&format!("/connect/{user}")), None).await
    }

    pub async fn connect_v1(&self, user: &str) -> Ws {
        Ws::connect(&self.ws_url(&format!("/ws/{user}")), Some("enigma.v1")).await
    }

    /// Sends SIGTERM and waits (at most `DEADLINE`) for the exit status.
    pub fn terminate(self) -> std::process::ExitStatus {
        self.sigterm();
        self.wait_exit(DEADLINE).expect("enigma-server did not exit after SIGTERM")
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("wait for enigma-server").is_none()
    }

    /// Sends SIGTERM and returns at once: the server drains while the test watches.
    pub fn sigterm(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -TERM failed");
    }

    /// The exit status once the process has exited, or `None` if it is still running after
    /// `limit` (it is then killed by the drop).
    pub fn wait_exit(mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for enigma-server") {
                drop(self.data.take());
                std::mem::forget(self);
                return Some(status);
            }
            if start.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL: nothing of the process runs after it (no drain, no flush).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(self.data.take());
        std::mem::forget(self);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one server's `/metrics`.
#[derive(Clone)]
pub struct Metrics {
    http: reqwest::Client,
    url: String,
}

impl Metrics {
    /// The sum of a metric's series (0 if absent).
    pub async fn get(&self, name: &str) -> f64 {
        let text = self.http.get(&self.url).send().await.unwrap().text().await.unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}
