//! MQTT topic names and topic filters as pure functions: is a filter well formed, does a filter match a
//! topic, does one filter contain another.
//!
//! Shared by the broker (direct delivery checks a topic against a client's granted filters) and by the
//! topic rules of [`crate::auth`] (a PUBLISH is allowed when a rule's pattern matches its topic, a SUBSCRIBE
//! when a rule's pattern contains its filter), so both read MQTT's matching rules from one place. All
//! functions take topics and filters in their external form (`$aws/...`, as clients write them).

/// Why a string is not a well-formed topic filter (MQTT 3.1.1 and 5, section 4.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("must not be empty")]
    Empty,
    #[error("must not contain the NUL character (U+0000)")]
    Nul,
    #[error("`#` must be alone in the last level (`a/#`, not `a/#/b` or `a/b#`)")]
    MisplacedMultiLevel,
    #[error("`+` must be alone in its level (`a/+/b`, not `a/b+`)")]
    MisplacedSingleLevel,
}

/// Checks that `filter` is a well-formed MQTT topic filter: not empty, no NUL, `#` only alone in the last
/// level, `+` only alone in its level.
pub fn check_filter(filter: &str) -> Result<(), FilterError> {
    if filter.is_empty() {
        return Err(FilterError::Empty);
    }
    if filter.contains('\0') {
        return Err(FilterError::Nul);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        if level.contains('#') && !(level == "#" && last) {
            return Err(FilterError::MisplacedMultiLevel);
        }
        if level.contains('+') && level != "+" {
            return Err(FilterError::MisplacedSingleLevel);
        }
    }
    Ok(())
}

