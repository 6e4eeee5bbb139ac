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

const SHARE_PREFIX: &str = "$share/";
/// The internal level above every topic that does not start with `$`.
const PLAIN_PREFIX: &str = "~/";

/// True when a client-supplied topic or filter names the internal form directly (always refused).
pub(crate) fn is_reserved(external: &str) -> bool {
    external.starts_with(MARKER)
}

/// External topic or filter -> the router's form: `$aws/x` -> `~$aws/x`, `a/b` -> `~/a/b`, `#` -> `~/#`;
/// `$share/g/f` -> `$share/g~{hash of f}/` and the form of `f`: rumqttd 0.20 keeps one state (the
/// cursor, the members) per group name, whatever the filter (`router/routing.rs`, `shared_subscriptions`),
/// while MQTT 5 makes a shared subscription of the group and the filter together.
pub(crate) fn to_internal(external: &str) -> String {
    if let Some(rest) = external.strip_prefix(SHARE_PREFIX) {
        if let Some((group, filter)) = rest.split_once('/') {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            filter.hash(&mut hasher);
            let group = format!("{group}{MARKER}{:016x}", hasher.finish());
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

/// True when sprig serves `filter` itself and never gives it to the router: every `$` filter but a shared
/// subscription's. Only the gateway sends on the `$` filters a client may hold (a device's own
/// `$aws/things/{thing}/...`: job notifications, Jobs API replies, recovery commands; an operator's own
/// `$sprig/control/{clientId}/...` replies and the presence events; topic rules cannot grant `$` topics), and
/// what clients publish on `$` topics goes to the gateway's services (see `taps`). The router would keep
/// every such filter and topic forever, one set per device and per CLI invocation, and match every new
/// topic against them.
pub(crate) fn served_directly(filter: &str) -> bool {
    filter.starts_with('$') && !filter.starts_with(SHARE_PREFIX)
}

/// The client a gateway message on `topic` is for: the device of `$aws/things/{thing}/...` (a device's
/// client id is its thing name), the operator connection of `$sprig/control/{clientId}/...`.
pub(crate) fn addressee(topic: &str) -> Option<&str> {
    let rest = topic
        .strip_prefix("$aws/things/")
        .or_else(|| topic.strip_prefix(crate::auth::CONTROL_PREFIX))?;
    let (client_id, _) = rest.split_once('/')?;
    (!client_id.is_empty()).then_some(client_id)
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
        // One group name per (group, filter) inside the router.
        let (one, other) = (to_internal("$share/g/a/+"), to_internal("$share/g/b"));
        assert!(
            one.starts_with("$share/g~") && one.ends_with("/~/a/+"),
            "{one}"
        );
        assert_ne!(one.split('/').nth(1), other.split('/').nth(1));
        assert_eq!(to_internal("$share/g/a/+"), one);
        assert!(is_reserved("~$aws/things/d1/jobs/notify"));
        assert!(!is_reserved("$aws/things/d1/jobs/notify"));
    }

    #[test]
    fn every_dollar_filter_but_a_shared_one_is_served_by_sprig() {
        for filter in [
            "$aws/things/d1/jobs/#",
            "$sprig/control/cli/+/accepted",
            "$aws/events/#",
        ] {
            assert!(served_directly(filter), "{filter}");
        }
        for filter in ["dt/d1/#", "#", "$share/g/dt/#"] {
            assert!(!served_directly(filter), "{filter}");
        }
    }

    #[test]
    fn a_gateway_message_is_addressed_by_its_topic() {
        assert_eq!(addressee("$aws/things/d1/jobs/notify"), Some("d1"));
        assert_eq!(
            addressee("$sprig/control/cli-7/ListJobs/accepted"),
            Some("cli-7")
        );
        assert_eq!(addressee("$aws/things//jobs/notify"), None);
        assert_eq!(addressee("$aws/events/presence/connected/d1"), None);
        assert_eq!(addressee("dt/d1"), None);
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
