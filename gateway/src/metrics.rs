//! The gateway's Prometheus metrics: one registry for the process, the metric families every module
//! records into ([`get`]), and their text exposition ([`encode`], served on `[metrics] listen` as
//! `/metrics` by the daemon). A leaf: it knows no other module, and recording is a few atomic operations,
//! so any module may count from any thread. Names follow Prometheus' conventions (`sprig_..._total`,
//! `_seconds`, `_bytes`).

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A connection's kind: `device`, `operator`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// Why something was refused or ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// A job's status and namespace (`""` for a job without one).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub status: String,
    pub namespace: String,
}

/// A status (of job executions).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

/// A request: which API it came through (`mqtt`, `http`, `uplink`), its operation, and its outcome
/// (`accepted` or the exception's code).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub api: String,
    pub operation: String,
    pub outcome: String,
}

/// A request's API and operation (for its latency).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub api: String,
    pub operation: String,
}

/// The metric families.
pub struct Metrics {
    registry: Registry,
    /// Client connections open now, by kind.
    pub connections: Family<KindLabel, Gauge>,
    /// Logins accepted.
    pub connects: Counter,
    /// Logins refused, by reason (CONNACK's).
    pub refused_logins: Family<ReasonLabel, Counter>,
    /// Connections ended, by reason.
    pub disconnects: Family<ReasonLabel, Counter>,
    /// PUBLISH packets received from clients, and their topic and payload bytes.
    pub messages_received: Counter,
    pub bytes_received: Counter,
    /// Job notifications delivered to devices' connections.
    pub notifications_sent: Counter,
    /// Control and device API requests answered, by API, operation and outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// How long requests took to answer, by API and operation.
    pub request_duration: Family<OperationLabels, Histogram>,
    /// Jobs being deleted now (DELETION_IN_PROGRESS).
    pub deletions_in_progress: Gauge,
    /// Executions removed by deletions.
    pub executions_removed: Counter,
    /// Jobs now, by status and namespace (set by the jobs engine from its counts).
    pub jobs: Family<JobLabels, Gauge>,
    /// Job executions now, by status (set by the jobs engine from its counts).
    pub job_executions: Family<StatusLabel, Gauge>,
    /// 1 while the uplink is connected to the fleet broker.
    pub uplink_connected: Gauge,
    /// Messages in the uplink's spool not yet acknowledged by the fleet broker.
    pub uplink_spool_messages: Gauge,
    /// Bytes of the uplink spool's files.
    pub uplink_spool_bytes: Gauge,
    /// Messages the uplink's spool dropped to keep its bound.
    pub uplink_spool_dropped: Counter,
    /// Messages the fleet broker acknowledged (or that went out, at QoS 0).
    pub uplink_sent: Counter,
}

/// A connection counted in `sprig_connections` while this lives.
#[derive(Debug)]
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The process's metrics, made on first use.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// The text exposition of every metric (`text/plain; version=0.0.4`).
pub fn encode() -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &get().registry);
    text
}

