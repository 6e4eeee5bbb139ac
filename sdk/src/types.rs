//! What crosses the boundary as JSON: the [`RecoveryContext`] the gateway hands a handler, and the
//! [`Recovery`] the handler answers.
//!
//! Both sides serialize these with serde and `serde_json`. Field names on the wire are camelCase, as in the
//! AWS IoT Jobs API. Unknown fields are ignored when reading, so the gateway may add optional context
//! fields in a later sdk version without breaking plugins built against this one (that is not an ABI
//! change; [`crate::abi::ABI_VERSION`] covers the C layout only).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why the gateway asks a handler to recover a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Reason {
    /// The job (or this execution) was deleted with `force`, while the execution was in progress.
    ForceDeleted,
    /// The job (or this execution) was canceled with `force`, while the execution was in progress.
    ForceCanceled,
    /// A reason this sdk version does not know (a newer gateway); handle it generically.
    #[serde(other)]
    Other,
}

/// One recovery to run: which device, which job, what state it was left in, and why.
///
/// The gateway builds it; a handler reads it in [`crate::RecoveryHandler::recover`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryContext {
    /// The device (AWS IoT thing name).
    pub thing_name: String,
    /// The job whose execution was interrupted.
    pub job_id: String,
    /// The job's namespace (`None` for a standard job).
    #[serde(default)]
    pub namespace_id: Option<String>,
    /// The job document, parsed. A document that is not JSON arrives as a JSON string holding its text.
    #[serde(default)]
    pub job_document: Value,
    /// The execution's status when the job was interrupted, as AWS names it: `"QUEUED"`,
    /// `"IN_PROGRESS"`, `"SUCCEEDED"`, `"FAILED"`, `"TIMED_OUT"`, `"REJECTED"`, `"REMOVED"`, `"CANCELED"`.
    pub execution_status: String,
    /// The execution's `statusDetails` as the device last reported them.
    #[serde(default)]
    pub status_details: BTreeMap<String, String>,
    /// Why this recovery runs.
    pub reason: Reason,
    /// Which attempt this is, starting at 1. A handler that answered [`Outcome::RetryLater`] is called
    /// again with the next attempt number.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// Whether the device acknowledged what the previous attempt published, within that attempt's
    /// [`Outcome::RetryLater::after_ms`]. Always `false` on attempt 1.
    ///
    /// This is how a handler implements "recovered when the device acknowledges within a timeout, else
    /// retry": publish and answer `RetryLater { after_ms: timeout }`; the next attempt comes when the
    /// device acknowledged (with `acknowledged: true`: answer [`Outcome::Recovered`]) or when the timeout
    /// elapsed (with `acknowledged: false`: publish again, or give up with [`Outcome::Failed`]).
    #[serde(default)]
    pub acknowledged: bool,
    /// What the device said when it acknowledged (with `acknowledged: true`): the payload it published on
    /// the route's `ack_topic`, parsed as JSON; a payload that is not JSON arrives as a JSON string holding
    /// its text (invalid UTF-8 replaced), and one longer than [`MAX_ACKNOWLEDGEMENT`] bytes as a string
    /// of its first bytes. `None` without an acknowledgement (and from gateways that predate the field).
    /// If the device acknowledged more than once before the attempt, the last payload counts.
    ///
    /// An acknowledgement is not necessarily a success: a device may say it could not roll back. A
    /// handler that expects `{"status": "FAILED", "reason": "…"}` from a device that failed can answer
    /// [`Outcome::Failed`] with the device's reason ([`RecoveryContext::negative_acknowledgement`]).
    #[serde(default)]
    pub acknowledgement: Option<Value>,
}

/// The most bytes of an acknowledgement's payload a handler receives (see
/// [`RecoveryContext::acknowledgement`]); the gateway keeps no more.
pub const MAX_ACKNOWLEDGEMENT: usize = 16 * 1024;

fn first_attempt() -> u32 {
    1
}

