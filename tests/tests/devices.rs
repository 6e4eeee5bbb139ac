//! The AWS IoT Jobs device API end to end: real MQTT 3.1.1 and 5 devices against the real gateway, jobs
//! created by an operator, the device side as AWS IoT Device SDKs and Greengrass speak it.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use sprig_tests::device::{Device, Login, Protocol};
use sprig_tests::{create_job, hash_password, Gateway, Operator};

const GG: &str = "aws-gg-deployment";

/// The operator's view of `thing`'s execution of `job_id`: its status.
async fn execution_status(op: &mut Operator, job_id: &str, thing: &str) -> String {
    let reply = op
        .request(
            "DescribeJobExecution",
            json!({"jobId": job_id, "thingName": thing}),
        )
        .await
        .unwrap();
    reply["execution"]["status"].as_str().unwrap().to_owned()
}

fn job_ids(summaries: &Value) -> Vec<&str> {
    summaries
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["jobId"].as_str().unwrap())
        .collect()
}

/// Asserts a rejection with `code`, an echoed clientToken and a timestamp; returns the body.
fn rejected(reply: (bool, Value), code: &str) -> Value {
    let (accepted, body) = reply;
    assert!(!accepted, "expected {code}, got accepted {body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(body["timestamp"].is_i64(), "{body}");
    body
}

fn accepted(reply: (bool, Value)) -> Value {
    let (accepted, body) = reply;
    assert!(accepted, "expected accepted, got {body}");
    assert!(body["timestamp"].is_i64(), "{body}");
    assert!(body["clientToken"].is_string(), "{body}");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_runs_to_completion_over_mqtt_3_1_1() {
    let gateway = Gateway::start();
    let mut op = gateway.operator().await;
    let mut device = Device::connect(gateway.addr, "pump-1", Protocol::V311).await;
    op.request("CreateJob", create_job("fw-1", None, &["pump-1"]))
        .await
        .unwrap();

    let pending = accepted(
        device
            .request("get", json!({"clientToken": "list-1"}))
            .await,
    );
    assert_eq!(pending["clientToken"], "list-1");
    assert_eq!(job_ids(&pending["queuedJobs"]), ["fw-1"]);
    assert_eq!(job_ids(&pending["inProgressJobs"]), Vec::<&str>::new());
    let queued = &pending["queuedJobs"][0];
    assert_eq!(queued["executionNumber"], 1);
    // Epoch seconds, as AWS's device API has them (not milliseconds).
    assert!(
        queued["queuedAt"].as_i64().unwrap() < 10_000_000_000,
        "{queued}"
    );

    let started = accepted(
        device
            .request(
                "start-next",
                json!({"statusDetails": {"step": "download"}, "stepTimeoutInMinutes": 10}),
            )
            .await,
    );
    let execution = &started["execution"];
    assert_eq!(execution["jobId"], "fw-1");
    assert_eq!(execution["thingName"], "pump-1");
    assert_eq!(execution["status"], "IN_PROGRESS");
    assert_eq!(execution["statusDetails"], json!({"step": "download"}));
    assert_eq!(execution["jobDocument"], json!({"action": "update"}));
    assert!(
        execution["approximateSecondsBeforeTimedOut"]
            .as_i64()
            .unwrap()
            > 500
    );
    let version = execution["versionNumber"].as_i64().unwrap();

    let progress = accepted(
        device
            .request(
                "fw-1/update",
                json!({
                    "status": "IN_PROGRESS",
                    "statusDetails": {"step": "install", "progress": "50"},
                    "expectedVersion": version,
                    "includeJobExecutionState": true,
                }),
            )
            .await,
    );
    assert_eq!(
        progress["executionState"],
        json!({
            "status": "IN_PROGRESS",
            "statusDetails": {"step": "install", "progress": "50"},
            "versionNumber": version + 1,
        })
    );
    assert!(progress.get("jobDocument").is_none(), "{progress}");

    let done = accepted(
        device
            .request(
                "fw-1/update",
                json!({"status": "SUCCEEDED", "includeJobDocument": true}),
            )
            .await,
    );
    assert!(done.get("executionState").is_none(), "{done}");
    assert_eq!(done["jobDocument"], json!({"action": "update"}));

    // One target, and its execution ended: the job is COMPLETED.
    assert_eq!(op.job_status("fw-1").await, "COMPLETED");
    assert_eq!(
        execution_status(&mut op, "fw-1", "pump-1").await,
        "SUCCEEDED"
    );
    let pending = accepted(device.request("get", json!({})).await);
    assert_eq!(pending["queuedJobs"], json!([]));
    assert_eq!(pending["inProgressJobs"], json!([]));
    // Nothing left: start-next answers without an `execution`.
    let next = accepted(device.request("start-next", json!({})).await);
    assert!(next.get("execution").is_none(), "{next}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_greengrass_deployment_runs_on_the_namespaced_topics_over_mqtt_5() {
    let gateway = Gateway::start();
    let mut op = gateway.operator().await;
    let mut core = Device::connect(gateway.addr, "core-1", Protocol::V5).await;
    op.request("CreateJob", create_job("gg-1", Some(GG), &["core-1"]))
        .await
        .unwrap();

    // The plain topics do not see the namespaced job.
    let plain = accepted(core.request("get", json!({})).await);
    assert_eq!(plain["queuedJobs"], json!([]));
    assert_eq!(plain["inProgressJobs"], json!([]));
    let plain_next = accepted(core.request("$next/get", json!({})).await);
    assert!(plain_next.get("execution").is_none(), "{plain_next}");
    rejected(
        core.request("gg-1/update", json!({"status": "IN_PROGRESS"}))
            .await,
        "ResourceNotFound",
    );

    // What Greengrass nucleus does: describe $next in its namespace, then update by job id.
    let next_topic = format!("$next/namespace-{GG}/get");
    let update_topic = format!("gg-1/namespace-{GG}/update");
    let next = accepted(core.request(&next_topic, json!({})).await);
    let execution = &next["execution"];
    assert_eq!(execution["jobId"], "gg-1");
    assert_eq!(execution["status"], "QUEUED");
    assert_eq!(execution["jobDocument"], json!({"action": "update"}));
    let version = execution["versionNumber"].as_i64().unwrap();
    // includeJobDocument=false leaves the document out.
    let lean = accepted(
        core.request(
            &format!("gg-1/namespace-{GG}/get"),
            json!({"includeJobDocument": false}),
        )
        .await,
    );
    assert!(lean["execution"].get("jobDocument").is_none(), "{lean}");

    let started = accepted(
        core.request(
            &update_topic,
            json!({"status": "IN_PROGRESS", "expectedVersion": version, "includeJobExecutionState": true}),
        )
        .await,
    );
    assert_eq!(started["executionState"]["status"], "IN_PROGRESS");
    accepted(
        core.request(
            &update_topic,
            json!({
                "status": "SUCCEEDED",
                "statusDetails": {"detailed-deployment-status": "SUCCESSFUL"},
                "expectedVersion": version + 1,
            }),
        )
        .await,
    );

    assert_eq!(op.job_status("gg-1").await, "COMPLETED");
    assert_eq!(
        execution_status(&mut op, "gg-1", "core-1").await,
        "SUCCEEDED"
    );
    let after = accepted(core.request(&next_topic, json!({})).await);
    assert!(after.get("execution").is_none(), "{after}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rejections_carry_aws_codes_and_the_client_token() {
    let gateway = Gateway::start();
    let mut op = gateway.operator().await;
    let mut device = Device::connect(gateway.addr, "rej-1", Protocol::V311).await;
    op.request("CreateJob", create_job("r-1", None, &["rej-1"]))
        .await
        .unwrap();
    op.request("CreateJob", create_job("r-2", None, &["rej-1"]))
        .await
        .unwrap();
    let started = accepted(
        device
            .request("r-1/update", json!({"status": "IN_PROGRESS"}))
            .await,
    );
    assert!(started.get("executionState").is_none());

    let stale = rejected(
        device
            .request(
                "r-1/update",
                json!({"status": "SUCCEEDED", "expectedVersion": 99, "clientToken": "stale"}),
            )
            .await,
        "VersionMismatch",
    );
    assert_eq!(stale["clientToken"], "stale");
    assert_eq!(stale["executionState"]["status"], "IN_PROGRESS");
    assert_eq!(stale["executionState"]["versionNumber"], 2);

    accepted(
        device
            .request("r-1/update", json!({"status": "SUCCEEDED"}))
            .await,
    );
    let terminal = rejected(
        device
            .request(
                "r-1/update",
                json!({"status": "IN_PROGRESS", "clientToken": "again"}),
            )
            .await,
        "InvalidStateTransition",
    );
    assert_eq!(terminal["clientToken"], "again");
    assert_eq!(terminal["executionState"]["status"], "SUCCEEDED");

    let described = rejected(
        device.request("r-1/get", json!({"clientToken": "d"})).await,
        "TerminalStateReached",
    );
    assert_eq!(described["clientToken"], "d");

    let missing = rejected(
        device
            .request("nope/get", json!({"clientToken": "m"}))
            .await,
        "ResourceNotFound",
    );
    assert_eq!(missing["clientToken"], "m");

    let queued = rejected(
        device
            .request(
                "r-2/update",
                json!({"status": "QUEUED", "clientToken": "q"}),
            )
            .await,
        "InvalidRequest",
    );
    assert_eq!(queued["clientToken"], "q");
    assert!(
        queued["message"].as_str().unwrap().contains("status"),
        "{queued}"
    );

    let wrong_type = rejected(
        device
            .request(
                "r-2/update",
                json!({"status": "IN_PROGRESS", "expectedVersion": "1", "clientToken": "w"}),
            )
            .await,
        "InvalidRequest",
    );
    assert_eq!(wrong_type["clientToken"], "w");
    assert!(
        wrong_type["message"]
            .as_str()
            .unwrap()
            .starts_with("expectedVersion"),
        "{wrong_type}"
    );

    let topic = rejected(
        device
            .request("frobnicate", json!({"clientToken": "f"}))
            .await,
        "InvalidTopic",
    );
    assert_eq!(topic["clientToken"], "f");

    let bad_id = rejected(
        device
            .request("bad.id/get", json!({"clientToken": "b"}))
            .await,
        "InvalidRequest",
    );
    assert_eq!(bad_id["clientToken"], "b");

    // Not JSON: there is no clientToken to echo.
    let json = rejected(
        device.request_raw("get", "{not json", None).await,
        "InvalidJson",
    );
    assert!(json.get("clientToken").is_none(), "{json}");
    rejected(
        device.request_raw("get", "[1, 2]", None).await,
        "InvalidJson",
    );

    // Unknown fields are ignored, an empty body is `{}`; r-2 is still pending and untouched.
    let lenient = accepted(
        device
            .request(
                "get",
                json!({"sdk": "aws-iot-device-sdk-python-v2", "extra": [1]}),
            )
            .await,
    );
    assert_eq!(job_ids(&lenient["queuedJobs"]), ["r-2"]);
    let (ok, empty) = device.request_raw("r-2/get", "", None).await;
    assert!(ok, "{empty}");
    assert_eq!(empty["execution"]["status"], "QUEUED");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_things_requests_are_answered_in_the_order_sent() {
    let gateway = Gateway::start();
    let mut op = gateway.operator().await;
    let mut device = Device::connect(gateway.addr, "order-1", Protocol::V311).await;
    op.request("CreateJob", create_job("o-1", None, &["order-1"]))
        .await
        .unwrap();
    let replies: Vec<String> = ["o-1/update", "o-1/get"]
        .iter()
        .flat_map(|s| ["accepted", "rejected"].map(|k| device.jobs_topic(&format!("{s}/{k}"))))
        .collect();
    let filters: Vec<&str> = replies.iter().map(String::as_str).collect();
    assert_eq!(device.subscribe(&filters).await, [1, 1, 1, 1]);

    // Pipelined, without waiting: each get must see the update published just before it.
    for i in 0..10 {
        let update = json!({"status": "IN_PROGRESS", "statusDetails": {"step": i.to_string()}});
        device
            .publish(&device.jobs_topic("o-1/update"), update.to_string())
            .await;
        device
            .publish(
                &device.jobs_topic("o-1/get"),
                json!({"clientToken": format!("get-{i}")}).to_string(),
            )
            .await;
    }
    for i in 0..10 {
        let reply = device
            .expect_message(
                &device.jobs_topic("o-1/get/accepted"),
                Duration::from_secs(10),
            )
            .await;
        assert_eq!(reply["clientToken"], format!("get-{i}"));
        assert_eq!(
            reply["execution"]["statusDetails"]["step"],
            i.to_string(),
            "{reply}"
        );
    }
    // Every update was accepted too: each request has exactly one reply, so 20 acceptances leave no
    // rejection to come.
    for _ in 0..10 {
        device
            .expect_message(
                &device.jobs_topic("o-1/update/accepted"),
                Duration::from_secs(10),
            )
            .await;
    }
    device
        .expect_no_message(&device.jobs_topic("+/+/rejected"), Duration::ZERO)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_can_neither_see_nor_drive_another_things_jobs() {
    let gateway = Gateway::start();
    let mut op = gateway.operator().await;
    let mut a = Device::connect(gateway.addr, "iso-a", Protocol::V311).await;
    let mut b = Device::connect(gateway.addr, "iso-b", Protocol::V311).await;
    op.request("CreateJob", create_job("iso-1", None, &["iso-b"]))
        .await
        .unwrap();

    let codes = a
        .subscribe(&[
            "$aws/things/iso-b/jobs/notify",
            "$aws/things/iso-a/jobs/notify",
        ])
        .await;
    assert_eq!(codes, [0x80, 1]);

    let b_accepted = b.jobs_topic("start-next/accepted");
    assert_eq!(b.subscribe(&[&b_accepted]).await, [1]);
    a.publish("$aws/things/iso-b/jobs/start-next", "{}").await;
    // A is still connected and served (a denied PUBLISH is dropped, not a disconnect). Its answer also
    // shows that the gateway has read the PUBLISH before it, from the same socket.
    let own = accepted(a.request("get", json!({})).await);
    assert_eq!(own["queuedJobs"], json!([]));
    // iso-b's requests are answered in order: had A's start-next been taken as iso-b's, its reply would
    // have reached B before the answer to B's own request.
    let theirs = accepted(b.request("get", json!({})).await);
    assert_eq!(job_ids(&theirs["queuedJobs"]), ["iso-1"]);
    b.expect_no_message(&b_accepted, Duration::ZERO).await;
    assert_eq!(execution_status(&mut op, "iso-1", "iso-b").await, "QUEUED");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_with_a_password_must_use_it_and_its_thing_name() {
    let hash = hash_password("s3cret!");
    let gateway = Gateway::start_with(|config| {
        config.replace(
            "anonymous_devices_on_loopback = true",
            "anonymous_devices_on_loopback = false",
        ) + &format!("\n[[auth.devices]]\nthing_name = \"secure-1\"\npassword_hash = \"{hash}\"\n")
    });
    let login = |client_id: &str, password: Option<&str>, protocol| Login {
        credentials: password.map(|p| ("secure-1".to_owned(), p.to_owned())),
        ..Login::anonymous(client_id, protocol)
    };

    for protocol in [Protocol::V311, Protocol::V5] {
        let mut device =
            Device::connect_with(gateway.addr, login("secure-1", Some("s3cret!"), protocol))
                .await
                .expect("the right password connects");
        accepted(device.request("get", json!({})).await);
        device.disconnect().await;

        for (client_id, password) in [
            ("secure-1", Some("wrong")),
            ("secure-2", Some("s3cret!")),
            ("secure-1", None),
        ] {
            let refused =
                Device::connect_with(gateway.addr, login(client_id, password, protocol)).await;
            assert!(
                refused.is_err(),
                "{client_id} with {password:?} over {protocol:?} was let in"
            );
        }
    }
}

/// Checking a password costs argon2's 19 MiB for a moment; a fleet reconnecting at once must not make
/// that 19 MiB per device (a gateway with 1 GB would run out at ~50 devices).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_logging_in_at_once_checks_a_few_passwords_at_a_time() {
    const FLEET: usize = 24;
    const ARGON2_MIB: u64 = 19;
    let hash = hash_password("fleet-secret");
    let gateway = Gateway::start_with(|config| {
        let accounts: String = (0..FLEET)
            .map(|i| {
                format!(
                    "\n[[auth.devices]]\nthing_name = \"fleet-{i}\"\npassword_hash = \"{hash}\"\n"
                )
            })
            .collect();
        config.replace(
            "anonymous_devices_on_loopback = true",
            "anonymous_devices_on_loopback = false",
        ) + &accounts
    });
    let before = gateway.peak_rss_kb();
    let mut logins = tokio::task::JoinSet::new();
    for i in 0..FLEET {
        let thing = format!("fleet-{i}");
        let login =
            Login::anonymous(&thing, Protocol::V311).with_credentials(&thing, "fleet-secret");
        logins.spawn(Device::connect_with(gateway.addr, login));
    }
    let devices = logins.join_all().await;
    let connected = devices.iter().filter(|d| d.is_ok()).count();
    assert_eq!(connected, FLEET, "every device with its password connects");
    let grown_mib = gateway.peak_rss_kb().saturating_sub(before) / 1024;
    // At most 4 checks at once (fewer with fewer cores): well under 8 hashes' worth at the peak.
    assert!(
        grown_mib < 8 * ARGON2_MIB,
        "{FLEET} simultaneous logins raised the peak RSS by {grown_mib} MiB"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_see_device_presence_events() {
    let gateway = Gateway::start();
    let (username, password) = gateway.local_credential();
    let mut options = MqttOptions::new("presence-watcher", "127.0.0.1", gateway.addr.port());
    options.set_credentials(username, password);
    let (watcher, mut events) = AsyncClient::new(options, 16);
    watcher
        .subscribe("$aws/events/presence/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    // The subscription is in place once its SUBACK arrives: only then may the device connect.
    let suback = next_packet(&mut events, |p| matches!(p, Packet::SubAck(_))).await;
    let Packet::SubAck(suback) = suback else {
        unreachable!()
    };
    assert_eq!(
        suback.return_codes,
        [rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );

    let device = Device::connect(gateway.addr, "pres-1", Protocol::V5).await;
    let connected = presence_event(&mut events, "connected/pres-1").await;
    assert_eq!(connected["clientId"], "pres-1");
    assert_eq!(connected["eventType"], "connected");
    assert_eq!(connected["principalIdentifier"], "pres-1");

    device.disconnect().await;
    let disconnected = presence_event(&mut events, "disconnected/pres-1").await;
    assert_eq!(disconnected["clientId"], "pres-1");
    assert_eq!(disconnected["eventType"], "disconnected");
    assert_eq!(
        disconnected["disconnectReason"],
        "CLIENT_INITIATED_DISCONNECT"
    );
}

/// The next packet for which `wanted` holds, within 10 s.
async fn next_packet(events: &mut EventLoop, wanted: impl Fn(&Packet) -> bool) -> Packet {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(packet) = events.poll().await.expect("operator connection") {
                if wanted(&packet) {
                    return packet;
                }
            }
        }
    })
    .await
    .expect("the packet arrives within 10 s")
}

/// The JSON body of the next event on `$aws/events/presence/{suffix}`.
async fn presence_event(events: &mut EventLoop, suffix: &str) -> Value {
    let topic = format!("$aws/events/presence/{suffix}");
    let Packet::Publish(publish) = next_packet(
        events,
        |p| matches!(p, Packet::Publish(p) if p.topic == topic),
    )
    .await
    else {
        unreachable!()
    };
    serde_json::from_slice(&publish.payload).unwrap()
}
