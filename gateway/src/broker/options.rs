//! A connection's subscription options (MQTT 5 §3.8.3.1), which rumqttd 0.20's router takes but ignores:
//! No Local, Retain As Published and Retain Handling are applied by the connection's writer to what the
//! router forwards, by the filters of the connection that match its topic (the router does not say which
//! filter a message came for). When several match, a message is dropped as no-local, or as a retained
//! message not wanted, only if every matching filter says so, and keeps its retain flag if one asks.

use rumqttd::protocol::{Filter, RetainForwardRule};

/// The options of one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct SubOptions {
    pub(crate) no_local: bool,
    pub(crate) retain_as_published: bool,
    /// Retain Handling 2: no retained messages when subscribing.
    pub(crate) no_retained: bool,
}

impl SubOptions {
    pub(crate) fn of(filter: &Filter) -> SubOptions {
        SubOptions {
            no_local: filter.nolocal,
            retain_as_published: filter.preserve_retain,
            no_retained: filter.retain_forward_rule == RetainForwardRule::Never,
        }
    }
}

/// The routed filters (external form) of one connection, with their options.
#[derive(Debug, Default)]
pub(crate) struct ConnectionOptions {
    filters: Vec<(String, SubOptions)>,
}

impl ConnectionOptions {
    /// The options of a resumed session's filters.
    pub(crate) fn resumed(filters: Vec<(String, SubOptions)>) -> ConnectionOptions {
        ConnectionOptions { filters }
    }

    pub(crate) fn set(&mut self, filter: &str, options: SubOptions) {
        match self.filters.iter_mut().find(|(f, _)| f == filter) {
            Some((_, held)) => *held = options,
            None => self.filters.push((filter.to_owned(), options)),
        }
    }

    pub(crate) fn remove(&mut self, filter: &str) {
        self.filters.retain(|(f, _)| f != filter);
    }

    /// How a message on `topic` (external form) is delivered: the options of the matching filters taken
    /// together (see the module's doc); the defaults when none matches (a resumed session's filters).
    pub(crate) fn for_topic(&self, topic: &str) -> SubOptions {
        let mut matching = self
            .filters
            .iter()
            .filter(|(f, _)| crate::topic_filter::matches(topic, f))
            .map(|(_, o)| *o)
            .peekable();
        if matching.peek().is_none() {
            return SubOptions::default();
        }
        matching.fold(
            SubOptions {
                no_local: true,
                retain_as_published: false,
                no_retained: true,
            },
            |all, o| SubOptions {
                no_local: all.no_local && o.no_local,
                retain_as_published: all.retain_as_published || o.retain_as_published,
                no_retained: all.no_retained && o.no_retained,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_filters_drop_a_message_only_when_all_say_so() {
        let mut options = ConnectionOptions::default();
        let no_local = SubOptions {
            no_local: true,
            ..SubOptions::default()
        };
        options.set("a/#", no_local);
        assert!(options.for_topic("a/b").no_local);
        options.set("a/+", SubOptions::default());
        assert!(!options.for_topic("a/b").no_local);
        options.remove("a/+");
        assert!(options.for_topic("a/b").no_local);
        assert_eq!(options.for_topic("b"), SubOptions::default());
    }
}
