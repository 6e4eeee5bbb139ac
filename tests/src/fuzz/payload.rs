//! Request topics and JSON bodies: the Jobs device API (`$aws/things/{thing}/jobs/…`) and the control API
//! (`$sprig/control/{clientId}/{Operation}`, CONTRACT section 4). Each field is usually of the right type
//! with a plausible value (job ids, things and namespaces from small pools, so requests meet jobs that
//! exist), sometimes of the wrong type or at an extreme: huge and negative numbers, long strings, deep
//! nesting, lone surrogates, bytes that are not UTF-8. Sometimes the body is not JSON at all.

use super::{thing_name, Rng, JOB_IDS, NAMESPACES, PASSWORD_THING, THINGS};

/// A JSON text to be: the tree of a body, written out by [`Json::render`]. `Raw` is written as is, so a
/// body can hold what no JSON serializer writes.
#[derive(Debug, Clone)]
pub enum Json {
    Null,
    Bool(bool),
    /// A number's text, as written (`1e999`, `-0`, `18446744073709551616`).
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
    Raw(Vec<u8>),
}

impl Json {
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Json::Null => out.extend(b"null"),
            Json::Bool(b) => out.extend(if *b { &b"true"[..] } else { b"false" }),
            Json::Num(n) => out.extend(n.as_bytes()),
            Json::Str(s) => write_str(out, s),
            Json::Arr(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write(out);
                }
                out.push(b']');
            }
            Json::Obj(fields) => {
                out.push(b'{');
                for (i, (key, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_str(out, key);
                    out.push(b':');
                    value.write(out);
                }
                out.push(b'}');
            }
            Json::Raw(bytes) => out.extend(bytes),
        }
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend(b"\\\""),
            '\\' => out.extend(b"\\\\"),
            c if (c as u32) < 0x20 => out.extend(format!("\\u{:04x}", c as u32).as_bytes()),
            c => out.extend(c.to_string().as_bytes()),
        }
    }
    out.push(b'"');
}

fn s(text: impl Into<String>) -> Json {
    Json::Str(text.into())
}

fn num(n: impl ToString) -> Json {
    Json::Num(n.to_string())
}

