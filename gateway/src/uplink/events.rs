//! What goes up to the fleet, as topics and JSON bodies: the jobs' and executions' status changes, the
//! recoveries' ends and the presence events, under this gateway's prefix. Pure: the connection is
//! `super`'s.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::auth::PRESENCE_PREFIX;
use crate::jobs::StatusChange;

/// A job that no longer exists (its deletion finished), or an execution removed on its own
/// (DeleteJobExecution), is reported with this status.
pub const DELETED: &str = "DELETED";

/// `{prefix}/events/jobs/{jobId}`, `{prefix}/events/executions/{jobId}/{thingName}` or
/// `{prefix}/events/recoveries/{recoveryId}`, and its body. A recovery's fields are named as
/// ListRecoveries names them (its id a string, as there).
pub fn status_change(prefix: &str, change: &StatusChange) -> (String, Bytes) {
    let (topic, body) = match change {
        StatusChange::Job {
            job_id,
            namespace_id,
            status,
            timestamp,
        } => {
            let mut body = Map::new();
            body.insert("jobId".into(), json!(job_id));
            body.insert(
                "status".into(),
                json!(status.map_or(DELETED, |s| s.as_str())),
            );
            if let Some(ns) = namespace_id {
                body.insert("namespaceId".into(), json!(ns));
            }
            body.insert("timestamp".into(), json!(timestamp));
            (format!("{prefix}/events/jobs/{job_id}"), body)
        }
        StatusChange::Execution {
            job_id,
            namespace_id,
            thing_name,
            status,
            status_details,
            version_number,
            timestamp,
        } => {
            let mut body = Map::new();
            body.insert("jobId".into(), json!(job_id));
            body.insert("thingName".into(), json!(thing_name));
            body.insert(
                "status".into(),
                json!(status.map_or(DELETED, |s| s.as_str())),
            );
            body.insert("statusDetails".into(), json!(status_details));
            body.insert("versionNumber".into(), json!(version_number));
            if let Some(ns) = namespace_id {
                body.insert("namespaceId".into(), json!(ns));
            }
            body.insert("timestamp".into(), json!(timestamp));
            (
                format!("{prefix}/events/executions/{job_id}/{thing_name}"),
                body,
            )
        }
        StatusChange::Recovery {
            recovery_id,
            job_id,
            namespace_id,
            thing_name,
            reason,
            status,
            attempts,
            failures,
            last_error,
            timestamp,
        } => {
            let mut body = Map::new();
            body.insert("recoveryId".into(), json!(recovery_id.to_string()));
            body.insert("jobId".into(), json!(job_id));
            body.insert("thingName".into(), json!(thing_name));
            if let Some(ns) = namespace_id {
                body.insert("namespaceId".into(), json!(ns));
            }
            body.insert("reason".into(), json!(reason.as_str()));
            body.insert("status".into(), json!(status.as_str()));
            body.insert("attempts".into(), json!(attempts));
            body.insert("failures".into(), json!(failures));
            if let Some(error) = last_error {
                body.insert("lastError".into(), json!(error));
            }
            body.insert("timestamp".into(), json!(timestamp));
            (format!("{prefix}/events/recoveries/{recovery_id}"), body)
        }
    };
    let body = serde_json::to_vec(&Value::Object(body)).unwrap_or_default();
    (topic, Bytes::from(body))
}

/// A local presence event (`$aws/events/presence/{kind}/{clientId}`) as it goes up:
/// `{prefix}/events/presence/{kind}/{clientId}`, same body. `None` for any other topic.
pub fn presence(prefix: &str, topic: &str) -> Option<String> {
    let rest = topic.strip_prefix(PRESENCE_PREFIX)?;
    Some(format!("{prefix}/events/presence/{rest}"))
}

/// `{prefix}/status`, retained: `{"status":"online"|"offline","clientId","timestamp"}`.
pub fn status(prefix: &str, client_id: &str, online: bool, now_ms: i64) -> (String, Bytes) {
    let body = json!({
        "status": if online { "online" } else { "offline" },
        "clientId": client_id,
        "timestamp": now_ms,
    });
    (format!("{prefix}/status"), Bytes::from(body.to_string()))
}

