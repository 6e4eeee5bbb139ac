//! `sprig status` and `sprig describe-gateway` against the real gateway: the screen (a snapshot, with what
//! varies from run to run redacted), the JSON it is made from, the gauges fed from the same counts, and
//! who may ask. And `sprig delete-job --wait`: it returns only once the job is gone.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sprig_tests::{create_job, hash_password, metric, Gateway};

/// DescribeJob requests the gateway has answered.
fn describe_jobs(gateway: &Gateway) -> f64 {
    let operation = [("operation", "DescribeJob")];
    metric(&gateway.scrape(), "sprig_requests_total", &operation)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the CLI, which must exit 0, and returns its stdout.
fn ok(gateway: &Gateway, args: &[&str]) -> String {
    let out = gateway.cli(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "sprig {args:?}\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A gateway with jobs in two namespaces: `std-1` (no namespace, IN_PROGRESS, 2 executions QUEUED),
/// `fw-1` (acme, CANCELED, 3 executions CANCELED) and `fw-2` (acme, IN_PROGRESS, 1 execution QUEUED).
fn gateway_with_jobs(edit: impl FnOnce(String) -> String) -> Gateway {
    let gateway = Gateway::start_with(edit);
    let create = |job_id: &str, namespace: Option<&str>, things: &[&str]| {
        let mut args = vec!["create-job", "--job-id", job_id, "--document", "{}"];
        if let Some(ns) = namespace {
            args.extend(["--namespace-id", ns]);
        }
        args.push("--targets");
        args.extend(things);
        ok(&gateway, &args);
    };
    create("std-1", None, &["t1", "t2"]);
    create("fw-1", Some("acme"), &["t1", "t2", "t3"]);
    create("fw-2", Some("acme"), &["t4"]);
    ok(&gateway, &["cancel-job", "--job-id", "fw-1"]);
    gateway
}

#[test]
fn status_shows_the_gateway_on_one_screen() {
    let gateway = gateway_with_jobs(|c| c);
    let screen = ok(&gateway, &["status"]);
    insta::with_settings!({
        description => "sprig status: uptime, store size and version redacted",
        filters => vec![
            (r"\(sprig \d+\.\d+\.\d+[^)]*\)", "(sprig [VERSION])"),
            (r"up \d+[dhms]( \d+[hms])?", "up [UPTIME]"),
            (r"\d+(\.\d)? (B|KiB|MiB|GiB) on disk", "[SIZE] on disk"),
        ],
    }, {
        insta::assert_snapshot!(screen);
    });
}

#[test]
fn describe_gateway_counts_what_the_gauges_count() {
    let mut gateway = gateway_with_jobs(|c| c);
    let described: Value = serde_json::from_str(&ok(&gateway, &["describe-gateway"])).unwrap();
    assert_eq!(
        described["jobs"],
        json!({"IN_PROGRESS": 2, "CANCELED": 1, "COMPLETED": 0, "DELETION_IN_PROGRESS": 0})
    );
    assert_eq!(described["executions"]["QUEUED"], 3);
    assert_eq!(described["executions"]["CANCELED"], 3);
    assert_eq!(described["jobsByNamespace"][1]["namespaceId"], "acme");
    assert_eq!(described["jobsByNamespace"][1]["jobs"]["CANCELED"], 1);
    assert_eq!(described["store"]["jobs"], 3);
    assert_eq!(described["store"]["executions"], 6);
    assert!(described["store"]["sizeBytes"].as_u64().unwrap() > 0);
    assert_eq!(described["connections"]["operator"], 1, "the CLI itself");
    assert!(described.get("uplink").is_none(), "no [uplink] configured");

    let scrape = gateway.scrape();
    let gauge = |name: &str, labels: &[(&str, &str)]| metric(&scrape, name, labels);
    let acme = |status| [("status", status), ("namespace", "acme")];
    assert_eq!(gauge("sprig_jobs", &acme("IN_PROGRESS")), 1.0);
    assert_eq!(gauge("sprig_jobs", &acme("CANCELED")), 1.0);
    assert_eq!(
        gauge(
            "sprig_jobs",
            &[("status", "IN_PROGRESS"), ("namespace", "")]
        ),
        1.0
    );
    assert_eq!(gauge("sprig_job_executions", &[("status", "QUEUED")]), 3.0);
    assert_eq!(
        gauge("sprig_job_executions", &[("status", "CANCELED")]),
        3.0
    );
    assert_eq!(gauge("sprig_job_executions", &[("status", "FAILED")]), 0.0);

    // Counted again at start-up: the same counts after a restart.
    assert_eq!(gateway.terminate(), Some(0));
    gateway.spawn();
    let again: Value = serde_json::from_str(&ok(&gateway, &["describe-gateway"])).unwrap();
    for counts in ["jobs", "jobsByNamespace", "executions", "recoveries"] {
        assert_eq!(again[counts], described[counts], "{counts}");
    }
    assert_eq!(again["store"]["executions"], 6);
}

#[test]
fn only_an_operator_granted_everything_may_describe_the_gateway() {
    let acme_hash = hash_password("acme-pw");
    let gateway = Gateway::start_with(|c| {
        format!(
            "{c}\n[[auth.operators]]\nusername = \"acme\"\npassword_hash = \"{acme_hash}\"\nnamespaces = [\"acme\"]\n"
        )
    });
    let out = gateway.cli(&["status", "--username", "acme", "--password", "acme-pw"]);
    assert_eq!(out.status.code(), Some(254), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(
            "An error occurred (UnauthorizedException) when calling the DescribeGateway operation: operator acme may not call DescribeGateway"
        ),
        "{}",
        text(&out.stderr)
    );
}

/// `sprig delete-job --force --wait` on a job of thousands of executions, deleted a few at a time: the
/// CLI prints nothing (stdout and stderr are no terminal) and exits 0 only once DescribeJob says the job
/// does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_job_wait_returns_once_the_job_is_gone() {
    let gateway = Gateway::start_with(|c| {
        sprig_tests::with_setting(&c, "deletion_batch_size = 500", "deletion_batch_size = 20")
    });
    let mut op = gateway.operator().await;
    let things: Vec<String> = (0..3000).map(|i| format!("thing-{i:04}")).collect();
    let things: Vec<&str> = things.iter().map(String::as_str).collect();
    op.request("CreateJob", create_job("big", Some("acme"), &things))
        .await
        .unwrap();

    let started = Instant::now();
    let out = gateway.cli(&[
        "delete-job",
        "--job-id",
        "big",
        "--force",
        "--namespace-id",
        "acme",
        "--wait",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "", "nothing on stdout");
    assert_eq!(text(&out.stderr), "", "no bar without a terminal");
    assert_eq!(op.job_status("big").await, "ResourceNotFoundException");
    let log = gateway.wait_for_log("job deleted", Duration::from_secs(5));
    assert!(log.contains("executions=3000"), "{log}");
    eprintln!("deleted 3000 executions in {:?}", started.elapsed());

    // A refused DeleteJob is refused as without --wait.
    op.request("CreateJob", create_job("small", None, &["t1"]))
        .await
        .unwrap();
    let refused = gateway.cli(&["delete-job", "--job-id", "small", "--wait"]);
    assert_eq!(refused.status.code(), Some(254));
    assert!(
        text(&refused.stderr)
            .contains("(InvalidStateTransitionException) when calling the DeleteJob operation"),
        "{}",
        text(&refused.stderr)
    );
    assert_eq!(op.job_status("small").await, "IN_PROGRESS");
}

/// The gateway goes away while `--wait` waits: the CLI says so and how to follow the deletion, and exits
/// 255; the deletion goes on after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_job_wait_says_when_the_gateway_goes_away() {
    let mut gateway = Gateway::start_with(|c| {
        sprig_tests::with_setting(&c, "deletion_batch_size = 500", "deletion_batch_size = 1")
    });
    let mut op = gateway.operator().await;
    let things: Vec<String> = (0..10_000).map(|i| format!("thing-{i:05}")).collect();
    let things: Vec<&str> = things.iter().map(String::as_str).collect();
    op.request("CreateJob", create_job("big", None, &things))
        .await
        .unwrap();
    drop(op);

    let waiting = Command::new(sprig_tests::sprig_bin())
        .args(["delete-job", "--job-id", "big", "--force", "--wait"])
        .arg("--config")
        .arg(&gateway.config_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the CLI asks DescribeJob again (it asked once before DeleteJob), it is waiting.
    let deadline = Instant::now() + Duration::from_secs(20);
    while describe_jobs(&gateway) < 2.0 {
        assert!(
            Instant::now() < deadline,
            "the CLI never polled:\n{}",
            gateway.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    gateway.kill9();
    let out: Output = waiting.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("while waiting for job big to be deleted"),
        "{}",
        text(&out.stderr)
    );

    // The deletion goes on after the restart (tests/tests/delete_job.rs follows one to its end).
    gateway.spawn();
    let mut op = gateway.operator().await;
    let status = op.job_status("big").await;
    assert!(
        ["DELETION_IN_PROGRESS", "ResourceNotFoundException"].contains(&status.as_str()),
        "{status}"
    );
}
