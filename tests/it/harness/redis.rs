//! A `redis-server` of the test's own: started on a free port with its own data directory,
//! frozen, crashed and restarted on demand, and killed (directory removed) when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::DEADLINE;
use super::ports::free_port;
use super::tempdir::TempDir;

/// A `redis-server` of this test's own, on a free port, without persistence unless asked.
pub struct Redis {
    child: Child,
    pub port: u16,
    /// Its data directory (removed after the process is killed, when the handle drops).
    pub dir: TempDir,
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
        let dir = TempDir::new("redis");
        let mut args: Vec<String> =
            ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--daemonize", "no"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        args.extend(["--dir".into(), dir.path().display().to_string()]);
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
                // A PONG may come from another test's server that won the race for the port
                // (ours then exits): only our own process counts.
                return answered_by(self.port, self.child.id());
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

    /// Writes `keys` values of 1 KB (outside any test's prefix) and saves them uncompressed: the
    /// dataset a restart loads, a key at a time (see `restart_loading`).
    pub fn fill_and_save(&self, keys: usize) {
        let fill = "for i = 1, tonumber(ARGV[1]) do redis.call('SET', 'fill:' .. i, string.rep('x', 1000)) end";
        let filled = self.cli(&["EVAL", fill, "0", &keys.to_string()]);
        assert!(filled.is_some(), "filling redis-server on port {}", self.port);
        let saved = self.cli(&["CONFIG", "SET", "rdbcompression", "no"]).zip(self.cli(&["SAVE"]));
        assert!(saved.is_some_and(|(_, saved)| saved.trim() == "OK"), "SAVE on port {}", self.port);
    }

    /// Kills the server and starts it again into a load that lasts until `finish_loading`
    /// (20 ms per key, `key-load-delay`), answering every command but a few with `LOADING`
    /// meanwhile (events are handled every KiB read, so it answers within milliseconds).
    /// Returns once it is loading.
    pub fn restart_loading(&mut self) {
        let start = Instant::now();
        let mut args = self.args.clone();
        args.extend(["--key-load-delay", "20000", "--loading-process-events-interval-bytes", "1024"].map(String::from));
        self.crash();
        loop {
            self.child = spawn_redis(&args);
            let spawned = Instant::now();
            while spawned.elapsed() < Duration::from_secs(5) && matches!(self.child.try_wait(), Ok(None)) {
                if self.loading() && answered_by(self.port, self.child.id()) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            self.crash();
            assert!(start.elapsed() < DEADLINE, "redis-server on port {} did not start loading", self.port);
        }
    }

    /// Whether the server is loading its dataset (`INFO persistence` answers while it does).
    pub fn loading(&self) -> bool {
        let info = self.cli(&["INFO", "persistence"]).unwrap_or_default();
        info.lines().any(|l| l.trim() == "loading:1")
    }

    /// Ends the load `restart_loading` began at full speed, and waits until the server answers.
    pub fn finish_loading(&self) {
        let start = Instant::now();
        let _ = self.cli(&["CONFIG", "SET", "key-load-delay", "0"]);
        while self.cli(&["PING"]).is_none_or(|o| o.trim() != "PONG") {
            assert!(start.elapsed() < DEADLINE, "redis-server on port {} did not finish loading", self.port);
            std::thread::sleep(Duration::from_millis(20));
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

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the server answering on `port` is the process `pid` (`process_id` in `INFO server`).
fn answered_by(port: u16, pid: u32) -> bool {
    let info = redis_cli(port, &["INFO", "server"]).unwrap_or_default();
    info.lines().find_map(|l| l.strip_prefix("process_id:")).is_some_and(|p| p.trim() == pid.to_string())
}

/// Runs `redis-cli -p port args…` and returns its output, if it succeeded.
pub(super) fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
