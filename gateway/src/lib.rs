//! sprig: an edge gateway that embeds an MQTT broker and keeps an AWS IoT Jobs compatible jobs store.
//!
//! Data flows one way: a transport ([`broker`]) carries a command ([`control`]) to the jobs engine
//! ([`jobs`]), which changes the store ([`store`]); devices speak the Jobs device API ([`device_api`]) to
//! the same engine. Background work ([`deletion`]) finishes what the engine starts, and what changed is
//! announced to devices ([`notify`]). The broker asks [`auth`] who a client is and which topics it may use
//! (built-in rules and the configured topic rules, on MQTT's matching rules in [`topic_filter`]). [`daemon`]
//! wires the pieces for `sprig run`; [`cli`] is the command line.
//!
//! # The direction of dependencies
//!
//! A module uses modules of its own layer or of a lower one, never of a higher one, and no two modules
//! use each other (`tests/module_graph.rs` checks both, and lists the cycles still being removed):
//!
//! 1. [`topic_filter`], [`config`]: leaves. The config is plain data; the checks on it that need another
//!    module run in [`daemon`].
//! 2. [`plugins`], [`store`]: the plugin containment, and the persisted shapes and their commits.
//! 3. [`auth`]: who a client is and what it may use.
//! 4. [`jobs`], [`deletion`]: the jobs rules and the engine, the one writer of the jobs store.
//! 5. [`broker`]: the MQTT transport; it knows sessions and topic rules, not jobs.
//! 6. [`recovery`], [`notify`], [`device_api`], [`control`]: the services that connect the broker and
//!    the engine.
//! 7. [`daemon`]: builds every module's settings from the config and wires the services together.
//! 8. [`cli`]: the command line.

pub mod auth;
pub mod broker;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod deletion;
pub mod device_api;
pub mod jobs;
pub mod notify;
pub mod plugins;
pub mod recovery;
pub mod store;
pub mod topic_filter;
