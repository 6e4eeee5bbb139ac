//! The jobs engine: AWS IoT Jobs semantics over the store.
//!
//! [`model`] holds the records (job, execution, statuses), [`api`] the request and response shapes of the
//! control plane (boto3's names), [`error`] AWS's exception vocabulary, [`engine`] the operators' rules
//! (which state changes are allowed, for whom, within which limits), [`creation`] how CreateJob writes a
//! large job in bounded transactions that nobody sees until the last, [`device`] the devices' rules, and
//! [`events`] what the engine announces after a change. The engine never touches a transport;
//! it is handed a typed request and the caller's grants and answers a typed response or an exception.

pub mod api;
pub mod creation;
pub mod device;
pub mod engine;
pub mod error;
pub mod events;
pub mod model;
pub mod validate;

pub use engine::{Engine, Limits};
pub use error::JobsError;
pub use events::{JobEvent, JobEventKind};
