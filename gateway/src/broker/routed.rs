//! The filters rumqttd's router holds, and their cap (`broker.max_router_filters`).
//!
//! rumqttd 0.20's router never forgets a filter: each one it is given keeps an in-memory log (a few KiB
//! empty, up to `max_segment_size` × `max_segment_count` with traffic) for as long as the process runs, after
//! every subscriber has unsubscribed or left (`router/logs.rs` never removes from `filter_indexes`). Only
//! topic-rule filters reach the router (every `$` filter is sprig's), and one connection holds at most
//! `max_subscriptions_per_connection`; but clients that reconnect with ever new filters would still make it
//! grow without end. So sprig counts the distinct filters it has given the router, and once there are
//! `max_router_filters` of them, a filter the router does not know yet is refused (SUBACK 0x80, MQTT 5:
//! 0x97 quota exceeded) while known ones are still granted. A restart clears the router.
//!
//! The same record says which publishes the router can deliver at all: one on a topic that no filter it
//! was ever given matches goes nowhere through it, so the reader keeps it from the router (see
//! [`RoutedFilters::may_deliver`]): a device's telemetry that only the uplink takes costs the router thread
//! nothing. Since filters are never forgotten, "some filter matches" stays true once it is; "none does"
//! holds until the next new filter, which [`RoutedFilters::generation`] counts.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::topics::matches;

/// The distinct filters (internal form) given to the router since the broker started.
#[derive(Debug)]
pub(crate) struct RoutedFilters {
    known: Mutex<HashSet<String>>,
    most: usize,
    /// Moves on each filter added to `known`.
    generation: AtomicU64,
}

impl RoutedFilters {
    pub(crate) fn new(most: usize) -> RoutedFilters {
        RoutedFilters {
            known: Mutex::default(),
            most,
            generation: AtomicU64::new(0),
        }
    }

    /// May `filter` go to the router? Yes if the router has it already, or if there is room for one more
    /// (it is then counted).
    pub(crate) fn admit(&self, filter: &str) -> bool {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.contains(filter) {
            return true;
        }
        if known.len() >= self.most {
            return false;
        }
        known.insert(filter.to_owned());
        self.generation.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// Counts filters the router is given without a choice (a persistent session's, restored): they may
    /// take the count past the cap.
    pub(crate) fn record<'a>(&self, filters: impl IntoIterator<Item = &'a str>) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        for filter in filters {
            if !known.contains(filter) {
                known.insert(filter.to_owned());
                self.generation.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// Moves on whenever a filter is added: a [`RoutedFilters::may_deliver`] answer of `false` holds
    /// while it stays the same.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Could the router deliver a publish on `topic` (internal form) to anyone: does a filter it was
    /// given match it (a shared subscription's by the filter after its group)?
    pub(crate) fn may_deliver(&self, topic: &str) -> bool {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.iter().any(|filter| matches(topic, unshared(filter)))
    }

    /// How many filters the router holds.
    pub(crate) fn count(&self) -> usize {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub(crate) fn most(&self) -> usize {
        self.most
    }
}

/// Topics a connection remembers the answer of [`RoutedFilters::may_deliver`] for, at most (then it
/// starts afresh).
const REMEMBERED_TOPICS: usize = 256;

/// A connection's memory of [`RoutedFilters::may_deliver`] for the topics it publishes on, good for one
/// generation: a device publishing on the same few topics asks the shared record once per new filter.
#[derive(Debug, Default)]
pub(crate) struct Deliverable {
    generation: u64,
    topics: HashMap<String, bool>,
}

impl Deliverable {
    /// [`RoutedFilters::may_deliver`] of `topic` (internal form), remembered.
    pub(crate) fn check(&mut self, routed: &RoutedFilters, topic: &str) -> bool {
        // Read before asking: a filter added meanwhile moves it, and the answer is asked again next time.
        let generation = routed.generation();
        if generation != self.generation || self.topics.len() >= REMEMBERED_TOPICS {
            self.topics.clear();
            self.generation = generation;
        }
        if let Some(&deliverable) = self.topics.get(topic) {
            return deliverable;
        }
        let deliverable = routed.may_deliver(topic);
        self.topics.insert(topic.to_owned(), deliverable);
        deliverable
    }
}

/// A shared subscription's filter without its `$share/{group}/`; any other filter as it is.
fn unshared(filter: &str) -> &str {
    filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(filter, |(_, filter)| filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_filters_are_refused_at_the_cap_and_known_ones_still_granted() {
        let routed = RoutedFilters::new(2);
        assert!(routed.admit("~/a/#"));
        assert!(routed.admit("~/b/#"));
        assert!(!routed.admit("~/c/#"), "a third distinct filter");
        assert!(routed.admit("~/a/#"), "one the router has already");
        routed.record(["~/d/#"]);
        assert_eq!(routed.count(), 3);
        assert!(!routed.admit("~/e/#"));
    }

    #[test]
    fn a_topic_no_filter_ever_given_matches_is_not_deliverable_until_one_is() {
        let routed = RoutedFilters::new(10);
        assert!(!routed.may_deliver("~/dt/t-1/temp"));
        let before = routed.generation();
        assert!(routed.admit("~/cmd/#"));
        assert_ne!(
            routed.generation(),
            before,
            "a new filter moves the generation"
        );
        assert!(!routed.may_deliver("~/dt/t-1/temp"));
        let before = routed.generation();
        assert!(routed.admit("~/cmd/#"));
        assert_eq!(routed.generation(), before, "a known one does not");
        routed.record(["$share/g/~/dt/+/temp"]);
        assert!(
            routed.may_deliver("~/dt/t-1/temp"),
            "the shared filter's own filter matches"
        );
        assert!(!routed.may_deliver("~/dt/t-1/humidity"));
        routed.record(["~/#"]);
        assert!(routed.may_deliver("~/dt/t-1/humidity"));
    }

    #[test]
    fn a_remembered_answer_is_asked_again_after_a_new_filter() {
        let routed = RoutedFilters::new(10);
        let mut deliverable = Deliverable::default();
        assert!(!deliverable.check(&routed, "~/dt/a"));
        assert!(!deliverable.check(&routed, "~/dt/a"), "remembered");
        routed.admit("~/dt/+");
        assert!(
            deliverable.check(&routed, "~/dt/a"),
            "a new filter matches it"
        );
    }
}
