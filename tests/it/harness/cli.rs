//! Runs the `enigma` CLI as a process, with a home directory of the test's own, and waits
//! for it with a deadline.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::DEADLINE;

/// The outcome of one CLI run.
pub struct CliRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// `enigma --server <server> --key <home>/<name>.key` plus `extra` global flags.
pub struct CliUser {
    pub home: PathBuf,
    pub server: String,
    pub key: PathBuf,
    pub extra: Vec<String>,
}

impl CliUser {
    pub fn new(home: &Path, server: &str, name: &str, extra: &[&str]) -> CliUser {
        CliUser {
            home: home.to_owned(),
            server: server.to_owned(),
            key: home.join(format!("{name}.key")),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn run(&self, args: &[&str]) -> CliRun {
        let child = Command::new(env!("CARGO_BIN_EXE_enigma"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .args(["--server", &self.server, "--key"])
            .arg(&self.key)
            .args(&self.extra)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn enigma");
        wait_for_exit(child, &format!("enigma {args:?}"), DEADLINE)
    }

    /// Runs and expects success; returns stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert_eq!(run.code, 0, "enigma {args:?} failed:\n{}\n{}", run.stdout, run.stderr);
        run.stdout.trim().to_owned()
    }

    /// `keygen` then `login`: returns (public key, user id).
    pub fn register(&self) -> (String, String) {
        let public_key = self.ok(&["keygen"]);
        let id = self.ok(&["login"]);
        (public_key, id)
    }
}

/// Collects a spawned process's piped stdout and stderr and waits for it to exit; panics (after
/// killing it) if it is still running after `limit`: no process outlives its test.
pub fn wait_for_exit(mut child: std::process::Child, what: &str, limit: Duration) -> CliRun {
    let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    CliRun { code: status.code().unwrap_or(-1), stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}
