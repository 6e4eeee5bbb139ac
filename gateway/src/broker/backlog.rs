//! What a disconnected persistent session holds for its client: the gateway's messages that arrived while
//! it was away, bounded in count and bytes.
//!
//! Job notifications each describe a thing's whole current state on their topic (the pending list, the
//! next job), so a newer one supersedes the one before: for those only the latest per topic is kept, and a
//! device that was away for a hundred changes gets one message per topic, not a hundred. Everything else
//! (Jobs API replies, presence events, QoS 1 messages from other clients) is kept in order, each one.

use std::collections::VecDeque;

use bytes::Bytes;
use rumqttd::protocol::PublishProperties;

use crate::store::sessions::StoredMessage;

/// How a message joins a backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Replaces any message already waiting on the same topic (a state notification).
    Latest,
    /// Is kept after the others.
    Each,
}

impl From<StoredMessage> for Waiting {
    fn from(stored: StoredMessage) -> Waiting {
        Waiting {
            topic: stored.topic,
            payload: Bytes::from(stored.payload),
            reliable: stored.reliable,
            dup: stored.dup,
            props: None,
        }
    }
}

impl From<&Waiting> for StoredMessage {
    fn from(message: &Waiting) -> StoredMessage {
        StoredMessage {
            topic: message.topic.clone(),
            payload: message.payload.to_vec(),
            reliable: message.reliable,
            dup: message.dup,
        }
    }
}

/// The bounds of one session's backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub messages: usize,
    pub bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            messages: 100,
            bytes: 256 * 1024,
        }
    }
}

/// One waiting message, its topic in the external (`$`) form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub topic: String,
    pub payload: Bytes,
    /// Delivered at QoS 1 and kept until acknowledged (messages from other clients); else at QoS 0 (the
    /// gateway's own: notifications, replies, events).
    pub reliable: bool,
    /// Sent before and not acknowledged: delivered again with the DUP flag.
    pub dup: bool,
    /// A routed message's MQTT 5 properties, its `Origin` attached (for its expiry). Kept in memory only:
    /// the store keeps topic and payload, so a restart loses them.
    pub props: Option<Box<PublishProperties>>,
}

impl Waiting {
    /// A message the gateway sends at QoS 0.
    pub fn direct(topic: &str, payload: Bytes) -> Waiting {
        Waiting {
            topic: topic.to_owned(),
            payload,
            reliable: false,
            dup: false,
            props: None,
        }
    }
}

/// The messages waiting for one disconnected session, oldest first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Backlog {
    messages: VecDeque<Waiting>,
    bytes: usize,
}

fn size(message: &Waiting) -> usize {
    message.topic.len() + message.payload.len()
}

impl Backlog {
    /// Adds a message; false (nothing changed) when the backlog is full.
    pub fn push(&mut self, message: Waiting, keep: Keep, limits: Limits) -> bool {
        let superseded = match keep {
            Keep::Latest => self.messages.iter().position(|m| m.topic == message.topic),
            Keep::Each => None,
        };
        let freed = superseded.map_or(0, |i| size(&self.messages[i]));
        let added = size(&message);
        let count = self.messages.len() - usize::from(superseded.is_some()) + 1;
        if count > limits.messages || self.bytes - freed + added > limits.bytes {
            return false;
        }
        if let Some(i) = superseded {
            self.messages.remove(i);
        }
        self.bytes = self.bytes - freed + added;
        self.messages.push_back(message);
        true
    }

    /// Takes every waiting message, oldest first.
    pub fn take(&mut self) -> Vec<Waiting> {
        self.bytes = 0;
        self.messages.drain(..).collect()
    }

    /// The waiting messages, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Waiting> {
        self.messages.iter()
    }
}

impl FromIterator<Waiting> for Backlog {
    /// A backlog as it was stored (it was within its limits when it was written).
    fn from_iter<I: IntoIterator<Item = Waiting>>(messages: I) -> Backlog {
        let messages: VecDeque<Waiting> = messages.into_iter().collect();
        let bytes = messages.iter().map(size).sum();
        Backlog { messages, bytes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        messages: 3,
        bytes: 64,
    };

    fn topics(backlog: &Backlog) -> Vec<(&str, &[u8])> {
        backlog
            .iter()
            .map(|m| (m.topic.as_str(), m.payload.as_ref()))
            .collect()
    }

    fn push(backlog: &mut Backlog, topic: &str, payload: Bytes, keep: Keep) -> bool {
        backlog.push(Waiting::direct(topic, payload), keep, LIMITS)
    }

    #[test]
    fn a_newer_state_replaces_the_one_waiting_on_its_topic() {
        let mut backlog = Backlog::default();
        assert!(push(
            &mut backlog,
            "next",
            Bytes::from_static(b"1"),
            Keep::Latest
        ));
        assert!(push(
            &mut backlog,
            "reply",
            Bytes::from_static(b"r"),
            Keep::Each
        ));
        assert!(push(
            &mut backlog,
            "next",
            Bytes::from_static(b"2"),
            Keep::Latest
        ));
        assert_eq!(
            topics(&backlog),
            [("reply", &b"r"[..]), ("next", &b"2"[..])]
        );
        // Replies are each kept.
        assert!(push(
            &mut backlog,
            "reply",
            Bytes::from_static(b"s"),
            Keep::Each
        ));
        assert_eq!(backlog.iter().count(), 3);
    }

    #[test]
    fn a_full_backlog_refuses_by_count_and_by_bytes() {
        let mut backlog = Backlog::default();
        for t in ["a", "b", "c"] {
            assert!(push(&mut backlog, t, Bytes::new(), Keep::Each));
        }
        assert!(!push(&mut backlog, "d", Bytes::new(), Keep::Each));
        // A replacement adds no message: it fits even when the count is reached.
        assert!(push(
            &mut backlog,
            "a",
            Bytes::from_static(b"x"),
            Keep::Latest
        ));
        let mut backlog = Backlog::default();
        assert!(push(
            &mut backlog,
            "big",
            Bytes::from(vec![0; 60]),
            Keep::Latest
        ));
        assert!(!push(
            &mut backlog,
            "more",
            Bytes::from(vec![0; 10]),
            Keep::Each
        ));
        // Replacing the big one with a small one frees its bytes.
        assert!(push(
            &mut backlog,
            "big",
            Bytes::from(vec![0; 10]),
            Keep::Latest
        ));
        assert!(push(
            &mut backlog,
            "more",
            Bytes::from(vec![0; 10]),
            Keep::Each
        ));
        assert_eq!(backlog.take().len(), 2);
        assert_eq!(backlog.iter().count(), 0);
        assert!(push(
            &mut backlog,
            "big",
            Bytes::from(vec![0; 60]),
            Keep::Each
        ));
    }
}
