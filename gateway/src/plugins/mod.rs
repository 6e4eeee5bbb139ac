//! Recovery-handler plugins (shared libraries built with `sprig-sdk`): loading them, and calling them
//! with containment, in a host process of their own (the default) or in the gateway's.
//!
//! ```text
//! isolation = "process":
//!   HostedInstance::start(options).await ──▶ HostedInstance ─ pipes ─▶ `sprig plugin-host` (child process)
//!        └─ instance.recover(&ctx).await ──▶ Result<Recovery, PluginError>     PluginLibrary + DirectInstance
//!
//! isolation = "in-process":
//!   PluginLibrary::load(path) ──▶ Arc<PluginLibrary>      (dlopen, descriptor checked, never unloaded)
//!        └─ PluginInstance::new(lib, config, budget).await ──▶ PluginInstance   (one worker thread)
//!                 └─ instance.recover(&ctx).await ──▶ Result<Recovery, PluginError>
//! ```
//!
//! - **Loading** ([`PluginLibrary::load`], in the gateway or in the host): the file is opened with
//!   `dlopen(RTLD_NOW | RTLD_LOCAL)`; the `SPRIG_PLUGIN_DESCRIPTOR` symbol's first field, the ABI version,
//!   is compared with [`sprig_sdk::ABI_VERSION`] before anything else of the descriptor is read or any
//!   plugin function is called. A refusal ([`LoadError`]) names the file and, for a version mismatch, both
//!   versions. A loaded library is never unloaded (its handle is leaked on purpose), so no code or static
//!   of a plugin can disappear under a running or stuck call; loading the same file twice returns the
//!   same library.
//! - **Process isolation** ([`HostedInstance`], [`supervisor`]): the gateway runs its own binary as
//!   `sprig plugin-host --library PATH` (`host`), which loads the library and serves `create` and
//!   `recover` over a pipe ([`wire`]); the gateway never maps the plugin's code. A segfault, an abort, an
//!   exit or memory corruption ends only the host: the call fails naming the signal or exit status
//!   ([`PluginError::Crashed`]) and a new host serves the next call, after a backoff. An overrun kills
//!   the host ([`PluginError::HostKilled`]), so its CPU and memory come back. The host returns the
//!   plugin's status and bytes untouched; the gateway judges them with the same code as in-process calls.
//! - **In-process calls** ([`PluginInstance`]): each instance lives on its own thread, fed by a channel;
//!   the async caller waits for the answer with the instance's time budget ([`tokio::time::timeout`]),
//!   so a plugin never blocks the runtime. Calls on one instance run one at a time, in order; the budget
//!   counts from the moment the call reaches the worker, not the wait for an earlier call. A thread
//!   cannot be killed, so an overrun *quarantines* the instance: its thread is abandoned to finish (or
//!   not) and every later call fails at once with [`PluginError::Quarantined`].
//! - **Logs**, either way ([`logging`]): before a library's first `create` the plugin is handed a log
//!   callback (the descriptor's `set_host`, if it has one); its lines are bounded (size, rate) and logged
//!   with `tracing` at their level with the plugin's name and route, directly in-process, through log
//!   frames on the pipe from a host.
//! - **Containment**, either way: a panic (caught by the sdk's shim and returned as a status code), an
//!   error, an answer that is not UTF-8, not JSON, not a [`Recovery`](sprig_sdk::Recovery) or not valid
//!   (wildcard topic, QoS 2), and an overrun are each returned as a [`PluginError`] naming the plugin,
//!   and counted ([`PluginStats`]). A caught panic leaves the instance usable.
//!
//! What in-process loading cannot contain: a plugin that segfaults, aborts (a panic in a plugin built
//! with `panic = "abort"`, a panic during a panic, `std::process::abort`), exits the process, corrupts
//! memory or otherwise has undefined behaviour takes the whole gateway down, and a plugin that deadlocks
//! or spins forever keeps its thread (and a core) until the process ends. That is what process isolation
//! is for; in-process calls are for trusted plugins on a hot path.

mod host;
mod instance;
mod library;
pub mod logging;
pub mod supervisor;
pub mod wire;

pub use host::serve as serve_host;
pub use instance::{DirectInstance, FailureKind, InstanceGroup, PluginError, PluginInstance};
pub use library::{LoadError, PluginDescriptor, PluginLibrary, PluginStats};
pub use supervisor::{
    host_program, HostOptions, HostPhase, HostStatus, HostedInstance, StartError,
};

/// A plugin's config as the plugin receives it: its `[[recovery]]` TOML table as JSON. Tables become
/// objects, arrays arrays, strings, integers, floats and booleans themselves, and TOML dates and times
/// their RFC 3339 text (JSON has no date type). A float that JSON cannot hold (NaN, infinity) becomes
/// `null`.
pub fn toml_config(table: &toml::Table) -> serde_json::Value {
    serde_json::Value::Object(
        table
            .iter()
            .map(|(key, value)| (key.clone(), toml_to_json(value)))
            .collect(),
    )
}

fn toml_to_json(value: &toml::Value) -> serde_json::Value {
    use serde_json::Value as Json;
    match value {
        toml::Value::String(text) => Json::String(text.clone()),
        toml::Value::Integer(n) => Json::from(*n),
        toml::Value::Float(x) => serde_json::Number::from_f64(*x).map_or(Json::Null, Json::Number),
        toml::Value::Boolean(b) => Json::Bool(*b),
        toml::Value::Datetime(datetime) => Json::String(datetime.to_string()),
        toml::Value::Array(items) => Json::Array(items.iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => toml_config(table),
    }
}

#[cfg(test)]
mod tests;
