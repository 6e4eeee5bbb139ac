//! sprig: an edge gateway that embeds an MQTT broker and keeps an AWS IoT Jobs compatible jobs store.
//!
//! Data flows one way: a transport ([`broker`]) carries a command ([`control`]) to the jobs engine
//! ([`jobs`]), which applies AWS's rules (pure, in `jobs::transitions`) and is the only writer to the
//! store ([`store`], which keeps the records of [`model`]); devices speak the Jobs device API
//! ([`device_api`]) to the same engine. Background work (`jobs::deletion`) finishes what the engine
//! starts, and what changed is announced to devices ([`notify`]) and to the recovery runner
//! ([`recovery`]). The broker asks [`auth`] who a client is and which topics it may use (built-in rules
//! and the configured topic rules, on MQTT's matching rules in [`topic_filter`]). [`daemon`] wires the
//! pieces for `sprig run`; [`cli`] is the command line. [`uplink`] connects the gateway out to the
//! fleet's MQTT broker: control requests come down, status changes and presence events go up.
//!
//! # The direction of dependencies
//!
//! A module uses modules of its own layer or of a lower one, never of a higher one, and no two modules
//! use each other (`tests/module_graph.rs` checks both):
//!
//! 1. [`topic_filter`], [`config`], [`model`]: leaves. The config is plain data; the checks on it that
//!    need another module run in [`daemon`]. The model is the records the store keeps.
//! 2. [`plugins`], [`store`]: the plugin containment, and the persisted shapes and their commits.
//! 3. [`jobs`]: the jobs rules (pure) and the engine, the one writer of the jobs store; its deletion
//!    worker and the recovery routes' matcher.
//! 4. [`auth`]: who a client is and what it may use (a device is named by a valid thing name, `jobs`).
//! 5. [`broker`]: the MQTT transport; it knows sessions and topic rules, not jobs.
//! 6. [`recovery`], [`notify`], [`device_api`], [`control`]: the services that connect the broker and
//!    the engine.
//! 7. [`uplink`]: the connection out to the fleet's broker; it answers the fleet through [`control`] and
//!    reports the engine's status changes and the broker's presence events.
//! 8. [`daemon`]: builds every module's settings from the config and wires the services together.
//! 9. [`cli`]: the command line.

pub mod auth;
pub mod broker;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod device_api;
pub mod jobs;
pub mod model;
pub mod notify;
pub mod plugins;
pub mod recovery;
pub mod store;
pub mod topic_filter;
pub mod uplink;
