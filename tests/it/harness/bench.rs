//! Runs the `enigma-bench` load generator as a process against a test's own relay, and waits
//! for it with a deadline (killed past it: no run outlives its test).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::cli::CliRun;

/// `enigma-bench <args>`; its outcome once it exits. Panics (after killing it) if it is still
/// running after `limit`.
pub fn run_bench(args: &[&str], limit: Duration) -> CliRun {
    let mut child = Command::new(env!("CARGO_BIN_EXE_enigma-bench"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn enigma-bench");
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
            panic!("enigma-bench {args:?} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    CliRun { code: status.code().unwrap_or(-1), stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}
