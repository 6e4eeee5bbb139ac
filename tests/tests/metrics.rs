//! `[metrics]` end to end: `/metrics` parses as Prometheus' text format and its counters move as a device
//! connects and an operator's requests are answered; `/healthz` says whether the gateway serves.

use std::time::{Duration, Instant};

use prometheus_parse::Scrape;
use sprig_tests::device::{Device, Login, Protocol};
use sprig_tests::{create_job, metric, Gateway};

/// Scrapes until `ready` holds of the scrape (at most 10 s).
async fn wait_for(gateway: &Gateway, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = gateway.scrape();
        if ready(&scrape) || Instant::now() > deadline {
            return scrape;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_as_devices_connect_and_requests_are_answered() {
    let gateway = Gateway::start();
    let (status, body) = gateway.metrics_get("/healthz");
    assert!(status.contains("200"), "{status} {body}");

    let before = gateway.scrape();
    let mut device = Device::connect(gateway.addr, "t1", Protocol::V311).await;
    let notify = device.jobs_topic("notify");
    device.subscribe(&[&notify]).await;
    let mut op = gateway.operator().await;
    op.request("CreateJob", create_job("j1", None, &["t1"]))
        .await
        .unwrap();
    device
        .expect_message(&notify, Duration::from_secs(10))
        .await;
    let refused = op
        .request("DeleteJob", serde_json::json!({"jobId": "j1"}))
        .await;
    assert!(refused.is_err());

    // The store's gauges follow its background flush (every 500 ms): wait for the one after the job.
    let after = wait_for(&gateway, |s| {
        metric(s, "sprig_store_flushed_bytes_total", &[]) > 0.0
            && metric(s, "sprig_store_size_bytes", &[]) > 0.0
    })
    .await;
    let listener = gateway.addr.to_string();
    let devices = [("kind", "device"), ("listener", listener.as_str())];
    assert_eq!(metric(&after, "sprig_connections", &devices), 1.0);
    assert_eq!(
        metric(&after, "sprig_connections", &[("kind", "operator")]),
        1.0
    );
    assert!(metric(&after, "sprig_connects_total", &[]) >= 2.0);
    let created = [
        ("api", "mqtt"),
        ("operation", "CreateJob"),
        ("outcome", "accepted"),
    ];
    assert_eq!(metric(&after, "sprig_requests_total", &created), 1.0);
    let refused = [
        ("api", "mqtt"),
        ("operation", "DeleteJob"),
        ("outcome", "InvalidStateTransitionException"),
    ];
    assert_eq!(metric(&after, "sprig_requests_total", &refused), 1.0);
    let moved = |name: &str| metric(&after, name, &[]) - metric(&before, name, &[]);
    assert!(moved("sprig_messages_received_total") >= 2.0);
    // The notification and the operator's replies, at least.
    assert!(moved("sprig_messages_sent_total") >= 3.0);
    assert!(moved("sprig_sent_bytes_total") > moved("sprig_messages_sent_total"));
    assert!(moved("sprig_job_notifications_sent_total") >= 1.0);
    let latency = [("api", "mqtt"), ("operation", "CreateJob")];
    assert_eq!(
        metric(&after, "sprig_request_duration_seconds_count", &latency),
        1.0
    );
    assert!(metric(&after, "sprig_store_flush_duration_seconds_count", &[]) >= 1.0);

    device.disconnect().await;
    let (status, _) = gateway.metrics_get("/nothing");
    assert!(status.contains("404"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_kept_for_a_disconnected_session_are_counted_as_queued() {
    let gateway = Gateway::start();
    let login = Login::anonymous("t-away", Protocol::V311).persistent(3600);
    let mut device = Device::connect_with(gateway.addr, login.clone())
        .await
        .unwrap();
    let notify = device.jobs_topic("notify");
    device.subscribe(&[&notify]).await;
    device.disconnect().await;
    let before = metric(&gateway.scrape(), "sprig_messages_queued_total", &[]);

    let mut op = gateway.operator().await;
    op.request("CreateJob", create_job("j-away", None, &["t-away"]))
        .await
        .unwrap();
    let after = wait_for(&gateway, |s| {
        metric(s, "sprig_messages_queued_total", &[]) > before
    })
    .await;
    assert!(metric(&after, "sprig_messages_queued_total", &[]) > before);

    // And the queued notification is what the device gets when it comes back.
    let mut device = Device::connect_with(gateway.addr, login).await.unwrap();
    device
        .expect_message(&notify, Duration::from_secs(10))
        .await;
}
