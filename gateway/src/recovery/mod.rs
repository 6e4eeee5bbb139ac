//! Durable recoveries: bringing a device back to a valid state after its IN_PROGRESS execution was
//! removed by a job deletion or canceled by a forced CancelJob.
//!
//! A recovery is created in the same store transaction that interrupts the execution (the jobs engine's
//! deletion and CancelJob), for devices that a `[[recovery]]` route ([`Routes`]) gives a handler. The
//! runner ([`runner`]) then calls that route's plugin (through the containment of [`crate::plugins`]) once
//! the device is attached — at once, or when it next connects and subscribes — applies the actions it
//! answers (MQTT messages to the device, status details to record) and records its outcome through the
//! jobs engine, which writes it: RECOVERED, FAILED, or another attempt later. The attempt counter is
//! written before each call, so a crash in the middle re-runs the attempt after the restart and the
//! handler, told the attempt number, can be idempotent. Every recovery ends in exactly one recorded
//! outcome.
//! The routes' plugins, loaded, are [`Handlers`]: the runner calls them; operators see their state and
//! reset them through the control API ([`status`] has the shapes and the rules that name a state).

pub mod handlers;
pub mod runner;
pub mod status;

pub use crate::jobs::routes::Routes;
pub use handlers::Handlers;
