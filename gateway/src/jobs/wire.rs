//! The device API's shapes as AWS IoT's Jobs data plane writes them (`JobExecution`,
//! `JobExecutionSummary`, `JobExecutionState`, pending lists) and the conversions from sprig's records:
//! what the device API answers and the notifier sends, in one place, so both say the same.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::model::{Execution, ExecutionStatus, Job};

/// AWS's `JobExecutionSummary` (device API): times in epoch seconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSummary {
    pub job_id: String,
    pub queued_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    pub last_updated_at: i64,
    pub version_number: i64,
    pub execution_number: i64,
}

/// AWS's `JobExecution` (device API).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceExecution {
    pub job_id: String,
    pub thing_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_document: Option<JobDocument>,
    pub status: &'static str,
    pub status_details: BTreeMap<String, String>,
    pub queued_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    pub last_updated_at: i64,
    pub version_number: i64,
    pub execution_number: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approximate_seconds_before_timed_out: Option<i64>,
}

/// A job's document as it goes out in JSON: the stored text, checked once to be JSON and then copied
/// verbatim into each message, never parsed into a tree and serialized again (a notification for 10,000
/// devices did that 20,000 times). A document that is not JSON goes out as a JSON string.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct JobDocument(Box<serde_json::value::RawValue>);

impl JobDocument {
    pub(crate) fn of(text: &str) -> JobDocument {
        let raw = match serde_json::value::RawValue::from_string(text.to_owned()) {
            Ok(raw) => raw,
            // Serializing a string cannot fail.
            Err(_) => serde_json::value::to_raw_value(text).unwrap_or_default(),
        };
        JobDocument(raw)
    }

    /// The document as a JSON value.
    pub fn value(&self) -> Value {
        serde_json::from_str(self.0.get()).unwrap_or(Value::Null)
    }
}

impl PartialEq for JobDocument {
    fn eq(&self, other: &JobDocument) -> bool {
        self.0.get() == other.0.get()
    }
}

/// AWS's `JobExecutionState`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionState {
    pub status: &'static str,
    pub status_details: BTreeMap<String, String>,
    pub version_number: i64,
}

impl ExecutionState {
    pub fn of(execution: &Execution) -> ExecutionState {
        ExecutionState {
            status: execution.status.as_str(),
            status_details: execution.status_details.clone(),
            version_number: execution.version_number,
        }
    }
}

/// A thing's pending executions in one scope, IN_PROGRESS and QUEUED, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingJobs {
    pub in_progress_jobs: Vec<DeviceSummary>,
    pub queued_jobs: Vec<DeviceSummary>,
}

/// What a thing's notifications are computed from: its pending executions and the next one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ThingSnapshot {
    pub pending: PendingJobs,
    pub next: Option<DeviceExecution>,
}

/// Which execution a describe names: `$next` or a job id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobTarget {
    Next,
    Id(String),
}

/// An UpdateJobExecution request, already parsed.
#[derive(Debug, Clone, Default)]
pub struct UpdateExecution {
    pub status: String,
    pub status_details: Option<BTreeMap<String, String>>,
    pub expected_version: Option<i64>,
    pub execution_number: Option<i64>,
    pub include_job_execution_state: bool,
    pub include_job_document: bool,
    pub step_timeout_in_minutes: Option<i64>,
}

/// What UpdateJobExecution answers.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateOutcome {
    pub execution_state: Option<ExecutionState>,
    pub job_document: Option<Value>,
}

pub(crate) fn seconds(ms: i64) -> i64 {
    ms / 1000
}

pub(crate) fn summary(execution: &Execution) -> DeviceSummary {
    DeviceSummary {
        job_id: execution.job_id.clone(),
        queued_at: seconds(execution.queued_at),
        started_at: execution.started_at.map(seconds),
        last_updated_at: seconds(execution.last_updated_at),
        version_number: execution.version_number,
        execution_number: execution.execution_number,
    }
}

pub(crate) fn device_execution(
    execution: &Execution,
    job: &Job,
    include_document: bool,
    now: i64,
) -> DeviceExecution {
    DeviceExecution {
        job_id: execution.job_id.clone(),
        thing_name: execution.thing_name.clone(),
        job_document: include_document.then(|| JobDocument::of(&job.document)),
        status: execution.status.as_str(),
        status_details: execution.status_details.clone(),
        queued_at: seconds(execution.queued_at),
        started_at: execution.started_at.map(seconds),
        last_updated_at: seconds(execution.last_updated_at),
        version_number: execution.version_number,
        execution_number: execution.execution_number,
        approximate_seconds_before_timed_out: execution
            .step_deadline
            .map(|d| ((d - now).max(0) + 999) / 1000),
    }
}

pub(crate) fn document(job: &Job) -> Value {
    serde_json::from_str(&job.document).unwrap_or(Value::String(job.document.clone()))
}

/// Oldest first, as AWS lists them; the job id breaks ties so the order is stable.
pub(crate) fn sort_oldest_first(pending: &mut [Pending]) {
    pending.sort_by(|(a, _), (b, _)| (a.queued_at, &a.job_id).cmp(&(b.queued_at, &b.job_id)));
}

/// A pending execution with its job.
pub(crate) type Pending = (Execution, Arc<Job>);

/// A thing's snapshot from its pending executions in a scope, oldest first.
pub(crate) fn snapshot_of(pending: &[Pending], now: i64) -> ThingSnapshot {
    let next = pick_next(pending).map(|(e, j)| device_execution(e, j, true, now));
    let (in_progress, queued): (Vec<_>, Vec<_>) = pending
        .iter()
        .partition(|(e, _)| e.status == ExecutionStatus::InProgress);
    ThingSnapshot {
        pending: PendingJobs {
            in_progress_jobs: in_progress.into_iter().map(|(e, _)| summary(e)).collect(),
            queued_jobs: queued.into_iter().map(|(e, _)| summary(e)).collect(),
        },
        next,
    }
}

/// IN_PROGRESS first (oldest), else the oldest QUEUED: the execution `$next` names.
pub(crate) fn pick_next(sorted: &[Pending]) -> Option<&Pending> {
    sorted
        .iter()
        .find(|(e, _)| e.status == ExecutionStatus::InProgress)
        .or_else(|| sorted.first())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_goes_out_verbatim_and_one_that_is_not_json_as_a_string() {
        let json = JobDocument::of(r#"{"op":"update","n":[1,2]}"#);
        assert_eq!(
            serde_json::to_string(&json).unwrap(),
            r#"{"op":"update","n":[1,2]}"#
        );
        assert_eq!(
            json.value(),
            serde_json::json!({"op": "update", "n": [1, 2]})
        );
        let text = JobDocument::of("reboot now");
        assert_eq!(serde_json::to_string(&text).unwrap(), r#""reboot now""#);
        assert_eq!(text, JobDocument::of("reboot now"));
    }
}
