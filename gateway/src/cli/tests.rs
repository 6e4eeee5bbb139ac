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
fn the_plugin_host_is_a_hidden_command() {
    use clap::CommandFactory;
    let help = Cli::command().render_long_help().to_string();
    assert!(
        help.contains("plugin") && !help.contains("plugin-host"),
        "{help}"
    );
    match parse(&["plugin-host", "--library", "/x/libp.so"])
        .unwrap()
        .command
    {
        Command::PluginHost(args) => assert_eq!(args.library, std::path::Path::new("/x/libp.so")),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        clap_exit_code(parse(&["plugin-host"]).unwrap_err().kind()),
        252
    );
}

#[test]
fn the_cli_offers_every_operation_the_control_api_serves() {
    let mut offered: Vec<&str> = operations::OPERATIONS.iter().map(|op| op.name).collect();
    let mut served = crate::control::OPERATIONS.to_vec();
    offered.sort_unstable();
    served.sort_unstable();
    assert_eq!(offered, served);
}

#[test]
fn plugin_reset_names_its_route_and_takes_the_connection_flags() {
    let cli = parse(&[
        "plugin",
        "reset",
        "pumps",
        "--endpoint",
        "mqtt://127.0.0.1:1884",
    ])
    .unwrap();
    match cli.command {
        Command::Plugin(admin::PluginCommand::Reset(args)) => {
            assert_eq!(args.route, "pumps");
            assert_eq!(
                args.connection.endpoint.as_deref(),
                Some("mqtt://127.0.0.1:1884")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        clap_exit_code(parse(&["plugin", "reset"]).unwrap_err().kind()),
        252
    );
    for flag in ["--route-name", "--route"] {
        assert_eq!(
            request_of(&["reset-plugin", flag, "pumps"]).unwrap(),
            json!({"routeName": "pumps"})
        );
    }
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

/// The client against a stand-in gateway: a minimal MQTT 3.1.1 server, written out byte by byte, that
/// plays broker and control handler at once. (The embedded rumqttd cannot stand in: its router refuses
/// every subscription to a filter starting with `$` other than `$share/...`.)
mod round_trip {
    use std::io::Write;
    use std::net::{SocketAddr, TcpStream};
    use std::sync::OnceLock;

    use sprig_test_support::raw;

    use super::*;

    const USER: &str = "ops";
    const PASSWORD: &str = "pw";

    /// The fake gateway's address; it is started once, for all tests.
    fn gateway() -> SocketAddr {
        static ADDR: OnceLock<SocketAddr> = OnceLock::new();
        *ADDR.get_or_init(|| {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    std::thread::spawn(move || {
                        let _ = serve(stream);
                    });
                }
            });
            addr
        })
    }

    fn write_packet(stream: &mut TcpStream, header: u8, body: &[u8]) -> std::io::Result<()> {
        stream.write_all(&raw::packet(header, body))
    }

    fn publish(stream: &mut TcpStream, topic: &str, payload: &Value) -> std::io::Result<()> {
        stream.write_all(&raw::publish(topic, 0, 0, payload.to_string().as_bytes()))
    }

    /// One client: CONNACK (refused unless `ops`/`pw`), SUBACK (refused for DescribeJobExecution),
    /// PUBACK, then the reply: `locked` is rejected, `silent` gets none, anything else is accepted
    /// after a decoy reply carrying another clientToken, which the CLI must ignore.
    fn serve(mut stream: TcpStream) -> std::io::Result<()> {
        loop {
            let (header, body) = raw::try_read_packet(&mut stream)?;
            match header >> 4 {
                1 => {
                    let mut at = 0;
                    raw::take_str(&body, &mut at); // "MQTT"
                    let flags = body[at + 1];
                    at += 4;
                    raw::take_str(&body, &mut at); // client id
                    assert_eq!(flags & 0x04, 0, "no will expected");
                    let user = (flags & 0x80 != 0).then(|| raw::take_str(&body, &mut at).to_vec());
                    let password =
                        (flags & 0x40 != 0).then(|| raw::take_str(&body, &mut at).to_vec());
                    if password.as_deref() == Some(b"hang-up") {
                        return Ok(()); // as rumqttd's own authentication does
                    }
                    let ok = user.as_deref() == Some(USER.as_bytes())
                        && password.as_deref() == Some(PASSWORD.as_bytes());
                    write_packet(&mut stream, 0x20, &[0, if ok { 0 } else { 4 }])?;
                    if !ok {
                        return Ok(());
                    }
                }
                8 => {
                    let mut suback = body[..2].to_vec();
                    let mut at = 2;
                    while at < body.len() {
                        let filter =
                            String::from_utf8_lossy(raw::take_str(&body, &mut at)).into_owned();
                        at += 1;
                        let refused = filter.contains("/DescribeJobExecution/");
                        suback.push(if refused { 0x80 } else { 0x01 });
                    }
                    write_packet(&mut stream, 0x90, &suback)?;
                }
                3 => {
                    let mut at = 0;
                    let topic = String::from_utf8_lossy(raw::take_str(&body, &mut at)).into_owned();
                    let packet_id = &body[at..at + 2];
                    write_packet(&mut stream, 0x40, packet_id)?;
                    let request: Value = serde_json::from_slice(&body[at + 2..]).unwrap();
                    reply(&mut stream, &topic, request)?;
                }
                12 => write_packet(&mut stream, 0xd0, &[])?,
                14 => return Ok(()),
                _ => {}
            }
        }
    }

    fn reply(stream: &mut TcpStream, topic: &str, request: Value) -> std::io::Result<()> {
        let token = request["clientToken"].clone();
        let job_id = request["jobId"].as_str().unwrap_or_default().to_owned();
        match job_id.as_str() {
            "silent" => Ok(()),
            "locked" => {
                let body = json!({
                    "code": "InvalidStateTransitionException",
                    "message": "job locked is IN_PROGRESS",
                    "clientToken": token,
                });
                publish(stream, &format!("{topic}/rejected"), &body)
            }
            _ => {
                let accepted = format!("{topic}/accepted");
                let decoy = json!({"jobId": "decoy", "clientToken": "not-yours"});
                publish(stream, &accepted, &decoy)?;
                let mut body = request;
                body["jobArn"] = json!(format!("arn:sprig:job/{job_id}"));
                body["description"] = json!(topic.rsplit('/').next().unwrap());
                publish(stream, &accepted, &body)
            }
        }
    }

    fn call(args: &[&str], password: &str) -> Result<Option<String>, Failure> {
        let endpoint = format!("mqtt://{}", gateway());
        let mut all = args.to_vec();
        all.extend([
            "--endpoint",
            &endpoint,
            "--username",
            USER,
            "--password",
            password,
        ]);
        all.extend(["--timeout-secs", "2"]);
        operate(&invocation(&all))
    }

    #[test]
    fn an_accepted_reply_is_printed_without_its_client_token() {
        let text = call(
            &["create-job", "--job-id", "j1", "--targets", "pump-1"],
            PASSWORD,
        )
        .unwrap()
        .unwrap();
        let response: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(response["jobArn"], "arn:sprig:job/j1");
        assert_eq!(response["jobId"], "j1", "the decoy reply was taken");
        assert_eq!(response["targets"], json!(["pump-1"]));
        assert_eq!(
            response["description"], "CreateJob",
            "the wire name is the topic's last segment"
        );
        assert!(response.get("clientToken").is_none(), "{text}");
        assert!(text.starts_with("{\n    \"jobArn\""), "{text}");
    }

    #[test]
    fn delete_job_prints_nothing() {
        let output = call(&["delete-job", "--job-id", "j2", "--force"], PASSWORD).unwrap();
        assert_eq!(output, None);
    }

    #[test]
    fn a_rejected_reply_is_a_service_error() {
        let failure = call(&["delete-job", "--job-id", "locked"], PASSWORD).unwrap_err();
        assert_eq!(failure.exit_code(), 254);
        assert_eq!(
            failure.to_string(),
            "\nAn error occurred (InvalidStateTransitionException) when calling the DeleteJob operation: job locked is IN_PROGRESS"
        );
    }

    #[test]
    fn refused_credentials_exit_255_with_one_line() {
        let failure = call(&["describe-job", "--job-id", "j1"], "wrong").unwrap_err();
        assert_eq!(failure.exit_code(), 255);
        assert_eq!(failure.to_string(), "the gateway refused the credentials");
    }

    #[test]
    fn a_gateway_hanging_up_at_connect_suggests_the_credentials() {
        let failure = call(&["describe-job", "--job-id", "j1"], "hang-up").unwrap_err();
        assert_eq!(failure.exit_code(), 255);
        let text = failure.to_string();
        assert!(
            text.ends_with(
                "closed the connection before accepting it (are the credentials right?)"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_refused_subscription_exits_255() {
        let args = [
            "describe-job-execution",
            "--job-id",
            "j1",
            "--thing-name",
            "t",
        ];
        let failure = call(&args, PASSWORD).unwrap_err();
        assert_eq!(failure.exit_code(), 255);
        assert!(
            failure
                .to_string()
                .starts_with("the gateway refused the subscription"),
            "{failure}"
        );
    }

    #[test]
    fn no_reply_times_out() {
        let started = Instant::now();
        let failure = call(&["describe-job", "--job-id", "silent"], PASSWORD).unwrap_err();
        assert_eq!(failure.to_string(), "no reply from the gateway within 2 s");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
