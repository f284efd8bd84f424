//! Command timing: every Redis operation the engine runs has a name here, one latency
//! histogram and one error counter label; `timed` runs a call with the command timeout.

use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use redis::RedisResult;

use super::super::Unavailable;
use crate::telemetry::metric;

/// A Redis operation, as it is labelled in the command metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Command {
    Send,
    Remove,
    Attach,
    Backlog,
    Lookup,
    LoginGet,
    LoginClaim,
    ReadMark,
    Ping,
    Probe,
    Subscribe,
    Unsubscribe,
    /// The user record read when a socket opens (key and protection, one round trip).
    Admit,
    /// Authentication: burning a challenge, marking a user protected, the shared token key.
    Auth,
    Limit,
    /// Adding to a user's contacts (whom the user writes to).
    Contacts,
}

impl Command {
    /// Every command, in declaration order (the histograms are indexed by discriminant).
    const ALL: [Command; 16] = [
        Command::Send,
        Command::Remove,
        Command::Attach,
        Command::Backlog,
        Command::Lookup,
        Command::LoginGet,
        Command::LoginClaim,
        Command::ReadMark,
        Command::Ping,
        Command::Probe,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Admit,
        Command::Auth,
        Command::Limit,
        Command::Contacts,
    ];

    /// The metric label: dashboards and alerts select by these, so they never change.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Command::Send => "send",
            Command::Remove => "remove",
            Command::Attach => "attach",
            Command::Backlog => "backlog",
            Command::Lookup => "lookup",
            Command::LoginGet => "login_get",
            Command::LoginClaim => "login_claim",
            Command::ReadMark => "read_mark",
            Command::Ping => "ping",
            Command::Probe => "probe",
            Command::Subscribe => "subscribe",
            Command::Unsubscribe => "unsubscribe",
            Command::Admit => "admit",
            Command::Auth => "auth",
            Command::Limit => "limit",
            Command::Contacts => "contacts",
        }
    }

    /// The latency histogram, registered once for every command (a labelled `histogram!` call
    /// is a registry lookup, too much on the per-message path).
    fn histogram(self) -> &'static metrics::Histogram {
        static HISTOGRAMS: OnceLock<Vec<metrics::Histogram>> = OnceLock::new();
        let histograms = HISTOGRAMS.get_or_init(|| {
            Self::ALL
                .iter()
                .map(|c| metrics::histogram!(metric::REDIS_COMMAND_SECONDS, "command" => c.as_str()))
                .collect()
        });
        &histograms[self as usize]
    }
}

/// Runs one Redis call with a deadline, recording its latency and any error by command.
pub(super) async fn timed<T>(
    command: Command,
    limit: Duration,
    fut: impl Future<Output = RedisResult<T>>,
) -> Result<T, Unavailable> {
    let started = Instant::now();
    let result = match tokio::time::timeout(limit, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Unavailable(e.to_string())),
        Err(_) => Err(Unavailable(format!("no answer from Redis within {limit:?}"))),
    };
    command.histogram().record(started.elapsed().as_secs_f64());
    if result.is_err() {
        metrics::counter!(metric::REDIS_ERRORS, "command" => command.as_str()).increment(1);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_its_own_histogram_and_label() {
        for (i, command) in Command::ALL.iter().enumerate() {
            assert_eq!(*command as usize, i, "{command:?} is out of place in Command::ALL");
        }
        let mut labels: Vec<_> = Command::ALL.iter().map(|c| c.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Command::ALL.len(), "two commands share a label");
    }
}