/// The operation of a control request on `{prefix}/control/{Operation}`; replies and other topics:
/// `None`.
pub fn control_operation<'t>(prefix: &str, topic: &'t str) -> Option<&'t str> {
    let operation = topic.strip_prefix(prefix)?.strip_prefix("/control/")?;
    (!operation.is_empty() && !operation.contains('/')).then_some(operation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ExecutionStatus, JobStatus, RecoveryReason, RecoveryState};

    fn body(bytes: &Bytes) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn job_changes_go_to_the_jobs_topic_and_a_removed_job_reads_deleted() {
        let change = StatusChange::Job {
            job_id: "j1".into(),
            namespace_id: Some("acme".into()),
            status: Some(JobStatus::DeletionInProgress),
            timestamp: 17,
        };
        let (topic, payload) = status_change("sprig/gw", &change);
        assert_eq!(topic, "sprig/gw/events/jobs/j1");
        assert_eq!(
            body(&payload),
            json!({"jobId": "j1", "status": "DELETION_IN_PROGRESS", "namespaceId": "acme", "timestamp": 17})
        );
        let gone = StatusChange::Job {
            job_id: "j1".into(),
            namespace_id: None,
            status: None,
            timestamp: 18,
        };
        let (_, payload) = status_change("p", &gone);
        assert_eq!(
            body(&payload),
            json!({"jobId": "j1", "status": "DELETED", "timestamp": 18})
        );
    }

    #[test]
    fn execution_changes_name_the_job_and_the_thing() {
        let change = StatusChange::Execution {
            job_id: "j1".into(),
            namespace_id: None,
            thing_name: "t1".into(),
            status: Some(ExecutionStatus::InProgress),
            status_details: [("step".to_owned(), "2".to_owned())].into(),
            version_number: 3,
            timestamp: 5,
        };
        let (topic, payload) = status_change("p", &change);
        assert_eq!(topic, "p/events/executions/j1/t1");
        assert_eq!(
            body(&payload),
            json!({"jobId": "j1", "thingName": "t1", "status": "IN_PROGRESS",
                   "statusDetails": {"step": "2"}, "versionNumber": 3, "timestamp": 5})
        );
        let removed = StatusChange::Execution {
            job_id: "j1".into(),
            namespace_id: None,
            thing_name: "t1".into(),
            status: None,
            status_details: Default::default(),
            version_number: 3,
            timestamp: 5,
        };
        let (topic, payload) = status_change("p", &removed);
        assert_eq!(topic, "p/events/executions/j1/t1");
        assert_eq!(body(&payload)["status"], "DELETED");
    }

    #[test]
    fn a_recovery_that_ended_goes_to_its_own_topic_named_as_list_recoveries_names_it() {
        let change = StatusChange::Recovery {
            recovery_id: 12,
            job_id: "j1".into(),
            namespace_id: Some("acme".into()),
            thing_name: "t1".into(),
            reason: RecoveryReason::JobDeleted,
            status: RecoveryState::Failed,
            attempts: 3,
            failures: 2,
            last_error: Some("gave up after 3 attempts".into()),
            timestamp: 9,
        };
        let (topic, payload) = status_change("p", &change);
        assert_eq!(topic, "p/events/recoveries/12");
        assert_eq!(
            body(&payload),
            json!({"recoveryId": "12", "jobId": "j1", "thingName": "t1", "namespaceId": "acme",
                   "reason": "JOB_DELETED", "status": "FAILED", "attempts": 3, "failures": 2,
                   "lastError": "gave up after 3 attempts", "timestamp": 9})
        );
        let recovered = StatusChange::Recovery {
            recovery_id: 13,
            job_id: "j2".into(),
            namespace_id: None,
            thing_name: "t2".into(),
            reason: RecoveryReason::JobForceCanceled,
            status: RecoveryState::Recovered,
            attempts: 1,
            failures: 0,
            last_error: None,
            timestamp: 10,
        };
        let (_, payload) = status_change("p", &recovered);
        assert_eq!(
            body(&payload),
            json!({"recoveryId": "13", "jobId": "j2", "thingName": "t2", "reason": "JOB_FORCE_CANCELED",
                   "status": "RECOVERED", "attempts": 1, "failures": 0, "timestamp": 10})
        );
    }

    #[test]
    fn presence_and_control_topics_map_under_the_prefix() {
        assert_eq!(
            presence("p", "$aws/events/presence/connected/d1").as_deref(),
            Some("p/events/presence/connected/d1")
        );
        assert_eq!(presence("p", "$aws/things/d1/jobs/get"), None);
        assert_eq!(
            control_operation("a/b", "a/b/control/DeleteJob"),
            Some("DeleteJob")
        );
        assert_eq!(
            control_operation("a/b", "a/b/control/DeleteJob/accepted"),
            None
        );
        assert_eq!(control_operation("a/b", "a/bc/control/DeleteJob"), None);
        assert_eq!(control_operation("a/b", "a/b/control/"), None);
    }
}