impl RecoveryContext {
    /// A plausible context, for a handler's unit tests and a dry run's starting point: device `sensor-7`,
    /// whose job `fw-42` (document `{"operation": "update"}`) was force-deleted while it was
    /// `IN_PROGRESS`, flashing; attempt 1, nothing acknowledged. Change the fields a test is about.
    pub fn example() -> RecoveryContext {
        RecoveryContext {
            thing_name: "sensor-7".into(),
            job_id: "fw-42".into(),
            namespace_id: None,
            job_document: serde_json::json!({"operation": "update"}),
            execution_status: "IN_PROGRESS".into(),
            status_details: BTreeMap::from([("step".into(), "flashing".into())]),
            reason: Reason::ForceDeleted,
            attempt: 1,
            acknowledged: false,
            acknowledgement: None,
        }
    }

    /// The device's reason, if it acknowledged negatively, by a simple convention: an acknowledgement
    /// that is a JSON object whose `status` is `"FAILED"` or `"REJECTED"` (any case; AWS IoT Jobs'
    /// terminal failure statuses) is negative; its reason is its `reason` string, else its
    /// `statusDetails.reason` string, else `"no reason given"`. `None` for any other acknowledgement or
    /// none.
    ///
    /// ```
    /// # use sprig_sdk::{RecoveryContext, serde_json::json};
    /// # let mut ctx: RecoveryContext = sprig_sdk::serde_json::from_value(json!({"thingName": "t",
    /// #     "jobId": "j", "executionStatus": "IN_PROGRESS", "reason": "forceDeleted"})).unwrap();
    /// ctx.acknowledgement = Some(json!({"status": "FAILED", "reason": "flash is read-only"}));
    /// assert_eq!(ctx.negative_acknowledgement().as_deref(), Some("flash is read-only"));
    /// ctx.acknowledgement = Some(json!({"status": "SUCCEEDED"}));
    /// assert_eq!(ctx.negative_acknowledgement(), None);
    /// ```
    pub fn negative_acknowledgement(&self) -> Option<String> {
        let ack = self.acknowledgement.as_ref()?.as_object()?;
        let status = ack.get("status")?.as_str()?;
        if !["FAILED", "REJECTED"]
            .iter()
            .any(|negative| status.eq_ignore_ascii_case(negative))
        {
            return None;
        }
        let reason = ack
            .get("reason")
            .and_then(Value::as_str)
            .or_else(|| ack.get("statusDetails")?.get("reason")?.as_str())
            .unwrap_or("no reason given");
        Some(reason.to_owned())
    }

