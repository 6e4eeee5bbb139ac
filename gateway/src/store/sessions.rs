//! The `mqtt_sessions` tree: the broker's persistent MQTT sessions (whose they are, how long they last,
//! their filters and what waits for them), so a gateway that restarts does not make its devices deaf.
//!
//! The tree is apart from the jobs trees and has one writer, the broker's session registry, which writes
//! behind its in-memory state in batches (a session is a client's, not a job's: no job change reads it).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use sled::Transactional;

use super::codec;
use super::handle::Handle;
use super::meta::{self, Counted, TreeIx};
use super::Result;

/// Whom a session belongs to: the same principal across connections and restarts (a device by its thing
/// name, an operator by its username). Only the same identity may take a client id's session over. It is
/// defined here, with the record that persists it, so the store depends on nothing of `auth`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Identity {
    Device(String),
    Operator(String),
    /// An anonymous client whose client id is not a thing name (see `auth::Principal::Client`).
    Client(String),
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Device(thing) => write!(f, "device {thing}"),
            Identity::Operator(username) => write!(f, "operator {username}"),
            Identity::Client(client_id) => write!(f, "client {client_id}"),
        }
    }
}

/// One persistent session as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSession {
    pub owner: Identity,
    /// How long it outlives its connection, in seconds.
    pub expiry_s: u64,
    /// When its last connection closed (epoch ms); `None`: connected when it was written.
    pub left_at_ms: Option<i64>,
    /// Granted filters, in the external (`$`) form.
    pub filters: Vec<String>,
    /// What waits for the client, oldest first.
    pub backlog: Vec<StoredMessage>,
}

/// One message waiting for a stored session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub topic: String,
    pub payload: Vec<u8>,
    /// To be delivered at QoS 1 (else 0).
    pub reliable: bool,
    /// Sent before and not acknowledged.
    pub dup: bool,
}

/// The sessions tree of the store's open database (the one open now: the store may have been reopened
/// since this was made). Cheap to clone.
#[derive(Clone)]
pub struct SessionTree {
    handle: Arc<Handle>,
}

impl SessionTree {
    pub(super) fn new(handle: Arc<Handle>) -> SessionTree {
        SessionTree { handle }
    }

    /// Every stored session. One that cannot be decoded is logged and left out (its client starts anew).
    pub fn load(&self) -> Result<Vec<(String, StoredSession)>> {
        self.handle.run(|trees| load(&trees.sessions))
    }

    /// Writes sessions (`None`: removes it) in one transaction, counted in the store's account.
    pub fn write(&self, changes: &[(String, Option<StoredSession>)]) -> Result<()> {
        self.handle.run(|trees| {
            let account: &sled::Tree = &trees.db;
            let outcome = (&trees.sessions, account).transaction(|(sessions, account)| {
                let sessions = Counted::new(sessions, TreeIx::Sessions);
                for (client_id, session) in changes {
                    match session {
                        Some(session) => {
                            sessions.insert(client_id.as_bytes(), codec::encode(session))?
                        }
                        None => sessions.remove(client_id.as_bytes())?,
                    };
                }
                meta::record(account, &[&sessions])
            });
            super::commit::committed(outcome)
        })
    }

    /// Makes what was written durable (fsync).
    pub fn flush(&self) -> Result<()> {
        self.handle.flush()
    }
}

fn load(tree: &sled::Tree) -> Result<Vec<(String, StoredSession)>> {
    let mut sessions = Vec::new();
    for entry in tree.iter() {
        let (key, value) = entry?;
        let client_id = String::from_utf8_lossy(&key).into_owned();
        match codec::decode(&value) {
            Ok(session) => sessions.push((client_id, session)),
            Err(e) => {
                tracing::warn!(client_id, error = %e, "stored MQTT session unreadable, dropped")
            }
        }
    }
    Ok(sessions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_written_read_back_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::super::Store::open(dir.path(), 1 << 20).unwrap();
        let tree = store.sessions();
        let session = StoredSession {
            owner: Identity::Device("d1".into()),
            expiry_s: 3600,
            left_at_ms: Some(1_700_000_000_000),
            filters: vec!["$aws/things/d1/jobs/notify-next".into()],
            backlog: vec![StoredMessage {
                topic: "$aws/things/d1/jobs/notify-next".into(),
                payload: b"{}".to_vec(),
                reliable: false,
                dup: false,
            }],
        };
        tree.write(&[("d1".into(), Some(session.clone())), ("d2".into(), None)])
            .unwrap();
        assert_eq!(tree.load().unwrap(), [("d1".to_owned(), session)]);
        tree.write(&[("d1".into(), None)]).unwrap();
        assert!(tree.load().unwrap().is_empty());
    }
}
