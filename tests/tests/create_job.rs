//! One large CreateJob against the real binary: what it costs the gateway's memory, and that the job it
//! makes is whole.

use std::time::Duration;

use serde_json::json;
use sprig_tests::{create_job, Gateway};

/// How much the gateway's peak RSS (debug build) may grow for one CreateJob of 50,000 targets, from the
/// request to the end of its notifications. Measured on the development machine: 39-53 MiB before store
/// format 5; 61-69 MiB since, on a machine busy with two other builds, and 52 MiB in two runs with format
/// 5's `thing_executions` index left unwritten: sled holds ~250 bytes of memory per index entry, the price
/// of ListJobExecutionsForThing reading no execution. 66-67 MiB just before the store kept each thing's
/// pending executions in memory (`store::pending`, issue 18), 77-78 MiB with it: ~230 bytes per pending
/// execution, the price of notifications and device requests reading no index. A job written as one
/// transaction (468 MiB) still fails by far, and so would ~250 more bytes per target.
const BOUND_MIB: u64 = 90;

#[tokio::test(flavor = "multi_thread")]
async fn a_create_job_of_50000_targets_costs_tens_of_mib_and_makes_the_whole_job() {
    let mut gateway = Gateway::start();
    let mut op = gateway.operator().await;
    let things: Vec<String> = (0..50_000).map(|i| format!("t-{i:05}")).collect();
    let names: Vec<&str> = things.iter().map(String::as_str).collect();
    let body = create_job("big", None, &names);
    assert!(serde_json::to_vec(&body).unwrap().len() > 480_000);

    gateway.reset_peak_rss();
    let before = gateway.rss_kb();
    op.request("CreateJob", body).await.unwrap();
    // The notifier reads every target's state to notify it: part of what one CreateJob costs.
    let notified =
        gateway.wait_for_log(r#"devices notified job_id="big""#, Duration::from_secs(120));
    assert!(notified.contains("things=50000"), "{notified}");
    let grew_mib = (gateway.peak_rss_kb() - before) / 1024;
    println!("CreateJob of 50,000 targets: the gateway's peak RSS grew by {grew_mib} MiB");
    assert!(
        grew_mib < BOUND_MIB,
        "one CreateJob of 50,000 targets raised the gateway's peak RSS by {grew_mib} MiB (bound {BOUND_MIB} MiB)"
    );

    let job = op
        .request("DescribeJob", json!({"jobId": "big"}))
        .await
        .unwrap();
    assert_eq!(job["job"]["status"], "IN_PROGRESS");
    let targets: Vec<&str> = job["job"]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arn| arn.as_str().unwrap().rsplit('/').next().unwrap())
        .collect();
    assert_eq!(targets, names);
    let counts = &job["job"]["jobProcessDetails"];
    assert_eq!(counts["numberOfQueuedThings"], 50_000, "{counts}");
    let others: u64 = counts
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, _)| *name != "numberOfQueuedThings")
        .map(|(_, n)| n.as_u64().unwrap())
        .sum();
    assert_eq!(others, 0, "{counts}");

    // The executions, one QUEUED per target in thing-name order: the first page and, after the
    // 49,750th thing, the last (the store check below counts them all against the job's counts).
    for (after, expected) in [(None, &things[..250]), (Some("t-49749"), &things[49_750..])] {
        let mut request = json!({"jobId": "big", "maxResults": 250});
        if let Some(after) = after {
            request["nextToken"] = json!(after);
        }
        let page = op
            .request("ListJobExecutionsForJob", request)
            .await
            .unwrap();
        let listed: Vec<&str> = page["executionSummaries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|summary| {
                assert_eq!(
                    summary["jobExecutionSummary"]["status"], "QUEUED",
                    "{summary}"
                );
                summary["thingArn"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
            })
            .collect();
        assert_eq!(listed, expected);
        let last = after.is_some();
        assert_eq!(page["nextToken"].is_null(), last, "{}", page["nextToken"]);
    }

    drop(op);
    gateway.stop_and_check_store("1 jobs, 50000 executions");
}
