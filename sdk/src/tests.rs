use std::collections::BTreeMap;
use std::ffi::c_void;

use serde_json::json;

use super::abi::{self, Bytes, Descriptor};
use super::*;

fn context() -> RecoveryContext {
    RecoveryContext::example()
}

#[test]
fn render_replaces_known_placeholders_and_keeps_other_braces() {
    let mut ctx = context();
    assert_eq!(
        ctx.render(
            "{\"jobId\":\"{jobId}\",\"t\":\"{thing}\",\"s\":\"{status}\",\"n\":\"{namespace}\"}"
        ),
        r#"{"jobId":"fw-42","t":"sensor-7","s":"IN_PROGRESS","n":""}"#
    );
    ctx.namespace_id = Some("aws-gg-deployment".into());
    assert_eq!(
        ctx.render("{namespace}/{unknown}{"),
        "aws-gg-deployment/{unknown}{"
    );
    assert_eq!(ctx.render(""), "");
    assert_eq!(ctx.render("{thing}{thing}"), "sensor-7sensor-7");
}

#[test]
fn context_json_is_camel_case_and_tolerant() {
    let value = serde_json::to_value(context()).unwrap();
    assert_eq!(value["thingName"], "sensor-7");
    assert_eq!(value["reason"], "forceDeleted");
    assert_eq!(value["statusDetails"]["step"], "flashing");
    // Minimal input, unknown fields and unknown reasons are accepted.
    let ctx: RecoveryContext = serde_json::from_value(json!({
        "thingName": "t", "jobId": "j", "executionStatus": "QUEUED", "reason": "somethingNew",
        "futureField": 3
    }))
    .unwrap();
    assert_eq!(ctx.reason, Reason::Other);
    assert_eq!(ctx.attempt, 1);
    assert!(!ctx.acknowledged);
    assert_eq!(ctx.acknowledgement, None);
    // The acknowledgement's payload, as the gateway sends it.
    let ctx: RecoveryContext = serde_json::from_value(json!({
        "thingName": "t", "jobId": "j", "executionStatus": "IN_PROGRESS", "reason": "forceDeleted",
        "attempt": 2, "acknowledged": true,
        "acknowledgement": {"status": "FAILED", "statusDetails": {"reason": "disk full"}}
    }))
    .unwrap();
    assert_eq!(ctx.negative_acknowledgement().as_deref(), Some("disk full"));
}

#[test]
fn negative_acknowledgements_follow_the_convention() {
    let mut ctx = context();
    let negative = |ctx: &mut RecoveryContext, ack: serde_json::Value| {
        ctx.acknowledgement = Some(ack);
        ctx.negative_acknowledgement()
    };
    assert_eq!(
        negative(&mut ctx, json!({"status": "FAILED", "reason": "no space"})).as_deref(),
        Some("no space")
    );
    assert_eq!(
        negative(&mut ctx, json!({"status": "rejected"})).as_deref(),
        Some("no reason given")
    );
    assert_eq!(
        negative(&mut ctx, json!({"status": "FAILED", "reason": 3})).as_deref(),
        Some("no reason given")
    );
    for positive in [
        json!({}),
        json!({"status": "SUCCEEDED", "reason": "fine"}),
        json!("FAILED"),
        json!(["FAILED"]),
        json!(null),
    ] {
        assert_eq!(negative(&mut ctx, positive.clone()), None, "{positive}");
    }
    ctx.acknowledgement = None;
    assert_eq!(ctx.negative_acknowledgement(), None);
}

#[test]
fn recovery_json_shape() {
    let recovery = Recovery {
        actions: vec![
            Action::Publish {
                topic: "a/b".into(),
                payload: "{}".into(),
                qos: 0,
            },
            Action::SetStatusDetails {
                status_details: BTreeMap::from([("state".into(), "reset".into())]),
            },
        ],
        outcome: Outcome::RetryLater { after_ms: 5000 },
    };
    let value = serde_json::to_value(&recovery).unwrap();
    assert_eq!(
        value,
        json!({
            "actions": [
                {"type": "publish", "topic": "a/b", "payload": "{}", "qos": 0},
                {"type": "setStatusDetails", "statusDetails": {"state": "reset"}}
            ],
            "outcome": {"type": "retryLater", "afterMs": 5000}
        })
    );
    let back: Recovery = serde_json::from_value(value).unwrap();
    assert_eq!(back, recovery);
    let failed: Outcome = serde_json::from_value(json!({"type": "failed", "reason": "x"})).unwrap();
    assert_eq!(failed, Outcome::Failed { reason: "x".into() });
}

