//! Translation between the topics clients use (external form) and the topics the rumqttd router sees
//! (internal form).
//!
//! The router refuses any subscription whose filter starts with `$` (except `$share/`), yet every topic
//! sprig serves starts with `$` (`$aws/things/...`, `$sprig/control/...`). So a leading `$` is hidden
//! behind [`MARKER`] on the way into the router (`$aws/x` -> `~$aws/x`) and restored on the way out. That
//! alone would let a filter that starts with a wildcard (`#`, `+/...`) match `$` topics inside the router,
//! which MQTT forbids (4.7.2) and which would show one device another's `$aws/things/...` traffic. So every
//! other topic and filter moves one level down, under the marker alone (`a/b` -> `~/a/b`, `#` -> `~/#`): a
//! first-level wildcard of a client's filter stays below `~/` and never meets a `~$...` topic.
//! Clients may not name a topic that starts with the marker (it stays reserved, as it starts the gateway's
//! internal client ids too).

/// Prefix that stands for a leading `$` inside the router, and alone the level every other topic is under.
pub(crate) const MARKER: char = '~';

use crate::auth::Identity;

const SHARE_PREFIX: &str = "$share/";
/// The internal level above every topic that does not start with `$`.
const PLAIN_PREFIX: &str = "~/";

/// True when a client-supplied topic or filter names the internal form directly (always refused).
pub(crate) fn is_reserved(external: &str) -> bool {
    external.starts_with(MARKER)
}

/// External topic or filter -> the router's form: `$aws/x` -> `~$aws/x`, `a/b` -> `~/a/b`, `#` -> `~/#`;
/// `$share/g/f` -> `$share/g/` and the form of `f`.
pub(crate) fn to_internal(external: &str) -> String {
    if let Some(rest) = external.strip_prefix(SHARE_PREFIX) {
        if let Some((group, filter)) = rest.split_once('/') {
            return format!("{SHARE_PREFIX}{group}/{}", to_internal(filter));
        }
        return external.to_owned();
    }
    if external.starts_with('$') {
        format!("{MARKER}{external}")
    } else {
        format!("{PLAIN_PREFIX}{external}")
    }
}

/// The router's form -> external: `~$aws/x` -> `$aws/x`, `~/a/b` -> `a/b`; anything else unchanged.
pub(crate) fn to_external(internal: &str) -> &str {
    if let Some(plain) = internal.strip_prefix(PLAIN_PREFIX) {
        return plain;
    }
    match internal.strip_prefix(MARKER) {
        Some(rest) if rest.starts_with('$') => rest,
        _ => internal,
    }
}

/// True when only the gateway sends on `filter` for `owner`, so it is granted by sprig alone and never
/// given to the router: a device's own `$aws/things/{thing}/...` (job notifications, Jobs API replies,
/// recovery commands; no other client may publish or subscribe there), an operator's presence events. The
/// router would keep such a filter forever, one set per device, and match every new topic against it.
pub(crate) fn served_directly(owner: &Identity, filter: &str) -> bool {
    match owner {
        Identity::Device(thing) => filter
            .strip_prefix("$aws/things/")
            .and_then(|rest| rest.strip_prefix(thing.as_str()))
            .is_some_and(|rest| rest.starts_with('/')),
        Identity::Operator(_) => filter.starts_with("$aws/events/"),
    }
}

/// MQTT topic matching, shared with the topic rules (see [`crate::topic_filter`]).
pub use crate::topic_filter::matches;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_and_never_start_with_dollar_inside() {
        for topic in [
            "$aws/things/d1/jobs/notify",
            "$sprig/control/+/+",
            "plain/topic",
            "/leading/empty",
            "#",
        ] {
            let internal = to_internal(topic);
            assert!(!internal.starts_with('$'), "{internal}");
            assert_eq!(to_external(&internal), topic);
        }
        assert_eq!(to_internal("$share/g/$aws/x"), "$share/g/~$aws/x");
        assert_eq!(to_internal("$share/g/a/+"), "$share/g/~/a/+");
        assert!(is_reserved("~$aws/things/d1/jobs/notify"));
        assert!(!is_reserved("$aws/things/d1/jobs/notify"));
    }

    /// Inside the router, a filter that starts with a wildcard never reaches a `$` topic (MQTT 4.7.2).
    #[test]
    fn wildcard_filters_never_match_dollar_topics_inside_the_router() {
        let dollar = to_internal("$aws/things/d1/jobs/get");
        for filter in ["#", "+/#", "+/things/d1/jobs/get", "+/+/+/+/+"] {
            assert!(!matches(&dollar, &to_internal(filter)), "{filter}");
        }
        let plain = to_internal("dt/d1/temp");
        for filter in ["#", "+/#", "+/+/+", "dt/#"] {
            assert!(matches(&plain, &to_internal(filter)), "{filter}");
        }
    }
}
