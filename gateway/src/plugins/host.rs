//! The plugin host process: `sprig plugin-host --library PATH` (hidden from `--help`), started by the
//! gateway's [`super::HostedInstance`], one per `[[recovery]]` route.
//!
//! It loads the library with the same code as the gateway ([`PluginLibrary::load`]: ABI version first),
//! answers [`Reply::Ready`] or [`Reply::LoadFailed`], then serves [`wire`](super::wire) requests one at a
//! time, on its main thread (the thread that created the instance makes every call, as the sdk
//! promises), until its input ends: then it destroys the instance and exits 0.
//!
//! The protocol's pipes move off fds 0 and 1 first: fd 1 then points at stderr and fd 0 at `/dev/null`,
//! so a plugin that prints or reads standard input cannot corrupt the protocol, and whatever it prints
//! reaches the gateway's log (the gateway reads the host's stderr line by line).
//!
//! What the plugin logs through the sdk's log callback goes to the gateway as log frames on the protocol
//! pipe ([`PipeSink`]), from whichever thread the plugin logs on: every frame is written whole under one
//! lock, so a log line never interleaves with a reply.

use std::fs::File;
use std::io::{BufReader, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::logging::{self, LogLine, LogSink};
use super::wire::{self, Reply, Request};
use super::{DirectInstance, PluginError, PluginLibrary};

/// The protocol's output pipe, shared by the main thread (replies) and the plugin's log lines.
#[derive(Clone)]
struct Output(Arc<Mutex<File>>);

impl Output {
    /// Writes one whole frame.
    fn send(&self, reply: &Reply) -> std::io::Result<()> {
        let frame = reply.encode();
        let mut file = self.0.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(&frame)
    }
}

/// The host process's plugin log sink: frames to the gateway, which logs them with the route and the
/// plugin's name (both known to it: this host serves one route's instance).
struct PipeSink(Output);

impl LogSink for PipeSink {
    fn line(&self, line: LogLine<'_>) {
        // A failed write means the gateway is gone; the main loop sees that too and exits.
        let _ = self.0.send(&Reply::Log {
            level: line.level,
            message: line.message.as_bytes().to_vec(),
        });
    }

    fn dropped(&self, _plugin: &str, _route: Option<&str>, count: u64) {
        let _ = self.0.send(&Reply::LogsDropped(count));
    }
}

/// Serves the gateway on stdin/stdout; returns the process's exit code.
pub fn serve(library: &Path) -> u8 {
    let (input, output) = match take_protocol_fds() {
        Ok(fds) => fds,
        Err(e) => {
            eprintln!("sprig plugin-host: cannot set up its pipes: {e}");
            return 1;
        }
    };
    name_process();
    let mut input = BufReader::new(input);
    let output = Output(Arc::new(Mutex::new(output)));
    logging::set_sink(Box::new(PipeSink(output.clone())));
    let library = match PluginLibrary::load(library) {
        Ok(library) => library,
        Err(e) => {
            let _ = output.send(&Reply::LoadFailed(e.to_string()));
            return 1;
        }
    };
    if output
        .send(&Reply::Ready(library.descriptor().clone()))
        .is_err()
    {
        return 1;
    }
    let mut instance: Option<DirectInstance> = None;
    let mut body = Vec::new();
    loop {
        match wire::read_frame(&mut input, &mut body) {
            Ok(true) => {}
            // The gateway closed the pipe (it stops, or drops this host): the instance is destroyed.
            Ok(false) => return 0,
            Err(e) => {
                eprintln!("sprig plugin-host: cannot read from the gateway: {e}");
                return 1;
            }
        }
        let reply = match Request::decode(&body) {
            Ok(Request::Create(_)) if instance.is_some() => {
                Reply::Refused("the instance exists already".into())
            }
            Ok(Request::Create(config)) => match DirectInstance::from_json(&library, config) {
                Ok(created) => {
                    instance = Some(created);
                    Reply::Answer {
                        status: sprig_sdk::abi::STATUS_OK,
                        bytes: Vec::new(),
                    }
                }
                Err(error) => reply_for(error),
            },
            Ok(Request::Recover(context)) => match instance.as_mut() {
                Some(instance) => match instance.recover_raw(context) {
                    (status, Ok(bytes)) => Reply::Answer { status, bytes },
                    (_, Err(problem)) => Reply::Garbage(problem),
                },
                None => Reply::Refused("recover before the instance was created".into()),
            },
            Err(e) => Reply::Refused(e.to_string()),
        };
        if output.send(&reply).is_err() {
            return 1; // The gateway is gone.
        }
    }
}

/// A failed `create`, as the bare status and bytes the gateway judges again (to the same error).
fn reply_for(error: PluginError) -> Reply {
    use sprig_sdk::abi::{STATUS_ERROR, STATUS_PANIC};
    match error {
        PluginError::Failed { message, .. } => Reply::Answer {
            status: STATUS_ERROR,
            bytes: message.into_bytes(),
        },
        PluginError::Panicked { message, .. } => Reply::Answer {
            status: STATUS_PANIC,
            bytes: message.into_bytes(),
        },
        other => Reply::Garbage(match other {
            PluginError::Garbage { detail, .. } => detail,
            other => other.to_string(),
        }),
    }
}

/// Moves stdin and stdout to fresh close-on-exec descriptors for the protocol, and points fd 0 at
/// `/dev/null` and fd 1 at stderr.
fn take_protocol_fds() -> std::io::Result<(File, File)> {
    fn check(result: libc::c_int) -> std::io::Result<libc::c_int> {
        if result < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(result)
        }
    }
    // SAFETY: plain descriptor calls on this process's own descriptors, before any other thread exists;
    // each new descriptor is owned by exactly one `File`.
    unsafe {
        let input: RawFd = check(libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3))?;
        let output: RawFd = check(libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3))?;
        let (input, output) = (File::from_raw_fd(input), File::from_raw_fd(output));
        check(libc::dup2(2, 1))?;
        let null = File::open("/dev/null")?;
        check(libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0))?;
        Ok((input, output))
    }
}

/// The gateway runs hosts from `/proc/self/exe` (see `super::host_program`), which `ps` and `top` would
/// show as `exe`: name the process for what it is.
fn name_process() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"sprig-plugin".as_ptr());
    }
}
