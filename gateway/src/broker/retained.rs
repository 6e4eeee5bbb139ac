//! The retained messages of routed topics, as the router holds them, so that a SUBSCRIBE to a filter the
//! connection holds already gets them again: MQTT says a subscription that replaces an identical one is
//! sent the retained messages again (3.1.1 §3.8.4; MQTT 5 §3.8.3.1, Retain Handling 0), but rumqttd 0.20
//! sends them only when its link did not hold the filter (`router/routing.rs`, `prepare_filter`) and has
//! no way to ask for them. The payloads are the router's own (`Bytes` share their buffer): what this costs
//! is a map entry and the topic per retained message.
//!
//! It follows the router's rule (`append_to_commitlog`): a message with an empty payload removes the
//! topic's retained message, whether or not its retain flag is set; a non-empty retained one replaces it.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use rumqttd::protocol::PublishProperties;

/// One retained message, its topic in the external form.
#[derive(Debug, Clone)]
pub(crate) struct Kept {
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
    /// The properties it was published with (its `Origin` attached).
    pub(crate) props: Option<PublishProperties>,
}

#[derive(Debug, Default)]
pub(crate) struct Retained {
    messages: Mutex<HashMap<String, Kept>>,
}

impl Retained {
    /// A routed publish on `topic` (external form) as it goes to the router.
    pub(crate) fn published(
        &self,
        topic: &str,
        payload: &Bytes,
        retain: bool,
        props: &Option<PublishProperties>,
    ) {
        if !retain && !payload.is_empty() {
            return;
        }
        let mut messages = self.lock();
        if payload.is_empty() {
            messages.remove(topic);
            return;
        }
        let kept = Kept {
            topic: topic.to_owned(),
            payload: payload.clone(),
            props: props.clone(),
        };
        messages.insert(topic.to_owned(), kept);
    }

    /// The retained messages `filter` (external form) matches.
    pub(crate) fn matching(&self, filter: &str) -> Vec<Kept> {
        self.lock()
            .values()
            .filter(|kept| crate::topic_filter::matches(&kept.topic, filter))
            .cloned()
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Kept>> {
        self.messages.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_payload_removes_and_a_retained_one_replaces() {
        let retained = Retained::default();
        let (one, two) = (Bytes::from("1"), Bytes::from("2"));
        retained.published("a/b", &one, true, &None);
        retained.published("a/b", &two, false, &None);
        retained.published("a/c", &two, true, &None);
        let topics = |filter| {
            let mut found: Vec<(String, Bytes)> = (retained.matching(filter).into_iter())
                .map(|k| (k.topic, k.payload))
                .collect();
            found.sort();
            found
        };
        assert_eq!(
            topics("a/+"),
            [("a/b".into(), one.clone()), ("a/c".into(), two.clone())]
        );
        retained.published("a/b", &Bytes::new(), false, &None);
        assert_eq!(topics("#"), [("a/c".into(), two)]);
    }
}
