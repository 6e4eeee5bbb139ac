//! The registry of live client connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::auth::{Identity, Principal};

/// The live client connections: client id -> who authenticated on it.
///
/// A client id connects at most once at a time: a new connection with the same id replaces the entry and
/// tells the old connection it was taken over (MQTT 3.1.2.4 / 3.1.4: the server closes it), through the
/// signal `Sessions::register` gave it. Every entry carries a connection number, so the old connection's
/// cleanup, which runs later, cannot remove its successor's entry. A newcomer of the same principal first
/// waits, through `Sessions::take_over`, for the old connection to finish what its client sent before
/// and to leave the session: a client that sends DISCONNECT and connects again at once must find its
/// session as that DISCONNECT left it.
#[derive(Debug, Default)]
pub struct Sessions {
    entries: Mutex<HashMap<String, Entry>>,
    next_number: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    number: u64,
    principal: Principal,
    /// Fired when a newer connection of the same client id takes over (`None` once fired).
    taken_over: Option<oneshot::Sender<()>>,
    /// Dropped with the entry: its receivers learn that the connection has left. Made only when a
    /// newcomer waits for that (a watch channel is 340 bytes, and most connections are never taken over).
    left: Option<watch::Sender<()>>,
}

/// Resolves with `Ok(())` when a newer connection took the client id over (an `Err` when the entry went
/// away otherwise: not a takeover).
pub(crate) type TakenOver = oneshot::Receiver<()>;

impl Sessions {
    /// Who is connected as `client_id` right now, if anyone.
    pub fn principal(&self, client_id: &str) -> Option<Principal> {
        self.lock().get(client_id).map(|e| e.principal.clone())
    }

    /// True when connection `number` of the device `thing` (its own client id) is still the current one.
    pub fn is_current(&self, thing: &str, number: u64) -> bool {
        self.lock().get(thing).is_some_and(|e| {
            e.number == number
                && matches!(&e.principal, Principal::Device { thing_name } if thing_name == thing)
        })
    }

    /// Number of connected clients.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no client is connected.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// A new connection number, larger than every one before.
    pub(crate) fn next_number(&self) -> u64 {
        self.next_number.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Records connection `number` (from [`Sessions::next_number`]) as `client_id`'s current one, and tells
    /// the connection it replaces, if any, that it was taken over. The returned signal is this
    /// connection's.
    pub(crate) fn register(&self, client_id: &str, number: u64, principal: Principal) -> TakenOver {
        let (taken_over, signal) = oneshot::channel();
        let entry = Entry {
            number,
            principal,
            taken_over: Some(taken_over),
            left: None,
        };
        if let Some(mut old) = self.lock().insert(client_id.to_owned(), entry) {
            old.tell_taken_over();
        }
        signal
    }

    /// Tells `client_id`'s connection, if `owner` holds it, that a newer one takes over, and waits at
    /// most `wait` for it to leave (it reads what its client sent before, then hands the session on).
    /// A connection of another principal is left alone: the newcomer will be refused.
    pub(crate) async fn take_over(&self, client_id: &str, owner: &Identity, wait: Duration) {
        let mut left = {
            let mut entries = self.lock();
            let Some(entry) = entries.get_mut(client_id) else {
                return;
            };
            if entry.principal.identity() != *owner {
                return;
            }
            entry.tell_taken_over();
            entry
                .left
                .get_or_insert_with(|| watch::Sender::new(()))
                .subscribe()
        };
        // Resolves (with an error) once the entry, and so the sender, is dropped.
        if tokio::time::timeout(wait, left.changed()).await.is_err() {
            tracing::warn!(
                client_id,
                "the connection taken over did not leave within {wait:?}; going on"
            );
        }
    }

    /// Forgets connection `number` of `client_id`; true if it was still the current one.
    pub(crate) fn remove(&self, client_id: &str, number: u64) -> bool {
        let mut entries = self.lock();
        if entries.get(client_id).is_some_and(|e| e.number == number) {
            entries.remove(client_id);
            return true;
        }
        false
    }

    /// True when `client_id` is connected on a newer connection than `number` (it took the session over).
    pub(crate) fn superseded(&self, client_id: &str, number: u64) -> bool {
        self.lock()
            .get(client_id)
            .is_some_and(|e| e.number > number)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock cannot leave the map half-updated: recover it.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Entry {
    fn tell_taken_over(&mut self) {
        if let Some(taken_over) = self.taken_over.take() {
            let _ = taken_over.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_connection_cannot_remove_its_successor() {
        let sessions = Sessions::default();
        let device = Principal::Device {
            thing_name: "d1".into(),
        };
        let (old, new) = (sessions.next_number(), sessions.next_number());
        let mut old_taken_over = sessions.register("d1", old, device.clone());
        assert!(old_taken_over.try_recv().is_err(), "not taken over yet");
        let mut new_taken_over = sessions.register("d1", new, device.clone());
        assert_eq!(old_taken_over.try_recv(), Ok(()), "the old one is told");
        assert!(sessions.superseded("d1", old));
        assert!(!sessions.is_current("d1", old) && sessions.is_current("d1", new));
        assert!(!sessions.remove("d1", old));
        assert_eq!(sessions.principal("d1"), Some(device));
        assert!(sessions.remove("d1", new));
        assert!(sessions.is_empty());
        assert_eq!(
            new_taken_over.try_recv(),
            Err(oneshot::error::TryRecvError::Closed),
            "leaving is not a takeover"
        );
    }

    #[tokio::test]
    async fn take_over_tells_only_the_same_principal_and_waits_for_it_to_leave() {
        let sessions = std::sync::Arc::new(Sessions::default());
        let device = Principal::Device {
            thing_name: "d1".into(),
        };
        let number = sessions.next_number();
        let mut taken_over = sessions.register("d1", number, device.clone());
        let stranger = Identity::Device("d2".into());
        sessions
            .take_over("d1", &stranger, Duration::from_secs(5))
            .await;
        assert!(
            taken_over.try_recv().is_err(),
            "another principal is left alone"
        );

        let waiting = tokio::spawn({
            let sessions = sessions.clone();
            async move {
                let owner = Identity::Device("d1".into());
                sessions
                    .take_over("d1", &owner, Duration::from_secs(5))
                    .await;
            }
        });
        (&mut taken_over).await.expect("told");
        assert!(
            !waiting.is_finished(),
            "waits while the old connection is there"
        );
        assert!(sessions.remove("d1", number));
        waiting.await.unwrap();
    }
}