    /// Renders a template: `{thing}`, `{jobId}`, `{namespace}` (empty for a standard job) and `{status}`
    /// (the execution status) are replaced by this context's values; every other character, including
    /// other braces (a JSON payload's), is kept as is. Values are inserted verbatim, not escaped: AWS
    /// thing names, job ids and namespaces contain only `[a-zA-Z0-9_:-]`, which is safe inside a JSON
    /// string and an MQTT topic level.
    pub fn render(&self, template: &str) -> String {
        let mut out = String::with_capacity(template.len() + 32);
        let mut rest = template;
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let after = &rest[start..];
            let placeholder = PLACEHOLDERS
                .iter()
                .find(|(name, _)| after.starts_with(name));
            match placeholder {
                Some((name, value)) => {
                    out.push_str(value(self));
                    rest = &after[name.len()..];
                }
                None => {
                    out.push('{');
                    rest = &after[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }
}

type Getter = fn(&RecoveryContext) -> &str;

const PLACEHOLDERS: [(&str, Getter); 4] = [
    ("{thing}", |ctx| &ctx.thing_name),
    ("{jobId}", |ctx| &ctx.job_id),
    ("{namespace}", |ctx| {
        ctx.namespace_id.as_deref().unwrap_or("")
    }),
    ("{status}", |ctx| &ctx.execution_status),
];

/// A handler's answer: what to do now, and how the recovery stands afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recovery {
    /// What the gateway should do, in order, before recording the outcome.
    #[serde(default)]
    pub actions: Vec<Action>,
    /// How the recovery stands once the actions are done.
    pub outcome: Outcome,
}

impl Recovery {
    /// Checks what serde cannot, whatever the device: publish topics are concrete MQTT topic names (not
    /// empty, no wildcard, no NUL), QoS is 0 or 1, and `statusDetails` are what AWS IoT Jobs accepts (see
    /// [`validate_status_details`]). [`Recovery::validate_for`] adds the rule that depends on the device.
    pub fn validate(&self) -> Result<(), String> {
        for (i, action) in self.actions.iter().enumerate() {
            match action {
                Action::Publish { topic, qos, .. } => {
                    if topic.is_empty() || topic.contains(['+', '#', '\0']) {
                        return Err(format!(
                            "action {i}: {topic:?} is not an MQTT topic name to publish to"
                        ));
                    }
                    if *qos > 1 {
                        return Err(format!(
                            "action {i}: QoS {qos} (only 0 and 1 are supported)"
                        ));
                    }
                }
                Action::SetStatusDetails { status_details } => {
                    validate_status_details(status_details)
                        .map_err(|why| format!("action {i}: statusDetails: {why}"))?;
                }
            }
        }
        Ok(())
    }

    /// Every rule the gateway applies to an answer for device `thing_name`: [`Recovery::validate`], and
    /// publishes only under the device's own topics, `$aws/things/{thing_name}/`. The gateway refuses an
    /// answer that fails this as garbage, so a unit test calling it catches what the gateway would refuse.
    pub fn validate_for(&self, thing_name: &str) -> Result<(), String> {
        self.validate()?;
        let own = format!("$aws/things/{thing_name}/");
        for (i, action) in self.actions.iter().enumerate() {
            if let Action::Publish { topic, .. } = action {
                if !topic.starts_with(&own) {
                    return Err(format!(
                        "action {i}: publish to `{topic}`, outside the device's own topics ({own}…)"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `statusDetails` as AWS IoT Jobs accepts them (and the gateway's Jobs device API too): at most 10
/// entries; keys of 1–128 characters of `[a-zA-Z0-9:_-]`; values of 1–1024 characters, none a control
/// character. The error says which rule an entry breaks.
pub fn validate_status_details(details: &BTreeMap<String, String>) -> Result<(), String> {
    if details.len() > 10 {
        return Err(format!("at most 10 entries; got {}", details.len()));
    }
    for (key, value) in details {
        let key_ok = (1..=128).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-:".contains(&b));
        if !key_ok {
            return Err(format!(
                "key \"{key}\" must be 1-128 characters of [a-zA-Z0-9:_-]"
            ));
        }
        if value.is_empty() || value.chars().count() > 1024 || value.chars().any(char::is_control) {
            return Err(format!(
                "the value of \"{key}\" must be 1-1024 printable characters"
            ));
        }
    }
    Ok(())
}

/// One thing for the gateway to do on the handler's behalf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Action {
    /// Publish an MQTT message (to the device, typically on one of its topics).
    #[serde(rename_all = "camelCase")]
    Publish {
        /// The topic name (no wildcards).
        topic: String,
        /// The payload, UTF-8 (typically JSON).
        payload: String,
        /// 0 or 1; 1 unless given.
        #[serde(default = "default_qos")]
        qos: u8,
    },
    /// Replace the execution's recorded `statusDetails` with these.
    #[serde(rename_all = "camelCase")]
    SetStatusDetails {
        /// The new statusDetails (the whole map; keys not in it are removed).
        status_details: BTreeMap<String, String>,
    },
}

fn default_qos() -> u8 {
    1
}

/// How a recovery stands after a handler call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Outcome {
    /// Done: the device is back in a known state. The recovery is recorded as recovered and not run again.
    Recovered,
    /// Not done yet: call the handler again (with [`RecoveryContext::attempt`] + 1) after `after_ms`
    /// milliseconds, or earlier if the device acknowledges (see [`RecoveryContext::acknowledged`]).
    #[serde(rename_all = "camelCase")]
    RetryLater {
        /// How long to wait before the next attempt, in milliseconds.
        after_ms: u64,
    },
    /// Given up: recorded as failed with this reason, and not run again.
    Failed {
        /// Why, for the operator.
        reason: String,
    },
}
