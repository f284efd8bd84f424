//! A Redis Sentinel of the test's own, watching one of the test's `Redis` masters, so the
//! relay's sentinel mode can be driven through a real failover.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::ports::free_port;
use super::redis::{Redis, redis_cli};
use super::tempdir::TempDir;

/// A Redis Sentinel of this test's own (`redis-server --sentinel`) on a free port, watching
/// `master` under the name `mymaster` (quorum 1, down after 1 s). Stopped when dropped.
pub struct Sentinel {
    child: Child,
    pub port: u16,
    /// Holds `sentinel.conf` (Sentinel rewrites it); removed after the process is killed.
    _dir: TempDir,
}

impl Sentinel {
    pub fn start(master: &Redis) -> Sentinel {
        for _ in 0..20 {
            let port = free_port();
            let dir = TempDir::new("sentinel");
            let conf = dir.path().join("sentinel.conf");
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 10000\n",
                dir.path().display(),
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
            let mut sentinel = Sentinel { child, port, _dir: dir };
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
    }
}
