//! Prometheus metrics (`GET /metrics`).
//!
//! Counters and gauges may carry an `agent` label; histograms never do (ten
//! thousand agents times the buckets would cost more than the agents), and
//! no label ever carries a path. Hot-path work is one counter update per
//! exchange, not per chunk: byte counts are added up by the exchange and
//! recorded when it ends. Gauges that describe state (connected agents,
//! certificate expiry) are computed when scraped.

use crate::state::ServerState;
use metrics::{Counter, Histogram, counter, gauge, histogram};
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

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index into [`STATUS_CLASSES`]; anything outside 1xx..4xx counts as 5xx.
fn status_class_index(status: u16) -> usize {
    match status / 100 {
        n @ 1..=4 => usize::from(n) - 1,
        _ => 4,
    }
}

/// One agent's metric handles. A `counter!`/`histogram!` call allocates
/// its labels and looks the series up in the registry every time
/// (callgrind: ≈ 1.8 k instructions per exchange for the three); these
/// handles are looked up once per session, at first use, so an idle agent
/// adds no series and no memory to the registry.
#[derive(Default)]
pub struct AgentMeters {
    agent: String,
    /// By status class, 1xx..5xx.
    exchanges: [OnceLock<Counter>; 5],
    bytes_in: OnceLock<Counter>,
    bytes_out: OnceLock<Counter>,
    /// The (unlabelled) latency histogram, looked up once here too.
    duration: OnceLock<Histogram>,
}

impl std::fmt::Debug for AgentMeters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMeters")
            .field("agent", &self.agent)
            .finish()
    }
}

impl AgentMeters {
    pub fn new(agent: &str) -> Self {
        Self {
            agent: agent.to_owned(),
            ..Self::default()
        }
    }

    /// One exchange got its response head (or an error status) after
    /// `elapsed`.
    pub fn answered(&self, status: u16, elapsed: Duration) {
        let index = status_class_index(status);
        self.exchanges[index]
            .get_or_init(|| {
                let class = STATUS_CLASSES[index];
                counter!("silo_exchanges_total", "agent" => self.agent.clone(), "status" => class)
            })
            .increment(1);
        self.duration
            .get_or_init(|| histogram!("silo_exchange_duration_seconds"))
            .record(elapsed.as_secs_f64());
    }

    /// Body bytes an exchange carried from the user.
    pub fn bytes_in(&self, bytes: u64) {
        self.bytes(&self.bytes_in, "in", bytes);
    }

    /// Body bytes an exchange carried to the user.
    pub fn bytes_out(&self, bytes: u64) {
        self.bytes(&self.bytes_out, "out", bytes);
    }

    fn bytes(&self, slot: &OnceLock<Counter>, direction: &'static str, bytes: u64) {
        if bytes > 0 {
            slot.get_or_init(|| {
                counter!("silo_bytes_total", "agent" => self.agent.clone(), "direction" => direction)
            })
            .increment(bytes);
        }
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
        let class = |s| super::STATUS_CLASSES[super::status_class_index(s)];
        assert_eq!(class(101), "1xx");
        assert_eq!(class(204), "2xx");
        assert_eq!(class(301), "3xx");
        assert_eq!(class(404), "4xx");
        assert_eq!(class(504), "5xx");
        assert_eq!(class(99), "5xx");
        assert_eq!(class(600), "5xx");
    }
}
