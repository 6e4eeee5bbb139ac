//! What a disconnected persistent session holds for its client: the gateway's messages that arrived while
//! it was away, bounded in count and bytes.
//!
//! Job notifications each describe a thing's whole current state on their topic (the pending list, the
//! next job), so a newer one supersedes the one before: for those only the latest per topic is kept, and a
//! device that was away for a hundred changes gets one message per topic, not a hundred. Everything else
//! (Jobs API replies, presence events) is kept in order, each one.

use std::collections::VecDeque;

use bytes::Bytes;

/// How a message joins a backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Replaces any message already waiting on the same topic (a state notification).
    Latest,
    /// Is kept after the others.
    Each,
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

/// One waiting message: (topic, payload), in the external (`$`) form.
pub type Waiting = (String, Bytes);

/// The messages waiting for one disconnected session, oldest first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Backlog {
    messages: VecDeque<Waiting>,
    bytes: usize,
}

fn size((topic, payload): &Waiting) -> usize {
    topic.len() + payload.len()
}

impl Backlog {
    /// Adds a message; false (nothing changed) when the backlog is full.
    pub fn push(&mut self, topic: &str, payload: Bytes, keep: Keep, limits: Limits) -> bool {
        let superseded = match keep {
            Keep::Latest => self.messages.iter().position(|(t, _)| t == topic),
            Keep::Each => None,
        };
        let freed = superseded.map_or(0, |i| size(&self.messages[i]));
        let added = topic.len() + payload.len();
        let count = self.messages.len() - usize::from(superseded.is_some()) + 1;
        if count > limits.messages || self.bytes - freed + added > limits.bytes {
            return false;
        }
        if let Some(i) = superseded {
            self.messages.remove(i);
        }
        self.bytes = self.bytes - freed + added;
        self.messages.push_back((topic.to_owned(), payload));
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
            .map(|(t, p)| (t.as_str(), p.as_ref()))
            .collect()
    }

    #[test]
    fn a_newer_state_replaces_the_one_waiting_on_its_topic() {
        let mut backlog = Backlog::default();
        assert!(backlog.push("next", Bytes::from_static(b"1"), Keep::Latest, LIMITS));
        assert!(backlog.push("reply", Bytes::from_static(b"r"), Keep::Each, LIMITS));
        assert!(backlog.push("next", Bytes::from_static(b"2"), Keep::Latest, LIMITS));
        assert_eq!(
            topics(&backlog),
            [("reply", &b"r"[..]), ("next", &b"2"[..])]
        );
        // Replies are each kept.
        assert!(backlog.push("reply", Bytes::from_static(b"s"), Keep::Each, LIMITS));
        assert_eq!(backlog.iter().count(), 3);
    }

    #[test]
    fn a_full_backlog_refuses_by_count_and_by_bytes() {
        let mut backlog = Backlog::default();
        for t in ["a", "b", "c"] {
            assert!(backlog.push(t, Bytes::new(), Keep::Each, LIMITS));
        }
        assert!(!backlog.push("d", Bytes::new(), Keep::Each, LIMITS));
        // A replacement adds no message: it fits even when the count is reached.
        assert!(backlog.push("a", Bytes::from_static(b"x"), Keep::Latest, LIMITS));
        let mut backlog = Backlog::default();
        assert!(backlog.push("big", Bytes::from(vec![0; 60]), Keep::Latest, LIMITS));
        assert!(!backlog.push("more", Bytes::from(vec![0; 10]), Keep::Each, LIMITS));
        // Replacing the big one with a small one frees its bytes.
        assert!(backlog.push("big", Bytes::from(vec![0; 10]), Keep::Latest, LIMITS));
        assert!(backlog.push("more", Bytes::from(vec![0; 10]), Keep::Each, LIMITS));
        assert_eq!(backlog.take().len(), 2);
        assert_eq!(backlog.iter().count(), 0);
        assert!(backlog.push("big", Bytes::from(vec![0; 60]), Keep::Each, LIMITS));
    }
}
