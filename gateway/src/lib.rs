//! sprig: an edge gateway that embeds an MQTT broker and keeps an AWS IoT Jobs compatible jobs store.
//!
//! Data flows one way: a transport ([`broker`]) carries a command ([`control`]) to the jobs engine
//! ([`jobs`]), which applies AWS's rules (pure, in `jobs::transitions`) and is the only writer to the
//! store ([`store`], which keeps the records of [`model`]); devices speak the Jobs device API
//! ([`device_api`]) to the same engine. Background work (`jobs::deletion`) finishes what the engine
//! starts, and what changed is announced to devices ([`notify`]) and to the recovery runner
//! ([`recovery`]). The broker asks [`auth`] who a client is and which topics it may use (built-in rules
//! and the configured topic rules, on MQTT's matching rules in [`topic_filter`]). [`daemon`] wires the
//! pieces for `sprig run`; [`cli`] is the command line.

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
