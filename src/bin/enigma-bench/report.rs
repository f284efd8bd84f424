//! What a run found, and its three renderings: text for people, JSON for scripts, Markdown for
//! `docs/BENCHMARKS.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency distribution in milliseconds (recorded in microseconds).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// Logging users in and opening their sockets.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Setup {
    pub logins: u64,
    pub login_secs: f64,
    pub logins_per_sec: f64,
    pub sockets: u64,
    pub connect_secs: f64,
    pub connects_per_sec: f64,
}

/// One constant-rate step (the whole run in fixed mode).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Step {
    /// The open-loop target rate, msgs/s.
    pub offered_rate: u64,
    pub duration_secs: f64,
    /// Messages the schedule called for.
    pub scheduled: u64,
    /// Messages written to sockets (less than `scheduled` only if sender sockets failed).
    pub sent: u64,
    /// Scheduled and never written: failed sends (a sender socket that died or could not be
    /// opened again), counted, never dropped silently.
    pub unsent: u64,
    /// Unique messages received by the end of the drain period.
    pub delivered: u64,
    /// Unique messages received inside the sending window, per second of the window.
    pub achieved_rate: f64,
    /// `achieved_rate / offered_rate`.
    pub achieved_ratio: f64,
    /// Sent on a socket the server refused before reading anything from it (closed with 1013,
    /// try again later: at capacity, or its storage unavailable); never stored, so not lost.
    /// The socket is opened again.
    pub refused: u64,
    /// Sent, not refused, and not received by the end of the drain period.
    pub lost: u64,
    /// Received again with nothing allowing it: a real duplicate.
    pub duplicated: u64,
    /// Received again as `enigma.v1` allows (unacknowledged on a socket that closed, delivered
    /// again on the next): not a fault, counted apart from `duplicated`.
    pub redelivered: u64,
    /// Deliveries acknowledged (`--ack`) by the end of the step's drain; the last batch (at
    /// most 5 ms of deliveries) may go out after it, and is not counted.
    pub acknowledged: u64,
    /// Sockets closed and opened again (`--churn`), senders' and recipients'.
    pub reconnects: u64,
    pub reordered: u64,
    /// Messages of an earlier step that arrived during this one (not counted above).
    pub late: u64,
    /// Error frames plus closed or failed sockets.
    pub errors: u64,
    /// The errors by kind: error codes, `closed:<code>`, `send_failed`, `unexpected_frame`.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// From the scheduled send time to the receipt: includes any delay of the generator.
    pub latency_ms: Percentiles,
    /// From the scheduled send time to the moment the frame was written: the generator's (and
    /// TCP back-pressure's) share of the latency.
    pub send_lag_ms: Percentiles,
    /// CPU used by the generator during the step, in percent of one core.
    pub generator_cpu_pct: Option<f64>,
    /// CPU used by the `--server-pid` processes during the step, in percent of one core.
    pub server_cpu_pct: Option<f64>,
    /// CPU time per delivered message of the generator, each `--server-pid` (role `relay`) and
    /// each `--cpu-pid` (role `other`, e.g. redis-server), over the step, drain included.
    pub cpu: Vec<ProcessCost>,
    /// Why this step counts as saturated (`None`: it held): achieved below `--min-delivery`,
    /// p99 above `--max-p99-ms`, anything lost, duplicated or reordered, or errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saturated: Option<String>,
}

/// What one process spent on a step's messages.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessCost {
    pub label: String,
    pub pid: String,
    /// `generator`, `relay` (a `--server-pid`) or `other` (a `--cpu-pid`).
    pub role: &'static str,
    /// User + system CPU seconds (none: the process could not be read).
    pub cpu_secs: Option<f64>,
    /// In percent of one core.
    pub cpu_pct: Option<f64>,
    /// CPU microseconds per message delivered in the step (none when nothing was delivered).
    pub us_per_msg: Option<f64>,
}

impl ProcessCost {
    pub fn of(spent: crate::procfs::Spent, role: &'static str, delivered: u64) -> ProcessCost {
        let cpu_secs = spent.cpu_secs;
        ProcessCost {
            cpu_pct: cpu_secs.filter(|_| spent.wall_secs > 0.0).map(|c| c / spent.wall_secs * 100.0),
            us_per_msg: cpu_secs.filter(|_| delivered > 0).map(|c| c * 1e6 / delivered as f64),
            label: spent.watched.label,
            pid: spent.watched.pid,
            role,
            cpu_secs,
        }
    }
}

impl Step {
    /// CPU µs per delivered message of all processes of a role (none if any is unknown).
    pub fn us_per_msg(&self, role: &str) -> Option<f64> {
        let mut of_role = self.cpu.iter().filter(|c| c.role == role).peekable();
        of_role.peek()?;
        of_role.map(|c| c.us_per_msg).sum()
    }

