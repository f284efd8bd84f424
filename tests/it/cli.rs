//! The `enigma` CLI and the SDK against real servers: two CLI processes talk through a
//! server (memory and Redis engines), the server's storage and logs never hold plaintext, a
//! tampered payload is refused by the recipient, keys are private files, and a client that
//! loses its server reconnects without losing or duplicating a message.
//!
//! Servers here are spawned by this file (not `harness::Server`) because the tests read the
//! server's log: its stderr goes to a file, at level debug. Every process is killed when its
//! guard drops, every test has its own directory, ports and key prefix.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{ClosedPort, DEADLINE, Redis, TempDir, Ws, random_key};
use enigma::sdk::{self, ConnectOptions, Content, Identity, PublicKey};

/// A text no test could produce by accident, to search for in storage and logs.
fn secret(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{what} {}-{}-{:?}", std::process::id(), N.fetch_add(1, Ordering::Relaxed), Instant::now())
}

/// One pipe of a child process, read line by line by a thread.
struct Pipe {
    rx: mpsc::Receiver<String>,
    lines: Vec<String>,
    cursor: usize,
    closed: bool,
}

impl Pipe {
    fn read(reader: impl Read + Send + 'static) -> Pipe {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                // Keep draining after the receiver is gone, so the child never writes into
                // a closed pipe.
                let _ = tx.send(line);
            }
        });
        Pipe { rx, lines: Vec::new(), cursor: 0, closed: false }
    }

    /// Takes one more line, waiting until `deadline`; false on timeout or end of the pipe.
    fn pull(&mut self, deadline: Instant) -> bool {
        if self.closed {
            return false;
        }
        match self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                self.lines.push(line);
                true
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.closed = true;
                false
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
        }
    }

    fn drain(&mut self) {
        while let Ok(line) = self.rx.try_recv() {
            self.lines.push(line);
        }
    }

    fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// A child process whose stdout and stderr are collected; killed when dropped.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    out: Pipe,
    err: Pipe,
}

impl Proc {
    fn spawn(name: &str, command: &mut Command) -> Proc {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let out = Pipe::read(child.stdout.take().unwrap());
        let err = Pipe::read(child.stderr.take().unwrap());
        Proc { name: name.into(), stdin: child.stdin.take(), child, out, err }
    }

    fn context(&mut self) -> String {
        self.out.drain();
        self.err.drain();
        format!("--- {} stdout:\n{}\n--- stderr:\n{}", self.name, self.out.text(), self.err.text())
    }

    /// The next stdout line not returned before.
    fn next_line(&mut self) -> String {
        let deadline = Instant::now() + DEADLINE;
        while self.out.cursor >= self.out.lines.len() {
            if !self.out.pull(deadline) {
                panic!("no further output line\n{}", self.context());
            }
        }
        self.out.cursor += 1;
        self.out.lines[self.out.cursor - 1].clone()
    }

    /// The next stdout line, parsed as JSON.
    fn next_json(&mut self) -> Value {
        let line = self.next_line();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{}", self.context()))
    }

    /// Waits for a stderr line containing `pattern` (also one printed already).
    fn wait_stderr(&mut self, pattern: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        let mut checked = 0;
        loop {
            if let Some(line) = self.err.lines[checked..].iter().find(|l| l.contains(pattern)) {
                return line.clone();
            }
            checked = self.err.lines.len();
            if !self.err.pull(deadline) {
                panic!("no stderr line containing {pattern:?}\n{}", self.context());
            }
        }
    }

    fn write_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the exit (with a deadline) and the end of both pipes; returns the exit code.
    fn wait_exit(&mut self) -> i32 {
        self.wait_exit_within(DEADLINE)
    }

