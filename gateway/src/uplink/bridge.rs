//! The bridged topics of `[[uplink.topics]]`, as mosquitto's bridge `topic` lines read: a topic is
//! `local_prefix + t` on the local broker and `remote_prefix + t` on the fleet's, for every `t` that the
//! pattern matches; `out` topics go up, `in` topics come down, `both` both. Pure: which topic maps to which.

use crate::config::{Direction, UplinkTopic};
use crate::topic_filter::matches;

/// The configured bridged topics, in the configuration's order (the first match wins).
#[derive(Debug, Clone, Default)]
pub struct Bridge {
    topics: Vec<UplinkTopic>,
}

impl Bridge {
    pub fn new(topics: Vec<UplinkTopic>) -> Bridge {
        Bridge { topics }
    }

    /// The local filters whose publishes go up (`local_prefix + pattern` of `out` and `both` topics).
    pub fn local_filters(&self) -> Vec<String> {
        self.going(Direction::Out)
            .map(|t| format!("{}{}", t.local_prefix, t.pattern))
            .collect()
    }

    /// The fleet's filters to subscribe to, with their QoS (`remote_prefix + pattern` of `in` and `both`).
    pub fn remote_filters(&self) -> Vec<(String, u8)> {
        self.going(Direction::In)
            .map(|t| (format!("{}{}", t.remote_prefix, t.pattern), t.qos))
            .collect()
    }

    /// A local publish on `topic` as it goes up: the fleet's topic and the QoS. `None`: not bridged out.
    pub fn outgoing(&self, topic: &str) -> Option<(String, u8)> {
        self.going(Direction::Out).find_map(|t| {
            let rest = topic.strip_prefix(t.local_prefix.as_str())?;
            matches(rest, &t.pattern).then(|| (format!("{}{rest}", t.remote_prefix), t.qos))
        })
    }

    /// A message from the fleet on `topic` as it is published locally. `None`: not bridged in, or it
    /// would land on a `$` topic, which are sprig's own.
    pub fn incoming(&self, topic: &str) -> Option<String> {
        self.going(Direction::In).find_map(|t| {
            let rest = topic.strip_prefix(t.remote_prefix.as_str())?;
            let local = format!("{}{rest}", t.local_prefix);
            (matches(rest, &t.pattern) && !local.starts_with('$')).then_some(local)
        })
    }

    /// The topics bridged in `direction` (`both` counts for either).
    fn going(&self, direction: Direction) -> impl Iterator<Item = &UplinkTopic> {
        self.topics
            .iter()
            .filter(move |t| t.direction == direction || t.direction == Direction::Both)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(pattern: &str, direction: Direction, local: &str, remote: &str) -> UplinkTopic {
        UplinkTopic {
            pattern: pattern.into(),
            direction,
            qos: 1,
            local_prefix: local.into(),
            remote_prefix: remote.into(),
        }
    }

    #[test]
    fn out_topics_take_the_remote_prefix_in_topics_the_local_one() {
        let bridge = Bridge::new(vec![
            topic("dt/#", Direction::Out, "", "sites/site-7/"),
            topic("cmd/+", Direction::In, "fleet/", "sites/site-7/"),
            topic("both/#", Direction::Both, "l/", "r/"),
        ]);
        assert_eq!(bridge.local_filters(), ["dt/#", "l/both/#"]);
        assert_eq!(
            bridge.remote_filters(),
            [
                ("sites/site-7/cmd/+".to_owned(), 1),
                ("r/both/#".to_owned(), 1)
            ]
        );
        assert_eq!(
            bridge.outgoing("dt/t-1/temp"),
            Some(("sites/site-7/dt/t-1/temp".to_owned(), 1))
        );
        assert_eq!(
            bridge.outgoing("cmd/t-1"),
            None,
            "an in topic does not go out"
        );
        assert_eq!(
            bridge.incoming("sites/site-7/cmd/t-1").as_deref(),
            Some("fleet/cmd/t-1")
        );
        assert_eq!(bridge.incoming("sites/site-7/cmd/t-1/x"), None);
        assert_eq!(
            bridge.incoming("sites/site-7/dt/t-1"),
            None,
            "an out topic does not come in"
        );
        assert_eq!(
            bridge.outgoing("l/both/x"),
            Some(("r/both/x".to_owned(), 1))
        );
        assert_eq!(bridge.incoming("r/both/x").as_deref(), Some("l/both/x"));
        assert_eq!(
            bridge.outgoing("both/x"),
            None,
            "the local prefix is required"
        );
    }

    #[test]
    fn the_first_matching_topic_wins_and_nothing_comes_in_on_a_dollar_topic() {
        let mut first = topic("a/#", Direction::Out, "", "one/");
        first.qos = 0;
        let bridge = Bridge::new(vec![
            first,
            topic("a/b", Direction::Out, "", "two/"),
            topic("x", Direction::In, "$", ""),
        ]);
        assert_eq!(bridge.outgoing("a/b"), Some(("one/a/b".to_owned(), 0)));
        assert_eq!(bridge.incoming("x"), None);
    }
}