/// The content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sprig");
        let request_duration = Family::<OperationLabels, Histogram>::new_with_constructor(|| {
            // 100 µs to ~13 s.
            Histogram::new(exponential_buckets(0.0001, 2.0, 18))
        });
        let metrics = Metrics {
            registry: Registry::default(),
            connections: Family::default(),
            connects: Counter::default(),
            refused_logins: Family::default(),
            disconnects: Family::default(),
            messages_received: Counter::default(),
            bytes_received: Counter::default(),
            notifications_sent: Counter::default(),
            requests: Family::default(),
            request_duration,
            deletions_in_progress: Gauge::default(),
            executions_removed: Counter::default(),
            jobs: Family::default(),
            job_executions: Family::default(),
            uplink_connected: Gauge::default(),
            uplink_spool_messages: Gauge::default(),
            uplink_spool_bytes: Gauge::default(),
            uplink_spool_dropped: Counter::default(),
            uplink_sent: Counter::default(),
        };
        let m = &metrics;
        registry.register(
            "connections",
            "Client connections open now, by kind",
            m.connections.clone(),
        );
        registry.register("connects", "Logins accepted", m.connects.clone());
        registry.register(
            "refused_logins",
            "Logins refused, by reason",
            m.refused_logins.clone(),
        );
        registry.register(
            "disconnects",
            "Connections ended, by reason",
            m.disconnects.clone(),
        );
        registry.register(
            "messages_received",
            "PUBLISH packets received from clients",
            m.messages_received.clone(),
        );
        registry.register(
            "received_bytes",
            "Topic and payload bytes of the PUBLISH packets received from clients",
            m.bytes_received.clone(),
        );
        registry.register(
            "job_notifications_sent",
            "Job notifications delivered to devices' connections",
            m.notifications_sent.clone(),
        );
        registry.register(
            "requests",
            "Control and device API requests answered, by API, operation and outcome",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer a request, by API and operation",
            m.request_duration.clone(),
        );
        registry.register(
            "deletions_in_progress",
            "Jobs being deleted (DELETION_IN_PROGRESS)",
            m.deletions_in_progress.clone(),
        );
        registry.register(
            "executions_removed",
            "Executions removed by job deletions",
            m.executions_removed.clone(),
        );
        registry.register(
            "jobs",
            "Jobs, by status and namespace (\"\" for jobs without one)",
            m.jobs.clone(),
        );
        registry.register(
            "job_executions",
            "Job executions, by status",
            m.job_executions.clone(),
        );
        registry.register(
            "uplink_connected",
            "1 while the uplink is connected to the fleet broker",
            m.uplink_connected.clone(),
        );
        registry.register(
            "uplink_spool_messages",
            "Messages in the uplink's spool not yet acknowledged by the fleet broker",
            m.uplink_spool_messages.clone(),
        );
        registry.register(
            "uplink_spool_bytes",
            "Bytes of the uplink spool's files",
            m.uplink_spool_bytes.clone(),
        );
        registry.register(
            "uplink_spool_dropped",
            "Messages the uplink's spool dropped to keep its bound",
            m.uplink_spool_dropped.clone(),
        );
        registry.register(
            "uplink_sent",
            "Messages the fleet broker acknowledged",
            m.uplink_sent.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Counts a request answered through `api` and how long it took.
    pub fn request(&self, api: &str, operation: &str, outcome: &str, seconds: f64) {
        let labels = RequestLabels {
            api: api.to_owned(),
            operation: operation.to_owned(),
            outcome: outcome.to_owned(),
        };
        self.requests.get_or_create(&labels).inc();
        let labels = OperationLabels {
            api: api.to_owned(),
            operation: operation.to_owned(),
        };
        self.request_duration
            .get_or_create(&labels)
            .observe(seconds);
    }

    /// The gauge of connections of `kind`.
    pub fn connections_of(&self, kind: &str) -> Gauge {
        self.connections
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .clone()
    }

    /// Counts a connection of `kind` as open until the returned guard is dropped (and a login accepted).
    pub fn connection_opened(&self, kind: &str) -> OpenConnection {
        let gauge = self.connections_of(kind);
        gauge.inc();
        self.connects.inc();
        OpenConnection(gauge)
    }

    /// The gauge of jobs in `status` of `namespace` (`None`: jobs without one).
    pub fn jobs_of(&self, status: &str, namespace: Option<&str>) -> Gauge {
        self.jobs
            .get_or_create(&JobLabels {
                status: status.to_owned(),
                namespace: namespace.unwrap_or_default().to_owned(),
            })
            .clone()
    }

    /// The gauge of job executions in `status`.
    pub fn job_executions_of(&self, status: &str) -> Gauge {
        self.job_executions
            .get_or_create(&StatusLabel {
                status: status.to_owned(),
            })
            .clone()
    }

    /// Counts a login refused for `reason`.
    pub fn refused(&self, reason: &str) {
        self.refused_logins
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a connection ended for `reason`.
    pub fn disconnected(&self, reason: &str) {
        self.disconnects
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_values_appear_in_the_exposition_under_sprigs_names() {
        let metrics = get();
        metrics.request("mqtt", "DeleteJob", "accepted", 0.002);
        metrics.connections_of("device").inc();
        metrics.refused("bad_credentials");
        let text = encode();
        assert!(
            text.contains(
                r#"sprig_requests_total{api="mqtt",operation="DeleteJob",outcome="accepted"}"#
            ),
            "{text}"
        );
        assert!(
            text.contains("sprig_request_duration_seconds_bucket{"),
            "{text}"
        );
        assert!(
            text.contains(r#"sprig_connections{kind="device"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sprig_refused_logins_total{reason="bad_credentials"}"#),
            "{text}"
        );
        metrics.jobs_of("IN_PROGRESS", Some("acme")).set(2);
        metrics.job_executions_of("QUEUED").set(7);
        let text = encode();
        assert!(
            text.contains(r#"sprig_jobs{status="IN_PROGRESS",namespace="acme"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sprig_job_executions{status="QUEUED"} 7"#),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }
}
