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
//! [`http_api`] serves AWS IoT's REST API for the jobs operations (the `aws iot` CLI, boto3).
//!
//! # The direction of dependencies
//!
//! A module uses modules of its own layer or of a lower one, never of a higher one, and no two modules
//! use each other (`tests/module_graph.rs` checks both):
//!
//! 1. [`topic_filter`], [`config`], [`model`], [`metrics`]: leaves. The config is plain data; the checks on it that
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
//!    [`http_api`]: AWS IoT's REST API over HTTP; it answers the AWS CLI and SDKs through [`control`].
//! 8. [`daemon`]: builds every module's settings from the config and wires the services together.
//! 9. [`cli`]: the command line.
//!
//! # The path of a DeleteJob
//!
//! 1. `sprig delete-job --job-id j1 --force` ([`cli`]) connects as an operator and publishes the request
//!    to `$sprig/control/{clientId}/DeleteJob` (the name from [`control::op`]).
//! 2. [`broker`]: the listener has authenticated the connection ([`auth`]) and checks the topic against
//!    its principal's rules; the publish goes to the control API's tap, not to rumqttd's router.
//! 3. [`control`]: the client must be an operator within its request rate; the body becomes a typed
//!    [`DeleteJobRequest`](jobs::api::DeleteJobRequest) and goes to
//!    [`Engine::delete_job`](jobs::Engine::delete_job) with the operator's grants.
//! 4. [`jobs`]: the engine checks the ids, then, on the blocking pool and under the store's write lock,
//!    reads the job and how many jobs are being deleted and asks
//!    [`transitions::start_deletion`](jobs::transitions::start_deletion) for the change (AWS's rules:
//!    `force` unless terminal, the concurrent-deletion limits). It commits DELETION_IN_PROGRESS to the
//!    [`store`] and flushes it, hands the job id to the deletion worker, and [`control`]'s `/accepted`
//!    goes straight to the operator's connection.
//! 5. The deletion worker ([`jobs::deletion`]) removes the executions in bounded batches: each step
//!    reads a batch, asks [`transitions::delete_executions`](jobs::transitions::delete_executions) for the
//!    change (the job's counts, a recovery for each IN_PROGRESS execution on a recovery route) and
//!    commits it through the engine, which announces a [`JobEvent`](jobs::JobEvent) of kind `Deleted`;
//!    the last step removes the job record.
//! 6. [`notify`] turns each event into the devices' notifications, delivered straight to their
//!    connections; when a step created recoveries, the same event wakes the [`recovery`] runner, which
//!    calls each route's plugin ([`plugins`]) once the device is listening and records the outcome
//!    through the engine.

pub mod auth;
pub mod broker;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod device_api;
pub mod http_api;
pub mod jobs;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod plugins;
pub mod recovery;
pub mod store;
pub mod topic_filter;
pub mod uplink;
