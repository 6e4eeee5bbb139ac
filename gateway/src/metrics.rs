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

/// A connection's kind (`device`, `operator`, `uplink`) and the listener it came through (its address;
/// the fleet broker's URL for the uplink).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub kind: String,
    pub listener: String,
}

/// A connection's kind alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// A plugin library (its `[[plugins]]` name).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabel {
    pub plugin: String,
}

/// A plugin call: its library, and its outcome (`succeeded` or the failure's kind).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginCallLabels {
    pub plugin: String,
    pub outcome: String,
}

/// A recovery's end state (`RECOVERED`, `FAILED`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
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
    /// Connections open now, by kind and listener.
    pub connections: Family<ConnectionLabels, Gauge>,
    /// The same by kind alone, for `sprig status` (not exported: Prometheus sums the labels itself).
    connections_by_kind: Family<KindLabel, Gauge>,
    /// Logins accepted.
    pub connects: Counter,
    /// Logins refused, by reason (CONNACK's).
    pub refused_logins: Family<ReasonLabel, Counter>,
    /// Connections ended, by reason.
    pub disconnects: Family<ReasonLabel, Counter>,
    /// PUBLISH packets received from clients, and their topic and payload bytes.
    pub messages_received: Counter,
    pub bytes_received: Counter,
    /// PUBLISH packets written to clients, and their topic and payload bytes.
    pub messages_sent: Counter,
    pub bytes_sent: Counter,
    /// Messages not delivered, by reason: a connection's queue was full (`queue_full`), a disconnected
    /// session's backlog was full (`backlog_full`), a QoS 0 message for a client that reads too slowly
    /// (`slow_reader`).
    pub messages_dropped: Family<ReasonLabel, Counter>,
    /// Messages kept for a disconnected persistent session.
    pub messages_queued: Counter,
    /// Times rumqttd's router moved a subscriber that fell behind past messages its log no longer had.
    pub router_skips: Counter,
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
    /// Recoveries that ended, by state.
    pub recoveries_ended: Family<StateLabel, Counter>,
    /// Plugin calls (`create` and recoveries), by plugin and outcome.
    pub plugin_calls: Family<PluginCallLabels, Counter>,
    /// How long recovery calls took, by plugin.
    pub plugin_call_duration: Family<PluginLabel, Histogram>,
    /// Plugin host processes started again after one was lost or reset, by plugin.
    pub plugin_restarts: Family<PluginLabel, Counter>,
    /// The jobs store's files, in bytes.
    pub store_size: Gauge,
    /// Bytes the store's flushes wrote to its log.
    pub store_flushed_bytes: Counter,
    /// How long the store's flushes that wrote something took.
    pub store_flush_duration: Histogram,
    /// Jobs now, by status and namespace (set by the jobs engine from its counts).
    pub jobs: Family<JobLabels, Gauge>,
    /// Job executions now, by status (set by the jobs engine from its counts).
    pub job_executions: Family<StatusLabel, Gauge>,
    /// Recoveries now, by state (set by the jobs engine from its counts).
    pub recoveries: Family<StateLabel, Gauge>,
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

