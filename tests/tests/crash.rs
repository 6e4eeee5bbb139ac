//! Work interrupted by SIGKILL: a deletion finishes after a restart, a creation is undone; either leaves
//! everything else untouched.

use std::time::Duration;

use serde_json::json;
use sprig_tests::{create_job, with_setting, Gateway};

#[tokio::test(flavor = "multi_thread")]
async fn a_deletion_killed_midway_finishes_after_restart() {
    // Small batches make the deletion of 20,000 executions take long enough to be interrupted.
    let mut gateway =
        Gateway::start_with(|c| c.replace("deletion_batch_size = 500", "deletion_batch_size = 20"));
    let mut op = gateway.operator().await;
    let things: Vec<String> = (0..20_000).map(|i| format!("dev{i:05}")).collect();
    let things: Vec<&str> = things.iter().map(String::as_str).collect();
    op.request("CreateJob", create_job("huge", Some("acme"), &things))
        .await
        .unwrap();
    op.request(
        "CreateJob",
        create_job("bystander", Some("acme"), &things[..50]),
    )
    .await
    .unwrap();
    op.request("CreateJob", create_job("standard", None, &["solo"]))
        .await
        .unwrap();

    op.request(
        "DeleteJob",
        json!({"jobId": "huge", "force": true, "namespaceId": "acme"}),
    )
    .await
    .unwrap();
    // The kill lands mid-deletion: once some executions are gone (numberOfQueuedThings fell), and long
    // before all are (a thousand batches of 20 to go).
    let job = op
        .wait_for_job("huge", Duration::from_secs(60), |job| {
            job["status"] == "DELETION_IN_PROGRESS"
                && job["jobProcessDetails"]["numberOfQueuedThings"]
                    .as_u64()
                    .is_some_and(|left| left < 20_000)
        })
        .await;
    let left = job["jobProcessDetails"]["numberOfQueuedThings"]
        .as_u64()
        .unwrap();
    assert!(
        left > 0,
        "the kill must land mid-deletion; {left} executions left"
    );
    gateway.kill9();
    drop(op);

    gateway.spawn();
    assert!(
        gateway.log().contains("resuming an unfinished deletion"),
        "{}",
        gateway.log()
    );
    let mut op = gateway.operator().await;
    op.wait_until_deleted("huge", Duration::from_secs(120))
        .await;
    let executions = op
        .request("ListJobExecutionsForJob", json!({"jobId": "huge"}))
        .await;
    assert_eq!(executions.unwrap_err().0, "ResourceNotFoundException");

    // The other jobs are untouched.
    let bystander = op
        .request("DescribeJob", json!({"jobId": "bystander"}))
        .await
        .unwrap();
    assert_eq!(bystander["job"]["status"], "IN_PROGRESS");
    assert_eq!(
        bystander["job"]["jobProcessDetails"]["numberOfQueuedThings"],
        50
    );
    let page = op
        .request(
            "ListJobExecutionsForJob",
            json!({"jobId": "bystander", "maxResults": 250}),
        )
        .await
        .unwrap();
    assert_eq!(page["executionSummaries"].as_array().unwrap().len(), 50);
    assert_eq!(op.job_status("standard").await, "IN_PROGRESS");

    // And the store agrees with itself: exactly the 51 remaining executions, every index in place.
    drop(op);
    gateway.stop_and_check_store("2 jobs, 51 executions");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_creation_killed_midway_is_undone_at_restart() {
    // One execution per transaction: the creation of 20,000 takes long enough to be interrupted.
    let mut gateway = Gateway::start_with(|c| {
        with_setting(&c, "creation_batch_size = 500", "creation_batch_size = 1")
    });
    let mut op = gateway.operator().await;
    op.request(
        "CreateJob",
        create_job("bystander", Some("acme"), &["dev00001"]),
    )
    .await
    .unwrap();
    let things: Vec<String> = (0..20_000).map(|i| format!("dev{i:05}")).collect();
    let things: Vec<&str> = things.iter().map(String::as_str).collect();
    let body = create_job("huge", Some("acme"), &things);
    let request = tokio::spawn(async move { op.request("CreateJob", body).await });
    gateway.wait_for_log(
        r#"job creation started job_id="huge""#,
        Duration::from_secs(60),
    );
    request.abort();
    gateway.kill9();

    // As the crash left it: the store agrees with itself, the job (flushed before that log line) part-written.
    let check = gateway.cli(&["store", "check"]);
    let report = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(check.status.success(), "{report}");
    let (jobs, executions) = report
        .lines()
        .next()
        .and_then(|line| line.split_once(" jobs, "))
        .and_then(|(jobs, rest)| Some((jobs.parse::<u64>().ok()?, rest.split_once(' ')?.0)))
        .and_then(|(jobs, executions)| Some((jobs, executions.parse::<u64>().ok()?)))
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(jobs, 2, "{report}");
    assert!(
        executions < 1 + 20_000,
        "the kill must land mid-creation; {executions} executions stored\n{report}"
    );

    gateway.spawn();
    let undone = gateway.log_lines("removed a job whose creation was interrupted");
    assert!(
        undone.iter().any(|l| l.contains(r#"job_id="huge""#)),
        "{}",
        gateway.log()
    );
    let mut op = gateway.operator().await;
    assert_eq!(op.job_status("huge").await, "ResourceNotFoundException");
    let bystander = op
        .request("DescribeJob", json!({"jobId": "bystander"}))
        .await
        .unwrap();
    assert_eq!(bystander["job"]["status"], "IN_PROGRESS");
    assert_eq!(
        bystander["job"]["jobProcessDetails"]["numberOfQueuedThings"],
        1
    );
    // The CreateJob that was never answered did not happen: retried, it succeeds.
    op.request("CreateJob", create_job("huge", Some("acme"), &things[..3]))
        .await
        .unwrap();

    drop(op);
    gateway.stop_and_check_store("2 jobs, 4 executions");
}
