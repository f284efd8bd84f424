//! Thousands of client addresses for one test: a /48 of 2001:db8::/32 (the documentation range)
//! routed to `lo` in a network namespace of the test's own, so that a socket may bind any
//! address of any of its 65,536 /64s and reach a relay listening on `[::1]` in the same
//! namespace. For IPv6 the `local` route alone does not let a socket bind (unlike IPv4's AnyIP,
//! `bind` gives EADDRNOTAVAIL): the namespace also sets `net.ipv6.ip_nonlocal_bind`, and the
//! route is what makes such an address answer.
//!
//! The test process lives in the root namespace, so the test's body runs inside: the test
//! runs the test binary itself under `ip netns exec`, with `--exact` naming a hidden
//! (`#[ignore]`d) twin that holds the body and the /48 in `ENIGMA_IT_IPV6_NET`. The twin starts
//! its relay and Redis itself, all inside; the outer test shows the twin's output and fails when
//! the twin does. No crate and no `setns` on a thread (`unsafe_code` is forbidden). The
//! namespace (named `en<pid>…` like `netns`'s, so the same sweep removes a dead run's) and
//! everything running in it are removed when the outer test's guard drops, also on a panic or
//! when the twin overruns its time.

use std::net::{IpAddr, Ipv6Addr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use super::netns::{ip, ip_binary, kill_all_in, sweep_once, unique};

/// How the twin learns its /48 (the third group of `2001:db8:<id>::/48`).
const NET_VAR: &str = "ENIGMA_IT_IPV6_NET";

/// Longest a twin may run before it is killed and its test fails.
const RUN_LIMIT: Duration = Duration::from_secs(240);

/// The /48 routed to `lo` in the namespace this test's body runs in: `2001:db8:<id>::/48`.
#[derive(Clone, Copy, Debug)]
pub struct Ipv6Net {
    id: u16,
}

/// One /64 of an `Ipv6Net`: what one subscriber holds, and what one attacker holds.
#[derive(Clone, Copy, Debug)]
pub struct Subnet {
    prefix: u128,
}

impl Ipv6Net {
    /// Where a relay inside listens (`server.addr`): a free port of `[::1]`, which is in a /64
    /// of its own, outside the routed /48.
    pub const LISTEN: &str = "[::1]:0";

    /// The /48 of the namespace this process was started in by its outer test; `None` (with a
    /// note) when run any other way, e.g. by `cargo test -- --include-ignored`.
    pub fn inside() -> Option<Ipv6Net> {
        match std::env::var(NET_VAR).ok().and_then(|v| v.parse().ok()) {
            Some(id) => Some(Ipv6Net { id }),
            None => {
                eprintln!("skipped: this is the body of the test one module up, which runs it in a namespace");
                None
            }
        }
    }

    /// The `k`-th /64: `2001:db8:<id>:<k>::/64`.
    pub fn subnet(&self, k: u16) -> Subnet {
        Subnet { prefix: (0x2001_0db8u128 << 96) | (u128::from(self.id) << 80) | (u128::from(k) << 64) }
    }
}

impl Subnet {
    /// The `n`-th address of this /64 (distinct for distinct `n`), its interface id spread over
    /// all 64 bits as an attacker would pick them, never the all-zero (anycast) one.
    pub fn address(&self, n: u64) -> IpAddr {
        // An odd multiplier is a bijection modulo 2^64: distinct `n`, distinct addresses; and
        // `n + 1` is never 0, so neither is the product.
        let iid = (n + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        IpAddr::V6(Ipv6Addr::from(self.prefix | u128::from(iid)))
    }
}

/// A namespace with an `Ipv6Net` routed to its `lo`: the outer test's guard.
pub struct Ipv6Namespace {
    ns: String,
    net: Ipv6Net,
}

impl Ipv6Namespace {
    /// The outer test of `in_ipv6_namespace!` (`tests/it/sybil.rs`): runs the twin
    /// `<module>::inside::<name>` (`module` as `module_path!` gives it) in a namespace of its
    /// own and fails with the twin's output if the twin fails. Skipped loudly where namespaces
    /// cannot be made (a failure under `CI`).
    pub fn run_twin(module: &str, name: &str) {
        // Test names leave out the crate (`it::sybil::memory` is listed as `sybil::memory`).
        let module = module.split_once("::").map_or(module, |(_, rest)| rest);
        let twin = format!("{module}::inside::{name}");
        match Ipv6Namespace::new() {
            Ok(namespace) => namespace.run(&twin),
            Err(reason) if std::env::var_os("CI").is_some() => {
                panic!("{twin}: a network namespace is needed (run as root with iproute2): {reason}")
            }
            Err(reason) => eprintln!("SKIPPED {twin}: cannot create an IPv6 network namespace: {reason}"),
        }
    }

    pub fn new() -> Result<Ipv6Namespace, String> {
        sweep_once();
        static IDS: AtomicU16 = AtomicU16::new(0);
        // Unique within this run; other runs have namespaces of their own.
        let id = (std::process::id() as u16).wrapping_mul(37).wrapping_add(IDS.fetch_add(1, Ordering::Relaxed));
        let namespace = Ipv6Namespace { ns: unique('v'), net: Ipv6Net { id } };
        ip(&["netns", "add", &namespace.ns])?;
        // From here the guard deletes the namespace, also when a later step fails.
        ip(&["-n", &namespace.ns, "link", "set", "lo", "up"])?;
        let sysctl = "echo 0 > /proc/sys/net/ipv6/conf/all/disable_ipv6 \
                      && echo 0 > /proc/sys/net/ipv6/conf/lo/disable_ipv6 \
                      && echo 1 > /proc/sys/net/ipv6/ip_nonlocal_bind";
        let out = Command::new(ip_binary())
            .args(["netns", "exec", &namespace.ns, "sh", "-c", sysctl])
            .output()
            .map_err(|e| format!("cannot run ip netns exec: {e}"))?;
        if !out.status.success() {
            return Err(format!("IPv6 settings: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        let routed = format!("2001:db8:{:x}::/48", namespace.net.id);
        ip(&["-n", &namespace.ns, "-6", "route", "add", "local", &routed, "dev", "lo"])?;
        Ok(namespace)
    }

    /// Runs the test `twin` of this binary inside the namespace (`--exact --ignored`) and
    /// fails unless exactly that test ran and passed. Its output is printed (shown when this
    /// test fails, or with `--nocapture`).
    pub fn run(&self, twin: &str) {
        let binary = std::env::current_exe().expect("the test binary's path");
        let child = Command::new(ip_binary())
            .args(["netns", "exec", &self.ns])
            .arg(binary)
            .args(["--exact", twin, "--ignored", "--nocapture", "--test-threads", "1"])
            .env(NET_VAR, self.net.id.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the test binary in the namespace");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let (output, overran) = match rx.recv_timeout(RUN_LIMIT) {
            Ok(output) => (output, false),
            Err(_) => {
                kill_all_in(&self.ns); // the twin too: it runs in the namespace
                (rx.recv().expect("the twin's output"), true)
            }
        };
        let output = output.expect("wait for the test binary");
        let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        println!("--- {twin} in namespace {} (2001:db8:{:x}::/48) ---\n{stdout}{stderr}", self.ns, self.net.id);
        assert!(!overran, "{twin} ran longer than {RUN_LIMIT:?} and was killed (its output is above)");
        // The twin's panic messages (each from "panicked at" to its backtrace) say what failed.
        let panics: Vec<String> = stderr
            .split("\nthread '")
            .filter(|part| part.contains("panicked at"))
            .map(|part| format!("thread '{}", part.split("\nstack backtrace:").next().unwrap_or(part).trim()))
            .collect();
        assert!(
            output.status.success() && stdout.contains("test result: ok. 1 passed"),
            "{twin} failed in its namespace ({}); its output is above.\n{}",
            output.status,
            panics.join("\n")
        );
    }
}

impl Drop for Ipv6Namespace {
    fn drop(&mut self) {
        kill_all_in(&self.ns);
        let _ = ip(&["netns", "del", &self.ns]);
    }
}
