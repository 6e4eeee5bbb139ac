//! Device request bodies and reply payloads: JSON in, AWS's `accepted` / `rejected` shapes out.
//!
//! Devices are met leniently: unknown fields are ignored (AWS device SDKs send fields sprig does not use)
//! and `null` counts as absent; a known field of the wrong type is an `InvalidRequest` naming the field.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::jobs::clock::now_ms;
use crate::jobs::device::{DeviceError, DeviceErrorCode, UpdateExecution};

/// The largest request body accepted: AWS IoT's MQTT payload limit (128 KB).
pub(super) const MAX_REQUEST_BYTES: usize = 128 * 1024;

/// The longest `clientToken` echoed (AWS's limit).
pub(super) const MAX_CLIENT_TOKEN_CHARS: usize = 64;

/// StartNextPendingJobExecution's body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct StartNextRequest {
    pub status_details: Option<BTreeMap<String, String>>,
    pub step_timeout_in_minutes: Option<i64>,
}

/// DescribeJobExecution's body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DescribeRequest {
    pub execution_number: Option<i64>,
    /// AWS's default is true.
    pub include_job_document: Option<bool>,
}

/// UpdateJobExecution's body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct UpdateRequest {
    pub status: String,
    pub status_details: Option<BTreeMap<String, String>>,
    pub expected_version: Option<i64>,
    pub execution_number: Option<i64>,
    pub include_job_execution_state: Option<bool>,
    pub include_job_document: Option<bool>,
    pub step_timeout_in_minutes: Option<i64>,
}

impl From<UpdateRequest> for UpdateExecution {
    fn from(r: UpdateRequest) -> UpdateExecution {
        UpdateExecution {
            status: r.status,
            status_details: r.status_details,
            expected_version: r.expected_version,
            execution_number: r.execution_number,
            include_job_execution_state: r.include_job_execution_state.unwrap_or(false),
            include_job_document: r.include_job_document.unwrap_or(false),
            step_timeout_in_minutes: r.step_timeout_in_minutes,
        }
    }
}

/// Checks the body's size and JSON shape and takes out the `clientToken`. An empty body is `{}`.
pub(super) fn parse_body(payload: &[u8]) -> Result<(Option<String>, Value), DeviceError> {
    if payload.len() > MAX_REQUEST_BYTES {
        return Err(DeviceError::new(
            DeviceErrorCode::InvalidRequest,
            format!(
                "request body: {} bytes is over the limit of {MAX_REQUEST_BYTES} bytes",
                payload.len()
            ),
        ));
    }
    let value: Value = if payload.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(payload).map_err(|e| {
            DeviceError::new(
                DeviceErrorCode::InvalidJson,
                format!("request body: not valid JSON ({e})"),
            )
        })?
    };
    let Value::Object(mut map) = value else {
        return Err(DeviceError::new(
            DeviceErrorCode::InvalidJson,
            "request body: must be a JSON object",
        ));
    };
    let token = match map.remove("clientToken") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if t.chars().count() <= MAX_CLIENT_TOKEN_CHARS => Some(t),
        Some(_) => {
            return Err(DeviceError::new(
                DeviceErrorCode::InvalidRequest,
                format!(
                    "clientToken: must be a string of at most {MAX_CLIENT_TOKEN_CHARS} characters"
                ),
            ))
        }
    };
    Ok((token, Value::Object(map)))
}

/// Deserializes a request, naming the offending field on failure (`expectedVersion: invalid type: …`).
pub(super) fn typed<T: DeserializeOwned>(body: Value) -> Result<T, DeviceError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        DeviceError::new(
            DeviceErrorCode::InvalidRequest,
            if path == "." {
                inner.to_string()
            } else {
                format!("{path}: {inner}")
            },
        )
    })
}

/// The `accepted` payload: `fields` plus `timestamp` (epoch seconds) and the echoed `clientToken`.
pub(super) fn accepted(mut fields: Map<String, Value>, token: Option<String>) -> Value {
    stamp(&mut fields, token);
    Value::Object(fields)
}

