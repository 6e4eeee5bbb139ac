//! What an operator may see and change: which namespaces, and whether jobs without one. The engine
//! checks every request against them; the `auth` module gives each authenticated operator theirs.

use std::collections::BTreeSet;

/// What an operator may see: namespaces, and whether jobs without a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grants {
    pub all_namespaces: bool,
    pub namespaces: BTreeSet<String>,
    pub standard_jobs: bool,
}

impl Grants {
    /// Everything: the local operator's grants.
    pub fn all() -> Grants {
        Grants {
            all_namespaces: true,
            namespaces: BTreeSet::new(),
            standard_jobs: true,
        }
    }

    /// Does this operator see every job, whatever its namespace (what gateway-wide operations, such as
    /// resetting a recovery plugin, require)?
    pub fn covers_everything(&self) -> bool {
        self.all_namespaces && self.standard_jobs
    }

    /// May this operator see a job in `namespace` (`None`: a job without a namespace)?
    pub fn may_see(&self, namespace: Option<&str>) -> bool {
        match namespace {
            None => self.standard_jobs,
            Some(ns) => self.all_namespaces || self.namespaces.contains(ns),
        }
    }
}
