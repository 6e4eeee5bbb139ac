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

use std::collections::HashSet;
use std::sync::Mutex;

/// The distinct filters (internal form) given to the router since the broker started.
#[derive(Debug)]
pub(crate) struct RoutedFilters {
    known: Mutex<HashSet<String>>,
    most: usize,
}

impl RoutedFilters {
    pub(crate) fn new(most: usize) -> RoutedFilters {
        RoutedFilters {
            known: Mutex::default(),
            most,
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
        true
    }

    /// Counts filters the router is given without a choice (a persistent session's, restored): they may
    /// take the count past the cap.
    pub(crate) fn record<'a>(&self, filters: impl IntoIterator<Item = &'a str>) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.extend(filters.into_iter().map(str::to_owned));
    }

    /// How many filters the router holds.
    pub(crate) fn count(&self) -> usize {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub(crate) fn most(&self) -> usize {
        self.most
    }
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
}
