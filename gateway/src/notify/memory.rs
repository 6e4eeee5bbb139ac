//! What each thing was last told, per scope (next job id, pending job ids and statuses), so only changes
//! are notified; a thing's entry is dropped once nothing is pending.

use std::collections::HashMap;

use crate::jobs::device::ThingSnapshot;

/// The part of a thing's state its notifications announce: the next job and the pending jobs' statuses.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Told {
    next: Option<String>,
    /// (job id, IN_PROGRESS?) in the snapshot's order: IN_PROGRESS first, then QUEUED, oldest first.
    pending: Vec<(String, bool)>,
}

impl Told {
    pub(super) fn of(snapshot: &ThingSnapshot) -> Told {
        let in_progress = snapshot.pending.in_progress_jobs.iter().map(|s| (s, true));
        let queued = snapshot.pending.queued_jobs.iter().map(|s| (s, false));
        Told {
            next: snapshot.next.as_ref().map(|e| e.job_id.clone()),
            pending: in_progress
                .chain(queued)
                .map(|(s, started)| (s.job_id.clone(), started))
                .collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.next.is_none() && self.pending.is_empty()
    }
}

/// What changed since a thing was last told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Changes {
    pub pending: bool,
    pub next: bool,
}

/// thing -> scope -> what it was last told. A thing with nothing pending in a scope has no entry there, so
/// the memory is as large as the set of things with pending executions (an entry is a few job ids). Looked
/// up by the thing's name as it is, with no key made per call: this runs for every thing of a fan-out.
#[derive(Debug, Default)]
pub(super) struct Memory {
    told: HashMap<String, Vec<(Option<String>, Told)>>,
}

impl Memory {
    /// Records `now` as what `thing` knows in `scope` and says what differs from what it knew before.
    pub(super) fn tell(&mut self, thing: &str, scope: Option<&str>, now: Told) -> Changes {
        let Some(scopes) = self.told.get_mut(thing) else {
            return self.first(thing, scope, now);
        };
        let Some(i) = scopes.iter().position(|(s, _)| s.as_deref() == scope) else {
            return self.first(thing, scope, now);
        };
        let changes = Changes::between(&scopes[i].1, &now);
        if !now.is_empty() {
            scopes[i].1 = now;
        } else if scopes.len() > 1 {
            scopes.swap_remove(i);
        } else {
            self.told.remove(thing);
        }
        changes
    }

    /// `thing` is told something in `scope` for the first time.
    fn first(&mut self, thing: &str, scope: Option<&str>, now: Told) -> Changes {
        let changes = Changes::between(&Told::default(), &now);
        if !now.is_empty() {
            let scopes = self.told.entry(thing.to_owned()).or_default();
            scopes.push((scope.map(str::to_owned), now));
        }
        changes
    }

    /// (thing, scope) entries held.
    pub(super) fn len(&self) -> usize {
        self.told.values().map(Vec::len).sum()
    }
}

impl Changes {
    fn between(before: &Told, now: &Told) -> Changes {
        Changes {
            pending: before.pending != now.pending,
            next: before.next != now.next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn told(next: Option<&str>, pending: &[(&str, bool)]) -> Told {
        Told {
            next: next.map(str::to_owned),
            pending: pending.iter().map(|(j, s)| (j.to_string(), *s)).collect(),
        }
    }

    #[test]
    fn only_differences_are_changes_and_empty_state_is_forgotten() {
        let mut memory = Memory::default();
        let one = told(Some("j1"), &[("j1", false)]);
        let changes = memory.tell("d1", None, one.clone());
        assert_eq!((changes.pending, changes.next), (true, true));
        // The same state again is no change.
        let changes = memory.tell("d1", None, one);
        assert_eq!((changes.pending, changes.next), (false, false));
        // A second job queued behind the first: the list changed, the next did not.
        let two = told(Some("j1"), &[("j1", false), ("j2", false)]);
        let changes = memory.tell("d1", None, two);
        assert_eq!((changes.pending, changes.next), (true, false));
        // Scopes are separate.
        let changes = memory.tell("d1", Some("acme"), told(Some("j3"), &[("j3", false)]));
        assert_eq!((changes.pending, changes.next), (true, true));
        assert_eq!(memory.len(), 2);
        // Nothing pending: told once, then forgotten.
        let changes = memory.tell("d1", None, Told::default());
        assert_eq!((changes.pending, changes.next), (true, true));
        assert_eq!(memory.len(), 1);
        let changes = memory.tell("d1", None, Told::default());
        assert_eq!((changes.pending, changes.next), (false, false));
    }
}