/// True when `topic` may be published to: not empty, no NUL and no wildcard characters.
pub fn is_topic_name(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// MQTT topic matching: `+` matches one level, a final `#` this level and all below (`a/#` matches `a`).
/// A filter starting with a wildcard does not match a topic starting with `$` (MQTT 3.1.1 4.7.2, MQTT 5
/// 4.7.2). `topic` must hold no wildcard.
pub fn matches(topic: &str, filter: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    // Bytes, not chars ('/' is one byte in UTF-8): the fan-out matches every notification this way.
    let mut topic_levels = topic.as_bytes().split(|&b| b == b'/');
    for f in filter.as_bytes().split(|&b| b == b'/') {
        if f == b"#" {
            return true;
        }
        match topic_levels.next() {
            Some(t) if f == b"+" || f == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

/// True when every topic that `inner` matches is also matched by `outer` (both well-formed filters): a
/// client subscribed to `inner` can receive nothing that a subscription to `outer` would not.
///
/// Level by level: a literal is within an equal literal or `+`; `+` only within `+` (it matches any level,
/// a literal matches one); `#` within `#` (it also matches the parent level, which no other final level
/// does). Two consequences of MQTT's rules are easy to miss:
/// - a filter that is `#` alone behaves as `+/#` (and `/#` as `/+/#`): the "parent level" of that `#`
///   would be the empty topic, which is not a topic (MQTT 4.7.3), so `#` and `+/#` match the same topics
///   and contain each other;
/// - a filter starting with a wildcard matches no topic starting with `$`, so it contains no filter whose
///   first level is a literal starting with `$` (`#` does not contain `$SYS/#`).
pub fn contains(outer: &str, inner: &str) -> bool {
    if inner.starts_with('$') && outer.starts_with(['+', '#']) {
        return false;
    }
    // Where the parent level of `#` would be the empty topic, `#` matches exactly what `+/#` does.
    let inner = match inner {
        "#" => "+/#",
        "/#" => "/+/#",
        other => other,
    };
    let mut outer_levels = outer.split('/');
    let mut inner_levels = inner.split('/');
    loop {
        match (outer_levels.next(), inner_levels.next()) {
            // Matches this level and everything below, whatever `inner` has left.
            (Some("#"), _) => return true,
            // `inner` matches its parent level and below; only an outer `#` (above) covers that.
            (_, Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(o), Some(i)) if o == i => {}
            (None, None) => return true,
            // Different literals, `+` against a literal, or one filter longer than the other (a longer
            // `outer` ending in `#` was taken by the first arm on the next level: `a/#` contains `a`).
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_as_mqtt_says() {
        let topic = "$aws/things/d1/jobs/notify";
        assert!(matches(topic, topic));
        assert!(matches(topic, "$aws/things/d1/jobs/#"));
        assert!(matches(topic, "$aws/things/d1/#"));
        assert!(matches(topic, "$aws/things/+/jobs/+"));
        assert!(matches(topic, "$aws/#"));
        assert!(!matches(topic, "+/things/d1/jobs/notify"));
        assert!(!matches(topic, "#"));
        assert!(!matches(topic, "+/#"));
        assert!(!matches(topic, "$aws/things/d1/jobs/notify-next"));
        assert!(!matches(topic, "$aws/things/d1/jobs"));
        assert!(matches(topic, "$aws/things/d1/jobs/notify/#"));
        assert!(!matches(topic, "$aws/things/d2/jobs/#"));
        assert!(!matches(topic, "$aws/things/d1/jobs/+/+"));
        // `#` also matches its parent level; `+` matches exactly one, possibly empty, level.
        assert!(matches("$aws/things/d1/jobs", "$aws/things/d1/jobs/#"));
        assert!(matches("a/b", "#"));
        assert!(matches("a/b", "+/+"));
        assert!(matches("a/", "a/+"));
        assert!(matches("/b", "+/b"));
        assert!(!matches("a", "a/+"));
        assert!(!matches("a/b/c", "a/+"));
        // The trailing slash of the per-job topic is a level of its own.
        let job = "$aws/things/d1/jobs/j1/notify-namespace-acme/";
        assert!(matches(job, "$aws/things/d1/jobs/+/notify-namespace-acme/"));
        assert!(matches(
            job,
            "$aws/things/d1/jobs/+/notify-namespace-acme/#"
        ));
        assert!(!matches(job, "$aws/things/d1/jobs/+/notify-namespace-acme"));
        // Case matters.
        assert!(!matches(topic, "$AWS/things/d1/jobs/notify"));
    }

    #[test]
    fn well_formed_filters_are_told_from_malformed_ones() {
        for good in [
            "#",
            "+",
            "a/#",
            "+/+",
            "a/+/b",
            "/",
            "a//b",
            "dt/pump-1/#",
            "$aws/x",
        ] {
            assert_eq!(check_filter(good), Ok(()), "{good}");
        }
        assert_eq!(check_filter(""), Err(FilterError::Empty));
        assert_eq!(check_filter("a/\0"), Err(FilterError::Nul));
        for bad in ["a/#/b", "#/a", "a#", "a/b#", "##"] {
            assert_eq!(
                check_filter(bad),
                Err(FilterError::MisplacedMultiLevel),
                "{bad}"
            );
        }
        for bad in ["a+", "a/+b", "++", "a/b+/c"] {
            assert_eq!(
                check_filter(bad),
                Err(FilterError::MisplacedSingleLevel),
                "{bad}"
            );
        }
        assert!(is_topic_name("a/b") && is_topic_name("/"));
        assert!(!is_topic_name("") && !is_topic_name("a/+") && !is_topic_name("a/#"));
        assert!(!is_topic_name("a\0"));
    }

    #[test]
    fn a_filter_contains_itself() {
        for f in [
            "#", "+", "a", "a/b", "a/+", "a/#", "+/#", "dt/+/#", "/", "a//b", "$aws/x/#",
        ] {
            assert!(contains(f, f), "{f}");
        }
    }

    #[test]
    fn plus_covers_one_level_and_hash_the_rest() {
        assert!(contains("dt/+/#", "dt/pump-1/#"));
        assert!(contains("#", "dt/+/#"));
        assert!(contains("a/#", "a/+"));
        assert!(contains("+/+", "a/+"));
        assert!(contains("a/+", "a/b"));
        assert!(contains("a/#", "a/b/c"));
        assert!(contains("a/+/c", "a/b/c"));
        assert!(contains("+", "a"));
        // `+` matches the empty level too, so it covers it.
        assert!(contains("a/+", "a/"));
        assert!(contains("+/b", "/b"));
    }

    #[test]
    fn a_wider_filter_is_not_within_a_narrower_one() {
        // The rule `dt/${thing}/#` for pump-1 does not grant everyone's telemetry.
        assert!(!contains("dt/pump-1/#", "dt/+/#"));
        assert!(!contains("dt/pump-1/#", "dt/pump-2/#"));
        assert!(!contains("a/+", "a/#"));
        assert!(!contains("a/b", "a/+"));
        assert!(!contains("a/+", "a/b/c"));
        assert!(!contains("a", "a/b"));
        assert!(!contains("a/b", "a"));
        assert!(!contains("+", "+/+"));
        assert!(!contains("+/+", "+"));
        assert!(!contains("a/#", "b/#"));
        // `a/+/#` does not match `a`, which `a/#` does.
        assert!(!contains("a/+/#", "a/#"));
        assert!(!contains("+", "#"));
        assert!(!contains("a/#", "#"));
    }

    #[test]
    fn hash_also_matches_its_parent_level() {
        // `a/#` matches `a` itself: a filter ending in `#` covers the parent.
        assert!(matches("a", "a/#"));
        assert!(contains("a/#", "a"));
        assert!(contains("a/b/#", "a/b"));
        // `+/#` matches `a` too (`+` takes `a`, `#` its parent level), and everything below it: so it
        // contains `a/#`, and `#` alone, whose parent would be the empty topic that cannot exist.
        assert!(matches("a", "+/#"));
        assert!(contains("+/#", "a/#"));
        assert!(contains("+/#", "#"));
        assert!(contains("#", "+/#"));
        // But `+/+/#` needs two levels: it misses `a`, which `+/#` and `a/#` match.
        assert!(!matches("a", "+/+/#"));
        assert!(!contains("+/+/#", "a/#"));
        assert!(!contains("+/+/#", "#"));
        assert!(contains("+/+/#", "a/b/#"));
        // Likewise `/#`, whose parent would be the empty topic: it needs two levels, the first empty.
        assert!(contains("+/+/#", "/#"));
        assert!(contains("/+/#", "/#"));
        // But the parent of `//#` is `/`, a topic of two empty levels.
        assert!(contains("+/+/#", "//#"));
        assert!(!contains("+/+/+/#", "//#"));
    }

    #[test]
    fn wildcards_at_the_first_level_do_not_cover_dollar_topics() {
        assert!(!contains("#", "$SYS/#"));
        assert!(!contains("+/#", "$aws/things/d1/jobs/notify"));
        assert!(!contains("+/x", "$aws/x"));
        assert!(contains("$aws/#", "$aws/things/+/jobs/#"));
        // A filter starting with a wildcard matches no `$` topic itself, so nothing is lost there.
        assert!(contains("#", "+/x"));
    }

    /// Containment agrees with matching on every topic built from a small alphabet of levels.
    #[test]
    fn containment_agrees_with_matching_on_small_topics() {
        let levels = ["a", "b", "", "$s"];
        let mut topics = Vec::new();
        for n in 1..=4 {
            let mut current = vec![String::new()];
            for depth in 0..n {
                current = current
                    .iter()
                    .flat_map(|prefix| {
                        levels.iter().map(move |l| {
                            if depth == 0 {
                                (*l).to_owned()
                            } else {
                                format!("{prefix}/{l}")
                            }
                        })
                    })
                    .collect();
            }
            topics.extend(current.into_iter().filter(|t| !t.is_empty()));
        }
        let filters = [
            "#", "+", "+/#", "+/+", "+/+/#", "a", "a/#", "a/+", "a/b", "a/+/#", "+/b", "+/b/#",
            "/", "/#", "a/", "//#", "/+/#", "+/+/+", "+/+/+/#", "$s/#", "$s/+", "$s",
        ];
        for outer in filters {
            for inner in filters {
                // Containment claims never lose a topic, and every refusal has a witness (the filters
                // here have at most four levels, so topics of at most four levels show every difference).
                let covered = topics
                    .iter()
                    .all(|t| !matches(t, inner) || matches(t, outer));
                assert_eq!(contains(outer, inner), covered, "{inner} within {outer}");
            }
        }
    }
}
