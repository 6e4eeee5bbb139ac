//! Bad control requests get InvalidRequestException naming the field and the rule; nothing else changes.

use serde_json::json;
use sprig_tests::{create_job, Gateway};

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_refused_clearly_and_harm_nothing() {
    let mut gateway = Gateway::start();
    let mut op = gateway.operator().await;
    op.request("CreateJob", create_job("keep", None, &["t1", "t2"]))
        .await
        .unwrap();

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("DeleteJob", b"{\"jobId\": ".to_vec(), "not valid JSON"),
        ("DeleteJob", b"[\"keep\"]".to_vec(), "must be a JSON object"),
        (
            "DeleteJob",
            br#"{"jobId": "keep", "force": "yes"}"#.to_vec(),
            "force: invalid type",
        ),
        (
            "DeleteJob",
            br#"{"jobId": 42}"#.to_vec(),
            "jobId: invalid type",
        ),
        (
            "DeleteJob",
            br#"{"jobId": "keep", "forced": true}"#.to_vec(),
            "unknown field `forced`",
        ),
        (
            "DeleteJob",
            br#"{"force": true}"#.to_vec(),
            "missing field `jobId`",
        ),
        (
            "DeleteJob",
            br#"{"jobId": ""}"#.to_vec(),
            "jobId: must be 1-64 characters",
        ),
        (
            "DeleteJob",
            format!(r#"{{"jobId": "{}"}}"#, "a".repeat(65)).into_bytes(),
            "(65 characters)",
        ),
        (
            "DeleteJob",
            br#"{"jobId": "a/b"}"#.to_vec(),
            "jobId: must be 1-64 characters of [a-zA-Z0-9_-]",
        ),
        (
            "DeleteJob",
            br#"{"jobId": "a+b"}"#.to_vec(),
            "jobId: must be",
        ),
        (
            "DeleteJob",
            br#"{"jobId": "a#b"}"#.to_vec(),
            "jobId: must be",
        ),
        (
            "DeleteJob",
            br#"{"jobId": "a b"}"#.to_vec(),
            "jobId: must be",
        ),
        (
            "DeleteJob",
            br#"{"jobId": "keep", "namespaceId": "a/b"}"#.to_vec(),
            "namespaceId: must be",
        ),
        (
            "CreateJob",
            br#"{"jobId": "x", "targets": ["t/1"], "document": "{}"}"#.to_vec(),
            "targets[0]: must be",
        ),
        (
            "CreateJob",
            br#"{"jobId": "x", "targets": ["t1"], "document": "not json"}"#.to_vec(),
            "document: must be a JSON document",
        ),
        (
            "CreateJob",
            br#"{"jobId": "x", "targets": [], "document": "{}"}"#.to_vec(),
            "targets: must name at least one thing",
        ),
        (
            "ListJobs",
            br#"{"status": "DONE"}"#.to_vec(),
            "status: must be one of",
        ),
        (
            "ListJobs",
            br#"{"maxResults": 0}"#.to_vec(),
            "maxResults: must be between 1 and 250",
        ),
        (
            "Frobnicate",
            b"{}".to_vec(),
            "unknown operation `Frobnicate`",
        ),
    ];
    for (operation, payload, expected) in cases {
        let shown = String::from_utf8_lossy(&payload).into_owned();
        let (code, message) = op.request_raw(operation, payload, None).await.unwrap_err();
        assert_eq!(
            code, "InvalidRequestException",
            "{operation} {shown}: {message}"
        );
        assert!(
            message.contains(expected),
            "{operation} {shown}: expected `{expected}` in `{message}`"
        );
    }

    // A 1 MB body: refused by size, not by a dropped connection.
    let mut huge = json!({"jobId": "keep", "clientToken": "huge"});
    huge["padding"] = json!("x".repeat(1 << 20));
    let (code, message) = op
        .request_raw("DeleteJob", serde_json::to_vec(&huge).unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!(code, "InvalidRequestException");
    assert!(message.contains("over the limit"), "{message}");

    // The gateway still serves, and the job is untouched.
    let job = op
        .request("DescribeJob", json!({"jobId": "keep"}))
        .await
        .unwrap();
    assert_eq!(job["job"]["status"], "IN_PROGRESS");
    assert_eq!(job["job"]["jobProcessDetails"]["numberOfQueuedThings"], 2);
    drop(op);
    assert_eq!(gateway.terminate(), Some(0));
    let check = gateway.cli(&["store", "check"]);
    assert!(
        check.status.success()
            && String::from_utf8_lossy(&check.stdout).contains("1 jobs, 2 executions")
    );
}
