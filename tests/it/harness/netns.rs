//! Hosts with addresses of their own: network namespaces (`ip netns`) joined by veth pairs to a
//! bridge of the test's own, on a /24 of 198.18.0.0/15 (the range reserved for network tests).
//! The test process sits on the bridge too (the `.1` address: "the clients"), so links can be
//! cut or made lossy per host and per peer with nftables rules inside a host's namespace, which
//! loopback faults (a killed process, a proxy) cannot do. Everything is deleted on drop, also
//! when the test panics; namespaces left by killed test runs (prefix `en<pid>`, pid dead) are
//! swept when the first `Lan` of a run is made.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::ports::free_port;

/// Every name this process creates starts with `en<pid>` (interface names are limited to 15
/// bytes: `en` + pid + `i` + a counter fits).
fn prefix() -> String {
    format!("en{}", std::process::id())
}

pub(super) fn unique(kind: char) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{}{kind}{}", prefix(), N.fetch_add(1, Ordering::Relaxed))
}

/// The `ip` binary (Debian puts it in /usr/sbin, which a test's PATH may lack).
pub(super) fn ip_binary() -> &'static str {
    if std::path::Path::new("/usr/sbin/ip").exists() { "/usr/sbin/ip" } else { "ip" }
}

/// Runs `ip args…`; the error says what failed and why.
pub(super) fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new(ip_binary()).args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A bridge and the namespaces attached to it. Hosts get `.2`, `.3`, … of its /24.
pub struct Lan {
    bridge: String,
    net: [u8; 3],
    hosts: Vec<String>,
    pub gateway: Ipv4Addr,
}

/// One namespace on a `Lan`: its name (for `ip netns exec`) and address.
#[derive(Clone)]
pub struct Host {
    pub ns: String,
    pub ip: Ipv4Addr,
}

/// Serialises the choice of a /24 among this process's tests (other processes are told apart
/// by checking which 198.18/15 subnets already have an address somewhere).
static SUBNETS: Mutex<()> = Mutex::new(());

impl Lan {
    /// A LAN of the test's own, or `None` (with a loud SKIPPED) when namespaces cannot be made
    /// here. With `CI` set, that is a failure with the reason instead.
    pub fn new_or_skip(test: &str) -> Option<Lan> {
        match Lan::new() {
            Ok(lan) => Some(lan),
            Err(reason) if std::env::var_os("CI").is_some() => {
                panic!("{test}: network namespaces are needed (run as root with iproute2 and nftables): {reason}")
            }
            Err(reason) => {
                eprintln!("SKIPPED {test}: cannot create network namespaces: {reason}");
                None
            }
        }
    }

