//! `[metrics]` end to end: `/metrics` parses as Prometheus' text format and its counters move as a device
//! connects and an operator's requests are answered; `/healthz` says whether the gateway serves.

use prometheus_parse::{Sample, Scrape, Value};
use sprig_tests::device::{Device, Protocol};
use sprig_tests::{create_job, Gateway};

/// The scrape, parsed as Prometheus parses it.
fn scrape(gateway: &Gateway) -> Scrape {
    let (status, body) = gateway.metrics_get("/metrics");
    assert!(status.contains("200"), "{status}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format")
}

/// The value of `metric` with these labels (0 if absent).
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s: &&Sample| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_as_devices_connect_and_requests_are_answered() {
    let gateway = Gateway::start();
    let (status, body) = gateway.metrics_get("/healthz");
    assert!(status.contains("200"), "{status} {body}");

    let before = scrape(&gateway);
    let device = Device::connect(gateway.addr, "t1", Protocol::V311).await;
    let mut op = gateway.operator().await;
    op.request("CreateJob", create_job("j1", None, &["t1"]))
        .await
        .unwrap();
    let refused = op
        .request("DeleteJob", serde_json::json!({"jobId": "j1"}))
        .await;
    assert!(refused.is_err());

    let after = scrape(&gateway);
    let devices = [("kind", "device")];
    assert_eq!(value(&after, "sprig_connections", &devices), 1.0);
    assert!(value(&after, "sprig_connects_total", &[]) >= 2.0);
    let created = [
        ("api", "mqtt"),
        ("operation", "CreateJob"),
        ("outcome", "accepted"),
    ];
    assert_eq!(value(&after, "sprig_requests_total", &created), 1.0);
    let refused = [
        ("api", "mqtt"),
        ("operation", "DeleteJob"),
        ("outcome", "InvalidStateTransitionException"),
    ];
    assert_eq!(value(&after, "sprig_requests_total", &refused), 1.0);
    assert!(
        value(&after, "sprig_messages_received_total", &[])
            > value(&before, "sprig_messages_received_total", &[])
    );
    assert!(value(&after, "sprig_job_notifications_sent_total", &[]) >= 0.0);
    let latency = [("api", "mqtt"), ("operation", "CreateJob")];
    assert_eq!(
        value(&after, "sprig_request_duration_seconds_count", &latency),
        1.0
    );

    device.disconnect().await;
    let (status, _) = gateway.metrics_get("/nothing");
    assert!(status.contains("404"), "{status}");
}
