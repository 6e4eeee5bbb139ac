//! Logging from a plugin into the gateway's log: [`Level`], [`log`], and the macros [`error!`](crate::error),
//! [`warn!`](crate::warn), [`info!`](crate::info), [`debug!`](crate::debug), [`trace!`](crate::trace) and
//! [`log!`](crate::log!).
//!
//! A line goes through the host's log callback ([`crate::abi::LogFn`]), which the gateway logs with the
//! plugin's name, its route and the level. The callback is the host's: it bounds each line to
//! [`MAX_LOG_MESSAGE`](crate::abi::MAX_LOG_MESSAGE) bytes and the rate of lines (a plugin logging in a loop
//! has lines dropped, and the gateway logs how many), so logging never blocks a handler for long. Without
//! a host (a gateway older than the callback, or a unit test of the handler) a line goes to stderr
//! instead, which a plugin host forwards to the gateway's log as raw text.

use crate::abi::{self, Bytes};

/// How severe a log line is (the gateway logs it at this level).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum Level {
    /// Something failed.
    Error = abi::LOG_ERROR,
    /// Something looks wrong.
    Warn = abi::LOG_WARN,
    /// What the plugin does, for the operator.
    Info = abi::LOG_INFO,
    /// Detail for whoever debugs the plugin (hidden by the gateway's default filter).
    Debug = abi::LOG_DEBUG,
    /// Even more detail (hidden by the gateway's default filter).
    Trace = abi::LOG_TRACE,
}

impl Level {
    /// `ERROR`, `WARN`, `INFO`, `DEBUG`, `TRACE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        }
    }
}

/// Logs one line at `level`: what the macros call. Cheap to call from any thread; never panics.
pub fn log(level: Level, message: std::fmt::Arguments<'_>) {
    // A `&'static str` needs no formatting (and no allocation).
    let formatted;
    let text = match message.as_str() {
        Some(text) => text,
        None => {
            formatted = message.to_string();
            &formatted
        }
    };
    log_str(level, text);
}

/// Logs `text` at `level`. The host keeps at most [`MAX_LOG_MESSAGE`](abi::MAX_LOG_MESSAGE) bytes of it
/// (and says it cut the rest); without a host, the line goes to stderr whole.
pub fn log_str(level: Level, text: &str) {
    match abi::host().and_then(|host| Some((host, host.log_fn()?))) {
        // SAFETY: the callback and its `host` pointer are the host's, valid until the process ends;
        // `text` lives through the call, which only reads it.
        Some((host, log)) => unsafe { log(host, level as u32, Bytes::from_slice(text.as_bytes())) },
        None => {
            use std::io::Write as _;
            // A failed write to stderr has nowhere better to go.
            let _ = writeln!(std::io::stderr().lock(), "{} {text}", level.as_str());
        }
    }
}

/// Logs a line at a [`Level`](crate::log::Level) given at run time: `sprig_sdk::log!(Level::Info, "…", args)`,
/// with `format!` syntax. The gateway's log shows it with the plugin's name and route.
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)+) => {
        $crate::log::log($level, ::core::format_args!($($arg)+))
    };
}

/// Logs a line at level error: `sprig_sdk::error!("cannot reach {}", thing)` (`format!` syntax).
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Error, $($arg)+) };
}

/// Logs a line at level warn (`format!` syntax).
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Warn, $($arg)+) };
}

/// Logs a line at level info (`format!` syntax).
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Info, $($arg)+) };
}

/// Logs a line at level debug (`format!` syntax); the gateway's default filter hides it.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Debug, $($arg)+) };
}

/// Logs a line at level trace (`format!` syntax); the gateway's default filter hides it.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Trace, $($arg)+) };
}
