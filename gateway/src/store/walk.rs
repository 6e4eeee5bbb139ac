//! Batched reads of a sled tree: [`in_key_order`] answers many keys in one forward pass, and [`IndexWalk`]
//! moves forward to each next key by stepping or, when that is far, by seeking. sled starts every scan by
//! copying the whole leaf it lands on, so N scans that land on the same few leaves cost N copies; one walk
//! costs about one (the pending index is built with one: see `Trees::executions`).

use sled::Tree;

use super::Result;

/// `read(key)` for every key, in the keys' order (so that `read` can walk a tree forwards), each distinct
/// key read once; the answers come back in the caller's order.
pub(super) fn in_key_order<T: Clone>(
    keys: &[Vec<u8>],
    mut read: impl FnMut(&[u8]) -> Result<T>,
) -> Result<Vec<T>> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_unstable_by(|&a, &b| keys[a].cmp(&keys[b]));
    let mut found: Vec<Option<T>> = vec![None; keys.len()];
    let mut previous: Option<usize> = None;
    for i in order {
        found[i] = match previous.filter(|&p| keys[p] == keys[i]) {
            Some(p) => found[p].clone(),
            None => Some(read(&keys[i])?),
        };
        previous = Some(i);
    }
    Ok(found.into_iter().flatten().collect())
}

/// Entries of other keys a [`IndexWalk`] steps over before it seeks instead.
pub(super) const SEEK_AFTER: usize = 32;

/// A forward walk over an index tree that can move on to a later key, stepping or seeking.
pub(super) struct IndexWalk<'a> {
    tree: &'a Tree,
    iter: Option<sled::Iter>,
    /// The entry the walk is on (not yet taken).
    current: Option<(sled::IVec, sled::IVec)>,
}

impl<'a> IndexWalk<'a> {
    pub(super) fn new(tree: &'a Tree) -> IndexWalk<'a> {
        IndexWalk {
            tree,
            iter: None,
            current: None,
        }
    }

    /// Moves to the first entry at or after `key`: by stepping, unless that takes more than `max_steps`
    /// entries (or the walk has not started), then by a fresh seek. Never moves backwards.
    pub(super) fn seek_within(&mut self, key: &[u8], max_steps: usize) -> Result<()> {
        if self.iter.is_some() {
            for _ in 0..=max_steps {
                match &self.current {
                    Some((k, _)) if k.as_ref() < key => self.advance()?,
                    _ => return Ok(()),
                }
            }
            if self.current.as_ref().is_none_or(|(k, _)| k.as_ref() >= key) {
                return Ok(());
            }
        }
        self.iter = Some(self.tree.range(key..));
        self.advance()
    }

    /// The current entry, and a step past it, if its key satisfies `wanted`.
    pub(super) fn take_if(
        &mut self,
        wanted: impl Fn(&[u8]) -> bool,
    ) -> Result<Option<(sled::IVec, sled::IVec)>> {
        if !self.current.as_ref().is_some_and(|(k, _)| wanted(k)) {
            return Ok(None);
        }
        let taken = self.current.take();
        self.advance()?;
        Ok(taken)
    }

    pub(super) fn advance(&mut self) -> Result<()> {
        self.current = match self.iter.as_mut().and_then(Iterator::next) {
            Some(entry) => Some(entry?),
            None => None,
        };
        Ok(())
    }
}