/// The `rejected` payload: `{code, message, clientToken?, timestamp, executionState?}`.
pub(super) fn rejected(error: &DeviceError, token: Option<String>) -> Value {
    let mut fields = Map::new();
    fields.insert("code".into(), error.code.as_str().into());
    fields.insert("message".into(), error.message.clone().into());
    if let Some(state) = &error.execution_state {
        fields.insert("executionState".into(), to_json(state));
    }
    stamp(&mut fields, token);
    Value::Object(fields)
}

fn stamp(fields: &mut Map<String, Value>, token: Option<String>) {
    fields.insert("timestamp".into(), (now_ms() / 1000).into());
    if let Some(token) = token {
        fields.insert("clientToken".into(), token.into());
    }
}

/// Serializes an engine response; the engine's shapes are plain data, so this cannot fail in practice.
pub(super) fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies_are_checked_and_the_client_token_taken_out() {
        let (token, body) = parse_body(br#"{"clientToken":"abc","status":"SUCCEEDED"}"#).unwrap();
        assert_eq!(token.as_deref(), Some("abc"));
        assert_eq!(body, json!({"status": "SUCCEEDED"}));
        assert_eq!(parse_body(b"").unwrap(), (None, json!({})));
        assert_eq!(parse_body(b" \n").unwrap(), (None, json!({})));
        assert_eq!(
            parse_body(br#"{"clientToken":null}"#).unwrap(),
            (None, json!({}))
        );
        for bad in [&b"{"[..], b"[1]", b"\"x\"", b"17", b"not json"] {
            assert_eq!(
                parse_body(bad).unwrap_err().code,
                DeviceErrorCode::InvalidJson
            );
        }
        let long = format!(r#"{{"clientToken":"{}"}}"#, "x".repeat(65));
        for bad in [long.as_bytes(), br#"{"clientToken": 5}"#] {
            assert_eq!(
                parse_body(bad).unwrap_err().code,
                DeviceErrorCode::InvalidRequest
            );
        }
        let big = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert_eq!(
            parse_body(&big).unwrap_err().code,
            DeviceErrorCode::InvalidRequest
        );
    }

    #[test]
    fn unknown_fields_are_ignored_and_wrong_types_named() {
        let update: UpdateRequest =
            typed(json!({"status": "IN_PROGRESS", "sdkVersion": "1.2", "expectedVersion": null}))
                .unwrap();
        assert_eq!(update.status, "IN_PROGRESS");
        assert_eq!(update.expected_version, None);

        let e = typed::<UpdateRequest>(json!({"status": "SUCCEEDED", "expectedVersion": "2"}))
            .unwrap_err();
        assert_eq!(e.code, DeviceErrorCode::InvalidRequest);
        assert!(
            e.message.starts_with("expectedVersion: invalid type"),
            "{}",
            e.message
        );

        let e = typed::<StartNextRequest>(json!({"statusDetails": {"step": 3}})).unwrap_err();
        assert!(
            e.message.starts_with("statusDetails.step: invalid type"),
            "{}",
            e.message
        );

        let e = typed::<UpdateRequest>(json!({})).unwrap_err();
        assert!(
            e.message.contains("missing field `status`"),
            "{}",
            e.message
        );

        let describe: DescribeRequest = typed(json!({})).unwrap();
        assert_eq!(describe.include_job_document, None);
    }

    #[test]
    fn replies_carry_timestamp_token_and_state() {
        let reply = accepted(Map::new(), Some("t1".into()));
        assert_eq!(reply["clientToken"], "t1");
        assert!(reply["timestamp"].as_i64().unwrap() > 1_600_000_000);
        assert!(reply["timestamp"].as_i64().unwrap() < 10_000_000_000);

        let e = DeviceError::new(DeviceErrorCode::ResourceNotFound, "gone");
        let reply = rejected(&e, None);
        assert_eq!(reply["code"], "ResourceNotFound");
        assert_eq!(reply["message"], "gone");
        assert!(reply.get("clientToken").is_none());
        assert!(reply.get("executionState").is_none());
    }
}
