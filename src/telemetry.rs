//! Logs (`tracing`, pretty or JSON) and metrics (Prometheus). Metric names live here, in
//! one place, so the dashboards and alerts can be checked against them.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Every series the server exports (all prefixed `enigma_`).
pub mod metric {
    pub const CONNECTIONS_OPEN: &str = "enigma_connections_open";
    pub const CONNECTIONS_OPENED: &str = "enigma_connections_opened_total";
    pub const CONNECTIONS_CLOSED: &str = "enigma_connections_closed_total";
    pub const CONNECTIONS_DISPLACED: &str = "enigma_connections_displaced_total";
    pub const LOGINS: &str = "enigma_logins_total";
    pub const LOOKUPS: &str = "enigma_lookups_total";
    pub const MESSAGES_ACCEPTED: &str = "enigma_messages_accepted_total";
    pub const MESSAGES_REJECTED: &str = "enigma_messages_rejected_total";
    pub const MESSAGES_DELIVERED: &str = "enigma_messages_delivered_total";
    /// Accepted (stored) → written to the recipient's socket, from the inbox id's timestamp.
    pub const DELIVERY_LATENCY: &str = "enigma_delivery_latency_seconds";
    /// Messages waiting in the inbox that a connection received when it opened.
    pub const BACKLOG_ON_CONNECT: &str = "enigma_backlog_on_connect_messages";
    pub const ACKS: &str = "enigma_acks_total";
    pub const SLOW_CONSUMERS: &str = "enigma_slow_consumer_disconnects_total";
    pub const HTTP_REQUESTS: &str = "enigma_http_requests_total";
    pub const HTTP_DURATION: &str = "enigma_http_request_duration_seconds";
    pub const DRAINING: &str = "enigma_draining";
    pub const REDIS_COMMAND_SECONDS: &str = "enigma_redis_command_duration_seconds";
    pub const REDIS_ERRORS: &str = "enigma_redis_errors_total";
    pub const REDIS_LINK_UP: &str = "enigma_redis_link_up";
    pub const REDIS_RESUBSCRIPTIONS: &str = "enigma_redis_resubscriptions_total";
    pub const REDIS_DEAD_LINKS: &str = "enigma_redis_dead_links_total";
    /// Subscriptions a cluster node ended because their slot moved (migration, failover),
    /// subscribed again where the slot lives now.
    pub const REDIS_MOVED_SUBSCRIPTIONS: &str = "enigma_redis_moved_subscriptions_total";
    /// Challenges sealed (`POST /auth/challenge`).
    pub const AUTH_CHALLENGES: &str = "enigma_auth_challenges_total";
    /// Access tokens issued for answered challenges.
    pub const AUTH_TOKENS_ISSUED: &str = "enigma_auth_tokens_issued_total";
    /// Refused tokens, tickets and answers, by `reason` (`auth::Refusal`).
    pub const AUTH_REFUSALS: &str = "enigma_auth_refusals_total";
    /// Refusals by rate limit (`limit`: login, challenge, socket_address, socket_user, send,
    /// unused_registrations).
    pub const RATE_LIMITED: &str = "enigma_rate_limited_total";
    /// Connections refused at accept by a cap (`cap`: replica, address).
    pub const CONNECTIONS_REFUSED: &str = "enigma_connections_refused_total";
    /// How full the store is, 0 to 1 (`limits::storage`: from 0.5 the storage shares shrink).
    pub const STORE_PRESSURE: &str = "enigma_store_pressure";
    /// The key directory's latest published epoch (`transparency`).
    pub const DIRECTORY_EPOCH: &str = "enigma_directory_epoch";
    /// Registrations waiting to be published in the key directory.
    pub const DIRECTORY_PENDING: &str = "enigma_directory_pending";
    /// 1 on the replica holding the publisher's lease, else 0.
    pub const DIRECTORY_PUBLISHER: &str = "enigma_directory_publisher";
    /// How long publishing one epoch took (akd's insertion, the write, the replicas'
    /// acknowledgement and the root).
    pub const DIRECTORY_PUBLISH_SECONDS: &str = "enigma_directory_publish_duration_seconds";
    /// Rounds in which an epoch's root was not recorded because the Redis replicas had not
    /// acknowledged the epoch in time (`directory.replica_wait_ms`).
    pub const DIRECTORY_UNREPLICATED: &str = "enigma_directory_unreplicated_total";
}

