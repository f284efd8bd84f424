//! Real processes for the tests: `redis-server` on a free port, `enigma-server` replicas, and
//! HTTP/WebSocket clients. Every process is killed when its handle drops (also on a panic),
//! every test gets its own ports and key prefix, so tests run in parallel.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expected event may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `redis-server` of this test's own, on a free port, without persistence unless asked.
pub struct Redis {
    child: Child,
    pub port: u16,
    pub dir: std::path::PathBuf,
    args: Vec<String>,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Redis {
        (0..20)
            .find_map(|_| Self::start_on(free_port(), extra))
            .expect("could not start redis-server (is it installed? make test installs it)")
    }

    /// One attempt on a given port (`None` if the port was taken meanwhile).
    pub fn start_on(port: u16, extra: &[&str]) -> Option<Redis> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "enigma-itc-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut args: Vec<String> =
            ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--daemonize", "no"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        args.extend(["--dir".into(), dir.display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut redis = Redis { child: spawn_redis(&args), port, dir, args };
        if redis.wait_ready() {
            Some(redis)
        } else {
            None // dropped: killed and its directory removed
        }
    }

    fn wait_ready(&mut self) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false; // exited: most likely the port was taken meanwhile
            }
            if self.cli(&["PING"]).map(|o| o.trim() == "PONG").unwrap_or(false) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Freezes the process (SIGSTOP): connections stay open and nothing answers.
    pub fn pause(&self) {
        signal(self.child.id(), "STOP");
    }

    /// Thaws a paused process (SIGCONT).
    pub fn resume(&self) {
        signal(self.child.id(), "CONT");
    }

    /// Kills the process (SIGKILL); `restart` brings it back.
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port and data directory.
    pub fn restart(&mut self) {
        let start = Instant::now();
        loop {
            self.child = spawn_redis(&self.args);
            if self.wait_ready() {
                return;
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            assert!(start.elapsed() < DEADLINE, "redis-server did not come back on port {}", self.port);
        }
    }

    /// Runs `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        redis_cli(self.port, args)
    }

    /// Whether the node answers `ROLE` as a master.
    pub fn is_master(&self) -> bool {
        self.cli(&["ROLE"]).is_some_and(|role| role.starts_with("master"))
    }

    /// Field `name` of `INFO replication` (e.g. `master_repl_offset`).
    pub fn replication(&self, name: &str) -> Option<String> {
        let info = self.cli(&["INFO", "replication"])?;
        info.lines().find_map(|l| l.strip_prefix(&format!("{name}:")).map(|v| v.trim().to_owned()))
    }

    /// Whether `replica` has read everything this master wrote so far.
    pub fn copied_to(&self, replica: &Redis) -> bool {
        let written = self.replication("master_repl_offset");
        written.is_some() && written == replica.replication("slave_repl_offset")
    }
}

fn spawn_redis(args: &[String]) -> Child {
    Command::new("redis-server")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (make test installs it)")
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// Polls `check` until it holds; fails the test after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running `enigma-server` process.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub http: reqwest::Client,
}

/// How to start a replica: engine and any `ENIGMA__…` overrides.
#[derive(Clone, Default)]
pub struct ServerConfig {
    pub redis_url: Option<String>,
    pub prefix: String,
    pub env: Vec<(String, String)>,
}

impl ServerConfig {
    pub fn memory() -> Self {
        Self::default()
    }
    pub fn redis(redis: &Redis) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        Self {
            redis_url: Some(redis.url()),
            prefix: format!("t{}x{}:", std::process::id(), N.fetch_add(1, Ordering::Relaxed)),
            env: Vec::new(),
        }
    }
    pub fn cluster(cluster: &RedisCluster) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        Self {
            redis_url: Some(cluster.url()),
            prefix: format!("c{}x{}:", std::process::id(), N.fetch_add(1, Ordering::Relaxed)),
            env: vec![("ENIGMA__REDIS__MODE".into(), "cluster".into())],
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
        }
    }
    pub fn with(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
}

