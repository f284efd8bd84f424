//! Command timing: every Redis operation the engine runs has a name here, one latency
//! histogram and one error counter label; `timed` runs a call with the command timeout, and
//! `once_loaded` runs one again for as long as Redis is loading its dataset.

use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use redis::RedisResult;

use super::super::unavailable::Unavailable;
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
    /// Charging (or giving back) a storage lease (`ledger`).
    Hold,
    /// Taking what removals freed off the storage ledger.
    Release,
    /// Reading the key directory's records, roots and waiting registrations.
    DirectoryRead,
    /// Writing an epoch, a root, or what was published.
    DirectoryWrite,
    /// Taking or renewing the publisher's lease.
    DirectoryLease,
    /// Waiting for the replicas to acknowledge an epoch (`WAIT`), before its root is recorded.
    DirectoryWait,
}

impl Command {
    /// Every command, in declaration order (the histograms are indexed by discriminant).
    const ALL: [Command; 22] = [
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
        Command::Hold,
        Command::Release,
        Command::DirectoryRead,
        Command::DirectoryWrite,
        Command::DirectoryLease,
        Command::DirectoryWait,
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
            Command::Hold => "hold",
            Command::Release => "release",
            Command::DirectoryRead => "directory_read",
            Command::DirectoryWrite => "directory_write",
            Command::DirectoryLease => "directory_lease",
            Command::DirectoryWait => "directory_wait",
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

/// Runs one Redis call with a deadline, recording its latency and any error by command. The
/// error keeps its cause: the caller asks it what kind it is (`Unavailable::is_noscript`…).
pub(super) async fn timed<T>(
    command: Command,
    limit: Duration,
    fut: impl Future<Output = RedisResult<T>>,
) -> Result<T, Unavailable> {
    let started = Instant::now();
    let result = match tokio::time::timeout(limit, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Unavailable::from(e)),
        Err(_) => Err(Unavailable::late(limit)),
    };
    command.histogram().record(started.elapsed().as_secs_f64());
    if result.is_err() {
        metrics::counter!(metric::REDIS_ERRORS, "command" => command.as_str()).increment(1);
    }
    result
}

/// How often `once_loaded` asks again while Redis loads, and how often it says it waits.
const LOADING_RETRY: Duration = Duration::from_millis(200);
const LOADING_NOTICE: Duration = Duration::from_secs(10);

/// Runs a call (`call` makes it anew each time) until Redis has loaded its dataset, for as
/// long as the load takes (it progresses, and ends), saying so every `LOADING_NOTICE`; any
/// other failure is returned at once. For what startup cannot do without: a request's call
/// is answered `unavailable` instead (the client retries).
pub(super) async fn once_loaded<T, F, Fut>(command: Command, limit: Duration, mut call: F) -> Result<T, Unavailable>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = RedisResult<T>>,
{
    let started = Instant::now();
    let mut said: Option<Instant> = None;
    loop {
        match timed(command, limit, call()).await {
            Err(e) if e.is_loading() => {
                if said.is_none_or(|at| at.elapsed() >= LOADING_NOTICE) {
                    let waited = started.elapsed();
                    tracing::warn!(command = command.as_str(), ?waited, "Redis is loading its dataset; waiting for it");
                    said = Some(Instant::now());
                }
                tokio::time::sleep(LOADING_RETRY).await;
            }
            result => return result,
        }
    }
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

    #[tokio::test]
    async fn once_loaded_waits_through_loading_and_returns_any_other_failure_at_once() {
        let error = |raw: &[u8]| redis::parse_redis_value(raw).unwrap().extract_error().unwrap_err();
        let limit = Duration::from_secs(1);
        let mut answers = vec![Ok(7), Err(error(b"-LOADING loading\r\n")), Err(error(b"-LOADING loading\r\n"))];
        let mut calls = 0;
        let loaded = once_loaded(Command::Auth, limit, || {
            calls += 1;
            std::future::ready(answers.pop().unwrap())
        });
        assert_eq!(loaded.await.ok(), Some(7));
        assert_eq!(calls, 3);
        let mut calls = 0;
        let failed = once_loaded(Command::Auth, limit, || {
            calls += 1;
            std::future::ready(Err::<(), _>(error(b"-ERR wrong\r\n")))
        });
        assert!(failed.await.is_err());
        assert_eq!(calls, 1);
    }
}
