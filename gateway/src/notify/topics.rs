//! The notification topics of a thing. Standard jobs: `$aws/things/{thing}/jobs/notify`
//! (JobExecutionsChanged) when the pending list changed and `.../jobs/notify-next` (NextJobExecutionChanged)
//! when the next pending job changed. A namespace's jobs never those, but `.../jobs/notify-next-namespace-{ns}`
//! when the next changed and, for every event, `.../jobs/{jobId}/notify-namespace-{ns}/`.

const NEXT_IN_NAMESPACE: &str = "notify-next-namespace-";

/// `$aws/things/{thing}/jobs/notify`.
pub(super) fn notify(thing: &str) -> String {
    joined(&["$aws/things/", thing, "/jobs/notify"])
}

/// `$aws/things/{thing}/jobs/notify-next`, or `.../notify-next-namespace-{ns}` in a namespace.
pub(super) fn notify_next(thing: &str, scope: Option<&str>) -> String {
    match scope {
        None => joined(&["$aws/things/", thing, "/jobs/notify-next"]),
        Some(ns) => joined(&["$aws/things/", thing, "/jobs/", NEXT_IN_NAMESPACE, ns]),
    }
}

/// `$aws/things/{thing}/jobs/{jobId}/notify-namespace-{ns}/`: trailing slash included, as AWS's DeleteJob
/// documentation writes it.
pub(super) fn job_in_namespace(thing: &str, job_id: &str, ns: &str) -> String {
    let parts = [
        "$aws/things/",
        thing,
        "/jobs/",
        job_id,
        "/notify-namespace-",
        ns,
        "/",
    ];
    joined(&parts)
}

/// The parts one after the other, in a string allocated once at its size (a fan-out makes a topic per
/// message; `format!` grows its string as it goes).
fn joined(parts: &[&str]) -> String {
    let mut topic = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    parts.iter().for_each(|part| topic.push_str(part));
    topic
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_have_the_documented_forms() {
        assert_eq!(notify("d1"), "$aws/things/d1/jobs/notify");
        assert_eq!(notify_next("d1", None), "$aws/things/d1/jobs/notify-next");
        assert_eq!(
            notify_next("d1", Some("acme")),
            "$aws/things/d1/jobs/notify-next-namespace-acme"
        );
        assert_eq!(
            job_in_namespace("d1", "j1", "acme"),
            "$aws/things/d1/jobs/j1/notify-namespace-acme/"
        );
    }
}
