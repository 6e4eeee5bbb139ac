//! The `aws iot delete-job`-shaped CLI against the real gateway: output, errors, exit codes.

use std::process::Output;

use serde_json::{json, Value};
use sprig_tests::{create_job, free_port, sprig_bin, Gateway};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json_out(out: &Output) -> Value {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

#[test]
fn the_readme_walkthrough_works() {
    let gateway = Gateway::start();
    let created = gateway.cli(&[
        "create-job",
        "--job-id",
        "fw-42",
        "--targets",
        "pump-1",
        "pump-2",
        "--document",
        r#"{"operation":"firmware-update"}"#,
        "--namespace-id",
        "acme",
    ]);
    let created = json_out(&created);
    assert_eq!(created["jobId"], "fw-42");
    assert!(created["jobArn"].as_str().unwrap().ends_with(":job/fw-42"));

    // Without --force an IN_PROGRESS job is not deleted: the AWS CLI's error line, exit 254.
    let refused = gateway.cli(&["delete-job", "--job-id", "fw-42", "--namespace-id", "acme"]);
    assert_eq!(refused.status.code(), Some(254), "{}", stderr(&refused));
    let line = stderr(&refused);
    assert!(
        line.contains("An error occurred (InvalidStateTransitionException) when calling the DeleteJob operation: "),
        "{line}"
    );
    assert!(stdout(&refused).is_empty());

    // With --force: no output, exit 0; the job then goes away.
    let deleted = gateway.cli(&[
        "delete-job",
        "--job-id",
        "fw-42",
        "--force",
        "--namespace-id",
        "acme",
    ]);
    assert_eq!(deleted.status.code(), Some(0), "{}", stderr(&deleted));
    assert!(
        stdout(&deleted).is_empty(),
        "DeleteJob prints nothing: {}",
        stdout(&deleted)
    );
    // Generous: on a loaded CI machine the background deletion may take a while.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let described = gateway.cli(&["describe-job", "--job-id", "fw-42"]);
        if described.status.code() == Some(254) {
            assert!(
                stderr(&described).contains("(ResourceNotFoundException)"),
                "{}",
                stderr(&described)
            );
            break;
        }
        assert_eq!(
            json_out(&described)["job"]["status"],
            "DELETION_IN_PROGRESS"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "fw-42 was never deleted"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn cli_input_json_is_merged_and_the_command_line_wins() {
    let gateway = Gateway::start();
    json_out(&gateway.cli(&[
        "create-job",
        "--job-id",
        "j1",
        "--targets",
        "t1",
        "--document",
        "{}",
    ]));
    json_out(&gateway.cli(&[
        "create-job",
        "--job-id",
        "j2",
        "--targets",
        "t1",
        "--document",
        "{}",
    ]));

    // The JSON says force=false; --force on the command line overrides it.
    let input = r#"{"jobId": "j1", "force": false}"#;
    let out = gateway.cli(&["delete-job", "--cli-input-json", input, "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // From a file, with the job id overridden on the command line: j2 is refused (no force), not j1.
    let file = gateway.dir.path().join("input.json");
    std::fs::write(&file, r#"{"jobId": "j1"}"#).unwrap();
    let out = gateway.cli(&[
        "delete-job",
        "--cli-input-json",
        &format!("file://{}", file.display()),
        "--job-id",
        "j2",
    ]);
    assert_eq!(out.status.code(), Some(254));
    assert!(
        stderr(&out).contains("InvalidStateTransitionException") && stderr(&out).contains("j2"),
        "{}",
        stderr(&out)
    );

    // A key that is not a parameter is a usage error.
    let out = gateway.cli(&[
        "delete-job",
        "--cli-input-json",
        r#"{"jobId": "j2", "bogus": 1}"#,
    ]);
    assert_eq!(out.status.code(), Some(252), "{}", stderr(&out));
    assert!(stderr(&out).contains("bogus"));
}

#[test]
fn skeletons_print_without_a_gateway() {
    let out = std::process::Command::new(sprig_bin())
        .args(["delete-job", "--generate-cli-skeleton"])
        .output()
        .unwrap();
    assert_eq!(
        json_out(&out),
        json!({"jobId": "", "force": true, "namespaceId": ""})
    );
    assert!(
        stdout(&out).contains("\n    \"jobId\": \"\""),
        "4-space indent like the AWS CLI: {}",
        stdout(&out)
    );
    let out = std::process::Command::new(sprig_bin())
        .args(["delete-job", "--generate-cli-skeleton", "input"])
        .output()
        .unwrap();
    assert_eq!(
        json_out(&out),
        json!({"jobId": "", "force": true, "namespaceId": ""})
    );
    let out = std::process::Command::new(sprig_bin())
        .args([
            "delete-job",
            "--job-id",
            "j1",
            "--generate-cli-skeleton",
            "output",
        ])
        .output()
        .unwrap();
    assert_eq!(json_out(&out), json!({}));
}

#[test]
fn usage_errors_exit_252_and_help_and_version_exit_0() {
    let sprig = || std::process::Command::new(sprig_bin());
    let missing = sprig()
        .args(["delete-job", "--endpoint", "mqtt://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(252));
    assert!(
        stderr(&missing).contains("--job-id"),
        "{}",
        stderr(&missing)
    );
    let unknown = sprig()
        .args(["delete-job", "--job-id", "j", "--frobnicate"])
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(252));
    for args in [&["--version"][..], &["--help"], &["delete-job", "--help"]] {
        let out = sprig().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(!stdout(&out).is_empty());
    }
}

#[test]
fn an_unreachable_gateway_is_one_line_and_exit_255() {
    let port = free_port();
    let out = std::process::Command::new(sprig_bin())
        .args([
            "delete-job",
            "--job-id",
            "j1",
            "--endpoint",
            &format!("mqtt://127.0.0.1:{port}"),
        ])
        .args(["--username", "u", "--password", "p"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
}

#[test]
fn every_sibling_command_talks_to_the_gateway() {
    let gateway = Gateway::start();
    json_out(&gateway.cli(&[
        "create-job",
        "--job-id",
        "j1",
        "--targets",
        "t1",
        "t2",
        "t3",
        "--document",
        "{}",
    ]));
    json_out(&gateway.cli(&[
        "create-job",
        "--job-id",
        "j2",
        "--targets",
        "t1",
        "--document",
        "{}",
        "--namespace-id",
        "ns",
    ]));

    let listed = json_out(&gateway.cli(&["list-jobs", "--max-results", "1"]));
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(listed["nextToken"], "j1");
    let listed = json_out(&gateway.cli(&["list-jobs", "--namespace-id", "ns"]));
    assert_eq!(listed["jobs"][0]["jobId"], "j2");

    let execution = json_out(&gateway.cli(&[
        "describe-job-execution",
        "--job-id",
        "j1",
        "--thing-name",
        "t2",
    ]));
    assert_eq!(execution["execution"]["status"], "QUEUED");
    assert!(execution["execution"]["thingArn"]
        .as_str()
        .unwrap()
        .ends_with(":thing/t2"));
    let executions = json_out(&gateway.cli(&[
        "list-job-executions-for-job",
        "--job-id",
        "j1",
        "--status",
        "QUEUED",
    ]));
    assert_eq!(
        executions["executionSummaries"].as_array().unwrap().len(),
        3
    );

    let canceled = json_out(&gateway.cli(&[
        "cancel-job",
        "--job-id",
        "j1",
        "--reason-code",
        "OBSOLETE",
        "--comment",
        "replaced",
    ]));
    assert_eq!(canceled["jobId"], "j1");
    let job = json_out(&gateway.cli(&["describe-job", "--job-id", "j1"]));
    assert_eq!(job["job"]["status"], "CANCELED");
    assert_eq!(job["job"]["reasonCode"], "OBSOLETE");
    assert_eq!(job["job"]["jobProcessDetails"]["numberOfCanceledThings"], 3);
    let executions = json_out(&gateway.cli(&[
        "list-job-executions-for-job",
        "--job-id",
        "j1",
        "--status",
        "QUEUED",
    ]));
    assert_eq!(
        executions["executionSummaries"].as_array().unwrap().len(),
        0
    );

    // Canceled is terminal: deletion without --force is accepted.
    let out = gateway.cli(&["delete-job", "--job-id", "j1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// The CLI keeps its own copy of each response's shape (the AWS CLI's field order, for printing and for
/// `--generate-cli-skeleton output`). Every field the gateway answers with must be in it: a field added to
/// a response fails here until the CLI's shape has it too.
#[tokio::test(flavor = "multi_thread")]
async fn every_field_the_gateway_answers_is_in_the_clis_output_shape() {
    let reset = sprig_tests::plugin_path("sprig-plugin-reset");
    let gateway = Gateway::start_with(|config| {
        format!(
            "{config}\n[[recovery]]\nname = \"resets\"\nthings = \"reset-*\"\nplugin = {reset:?}\n\
             [recovery.config]\nstatus_details = {{ state = \"reset\" }}\n"
        )
    });
    let mut op = gateway.operator().await;
    let _device = sprig_tests::start_job(&gateway, &mut op, "reset-1", "running").await;
    let spare = create_job("spare", Some("ns"), &["t1", "t2"]);
    let before_the_deletion = [
        ("create-job", "CreateJob", spare),
        ("describe-job", "DescribeJob", json!({"jobId": "running"})),
        ("list-jobs", "ListJobs", json!({})),
        (
            "describe-job-execution",
            "DescribeJobExecution",
            json!({"jobId": "running", "thingName": "reset-1"}),
        ),
        (
            "list-job-executions-for-job",
            "ListJobExecutionsForJob",
            json!({"jobId": "running"}),
        ),
        (
            "list-job-executions-for-thing",
            "ListJobExecutionsForThing",
            json!({"thingName": "reset-1"}),
        ),
        (
            "get-job-document",
            "GetJobDocument",
            json!({"jobId": "running"}),
        ),
        (
            "cancel-job",
            "CancelJob",
            json!({"jobId": "spare", "reasonCode": "OBSOLETE", "comment": "replaced"}),
        ),
        ("describe-gateway", "DescribeGateway", json!({})),
    ];
    for (command, operation, body) in before_the_deletion {
        check_answer_against_shape(&gateway, &mut op, command, operation, body).await;
    }

    // The force-deletion leaves reset-1 a recovery, which its route's plugin runs at once.
    check_answer_against_shape(
        &gateway,
        &mut op,
        "delete-job",
        "DeleteJob",
        json!({"jobId": "running", "force": true}),
    )
    .await;
    let recovery = sprig_tests::wait_for_recovery(
        &mut op,
        "reset-1",
        std::time::Duration::from_secs(20),
        |r| r["status"] == "RECOVERED",
    )
    .await;
    let after_the_deletion = [
        ("list-recoveries", "ListRecoveries", json!({})),
        (
            "describe-recovery",
            "DescribeRecovery",
            json!({ "recoveryId": recovery["recoveryId"] }),
        ),
        ("list-plugins", "ListPlugins", json!({})),
        (
            "describe-plugin",
            "DescribePlugin",
            json!({"routeName": "resets"}),
        ),
        (
            "reset-plugin",
            "ResetPlugin",
            json!({"routeName": "resets"}),
        ),
    ];
    for (command, operation, body) in after_the_deletion {
        check_answer_against_shape(&gateway, &mut op, command, operation, body).await;
    }
}

/// Sends `body` to `operation` and checks every field of the answer against the output shape of the
/// CLI's `command` (its `--generate-cli-skeleton output`, given the same parameters).
async fn check_answer_against_shape(
    gateway: &Gateway,
    op: &mut sprig_tests::Operator,
    command: &str,
    operation: &str,
    body: Value,
) {
    let answer = op
        .request(operation, body.clone())
        .await
        .unwrap_or_else(|e| panic!("{operation}: {e:?}"));
    let input = body.to_string();
    let shape = json_out(&gateway.cli(&[
        command,
        "--cli-input-json",
        &input,
        "--generate-cli-skeleton",
        "output",
    ]));
    let mut unknown = Vec::new();
    fields_outside(&answer, &shape, command, &mut unknown);
    assert!(
        unknown.is_empty(),
        "{command}: fields the CLI's output shape lacks: {unknown:?}\nanswer: {answer:#}\nshape: {shape:#}"
    );
}

/// Collects the paths of the fields of `answer` that `skeleton` (a `--generate-cli-skeleton output`) does
/// not have. A skeleton shows a list by one element and a map by one `"KeyName"` entry.
fn fields_outside(answer: &Value, skeleton: &Value, path: &str, unknown: &mut Vec<String>) {
    match (answer, skeleton) {
        (Value::Object(fields), Value::Object(known)) => {
            let map_of = known.len() == 1 && known.contains_key("KeyName");
            for (name, value) in fields {
                let path = format!("{path}.{name}");
                match known
                    .get(name)
                    .or_else(|| map_of.then(|| &known["KeyName"]))
                {
                    Some(shape) => fields_outside(value, shape, &path, unknown),
                    None => unknown.push(path),
                }
            }
        }
        (Value::Array(items), Value::Array(shape)) => {
            for item in items {
                fields_outside(item, &shape[0], &format!("{path}[]"), unknown);
            }
        }
        _ => {}
    }
}