#[test]
fn validate_refuses_wildcards_and_qos_2() {
    let publish = |topic: &str, qos| Recovery {
        actions: vec![Action::Publish {
            topic: topic.into(),
            payload: String::new(),
            qos,
        }],
        outcome: Outcome::Recovered,
    };
    assert!(publish("a/b", 1).validate().is_ok());
    assert!(publish("a/+", 1).validate().is_err());
    assert!(publish("a/#", 0).validate().is_err());
    assert!(publish("", 0).validate().is_err());
    assert!(publish("a", 2).validate().is_err());
}

/// A handler driven through the real shims, in-process.
struct Echo {
    prefix: String,
}

impl RecoveryHandler for Echo {
    type Config = serde_json::Value;

    fn new(config: serde_json::Value) -> Result<Self, Error> {
        match config["prefix"].as_str() {
            Some("boom") => panic!("boom in new"),
            Some(prefix) => Ok(Echo {
                prefix: prefix.to_owned(),
            }),
            None => Err("no prefix".into()),
        }
    }

    fn recover(&mut self, ctx: &RecoveryContext) -> Result<Recovery, Error> {
        match ctx.thing_name.as_str() {
            "panic" => panic!("handler panicked for {}", ctx.thing_name),
            "error" => Err("handler error".into()),
            _ => Ok(Recovery {
                actions: vec![Action::Publish {
                    topic: format!("{}/{}", self.prefix, ctx.thing_name),
                    payload: String::new(),
                    qos: 1,
                }],
                outcome: Outcome::Recovered,
            }),
        }
    }
}

static ECHO: Descriptor = Descriptor::new::<Echo>("echo", "9.9.9");

/// Takes a plugin-owned buffer: its text, then frees it.
fn take(bytes: Bytes) -> String {
    let text = String::from_utf8(unsafe { bytes.as_slice() }.to_vec()).unwrap();
    unsafe { (ECHO.free.unwrap())(bytes) };
    text
}

fn create(config: &str) -> (i32, *mut c_void, String) {
    let mut instance = std::ptr::null_mut();
    let mut message = Bytes::EMPTY;
    let status = unsafe {
        (ECHO.create.unwrap())(
            Bytes::from_slice(config.as_bytes()),
            &mut instance,
            &mut message,
        )
    };
    let text = if status == abi::STATUS_OK {
        assert!(message.ptr.is_null());
        String::new()
    } else {
        take(message)
    };
    (status, instance, text)
}

fn recover(instance: *mut c_void, thing: &str) -> (i32, String) {
    let mut ctx = context();
    ctx.thing_name = thing.into();
    let json = serde_json::to_vec(&ctx).unwrap();
    let mut out = Bytes::EMPTY;
    let status = unsafe { (ECHO.recover.unwrap())(instance, Bytes::from_slice(&json), &mut out) };
    (status, take(out))
}

#[test]
fn descriptor_carries_versions_and_names() {
    assert_eq!(ECHO.abi_version, ABI_VERSION);
    assert_eq!(ECHO.size as usize, std::mem::size_of::<Descriptor>());
    assert!(ECHO.size > abi::DESCRIPTOR_V1_SIZE, "set_host is appended");
    assert!(ECHO.set_host.is_some());
    assert_eq!(unsafe { ECHO.name.as_slice() }, b"echo");
    assert_eq!(unsafe { ECHO.version.as_slice() }, b"9.9.9");
    assert_eq!(
        unsafe { ECHO.sdk_version.as_slice() },
        env!("CARGO_PKG_VERSION").as_bytes()
    );
}