/// A value of the wrong kind, or at an extreme, for any field.
pub fn odd(rng: &mut Rng) -> Json {
    match rng.below(16) {
        0 => Json::Null,
        1 => Json::Bool(rng.percent(50)),
        2 => num(*rng.pick(&[
            "1e999",
            "-1e999",
            "18446744073709551616",
            "-9223372036854775809",
            "9223372036854775807",
            "-0",
            "0.5",
            "1E2",
            "4294967296",
        ])),
        3 => Json::Num("9".repeat(rng.range(20, 5000))),
        4 => s(""),
        5 => s("x".repeat(rng.range(65, 20_000))),
        6 => Json::Arr(vec![]),
        7 => Json::Obj(vec![]),
        8 => {
            let depth = rng.range(2, 3000);
            deep(rng, depth)
        }
        // A lone surrogate, a NUL, control characters: valid JSON escapes, odd strings.
        9 => Json::Raw(
            rng.pick(&[&br#""\ud800""#[..], br#""\u0000""#, br#""\udfff\ud800x""#])
                .to_vec(),
        ),
        // Bytes that are not UTF-8 inside a string.
        10 => Json::Raw(
            [
                &b"\""[..],
                &rng.pick(&[
                    &[0xffu8][..],
                    &[0xc3],
                    &[0xed, 0xa0, 0x80],
                    &[0xf4, 0x90, 0x80, 0x80],
                ])[..],
                b"\"",
            ]
            .concat(),
        ),
        11 => s("ünïcödé ✓ \u{1F600}"),
        12 => Json::Raw(b"NaN".to_vec()),
        13 => s("$aws/things/+/#"),
        14 => num(rng.next_u64() as i64),
        _ => Json::Arr((0..rng.range(1, 50)).map(num).collect()),
    }
}

/// Arrays and objects nested `depth` deep (serde_json stops at 128).
fn deep(rng: &mut Rng, depth: usize) -> Json {
    let (open, close): (&[u8], &[u8]) = if rng.percent(50) {
        (b"[", b"]")
    } else {
        (b"{\"a\":", b"}")
    };
    let mut raw = open.repeat(depth);
    raw.extend(b"1");
    raw.extend(close.repeat(depth));
    Json::Raw(raw)
}

/// `good` most of the time, else an odd value.
fn field(rng: &mut Rng, good: impl FnOnce(&mut Rng) -> Json) -> Json {
    if rng.percent(88) {
        good(rng)
    } else {
        odd(rng)
    }
}

/// An object of `fields` (each present with its own chance), a `clientToken` often, an unknown field
/// sometimes, and once in a while a key twice.
fn object(rng: &mut Rng, fields: Vec<(&str, u32, Json)>) -> Json {
    let mut out: Vec<(String, Json)> = fields
        .into_iter()
        .filter(|(_, chance, _)| rng.percent(*chance))
        .map(|(k, _, v)| (k.to_owned(), v))
        .collect();
    if rng.percent(70) {
        out.push(("clientToken".into(), field(rng, client_token)));
    }
    if rng.percent(8) {
        out.push((
            rng.pick(&["sdkVersion", "forced", "", "jobId "])
                .to_string(),
            odd(rng),
        ));
    }
    if rng.percent(4) && !out.is_empty() {
        let twice = out[rng.below(out.len())].clone();
        out.push(twice);
    }
    if rng.percent(10) {
        let i = rng.below(out.len() + 1);
        let j = rng.below(out.len() + 1);
        if i < out.len() && j < out.len() {
            out.swap(i, j);
        }
    }
    Json::Obj(out)
}

fn client_token(rng: &mut Rng) -> Json {
    match rng.below(10) {
        0 => s("t".repeat(64)),
        1 => s("t".repeat(65)),
        _ => s(format!("tok-{}", rng.below(1000))),
    }
}

pub fn job_id(rng: &mut Rng) -> String {
    if rng.percent(90) {
        return format!("fj-{}", rng.below(JOB_IDS));
    }
    rng.pick(&[
        "",
        "a/b",
        "a+b",
        "#",
        "$next",
        "with space",
        "ünï",
        "j".repeat(64).as_str(),
        "j".repeat(65).as_str(),
        "fj-0\u{0}",
    ])
    .to_string()
}

fn namespace(rng: &mut Rng) -> String {
    if rng.percent(92) {
        return rng.pick(NAMESPACES).to_string();
    }
    rng.pick(&["", "a/b", "namespace-x", "ns+", "n".repeat(65).as_str()])
        .to_string()
}

fn thing(rng: &mut Rng) -> String {
    match rng.below(20) {
        0 => format!(
            "arn:aws:iot:us-east-1:123456789012:thing/{}",
            thing_name(rng.below(THINGS))
        ),
        1 => PASSWORD_THING.into(),
        2 => rng
            .pick(&["", "a/b", "x+", "t".repeat(129).as_str(), "thinggroup/x"])
            .to_string(),
        _ => thing_name(rng.below(THINGS)),
    }
}

/// A job document: usually a small JSON object as a string (as CreateJob takes it), sometimes large,
/// deep, not JSON, or not a string.
fn document(rng: &mut Rng) -> Json {
    match rng.below(20) {
        0 => {
            let depth = rng.range(100, 140);
            s(String::from_utf8_lossy(&deep(rng, depth).render()).into_owned())
        }
        1 => s(format!(
            r#"{{"pad":"{}"}}"#,
            "p".repeat(rng.range(1000, 40_000))
        )),
        2 => s("not json {"),
        3 => Json::Obj(vec![("action".into(), s("update"))]),
        4 => s(""),
        _ => s(format!(r#"{{"action":"update","n":{}}}"#, rng.below(1000))),
    }
}

fn status_of_job(rng: &mut Rng) -> Json {
    s(*rng.pick(&[
        "IN_PROGRESS",
        "CANCELED",
        "COMPLETED",
        "DELETION_IN_PROGRESS",
        "SCHEDULED",
        "in_progress",
        "DONE",
    ]))
}

fn status_of_execution(rng: &mut Rng) -> Json {
    s(*rng.pick(&[
        "QUEUED",
        "IN_PROGRESS",
        "SUCCEEDED",
        "FAILED",
        "TIMED_OUT",
        "REJECTED",
        "REMOVED",
        "CANCELED",
        "succeeded",
        "",
    ]))
}

fn max_results(rng: &mut Rng) -> Json {
    num(*rng.pick(&[1, 2, 10, 250, 0, 251, -1]))
}

fn next_token(rng: &mut Rng) -> Json {
    match rng.below(4) {
        0 => s(""),
        1 => s(String::from_utf8_lossy(&rng.bytes(24)).into_owned()),
        2 => s(format!("fj-{}", rng.below(JOB_IDS))),
        _ => s("eyJvZmZzZXQiOjEwfQ=="),
    }
}

fn text(rng: &mut Rng) -> Json {
    s(*rng.pick(&["why", "", "reason-code", "ünï"]))
}

/// The operations the control API serves, and some it does not.
pub const OPERATIONS: &[&str] = &[
    "CreateJob",
    "DeleteJob",
    "DescribeJob",
    "ListJobs",
    "CancelJob",
    "DescribeJobExecution",
    "ListJobExecutionsForJob",
    "ListJobExecutionsForThing",
    "CancelJobExecution",
    "DeleteJobExecution",
    "UpdateJob",
    "GetJobDocument",
    "ListRecoveries",
    "DescribeRecovery",
    "ListPlugins",
    "DescribePlugin",
    "ResetPlugin",
    "DescribeGateway",
];

pub fn operation(rng: &mut Rng) -> String {
    if rng.percent(95) {
        // CreateJob twice as often: the other operations want jobs to exist.
        let ops = [OPERATIONS, &["CreateJob"]].concat();
        return rng.pick(&ops).to_string();
    }
    rng.pick(&[
        "Frobnicate",
        "createjob",
        "DeleteJob ",
        "ListJobs$",
        "X".repeat(300).as_str(),
    ])
    .to_string()
}

/// Whether a publish to `$sprig/control/{clientId}/{operation}` is a request the control API answers.
pub fn is_control_request(operation: &str) -> bool {
    !operation.is_empty() && !operation.contains(['/', '+', '#', '\0'])
}

/// A control request body for `operation`.
pub fn control_body(rng: &mut Rng, operation: &str) -> Vec<u8> {
    let body = match operation {
        "CreateJob" => {
            let targets = match rng.below(30) {
                0 => Json::Arr(
                    (0..rng.range(50, 300))
                        .map(|i| s(thing_name(i % THINGS + 100)))
                        .collect(),
                ),
                1 => Json::Arr(vec![]),
                2 => s(thing_name(0)),
                _ => Json::Arr(
                    (0..rng.range(1, 6))
                        .map(|_| field(rng, |r| s(thing(r))))
                        .collect(),
                ),
            };
            let fields = vec![
                ("jobId", 97, field(rng, |r| s(job_id(r)))),
                ("targets", 97, targets),
                ("document", 90, document(rng)),
                ("documentSource", 3, s("https://example.com/doc.json")),
                ("description", 30, field(rng, text)),
                (
                    "targetSelection",
                    20,
                    field(rng, |r| s(*r.pick(&["SNAPSHOT", "CONTINUOUS"]))),
                ),
                ("namespaceId", 40, field(rng, |r| s(namespace(r)))),
            ];
            object(rng, fields)
        }
        "DeleteJob" => {
            let fields = vec![
                ("jobId", 97, field(rng, |r| s(job_id(r)))),
                ("force", 60, field(rng, |r| Json::Bool(r.percent(70)))),
                ("namespaceId", 30, field(rng, |r| s(namespace(r)))),
            ];
            object(rng, fields)
        }
        "DescribeJob" => {
            let fields = vec![
                ("jobId", 97, field(rng, |r| s(job_id(r)))),
                (
                    "beforeSubstitution",
                    10,
                    field(rng, |r| Json::Bool(r.percent(50))),
                ),
            ];
            object(rng, fields)
        }
        "ListJobs" => {
            let fields = vec![
                ("status", 30, field(rng, status_of_job)),
                (
                    "targetSelection",
                    10,
                    field(rng, |r| s(*r.pick(&["SNAPSHOT", "CONTINUOUS"]))),
                ),
                ("maxResults", 40, field(rng, max_results)),
                ("nextToken", 20, field(rng, next_token)),
                ("thingGroupName", 5, field(rng, text)),
                ("thingGroupId", 5, field(rng, text)),
                ("namespaceId", 40, field(rng, |r| s(namespace(r)))),
            ];
            object(rng, fields)
        }
        "CancelJob" => {
            let fields = vec![
                ("jobId", 97, field(rng, |r| s(job_id(r)))),
                ("reasonCode", 30, field(rng, text)),
                ("comment", 30, field(rng, text)),
                ("force", 50, field(rng, |r| Json::Bool(r.percent(60)))),
            ];
            object(rng, fields)
        }
        "DescribeJobExecution" => {
            let fields = vec![
                ("jobId", 97, field(rng, |r| s(job_id(r)))),
                ("thingName", 95, field(rng, |r| s(thing(r)))),
                ("executionNumber", 30, field(rng, |r| num(r.range(0, 3)))),
            ];
            object(rng, fields)
        }
        "ListJobExecutionsForJob" => {
            let fields = vec![
                ("jobId", 97, field(rng, |r| s(job_id(r)))),
                ("status", 30, field(rng, status_of_execution)),
                ("maxResults", 40, field(rng, max_results)),
                ("nextToken", 20, field(rng, next_token)),
            ];
            object(rng, fields)
        }
        "ListJobExecutionsForThing" => {
            let fields = vec![
                ("thingName", 95, field(rng, |r| s(thing(r)))),
                ("status", 30, field(rng, status_of_execution)),
                ("namespaceId", 30, field(rng, |r| s(namespace(r)))),
                ("jobId", 20, field(rng, |r| s(job_id(r)))),
                ("maxResults", 40, field(rng, max_results)),
                ("nextToken", 20, field(rng, next_token)),
            ];
            object(rng, fields)
        }
        "CancelJobExecution" => {
            let details = Json::Obj(vec![("step".into(), field(rng, text))]);
            let fields = vec![
                ("jobId", 97, field(rng, |r| s(job_id(r)))),
                ("thingName", 95, field(rng, |r| s(thing(r)))),
                ("force", 50, field(rng, |r| Json::Bool(r.percent(60)))),
                ("expectedVersion", 30, field(rng, |r| num(r.range(0, 4)))),
                ("statusDetails", 30, field(rng, |_| details)),
            ];
            object(rng, fields)
        }
        "DeleteJobExecution" => {
            let fields = vec![
                ("jobId", 97, field(rng, |r| s(job_id(r)))),
                ("thingName", 95, field(rng, |r| s(thing(r)))),
                ("executionNumber", 90, field(rng, |r| num(r.range(0, 3)))),
                ("force", 50, field(rng, |r| Json::Bool(r.percent(60)))),
                ("namespaceId", 30, field(rng, |r| s(namespace(r)))),
            ];
            object(rng, fields)
        }
        "UpdateJob" => {
            let fields = vec![
                ("jobId", 97, field(rng, |r| s(job_id(r)))),
                ("description", 70, field(rng, text)),
                ("namespaceId", 30, field(rng, |r| s(namespace(r)))),
                ("timeoutConfig", 5, field(rng, |_| Json::Obj(vec![]))),
            ];
            object(rng, fields)
        }
        "GetJobDocument" => {
            let fields = vec![
                ("jobId", 97, field(rng, |r| s(job_id(r)))),
                (
                    "beforeSubstitution",
                    10,
                    field(rng, |r| Json::Bool(r.percent(50))),
                ),
            ];
            object(rng, fields)
        }
        "ListRecoveries" => {
            let fields = vec![
                ("thingName", 30, field(rng, |r| s(thing(r)))),
                ("jobId", 30, field(rng, |r| s(job_id(r)))),
                (
                    "status",
                    30,
                    field(rng, |r| {
                        s(*r.pick(&["PENDING", "RECOVERED", "FAILED", "x"]))
                    }),
                ),
                ("maxResults", 30, field(rng, max_results)),
                ("nextToken", 20, field(rng, next_token)),
            ];
            object(rng, fields)
        }
        "DescribeRecovery" => {
            let fields = vec![(
                "recoveryId",
                95,
                field(rng, |r| s(format!("{}", r.below(100)))),
            )];
            object(rng, fields)
        }
        "ListPlugins" => {
            let fields = vec![
                ("maxResults", 30, field(rng, max_results)),
                ("nextToken", 20, field(rng, next_token)),
            ];
            object(rng, fields)
        }
        "DescribePlugin" | "ResetPlugin" => {
            let fields = vec![(
                "routeName",
                95,
                field(rng, |r| s(*r.pick(&["recovery-1", "pumps", "a b", ""]))),
            )];
            object(rng, fields)
        }
        "DescribeGateway" => {
            // It takes no parameters: one given now and then is refused by name.
            let fields = vec![("jobId", 5, field(rng, |r| s(job_id(r))))];
            object(rng, fields)
        }
        _ => {
            let fields = vec![("jobId", 50, s(job_id(rng)))];
            object(rng, fields)
        }
    };
    finish(rng, body)
}

/// Which Jobs device API a topic names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceApi {
    GetPending,
    StartNext,
    Describe,
    Update,
}

/// A topic under the device's own `$aws/things/{thing}/jobs/`: one of the four APIs (with a job id of
/// the pool, `$next`, or an odd one; sometimes in a namespace), or a path that names none.
pub fn device_topic(rng: &mut Rng, thing: &str) -> (String, DeviceApi) {
    let base = format!("$aws/things/{thing}/jobs");
    let job = |rng: &mut Rng| {
        if rng.percent(90) {
            format!("fj-{}", rng.below(JOB_IDS))
        } else {
            rng.pick(&["", "a b", "j".repeat(65).as_str(), "ünï", "get"])
                .to_string()
        }
    };
    let scope = |rng: &mut Rng| {
        if rng.percent(25) {
            // No wildcards here: a topic with one ends the connection (`other_topic` sends those).
            format!("/namespace-{}", namespace(rng).replace(['+', '#'], "_"))
        } else {
            String::new()
        }
    };
    match rng.below(14) {
        0..=2 => (format!("{base}/get"), DeviceApi::GetPending),
        3..=5 => (format!("{base}/start-next"), DeviceApi::StartNext),
        6..=7 => {
            let job = if rng.percent(40) {
                "$next".to_owned()
            } else {
                job(rng)
            };
            (
                format!("{base}/{job}{}/get", scope(rng)),
                DeviceApi::Describe,
            )
        }
        8..=11 => {
            let job = if rng.percent(5) {
                "$next".to_owned()
            } else {
                job(rng)
            };
            (
                format!("{base}/{job}{}/update", scope(rng)),
                DeviceApi::Update,
            )
        }
        _ => (
            rng.pick(&[
                base.clone(),
                format!("{base}/"),
                format!("{base}/x/y/z/w"),
                format!("{base}/fj-1/namespace-acme/delete"),
                format!("{base}/fj-1/other-acme/get"),
                format!("{base}/notify"),
                format!("{base}/get/accepted"),
                format!("{base}/fj-1/notify-namespace-acme/"),
            ])
            .clone(),
            DeviceApi::GetPending,
        ),
    }
}

/// Whether the device API answers a publish to `topic` by `thing` (on `{topic}/accepted|rejected`; the
/// caller checks that it subscribed to those).
pub fn is_device_request(topic: &str, thing: &str) -> bool {
    let Some(path) = topic.strip_prefix(&format!("$aws/things/{thing}/jobs/")) else {
        return topic == format!("$aws/things/{thing}/jobs");
    };
    let segments: Vec<&str> = path.split('/').collect();
    let notification = match segments.as_slice() {
        [one] => *one == "notify" || one.starts_with("notify-next"),
        [_, two] | [_, two, ""] => two.starts_with("notify-namespace-"),
        _ => false,
    };
    !notification
        && !topic.ends_with("/accepted")
        && !topic.ends_with("/rejected")
        && !topic.contains(['+', '#', '\0'])
}

/// A device request body for `api`.
pub fn device_body(rng: &mut Rng, api: DeviceApi) -> Vec<u8> {
    let details = |rng: &mut Rng| {
        if rng.percent(85) {
            Json::Obj(
                (0..rng.range(0, 4))
                    .map(|i| (format!("k{i}"), s(format!("v{}", rng.below(10)))))
                    .collect(),
            )
        } else {
            match rng.below(3) {
                0 => Json::Obj(vec![("k".into(), num(5))]),
                1 => Json::Obj(
                    (0..rng.range(100, 2000))
                        .map(|i| (format!("k{i}"), s("v")))
                        .collect(),
                ),
                _ => Json::Obj(vec![("k".into(), Json::Obj(vec![("n".into(), s("v"))]))]),
            }
        }
    };
    let minutes = |rng: &mut Rng| num(*rng.pick(&[1, 5, 10080, 0, -1, 10081, i64::MAX]));
    let body = match api {
        DeviceApi::GetPending => object(rng, vec![]),
        DeviceApi::StartNext => {
            let fields = vec![
                ("statusDetails", 50, field(rng, details)),
                ("stepTimeoutInMinutes", 20, field(rng, minutes)),
            ];
            object(rng, fields)
        }
        DeviceApi::Describe => {
            let fields = vec![
                ("executionNumber", 30, field(rng, |r| num(r.range(0, 3)))),
                (
                    "includeJobDocument",
                    50,
                    field(rng, |r| Json::Bool(r.percent(50))),
                ),
            ];
            object(rng, fields)
        }
        DeviceApi::Update => {
            let fields = vec![
                ("status", 95, field(rng, status_of_execution)),
                ("statusDetails", 50, field(rng, details)),
                ("expectedVersion", 30, field(rng, |r| num(r.range(0, 4)))),
                ("executionNumber", 20, field(rng, |r| num(r.range(0, 3)))),
                (
                    "includeJobExecutionState",
                    40,
                    field(rng, |r| Json::Bool(r.percent(50))),
                ),
                (
                    "includeJobDocument",
                    30,
                    field(rng, |r| Json::Bool(r.percent(50))),
                ),
                ("stepTimeoutInMinutes", 15, field(rng, minutes)),
            ];
            object(rng, fields)
        }
    };
    finish(rng, body)
}

/// Renders a body, and sometimes breaks it: something else than an object, not JSON, truncated,
/// trailing bytes, a byte-order mark, bytes that are not UTF-8, or over the size limits.
fn finish(rng: &mut Rng, body: Json) -> Vec<u8> {
    if rng.percent(80) {
        return body.render();
    }
    let mut out = body.render();
    match rng.below(12) {
        0 => Vec::new(),
        1 => b" \n\t".to_vec(),
        2 => rng
            .pick(&[&b"null"[..], b"[]", b"\"x\"", b"17", b"{}", b"[{}]"])
            .to_vec(),
        3 => {
            let cut = rng.below(out.len().max(1));
            out.truncate(cut);
            out
        }
        4 => {
            out.extend(*rng.pick(&[&b"}"[..], b" x", b"{}", b"\0"]));
            out
        }
        5 => [&b"\xef\xbb\xbf"[..], &out].concat(),
        6 => {
            let at = rng.below(out.len().max(1));
            out.insert(at, *rng.pick(&[0xff, 0xc3, 0x80, 0x00]));
            out
        }
        7 => {
            let depth = rng.range(100, 100_000);
            deep(rng, depth).render()
        }
        // Over the device API's 128 KB and the control API's limit.
        8 => {
            let pad = "p".repeat(rng.range(128 * 1024, 300 * 1024));
            format!(r#"{{"pad":"{pad}"}}"#).into_bytes()
        }
        9 => odd(rng).render(),
        10 => {
            let at = rng.below(out.len().max(1));
            out[at..].reverse();
            out
        }
        _ => String::from_utf8_lossy(&out).to_uppercase().into_bytes(),
    }
}

/// A topic outside the device's Jobs API: another thing's, a topic rule's, the control API's, reserved
/// ones; unless `strict`, malformed ones too (empty, with a wildcard: the gateway closes the connection).
pub fn other_topic(rng: &mut Rng, thing: &str, strict: bool) -> String {
    let (other, levels) = (thing_name(rng.below(THINGS)), rng.range(10, 2000));
    let topics = [
        format!("$aws/things/{thing}/shadow/update"),
        format!("$aws/things/{other}/jobs/get"),
        format!("fuzz/{thing}/telemetry"),
        "fuzz/shared".to_owned(),
        "$sprig/control/fuzz-op-0/ListJobs".to_owned(),
        "$aws/events/presence/connected/fuzz-0".to_owned(),
        "not/granted".to_owned(),
        "/".to_owned(),
        format!("$aws/things/{thing}/{}", "l/".repeat(levels)),
        "$share/g/fuzz/x".to_owned(),
        // Malformed: the last two.
        String::new(),
        format!("fuzz/{thing}/+"),
    ];
    let valid = if strict {
        topics.len() - 2
    } else {
        topics.len()
    };
    topics[rng.below(valid)].clone()
}

/// A subscription filter: the device's own topics, wildcards, other things', shared, malformed (refused
/// one by one); unless `strict`, an empty one too (the gateway closes the connection).
pub fn any_filter(rng: &mut Rng, thing: &str, strict: bool) -> String {
    let levels = rng.range(10, 500);
    let filters = [
        format!("$aws/things/{thing}/jobs/#"),
        format!("$aws/things/{thing}/#"),
        format!("$aws/things/{thing}/jobs/+/get/accepted"),
        format!("$aws/things/{thing}/jobs/notify-next-namespace-acme"),
        "$aws/things/+/jobs/notify".to_owned(),
        "#".to_owned(),
        "+".to_owned(),
        format!("fuzz/{thing}/telemetry"),
        format!("fuzz/{thing}/will"),
        "fuzz/shared".to_owned(),
        "fuzz/#".to_owned(),
        format!("fuzz/{thing}/#"),
        "$share/g/fuzz/shared".to_owned(),
        "$share//x".to_owned(),
        "$aws/events/presence/#".to_owned(),
        "$sprig/control/fuzz-op-0/#".to_owned(),
        "a/#/b".to_owned(),
        "a+".to_owned(),
        "$".to_owned(),
        "~/x".to_owned(),
        format!("fuzz/{}", "+/".repeat(levels)),
        // Malformed: the last one.
        String::new(),
    ];
    let valid = if strict {
        filters.len() - 1
    } else {
        filters.len()
    };
    filters[rng.below(valid)].clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_mostly_json_objects() {
        let mut rng = Rng::new(11);
        let (mut objects, mut total) = (0, 0);
        for _ in 0..400 {
            for body in [
                device_body(&mut rng, DeviceApi::Update),
                control_body(&mut rng, "CreateJob"),
            ] {
                total += 1;
                if let Ok(serde_json::Value::Object(_)) = serde_json::from_slice(&body) {
                    objects += 1;
                }
            }
        }
        assert!(objects * 10 > total * 6, "{objects} of {total} are objects");
        assert!(
            objects < total,
            "all {total} bodies are well-formed objects"
        );
    }

    #[test]
    fn rendered_json_escapes_strings() {
        let json = Json::Obj(vec![
            ("a\"b".into(), s("x\\y\n")),
            (
                "n".into(),
                Json::Arr(vec![num(1), Json::Null, Json::Bool(true)]),
            ),
        ]);
        let text = json.render();
        let value: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(value["a\"b"], "x\\y\n");
        assert_eq!(value["n"], serde_json::json!([1, null, true]));
    }

    #[test]
    fn device_topics_name_an_api_of_the_thing_or_none() {
        let mut rng = Rng::new(12);
        let mut answered = 0;
        for _ in 0..300 {
            let (topic, _) = device_topic(&mut rng, "fuzz-3");
            assert!(topic.starts_with("$aws/things/fuzz-3/jobs"), "{topic}");
            answered += usize::from(is_device_request(&topic, "fuzz-3"));
        }
        assert!(answered > 200, "{answered}");
        assert!(!is_device_request(
            "$aws/things/fuzz-3/jobs/notify",
            "fuzz-3"
        ));
        assert!(!is_device_request(
            "$aws/things/fuzz-3/jobs/get/accepted",
            "fuzz-3"
        ));
        assert!(!is_device_request("$aws/things/fuzz-4/jobs/get", "fuzz-3"));
        assert!(is_device_request(
            "$aws/things/fuzz-3/jobs/x/y/z/w",
            "fuzz-3"
        ));
    }
}
