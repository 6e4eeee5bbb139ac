//! Device request topics: which API a topic under `$aws/things/{thing}/jobs/` names, and which topics are
//! not requests at all (replies and notifications, which the service's own subscription also receives).

use crate::jobs::device::{DeviceError, DeviceErrorCode, JobTarget};

/// The prefix of every thing's reserved topics.
pub(super) const THINGS_PREFIX: &str = "$aws/things/";

/// The filter the service subscribes to: every thing's jobs topics.
pub(super) const REQUEST_FILTER: &str = "$aws/things/+/jobs/#";

/// The Jobs device API operation a topic names. `namespace` is `None` on the plain topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Api {
    /// `jobs/get`: GetPendingJobExecutions.
    GetPending,
    /// `jobs/start-next`: StartNextPendingJobExecution.
    StartNext,
    /// `jobs/{jobId|$next}[/namespace-{ns}]/get`: DescribeJobExecution.
    Describe {
        namespace: Option<String>,
        target: JobTarget,
    },
    /// `jobs/{jobId}[/namespace-{ns}]/update`: UpdateJobExecution.
    Update {
        namespace: Option<String>,
        job_id: String,
    },
}

impl Api {
    /// AWS's name for the operation (the metrics' label).
    pub(super) fn operation(&self) -> &'static str {
        match self {
            Api::GetPending => "GetPendingJobExecutions",
            Api::StartNext => "StartNextPendingJobExecution",
            Api::Describe { .. } => "DescribeJobExecution",
            Api::Update { .. } => "UpdateJobExecution",
        }
    }
}

/// A message that must be answered: whose it is, and the API it names or why it names none.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Request {
    pub thing: String,
    pub api: Result<Api, DeviceError>,
}

/// The thing a request topic belongs to (`$aws/things/{thing}/…`); empty for any other topic.
pub(super) fn thing_of(topic: &str) -> &str {
    topic
        .strip_prefix(THINGS_PREFIX)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default()
}

/// Reads a topic the service received. `None` means "not a request: never answer it" — a reply
/// (`…/accepted`, `…/rejected`, ours included), a notification, or a topic outside `jobs/`. Answering those
/// would make the service reply to itself, or to the notifier, forever.
pub(super) fn parse_topic(topic: &str) -> Option<Request> {
    let (thing, rest) = topic.strip_prefix(THINGS_PREFIX)?.split_once('/')?;
    if thing.is_empty() || topic.ends_with("/accepted") || topic.ends_with("/rejected") {
        return None;
    }
    let api = match rest.strip_prefix("jobs/") {
        Some(path) => route(topic, path)?,
        // `jobs/#` also matches the parent level `jobs` itself: a request topic of no API.
        None if rest == "jobs" => Err(invalid_topic(topic)),
        None => return None,
    };
    Some(Request {
        thing: thing.to_owned(),
        api,
    })
}

/// Routes `path`, the part of `topic` after `jobs/`; `None` for notification topics.
fn route(topic: &str, path: &str) -> Option<Result<Api, DeviceError>> {
    let segments: Vec<&str> = path.split('/').collect();
    let api = match segments.as_slice() {
        ["get"] => Ok(Api::GetPending),
        ["start-next"] => Ok(Api::StartNext),
        [notification] if is_notification(notification) => return None,
        // AWS documents the per-job notification topic with a trailing slash: `{jobId}/notify-namespace-{ns}/`.
        [_, notification] | [_, notification, ""]
            if notification.starts_with("notify-namespace-") =>
        {
            return None
        }
        [job, "get"] => describe(job, None),
        [job, "update"] => update(job, None),
        [job, scope, operation] => match scope.strip_prefix("namespace-") {
            Some(ns) => match *operation {
                "get" => describe(job, Some(ns)),
                "update" => update(job, Some(ns)),
                _ => Err(invalid_topic(topic)),
            },
            None => Err(invalid_topic(topic)),
        },
        _ => Err(invalid_topic(topic)),
    };
    Some(api)
}

fn is_notification(segment: &str) -> bool {
    segment == "notify" || segment == "notify-next" || segment.starts_with("notify-next-namespace-")
}

fn describe(job: &str, namespace: Option<&str>) -> Result<Api, DeviceError> {
    let target = if job == "$next" {
        JobTarget::Next
    } else {
        JobTarget::Id(job_id(job)?)
    };
    Ok(Api::Describe {
        namespace: namespace.map(namespace_id).transpose()?,
        target,
    })
}

fn update(job: &str, namespace: Option<&str>) -> Result<Api, DeviceError> {
    if job == "$next" {
        return Err(invalid_request(
            "jobId: $next names an execution only for get; update needs a job id",
        ));
    }
    Ok(Api::Update {
        namespace: namespace.map(namespace_id).transpose()?,
        job_id: job_id(job)?,
    })
}

fn job_id(id: &str) -> Result<String, DeviceError> {
    checked_id("jobId", id)
}

fn namespace_id(ns: &str) -> Result<String, DeviceError> {
    checked_id("namespaceId", ns)
}

/// AWS's pattern for job and namespace ids: `[a-zA-Z0-9_-]{1,64}`.
fn checked_id(field: &str, id: &str) -> Result<String, DeviceError> {
    let valid = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(id.to_owned())
    } else {
        Err(invalid_request(format!(
            "{field}: \"{id}\" must be 1-64 characters of [a-zA-Z0-9_-]"
        )))
    }
}

fn invalid_request(message: impl Into<String>) -> DeviceError {
    DeviceError::new(DeviceErrorCode::InvalidRequest, message)
}

