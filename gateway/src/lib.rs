//! sprig: an edge gateway that embeds an MQTT broker and keeps an AWS IoT Jobs compatible jobs store.
//!
//! Data flows one way: a transport ([`broker`]) carries a command ([`control`]) to the jobs engine
//! ([`jobs`]), which changes the store ([`store`]); devices speak the Jobs device API ([`device_api`]) to
//! the same engine. Background work ([`deletion`]) finishes what the engine starts, and what changed is
//! announced to devices ([`notify`]). [`daemon`] wires the pieces for `sprig run`; [`cli`] is the command line.

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
