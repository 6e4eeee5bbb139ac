//! `sprig-sdk`: the one crate a sprig recovery-handler plugin depends on.
//!
//! When a job is force-deleted or force-canceled while a device is in the middle of it, the gateway asks a
//! *recovery handler* what to do about that device. A handler is a plugin: a shared library the gateway
//! loads at run time. With this crate a plugin is safe Rust:
//!
//! 1. a type implementing [`RecoveryHandler`]: built from its config ([`RecoveryHandler::new`]), it answers
//!    one [`RecoveryContext`] at a time with a [`Recovery`] (actions to take and an [`Outcome`]);
//! 2. one line, [`export_plugin!`], that exports it;
//! 3. `crate-type = ["cdylib"]` in the plugin's `Cargo.toml`.
//!
//! ```
//! use sprig_sdk::{Action, Outcome, Recovery, RecoveryContext, RecoveryHandler};
//!
//! #[derive(sprig_sdk::serde::Deserialize)]
//! #[serde(crate = "sprig_sdk::serde")]
//! struct Config {
//!     topic: String,
//! }
//!
//! struct Hello(Config);
//!
//! impl RecoveryHandler for Hello {
//!     type Config = Config;
//!
//!     fn new(config: Config) -> Result<Self, sprig_sdk::Error> {
//!         Ok(Hello(config))
//!     }
//!
//!     fn recover(&mut self, ctx: &RecoveryContext) -> Result<Recovery, sprig_sdk::Error> {
//!         Ok(Recovery {
//!             actions: vec![Action::Publish {
//!                 topic: ctx.render(&self.0.topic),
//!                 payload: format!("{{\"jobId\":\"{}\"}}", ctx.job_id),
//!                 qos: 1,
//!             }],
//!             outcome: Outcome::Recovered,
//!         })
//!     }
//! }
//!
//! sprig_sdk::export_plugin!(Hello);
//! ```
//!
//! Under the macro is a small C ABI ([`abi`]), versioned by [`ABI_VERSION`]: a `#[repr(C)]`
//! [`abi::Descriptor`], byte strings for names and JSON, and four `extern "C"` functions whose shims catch
//! panics. No Rust trait object crosses the boundary, so the plugin and the gateway need not be built by
//! the same compiler version; they only need the same ABI version.
//!
//! `serde` and `serde_json` are re-exported, so a plugin depends on this crate only (derive with
//! `#[serde(crate = "sprig_sdk::serde")]`).
//!
//! A plugin logs with [`info!`], [`warn!`], [`error!`], [`debug!`], [`trace!`] (or [`log!`] with a
//! [`log::Level`]): the lines reach the gateway's log with the plugin's name, its route and the level,
//! through a callback the host hands over ([`abi::HostApi`]); see [`mod@log`].
//!
//! Panics, errors, malformed answers and calls that overrun their time budget are contained by the
//! gateway. By default a plugin runs in a host process of its own, so a segfault, an abort or undefined
//! behaviour ends only that host; a plugin loaded in-process (`isolation = "in-process"`) takes the gateway
//! down with it (systemd restarts it, and durable recoveries resume). See the README.

pub mod abi;
pub mod log;
mod types;

pub use abi::ABI_VERSION;
pub use types::{
    validate_status_details, Action, Outcome, Reason, Recovery, RecoveryContext,
    MAX_ACKNOWLEDGEMENT,
};

/// `serde`, re-exported so that plugins need no dependency of their own.
pub use serde;
/// `serde_json`, re-exported so that plugins need no dependency of their own.
pub use serde_json;

