//! DeleteJob as AWS IoT does it, through raw MQTT control requests against the real gateway.

use std::time::Duration;

use serde_json::json;
use sprig_tests::{create_job, hash_password, Gateway, Operator};

fn rejected(reply: sprig_tests::Reply) -> String {
    match reply {
        Ok(body) => panic!("expected a rejection, got {body}"),
        Err((code, _)) => code,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_job_follows_every_rule_aws_documents() {
    let gateway = Gateway::start();
    let mut op = gateway.operator().await;

    op.request("CreateJob", create_job("j1", Some("acme"), &["t1", "t2"]))
        .await
        .unwrap();
    // Not terminal, no force: refused, and the job is untouched.
    let (code, message) = op
        .request("DeleteJob", json!({"jobId": "j1"}))
        .await
        .unwrap_err();
    assert_eq!(code, "InvalidStateTransitionException");
    assert!(message.contains("force"), "{message}");
    assert_eq!(op.job_status("j1").await, "IN_PROGRESS");

    // force=true: accepted with an empty body; the job is DELETION_IN_PROGRESS or already gone.
    assert_eq!(
        op.request(
            "DeleteJob",
            json!({"jobId": "j1", "force": true, "namespaceId": "acme"})
        )
        .await,
        Ok(json!({}))
    );
    let status = op.job_status("j1").await;
    assert!(
        status == "DELETION_IN_PROGRESS" || status == "ResourceNotFoundException",
        "{status}"
    );
    op.wait_until_deleted("j1", Duration::from_secs(10)).await;

    // After the deletion completes the jobId may be used again.
    op.request("CreateJob", create_job("j1", None, &["t3"]))
        .await
        .unwrap();
    assert_eq!(op.job_status("j1").await, "IN_PROGRESS");

    // A terminal (canceled) job deletes without force.
    op.request("CancelJob", json!({"jobId": "j1"}))
        .await
        .unwrap();
    assert_eq!(op.job_status("j1").await, "CANCELED");
    op.request("DeleteJob", json!({"jobId": "j1"}))
        .await
        .unwrap();
    op.wait_until_deleted("j1", Duration::from_secs(10)).await;

    // Unknown job.
    assert_eq!(
        rejected(op.request("DeleteJob", json!({"jobId": "nope"})).await),
        "ResourceNotFoundException"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_and_cancel_are_refused_while_deleting_and_the_eleventh_deletion_exceeds_the_limit()
{
    // One-execution batches, slowed by a large job, keep deletions in progress long enough to observe.
    let gateway =
        Gateway::start_with(|c| c.replace("deletion_batch_size = 500", "deletion_batch_size = 1"));
    let mut op = gateway.operator().await;
    let things: Vec<String> = (0..3000).map(|i| format!("t{i}")).collect();
    let things: Vec<&str> = things.iter().map(String::as_str).collect();
    for i in 0..11 {
        op.request("CreateJob", create_job(&format!("big{i}"), None, &things))
            .await
            .unwrap();
    }
    for i in 0..10 {
        op.request(
            "DeleteJob",
            json!({"jobId": format!("big{i}"), "force": true}),
        )
        .await
        .unwrap();
    }
    assert_eq!(op.job_status("big0").await, "DELETION_IN_PROGRESS");
    let (code, message) = op
        .request("DeleteJob", json!({"jobId": "big10", "force": true}))
        .await
        .unwrap_err();
    assert_eq!(code, "LimitExceededException", "{message}");
    assert_eq!(op.job_status("big10").await, "IN_PROGRESS");

    let again = op
        .request("DeleteJob", json!({"jobId": "big0", "force": true}))
        .await;
    assert_eq!(rejected(again), "InvalidStateTransitionException");
    let cancel = op
        .request("CancelJob", json!({"jobId": "big0", "force": true}))
        .await;
    assert_eq!(rejected(cancel), "InvalidStateTransitionException");
    let recreate = op
        .request("CreateJob", create_job("big0", None, &["t1"]))
        .await;
    assert_eq!(rejected(recreate), "ResourceAlreadyExistsException");
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_see_only_their_namespaces() {
    let acme_hash = hash_password("acme-pw");
    let globex_hash = hash_password("globex-pw");
    let gateway = Gateway::start_with(|c| {
        format!(
            "{c}\n[[auth.operators]]\nusername = \"acme\"\npassword_hash = \"{acme_hash}\"\nnamespaces = [\"acme\"]\n\n\
             [[auth.operators]]\nusername = \"globex\"\npassword_hash = \"{globex_hash}\"\nnamespaces = [\"globex\"]\nstandard_jobs = true\n"
        )
    });
    let mut acme = Operator::connect(gateway.addr, "acme", "acme-pw")
        .await
        .unwrap();
    let mut globex = Operator::connect(gateway.addr, "globex", "globex-pw")
        .await
        .unwrap();
    assert!(Operator::connect(gateway.addr, "acme", "wrong")
        .await
        .is_err());

    acme.request("CreateJob", create_job("secret", Some("acme"), &["t1"]))
        .await
        .unwrap();
    globex
        .request("CreateJob", create_job("public", None, &["t1"]))
        .await
        .unwrap();

    // globex cannot see, describe, delete or list acme's job; the answer is the one for a missing job.
    assert_eq!(
        rejected(
            globex
                .request("DescribeJob", json!({"jobId": "secret"}))
                .await
        ),
        "ResourceNotFoundException"
    );
    assert_eq!(
        rejected(
            globex
                .request("DeleteJob", json!({"jobId": "secret", "force": true}))
                .await
        ),
        "ResourceNotFoundException"
    );
    let listed = globex.request("ListJobs", json!({})).await.unwrap();
    let ids: Vec<&str> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["jobId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["public"]);
    assert_eq!(
        rejected(
            globex
                .request("ListJobs", json!({"namespaceId": "acme"}))
                .await
        ),
        "ResourceNotFoundException"
    );
    // acme has no standard jobs.
    assert_eq!(
        rejected(
            acme.request("DescribeJob", json!({"jobId": "public"}))
                .await
        ),
        "ResourceNotFoundException"
    );
    // Naming the wrong namespace hides the job even from its owner.
    let wrong = acme
        .request(
            "DeleteJob",
            json!({"jobId": "secret", "force": true, "namespaceId": "globex"}),
        )
        .await;
    assert_eq!(rejected(wrong), "ResourceNotFoundException");
    acme.request(
        "DeleteJob",
        json!({"jobId": "secret", "force": true, "namespaceId": "acme"}),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_over_the_rate_are_throttled() {
    let gateway = Gateway::start_with(|c| {
        c.replace("requests_per_second = 50", "requests_per_second = 1")
            .replace("request_burst = 100", "request_burst = 3")
    });
    let mut op = gateway.operator().await;
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(match op.request("ListJobs", json!({})).await {
            Ok(_) => "ok".to_owned(),
            Err((code, _)) => code,
        });
    }
    assert_eq!(&codes[..3], ["ok", "ok", "ok"], "{codes:?}");
    assert!(
        codes.iter().any(|c| c == "ThrottlingException"),
        "{codes:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_flushes_the_store_and_leaves_it_consistent() {
    let mut gateway = Gateway::start();
    let mut op = gateway.operator().await;
    op.request("CreateJob", create_job("j1", None, &["t1"]))
        .await
        .unwrap();
    assert_eq!(gateway.terminate(), Some(0));
    assert!(gateway.log().contains("store flushed"), "{}", gateway.log());
    let check = gateway.cli(&["store", "check"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("1 jobs, 1 executions"));
}
