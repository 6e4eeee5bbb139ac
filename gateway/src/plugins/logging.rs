//! Plugin log lines: the host side of the sdk's log callback ([`sprig_sdk::abi::LogFn`]), its bounds
//! (message size, rate), and where lines go.
//!
//! Each loaded library is handed its own [`HostApi`] (inside a [`Connection`]) before its first
//! `create`. A line the plugin logs through it is bounded to [`MAX_LOG_MESSAGE`] bytes and admitted by
//! the connection's [`LogLimiter`], a token bucket: a plugin logging in a loop has its lines dropped, and
//! how many is reported (before the next admitted line, and after each call) instead of flooding the
//! log or memory. Admitted lines go to the process's [`LogSink`]: in the gateway, [`emit`] (`tracing`,
//! with the plugin's name, its route and the level); in a plugin host process, frames on the protocol
//! pipe, which the gateway's supervisor passes to [`emit`] in turn.
//!
//! The route: in a host process the supervisor knows it (one host per route). In-process a library may
//! serve several routes, so a line logged on an instance's worker thread is tagged with that instance's
//! route ([`with_route`]) and one logged from a thread of the plugin's own carries no route (`-`).

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use sprig_sdk::abi::{self, Bytes, HostApi, MAX_LOG_MESSAGE};

/// Lines a plugin may log at once, before the rate applies.
pub const LOG_BURST: u32 = 100;
/// Lines per second a plugin may log in the long run.
pub const LOG_LINES_PER_SECOND: u32 = 50;

/// How the log shows a line that was cut to [`MAX_LOG_MESSAGE`] bytes.
const TRUNCATED: &str = " [truncated]";

/// A token bucket of log lines: [`LOG_BURST`] at once, [`LOG_LINES_PER_SECOND`] after that; counts what
/// it refuses. Pure: the caller passes the time.
#[derive(Debug, Clone)]
pub struct LogLimiter {
    burst: f64,
    per_second: f64,
    tokens: f64,
    last: Option<Instant>,
    dropped: u64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new(LOG_BURST, LOG_LINES_PER_SECOND)
    }
}

impl LogLimiter {
    pub fn new(burst: u32, per_second: u32) -> LogLimiter {
        LogLimiter {
            burst: f64::from(burst),
            per_second: f64::from(per_second),
            tokens: f64::from(burst),
            last: None,
            dropped: 0,
        }
    }

    /// Whether a line logged at `now` may pass; a refused line is counted as dropped.
    pub fn admit(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last);
            self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// Lines dropped since the last call (to report them once).
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }
}

/// One admitted log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLine<'a> {
    /// The plugin's name.
    pub plugin: &'a str,
    /// The route, if known.
    pub route: Option<&'a str>,
    /// The ABI level ([`abi::LOG_ERROR`] … [`abi::LOG_TRACE`]).
    pub level: u32,
    /// The text, bounded.
    pub message: &'a str,
}

/// Where admitted lines and dropped-line counts go. Called from any thread the plugin logs from.
pub trait LogSink: Send + Sync {
    /// One line.
    fn line(&self, line: LogLine<'_>);
    /// `count` lines of `plugin` were dropped (over the rate).
    fn dropped(&self, plugin: &str, route: Option<&str>, count: u64);
}

/// The gateway's sink: `tracing`.
struct Tracing;

impl LogSink for Tracing {
    fn line(&self, line: LogLine<'_>) {
        emit(line);
    }

    fn dropped(&self, plugin: &str, route: Option<&str>, count: u64) {
        emit_dropped(plugin, route, count);
    }
}

static SINK: OnceLock<Box<dyn LogSink>> = OnceLock::new();

/// Sends this process's plugin log lines to `sink` instead of `tracing` (a plugin host sends them to the
/// gateway). Effective only before the first line; false if a sink was set already.
pub fn set_sink(sink: Box<dyn LogSink>) -> bool {
    SINK.set(sink).is_ok()
}

fn sink() -> &'static dyn LogSink {
    SINK.get_or_init(|| Box::new(Tracing)).as_ref()
}

/// Logs a plugin's line in the gateway's log, at its level (an unknown level logs as info). The
/// target is `sprig::plugin`, so `RUST_LOG=info,sprig::plugin=debug` shows a plugin's debug lines.
pub fn emit(line: LogLine<'_>) {
    let LogLine {
        plugin,
        route,
        level,
        message,
    } = line;
    let route = route.unwrap_or("-");
    match level {
        abi::LOG_ERROR => tracing::error!(target: "sprig::plugin", plugin, route, "{message}"),
        abi::LOG_WARN => tracing::warn!(target: "sprig::plugin", plugin, route, "{message}"),
        abi::LOG_DEBUG => tracing::debug!(target: "sprig::plugin", plugin, route, "{message}"),
        abi::LOG_TRACE => tracing::trace!(target: "sprig::plugin", plugin, route, "{message}"),
        _ => tracing::info!(target: "sprig::plugin", plugin, route, "{message}"),
    }
}

/// Says in the gateway's log that `count` lines of a plugin were dropped.
pub fn emit_dropped(plugin: &str, route: Option<&str>, count: u64) {
    tracing::warn!(
        target: "sprig::plugin",
        plugin,
        route = route.unwrap_or("-"),
        dropped = count,
        "plugin logged too fast: {count} log lines dropped (at most {LOG_BURST} at once, \
         {LOG_LINES_PER_SECOND} a second)"
    );
}