/// The error a handler returns: anything that converts into a boxed error, such as a `String`, a `&str`
/// (`Err("no topic".into())`) or any `std::error::Error` (with `?`). The gateway records its `Display`.
pub type Error = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A recovery handler: what a plugin implements.
///
/// The gateway makes one instance per configured use of the plugin (a `[[recovery]]` entry), from that
/// entry's config table, and then calls [`recover`](RecoveryHandler::recover) once per recovery attempt.
/// All calls on one instance (`new`, `recover`, drop) happen on one thread, one at a time; that is why
/// the handler need not be `Send` or `Sync` and `recover` takes `&mut self`.
///
/// Each call has a time budget set by the gateway. A call that overruns it has its plugin host process
/// killed, and the next call gets a new host, with a new instance from the same config. In-process, the
/// call cannot be stopped (a thread cannot be killed): the gateway stops waiting, quarantines the instance
/// (its later calls fail at once) and the thread is left to finish, or not. So do not block for long:
/// publish, record, and answer [`Outcome::RetryLater`] rather than wait for the device.
///
/// A panic in `new` or `recover` is caught and reported to the gateway as a failed call; the instance
/// stays in use, so leave `self` consistent if you panic (as always with unwinding).
pub trait RecoveryHandler: Sized + 'static {
    /// The handler's config: its route's `[recovery.config]` table in the gateway's TOML config (`{}`
    /// when there is none), handed over as JSON and deserialized with serde. Use `serde_json::Value` to
    /// take anything, `()` for nothing.
    type Config: serde::de::DeserializeOwned;

    /// Makes a handler from its config. An error refuses the config; the gateway reports the message.
    fn new(config: Self::Config) -> Result<Self, Error>;

    /// Handles one recovery attempt: what to do for `ctx`'s device now, and the outcome.
    fn recover(&mut self, ctx: &RecoveryContext) -> Result<Recovery, Error>;

    /// The same at the JSON level: parses the context, calls [`recover`](RecoveryHandler::recover) and
    /// serializes its answer. Leave it alone: it is the low-level hook under `recover`, for handlers that
    /// produce their answer as JSON text already, and for tests of the gateway's handling of malformed
    /// answers (whatever bytes it returns are what the gateway receives).
    fn recover_json(&mut self, context: &[u8]) -> Result<Vec<u8>, Error> {
        let ctx: RecoveryContext = serde_json::from_slice(context)
            .map_err(|e| format!("the gateway sent an unreadable context: {e}"))?;
        let recovery = self.recover(&ctx)?;
        Ok(serde_json::to_vec(&recovery)?)
    }
}

/// Exports a [`RecoveryHandler`] as this library's plugin: defines the `SPRIG_PLUGIN_DESCRIPTOR` static
/// ([`abi::Descriptor::new`]) with the sdk's panic-catching `extern "C"` shims.
///
/// `export_plugin!(MyHandler)` names the plugin after the crate (`CARGO_PKG_NAME` and
/// `CARGO_PKG_VERSION`); `export_plugin!(MyHandler, name = "rollback", version = "1.2.0")` names it
/// explicitly. Use it once per library.
#[macro_export]
macro_rules! export_plugin {
    ($handler:ty $(,)?) => {
        $crate::export_plugin!(
            $handler,
            name = ::core::env!("CARGO_PKG_NAME"),
            version = ::core::env!("CARGO_PKG_VERSION")
        );
    };
    ($handler:ty, name = $name:expr, version = $version:expr $(,)?) => {
        // A panic in a plugin built with `panic = "abort"` aborts the gateway's process: the sdk's
        // containment of panics needs unwinding.
        #[cfg(panic = "abort")]
        ::core::compile_error!(
            "sprig plugins must be built with `panic = \"unwind\"` (the default): with `panic = \"abort\"` a \
             panic in the plugin would abort the whole gateway instead of failing one call; remove \
             `panic = \"abort\"` from this crate's (or the workspace's) [profile] sections"
        );
        /// The plugin descriptor the sprig gateway looks up (see `sprig_sdk::abi`).
        #[no_mangle]
        pub static SPRIG_PLUGIN_DESCRIPTOR: $crate::abi::Descriptor =
            $crate::abi::Descriptor::new::<$handler>($name, $version);
    };
}

#[cfg(test)]
mod tests;

/// The README's examples, compiled as doctests so that the plugin author's guide stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
