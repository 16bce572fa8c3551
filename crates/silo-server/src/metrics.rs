//! Prometheus metrics (`GET /metrics`).
//!
//! Counters and gauges may carry an `agent` label; histograms never do (ten
//! thousand agents times the buckets would cost more than the agents), and
//! no label ever carries a path. Hot-path work is one counter update per
//! exchange, not per chunk: byte counts are added up by the exchange and
//! recorded when it ends. Gauges that describe state (connected agents,
//! certificate expiry) are computed when scraped.

use crate::state::ServerState;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;
use time::OffsetDateTime;

/// The process-wide recorder (the `metrics` facade has exactly one).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("silo_exchange_duration_seconds".into()),
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0,
                ],
            )
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (an embedding program);
        // then this handle renders an empty registry rather than failing.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// `1xx`..`5xx`.
fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// One exchange got its response head (or an error status) after `elapsed`.
pub fn exchange_answered(agent: &str, status: u16, elapsed: Duration) {
    counter!("silo_exchanges_total", "agent" => agent.to_owned(), "status" => status_class(status))
        .increment(1);
    histogram!("silo_exchange_duration_seconds").record(elapsed.as_secs_f64());
}

/// Body bytes an exchange carried: `in` from the user, `out` to the user.
pub fn exchange_bytes(agent: &str, direction: &'static str, bytes: u64) {
    if bytes > 0 {
        counter!("silo_bytes_total", "agent" => agent.to_owned(), "direction" => direction)
            .increment(bytes);
    }
}

/// Provisioning attempts by outcome (`succeeded`, `invalid_key`, ...).
pub fn provision_outcome(result: &'static str) {
    counter!("silo_provision_total", "result" => result).increment(1);
}

/// A store operation failed.
pub fn store_error() {
    counter!("silo_store_errors_total").increment(1);
}

fn seconds_until(t: OffsetDateTime) -> f64 {
    (t - OffsetDateTime::now_utc()).as_seconds_f64()
}

/// Renders the exposition text, refreshing the state gauges first.
pub fn render(state: &ServerState) -> String {
    let handle = handle();
    let agents = state.registry.list();
    gauge!("silo_agents_connected").set(agents.len() as f64);
    gauge!("silo_exchanges_active").set(state.in_flight.get() as f64);
    for r in &agents {
        let info = r.conn.info();
        if let Some(not_after) = info.cert_not_after {
            gauge!("silo_agent_certificate_expiry_seconds", "agent" => info.agent_id.clone())
                .set(seconds_until(not_after));
        }
    }
    if let Some(tls) = &state.tls {
        gauge!("silo_server_certificate_expiry_seconds")
            .set(seconds_until(tls.pki.server_not_after()));
        gauge!("silo_ca_certificate_expiry_seconds").set(seconds_until(tls.pki.ca_not_after()));
    }
    handle.run_upkeep();
    handle.render()
}

#[cfg(test)]
mod tests {
    #[test]
    fn status_classes() {
        assert_eq!(super::status_class(101), "1xx");
        assert_eq!(super::status_class(204), "2xx");
        assert_eq!(super::status_class(404), "4xx");
        assert_eq!(super::status_class(504), "5xx");
    }
}