    /// `relay 12.3 · redis-server 4.1 (generator 20.0)`: CPU µs per delivered message.
    pub fn cost_line(&self) -> String {
        let us = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
        let mut parts: Vec<String> = Vec::new();
        let relays = self.cpu.iter().filter(|c| c.role == "relay").count();
        if relays > 1 {
            parts.push(format!("relays {}", us(self.us_per_msg("relay"))));
        }
        for c in self.cpu.iter().filter(|c| c.role != "generator") {
            parts.push(format!("{} {}", c.label, us(c.us_per_msg)));
        }
        let generator = self.cpu.iter().find(|c| c.role == "generator");
        let mut line = parts.join(" · ");
        if let Some(g) = generator {
            let _ = write!(line, "{}(generator {})", if line.is_empty() { "" } else { " " }, us(g.us_per_msg));
        }
        line
    }
}

/// The outcome of a ramp.
#[derive(Debug, Clone, Serialize)]
pub struct Saturation {
    /// The highest rate that held (none if the first step already failed).
    pub max_sustained_rate: Option<u64>,
    /// The lowest rate that failed, and why (none if every step held).
    pub first_failing_rate: Option<u64>,
    pub reason: Option<String>,
}

/// Idle connections and what they cost the server.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Idle {
    pub requested: u64,
    pub opened: u64,
    /// Attempts that failed (opening stops after 100 failures).
    pub failed: u64,
    /// Open at the end of the hold period.
    pub still_open: u64,
    pub hold_secs: f64,
    pub source_addresses: u64,
    pub server_rss_before_kib: Option<u64>,
    pub server_rss_after_kib: Option<u64>,
    pub server_kib_per_connection: Option<f64>,
    pub generator_kib_per_connection: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub urls: Vec<String>,
    pub threads: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pairs: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_bytes: Option<usize>,
    /// Recipients on `enigma.v1`, acknowledging every delivery (`--ack`).
    pub acknowledging: bool,
    /// `--churn`: each socket closed and opened again about this often (seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn_secs: Option<f64>,
    pub setup: Setup,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saturation: Option<Saturation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<Idle>,
}

fn rate(r: f64) -> String {
    format!("{:.0}", r)
}

fn ms(v: f64) -> String {
    if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}

fn kinds(step: &Step) -> String {
    step.errors_by_kind.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
}

