//! An nginx of the test's own in front of replicas, configured from
//! `deploy/local/nginx.conf.template` (the local cluster's own configuration), on a free port,
//! stopped on drop.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::DEADLINE;
use super::ports::free_port;
use super::tempdir::TempDir;

const TEMPLATE: &str = "deploy/local/nginx.conf.template";

/// The `nginx` binary: `$NGINX`, else on the PATH, else where Debian puts it.
pub fn nginx_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NGINX") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file())
}

/// An nginx of this test's own, in a temporary prefix, on a free port; stopped on drop.
pub struct Nginx {
    child: Child,
    pub port: u16,
    /// Its prefix (configuration, logs, temp files); removed after nginx stops.
    _dir: TempDir,
}

impl Nginx {
    pub fn start(binary: &Path, upstreams: &[SocketAddr]) -> Nginx {
        Self::start_listening(binary, upstreams, "")
    }

    /// The same, terminating TLS with `cert` and `key` (PEM files): `https_url` reaches it.
    pub fn start_tls(binary: &Path, upstreams: &[SocketAddr], cert: &Path, key: &Path) -> Nginx {
        // The template's `listen @LISTEN@;` gets the TLS parameters appended.
        let tls = format!(" ssl; ssl_certificate {}; ssl_certificate_key {}", cert.display(), key.display());
        Self::start_listening(binary, upstreams, &tls)
    }

    pub fn https_url(&self, host: &str) -> String {
        format!("https://{host}:{}", self.port)
    }

    fn start_listening(binary: &Path, upstreams: &[SocketAddr], listen_suffix: &str) -> Nginx {
        let dir = TempDir::new("nginx");
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let template = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(TEMPLATE)).unwrap();
        let servers: Vec<String> =
            upstreams.iter().map(|a| format!("        server {a} max_fails=1 fail_timeout=10s;")).collect();
        let error_log = dir.path().join("error.log");
        for _ in 0..20 {
            let port = free_port();
            let conf = dir.path().join("nginx.conf");
            let text = template
                .replace("@LISTEN@", &format!("127.0.0.1:{port}{listen_suffix}"))
                .replace("@UPSTREAMS@", &servers.join("\n"));
            std::fs::write(&conf, text).unwrap();
            let mut prefix = dir.path().display().to_string();
            prefix.push('/');
            // Its own process group: workers that outlive a killed master are killed with it.
            let mut child = Command::new(binary)
                .process_group(0)
                .args(["-p", &prefix, "-c", &conf.display().to_string()])
                .args(["-e", &error_log.display().to_string(), "-g", "daemon off;"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
            if wait_listening(&mut child, port) {
                return Nginx { child, port, _dir: dir };
            }
            stop(&mut child);
        }
        // The directory goes away with the panic, so the log goes into the message.
        panic!("could not start nginx; error.log:\n{}", std::fs::read_to_string(&error_log).unwrap_or_default());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Whether nginx listens on `port`; false if it exited (most likely the port was taken).
fn wait_listening(child: &mut Child, port: u16) -> bool {
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// SIGTERM (nginx's fast shutdown: the master stops its workers), SIGKILL if that hangs.
fn stop(child: &mut Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    // The group's id is the master's pid (`process_group(0)`); "no such process" is fine.
    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).stderr(Stdio::null()).status();
}