fn invalid_topic(topic: &str) -> DeviceError {
    DeviceError::new(
        DeviceErrorCode::InvalidTopic,
        format!("{topic} is not a Jobs API topic"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(topic: &str) -> Api {
        let request = parse_topic(topic).unwrap_or_else(|| panic!("{topic} ignored"));
        assert_eq!(request.thing, "t-1");
        request.api.unwrap_or_else(|e| panic!("{topic}: {e}"))
    }

    fn code(topic: &str) -> DeviceErrorCode {
        let request = parse_topic(topic).unwrap_or_else(|| panic!("{topic} ignored"));
        request.api.unwrap_err().code
    }

    #[test]
    fn plain_topics_name_their_api() {
        assert_eq!(api("$aws/things/t-1/jobs/get"), Api::GetPending);
        assert_eq!(api("$aws/things/t-1/jobs/start-next"), Api::StartNext);
        assert_eq!(
            api("$aws/things/t-1/jobs/j_1/get"),
            Api::Describe {
                namespace: None,
                target: JobTarget::Id("j_1".into())
            }
        );
        assert_eq!(
            api("$aws/things/t-1/jobs/$next/get"),
            Api::Describe {
                namespace: None,
                target: JobTarget::Next
            }
        );
        assert_eq!(
            api("$aws/things/t-1/jobs/j-1/update"),
            Api::Update {
                namespace: None,
                job_id: "j-1".into()
            }
        );
        // Job ids that look like API words are still job ids in the job position.
        assert_eq!(
            api("$aws/things/t-1/jobs/get/get"),
            Api::Describe {
                namespace: None,
                target: JobTarget::Id("get".into())
            }
        );
    }

    #[test]
    fn namespaced_topics_carry_their_namespace() {
        assert_eq!(
            api("$aws/things/t-1/jobs/$next/namespace-aws-gg-deployment/get"),
            Api::Describe {
                namespace: Some("aws-gg-deployment".into()),
                target: JobTarget::Next
            }
        );
        assert_eq!(
            api("$aws/things/t-1/jobs/j1/namespace-acme/get"),
            Api::Describe {
                namespace: Some("acme".into()),
                target: JobTarget::Id("j1".into())
            }
        );
        assert_eq!(
            api("$aws/things/t-1/jobs/j1/namespace-acme/update"),
            Api::Update {
                namespace: Some("acme".into()),
                job_id: "j1".into()
            }
        );
    }

    #[test]
    fn replies_and_notifications_are_never_answered() {
        for topic in [
            "$aws/things/t-1/jobs/get/accepted",
            "$aws/things/t-1/jobs/get/rejected",
            "$aws/things/t-1/jobs/start-next/accepted",
            "$aws/things/t-1/jobs/j1/update/rejected",
            "$aws/things/t-1/jobs/$next/namespace-ns/get/accepted",
            "$aws/things/t-1/jobs/frobnicate/rejected",
            "$aws/things/t-1/jobs/rejected",
            "$aws/things/t-1/jobs/notify",
            "$aws/things/t-1/jobs/notify-next",
            "$aws/things/t-1/jobs/notify-next-namespace-aws-gg-deployment",
            "$aws/things/t-1/jobs/j1/notify-namespace-acme/",
            "$aws/things/t-1/jobs/j1/notify-namespace-acme",
            "$aws/things/t-1/shadow/update",
            "$aws/events/presence/connected/t-1",
            "$sprig/control/op/DeleteJob",
            "$aws/things//jobs/get",
        ] {
            assert_eq!(parse_topic(topic), None, "{topic}");
        }
    }

    #[test]
    fn unknown_topics_are_invalid_topic() {
        for topic in [
            "$aws/things/t-1/jobs",
            "$aws/things/t-1/jobs/frobnicate",
            "$aws/things/t-1/jobs/",
            "$aws/things/t-1/jobs/j1/delete",
            "$aws/things/t-1/jobs/j1/namespace-ns/delete",
            "$aws/things/t-1/jobs/j1/scope-ns/get",
            "$aws/things/t-1/jobs/start-next/namespace-ns",
            "$aws/things/t-1/jobs/j1/namespace-ns/get/more",
        ] {
            assert_eq!(code(topic), DeviceErrorCode::InvalidTopic, "{topic}");
        }
        let message = parse_topic("$aws/things/t-1/jobs/frobnicate")
            .unwrap()
            .api
            .unwrap_err()
            .message;
        assert!(
            message.contains("$aws/things/t-1/jobs/frobnicate"),
            "{message}"
        );
    }

    #[test]
    fn malformed_ids_are_invalid_request() {
        let long = "x".repeat(65);
        for topic in [
            "$aws/things/t-1/jobs/j.1/get".to_owned(),
            "$aws/things/t-1/jobs//get".to_owned(),
            format!("$aws/things/t-1/jobs/{long}/update"),
            "$aws/things/t-1/jobs/$next/update".to_owned(),
            "$aws/things/t-1/jobs/$nxt/get".to_owned(),
            "$aws/things/t-1/jobs/j1/namespace-/get".to_owned(),
            "$aws/things/t-1/jobs/j1/namespace-a:b/update".to_owned(),
            "$aws/things/t-1/jobs/$next/namespace-ns/update".to_owned(),
        ] {
            assert_eq!(code(&topic), DeviceErrorCode::InvalidRequest, "{topic}");
        }
        assert_eq!(
            api(&format!("$aws/things/t-1/jobs/{}/get", "x".repeat(64))),
            Api::Describe {
                namespace: None,
                target: JobTarget::Id("x".repeat(64))
            }
        );
    }

    #[test]
    fn replies_go_to_the_thing_of_the_request_topic() {
        assert_eq!(thing_of("$aws/things/pump-1/jobs/get"), "pump-1");
        assert_eq!(thing_of("$sprig/control/x/DeleteJob"), "");
    }
}