    /// `wait_exit` for a command known to take longer (a whole directory's audit).
    fn wait_exit_within(&mut self, limit: Duration) -> i32 {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                panic!("did not exit\n{}", self.context());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        while self.out.pull(deadline) {}
        while self.err.pull(deadline) {}
        status.code().unwrap_or(-1)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `enigma-server` logging at debug into a file.
struct LoggedServer {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl LoggedServer {
    fn memory(dir: &Path) -> LoggedServer {
        Self::start(dir, &[("ENIGMA__ENGINE", "memory")], "127.0.0.1:0")
    }

    fn redis(dir: &Path, redis: &Redis, prefix: &str) -> LoggedServer {
        Self::start(dir, &[("ENIGMA__REDIS__URL", &redis.url()), ("ENIGMA__REDIS__PREFIX", prefix)], "127.0.0.1:0")
    }

    fn start(dir: &Path, env: &[(&str, &str)], addr: &str) -> LoggedServer {
        static N: AtomicU32 = AtomicU32::new(0);
        let log = dir.join(format!("server-{}.log", N.fetch_add(1, Ordering::Relaxed)));
        let mut child = Command::new(env!("CARGO_BIN_EXE_enigma-server"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ENIGMA__SERVER__ADDR", addr)
            .env("ENIGMA__LOG__LEVEL", "debug")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("spawn enigma-server");
        let mut stdout = Pipe::read(child.stdout.take().unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            if let Some(addr) = stdout.lines.iter().find_map(|l| l.strip_prefix("listening on ")) {
                break addr.parse().unwrap();
            }
            if !stdout.pull(deadline) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("enigma-server did not start:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            }
        };
        LoggedServer { child, addr, log }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// SIGTERM (the server closes sockets with 1001), then waits for the exit.
    fn terminate(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + DEADLINE;
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for LoggedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the CLI against one server, with a home directory of the test's own.
struct Cli {
    home: PathBuf,
    server: String,
    /// The server's log, shown when a command fails unexpectedly.
    log: Option<PathBuf>,
}

/// A user created with `enigma keygen` and `enigma login`.
struct User {
    key: PathBuf,
    id: String,
    public_key: String,
}

/// The outcome of a CLI run that was waited for.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Cli {
    fn of(dir: &TempDir, server: &LoggedServer) -> Cli {
        Cli { home: dir.path().to_owned(), server: server.url(), log: Some(server.log.clone()) }
    }

    fn at(dir: &TempDir, server: &str) -> Cli {
        Cli { home: dir.path().to_owned(), server: server.into(), log: None }
    }

    fn command(&self, key: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_enigma"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .args(["--server", &self.server, "--key"])
            .arg(key)
            .args(args);
        command
    }

    fn spawn(&self, key: &Path, args: &[&str]) -> Proc {
        Proc::spawn(&format!("enigma {}", args.join(" ")), &mut self.command(key, args))
    }

    /// Runs to the end, with `input` on stdin.
    fn run(&self, key: &Path, args: &[&str], input: &str) -> Run {
        let mut proc = self.spawn(key, args);
        proc.stdin.as_mut().unwrap().write_all(input.as_bytes()).unwrap();
        proc.close_stdin();
        let code = proc.wait_exit();
        Run { code, stdout: proc.out.text(), stderr: proc.err.text() }
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, key: &Path, args: &[&str]) -> String {
        let run = self.run(key, args, "");
        if run.code != 0 {
            let log = self.log.as_ref().map(|log| std::fs::read_to_string(log).unwrap_or_default()).unwrap_or_default();
            panic!("enigma {args:?} failed ({}):\n{}\n{}\n--- server log:\n{log}", run.code, run.stdout, run.stderr);
        }
        run.stdout
    }

    fn user(&self, name: &str) -> User {
        let key = self.home.join(format!("{name}.key"));
        let public_key = self.ok(&key, &["keygen"]).trim().to_owned();
        let id = self.ok(&key, &["login"]).trim().to_owned();
        assert_eq!(id.len(), 36, "a user id: {id}");
        User { key, id, public_key }
    }
}

/// Everything under `prefix` in Redis, values included, as text.
fn redis_contents(redis: &Redis, prefix: &str) -> String {
    let keys = redis.cli(&["--scan", "--pattern", &format!("{prefix}*")]).unwrap();
    let mut all = String::new();
    for key in keys.lines().filter(|k| !k.is_empty()) {
        let kind = redis.cli(&["TYPE", key]).unwrap();
        let value = match kind.trim() {
            "string" => redis.cli(&["GET", key]),
            "hash" => redis.cli(&["HGETALL", key]),
            "stream" => redis.cli(&["XRANGE", key, "-", "+"]),
            "list" => redis.cli(&["LRANGE", key, "0", "-1"]),
            "set" => redis.cli(&["SMEMBERS", key]),
            "zset" => redis.cli(&["ZRANGE", key, "0", "-1", "WITHSCORES"]),
            _ => None,
        };
        all.push_str(&format!("{key} ({}):\n{}\n", kind.trim(), value.unwrap_or_default()));
    }
    all
}

enum Engine {
    Memory,
    Redis,
}

/// Alice sends to Bob while he is offline (the message is stored), then while he listens;
/// Bob's `listen --json` prints both intact; acknowledged messages are not delivered again;
/// neither storage nor the server's debug log ever contains the plaintext.
fn conversation(engine: Engine) {
    let dir = TempDir::new("conversation");
    let prefix = format!("cli{}:", std::process::id());
    let redis = matches!(engine, Engine::Redis).then(Redis::start);
    let server = match &redis {
        Some(redis) => LoggedServer::redis(dir.path(), redis, &prefix),
        None => LoggedServer::memory(dir.path()),
    };
    let cli = Cli::of(&dir, &server);
    let alice = cli.user("alice");
    let bob = cli.user("bob");

    // 1. Bob is offline: the message is stored.
    let first = secret("attack at dawn");
    let stored_id = cli.ok(&alice.key, &["send", &bob.id, &first]).trim().to_owned();
    if let Some(redis) = &redis {
        let inbox = format!("{prefix}inbox:{{{}}}", bob.id);
        let entries = redis.cli(&["XRANGE", &inbox, "-", "+"]).unwrap();
        assert!(entries.contains(&stored_id), "the message is in Bob's inbox stream: {entries}");
        assert!(entries.contains(&alice.id), "{entries}");
        let everything = redis_contents(redis, &prefix);
        assert!(everything.contains(&inbox), "{everything}");
        assert!(!everything.contains(&first), "Redis holds the plaintext:\n{everything}");
        assert!(!everything.contains("attack"), "{everything}");
    }

    // 2. Bob listens: the stored message arrives, then a live one (multi-line, from stdin).
    let mut listener = cli.spawn(&bob.key, &["listen", "--json", "--count", "2"]);
    listener.wait_stderr("listening as");
    let got = listener.next_json();
    assert_eq!(got["text"], first.as_str(), "{got}");
    assert_eq!(got["from"], alice.id.as_str());
    assert_eq!(got["id"], stored_id.as_str());
    assert!(got["ts"].as_u64().unwrap() > 1_600_000_000_000);
    let second = format!("{}\nüñïçødé line two ✓", secret("second"));
    let sent = cli.run(&alice.key, &["send", &bob.id, "-"], &format!("{second}\n"));
    assert_eq!(sent.code, 0, "{}", sent.stderr);
    let got = listener.next_json();
    assert_eq!(got["text"], second.as_str(), "one trailing newline dropped, the rest intact: {got}");
    assert_eq!(listener.wait_exit(), 0, "--count 2 exits cleanly\n{}", listener.context());

    // 3. Both were acknowledged after printing: a new listener gets only what comes next.
    if let Some(redis) = &redis {
        let inbox = format!("{prefix}inbox:{{{}}}", bob.id);
        assert_eq!(redis.cli(&["XLEN", &inbox]).unwrap().trim(), "0", "acknowledged messages leave the inbox");
    }
    let mut listener = cli.spawn(&bob.key, &["listen", "--json", "--count", "1"]);
    listener.wait_stderr("listening as");
    let third = secret("third");
    cli.ok(&alice.key, &["send", &bob.id, &third]);
    assert_eq!(listener.next_json()["text"], third.as_str(), "nothing redelivered before it");
    assert_eq!(listener.wait_exit(), 0);

    // Plain output: "<from>: <text>".
    let mut listener = cli.spawn(&bob.key, &["listen", "--count", "1"]);
    listener.wait_stderr("listening as");
    let fourth = secret("fourth");
    cli.ok(&alice.key, &["send", &bob.id, &fourth]);
    assert_eq!(listener.next_line(), format!("{}: {fourth}", alice.id));
    assert_eq!(listener.wait_exit(), 0);

    // 4. The server logged at debug, and never a plaintext.
    let log = server.log();
    assert!(log.contains("session closed"), "debug logging is on:\n{log}");
    for text in [&first, &second, &third, &fourth] {
        let needle = text.lines().next().unwrap();
        assert!(!log.contains(needle), "the server log holds plaintext {needle:?}:\n{log}");
    }
    if let Some(redis) = &redis {
        let everything = redis_contents(redis, &prefix);
        for text in [&first, &second, &third, &fourth] {
            assert!(!everything.contains(text.lines().next().unwrap()), "{everything}");
        }
    }
}

#[test]
fn two_clis_talk_through_the_memory_engine() {
    conversation(Engine::Memory);
}

#[test]
fn two_clis_talk_through_the_redis_engine() {
    conversation(Engine::Redis);
}

/// A payload modified in transit, and one sealed for someone else, are refused by Bob with a
/// clear error, acknowledged (not redelivered forever), and do not block what follows.
#[tokio::test]
async fn a_tampered_payload_is_refused_by_the_recipient() {
    let dir = TempDir::new("tamper");
    let server = LoggedServer::memory(dir.path());
    let cli = Cli::of(&dir, &server);
    let (alice, bob, carol) = (cli.user("alice"), cli.user("bob"), cli.user("carol"));

    let alice_key = Identity::load(&alice.key).unwrap();
    let bob_public = PublicKey::from_base64url(&bob.public_key).unwrap();
    let carol_public = PublicKey::from_base64url(&carol.public_key).unwrap();
    let sealed = alice_key.seal(&alice.id, &bob.id, &bob_public, &Content::new(secret("pay 10")).to_bytes());
    let tampered = flip_a_ciphertext_bit(&sealed);
    let for_carol = alice_key.seal(&alice.id, &carol.id, &carol_public, &Content::new(secret("carol")).to_bytes());

    let mut ws = Ws::connect(&format!("ws://{}/ws/{}", server.addr, alice.id), Some("enigma.v1")).await;
    for (reference, payload) in [("t1", &tampered), ("t2", &for_carol), ("t3", &"not an enigma payload".to_owned())] {
        ws.send_json(json!({"from": alice.id, "to": bob.id, "payload": payload, "ref": reference})).await;
        let receipt = ws.recv_json().await;
        assert_eq!(
            (receipt["ref"].as_str(), receipt["status"].as_str()),
            (Some(reference), Some("stored")),
            "{receipt}"
        );
    }
    ws.close().await;
    let fine = secret("fine");
    cli.ok(&alice.key, &["send", &bob.id, &fine]);

    let mut listener = cli.spawn(&bob.key, &["listen", "--json", "--count", "4"]);
    for _ in 0..2 {
        let refused = listener.next_json();
        assert_eq!(refused["from"], alice.id.as_str());
        assert!(refused.get("text").is_none(), "{refused}");
        assert!(refused["error"].as_str().unwrap().contains("authentication failed"), "{refused}");
    }
    let malformed = listener.next_json();
    assert!(malformed["error"].as_str().unwrap().contains("not an Enigma payload"), "{malformed}");
    assert_eq!(listener.next_json()["text"], fine.as_str());
    let warning = listener.wait_stderr("was refused");
    assert!(warning.contains("tampered"), "a clear error on stderr: {warning}");
    assert_eq!(listener.wait_exit(), 0);

    // The refused ones were acknowledged: not delivered again.
    let mut listener = cli.spawn(&bob.key, &["listen", "--json", "--count", "1"]);
    listener.wait_stderr("listening as");
    let next = secret("next");
    cli.ok(&alice.key, &["send", &bob.id, &next]);
    assert_eq!(listener.next_json()["text"], next.as_str());
    assert_eq!(listener.wait_exit(), 0);
}

/// The payload with one bit of the ciphertext flipped (still valid base64url).
fn flip_a_ciphertext_bit(payload: &str) -> String {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut wire = engine.decode(payload).unwrap();
    let last = wire.len() - 20; // inside the ciphertext, before the tag
    wire[last] ^= 0x01;
    engine.encode(wire)
}

#[test]
fn keygen_writes_a_private_key_and_refuses_to_overwrite_it() {
    let dir = TempDir::new("keygen");
    // No server needed; a closed port makes sure nothing is contacted.
    let closed = ClosedPort::bind();
    let cli = Cli::at(&dir, &closed.url());
    let key = dir.path().join("keys").join("me.key");
    let public = cli.ok(&key, &["keygen"]).trim().to_owned();
    assert_eq!(public.len(), 43, "base64url of 32 bytes: {public}");
    let original = std::fs::read_to_string(&key).unwrap();
    assert!(original.contains("privateKey"), "{original}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    }

    let again = cli.run(&key, &["keygen"], "");
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("already exists") && again.stderr.contains("--force"), "{}", again.stderr);
    assert_eq!(std::fs::read_to_string(&key).unwrap(), original, "untouched");

    let forced = cli.ok(&key, &["keygen", "--force"]).trim().to_owned();
    assert_ne!(forced, public);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    }

    // The default location is under $HOME/.config/enigma/.
    let mut command = Command::new(env!("CARGO_BIN_EXE_enigma"));
    command.env_clear().env("HOME", dir.path()).arg("keygen");
    let mut proc = Proc::spawn("enigma keygen (default path)", &mut command);
    assert_eq!(proc.wait_exit(), 0, "{}", proc.context());
    assert!(dir.path().join(".config/enigma/identity.key").is_file());

    // whoami works offline and says what is missing.
    let whoami = cli.run(&key, &["whoami"], "");
    assert_eq!(whoami.code, 1);
    assert!(whoami.stdout.contains(&forced), "{}", whoami.stdout);
    assert!(whoami.stderr.contains("enigma login"), "{}", whoami.stderr);
}

#[tokio::test]
async fn mistakes_get_clear_errors_and_a_failing_exit_code() {
    let dir = TempDir::new("errors");
    let server = LoggedServer::memory(dir.path());
    let cli = Cli::of(&dir, &server);
    let alice = cli.user("alice");
    let expect = |run: Run, code: i32, text: &str| {
        assert_eq!(run.code, code, "stdout: {}\nstderr: {}", run.stdout, run.stderr);
        assert!(run.stderr.contains(text), "expected {text:?} in: {}", run.stderr);
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    };
    let unknown = "00000000-0000-4000-8000-000000000000";
    expect(cli.run(&alice.key, &["lookup", unknown], ""), 1, "not found");
    expect(cli.run(&alice.key, &["send", unknown, "hi"], ""), 1, "not found");
    expect(cli.run(&alice.key, &["send", &alice.id, ""], ""), 1, "empty");
    expect(cli.run(&alice.key, &["send", &alice.id, "-"], "\n"), 1, "empty");
    expect(cli.run(&dir.path().join("nobody.key"), &["send", &alice.id, "hi"], ""), 1, "enigma keygen");
    expect(cli.run(&alice.key, &["send"], ""), 2, "Usage");

    // A key registered by another kind of client (an RSA key, like the web client's).
    let login = reqwest::get(format!("{}/login/{}", server.url(), random_key())).await.unwrap();
    let rsa_user = login.json::<Value>().await.unwrap()["userId"].as_str().unwrap().to_owned();
    expect(cli.run(&alice.key, &["send", &rsa_user, "hi"], ""), 1, "another kind of client");
    let lookup = cli.run(&alice.key, &["lookup", &rsa_user], "");
    assert_eq!(lookup.code, 0);
    assert!(lookup.stdout.contains("not an Enigma key"), "{}", lookup.stdout);

    // Not logged in on this server; another server; an unreachable one; https.
    let closed = ClosedPort::bind();
    let other = Cli::at(&dir, &closed.url());
    expect(other.run(&alice.key, &["send", &alice.id, "hi"], ""), 1, "cannot reach the server");
    expect(other.run(&alice.key, &["login"], ""), 1, "cannot reach the server");
    let tls = Cli::at(&dir, "https://example.org");
    expect(tls.run(&alice.key, &["login"], ""), 1, "https");

    // Lookup of an existing user prints its key.
    let bob = cli.user("bob");
    let lookup = cli.ok(&alice.key, &["lookup", &bob.id]);
    assert!(lookup.contains(&bob.public_key), "{lookup}");
}

/// A login holds however the server's URL is typed (scheme and host case, trailing slash, no
/// scheme); another name of the same machine is another server, and the CLI says where the
/// user is logged in instead of only "not logged in".
#[test]
fn a_login_holds_however_the_server_url_is_typed() {
    let dir = TempDir::new("spelling");
    let server = LoggedServer::memory(dir.path());
    let alice = Cli::of(&dir, &server).user("alice");
    let port = server.addr.port();
    let at = |url: String| Cli { server: url, ..Cli::of(&dir, &server) };
    for spelling in
        [format!("http://127.0.0.1:{port}/"), format!("HTTP://127.0.0.1:{port}"), format!("127.0.0.1:{port}")]
    {
        let whoami = at(spelling.clone()).ok(&alice.key, &["whoami"]);
        assert!(whoami.contains(&alice.id), "{spelling}: {whoami}");
        let id = at(spelling.clone()).ok(&alice.key, &["send", &alice.id, "hi"]);
        assert!(!id.trim().is_empty(), "{spelling}: no inbox id");
    }

    let named = at(format!("http://LocalHost:{port}"));
    let run = named.run(&alice.key, &["send", &alice.id, "hi"], "");
    assert_eq!(run.code, 1, "{}", run.stderr);
    let want = format!("not logged in to http://localhost:{port}/; you are logged in to http://127.0.0.1:{port}/");
    assert!(run.stderr.contains(&want), "expected {want:?} in: {}", run.stderr);
    assert!(run.stderr.contains("--server") && run.stderr.contains("enigma login"), "{}", run.stderr);

    // Logged in nowhere.
    let bob = dir.path().join("bob.key");
    at(server.url()).ok(&bob, &["keygen"]);
    let run = at(server.url()).run(&bob, &["listen"], "");
    assert_eq!(run.code, 1, "{}", run.stderr);
    let want = format!("not logged in to http://127.0.0.1:{port}/: run `enigma login` first");
    assert!(run.stderr.contains(&want), "expected {want:?} in: {}", run.stderr);
}

/// A server that is down is reported as unreachable by every command that needs it, logged in
/// or not: never as "not logged in", which `enigma login` could not fix.
#[test]
fn a_stopped_server_is_unreachable_not_a_missing_login() {
    let dir = TempDir::new("stopped");
    let server = LoggedServer::memory(dir.path());
    let cli = Cli::of(&dir, &server);
    let alice = cli.user("alice");
    let url = format!("{}/", server.url());
    server.terminate();
    let refused = format!("cannot reach the server at {url} (connection refused)");
    let stopped = Cli::at(&dir, &url);
    for args in [
        vec!["send", &alice.id, "hi"],
        vec!["listen"],
        vec!["chat", &alice.id],
        vec!["lookup", &alice.id],
        vec!["trust", &alice.id],
        vec!["login"],
    ] {
        let run = stopped.run(&alice.key, &args, "");
        assert_eq!(run.code, 1, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(&refused), "{args:?}: expected {refused:?} in: {}", run.stderr);
        assert!(!run.stderr.contains("not logged in"), "{args:?}: {}", run.stderr);
    }
    // whoami answers offline with what it knows.
    let whoami = stopped.ok(&alice.key, &["whoami"]);
    assert!(whoami.contains(&alice.id) && whoami.contains("unknown (cannot reach"), "{whoami}");

    // Down and never logged in to: the server first, then the login.
    let closed = ClosedPort::bind();
    let run = Cli::at(&dir, &closed.url()).run(&alice.key, &["send", &alice.id, "hi"], "");
    assert_eq!(run.code, 1, "{}", run.stderr);
    let refused = format!("cannot reach the server at {}/ (connection refused)", closed.url());
    assert!(run.stderr.contains(&refused), "expected {refused:?} in: {}", run.stderr);
    let elsewhere = format!("you are not logged in to it either; once it answers, you are logged in to {url}");
    assert!(run.stderr.contains(&elsewhere), "expected {elsewhere:?} in: {}", run.stderr);
}

/// One user, two listeners: the newer one wins, the older stops with a clear message
/// instead of reconnecting and replacing it back.
#[test]
fn a_replaced_listener_stops_instead_of_fighting() {
    let dir = TempDir::new("replaced");
    let server = LoggedServer::memory(dir.path());
    let cli = Cli::of(&dir, &server);
    let bob = cli.user("bob");
    let mut first = cli.spawn(&bob.key, &["listen"]);
    first.wait_stderr("listening as");
    let mut second = cli.spawn(&bob.key, &["listen"]);
    second.wait_stderr("listening as");
    assert_eq!(first.wait_exit(), 1);
    first.wait_stderr("replaced by a newer connection");
    assert!(second.child.try_wait().unwrap().is_none(), "the newer listener keeps running");
}

#[test]
fn chat_sends_typed_lines_and_prints_incoming_ones() {
    let dir = TempDir::new("chat");
    let server = LoggedServer::memory(dir.path());
    let cli = Cli::of(&dir, &server);
    let (alice, bob) = (cli.user("alice"), cli.user("bob"));
    let mut a = cli.spawn(&alice.key, &["chat", &bob.id]);
    let mut b = cli.spawn(&bob.key, &["chat", &alice.id]);
    a.wait_stderr("chatting with");
    b.wait_stderr("chatting with");

    a.write_line("hello bob");
    assert_eq!(b.next_line(), format!("{}> hello bob", &alice.id[..8]));
    b.write_line("hi alice, all good");
    assert_eq!(a.next_line(), format!("{}> hi alice, all good", &bob.id[..8]));

    // A message from a third user shows who sent it.
    let carol = cli.user("carol");
    cli.ok(&carol.key, &["send", &alice.id, "carol here"]);
    assert_eq!(a.next_line(), format!("[from {}] carol here", carol.id));

    a.close_stdin();
    assert_eq!(a.wait_exit(), 0, "end of input ends the chat\n{}", a.context());
}

/// The SDK across server restarts (Redis keeps the data): a SIGTERM (close 1001) and a
/// crash (no close frame). Bob receives every message exactly once and in order; a send made
/// while the server is down completes once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_reconnects_and_loses_nothing() {
    let dir = TempDir::new("reconnect");
    let redis = Redis::start();
    let prefix = format!("rc{}:", std::process::id());
    sdk_reconnects_and_loses_nothing(&dir, &[("ENIGMA__REDIS__URL", redis.url()), ("ENIGMA__REDIS__PREFIX", prefix)])
        .await;
}

/// The same with the embedded engine keeping the data in its file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_reconnects_and_loses_nothing_on_the_embedded_engine() {
    let dir = TempDir::new("reconnect");
    let data = dir.path().join("data").display().to_string();
    sdk_reconnects_and_loses_nothing(&dir, &[("ENIGMA__ENGINE", "embedded".into()), ("ENIGMA__DATA_DIR", data)]).await;
}

async fn sdk_reconnects_and_loses_nothing(dir: &TempDir, env: &[(&str, String)]) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = LoggedServer::start(dir.path(), &env, "127.0.0.1:0");
    let addr = server.addr.to_string();
    let url = server.url();

    let options = ConnectOptions {
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        ..Default::default()
    };
    let alice = sdk::Client::new(&url, Identity::generate()).unwrap();
    let bob = sdk::Client::new(&url, Identity::generate()).unwrap();
    let (alice_id, bob_id) = (alice.login().await.unwrap(), bob.login().await.unwrap());
    let sending = alice.connect(&alice_id, ConnectOptions { receive: false, ..options.clone() }).await.unwrap();
    let mut receiving = bob.connect(&bob_id, options).await.unwrap();
    let mut status = receiving.status();

    let next_text = |message: Option<Result<sdk::Message, sdk::Error>>| match message {
        Some(Ok(message)) => {
            assert_eq!(message.from, alice_id);
            message.text
        }
        other => panic!("expected a message, got {other:?}"),
    };
    sending.send(&bob_id, "one").await.unwrap();
    assert_eq!(next_text(tokio::time::timeout(DEADLINE, receiving.recv()).await.unwrap()), "one");

    // SIGTERM: sockets are closed with 1001; a send made meanwhile waits for the new server.
    server.terminate();
    tokio::time::timeout(DEADLINE, status.wait_for(|s| matches!(s, sdk::Status::Reconnecting { .. })))
        .await
        .expect("bob notices")
        .unwrap();
    let sender = sending.sender();
    let bob_for_send = bob_id.clone();
    let pending = tokio::spawn(async move { sender.send(&bob_for_send, "two").await });
    let server = LoggedServer::start(dir.path(), &env, &addr);
    tokio::time::timeout(DEADLINE, pending).await.expect("the send completes").unwrap().unwrap();
    assert_eq!(next_text(tokio::time::timeout(DEADLINE, receiving.recv()).await.unwrap()), "two");

    // A crash: no close frame, the connection just ends.
    drop(server);
    tokio::time::timeout(DEADLINE, status.wait_for(|s| matches!(s, sdk::Status::Reconnecting { .. })))
        .await
        .expect("bob notices the crash")
        .unwrap();
    let _server = LoggedServer::start(dir.path(), &env, &addr);
    tokio::time::timeout(DEADLINE, status.wait_for(|s| *s == sdk::Status::Connected)).await.unwrap().unwrap();
    for text in ["three", "four"] {
        tokio::time::timeout(DEADLINE, sending.send(&bob_id, text)).await.unwrap().unwrap();
    }
    // Exactly once, in order: nothing redelivered in between.
    assert_eq!(next_text(tokio::time::timeout(DEADLINE, receiving.recv()).await.unwrap()), "three");
    assert_eq!(next_text(tokio::time::timeout(DEADLINE, receiving.recv()).await.unwrap()), "four");
    receiving.close().await;
    sending.close().await;
}

/// A server without a key directory (one that only speaks the specification, or ours with
/// `directory.enabled = false`: 404 at `/directory/root`): the CLI says so once and relies on
/// pins, or refuses it when told to.
#[tokio::test]
async fn a_server_without_a_directory_is_used_with_pins_or_refused_when_required() {
    let dir = TempDir::new("no-directory");
    let server = LoggedServer::start(
        dir.path(),
        &[("ENIGMA__ENGINE", "memory"), ("ENIGMA__DIRECTORY__ENABLED", "false")],
        "127.0.0.1:0",
    );
    let cli = Cli::of(&dir, &server);
    let (alice, bob) = (cli.user("alice"), cli.user("bob"));

    let lookup = cli.run(&alice.key, &["lookup", &bob.id], "");
    assert_eq!(lookup.code, 0, "{}", lookup.stderr);
    assert!(lookup.stdout.contains("directory:   none on this server"), "{}", lookup.stdout);
    assert!(lookup.stdout.contains("pinned:      yes (first use"), "{}", lookup.stdout);
    assert_eq!(lookup.stderr.matches("no verifiable key directory").count(), 1, "{}", lookup.stderr);
    let sent = cli.run(&alice.key, &["send", &bob.id, "hi"], "");
    assert_eq!(sent.code, 0, "{}", sent.stderr);
    assert_eq!(sent.stderr.matches("no verifiable key directory").count(), 1, "{}", sent.stderr);

    for args in [
        vec!["--require-directory", "lookup", &bob.id],
        vec!["--require-directory", "send", &bob.id, "hi"],
        vec!["audit"],
    ] {
        let run = cli.run(&alice.key, &args, "");
        assert_eq!(run.code, 1, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains("has no key directory (404 at /directory/root)"), "{args:?}: {}", run.stderr);
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    }
    let forget = cli.run(&alice.key, &["forget-root"], "");
    assert_eq!(forget.code, 0, "{}", forget.stderr);
    assert!(forget.stderr.contains("no directory root was kept"), "{}", forget.stderr);
}

/// A server whose directory the CLI verified cannot turn the proofs off: once a root is kept for
/// it, its 404 at `/directory/root` is refused (no fall-back to pins) until `enigma forget-root`.
/// The kept root is moved in the pin file from a server with a directory to one without (as if
/// the first had turned its directory off).
#[test]
fn a_server_that_had_a_directory_cannot_withdraw_it() {
    let dir = TempDir::new("withdrawn");
    let with = LoggedServer::memory(dir.path());
    let without = LoggedServer::start(
        dir.path(),
        &[("ENIGMA__ENGINE", "memory"), ("ENIGMA__DIRECTORY__ENABLED", "false")],
        "127.0.0.1:0",
    );
    let (cli, withdrawn) = (Cli::of(&dir, &with), Cli::of(&dir, &without));
    let (alice, bob) = (cli.user("alice"), cli.user("bob"));
    cli.ok(&alice.key, &["lookup", &bob.id]);
    let carol = withdrawn.user("carol");
    let pins_path = alice.key.with_file_name("alice.key.pins.json");
    let pins = std::fs::read_to_string(&pins_path).unwrap();
    assert!(pins.contains("\"roots\""), "{pins}");
    std::fs::write(&pins_path, pins.replace(&with.url(), &without.url())).unwrap();

    let lookup = withdrawn.run(&alice.key, &["lookup", &carol.id], "");
    assert_eq!(lookup.code, 1, "{}", lookup.stderr);
    assert!(lookup.stderr.contains("had a key directory (epoch"), "{}", lookup.stderr);
    assert!(lookup.stderr.contains("now says it has none: refusing"), "{}", lookup.stderr);
    assert!(!lookup.stderr.contains("no verifiable key directory"), "{}", lookup.stderr);
    let pins = std::fs::read_to_string(&pins_path).unwrap();
    assert!(!pins.contains(&carol.public_key), "carol's unproven key was pinned: {pins}");
    let audit = withdrawn.run(&alice.key, &["audit"], "");
    assert_eq!(audit.code, 1, "{}", audit.stderr);
    assert!(audit.stderr.contains("now says it has none: refusing"), "{}", audit.stderr);

    // Once its operator said so, the root is forgotten and the server is used with pins alone.
    assert_eq!(withdrawn.run(&alice.key, &["forget-root"], "").code, 0);
    let lookup = withdrawn.ok(&alice.key, &["lookup", &carol.id]);
    assert!(lookup.contains("directory:   none on this server"), "{lookup}");
}

/// End to end against the relay's key directory: a key looked up right after its owner's login
/// is proven once published (the client waits for it), sends go through with nothing said about
/// a missing directory, `--require-directory` is satisfied, and `enigma audit` verifies the whole
/// history and keeps the newest root.
#[test]
fn keys_are_proven_by_the_relays_directory() {
    let dir = TempDir::new("directory");
    let server = LoggedServer::memory(dir.path());
    let cli = Cli::of(&dir, &server);
    let (alice, bob) = (cli.user("alice"), cli.user("bob"));

    let lookup = cli.ok(&alice.key, &["lookup", &bob.id]);
    assert!(lookup.contains("directory:   proven (version 1 of the key"), "{lookup}");
    let sent = cli.run(&alice.key, &["--require-directory", "send", &bob.id, "hi"], "");
    assert_eq!(sent.code, 0, "{}", sent.stderr);
    assert!(!sent.stderr.contains("no verifiable key directory"), "{}", sent.stderr);
    let mut listener = cli.spawn(&bob.key, &["--require-directory", "listen", "--json", "--count", "1"]);
    listener.wait_stderr("listening as");
    assert_eq!(listener.next_json()["text"], "hi");
    assert_eq!(listener.wait_exit(), 0);

    let audit = cli.ok(&alice.key, &["audit"]);
    assert!(audit.contains("epochs:      1 to "), "{audit}");
    let pins = std::fs::read_to_string(alice.key.with_file_name("alice.key.pins.json")).unwrap();
    assert!(pins.contains("\"roots\""), "the newest root is kept beside the pins: {pins}");
}

/// End to end: a key swapped in Redis (as an attacker with write access would) before the
/// first contact is refused by the directory at that first contact, not only after a pin.
#[test]
fn a_key_swapped_before_first_contact_is_refused_by_the_directory() {
    let dir = TempDir::new("directory-swap");
    let prefix = format!("dirswap{}:", std::process::id());
    let redis = Redis::start();
    let server = LoggedServer::redis(dir.path(), &redis, &prefix);
    let cli = Cli::of(&dir, &server);
    let (alice, bob, mallory) = (cli.user("alice"), cli.user("bob"), cli.user("mallory"));
    // Bob is published first (his own connect waits for it), then his record is overwritten.
    cli.ok(&bob.key, &["send", &bob.id, "published"]);
    redis.cli(&["HSET", &format!("{prefix}user:{{{}}}", bob.id), "publicKey", &mallory.public_key]).unwrap();

    let sent = cli.run(&alice.key, &["send", &bob.id, "for bob only"], "");
    assert_eq!(sent.code, 1, "{}", sent.stderr);
    assert!(sent.stderr.contains("nothing is sealed to a key the directory does not prove"), "{}", sent.stderr);
    let pins = std::fs::read_to_string(alice.key.with_file_name("alice.key.pins.json")).unwrap_or_default();
    assert!(!pins.contains(&mallory.public_key), "the swapped key was pinned: {pins}");
}

/// End to end: a key changed THROUGH the directory, as a malicious operator would (another key
/// recorded for Bob's id the way a registration records it — the user record, the key's index
/// entry, a waiting entry — so the relay's own publisher publishes it as version 2 of Bob's
/// key). Alice, who pinned version 1, refuses the new version; Bob's own client, on its next
/// connect, reports that the directory shows another key for him.
#[test]
fn a_key_published_through_the_directory_is_refused_by_both_ends() {
    let dir = TempDir::new("directory-operator");
    let prefix = format!("dirop{}:", std::process::id());
    let redis = Redis::start();
    let server = LoggedServer::redis(dir.path(), &redis, &prefix);
    let cli = Cli::of(&dir, &server);
    let (alice, bob, mallory) = (cli.user("alice"), cli.user("bob"), cli.user("mallory"));
    cli.ok(&bob.key, &["send", &bob.id, "published"]);
    let lookup = cli.ok(&alice.key, &["lookup", &bob.id]);
    assert!(lookup.contains("directory:   proven (version 1 of the key"), "{lookup}");
    cli.ok(&alice.key, &["send", &bob.id, "to version 1"]);

    // The operator records Mallory's key for Bob's id: record, index entry, waiting entry.
    let record = format!("{prefix}user:{{{}}}", bob.id);
    redis.cli(&["HSET", &record, "publicKey", &mallory.public_key]).unwrap();
    let indexes = redis.cli(&["KEYS", &format!("{prefix}pk:*")]).unwrap();
    let mallorys: Vec<&str> = indexes
        .lines()
        .filter(|index| redis.cli(&["GET", index]).is_some_and(|owner| owner.trim() == mallory.id))
        .collect();
    assert!(!mallorys.is_empty(), "no index entry names mallory: {indexes}");
    for index in mallorys {
        redis.cli(&["SET", index, &bob.id]).unwrap();
    }
    let pending = format!("{prefix}kt:{{kt}}:pending");
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    redis.cli(&["HSET", &pending, &bob.id, &format!("{now_ms} {}", mallory.public_key)]).unwrap();
    let deadline = Instant::now() + DEADLINE;
    while redis.cli(&["HEXISTS", &pending, &bob.id]).unwrap().trim() != "0" {
        assert!(Instant::now() < deadline, "the waiting entry was never published");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Alice: the directory proves Mallory's key as version 2, and her pin refuses it.
    let sent = cli.run(&alice.key, &["send", &bob.id, "to version 2"], "");
    assert_eq!(sent.code, 1, "{}", sent.stderr);
    assert!(sent.stderr.contains("CHANGED"), "{}", sent.stderr);
    assert!(sent.stderr.contains("Nothing was sent"), "{}", sent.stderr);
    let lookup = cli.run(&alice.key, &["lookup", &bob.id], "");
    assert!(lookup.stdout.contains("version 2"), "the new key is version 2: {}\n{}", lookup.stdout, lookup.stderr);
    let pins = std::fs::read_to_string(alice.key.with_file_name("alice.key.pins.json")).unwrap();
    assert!(!pins.contains(&mallory.public_key), "mallory's key was pinned: {pins}");

    // Bob (his record given back, so that he can log in): his own history holds another key.
    redis.cli(&["HSET", &record, "publicKey", &bob.public_key]).unwrap();
    let connect = cli.run(&bob.key, &["send", &bob.id, "am I still me?"], "");
    assert_eq!(connect.code, 1, "{}", connect.stderr);
    assert!(connect.stderr.contains("the directory shows another key for you"), "{}", connect.stderr);
    assert!(connect.stderr.contains("version 2"), "{}", connect.stderr);
}

/// The kept root in `enigma audit`'s summary, as it prints it ("kept root:   EPOCH:HASH:VRF"):
/// what another client gives to `enigma audit --root`.
fn kept_root(audit: &str) -> String {
    let root = audit.lines().find_map(|line| line.strip_prefix("kept root:   ")).expect("a kept root line");
    let parts: Vec<&str> = root.split(':').collect();
    assert!(
        parts.len() == 3 && parts[0].parse::<u64>().is_ok() && parts[1].len() == 64 && parts[2].len() == 64,
        "EPOCH:HASH:VRF: {root}"
    );
    root.to_owned()
}

/// The kept root's epoch in `enigma audit`'s summary.
fn kept_epoch(audit: &str) -> u64 {
    kept_root(audit).split(':').next().unwrap().parse().expect("an epoch")
}

/// The directory's signing key in the relays below (`kid:base64seed`), and the keys it is rotated
/// to, or that another relay signs with.
const SIGNING_KEY: &str = "fork-test:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const NEW_SIGNING_KEY: &str = "k2:AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=";
const OTHER_SIGNING_KEY: &str = "other:BAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQ=";

/// A relay on its own Redis with fixed directory keys (signing and VRF) and an epoch every
/// 100 ms: two of them on two Redis servers are two valid directories with the same keys that
/// diverge with their registrations (each has another root for the same epoch).
fn directory_relay(dir: &TempDir, redis: &Redis, prefix: &str, addr: &str) -> LoggedServer {
    directory_relay_signed(dir, redis, prefix, addr, SIGNING_KEY)
}

/// [`directory_relay`] whose roots `signing_keys` (`directory.signing_keys`) sign.
fn directory_relay_signed(dir: &TempDir, redis: &Redis, prefix: &str, addr: &str, signing_keys: &str) -> LoggedServer {
    let url = redis.url();
    let env = [
        ("ENIGMA__REDIS__URL", url.as_str()),
        ("ENIGMA__REDIS__PREFIX", prefix),
        ("ENIGMA__DIRECTORY__SIGNING_KEYS", signing_keys),
        ("ENIGMA__DIRECTORY__VRF_KEY", "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="),
        ("ENIGMA__DIRECTORY__EPOCH_INTERVAL_MS", "100"),
        ("ENIGMA__DIRECTORY__LEASE_MS", "1000"),
    ];
    LoggedServer::start(dir.path(), &env, addr)
}

/// End to end, the signing key rotated as docs/operations.md says (the new key first, the relay
/// restarted): every root, old epochs too, now comes signed by the new key. Clients that kept a
/// root signed by the old one follow — the kept root re-signed, or newer roots proven to extend
/// it — in a lookup and in `enigma audit`, and say once that the key changed; the pins file then
/// keeps the root under the new signer.
#[test]
fn after_a_signing_key_rotation_clients_follow_and_say_so() {
    let dir = TempDir::new("directory-rotation");
    let prefix = format!("dirrotate{}:", std::process::id());
    let redis = Redis::start();

    let before = directory_relay_signed(&dir, &redis, &prefix, "127.0.0.1:0", SIGNING_KEY);
    let addr = before.addr.to_string();
    let cli = Cli::of(&dir, &before);
    let (alice, bob) = (cli.user("alice"), cli.user("bob"));
    cli.ok(&alice.key, &["send", &alice.id, "published"]);
    cli.ok(&bob.key, &["send", &bob.id, "published"]);
    // Both keep a root signed by the old key.
    for user in [&alice, &bob] {
        let audit = cli.ok(&user.key, &["audit"]);
        assert!(audit.contains("key id \"fork-test\""), "{audit}");
    }
    before.terminate();

    let rotated = format!("{NEW_SIGNING_KEY},{SIGNING_KEY}");
    let after = directory_relay_signed(&dir, &redis, &prefix, &addr, &rotated);
    let cli = Cli::of(&dir, &after);
    // A new user makes a newer epoch, so that the kept roots are behind (audited forward).
    let carol = cli.user("carol");
    cli.ok(&carol.key, &["send", &carol.id, "published"]);
    let changed = "enigma: note: the key directory's signing key changed from \"fork-test\" (";
    let extends = "its roots are proven to extend the root this client kept";

    // Alice's next lookup follows the new key, and says so once; then her audit, quietly.
    let lookup = cli.run(&alice.key, &["lookup", &carol.id], "");
    assert_eq!(lookup.code, 0, "{}\n{}", lookup.stdout, lookup.stderr);
    assert!(lookup.stdout.contains("directory:   proven"), "{}", lookup.stdout);
    assert_eq!(lookup.stderr.matches(changed).count(), 1, "{}", lookup.stderr);
    assert!(lookup.stderr.contains(") to \"k2\" ("), "{}", lookup.stderr);
    assert!(lookup.stderr.contains(extends), "{}", lookup.stderr);
    let pins = std::fs::read_to_string(alice.key.with_file_name("alice.key.pins.json")).unwrap();
    assert!(pins.contains("\"k2\"") && !pins.contains("\"fork-test\""), "the new signer is kept: {pins}");
    let audit = cli.run(&alice.key, &["audit"], "");
    assert_eq!(audit.code, 0, "{}\n{}", audit.stdout, audit.stderr);
    assert!(audit.stdout.contains("key id \"k2\""), "{}", audit.stdout);
    assert!(!audit.stderr.contains(changed), "told once: {}", audit.stderr);

    // Bob's first contact after the rotation is `enigma audit`: it follows too, and says so.
    let audit = cli.run(&bob.key, &["audit"], "");
    assert_eq!(audit.code, 0, "{}\n{}", audit.stdout, audit.stderr);
    assert!(audit.stderr.contains(changed) && audit.stderr.contains(extends), "{}", audit.stderr);
    let pins = std::fs::read_to_string(bob.key.with_file_name("bob.key.pins.json")).unwrap();
    assert!(pins.contains("\"k2\""), "{pins}");
}

/// Registers users (each published in an epoch of its own) until `enigma audit` of the relay
/// shows epoch `epoch` or later; returns that audit's summary.
fn publish_until(cli: &Cli, name: &str, epoch: u64) -> String {
    for n in 0.. {
        let user = cli.user(&format!("{name}{n}"));
        cli.ok(&user.key, &["send", &user.id, "published"]);
        let audit = cli.ok(&user.key, &["audit"]);
        if kept_epoch(&audit) >= epoch {
            return audit;
        }
        assert!(n <= 2 * epoch + 2, "the relay does not reach epoch {epoch}: {audit}");
    }
    unreachable!()
}

/// End to end: two people compare what the relay showed them. Alice's `enigma audit` prints the
/// root it keeps as EPOCH:HASH; Bob, a client of his own, gives it to `enigma audit --root` and
/// his audit confirms it — also once the relay has moved on (the root is compared at its epoch,
/// not with the newest). A root beyond the relay's newest epoch is refused as a rollback, and a
/// malformed one is a usage error; neither keeps a root.
#[test]
fn two_clients_that_audit_the_same_relay_compare_roots() {
    let dir = TempDir::new("directory-compare");
    let redis = Redis::start();
    let relay = directory_relay(&dir, &redis, &format!("dircmp{}:", std::process::id()), "127.0.0.1:0");
    let cli = Cli::of(&dir, &relay);
    let (alice, bob) = (cli.user("alice"), cli.user("bob"));
    cli.ok(&alice.key, &["send", &alice.id, "published"]);
    let alices = cli.ok(&alice.key, &["audit"]);
    let root = kept_root(&alices);

    let bobs = cli.ok(&bob.key, &["audit", "--root", &root]);
    assert!(bobs.contains(&format!("compared:    {root} matched")), "{bobs}");
    // The relay moves on: Alice's root is still the one at its epoch.
    let newer = publish_until(&cli, "later", kept_epoch(&alices) + 1);
    let bobs = cli.ok(&bob.key, &["audit", "--root", &root, "--root", &kept_root(&newer)]);
    assert!(bobs.contains(&format!("compared:    {root} matched")), "{bobs}");
    assert!(bobs.contains(&format!("compared:    {} matched", kept_root(&newer))), "{bobs}");

    // A root beyond the newest epoch: the relay rolled back, or the root is another server's.
    let (_, hash) = root.split_once(':').unwrap();
    let beyond = kept_epoch(&newer) + 1000;
    let fresh = dir.path().join("fresh.key");
    cli.ok(&fresh, &["keygen"]);
    let refused = cli.run(&fresh, &["audit", "--root", &format!("{beyond}:{hash}")], "");
    assert_eq!(refused.code, 1, "{}\n{}", refused.stdout, refused.stderr);
    assert!(refused.stderr.contains("ROLLBACK"), "{}", refused.stderr);
    assert!(refused.stderr.contains(&format!("older than epoch {beyond}")), "{}", refused.stderr);
    // Malformed: clap's usage error (exit 2) before anything is asked.
    for bad in ["12", "x:ab", &format!("0:{hash}"), &format!("3:{}", &hash[..10])] {
        let malformed = cli.run(&fresh, &["audit", "--root", bad], "");
        assert_eq!(malformed.code, 2, "{bad}: {}\n{}", malformed.stdout, malformed.stderr);
        assert!(malformed.stderr.contains("expected EPOCH:HASH"), "{bad}: {}", malformed.stderr);
    }
    assert!(!fresh.with_file_name("fresh.key.pins.json").exists(), "a refused audit keeps no root");
}

/// End to end: a root from another relay's directory (the same keys, its own registrations, as
/// in the fork test below), given to `enigma audit --root` by a client that keeps no root for
/// this relay, is refused as a FORK naming the epoch, the root given and this relay's root at
/// that epoch: what two people who compare find when the relay showed them different
/// directories. The same client's audit without it passes.
#[test]
fn a_root_from_a_diverging_directory_is_refused_as_a_fork_when_compared() {
    let dir = TempDir::new("directory-compare-fork");
    let prefix = format!("dircmpfork{}:", std::process::id());
    let (redis_a, redis_b) = (Redis::start(), Redis::start());
    let a = directory_relay(&dir, &redis_a, &prefix, "127.0.0.1:0");
    let b = directory_relay(&dir, &redis_b, &prefix, "127.0.0.1:0");
    let (cli_a, cli_b) = (Cli::of(&dir, &a), Cli::of(&dir, &b));
    // Carol, on B, prints B's root; A is then taken to that epoch or past it.
    let carols = publish_until(&cli_b, "carol", 1);
    let (given, epoch) = (kept_root(&carols), kept_epoch(&carols));
    let alices = publish_until(&cli_a, "alice", epoch);

    let fresh = dir.path().join("fresh.key");
    cli_a.ok(&fresh, &["keygen"]);
    let refused = cli_a.run(&fresh, &["audit", "--root", &given], "");
    assert_eq!(refused.code, 1, "{}\n{}", refused.stdout, refused.stderr);
    assert!(refused.stderr.contains("FORK: the directory presents root"), "{}", refused.stderr);
    assert!(refused.stderr.contains(&format!("for epoch {epoch},")), "{}", refused.stderr);
    let hash = given.split(':').nth(1).unwrap();
    assert!(refused.stderr.contains(&format!("the root given to compare with is {hash}")), "{}", refused.stderr);
    // A's own root at that epoch is named beside it (known here when A stopped at it, as it does
    // with one user an epoch).
    let presented = refused.stderr.split("presents root ").nth(1).and_then(|rest| rest.split(' ').next()).unwrap();
    assert!(presented.len() == 64 && presented != hash, "{}", refused.stderr);
    if kept_epoch(&alices) == epoch {
        let alices_root = kept_root(&alices);
        assert!(alices_root.starts_with(&format!("{epoch}:{presented}:")), "{alices_root}: {}", refused.stderr);
    }
    assert!(!refused.stdout.contains("kept root:"), "{}", refused.stdout);
    assert!(!fresh.with_file_name("fresh.key.pins.json").exists(), "a refused audit keeps no root");
    // The same client's audit of A, without B's root, passes.
    let own = cli_a.ok(&fresh, &["audit"]);
    assert!(kept_epoch(&own) >= epoch, "{own}");
}

/// End to end: two relays with the same directory keys (signing and VRF) but their own Redis and
/// their own registrations, so that their directories diverge: each is a valid directory, with
/// another root for the same epoch, B's signed by another key. A client that kept relay A's root
/// and then finds relay B under the same URL (B took A's port) refuses B loudly as a fork, in a lookup and in `enigma
/// audit`; a client that never saw A audits B without a complaint.
#[test]
fn a_relay_with_a_diverging_directory_under_the_same_url_is_refused_as_a_fork() {
    let dir = TempDir::new("directory-fork");
    let prefix = format!("dirfork{}:", std::process::id());
    let (redis_a, redis_b) = (Redis::start(), Redis::start());
    let relay = |redis: &Redis, addr: &str| directory_relay(&dir, redis, &prefix, addr);

    // Relay A: Alice registers, is published (her own connect waits for it), keeps A's root.
    let a = relay(&redis_a, "127.0.0.1:0");
    let addr = a.addr.to_string();
    let cli = Cli::of(&dir, &a);
    let alice = cli.user("alice");
    cli.ok(&alice.key, &["send", &alice.id, "published on A"]);
    let kept = kept_epoch(&cli.ok(&alice.key, &["audit"]));
    a.terminate();

    // Relay B on A's address, signing with a key of its own (a client follows a new signer only
    // along its kept root's chain: it buys B nothing): other users, each published in an epoch of
    // its own, until B's directory has gone past the epoch Alice keeps.
    let b = directory_relay_signed(&dir, &redis_b, &prefix, &addr, OTHER_SIGNING_KEY);
    let cli = Cli::of(&dir, &b);
    let mut users: Vec<User> = Vec::new();
    loop {
        let user = cli.user(&format!("b{}", users.len()));
        cli.ok(&user.key, &["send", &user.id, "published on B"]);
        users.push(user);
        // A client that never saw A audits B without a complaint.
        let fresh = cli.ok(&users[0].key, &["audit"]);
        if kept_epoch(&fresh) > kept {
            break;
        }
        assert!(users.len() <= 2 * kept as usize + 2, "B does not go past epoch {kept}: {fresh}");
    }

    // Alice, who kept A's root for this URL: B's root for her epoch is another one.
    let lookup = cli.run(&alice.key, &["lookup", &users[0].id], "");
    assert_eq!(lookup.code, 1, "{}\n{}", lookup.stdout, lookup.stderr);
    assert!(lookup.stderr.contains("FORK: the directory presents root"), "{}", lookup.stderr);
    assert!(lookup.stderr.contains(&format!("for epoch {kept}")), "{}", lookup.stderr);
    let audit = cli.run(&alice.key, &["audit"], "");
    assert_eq!(audit.code, 1, "{}\n{}", audit.stdout, audit.stderr);
    assert!(audit.stderr.contains("FORK"), "{}", audit.stderr);
    assert!(!audit.stdout.contains("kept root:"), "{}", audit.stdout);
    let pins = std::fs::read_to_string(alice.key.with_file_name("alice.key.pins.json")).unwrap();
    let again = cli.run(&alice.key, &["audit"], "");
    assert!(again.stderr.contains("FORK"), "A's root is still kept, B's was not taken: {}\n{pins}", again.stderr);
}

/// End to end at scale: one user published alone in epoch 1, then 1,999 registrations at once,
/// published 100 to an epoch every 100 ms; `enigma audit` then verifies the whole history in
/// answers of at most 5 epochs, and its summary gives the relay's own figures: every epoch, every
/// entry after epoch 1, the number of answers, and the newest root, which it keeps.
#[tokio::test(flavor = "multi_thread")]
async fn enigma_audit_verifies_thousands_of_registrations() {
    use futures_util::{StreamExt, stream};

    const MAX_AUDIT_EPOCHS: u64 = 5;
    let dir = TempDir::new("directory-audit");
    let redis = Redis::start();
    let config = crate::harness::ServerConfig::redis(&redis)
        .with("ENIGMA__DIRECTORY__EPOCH_INTERVAL_MS", 100)
        .with("ENIGMA__DIRECTORY__LEASE_MS", 1000)
        .with("ENIGMA__DIRECTORY__MAX_EPOCH_ENTRIES", 100)
        .with("ENIGMA__DIRECTORY__MAX_AUDIT_EPOCHS", MAX_AUDIT_EPOCHS);
    let s = &crate::harness::Server::start(&config);
    // Nothing waits in the directory's pending hash, and there is a root.
    let pending = format!("{}kt:{{kt}}:pending", config.prefix);
    let (redis, pending) = (&redis, &pending);
    let published = || async move {
        redis.cli(&["HLEN", pending]).is_some_and(|n| n.trim() == "0") && s.get("/directory/root").await.0 == 200
    };
    let first = s.login(&random_key()).await;
    crate::harness::wait_until("the first user published", DEADLINE, published).await;
    let (_, root) = s.get("/directory/root").await;
    assert_eq!(root["epoch"], 1, "epoch 1 holds the first user alone: {root}");
    assert_eq!(s.get(&format!("/directory/lookup/{first}")).await.0, 200);

    let keys: Vec<String> = (0..1_999).map(|_| random_key()).collect();
    let users: Vec<String> =
        stream::iter(keys).map(|key| async move { s.login(&key).await }).buffer_unordered(32).collect().await;
    assert_eq!(users.iter().collect::<std::collections::HashSet<_>>().len(), 1_999);
    crate::harness::wait_until("every registration published", DEADLINE * 6, published).await;
    let (_, root) = s.get("/directory/root").await;
    let epochs = root["epoch"].as_u64().unwrap();
    assert!(epochs >= 21, "1,999 registrations at most 100 an epoch after epoch 1: {root}");

    let base = s.url("");
    let cli = Cli::at(&dir, base.trim_end_matches('/'));
    let key = dir.path().join("auditor.key");
    cli.ok(&key, &["keygen"]);
    // Checking 2,000 insertions in a debug build takes a while: a longer deadline than a command's.
    let mut audit = cli.spawn(&key, &["audit"]);
    audit.close_stdin();
    let code = audit.wait_exit_within(DEADLINE * 12);
    assert_eq!(code, 0, "{}", audit.context());
    let out = &audit.out.text();
    assert!(out.contains(&format!("epochs:      1 to {epochs} (every root signed by ")), "{out}");
    assert!(out.contains("every step append-only"), "{out}");
    assert!(out.contains("entries:     1999 added after epoch 1"), "{out}");
    // At least one answer per `MAX_AUDIT_EPOCHS` epochs; more where one stopped at its budget of
    // work (2 s: a debug build on a busy machine).
    let fewest = (epochs - 1).div_ceil(MAX_AUDIT_EPOCHS);
    let answers: u64 = out
        .split_once("answers:     ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no answer count: {out}"));
    assert!((fewest..epochs).contains(&answers), "{answers} answers for {epochs} epochs: {out}");
    let hash = root["rootHash"].as_str().expect("a root hash");
    assert!(out.contains(&format!("kept root:   {epochs}:{hash}")), "{out}");
    let pins = std::fs::read_to_string(key.with_file_name("auditor.key.pins.json")).unwrap();
    assert!(pins.contains(hash), "the audited root is kept: {pins}");
}