#[test]
fn shims_answer_errors_and_catch_panics() {
    let (status, _, message) = create(r#"{"nope": 1}"#);
    assert_eq!((status, message.as_str()), (abi::STATUS_ERROR, "no prefix"));
    let (status, _, message) = create("not json");
    assert_eq!(status, abi::STATUS_ERROR);
    assert!(message.starts_with("invalid config"), "{message}");
    let (status, _, message) = create(r#"{"prefix": "boom"}"#);
    assert_eq!(
        (status, message.as_str()),
        (abi::STATUS_PANIC, "boom in new")
    );

    let (status, instance, _) = create(r#"{"prefix": "p"}"#);
    assert_eq!(status, abi::STATUS_OK);
    assert!(!instance.is_null());
    let (status, answer) = recover(instance, "dev");
    assert_eq!(status, abi::STATUS_OK);
    let answer: Recovery = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        answer.actions,
        vec![Action::Publish {
            topic: "p/dev".into(),
            payload: String::new(),
            qos: 1
        }]
    );
    assert_eq!(
        recover(instance, "error"),
        (abi::STATUS_ERROR, "handler error".into())
    );
    assert_eq!(
        recover(instance, "panic"),
        (abi::STATUS_PANIC, "handler panicked for panic".into())
    );
    // Still usable after a caught panic.
    assert_eq!(recover(instance, "dev").0, abi::STATUS_OK);
    // An unreadable context is the handler's error, not a panic.
    let mut out = Bytes::EMPTY;
    let status = unsafe { (ECHO.recover.unwrap())(instance, Bytes::from_slice(b"\xff"), &mut out) };
    assert_eq!(status, abi::STATUS_ERROR);
    assert!(take(out).contains("unreadable context"));
    unsafe { (ECHO.destroy.unwrap())(instance) };
}

/// A handler that takes no config.
struct Plain;

impl RecoveryHandler for Plain {
    type Config = ();

    fn new((): ()) -> Result<Self, Error> {
        Ok(Plain)
    }

    fn recover(&mut self, _: &RecoveryContext) -> Result<Recovery, Error> {
        Ok(Recovery {
            actions: Vec::new(),
            outcome: Outcome::Recovered,
        })
    }
}

static PLAIN: Descriptor = Descriptor::new::<Plain>("plain", "1.0.0");

#[test]
fn a_handler_without_config_takes_a_route_without_a_config_table() {
    let create = |config: &str| {
        let mut instance = std::ptr::null_mut();
        let mut message = Bytes::EMPTY;
        let status = unsafe {
            (PLAIN.create.unwrap())(
                Bytes::from_slice(config.as_bytes()),
                &mut instance,
                &mut message,
            )
        };
        if status == abi::STATUS_OK {
            unsafe { (PLAIN.destroy.unwrap())(instance) };
            return (status, String::new());
        }
        let text = String::from_utf8(unsafe { message.as_slice() }.to_vec()).unwrap();
        unsafe { (PLAIN.free.unwrap())(message) };
        (status, text)
    };
    assert_eq!(create("{}").0, abi::STATUS_OK);
    assert_eq!(create("null").0, abi::STATUS_OK);
    let (status, message) = create(r#"{"mode": "x"}"#);
    assert_eq!(status, abi::STATUS_ERROR);
    assert!(message.starts_with("invalid config"), "{message}");
}

#[test]
fn validate_for_applies_every_rule_of_the_gateway() {
    let answer = |actions: Vec<Action>| Recovery {
        actions,
        outcome: Outcome::Recovered,
    };
    let publish = |topic: &str| Action::Publish {
        topic: topic.into(),
        payload: String::new(),
        qos: 1,
    };
    let details = |pairs: &[(&str, &str)]| Action::SetStatusDetails {
        status_details: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let ok = answer(vec![
        publish("$aws/things/pump-1/rollback"),
        details(&[("state", "reset")]),
    ]);
    assert_eq!(ok.validate_for("pump-1"), Ok(()));
    let elsewhere = answer(vec![publish("$aws/things/pump-2/rollback")]);
    assert!(elsewhere.validate().is_ok(), "a topic name as such");
    let why = elsewhere.validate_for("pump-1").unwrap_err();
    assert!(why.contains("outside the device's own topics"), "{why}");
    for bad in [
        &[("", "x")][..],
        &[("bad key!", "x")],
        &[("k", "")],
        &[("k", "a\nb")],
    ] {
        let why = answer(vec![details(bad)]).validate().unwrap_err();
        assert!(why.contains("statusDetails"), "{bad:?}: {why}");
    }
    let eleven: Vec<(String, String)> = (0..11).map(|i| (format!("k{i}"), "v".into())).collect();
    let eleven: Vec<(&str, &str)> = eleven
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert!(answer(vec![details(&eleven)]).validate().is_err());
}

/// The lines the test host's log callback received.
static LOGGED: std::sync::Mutex<Vec<(u32, String)>> = std::sync::Mutex::new(Vec::new());

unsafe extern "C" fn record_line(_host: *const abi::HostApi, level: u32, message: Bytes) {
    let text = String::from_utf8_lossy(message.as_slice()).into_owned();
    LOGGED.lock().unwrap().push((level, text));
}

static TEST_HOST: abi::HostApi = abi::HostApi {
    size: std::mem::size_of::<abi::HostApi>(),
    log: Some(record_line),
};

/// A host whose `size` predates the log field: the sdk must not read it.
static SHORT_HOST: abi::HostApi = abi::HostApi {
    size: std::mem::offset_of!(abi::HostApi, log),
    log: Some(record_line),
};

#[test]
fn log_lines_reach_the_host_callback_with_their_level_bounded() {
    // The only test in this binary that sets the host (the pointer is one per library).
    unsafe { (ECHO.set_host.unwrap())(&TEST_HOST) };
    crate::info!("recovering {} attempt {}", "sensor-7", 2);
    crate::warn!("plain text");
    crate::error!("e");
    crate::debug!("d");
    crate::trace!("t");
    crate::log!(log::Level::Info, "{}", "é".repeat(3000));
    let logged = std::mem::take(&mut *LOGGED.lock().unwrap());
    let levels: Vec<u32> = logged.iter().map(|(level, _)| *level).collect();
    assert_eq!(
        levels,
        [
            abi::LOG_INFO,
            abi::LOG_WARN,
            abi::LOG_ERROR,
            abi::LOG_DEBUG,
            abi::LOG_TRACE,
            abi::LOG_INFO
        ]
    );
    assert_eq!(logged[0].1, "recovering sensor-7 attempt 2");
    assert_eq!(logged[1].1, "plain text");
    // Whole: bounding a line is the host's (it copies at most MAX_LOG_MESSAGE bytes).
    assert_eq!(logged[5].1, "é".repeat(3000));

    // A host too old for the field is never called: the line goes to stderr instead.
    unsafe { abi::set_host(&SHORT_HOST) };
    crate::info!("to stderr");
    unsafe { abi::set_host(std::ptr::null()) };
    crate::info!("to stderr too");
    assert!(LOGGED.lock().unwrap().is_empty());
}

/// A handler with a typed, nested config, to read the config errors a route's operator gets.
struct Typed;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Only deserialized: the errors are what these tests read.
struct TypedConfig {
    topic: String,
    #[serde(default)]
    retry: Retry,
}

#[derive(Debug, Default, serde::Deserialize)]
#[allow(dead_code)]
struct Retry {
    delays_ms: Vec<u64>,
}

impl RecoveryHandler for Typed {
    type Config = TypedConfig;

    fn new(_: TypedConfig) -> Result<Self, Error> {
        Ok(Typed)
    }

    fn recover(&mut self, _: &RecoveryContext) -> Result<Recovery, Error> {
        Err("not called".into())
    }
}

static TYPED: Descriptor = Descriptor::new::<Typed>("typed", "1.0.0");

/// `create`'s message for `config`, or `None` if the config was accepted.
fn typed_config_error(config: &str) -> Option<String> {
    let mut instance = std::ptr::null_mut();
    let mut message = Bytes::EMPTY;
    let status = unsafe {
        (TYPED.create.unwrap())(
            Bytes::from_slice(config.as_bytes()),
            &mut instance,
            &mut message,
        )
    };
    if status == abi::STATUS_OK {
        unsafe { (TYPED.destroy.unwrap())(instance) };
        return None;
    }
    assert_eq!(status, abi::STATUS_ERROR);
    let text = String::from_utf8(unsafe { message.as_slice() }.to_vec()).unwrap();
    unsafe { (TYPED.free.unwrap())(message) };
    Some(text)
}

#[test]
fn config_errors_name_the_key_not_a_json_position() {
    assert_eq!(typed_config_error(r#"{"topic": "t"}"#), None);
    assert_eq!(
        typed_config_error(r#"{"topic": 5}"#).unwrap(),
        "invalid config: topic: invalid type: integer `5`, expected a string"
    );
    assert_eq!(
        typed_config_error(r#"{"topic": "t", "retry": {"delays_ms": [1, "x"]}}"#).unwrap(),
        "invalid config: retry.delays_ms[1]: invalid type: string \"x\", expected u64"
    );
    // Errors about the whole table have no key to name.
    assert_eq!(
        typed_config_error("{}").unwrap(),
        "invalid config: missing field `topic`"
    );
    assert_eq!(
        typed_config_error(r#"{"topic": "t", "topik": 1}"#).unwrap(),
        "invalid config: topik: unknown field `topik`, expected `topic` or `retry`"
    );
}