/// Handles of the per-message series, registered once: a `counter!` call with labels costs a
/// registry lookup, too much on a path taken for every message. Created on first use, which
/// is after `run` installed the recorder.
pub struct Hot {
    pub accepted: metrics::Counter,
    pub delivered_live: metrics::Counter,
    pub delivered_backlog: metrics::Counter,
    pub delivery_latency: metrics::Histogram,
}

pub fn hot() -> &'static Hot {
    static HOT: OnceLock<Hot> = OnceLock::new();
    HOT.get_or_init(|| Hot {
        accepted: metrics::counter!(metric::MESSAGES_ACCEPTED),
        delivered_live: metrics::counter!(metric::MESSAGES_DELIVERED, "path" => "live"),
        delivered_backlog: metrics::counter!(metric::MESSAGES_DELIVERED, "path" => "backlog"),
        delivery_latency: metrics::histogram!(metric::DELIVERY_LATENCY),
    })
}

/// Creates every counter and gauge at zero, so that `rate()` and `increase()` see a series'
/// first increment (a series born at 1 looks like it always was 1).
pub fn register_all() {
    for name in [
        metric::CONNECTIONS_OPENED,
        metric::CONNECTIONS_DISPLACED,
        metric::LOGINS,
        metric::MESSAGES_ACCEPTED,
        metric::ACKS,
        metric::SLOW_CONSUMERS,
        metric::AUTH_CHALLENGES,
        metric::AUTH_TOKENS_ISSUED,
        metric::DIRECTORY_UNREPLICATED,
    ] {
        metrics::counter!(name).increment(0);
    }
    for result in ["found", "not_found"] {
        metrics::counter!(metric::LOOKUPS, "result" => result).increment(0);
    }
    for cap in ["replica", "address"] {
        metrics::counter!(metric::CONNECTIONS_REFUSED, "cap" => cap).increment(0);
    }
    let _ = hot(); // the per-message series, delivered{path} included
    metrics::gauge!(metric::CONNECTIONS_OPEN).set(0.0);
    metrics::gauge!(metric::STORE_PRESSURE).set(0.0);
    metrics::gauge!(metric::DIRECTORY_EPOCH).set(0.0);
    metrics::gauge!(metric::DIRECTORY_PENDING).set(0.0);
    metrics::gauge!(metric::DIRECTORY_PUBLISHER).set(0.0);
}

/// Installs the log subscriber; logs go to stderr (stdout carries the "listening" line).
pub fn init_logging(settings: &LogSettings) {
    // akd logs every step of every epoch at info: only its warnings, unless the filter names it.
    let level = match settings.level.contains("akd") {
        true => settings.level.clone(),
        false => format!("{},akd=warn", settings.level),
    };
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info,akd=warn"));
    // Colours only for a terminal: a log written to a file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match settings.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// Histograms with buckets (not summaries), so that quantiles can be aggregated across
/// replicas with `histogram_quantile`.
fn builder() -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    const SECONDS: &[f64] =
        &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
    const COUNTS: &[f64] = &[0.0, 1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)?
        .set_buckets_for_metric(Matcher::Full(metric::BACKLOG_ON_CONNECT.into()), COUNTS)
}

/// The process-wide Prometheus recorder (the `metrics` facade is global by design), installed
/// on first use; its upkeep runs on a timer.
pub fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match builder().and_then(|b| b.install_recorder()) {
            Ok(handle) => {
                let upkeep = handle.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(5));
                    loop {
                        tick.tick().await;
                        upkeep.run_upkeep();
                    }
                });
                Some(handle)
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed");
                None
            }
        })
        .clone()
}
