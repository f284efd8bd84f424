//! Logs (`tracing`, pretty or JSON) and metrics (Prometheus). Metric names live here, in
//! one place, so the dashboards and alerts can be checked against them.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Every series the server exports (all prefixed `enigma_`).
pub mod metric {
    pub const CONNECTIONS_OPEN: &str = "enigma_connections_open";
    pub const CONNECTIONS_CLOSED: &str = "enigma_connections_closed_total";
    pub const LOGINS: &str = "enigma_logins_total";
    pub const LOOKUPS: &str = "enigma_lookups_total";
    pub const MESSAGES_ACCEPTED: &str = "enigma_messages_accepted_total";
    pub const MESSAGES_REJECTED: &str = "enigma_messages_rejected_total";
    pub const MESSAGES_DELIVERED: &str = "enigma_messages_delivered_total";
    pub const ACKS: &str = "enigma_acks_total";
    pub const SLOW_CONSUMERS: &str = "enigma_slow_consumer_disconnects_total";
    pub const HTTP_REQUESTS: &str = "enigma_http_requests_total";
    pub const DRAINING: &str = "enigma_draining";
    pub const REDIS_COMMAND_SECONDS: &str = "enigma_redis_command_duration_seconds";
    pub const REDIS_ERRORS: &str = "enigma_redis_errors_total";
    pub const REDIS_LINK_UP: &str = "enigma_redis_link_up";
    pub const REDIS_RESUBSCRIPTIONS: &str = "enigma_redis_resubscriptions_total";
    pub const REDIS_DEAD_LINKS: &str = "enigma_redis_dead_links_total";
}

/// Installs the log subscriber; logs go to stderr (stdout carries the "listening" line).
pub fn init_logging(settings: &LogSettings) {
    let filter = EnvFilter::try_new(&settings.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// The process-wide Prometheus recorder (the `metrics` facade is global by design), installed
/// on first use; its upkeep runs on a timer.
pub fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
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
