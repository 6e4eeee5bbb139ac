//! The store's own account of itself: how many entries each tree holds, how many changes it has had
//! (its generation) and which store it is, kept in sled's default tree and written by every transaction.
//!
//! sled does not promise to notice lost data: a log cut short (a truncated or damaged `db` file) opens
//! as the store it was at the cut, silently, down to an empty one. The account is the evidence sprig
//! keeps instead. Inside the store, written in the same transaction as the records it counts, it must
//! always agree with them (a walk at start-up proves it); outside, the last flush's copy of it is the
//! manifest ([`super::manifest`]), which a store that lost changes no longer matches.

use std::cell::Cell;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::IVec;

use super::codec;

/// Where the account is kept, in sled's default tree.
pub const META_KEY: &[u8] = b"sprig-meta";

/// The trees that hold sprig's data, in the order of [`Counts`].
pub const TREES: [&str; 11] = [
    "jobs",
    "executions",
    "by_thing",
    "by_status",
    "by_namespace",
    "by_deadline",
    "recoveries",
    "open_recoveries",
    "mqtt_sessions",
    "thing_executions",
    "job_targets",
];

/// A tree, by its place in [`TREES`].
#[derive(Debug, Clone, Copy)]
pub enum TreeIx {
    Jobs = 0,
    Executions,
    ByThing,
    ByStatus,
    ByNamespace,
    ByDeadline,
    Recoveries,
    OpenRecoveries,
    Sessions,
    ThingExecutions,
    JobTargets,
}

/// Entries per tree, in the order of [`TREES`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts(pub [u64; TREES.len()]);

impl Counts {
    pub fn get(&self, tree: TreeIx) -> u64 {
        self.0[tree as usize]
    }

    /// (tree, ours, theirs) for every tree where `self` and `other` differ.
    pub fn differences<'a>(
        &'a self,
        other: &'a Counts,
    ) -> impl Iterator<Item = (&'static str, u64, u64)> + 'a {
        TREES
            .iter()
            .zip(self.0.iter().zip(other.0.iter()))
            .filter(|(_, (ours, theirs))| ours != theirs)
            .map(|(name, (ours, theirs))| (*name, *ours, *theirs))
    }
}

/// The account itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Chosen at random when the store is made: a manifest of another store never matches.
    pub store_id: u64,
    /// Changes committed since the store was made (a transaction is one change).
    pub generation: u64,
    pub counts: Counts,
}

impl Meta {
    pub fn new(counts: Counts) -> Meta {
        Meta {
            store_id: rand::random(),
            generation: 0,
            counts,
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Meta, codec::CodecError> {
        codec::decode(bytes)
    }

    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<()>>;

/// A tree inside a transaction that counts the entries it adds and removes.
pub struct Counted<'t> {
    tree: &'t TransactionalTree,
    ix: TreeIx,
    delta: Cell<i64>,
}

impl<'t> Counted<'t> {
    pub fn new(tree: &'t TransactionalTree, ix: TreeIx) -> Counted<'t> {
        Counted {
            tree,
            ix,
            delta: Cell::new(0),
        }
    }

    pub fn insert<K, V>(&self, key: K, value: V) -> TxResult<Option<IVec>>
    where
        K: AsRef<[u8]> + Into<IVec>,
        V: Into<IVec>,
    {
        let old = self.tree.insert(key, value)?;
        if old.is_none() {
            self.delta.set(self.delta.get() + 1);
        }
        Ok(old)
    }

    pub fn remove<K>(&self, key: K) -> TxResult<Option<IVec>>
    where
        K: AsRef<[u8]> + Into<IVec>,
    {
        let old = self.tree.remove(key)?;
        if old.is_some() {
            self.delta.set(self.delta.get() - 1);
        }
        Ok(old)
    }
}

/// Adds one change and the entries `trees` added or removed to the account, in the same transaction.
/// Called last in each transaction; a transaction that sled runs again starts its counts from zero,
/// since its closure makes new [`Counted`] trees.
pub fn record(meta: &TransactionalTree, trees: &[&Counted<'_>]) -> TxResult<()> {
    let mut account = match meta.get(META_KEY)? {
        Some(bytes) => Meta::decode(&bytes).unwrap_or_default(),
        // Every store has one once opened (see `Trees::open`); a missing one is found at the next start.
        None => Meta::default(),
    };
    account.generation += 1;
    for tree in trees {
        let count = &mut account.counts.0[tree.ix as usize];
        *count = count.saturating_add_signed(tree.delta.get());
    }
    meta.insert(META_KEY, account.encode())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sled::Transactional;

    #[test]
    fn a_transaction_counts_new_keys_and_removed_keys_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let jobs = db.open_tree("jobs").unwrap();
        let default: &sled::Tree = &db;
        db.insert(META_KEY, Meta::new(Counts::default()).encode())
            .unwrap();
        (&jobs, default)
            .transaction(|(jobs, meta)| {
                let jobs = Counted::new(jobs, TreeIx::Jobs);
                jobs.insert("a", "1")?;
                jobs.insert("b", "1")?;
                jobs.insert("a", "2")?; // overwrites: still two
                jobs.remove("missing")?;
                record(meta, &[&jobs])
            })
            .unwrap();
        (&jobs, default)
            .transaction(|(jobs, meta)| {
                let jobs = Counted::new(jobs, TreeIx::Jobs);
                jobs.remove("b")?;
                record(meta, &[&jobs])
            })
            .unwrap();
        let meta = Meta::decode(&db.get(META_KEY).unwrap().unwrap()).unwrap();
        assert_eq!(meta.generation, 2);
        assert_eq!(meta.counts.get(TreeIx::Jobs), 1);
        assert_eq!(jobs.len(), 1);
    }

    #[test]
    fn differences_name_the_trees_that_differ() {
        let mut ours = Counts::default();
        let mut theirs = Counts::default();
        ours.0[TreeIx::Executions as usize] = 9;
        theirs.0[TreeIx::Executions as usize] = 300;
        theirs.0[TreeIx::Jobs as usize] = 3;
        let found: Vec<_> = ours.differences(&theirs).collect();
        assert_eq!(found, [("jobs", 0, 3), ("executions", 9, 300)]);
    }
}
