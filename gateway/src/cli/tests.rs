//! Tests of the whole command line, short of a real gateway: parsing, exit codes, request building and
//! the failure modes of the connection.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("sprig").chain(args.iter().copied()))
}

fn invocation(args: &[&str]) -> Invocation {
    match parse(args).unwrap().command {
        Command::Operation(invocation) => *invocation,
        other => panic!("not an operation: {other:?}"),
    }
}

fn exit_code(args: &[&str]) -> u8 {
    run(std::iter::once("sprig").chain(args.iter().copied()))
}

fn request_of(args: &[&str]) -> Result<Value, Failure> {
    request(&invocation(args)).map(Value::Object)
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn help_and_version_exit_0_and_other_clap_errors_252() {
    for args in [
        &["--help"][..],
        &["delete-job", "--help"],
        &["run", "--help"],
    ] {
        let kind = parse(args).unwrap_err().kind();
        assert_eq!(clap_exit_code(kind), 0, "{args:?}");
    }
    assert_eq!(clap_exit_code(parse(&["--version"]).unwrap_err().kind()), 0);
    for args in [
        &["delete-job", "--bogus"][..],
        &["no-such-command"],
        &["list-jobs", "--max-results", "many"],
        &["delete-job", "--generate-cli-skeleton", "sideways"],
        &[],
    ] {
        let kind = parse(args).unwrap_err().kind();
        assert_eq!(clap_exit_code(kind), 252, "{args:?}");
    }
    assert_eq!(exit_code(&["delete-job", "--bogus"]), 252);
}

#[test]
fn every_operation_is_a_subcommand_with_its_flags() {
    use clap::CommandFactory;
    let cli = Cli::command();
    for op in operations::OPERATIONS {
        let sub = cli
            .find_subcommand(op.command)
            .unwrap_or_else(|| panic!("{} missing", op.command));
        for param in op.params {
            let flag = param.flag();
            assert!(
                sub.get_arguments()
                    .any(|a| a.get_long() == Some(flag.as_str())),
                "{} --{flag}",
                op.command
            );
        }
        for common in [
            "cli-input-json",
            "generate-cli-skeleton",
            "endpoint",
            "username",
        ] {
            assert!(sub.get_arguments().any(|a| a.get_long() == Some(common)));
        }
    }
    cli.debug_assert();
}

#[test]
fn flags_become_the_boto3_request() {
    assert_eq!(
        request_of(&[
            "delete-job",
            "--job-id",
            "j1",
            "--force",
            "--namespace-id",
            "ns"
        ])
        .unwrap(),
        json!({"jobId": "j1", "force": true, "namespaceId": "ns"})
    );
    assert_eq!(
        request_of(&["delete-job", "--job-id", "j1", "--force", "--no-force"]).unwrap(),
        json!({"jobId": "j1", "force": false})
    );
    assert_eq!(
        request_of(&["delete-job", "--job-id", "j1", "--no-force", "--force"]).unwrap(),
        json!({"jobId": "j1", "force": true})
    );
    assert_eq!(
        request_of(&["delete-job", "--job-id", "j1"]).unwrap(),
        json!({"jobId": "j1"})
    );
    assert_eq!(
        request_of(&["list-jobs", "--max-results", "5", "--status", "IN_PROGRESS"]).unwrap(),
        json!({"maxResults": 5, "status": "IN_PROGRESS"})
    );
}

#[test]
fn create_job_takes_target_lists_and_document_files() {
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("doc.json");
    std::fs::write(&doc, r#"{"operation":"reboot"}"#).unwrap();
    let doc_arg = format!("file://{}", doc.display());
    let request = request_of(&[
        "create-job",
        "--job-id",
        "j1",
        "--targets",
        "pump-1",
        "arn:aws:iot:eu-west-1:123456789012:thing/pump-2",
        "--document",
        &doc_arg,
        "--target-selection",
        "SNAPSHOT",
    ])
    .unwrap();
    assert_eq!(
        request,
        json!({
            "jobId": "j1",
            "targets": ["pump-1", "arn:aws:iot:eu-west-1:123456789012:thing/pump-2"],
            "document": "{\"operation\":\"reboot\"}",
            "targetSelection": "SNAPSHOT",
        })
    );
}

#[test]
fn flags_override_cli_input_json_inline_and_from_a_file() {
    let inline = r#"{"jobId": "from-json", "force": true, "namespaceId": "ns"}"#;
    assert_eq!(
        request_of(&[
            "delete-job",
            "--cli-input-json",
            inline,
            "--job-id",
            "from-flag"
        ])
        .unwrap(),
        json!({"jobId": "from-flag", "force": true, "namespaceId": "ns"})
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input.json");
    std::fs::write(&path, r#"{"jobId": "from-file", "force": true}"#).unwrap();
    let file_arg = format!("file://{}", path.display());
    assert_eq!(
        request_of(&["delete-job", "--cli-input-json", &file_arg, "--no-force"]).unwrap(),
        json!({"jobId": "from-file", "force": false})
    );
}

#[test]
fn unknown_cli_input_json_keys_and_missing_required_parameters_exit_252() {
    let failure = request_of(&["delete-job", "--cli-input-json", r#"{"x": 1}"#]).unwrap_err();
    assert_eq!(failure.exit_code(), 252);
    assert_eq!(
        failure.to_string(),
        "Parameter validation failed:\nUnknown parameter in input: \"x\", must be one of: jobId, force, namespaceId"
    );
    let failure = request_of(&["delete-job", "--force"]).unwrap_err();
    assert_eq!(
        failure.to_string(),
        "sprig: error: the following arguments are required: --job-id"
    );
    // Neither case gets as far as connecting.
    assert_eq!(
        exit_code(&["delete-job", "--endpoint", "mqtt://127.0.0.1:9"]),
        252
    );
    assert_eq!(
        exit_code(&[
            "delete-job",
            "--job-id",
            "j",
            "--cli-input-json",
            r#"{"x":1}"#
        ]),
        252
    );
}

#[test]
fn skeletons_print_without_connecting() {
    let unreachable = ["--endpoint", "mqtt://127.0.0.1:9"];
    let input = invocation(&[
        "delete-job",
        "--generate-cli-skeleton",
        unreachable[0],
        unreachable[1],
    ]);
    assert_eq!(input.skeleton, Some(SkeletonKind::Input));
    assert_eq!(
        operate(&input).unwrap().unwrap(),
        "{\n    \"jobId\": \"\",\n    \"force\": true,\n    \"namespaceId\": \"\"\n}"
    );
    let output = invocation(&[
        "delete-job",
        "--job-id",
        "j",
        "--generate-cli-skeleton",
        "output",
    ]);
    assert_eq!(operate(&output).unwrap().unwrap(), "{}");
    let output = invocation(&[
        "create-job",
        "--generate-cli-skeleton",
        "output",
        "--job-id",
        "j",
        "--targets",
        "t",
    ]);
    let text = operate(&output).unwrap().unwrap();
    assert!(text.starts_with("{\n    \"jobArn\": \"\""), "{text}");
    // `output`, as in the AWS CLI, validates the inputs first.
    let output = invocation(&["delete-job", "--generate-cli-skeleton", "output"]);
    assert_eq!(operate(&output).unwrap_err().exit_code(), 252);
}

#[test]
fn service_errors_print_as_the_aws_cli_does() {
    let failure = Failure::Service {
        operation: "DeleteJob",
        code: "InvalidStateTransitionException".into(),
        message: "job j1 is IN_PROGRESS; pass --force".into(),
    };
    assert_eq!(failure.exit_code(), 254);
    assert_eq!(
        failure.to_string(),
        "\nAn error occurred (InvalidStateTransitionException) when calling the DeleteJob operation: job j1 is IN_PROGRESS; pass --force"
    );
}

fn operate_with_deadline(args: &[&str]) -> (Failure, Duration) {
    let started = Instant::now();
    let failure = operate(&invocation(args)).unwrap_err();
    (failure, started.elapsed())
}

#[test]
fn an_unreachable_endpoint_exits_255_quickly_with_one_line() {
    let endpoint = format!("mqtt://127.0.0.1:{}", free_port());
    let args = [
        "describe-job",
        "--job-id",
        "j1",
        "--endpoint",
        &endpoint,
        "--username",
        "u",
        "--password",
        "p",
    ];
    let (failure, elapsed) = operate_with_deadline(&args);
    assert_eq!(failure.exit_code(), 255);
    assert_eq!(
        failure.to_string(),
        format!("Could not connect to the endpoint {endpoint}: connection refused")
    );
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(exit_code(&args), 255);
}

#[test]
fn a_silent_gateway_times_out_with_exit_255() {
    // The kernel completes the TCP handshake for a listener nobody accepts on: a gateway that never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("mqtt://{}", listener.local_addr().unwrap());
    let args = [
        "delete-job",
        "--job-id",
        "j1",
        "--endpoint",
        &endpoint,
        "--username",
        "u",
        "--password",
        "p",
        "--timeout-secs",
        "1",
    ];
    let (failure, elapsed) = operate_with_deadline(&args);
    assert_eq!(failure.exit_code(), 255);
    assert_eq!(failure.to_string(), "no reply from the gateway within 1 s");
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
}
