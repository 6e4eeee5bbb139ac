//! The plugin host: loads recovery-handler plugins (shared libraries built with `sprig-sdk`) and calls them
//! with containment.
//!
//! ```text
//! PluginLibrary::load(path) ──▶ Arc<PluginLibrary>      (dlopen, descriptor checked, never unloaded)
//!        │
//!        └─ PluginInstance::new(lib, config, budget).await ──▶ PluginInstance   (one worker thread)
//!                 └─ instance.recover(&ctx).await ──▶ Result<Recovery, PluginError>
//! ```
//!
//! - **Loading** ([`PluginLibrary::load`]): the file is opened with `dlopen(RTLD_NOW | RTLD_LOCAL)`; the
//!   `SPRIG_PLUGIN_DESCRIPTOR` symbol's first field, the ABI version, is compared with
//!   [`sprig_sdk::ABI_VERSION`] before anything else of the descriptor is read or any plugin function is
//!   called. A refusal ([`LoadError`]) names the file and, for a version mismatch, both versions. A loaded
//!   library is never unloaded (its handle is leaked on purpose), so no code or static of a plugin can
//!   disappear under a running or stuck call; loading the same file twice returns the same library.
//! - **Calling** ([`PluginInstance`]): each instance lives on its own thread, fed by a channel; the async
//!   caller waits for the answer with the instance's time budget ([`tokio::time::timeout`]), so a plugin
//!   never blocks the runtime. Calls on one instance run one at a time, in order; the budget counts from
//!   the moment the call reaches the worker, not the wait for an earlier call.
//! - **Containment**: a panic (caught by the sdk's shim and returned as a status code), an error, an
//!   answer that is not UTF-8, not JSON, not a [`Recovery`](sprig_sdk::Recovery) or not valid (wildcard
//!   topic, QoS 2), and an overrun are each returned as a [`PluginError`] naming the plugin, and counted
//!   ([`PluginStats`]). A thread cannot be killed, so an overrun *quarantines* the instance: its thread is
//!   abandoned to finish (or not) and every later call fails at once with [`PluginError::Quarantined`].
//!   A panic does not quarantine: the shim caught it and the instance stays usable.
//!
//! What in-process loading cannot contain: a plugin that segfaults, aborts (a panic in a plugin built with
//! `panic = "abort"`, a panic during a panic, `std::process::abort`), exits the process, corrupts memory or
//! otherwise has undefined behaviour takes the whole gateway down, and a plugin that deadlocks or spins
//! forever keeps its thread (and what it allocated) until the process ends. The answer to the first is
//! the service manager (systemd `Restart=on-failure`) plus durable recoveries that resume after the
//! restart; to the second, quarantine and a restart when convenient. Loading a plugin means trusting its
//! code as much as the gateway's own.

mod instance;
mod library;

pub use instance::{DirectInstance, FailureKind, PluginError, PluginInstance};
pub use library::{LoadError, PluginDescriptor, PluginLibrary, PluginStats};

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
