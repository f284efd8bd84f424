//! A real Prometheus (Debian's `prometheus` binary) of the test's own: its configuration and
//! data in a temp dir, listening on a free loopback port, scraping the given targets every
//! second with the shipped alert rules (`deploy/prometheus/alerts.yml`) loaded. Killed and its
//! directory removed when dropped. Queried over its HTTP API, the way Grafana or an operator's
//! `curl` would.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::ports::free_port;
use super::tempdir::TempDir;

pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    http: reqwest::Client,
    _dir: TempDir,
}

/// The `prometheus` binary: `PROMETHEUS` if set, else the one on the PATH.
pub fn prometheus_binary() -> Option<String> {
    if let Ok(path) = std::env::var("PROMETHEUS") {
        return Some(path);
    }
    let found = Command::new("prometheus").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    found.is_ok_and(|s| s.success()).then(|| "prometheus".to_owned())
}

impl Prometheus {
    /// Prometheus scraping `targets` (job `enigma`, as the shipped rules select), or `None`
    /// with a loud SKIPPED when the binary is missing (a failure when `CI` is set).
    pub fn start_or_skip(test: &str, targets: &[SocketAddr]) -> Option<Prometheus> {
        let Some(binary) = prometheus_binary() else {
            assert!(std::env::var_os("CI").is_none(), "{test}: prometheus is needed (apt-get install prometheus)");
            eprintln!("SKIPPED {test}: prometheus is not installed");
            return None;
        };
        let dir = TempDir::new("prometheus");
        let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: ['{rules}']\n\
             scrape_configs:\n  - job_name: enigma\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        // Another process may take the free port before Prometheus binds it: try another.
        for _ in 0..5 {
            let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let mut child = Command::new(&binary)
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
                .arg(format!("--web.listen-address={addr}"))
                .stdout(Stdio::null())
                .stderr(if std::env::var_os("TEST_LOG").is_some() { Stdio::inherit() } else { Stdio::null() })
                .spawn()
                .expect("spawn prometheus");
            let start = Instant::now();
            let up = loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break false; // exited: most likely the port was taken
                }
                let ready =
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() && ureq_ready(addr);
                if ready {
                    break true;
                }
                assert!(start.elapsed() < Duration::from_secs(30), "prometheus did not become ready on {addr}");
                std::thread::sleep(Duration::from_millis(50));
            };
            if up {
                return Some(Prometheus { child, addr, http: reqwest::Client::new(), _dir: dir });
            }
            let _ = child.wait();
        }
        panic!("prometheus exited at start five times (see TEST_LOG=1)");
    }

    /// `GET /api/v1/<path>` → the `data` member (panics on an API error, with it).
    pub async fn api(&self, path: &str) -> Value {
        let url = format!("http://{}/api/v1/{path}", self.addr);
        let body: Value = self.http.get(url).send().await.expect("prometheus api").json().await.expect("json");
        assert_eq!(body["status"], "success", "prometheus /api/v1/{path}: {body}");
        body["data"].clone()
    }

    /// Every active target's `health` ("up", "down", "unknown").
    pub async fn target_health(&self) -> Vec<String> {
        let data = self.api("targets?state=active").await;
        let targets = data["activeTargets"].as_array().cloned().unwrap_or_default();
        targets.iter().map(|t| t["health"].as_str().unwrap_or("").to_owned()).collect()
    }

    /// An instant PromQL query whose result is one number (`sum(…)` etc.); `None` when the
    /// result is empty.
    pub async fn scalar(&self, promql: &str) -> Option<f64> {
        let query: String = url_encode(promql);
        let data = self.api(&format!("query?query={query}")).await;
        let value = match data["resultType"].as_str() {
            Some("scalar") => data["result"][1].clone(),
            _ => data["result"].as_array()?.first()?["value"][1].clone(),
        };
        value.as_str()?.parse().ok()
    }

    /// The names of the alerting rules Prometheus loaded.
    pub async fn alert_rules(&self) -> Vec<String> {
        let data = self.api("rules?type=alert").await;
        let groups = data["groups"].as_array().cloned().unwrap_or_default();
        let rules = groups.iter().flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default());
        rules.map(|r| r["name"].as_str().unwrap_or("").to_owned()).collect()
    }
}

/// Readiness without an async runtime (the start loop is blocking): a raw HTTP/1.0 request.
fn ureq_ready(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"GET /-/ready HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

/// Percent-encodes a query parameter (everything but unreserved characters).
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
