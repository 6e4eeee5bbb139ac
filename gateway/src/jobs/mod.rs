//! The jobs engine: AWS IoT Jobs semantics over the store, and the only writer to it.
//!
//! The records ([`crate::model`]) and the rules ([`transitions`]) are pure: no store, no clock, no
//! runtime. The records are a leaf module of their own, kept by the store, so the store depends on no part
//! of the jobs engine and the engine depends on the store. [`engine`] is the edge: it reads the store, reads the clock ([`clock`]), applies a rule and
//! commits, then announces the change ([`events`]). Around it: the operators' `commands` and
//! `queries` (shapes in [`api`], checks in [`validate`] and `planning`, errors in [`error`]),
//! [`creation`] writing a large job in bounded transactions, the devices' side ([`device`], shapes in
//! [`wire`]), the background [`deletion`] worker, the recovery runner's records (`recoveries`) and which
//! devices have a recovery route ([`routes`]), and the counts of jobs, executions, deletions and recoveries
//! that the engine keeps as it commits ([`tally`]). The engine never touches a transport: it is handed a typed
//! request and the caller's [`Grants`] and answers a typed response or an exception.

pub mod api;
pub mod clock;
mod commands;
pub mod creation;
pub mod deletion;
pub mod device;
pub mod engine;
pub mod error;
pub mod events;
mod grants;
mod planning;
mod queries;
mod recoveries;
pub mod routes;
pub mod tally;
pub mod transitions;
pub mod validate;
pub mod wire;

#[cfg(test)]
mod test_fixture;
#[cfg(test)]
mod tests;

pub use engine::Engine;
pub use error::JobsError;
pub use events::{JobEvent, JobEventKind, StatusChange};
pub use grants::Grants;
pub use planning::MAX_DOCUMENT_BYTES;
pub use transitions::Limits;