impl Report {
    /// `, acknowledging (enigma.v1), reconnect churn every ~10 s` (empty for plain clients).
    fn clients(&self) -> String {
        let mut out = String::new();
        if self.acknowledging {
            out.push_str(", acknowledging recipients (enigma.v1)");
        }
        if let Some(secs) = self.churn_secs {
            let _ = write!(out, ", reconnect churn every ~{secs} s");
        }
        out
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plain data")
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        let s = &self.setup;
        let _ = writeln!(out, "enigma-bench {} · {} · {} threads", self.mode, self.urls.join(" "), self.threads);
        if let (Some(pairs), Some(bytes)) = (self.pairs, self.payload_bytes) {
            let _ = writeln!(out, "pairs {pairs}, payload {bytes} bytes{}", self.clients());
        }
        let _ = writeln!(
            out,
            "setup: {} logins in {:.2} s ({}/s), {} sockets in {:.2} s ({}/s)",
            s.logins,
            s.login_secs,
            rate(s.logins_per_sec),
            s.sockets,
            s.connect_secs,
            rate(s.connects_per_sec)
        );
        for step in &self.steps {
            let l = &step.latency_ms;
            let _ = writeln!(
                out,
                "\noffered {} msgs/s for {:.1} s: scheduled {}, sent {}, delivered {}, achieved {} msgs/s ({:.1}%)",
                step.offered_rate,
                step.duration_secs,
                step.scheduled,
                step.sent,
                step.delivered,
                rate(step.achieved_rate),
                step.achieved_ratio * 100.0
            );
            let _ = writeln!(
                out,
                "  latency ms: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (send lag p99 {} ms)",
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p99_9),
                ms(l.max),
                ms(step.send_lag_ms.p99)
            );
            let _ = writeln!(
                out,
                "  lost {}  unsent {}  refused {}  duplicated {}  redelivered {}  reordered {}  late {}  errors {}{}",
                step.lost,
                step.unsent,
                step.refused,
                step.duplicated,
                step.redelivered,
                step.reordered,
                step.late,
                step.errors,
                if step.errors > 0 { format!(" ({})", kinds(step)) } else { String::new() }
            );
            let _ = writeln!(
                out,
                "  CPU (% of one core): generator {}, server {}",
                pct(step.generator_cpu_pct),
                pct(step.server_cpu_pct)
            );
            if self.acknowledging || self.churn_secs.is_some() {
                let _ = writeln!(out, "  acknowledged {}  reconnections {}", step.acknowledged, step.reconnects);
            }
            if !step.cpu.is_empty() {
                let _ = writeln!(out, "  CPU µs per delivered message: {}", step.cost_line());
            }
            if let Some(reason) = &step.saturated {
                let _ = writeln!(out, "  saturated: {reason}");
            }
        }
        if let Some(sat) = &self.saturation {
            let _ = writeln!(out, "\n{}", saturation_line(sat));
        }
        if let Some(idle) = &self.idle {
            let _ = writeln!(out, "\n{}", idle_line(idle));
        }
        out
    }

    /// A Markdown fragment (no heading) for docs/BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let s = &self.setup;
        let _ = writeln!(
            out,
            "Setup: {} logins in {:.2} s (**{}/s**), {} WebSockets in {:.2} s ({}/s).\n",
            s.logins,
            s.login_secs,
            rate(s.logins_per_sec),
            s.sockets,
            s.connect_secs,
            rate(s.connects_per_sec)
        );
        if !self.steps.is_empty() {
            out.push_str(
                "| offered msgs/s | achieved msgs/s | % | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms \
                 | send lag p99 ms | lost | dup | reord | errors | CPU gen/server % | CPU µs per msg | verdict |\n",
            );
            out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---|\n");
            for step in &self.steps {
                let l = &step.latency_ms;
                let errors = if step.errors > 0 { format!("{} ({})", step.errors, kinds(step)) } else { "0".into() };
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} | {} |",
                    step.offered_rate,
                    rate(step.achieved_rate),
                    step.achieved_ratio * 100.0,
                    ms(l.p50),
                    ms(l.p90),
                    ms(l.p99),
                    ms(l.p99_9),
                    ms(l.max),
                    ms(step.send_lag_ms.p99),
                    step.lost,
                    step.duplicated,
                    step.reordered,
                    errors,
                    pct(step.generator_cpu_pct),
                    pct(step.server_cpu_pct),
                    step.cost_line(),
                    step.saturated.as_deref().unwrap_or("held"),
                );
            }
        }
        if (self.acknowledging || self.churn_secs.is_some()) && !self.steps.is_empty() {
            let _ = writeln!(out, "\nClients:{}.\n", self.clients());
            out.push_str("| offered msgs/s | sent | unsent | delivered | lost | duplicated | redelivered (enigma.v1) | acknowledged | reconnections |\n");
            out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
            for step in &self.steps {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    step.offered_rate,
                    step.sent,
                    step.unsent,
                    step.delivered,
                    step.lost,
                    step.duplicated,
                    step.redelivered,
                    step.acknowledged,
                    step.reconnects
                );
            }
        }
        if let Some(sat) = &self.saturation {
            let _ = writeln!(out, "\n**{}**", saturation_line(sat));
        }
        if let Some(idle) = &self.idle {
            let kib = |v: Option<u64>| v.map_or("-".into(), |v| format!("{:.1}", v as f64 / 1024.0));
            let per = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
            out.push_str(
                "| sockets | opened | failed | open after hold | hold s | source addresses \
                 | server RSS MiB before → after | server KiB per socket | generator KiB per socket |\n",
            );
            out.push_str("|---:|---:|---:|---:|---:|---:|---|---:|---:|\n");
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.0} | {} | {} → {} | **{}** | {} |",
                idle.requested,
                idle.opened,
                idle.failed,
                idle.still_open,
                idle.hold_secs,
                idle.source_addresses,
                kib(idle.server_rss_before_kib),
                kib(idle.server_rss_after_kib),
                per(idle.server_kib_per_connection),
                per(idle.generator_kib_per_connection),
            );
            if let Some(e) = &idle.first_error {
                let _ = writeln!(out, "\nFirst error: {e}");
            }
        }
        out
    }
}

fn saturation_line(sat: &Saturation) -> String {
    let held = match sat.max_sustained_rate {
        Some(r) => format!("saturation point: {r} msgs/s held"),
        None => "saturation point: below the first step".into(),
    };
    match (sat.first_failing_rate, &sat.reason) {
        (Some(r), Some(why)) => format!("{held}; {r} msgs/s failed ({why})"),
        _ => format!("{held}; no step failed (raise --ramp-max-rate or --ramp-max-steps)"),
    }
}

fn idle_line(idle: &Idle) -> String {
    let mut line = format!(
        "idle connections: {} requested, {} opened, {} failed, {} still open after {:.0} s ({} source address{})",
        idle.requested,
        idle.opened,
        idle.failed,
        idle.still_open,
        idle.hold_secs,
        idle.source_addresses,
        if idle.source_addresses == 1 { "" } else { "es" }
    );
    if let (Some(before), Some(after), Some(per)) =
        (idle.server_rss_before_kib, idle.server_rss_after_kib, idle.server_kib_per_connection)
    {
        let _ = write!(
            line,
            "; server RSS {:.1} MiB → {:.1} MiB: {per:.2} KiB per connection",
            before as f64 / 1024.0,
            after as f64 / 1024.0
        );
    }
    if let Some(per) = idle.generator_kib_per_connection {
        let _ = write!(line, "; generator {per:.2} KiB per connection");
    }
    if let Some(e) = &idle.first_error {
        let _ = write!(line, "; first error: {e}");
    }
    line
}
