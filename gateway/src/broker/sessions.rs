//! The registry of live client connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::auth::Principal;

/// The live client connections: client id -> who authenticated on it.
///
/// A client id connects at most once at a time: a new connection with the same id replaces the entry and
/// tells the old connection it was taken over (MQTT 3.1.2.4 / 3.1.4: the server closes it), through the
/// signal [`Sessions::register`] gave it. Every entry carries a connection number, so the old connection's
/// cleanup, which runs later, cannot remove its successor's entry.
#[derive(Debug, Default)]
pub struct Sessions {
    entries: Mutex<HashMap<String, Entry>>,
    next_number: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    number: u64,
    principal: Principal,
    /// Fired when a newer connection of the same client id registers.
    taken_over: oneshot::Sender<()>,
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
            taken_over,
        };
        if let Some(old) = self.lock().insert(client_id.to_owned(), entry) {
            let _ = old.taken_over.send(());
        }
        signal
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
}
