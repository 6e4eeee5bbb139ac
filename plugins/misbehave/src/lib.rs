//! `sprig-plugin-misbehave`: a test plugin that does exactly the wrong thing it is told to.
//!
//! Config: `mode = "ok" | "error" | "panic" | "hang" | "spin" | "garbage" | "abort" | "segfault"`, and
//! optionally
//! - `garbage = "non-utf8" | "not-json" | "wrong-shape" | "bad-topic"` (default `"non-utf8"`): which
//!   malformed answer `mode = "garbage"` returns;
//! - `hang_ms` (default one hour): how long `mode = "hang"` sleeps, and `mode = "spin"` busy-loops, in
//!   `recover`;
//! - `panic_in_new = true`: panic while being created instead;
//! - `print = true`: also print a line to stdout in each `recover` (what a plugin host keeps off its
//!   protocol pipe);
//! - `log = "text"`: also log this line (a template: `{thing}`, `{jobId}`, … are replaced) through the
//!   sdk's log macros in each `recover`, at `log_level` (`"error"`, `"warn"`, `"info"` (default),
//!   `"debug"`, `"trace"`), `log_repeat` times (default 1; a flood, numbered `#1`, `#2`, … when more
//!   than one), from a thread of its own if `log_from_thread = true` (joined before answering).
//!
//! Garbage goes out through [`RecoveryHandler::recover_json`], the sdk's low-level hook: whatever bytes
//! it returns are what the gateway receives.
//!
//! With the cargo feature `wrong-abi`, the library exports a descriptor claiming ABI version
//! `sprig_sdk::ABI_VERSION + 1` (written out by hand rather than with `export_plugin!`), which a gateway
//! must refuse before calling anything.

use std::time::{Duration, Instant};

use sprig_sdk::log::Level;
use sprig_sdk::serde::Deserialize;
use sprig_sdk::{Outcome, Recovery, RecoveryContext, RecoveryHandler};

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(crate = "sprig_sdk::serde", rename_all = "kebab-case")]
pub enum Mode {
    /// Answer `Recovered`, no actions.
    Ok,
    /// Return an error.
    Error,
    /// Panic.
    Panic,
    /// Sleep for `hang_ms`.
    Hang,
    /// Busy-loop (one core at 100 %) for `hang_ms`.
    Spin,
    /// Answer malformed bytes.
    Garbage,
    /// Abort the process, as a panic does in a plugin built with `panic = "abort"`.
    Abort,
    /// Write to an unmapped address: `SIGSEGV`, as a memory bug in unsafe or C code would.
    Segfault,
}

/// Which malformed answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(crate = "sprig_sdk::serde", rename_all = "kebab-case")]
pub enum Garbage {
    /// Bytes that are not UTF-8 (nor JSON).
    #[default]
    NonUtf8,
    /// UTF-8 that is not JSON.
    NotJson,
    /// JSON that is not a `Recovery`.
    WrongShape,
    /// A `Recovery` publishing to a wildcard topic.
    BadTopic,
}

/// The plugin's config table.
#[derive(Debug, Deserialize)]
#[serde(crate = "sprig_sdk::serde", deny_unknown_fields)]
pub struct Config {
    /// What to do in `recover`.
    pub mode: Mode,
    /// Which garbage, for `mode = "garbage"`.
    #[serde(default)]
    pub garbage: Garbage,
    /// How long to hang, for `mode = "hang"`.
    #[serde(default = "one_hour_ms")]
    pub hang_ms: u64,
    /// Panic in `new`.
    #[serde(default)]
    pub panic_in_new: bool,
    /// Print to stdout in `recover`.
    #[serde(default)]
    pub print: bool,
    /// A line to log in `recover` (a template).
    #[serde(default)]
    pub log: Option<String>,
    /// The level of `log`.
    #[serde(default)]
    pub log_level: LogLevel,
    /// How many times to log `log` per call.
    #[serde(default = "once")]
    pub log_repeat: u32,
    /// Log from a thread of the plugin's own instead of the calling one.
    #[serde(default)]
    pub log_from_thread: bool,
}

/// `log_level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(crate = "sprig_sdk::serde", rename_all = "kebab-case")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl From<LogLevel> for Level {
    fn from(level: LogLevel) -> Level {
        match level {
            LogLevel::Error => Level::Error,
            LogLevel::Warn => Level::Warn,
            LogLevel::Info => Level::Info,
            LogLevel::Debug => Level::Debug,
            LogLevel::Trace => Level::Trace,
        }
    }
}

fn once() -> u32 {
    1
}

