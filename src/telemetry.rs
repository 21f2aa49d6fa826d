//! Logging (tracing) and metrics (Prometheus text) for the whole process.
//!
//! Logs go to stderr: human lines on a terminal, JSON with `log_format = "json"`
//! (`TENANTD_LOG_FORMAT=json`); `RUST_LOG` filters them (default `info`). Metrics are recorded
//! with the `metrics` facade into one process-wide Prometheus recorder, rendered by `/metrics`.

use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Log filter when `RUST_LOG` is not set: our own `info`, and only warnings from the
/// libraries (the PostgreSQL driver logs every server NOTICE at info), errors only from
/// deadpool (it warns once per pooled connection that a server closes, which tenantd's own
/// log already says once per outage).
pub const DEFAULT_FILTER: &str = "info,tokio_postgres=warn,refinery_core=warn,deadpool=error";

/// Log filter of CLI commands other than `serve`: only what went wrong.
pub const CLI_FILTER: &str = "warn";

/// Installs the log subscriber with `default_filter` unless `RUST_LOG` is set; later calls
/// (tests start several daemons) do nothing.
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
    };
    // A second init in the same process (tests) finds a subscriber already there: fine.
    if installed.is_err() {
        tracing::trace!("log subscriber already installed");
    }
}

/// The process-wide metrics recorder, installed on first use.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        handle
    })
}
