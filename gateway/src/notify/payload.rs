//! The JSON bodies of job notifications: AWS's for `notify` (`{timestamp, jobs: {QUEUED?, IN_PROGRESS?}}`)
//! and `notify-next` (`{timestamp, execution?}`, also the body of `notify-next-namespace-{ns}`). AWS
//! documents none for `notify-namespace-{ns}/`; sprig sends `{timestamp, jobId, event: CREATED|CANCELED|
//! DELETED|EXECUTION_CHANGED, execution?: the thing's execution of that job while it is pending, jobs:
//! {QUEUED?, IN_PROGRESS?} of the namespace}`.

use bytes::Bytes;
use serde::Serialize;

use crate::jobs::device::{DeviceExecution, DeviceSummary, PendingJobs};
use crate::jobs::JobEventKind;

/// AWS's `jobs` map: pending summaries by status, an empty list left out (`{}` when nothing is pending).
#[derive(Serialize)]
struct Jobs<'a> {
    #[serde(rename = "QUEUED", skip_serializing_if = "<[_]>::is_empty")]
    queued: &'a [DeviceSummary],
    #[serde(rename = "IN_PROGRESS", skip_serializing_if = "<[_]>::is_empty")]
    in_progress: &'a [DeviceSummary],
}

impl<'a> Jobs<'a> {
    fn of(pending: &'a PendingJobs) -> Jobs<'a> {
        Jobs {
            queued: &pending.queued_jobs,
            in_progress: &pending.in_progress_jobs,
        }
    }
}

/// JobExecutionsChanged (`notify`).
#[derive(Serialize)]
struct JobsChanged<'a> {
    timestamp: i64,
    jobs: Jobs<'a>,
}

/// NextJobExecutionChanged (`notify-next`, `notify-next-namespace-{ns}`).
#[derive(Serialize)]
struct NextChanged<'a> {
    timestamp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    execution: Option<&'a DeviceExecution>,
}

/// sprig's body for `{jobId}/notify-namespace-{ns}/` (AWS documents none).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JobChanged<'a> {
    timestamp: i64,
    job_id: &'a str,
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    execution: Option<&'a DeviceExecution>,
    jobs: Jobs<'a>,
}

/// What a body is first given room for: a notification with one execution and its job document is a
/// few hundred bytes (one allocation, not the four or five of a vector grown from empty).
const BODY_ROOM: usize = 512;

fn to_bytes(body: &impl Serialize) -> Bytes {
    let mut out = Vec::with_capacity(BODY_ROOM);
    // These types hold strings, numbers and JSON values only: serializing cannot fail.
    if serde_json::to_writer(&mut out, body).is_err() {
        out.clear();
    }
    Bytes::from(out)
}

pub(super) fn jobs_changed(timestamp: i64, pending: &PendingJobs) -> Bytes {
    to_bytes(&JobsChanged {
        timestamp,
        jobs: Jobs::of(pending),
    })
}

pub(super) fn next_changed(timestamp: i64, next: Option<&DeviceExecution>) -> Bytes {
    to_bytes(&NextChanged {
        timestamp,
        execution: next,
    })
}

pub(super) fn job_changed(
    timestamp: i64,
    job_id: &str,
    kind: JobEventKind,
    execution: Option<&DeviceExecution>,
    pending: &PendingJobs,
) -> Bytes {
    to_bytes(&JobChanged {
        timestamp,
        job_id,
        event: kind.as_str(),
        execution,
        jobs: Jobs::of(pending),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn summary(job_id: &str) -> DeviceSummary {
        DeviceSummary {
            job_id: job_id.into(),
            queued_at: 1,
            started_at: None,
            last_updated_at: 1,
            version_number: 1,
            execution_number: 1,
        }
    }

    fn json(bytes: Bytes) -> Value {
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn empty_lists_and_missing_executions_are_left_out() {
        let none = PendingJobs::default();
        assert_eq!(
            json(jobs_changed(7, &none)),
            json!({"timestamp": 7, "jobs": {}})
        );
        assert_eq!(json(next_changed(7, None)), json!({"timestamp": 7}));
        let queued = PendingJobs {
            in_progress_jobs: vec![],
            queued_jobs: vec![summary("j1")],
        };
        let body = json(job_changed(7, "j1", JobEventKind::Canceled, None, &queued));
        assert_eq!(body["event"], "CANCELED");
        assert_eq!(body["jobId"], "j1");
        assert!(body.get("execution").is_none());
        assert_eq!(body["jobs"]["QUEUED"][0]["jobId"], "j1");
        assert!(body["jobs"].get("IN_PROGRESS").is_none());
    }
}