impl Server {
    pub fn start(config: &ServerConfig) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_enigma-server"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ENIGMA__SERVER__ADDR", "127.0.0.1:0")
            .env("ENIGMA__LOG__LEVEL", std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("TEST_LOG").is_some() { Stdio::inherit() } else { Stdio::null() });
        if let Some(url) = &config.redis_url {
            command.env("ENIGMA__REDIS__URL", url).env("ENIGMA__REDIS__PREFIX", &config.prefix);
        }
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
        Server { child, addr, http: reqwest::Client::new() }
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

    /// The sum of a metric's series on `/metrics` (0 if absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.http.get(self.url("/metrics")).send().await.unwrap().text().await.unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
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

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::forget(self);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static KEYS: AtomicU32 = AtomicU32::new(0);

/// A unique base64-looking public key, with `/` and `+` like a raw DER key in base64.
pub fn random_key() -> String {
    let n = KEYS.fetch_add(1, Ordering::Relaxed);
    format!("MIIBIjANBgkqhkiG9w0BAQEFAAOC/{}+{}x{}==", std::process::id(), n, uuid_like())
}

fn uuid_like() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    format!("{:016x}", h.finish())
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

/// A TCP proxy in front of Redis that can turn its open connections into black holes: they
/// stay open and carry nothing (a half-open link after a network fault), while connections
/// made afterwards work normally.
pub struct Blackhole {
    pub port: u16,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Blackhole {
    pub async fn start(upstream: u16) -> Blackhole {
        use std::sync::atomic::AtomicU64;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let generation = std::sync::Arc::new(AtomicU64::new(0));
        let current = generation.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let born = current.load(Ordering::Acquire);
                let current = current.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let alive = move || current.load(Ordering::Acquire) == born;
                    tokio::join!(pipe(cr, sw, alive.clone()), pipe(sr, cw, alive));
                });
            }
        });
        Blackhole { port, generation, task }
    }

    /// Every connection open now stops carrying bytes (without closing).
    pub fn swallow_open_connections(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    alive: impl Fn() -> bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !alive() {
            // Swallow everything from now on, and keep both ends open.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Redis Sentinel of this test's own (`redis-server --sentinel`) on a free port, watching
/// `master` under the name `mymaster` (quorum 1, down after 1 s). Stopped when dropped.
pub struct Sentinel {
    child: Child,
    pub port: u16,
    dir: std::path::PathBuf,
}

impl Sentinel {
    pub fn start(master: &Redis) -> Sentinel {
        for _ in 0..20 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!("enigma-its-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let conf = dir.join("sentinel.conf");
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 10000\n",
                dir.display(),
                master.port
            );
            std::fs::write(&conf, text).unwrap();
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (make test installs it)");
            let mut sentinel = Sentinel { child, port, dir };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = sentinel.child.try_wait() {
                    break; // the port was taken meanwhile: try another
                }
                if sentinel.master_port() == Some(master.port) {
                    return sentinel;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            drop(sentinel);
        }
        panic!("could not start a Sentinel");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn cli(&self, args: &[&str]) -> Option<String> {
        redis_cli(self.port, args)
    }

    /// The port of the master the Sentinel names now.
    pub fn master_port(&self) -> Option<u16> {
        let out = self.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"])?;
        out.lines().nth(1)?.trim().parse().ok()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `redis-cli -p port args…` and returns its output, if it succeeded.
fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A Redis Cluster of this test's own: `masters` masters (and `replicas` replicas for each),
/// `redis-server --cluster-enabled yes` processes on free ports, joined with
/// `redis-cli --cluster create`. Stopped when dropped.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        let count = masters * (1 + replicas);
        let mut nodes = Vec::with_capacity(count);
        while nodes.len() < count {
            // The cluster bus listens on port + 10000: both must be free.
            let port = free_port();
            if port > 55_000 || TcpListener::bind(("127.0.0.1", port + 10_000)).is_err() {
                continue;
            }
            let dir_tag = format!("nodes-{port}.conf");
            let node = Redis::start_on(
                port,
                &["--cluster-enabled", "yes", "--cluster-config-file", &dir_tag, "--cluster-node-timeout", "2000"],
            );
            if let Some(node) = node {
                nodes.push(node);
            }
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        let out = create.output().expect("redis-cli --cluster create");
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let cluster = RedisCluster { nodes };
        let start = Instant::now();
        // Ready: every node sees the cluster ok and knows every replica.
        let ready = |n: &Redis| {
            n.cli(&["CLUSTER", "INFO"]).is_some_and(|i| i.contains("cluster_state:ok"))
                && n.cli(&["CLUSTER", "NODES"])
                    .is_some_and(|all| all.lines().filter(|l| l.contains("slave")).count() == masters * replicas)
        };
        while !cluster.nodes.iter().all(ready) {
            assert!(start.elapsed() < DEADLINE * 3, "cluster never reached cluster_state:ok with its replicas");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// The slot of a key (or of anything carrying the same `{hash tag}`).
    pub fn slot_of(&self, key: &str) -> u16 {
        self.nodes[0].cli(&["CLUSTER", "KEYSLOT", key]).unwrap().trim().parse().unwrap()
    }

    /// `CLUSTER NODES` as seen by the first node, a line of fields per node.
    fn topology(&self) -> Vec<Vec<String>> {
        let nodes = self.nodes[0].cli(&["CLUSTER", "NODES"]).unwrap();
        nodes.lines().map(|l| l.split_whitespace().map(str::to_owned).collect()).collect()
    }

    /// The index in `nodes` of the master that owns `slot`.
    pub fn owner_of(&self, slot: u16) -> usize {
        let owns = |fields: &Vec<String>| {
            fields[8..].iter().any(|range| match range.split_once('-') {
                Some((a, b)) => a.parse::<u16>().is_ok_and(|a| a <= slot) && b.parse::<u16>().is_ok_and(|b| slot <= b),
                None => range.parse::<u16>() == Ok(slot),
            })
        };
        let topology = self.topology();
        self.index_of(topology.iter().find(|f| f[2].contains("master") && owns(f)).expect("a master owns the slot"))
    }

    /// The index in `nodes` of a replica of the master `nodes[master]`.
    pub fn replica_of(&self, master: usize) -> usize {
        let id = self.nodes[master].cli(&["CLUSTER", "MYID"]).unwrap().trim().to_owned();
        let topology = self.topology();
        self.index_of(topology.iter().find(|f| f[3] == id).expect("the master has a replica"))
    }

    /// The index in `nodes` of the node a `CLUSTER NODES` line describes (`ip:port@bus`).
    fn index_of(&self, fields: &[String]) -> usize {
        let port: u16 = fields[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
        self.nodes.iter().position(|n| n.port == port).expect("the node is one of ours")
    }

    /// Moves `slot` to `nodes[to]` the way `redis-cli --cluster reshard` does: both ends marked
    /// (IMPORTING / MIGRATING), the keys moved with MIGRATE, then the slot assigned on every
    /// master. `pause` is held in each intermediate state, so traffic meets all of them.
    pub fn migrate_slot(&self, slot: u16, to: usize, pause: Duration) {
        let from = self.owner_of(slot);
        assert_ne!(from, to, "slot {slot} is already on node {to}");
        let id = |i: usize| self.nodes[i].cli(&["CLUSTER", "MYID"]).unwrap().trim().to_owned();
        let (source, target, slot_arg) = (&self.nodes[from], &self.nodes[to], slot.to_string());
        let ok = |node: &Redis, args: &[&str]| {
            let out = node.cli(args).unwrap_or_default();
            assert_eq!(out.trim(), "OK", "{args:?} on port {}", node.port);
        };
        ok(target, &["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &id(from)]);
        ok(source, &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &id(to)]);
        std::thread::sleep(pause);
        loop {
            let keys = source.cli(&["CLUSTER", "GETKEYSINSLOT", &slot_arg, "100"]).unwrap();
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let port = target.port.to_string();
            let mut migrate = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            migrate.extend(keys);
            ok(source, &migrate);
        }
        std::thread::sleep(pause);
        let target_id = id(to);
        ok(target, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &target_id]);
        ok(source, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &target_id]);
        for (i, node) in self.nodes.iter().enumerate() {
            if i != from && i != to && node.is_master() {
                ok(node, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &target_id]);
            }
        }
        assert_eq!(self.owner_of(slot), to, "slot {slot} moved");
    }

    /// The seed nodes, as `redis.url` takes them in cluster mode.
    pub fn url(&self) -> String {
        self.nodes.iter().map(|n| format!("redis://127.0.0.1:{}/", n.port)).collect::<Vec<_>>().join(",")
    }
}