/// A plugin's message as text: lossy UTF-8 of at most [`MAX_LOG_MESSAGE`] bytes (cut at a character
/// boundary), marked when cut. Reads no more than that of the plugin's buffer.
pub fn bounded_text(message: &[u8]) -> String {
    let cut = message.len() > MAX_LOG_MESSAGE;
    let mut text =
        String::from_utf8_lossy(&message[..message.len().min(MAX_LOG_MESSAGE)]).into_owned();
    if cut {
        // The cut may split a character, which lossy decoding turned into U+FFFD: drop it.
        if text.ends_with(char::REPLACEMENT_CHARACTER) {
            text.pop();
        }
        text.push_str(TRUNCATED);
    }
    text.trim_end().to_owned()
}

thread_local! {
    /// The route of the in-process instance this thread works for.
    static ROUTE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Tags the plugin lines logged on this thread with `route` (an in-process instance's worker thread).
pub fn with_route(route: Option<String>) {
    ROUTE.with(|current| *current.borrow_mut() = route);
}

/// One library's link to this process: what its `set_host` received. `#[repr(C)]` with the
/// [`HostApi`] first, so the pointer the plugin hands back to `log_line` is this connection's.
#[repr(C)]
pub struct Connection {
    api: HostApi,
    plugin: String,
    limiter: Mutex<LogLimiter>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A connection for the library of plugin `plugin`, alive until the process ends (libraries are never
    /// unloaded, and the plugin keeps the pointer).
    pub fn leak(plugin: &str) -> &'static Connection {
        Box::leak(Box::new(Connection {
            api: HostApi {
                size: std::mem::size_of::<HostApi>(),
                log: Some(log_line),
            },
            plugin: plugin.to_owned(),
            limiter: Mutex::new(LogLimiter::default()),
        }))
    }

    /// The pointer to hand to the plugin's `set_host`.
    pub fn api(&'static self) -> *const HostApi {
        &self.api
    }

    /// A line from the plugin: bounded, admitted or dropped, and to the sink.
    fn log(&self, level: u32, message: &[u8]) {
        let (admitted, dropped) = {
            let mut limiter = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
            let admitted = limiter.admit(Instant::now());
            (admitted, if admitted { limiter.take_dropped() } else { 0 })
        };
        if !admitted {
            return;
        }
        ROUTE.with(|route| {
            let route = route.borrow();
            if dropped > 0 {
                sink().dropped(&self.plugin, route.as_deref(), dropped);
            }
            sink().line(LogLine {
                plugin: &self.plugin,
                route: route.as_deref(),
                level,
                message: &bounded_text(message),
            });
        });
    }

    /// Reports the lines dropped since the last report, if any: after each call, so a flood that ends
    /// with the call is reported at once rather than with the plugin's next line.
    pub fn report_dropped(&self) {
        let dropped = self
            .limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_dropped();
        if dropped > 0 {
            ROUTE.with(|route| sink().dropped(&self.plugin, route.borrow().as_deref(), dropped));
        }
    }
}

/// The [`abi::LogFn`] every connection hands out.
///
/// # Safety
/// `host` is a pointer [`Connection::api`] gave out; `message` is readable for the call (the ABI).
unsafe extern "C" fn log_line(host: *const HostApi, level: u32, message: Bytes) {
    if host.is_null() || (message.ptr.is_null() && message.len != 0) {
        return;
    }
    // Never unwind into the plugin (that aborts): a panic in a sink costs the line, nothing else.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `host` is the first field of a leaked `#[repr(C)]` Connection (the only HostApi this
        // process hands out), so the pointer is the connection's, valid until the process ends.
        let connection = unsafe { &*(host as *const Connection) };
        // SAFETY: the plugin's buffer, valid during the call; at most MAX_LOG_MESSAGE + 1 bytes are read
        // (the extra one tells that the message was longer).
        let message = unsafe {
            Bytes {
                ptr: message.ptr,
                len: message.len.min(MAX_LOG_MESSAGE + 1),
            }
            .as_slice()
        };
        connection.log(level, message);
    }));
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_limiter_admits_a_burst_then_its_rate_and_counts_the_rest() {
        let mut limiter = LogLimiter::new(3, 10);
        let start = Instant::now();
        let admitted = (0..10).filter(|_| limiter.admit(start)).count();
        assert_eq!(admitted, 3);
        assert_eq!(limiter.take_dropped(), 7);
        assert_eq!(limiter.take_dropped(), 0, "reported once");
        // 10 a second: one more every 100 ms, never more than the burst.
        assert!(!limiter.admit(start + Duration::from_millis(50)));
        assert!(limiter.admit(start + Duration::from_millis(110)));
        let later = start + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| limiter.admit(later)).count(), 3);
        assert_eq!(limiter.take_dropped(), 8);
    }

    #[test]
    fn messages_are_bounded_whole_characters_and_marked_when_cut() {
        assert_eq!(bounded_text(b"hello\n"), "hello");
        assert_eq!(bounded_text(b"\xffx"), "\u{fffd}x");
        let long = "é".repeat(MAX_LOG_MESSAGE);
        let text = bounded_text(&long.as_bytes()[..MAX_LOG_MESSAGE + 1]);
        assert!(text.ends_with(TRUNCATED), "{text}");
        let kept = text.strip_suffix(TRUNCATED).unwrap();
        assert_eq!(kept.len(), MAX_LOG_MESSAGE);
        assert!(kept.chars().all(|c| c == 'é'));
    }
}
