//! The notification topics of a thing, and which of them a subscription filter covers.

/// A topic that carries a thing's state in one scope (what a resend publishes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StateTopic {
    /// `notify`: the pending list (standard jobs only).
    Jobs,
    /// `notify-next` or `notify-next-namespace-{ns}`: the next pending execution.
    Next,
}

const NEXT_IN_NAMESPACE: &str = "notify-next-namespace-";

/// `$aws/things/{thing}/jobs/notify`.
pub(super) fn notify(thing: &str) -> String {
    format!("$aws/things/{thing}/jobs/notify")
}

/// `$aws/things/{thing}/jobs/notify-next`, or `.../notify-next-namespace-{ns}` in a namespace.
pub(super) fn notify_next(thing: &str, scope: Option<&str>) -> String {
    match scope {
        None => format!("$aws/things/{thing}/jobs/notify-next"),
        Some(ns) => format!("$aws/things/{thing}/jobs/{NEXT_IN_NAMESPACE}{ns}"),
    }
}

/// `$aws/things/{thing}/jobs/{jobId}/notify-namespace-{ns}/`: trailing slash included, as AWS's DeleteJob
/// documentation writes it.
pub(super) fn job_in_namespace(thing: &str, job_id: &str, ns: &str) -> String {
    format!("$aws/things/{thing}/jobs/{job_id}/notify-namespace-{ns}/")
}

/// The state topics of `thing` in a scope.
pub(super) fn state_topics(thing: &str, scope: Option<&str>) -> Vec<(StateTopic, String)> {
    match scope {
        None => vec![
            (StateTopic::Jobs, notify(thing)),
            (StateTopic::Next, notify_next(thing, None)),
        ],
        Some(_) => vec![(StateTopic::Next, notify_next(thing, scope))],
    }
}

/// True when `filter` may cover some topic under `$aws/things/{thing}/jobs/` (a cheap first check).
pub(super) fn covers_jobs_of(filter: &str, thing: &str) -> bool {
    let mut levels = filter.split('/');
    for expected in ["$aws", "things", thing, "jobs"] {
        match levels.next() {
            Some("#") => return true,
            Some(level) if level == expected || level == "+" => {}
            _ => return false,
        }
    }
    levels.next().is_some()
}

/// The scope whose state topic `filter` names in its last level (`notify`, `notify-next`:
/// standard jobs; `notify-next-namespace-{ns}`: that namespace), if it is one of `thing`'s state topics.
pub(super) fn scope_named(filter: &str, thing: &str) -> Option<Option<String>> {
    let levels: Vec<&str> = filter.split('/').collect();
    let [_, _, _, _, last] = levels[..] else {
        return None;
    };
    let scope = match last {
        "notify" | "notify-next" => None,
        _ => Some(last.strip_prefix(NEXT_IN_NAMESPACE)?.to_owned()),
    };
    let topic = match last {
        "notify" => notify(thing),
        _ => notify_next(thing, scope.as_deref()),
    };
    let named = scope.as_ref().is_none_or(|ns| is_namespace_id(ns));
    (named && matches(&topic, filter)).then_some(scope)
}

/// AWS's `namespaceId` pattern: `[a-zA-Z0-9_-]+`.
fn is_namespace_id(ns: &str) -> bool {
    !ns.is_empty()
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
}

/// MQTT topic matching; wildcards in the first level do not match `$` topics (the broker's, which direct
/// delivery uses too).
pub(super) use crate::broker::topic_matches as matches;

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

    #[test]
    fn filters_are_matched_as_mqtt_does() {
        let topic = "$aws/things/d1/jobs/notify";
        assert!(matches(topic, topic));
        assert!(matches(topic, "$aws/things/d1/jobs/#"));
        assert!(matches(topic, "$aws/things/+/jobs/+"));
        assert!(matches(topic, "$aws/#"));
        assert!(!matches(topic, "#"));
        assert!(!matches(topic, "$aws/things/d1/jobs/notify-next"));
        assert!(!matches(topic, "$aws/things/d1/jobs"));
        assert!(matches(
            "$aws/things/d1/jobs/j1/notify-namespace-acme/",
            "$aws/things/d1/jobs/+/notify-namespace-acme/"
        ));
        assert!(!matches(
            "$aws/things/d1/jobs/j1/notify-namespace-acme/",
            "$aws/things/d1/jobs/+/notify-namespace-acme"
        ));
    }

    #[test]
    fn a_filter_names_the_scope_of_its_state_topic() {
        let named = |f| scope_named(f, "d1");
        assert_eq!(named("$aws/things/d1/jobs/notify"), Some(None));
        assert_eq!(named("$aws/things/+/jobs/notify-next"), Some(None));
        assert_eq!(
            named("$aws/things/d1/jobs/notify-next-namespace-acme"),
            Some(Some("acme".into()))
        );
        assert_eq!(named("$aws/things/d2/jobs/notify"), None);
        assert_eq!(named("$aws/things/d1/jobs/#"), None);
        assert_eq!(named("$aws/things/d1/jobs/notify-next-namespace-"), None);
        assert_eq!(named("$aws/things/d1/jobs/get/accepted"), None);
        assert!(covers_jobs_of("$aws/things/d1/jobs/#", "d1"));
        assert!(covers_jobs_of("$aws/things/+/jobs/notify", "d1"));
        assert!(covers_jobs_of("$aws/#", "d1"));
        assert!(!covers_jobs_of("$aws/things/d2/jobs/#", "d1"));
        assert!(!covers_jobs_of("$aws/things/d1/jobs", "d1"));
        assert!(!covers_jobs_of("$sprig/control/op/+/accepted", "op"));
    }
}
