//! `enigma-floor` as a process: the bare forwarder on a free port (killed when dropped), and
//! bounded runs of its other floors.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::cli::{CliRun, wait_for_exit};
use super::ports::free_port;

/// `enigma-floor forwarder` on a port of its own.
pub struct Forwarder {
    child: Child,
    pub port: u16,
}

impl Forwarder {
    pub fn start() -> Forwarder {
        (0..20).find_map(|_| Self::start_on(free_port())).expect("could not start enigma-floor forwarder")
    }

    /// One attempt (`None` if the port was taken meanwhile: the process exits without its line).
    fn start_on(port: u16) -> Option<Forwarder> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_enigma-floor"))
            .args(["forwarder", "--addr", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn enigma-floor");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped");
        // Printed once bound; end of file instead means it exited.
        let _ = BufReader::new(stdout).read_line(&mut line);
        let forwarder = Forwarder { child, port };
        line.starts_with("listening on").then_some(forwarder)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `enigma-floor <args>`; its outcome once it exits, killed past `limit`.
pub fn run_floor(args: &[&str], limit: Duration) -> CliRun {
    let child = Command::new(env!("CARGO_BIN_EXE_enigma-floor"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn enigma-floor");
    wait_for_exit(child, &format!("enigma-floor {args:?}"), limit)
}