/// A connection counted in `sprig_connections` (by listener, and by kind) while this lives.
#[derive(Debug)]
pub struct OpenConnection(Gauge, Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
        self.1.dec();
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
        let plugin_call_duration = Family::<PluginLabel, Histogram>::new_with_constructor(|| {
            // 100 µs to ~13 s (a call's budget is seconds).
            Histogram::new(exponential_buckets(0.0001, 2.0, 18))
        });
        // 100 µs to ~3 s: an fsync on an SD card takes milliseconds, a stalled one seconds.
        let store_flush_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let metrics = Metrics {
            registry: Registry::default(),
            connections: Family::default(),
            connections_by_kind: Family::default(),
            connects: Counter::default(),
            refused_logins: Family::default(),
            disconnects: Family::default(),
            messages_received: Counter::default(),
            bytes_received: Counter::default(),
            messages_sent: Counter::default(),
            bytes_sent: Counter::default(),
            messages_dropped: Family::default(),
            messages_queued: Counter::default(),
            router_skips: Counter::default(),
            notifications_sent: Counter::default(),
            requests: Family::default(),
            request_duration,
            deletions_in_progress: Gauge::default(),
            executions_removed: Counter::default(),
            recoveries_ended: Family::default(),
            plugin_calls: Family::default(),
            plugin_call_duration,
            plugin_restarts: Family::default(),
            store_size: Gauge::default(),
            store_flushed_bytes: Counter::default(),
            store_flush_duration,
            jobs: Family::default(),
            job_executions: Family::default(),
            recoveries: Family::default(),
            uplink_connected: Gauge::default(),
            uplink_spool_messages: Gauge::default(),
            uplink_spool_bytes: Gauge::default(),
            uplink_spool_dropped: Counter::default(),
            uplink_sent: Counter::default(),
        };
        let m = &metrics;
        registry.register(
            "connections",
            "Connections open now, by kind and listener",
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
            "messages_sent",
            "PUBLISH packets written to clients",
            m.messages_sent.clone(),
        );
        registry.register(
            "sent_bytes",
            "Topic and payload bytes of the PUBLISH packets written to clients",
            m.bytes_sent.clone(),
        );
        registry.register(
            "messages_dropped",
            "Messages not delivered, by reason (queue_full, backlog_full, slow_reader)",
            m.messages_dropped.clone(),
        );
        registry.register(
            "messages_queued",
            "Messages kept for disconnected persistent sessions",
            m.messages_queued.clone(),
        );
        registry.register(
            "router_skips",
            "Times the router moved a subscriber that fell behind past messages its log no longer had",
            m.router_skips.clone(),
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
            "recoveries_ended",
            "Recoveries that ended, by state",
            m.recoveries_ended.clone(),
        );
        registry.register(
            "plugin_calls",
            "Plugin calls, by plugin and outcome (succeeded, panicked, failed, garbage, timed_out, crashed, quarantined)",
            m.plugin_calls.clone(),
        );
        registry.register(
            "plugin_call_duration_seconds",
            "Time a plugin took to answer a recovery, by plugin",
            m.plugin_call_duration.clone(),
        );
        registry.register(
            "plugin_restarts",
            "Plugin host processes started again after one was lost or reset, by plugin",
            m.plugin_restarts.clone(),
        );
        registry.register_with_unit(
            "store_size",
            "The jobs store's files",
            prometheus_client::registry::Unit::Bytes,
            m.store_size.clone(),
        );
        registry.register_with_unit(
            "store_flushed",
            "Bytes the jobs store's flushes wrote to its log",
            prometheus_client::registry::Unit::Bytes,
            m.store_flushed_bytes.clone(),
        );
        registry.register(
            "store_flush_duration_seconds",
            "Time a flush of the jobs store that wrote something took",
            m.store_flush_duration.clone(),
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
            "recoveries",
            "Recoveries, by state (PENDING, RECOVERED, FAILED)",
            m.recoveries.clone(),
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

    /// The gauge of connections of `kind` on `listener`.
    pub fn connections_of(&self, kind: &str, listener: &str) -> Gauge {
        self.connections
            .get_or_create(&ConnectionLabels {
                kind: kind.to_owned(),
                listener: listener.to_owned(),
            })
            .clone()
    }

    /// Counts a client's connection of `kind` on `listener` as open until the returned guard is dropped
    /// (and a login accepted).
    pub fn connection_opened(&self, kind: &str, listener: &str) -> OpenConnection {
        let gauge = self.connections_of(kind, listener);
        let of_kind = self.kind_gauge(kind);
        gauge.inc();
        of_kind.inc();
        self.connects.inc();
        OpenConnection(gauge, of_kind)
    }

    /// The uplink's connection to the fleet broker at `url` is up, or not.
    pub fn uplink_link(&self, url: &str, up: bool) {
        let up = i64::from(up);
        self.connections_of("uplink", url).set(up);
        self.kind_gauge("uplink").set(up);
        self.uplink_connected.set(up);
    }

    /// Connections of `kind` open now, on every listener.
    pub fn open_connections(&self, kind: &str) -> i64 {
        self.kind_gauge(kind).get()
    }

    fn kind_gauge(&self, kind: &str) -> Gauge {
        self.connections_by_kind
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .clone()
    }

    /// Counts a message not delivered for `reason` (see [`Metrics::messages_dropped`]).
    pub fn dropped(&self, reason: &str) {
        self.messages_dropped
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a call of `plugin` that ended with `outcome`, and how long it took.
    pub fn plugin_call(&self, plugin: &str, outcome: &str, seconds: f64) {
        let labels = PluginCallLabels {
            plugin: plugin.to_owned(),
            outcome: outcome.to_owned(),
        };
        self.plugin_calls.get_or_create(&labels).inc();
        let labels = PluginLabel {
            plugin: plugin.to_owned(),
        };
        self.plugin_call_duration
            .get_or_create(&labels)
            .observe(seconds);
    }

    /// Counts a restart of `plugin`'s host process.
    pub fn plugin_restarted(&self, plugin: &str) {
        self.plugin_restarts
            .get_or_create(&PluginLabel {
                plugin: plugin.to_owned(),
            })
            .inc();
    }

    /// Counts a recovery that ended in `state`.
    pub fn recovery_ended(&self, state: &str) {
        self.recoveries_ended
            .get_or_create(&StateLabel {
                state: state.to_owned(),
            })
            .inc();
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

    /// The gauge of recoveries in `state`.
    pub fn recoveries_of(&self, state: &str) -> Gauge {
        self.recoveries
            .get_or_create(&StateLabel {
                state: state.to_owned(),
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
        metrics.connections_of("device", "127.0.0.1:1883").inc();
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
            text.contains(r#"sprig_connections{kind="device",listener="127.0.0.1:1883"}"#),
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
