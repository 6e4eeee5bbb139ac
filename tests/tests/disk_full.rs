//! A full disk, on a gateway whose data dir is a 2 MiB tmpfs: a write refused for want of space leaves no
//! trace, writes succeed again once there is room (without a restart), and a gateway that cannot go on
//! exits non-zero with nothing acknowledged lost. Skipped (and said so) where tmpfs cannot be mounted.

use std::time::Duration;

use serde_json::json;
use sprig_tests::tmpfs::Tmpfs;
use sprig_tests::{create_job, Gateway, Operator};

/// Creates jobs of 200 things each until the store refuses one; returns the accepted ids and the refused
/// one. The refusal must be ServiceUnavailableException, saying why.
async fn fill(op: &mut Operator) -> (Vec<String>, String) {
    let mut accepted = Vec::new();
    for i in 0..1000 {
        let id = format!("job{i:04}");
        let things: Vec<String> = (0..200).map(|t| format!("thing-{i}-{t}")).collect();
        let things: Vec<&str> = things.iter().map(String::as_str).collect();
        match op
            .request("CreateJob", create_job(&id, None, &things))
            .await
        {
            Ok(_) => accepted.push(id),
            Err((code, message)) => {
                assert_eq!(code, "ServiceUnavailableException", "{message}");
                assert!(message.contains("no space left"), "{message}");
                return (accepted, id);
            }
        }
    }
    panic!("1000 jobs fitted on a 2 MiB disk");
}

/// Every job id ListJobs shows, or the error code.
async fn listed(op: &mut Operator) -> Result<Vec<String>, String> {
    let reply = op
        .request("ListJobs", json!({ "maxResults": 250 }))
        .await
        .map_err(|(code, _)| code)?;
    Ok(reply["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["jobId"].as_str().unwrap().to_owned())
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_write_leaves_no_trace_and_writes_succeed_once_there_is_room() {
    let Some(disk) = Tmpfs::mount("disk_full::a_refused_write_leaves_no_trace", "2m") else {
        return;
    };
    let mut gateway = Gateway::start_with_data_dir(&disk.join("data"), |c| c);
    let mut op = gateway.operator().await;
    let (accepted, refused) = fill(&mut op).await;

    // The health check says so, with the reason.
    let (status, body) = gateway.metrics_get("/healthz");
    assert!(
        status.contains("503") && body.contains("out of service"),
        "{status} {body}"
    );
    // No phantom: the refused job is not described or listed while the store is out of service.
    assert_ne!(op.job_status(&refused).await, "IN_PROGRESS");
    if let Ok(ids) = listed(&mut op).await {
        assert!(!ids.contains(&refused), "{refused} listed");
    }

    disk.resize("16m");
    gateway.wait_for_log("back in service", Duration::from_secs(30));
    let (status, _) = gateway.metrics_get("/healthz");
    assert!(status.contains("200"), "{status}");
    op.request("CreateJob", create_job("after", None, &["t1"]))
        .await
        .expect("a write succeeds once there is room, without a restart");
    assert_eq!(op.job_status(&refused).await, "ResourceNotFoundException");
    let mut expected = accepted.clone();
    expected.push("after".into());
    expected.sort();
    assert_eq!(listed(&mut op).await.unwrap(), expected);

    drop(op);
    assert_eq!(gateway.terminate(), Some(0), "{}", gateway.log());
    gateway.spawn();
    let mut op = gateway.operator().await;
    assert_eq!(listed(&mut op).await.unwrap(), expected);
    drop(op);
    assert_eq!(gateway.terminate(), Some(0));
    let check = gateway.cli(&["store", "check"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_stopped_on_a_full_disk_exits_non_zero_and_keeps_what_it_acknowledged() {
    let Some(disk) = Tmpfs::mount("disk_full::a_gateway_stopped_on_a_full_disk", "2m") else {
        return;
    };
    let mut gateway = Gateway::start_with_data_dir(&disk.join("data"), |c| c);
    let mut op = gateway.operator().await;
    let (accepted, refused) = fill(&mut op).await;
    drop(op);

    assert_eq!(gateway.terminate(), Some(1), "{}", gateway.log());
    let last = gateway.log().lines().last().unwrap_or_default().to_owned();
    assert!(
        last.contains("cannot flush the jobs store") && last.contains("start sprig again"),
        "{last}"
    );

    disk.resize("16m");
    gateway.spawn();
    let mut op = gateway.operator().await;
    assert_eq!(listed(&mut op).await.unwrap(), accepted);
    assert_eq!(op.job_status(&refused).await, "ResourceNotFoundException");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_cannot_be_reopened_stops_the_gateway_with_a_failure() {
    let Some(disk) = Tmpfs::mount("disk_full::a_store_that_cannot_be_reopened", "2m") else {
        return;
    };
    let mut gateway = Gateway::start_with_data_dir(&disk.join("data"), |c| c);
    let mut op = gateway.operator().await;
    fill(&mut op).await;
    drop(op);

    // While the store is out of service, its settings file is damaged (in place: the disk is full), so
    // the reopen cannot succeed.
    let conf = gateway.data_dir().join("store").join("conf");
    let mut file = std::fs::OpenOptions::new().write(true).open(&conf).unwrap();
    std::io::Write::write_all(&mut file, b"segment_size: ??????").unwrap();
    drop(file);
    disk.resize("16m");
    let status = gateway.wait_for_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", gateway.log());
    let log = gateway.log();
    assert!(log.contains("cannot continue"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}
