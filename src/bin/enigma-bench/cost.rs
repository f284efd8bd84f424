//! Which processes a step's CPU is charged to: the generator itself, each relay
//! (`--server-pid`) and each `--cpu-pid` (e.g. redis-server), checked and labelled.

use crate::procfs::Watched;

/// The processes charged per delivered message: the generator, the relays, the `--cpu-pid`s.
pub fn watched(cpu_pids: &[String], server_pids: &[String]) -> Result<Vec<(Watched, &'static str)>, String> {
    let me = std::process::id().to_string();
    let mut watched = vec![(Watched { label: "generator".into(), pid: me }, "generator")];
    for (i, pid) in server_pids.iter().enumerate() {
        let label = if server_pids.len() > 1 { format!("relay {}", i + 1) } else { "relay".into() };
        watched.push((Watched { label, pid: pid.clone() }, "relay"));
    }
    for spec in cpu_pids {
        let (label, pid) = match spec.split_once('=') {
            Some((label, pid)) => (Some(label.trim().to_owned()), pid.trim()),
            None => (None, spec.trim()),
        };
        if pid.parse::<u32>().is_err() || label.as_ref().is_some_and(|l| l.is_empty()) {
            return Err(format!("--cpu-pid {spec}: expected PID or LABEL=PID"));
        }
        let Some(name) = crate::procfs::command_name(pid).filter(|_| crate::procfs::cpu_ticks(pid).is_some()) else {
            return Err(format!("--cpu-pid {spec}: cannot read /proc/{pid}/stat"));
        };
        watched.push((Watched { label: label.unwrap_or(name), pid: pid.to_owned() }, "other"));
    }
    Ok(watched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs;

    #[test]
    fn cpu_pids_are_checked_and_labelled() {
        let me = std::process::id().to_string();
        let all = watched(&[format!("redis={me}"), me.clone()], std::slice::from_ref(&me)).unwrap();
        let labels: Vec<_> = all.iter().map(|(w, role)| (w.label.as_str(), *role)).collect();
        assert_eq!(labels[..3], [("generator", "generator"), ("relay", "relay"), ("redis", "other")]);
        assert_eq!(all[3].0.label, procfs::command_name(&me).unwrap());
        for bad in ["x", "=1", "redis=", "4294967295999"] {
            assert!(watched(&[bad.to_owned()], &[]).is_err(), "{bad}");
        }
    }
}