/// Logs `line` `repeat` times at `level` (numbered when more than once).
fn log_lines(line: &str, level: Level, repeat: u32) {
    if repeat == 1 {
        sprig_sdk::log!(level, "{line}");
        return;
    }
    for n in 1..=repeat {
        sprig_sdk::log!(level, "{line} #{n}");
    }
}

fn one_hour_ms() -> u64 {
    3_600_000
}

/// The handler.
pub struct Misbehave {
    config: Config,
}

impl RecoveryHandler for Misbehave {
    type Config = Config;

    fn new(config: Config) -> Result<Self, sprig_sdk::Error> {
        if config.panic_in_new {
            panic!("misbehave: panicking in new, as configured");
        }
        Ok(Misbehave { config })
    }

    fn recover(&mut self, ctx: &RecoveryContext) -> Result<Recovery, sprig_sdk::Error> {
        if self.config.print {
            println!("misbehave: printing to stdout for {}", ctx.thing_name);
        }
        if let Some(template) = &self.config.log {
            let (line, level, repeat) = (
                ctx.render(template),
                self.config.log_level.into(),
                self.config.log_repeat,
            );
            if self.config.log_from_thread {
                std::thread::spawn(move || log_lines(&line, level, repeat))
                    .join()
                    .map_err(|_| "misbehave: the logging thread panicked")?;
            } else {
                log_lines(&line, level, repeat);
            }
        }
        match self.config.mode {
            Mode::Ok | Mode::Garbage => Ok(Recovery {
                actions: Vec::new(),
                outcome: Outcome::Recovered,
            }),
            Mode::Error => {
                Err(format!("misbehave: failing for {} as configured", ctx.thing_name).into())
            }
            Mode::Panic => panic!("misbehave: panicking for {} as configured", ctx.thing_name),
            Mode::Abort => {
                eprintln!("misbehave: aborting for {} as configured", ctx.thing_name);
                std::process::abort()
            }
            Mode::Segfault => {
                eprintln!(
                    "misbehave: segfaulting for {} as configured",
                    ctx.thing_name
                );
                // Not the null pointer itself: debug builds check `write_volatile`'s pointer and would
                // turn a null one into an abort. Address 1 passes that check and is never mapped (the
                // kernel keeps the first pages unmapped), so the write faults.
                let unmapped = std::ptr::NonNull::<u8>::dangling().as_ptr();
                // SAFETY: none; deliberately undefined behaviour: this mode exists to crash its process
                // with SIGSEGV, to show what a plugin host contains.
                unsafe { unmapped.write_volatile(1) };
                unreachable!("the write above faults");
            }
            Mode::Hang | Mode::Spin => {
                let until = Instant::now() + Duration::from_millis(self.config.hang_ms);
                if self.config.mode == Mode::Hang {
                    std::thread::sleep(until.saturating_duration_since(Instant::now()));
                } else {
                    while Instant::now() < until {
                        std::hint::spin_loop();
                    }
                }
                Ok(Recovery {
                    actions: Vec::new(),
                    outcome: Outcome::Recovered,
                })
            }
        }
    }

    fn recover_json(&mut self, context: &[u8]) -> Result<Vec<u8>, sprig_sdk::Error> {
        if self.config.mode != Mode::Garbage {
            let ctx: RecoveryContext = sprig_sdk::serde_json::from_slice(context)?;
            return Ok(sprig_sdk::serde_json::to_vec(&self.recover(&ctx)?)?);
        }
        let answer: &[u8] = match self.config.garbage {
            Garbage::NonUtf8 => b"\xff\xfe{\"actions\": \xc3\x28}",
            Garbage::NotJson => b"{\"actions\": [], \"outcome\": ",
            Garbage::WrongShape => b"{\"actions\": 3, \"outcome\": \"maybe\"}",
            Garbage::BadTopic => {
                b"{\"actions\": [{\"type\": \"publish\", \"topic\": \"things/#\", \"payload\": \"\"}], \"outcome\": {\"type\": \"recovered\"}}"
            }
        };
        Ok(answer.to_vec())
    }
}

#[cfg(not(feature = "wrong-abi"))]
sprig_sdk::export_plugin!(Misbehave);

/// A descriptor from the future: the next ABI version, which no current host may trust.
#[cfg(feature = "wrong-abi")]
#[no_mangle]
pub static SPRIG_PLUGIN_DESCRIPTOR: sprig_sdk::abi::Descriptor = sprig_sdk::abi::Descriptor {
    abi_version: sprig_sdk::ABI_VERSION + 1,
    ..sprig_sdk::abi::Descriptor::new::<Misbehave>(
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_VERSION"),
    )
};
