//! Upgrades of a store written in an earlier format, run when it is opened ([`super::handle`] reads the
//! format key, runs the steps, then writes the current format and a fresh account). Each step is
//! idempotent, so a crash part-way through runs it again on the next open. Kept apart so that the code of
//! the current layout does not carry the history of the old ones.

use sled::Tree;

use super::codec::is_pending_status;
use super::Result;

/// Format 1 → 2: the thing index keeps pending executions only. Idempotent, so a crash part-way through
/// (the format key is written after) just runs it again on the next open.
pub(super) fn drop_finished_from_thing_index(by_thing: &Tree) -> Result<()> {
    for entry in by_thing.iter() {
        let (key, status) = entry?;
        if !is_pending_status(&status) {
            by_thing.remove(key)?;
        }
    }
    Ok(())
}