    pub fn new() -> Result<Lan, String> {
        sweep_once();
        Command::new("nft").arg("--version").output().map_err(|e| format!("nft is not installed: {e}"))?;
        let _guard = SUBNETS.lock().unwrap_or_else(|e| e.into_inner());
        let used = Command::new(ip_binary())
            .args(["-4", "-o", "addr", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        // Start at a place that depends on the pid, so parallel test processes rarely probe the
        // same subnets.
        let start = std::process::id() as usize * 37;
        let net = (0..512)
            .map(|i| (start + i) % 512)
            .map(|k| [198, 18 + (k / 256) as u8, (k % 256) as u8])
            .find(|n| !used.contains(&format!(" {}.{}.{}.", n[0], n[1], n[2])))
            .ok_or("no free /24 in 198.18.0.0/15")?;
        let bridge = unique('b');
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        let lan = Lan { bridge, net, hosts: Vec::new(), gateway: Ipv4Addr::new(net[0], net[1], net[2], 1) };
        ip(&["addr", "add", &format!("{}/24", lan.gateway), "dev", &lan.bridge])?;
        ip(&["link", "set", &lan.bridge, "up"])?;
        Ok(lan)
    }

    /// A new namespace on this LAN with the next address.
    pub fn host(&mut self) -> Host {
        let ns = unique('n');
        let address = Ipv4Addr::new(self.net[0], self.net[1], self.net[2], self.hosts.len() as u8 + 2);
        let (outer, inner) = (unique('i'), unique('i'));
        let step = |args: &[&str]| ip(args).unwrap_or_else(|e| panic!("building host {ns}: {e}"));
        step(&["netns", "add", &ns]);
        self.hosts.push(ns.clone());
        step(&["link", "add", &outer, "type", "veth", "peer", "name", &inner]);
        step(&["link", "set", &inner, "netns", &ns]);
        step(&["link", "set", &outer, "master", &self.bridge]);
        step(&["link", "set", &outer, "up"]);
        step(&["-n", &ns, "addr", "add", &format!("{address}/24"), "dev", &inner]);
        step(&["-n", &ns, "link", "set", &inner, "up"]);
        step(&["-n", &ns, "link", "set", "lo", "up"]);
        Host { ns, ip: address }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in &self.hosts {
            kill_all_in(ns);
            let _ = ip(&["netns", "del", ns]); // takes its end of the veth (and so the pair) along
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// SIGKILLs whatever still runs in `ns` (a process handle dropped first normally did it).
pub(super) fn kill_all_in(ns: &str) {
    let Ok(out) = Command::new(ip_binary()).args(["netns", "pids", ns]).output() else { return };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let _ = Command::new("kill").args(["-KILL", pid]).status();
    }
}

/// Sweeps the leftovers of dead runs, once per test process, before its first namespace.
pub(super) fn sweep_once() {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(sweep_leftovers);
}

/// Deletes namespaces and bridges named `en<pid>…` whose pid no longer runs (a test run killed
/// before its guards dropped).
fn sweep_leftovers() {
    let dead = |name: &str| {
        let digits: String = name.strip_prefix("en").unwrap_or("").chars().take_while(char::is_ascii_digit).collect();
        !digits.is_empty() && !std::path::Path::new(&format!("/proc/{digits}")).exists()
    };
    if let Ok(out) = Command::new(ip_binary()).args(["netns", "list"]).output() {
        for ns in String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_whitespace().next()) {
            if dead(ns) {
                kill_all_in(ns);
                let _ = ip(&["netns", "del", ns]);
            }
        }
    }
    if let Ok(out) = Command::new(ip_binary()).args(["-o", "link", "show", "type", "bridge"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split(':').nth(1).map(str::trim).unwrap_or("");
            if dead(name) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}

impl Host {
    /// `program` run inside this host's namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(ip_binary());
        command.args(["netns", "exec", &self.ns, program]);
        command
    }

    /// Loads an nftables script inside this host's namespace.
    fn nft(&self, script: &str) {
        use std::io::Write;
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nft");
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "nft in {}: {}\n{script}", self.ns, String::from_utf8_lossy(&out.stderr));
    }

    /// Drops every packet between this host and `peer` (both directions), until `heal`. With
    /// `port`, only the TCP traffic to or from that port of `peer`.
    pub fn cut(&self, peer: Ipv4Addr, port: Option<u16>) {
        self.drop_share(peer, port, 100);
    }

    /// Drops `percent` % of the packets between this host and `peer` at random (nftables
    /// `numgen random`), until `heal`.
    pub fn drop_share(&self, peer: Ipv4Addr, port: Option<u16>, percent: u32) {
        let (out_port, in_port) = match port {
            Some(p) => (format!("tcp dport {p} "), format!("tcp sport {p} ")),
            None => (String::new(), String::new()),
        };
        let verdict =
            if percent >= 100 { "drop".to_owned() } else { format!("numgen random mod 100 < {percent} drop") };
        self.nft(&format!(
            "table inet fault {{\n\
               chain input {{ type filter hook input priority 0; ip saddr {peer} {in_port}{verdict}; }}\n\
               chain output {{ type filter hook output priority 0; ip daddr {peer} {out_port}{verdict}; }}\n\
             }}\n"
        ));
    }

    /// Removes every fault rule of this host.
    pub fn heal(&self) {
        self.nft("delete table inet fault\n");
    }
}

/// A process started inside a namespace, SIGKILLed when dropped.
pub struct NsProcess {
    child: Child,
}

impl NsProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `redis-server` on `host` (no persistence), reachable from the LAN at `host.ip:port`.
pub struct NsRedis {
    _process: NsProcess,
    pub ip: Ipv4Addr,
    pub port: u16,
}

impl NsRedis {
    pub fn start(host: &Host, extra: &[&str]) -> NsRedis {
        // A port number nothing uses on loopback either, though the namespace is ours alone.
        let port = free_port();
        let child = host
            .command("redis-server")
            .args(["--port", &port.to_string(), "--bind", &host.ip.to_string(), "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        let redis = NsRedis { _process: NsProcess { child }, ip: host.ip, port };
        let start = Instant::now();
        while redis.cli(&["PING"]).as_deref().map(str::trim) != Some("PONG") {
            assert!(start.elapsed() < Duration::from_secs(10), "redis-server in {} did not start", host.ns);
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://{}:{}/", self.ip, self.port)
    }

    /// `redis-cli` from the test process (over the bridge).
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-h", &self.ip.to_string(), "-p", &self.port.to_string()])
            .args(args)
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
