//! Readings from `/proc` (Linux): resident memory, CPU time and the open-file limit of a
//! process, `self` or a server's pid; the CPU each watched process spends per delivered message.

/// `VmRSS` in KiB.
pub fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User plus system CPU time in clock ticks (USER_HZ, 100 per second on Linux).
pub fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields are counted after the last ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

pub const TICKS_PER_SEC: f64 = 100.0;

/// The soft open-file limit.
pub fn open_files_limit(pid: &str) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// CPU used by a set of processes between two moments, in percent of one core.
pub struct CpuMeter {
    pids: Vec<String>,
    start: Option<u64>,
    at: std::time::Instant,
}

impl CpuMeter {
    pub fn start(pids: Vec<String>) -> CpuMeter {
        let start = Self::ticks(&pids);
        CpuMeter { pids, start, at: std::time::Instant::now() }
    }

    fn ticks(pids: &[String]) -> Option<u64> {
        if pids.is_empty() {
            return None;
        }
        pids.iter().map(|p| cpu_ticks(p)).sum()
    }

    pub fn percent(&self) -> Option<f64> {
        let used = Self::ticks(&self.pids)?.checked_sub(self.start?)?;
        let wall = self.at.elapsed().as_secs_f64();
        (wall > 0.0).then(|| used as f64 / TICKS_PER_SEC / wall * 100.0)
    }
}

/// The command name (`/proc/PID/comm`): the default label of a `--cpu-pid`.
pub fn command_name(pid: &str) -> Option<String> {
    Some(std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?.trim().to_owned())
}

/// A process whose CPU time is charged to the messages a step delivered.
#[derive(Debug, Clone)]
pub struct Watched {
    pub label: String,
    pub pid: String,
}

/// The CPU time (user + system, all threads) of each watched process over a step: what an
/// operator pays per message is CPU, not wall time, and CPU time hardly depends on what else
/// runs on the machine.
pub struct CostMeter {
    start: Vec<(Watched, Option<u64>)>,
    at: std::time::Instant,
}

/// What one process spent over a step.
#[derive(Debug, Clone)]
pub struct Spent {
    pub watched: Watched,
    /// CPU seconds (none: the process could not be read, e.g. it exited).
    pub cpu_secs: Option<f64>,
    pub wall_secs: f64,
}

impl CostMeter {
    pub fn start(watched: &[Watched]) -> CostMeter {
        let start = watched.iter().map(|w| (w.clone(), cpu_ticks(&w.pid))).collect();
        CostMeter { start, at: std::time::Instant::now() }
    }

    pub fn stop(&self) -> Vec<Spent> {
        let wall_secs = self.at.elapsed().as_secs_f64();
        self.start
            .iter()
            .map(|(w, before)| {
                let used = before.and_then(|b| cpu_ticks(&w.pid)?.checked_sub(b));
                Spent { watched: w.clone(), cpu_secs: used.map(|t| t as f64 / TICKS_PER_SEC), wall_secs }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        assert!(rss_kib("self").unwrap() > 0);
        assert!(rss_kib("no-such-pid").is_none());
        assert!(cpu_ticks("self").is_some());
        assert!(open_files_limit("self").unwrap() > 0);
    }

    #[test]
    fn meters_cpu() {
        let meter = CpuMeter::start(vec!["self".into()]);
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(meter.percent().is_some());
        assert!(CpuMeter::start(vec![]).percent().is_none());
    }

    #[test]
    fn costs_cpu_per_process() {
        let watched = [
            Watched { label: "me".into(), pid: "self".into() },
            Watched { label: "gone".into(), pid: "no-such-pid".into() },
        ];
        let meter = CostMeter::start(&watched);
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let spent = meter.stop();
        assert_eq!(spent.len(), 2);
        assert!(spent[0].cpu_secs.is_some() && spent[0].wall_secs > 0.0);
        assert!(spent[1].cpu_secs.is_none(), "an unreadable process has no figure, not zero");
        assert!(command_name("self").is_some_and(|n| !n.is_empty()));
    }
}
