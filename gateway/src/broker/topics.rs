//! Translation between the topics clients use (external form) and the topics the rumqttd router sees
//! (internal form).
//!
//! The router refuses any subscription whose filter starts with `$` (except `$share/`), yet every topic
//! sprig serves starts with `$` (`$aws/things/...`, `$sprig/control/...`). So a leading `$` is hidden
//! behind [`MARKER`] on the way into the router and restored on the way out. Clients may never name a
//! topic that starts with the marker themselves: that would let them reach internal topics directly.

/// Prefix that stands for a leading `$` inside the router.
pub(crate) const MARKER: char = '~';

const SHARE_PREFIX: &str = "$share/";

/// True when a client-supplied topic or filter names the internal form directly (always refused).
pub(crate) fn is_reserved(external: &str) -> bool {
    external.starts_with(MARKER)
}

/// External topic or filter -> the router's form: `$aws/x` -> `~$aws/x`; `$share/g/$aws/x` -> `$share/g/~$aws/x`.
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
        external.to_owned()
    }
}

/// The router's form -> external: `~$aws/x` -> `$aws/x`; anything else is returned unchanged.
pub(crate) fn to_external(internal: &str) -> &str {
    match internal.strip_prefix(MARKER) {
        Some(rest) if rest.starts_with('$') => rest,
        _ => internal,
    }
}

/// MQTT topic matching, shared with the topic rules (see [`crate::topic_filter`]).
pub use crate::topic_filter::matches;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollar_topics_round_trip_and_never_start_with_dollar_inside() {
        for topic in [
            "$aws/things/d1/jobs/notify",
            "$sprig/control/+/+",
            "plain/topic",
        ] {
            let internal = to_internal(topic);
            assert!(!internal.starts_with('$'), "{internal}");
            assert_eq!(to_external(&internal), topic);
        }
        assert_eq!(to_internal("$share/g/$aws/x"), "$share/g/~$aws/x");
        assert!(is_reserved("~$aws/things/d1/jobs/notify"));
        assert!(!is_reserved("$aws/things/d1/jobs/notify"));
    }
}
