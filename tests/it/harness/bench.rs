//! Runs the `enigma-bench` load generator as a process against a test's own relay, and waits
//! for it with a deadline (killed past it: no run outlives its test).

use std::process::{Command, Stdio};
use std::time::Duration;

use super::cli::{CliRun, wait_for_exit};

/// `enigma-bench <args>`; its outcome once it exits. Panics (after killing it) if it is still
/// running after `limit`.
pub fn run_bench(args: &[&str], limit: Duration) -> CliRun {
    let child = Command::new(env!("CARGO_BIN_EXE_enigma-bench"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn enigma-bench");
    wait_for_exit(child, &format!("enigma-bench {args:?}"), limit)
}
