//! The gateway's side of a plugin host: [`HostedInstance`] runs a plugin instance in a child process
//! (`sprig plugin-host`, `host`) and calls it over the [`wire`](super::wire) protocol, with a
//! time budget per call.
//!
//! - **One host, one call at a time.** The host process is started when the instance is (its library
//!   loaded, then `create` with the route's config) and serves the instance's calls in order.
//! - **Overrun.** A call that overruns the budget has its host killed (`SIGKILL`) and reaped before the
//!   call returns [`PluginError::HostKilled`]: no thread, process or CPU is left behind.
//! - **Crash.** A host that dies during a call (a segfault, an abort, an exit) or breaks the protocol
//!   fails the call with [`PluginError::Crashed`], naming the signal or exit status.
//! - **Restart.** A lost host is replaced lazily, by the next call, after a [`Backoff`] that doubles with
//!   each host lost in a row (100 ms up to 30 s) and resets once a call is answered; [`restart_delay`]
//!   tells a caller that would rather do other work than wait. The new host loads the library again (a
//!   replaced file takes effect then) and runs `create` with the same config. Each restart is logged.
//! - **Reset.** [`restart_now`] replaces the host at once, whatever it is doing (an operator's `sprig
//!   plugin reset`): a call in progress is interrupted, its host killed, the restart delay forgotten.
//! - **Status.** [`status`] says where the host stands (running with its pid, starting, down and why,
//!   the restart delay) without waiting for a call in progress.
//! - **Logs.** The host's output pipe is read all the time, by a task of its own: log frames (what the
//!   plugin logs through the sdk, at any time, from any of its threads) go to the gateway's log at their
//!   level with the route's label and the plugin's name, bounded again here as in-process; the other
//!   frames are replies, handed to the call waiting for them. The host's stderr (what the plugin prints,
//!   panic messages) goes to the gateway's log line by line, with the route's label and the plugin's name.
//! - **No orphans.** Hosts are killed when their instance is dropped (`kill_on_drop`) or shut down
//!   ([`shutdown`]), see end of input and exit when the gateway's end of the pipe closes, and on Linux
//!   get `SIGKILL` from the kernel when the gateway dies, even by `kill -9` (`PR_SET_PDEATHSIG`; it
//!   follows the thread that spawned the host, and hosts are spawned from the runtime's worker threads,
//!   which live as long as the runtime).
//!
//! [`restart_delay`]: HostedInstance::restart_delay
//! [`restart_now`]: HostedInstance::restart_now
//! [`status`]: HostedInstance::status
//! [`shutdown`]: HostedInstance::shutdown

use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use sprig_sdk::{Recovery, RecoveryContext};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, Mutex, Notify};

use super::instance::{failure, garbage, interpret};
use super::library::Counters;
use super::logging::{self, LogLimiter, LogLine};
use super::wire::{read_frame_async, Reply, Request, WireError};
use super::{PluginDescriptor, PluginError, PluginStats};

/// How long a new host may take to load its library (the dynamic loader and the library's initializers)
/// before it is killed: not the call budget, which is for the plugin's functions.
const LOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The first restart delay after a host is lost, doubled for each further host lost in a row.
pub const FIRST_RESTART_DELAY: Duration = Duration::from_millis(100);
/// The longest restart delay.
pub const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

/// How to run one plugin instance in a host process.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// The `sprig` executable, run as `PROGRAM plugin-host --library LIBRARY` ([`super::host_program`]).
    pub program: PathBuf,
    /// The plugin's shared library.
    pub library: PathBuf,
    /// The instance's config, handed to `create` in every new host.
    pub config: serde_json::Value,
    /// The time budget of each call (`create` and `recover`).
    pub budget: Duration,
    /// How the gateway's log names the owner of this instance (`recovery[2]`).
    pub label: String,
}

/// Why a host could not be made ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The host refused the library (the loader's message: unreadable, not a plugin, wrong ABI).
    #[error("{0}")]
    Load(String),
    /// The host could not be started, or died or hung before it loaded the library.
    #[error("the plugin host {0}")]
    Host(String),
    /// The library loaded but `create` failed.
    #[error(transparent)]
    Create(PluginError),
}

/// When the next host may start: a delay that doubles with each host lost in a row, from `first` up to
/// `max`, and resets once a host answers a call. Pure: the caller passes the time.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
    not_before: Option<Instant>,
    lost_in_a_row: u32,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            next: first,
            not_before: None,
            lost_in_a_row: 0,
        }
    }

    /// A host was lost at `now`: the next may start after the returned delay.
    pub fn lost(&mut self, now: Instant) -> Duration {
        let delay = self.next;
        self.not_before = Some(now + delay);
        self.next = (self.next * 2).min(self.max);
        self.lost_in_a_row += 1;
        delay
    }

    /// A host answered a call: the next loss starts over at the first delay.
    pub fn answered(&mut self) {
        self.next = self.first;
        self.not_before = None;
        self.lost_in_a_row = 0;
    }

    /// How long a new host must still wait at `now`, if at all.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.not_before
            .and_then(|at| at.checked_duration_since(now))
            .filter(|wait| !wait.is_zero())
    }

    /// Hosts lost since one last answered.
    pub fn lost_in_a_row(&self) -> u32 {
        self.lost_in_a_row
    }
}

/// Where an instance's host stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPhase {
    /// A host runs, idle or in a call.
    Running { pid: u32 },
    /// A new host is loading the library and creating the instance.
    Starting,
    /// No host runs: the last one was lost (`start_error: None`), or a new one failed to start (why).
    /// The next call starts one, once the restart delay has passed.
    Down { start_error: Option<String> },
}

/// A snapshot of [`HostedInstance::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStatus {
    pub phase: HostPhase,
    /// When the host entered its phase.
    pub since: SystemTime,
    /// How long a new host must still wait, if at all.
    pub restart_delay: Option<Duration>,
    /// Hosts lost since one last answered a call.
    pub lost_in_a_row: u32,
    /// Hosts started since the first.
    pub restarts: u64,
    /// When the call in progress, if any, started.
    pub call_since: Option<SystemTime>,
}

/// A plugin instance in a supervised host process. `Send + Sync`; calls are serialized.
#[derive(Debug)]
pub struct HostedInstance {
    options: HostOptions,
    /// The config as the `create` request, encoded once.
    create: Vec<u8>,
    descriptor: PluginDescriptor,
    /// The plugin's name for the stderr forwarders (known once the first host loaded the library).
    name: Arc<OnceLock<String>>,
    counters: Counters,
    backoff: std::sync::Mutex<Backoff>,
    host: Mutex<Option<Host>>,
    /// The host's phase and since when, kept beside `host` so that it can be read during a call.
    phase: std::sync::Mutex<(HostPhase, SystemTime)>,
    /// Rung by [`HostedInstance::restart_now`]: a call in progress gives its host up.
    interrupt: Notify,
    /// When the call in progress started.
    call_since: std::sync::Mutex<Option<SystemTime>>,
    restarts: std::sync::atomic::AtomicU64,
}

impl HostedInstance {
    /// Starts the host, which loads the library and creates the instance (within the budget).
    pub async fn start(options: HostOptions) -> Result<HostedInstance, StartError> {
        let create =
            Request::Create(&serde_json::to_vec(&options.config).expect("JSON serializes"))
                .encode();
        let name = Arc::new(OnceLock::new());
        let counters = Counters::default();
        let started = start_host(&options, &create, &name).await;
        record_create(&counters, &started);
        let (host, descriptor) = started?;
        Ok(HostedInstance {
            options,
            create,
            descriptor,
            name,
            counters,
            backoff: std::sync::Mutex::new(Backoff::new(FIRST_RESTART_DELAY, MAX_RESTART_DELAY)),
            phase: std::sync::Mutex::new((host.phase(), SystemTime::now())),
            host: Mutex::new(Some(host)),
            interrupt: Notify::new(),
            call_since: Default::default(),
            restarts: Default::default(),
        })
    }

    /// Runs one recovery in the host and judges the answer like an in-process call. Starts a new host
    /// first if the last one was lost, once its restart delay has passed (waiting for it).
    pub async fn recover(&self, ctx: &RecoveryContext) -> Result<Recovery, PluginError> {
        let started = std::time::Instant::now();
        let result = self.call(ctx).await;
        let outcome = result.as_ref().map(|_| ()).map_err(PluginError::kind);
        self.counters.record(outcome);
        super::instance::record_call(self.name(), outcome, started);
        result
    }

    async fn call(&self, ctx: &RecoveryContext) -> Result<Recovery, PluginError> {
        let mut slot = self.host.lock().await;
        // Registered once the call has the host: a reset from now on interrupts this call, an earlier
        // one waited for its turn (and replaced the host this call then uses).
        let interrupted = self.interrupt.notified();
        let _in_progress = CallInProgress::new(&self.call_since);
        if slot.is_none() {
            *slot = Some(self.restart().await?);
        }
        let host = slot.as_mut().expect("just filled");
        let context = serde_json::to_vec(ctx).expect("a RecoveryContext serializes");
        let request = Request::Recover(&context).encode();
        let outcome = tokio::select! {
            outcome = host.exchange(&request, self.options.budget) => Some(outcome),
            () = interrupted => None,
        };
        let outcome = match outcome {
            Some(outcome) => outcome,
            None => {
                host.kill().await;
                Err(Lost::Died("was killed by `sprig plugin reset`".to_owned()))
            }
        };
        let plugin = self.name();
        let lost = match outcome {
            Ok(Reply::Answer { status, bytes }) => {
                self.backoff().answered();
                return interpret(plugin, status, Ok(bytes));
            }
            Ok(Reply::Garbage(detail)) => {
                self.backoff().answered();
                return Err(garbage(plugin, detail));
            }
            Ok(other) => {
                host.kill().await;
                let cause = format!("answered out of turn ({other:?}) and was killed");
                PluginError::Crashed {
                    plugin: plugin.to_owned(),
                    cause,
                }
            }
            Err(lost) => lost.error(plugin, self.options.budget),
        };
        *slot = None;
        self.set_phase(HostPhase::Down { start_error: None });
        let delay = self.backoff().lost(Instant::now());
        tracing::warn!(
            route = %self.options.label,
            plugin,
            thing = %ctx.thing_name,
            job_id = %ctx.job_id,
            error = %lost,
            restart_in = ?delay,
            "plugin host lost during a call; a new host serves the next call"
        );
        Err(lost)
    }

    /// A new host for the next call, after what remains of the restart delay.
    async fn restart(&self) -> Result<Host, PluginError> {
        let wait = self.restart_delay();
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
        self.start_new_host("restarting the plugin host")
            .await
            .map_err(|error| {
                let plugin = self.name().to_owned();
                match error {
                    StartError::Create(error) => error,
                    StartError::Load(message) => PluginError::Failed {
                        plugin,
                        message: format!("its new host cannot load the library: {message}"),
                    },
                    StartError::Host(cause) => PluginError::Crashed { plugin, cause },
                }
            })
    }

    /// Starts a host to replace the last (counted as a restart, logged with `why`); on failure the next
    /// must wait for the restart delay.
    async fn start_new_host(&self, why: &str) -> Result<Host, StartError> {
        let restarts = self
            .restarts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        crate::metrics::get().plugin_restarted(self.name());
        tracing::warn!(
            route = %self.options.label,
            plugin = self.name(),
            restarts,
            lost_in_a_row = self.backoff().lost_in_a_row(),
            "{why}"
        );
        self.set_phase(HostPhase::Starting);
        let started = start_host(&self.options, &self.create, &self.name).await;
        record_create(&self.counters, &started);
        match started {
            Ok((host, _)) => {
                self.set_phase(host.phase());
                Ok(host)
            }
            Err(error) => {
                let delay = self.backoff().lost(Instant::now());
                tracing::warn!(
                    route = %self.options.label,
                    plugin = self.name(),
                    %error,
                    restart_in = ?delay,
                    "the new plugin host failed"
                );
                self.set_phase(HostPhase::Down {
                    start_error: Some(error.to_string()),
                });
                Err(error)
            }
        }
    }

    /// Replaces the host now, whatever it is doing: a call in progress is interrupted (its host is
    /// killed, and the call fails as [`PluginError::Crashed`]), the restart delay is forgotten, and a new
    /// host loads the library and creates the instance, whose status is returned (taken before any
    /// call can use the new host). If that fails, the error is returned and the next call tries again
    /// after the restart delay.
    ///
    /// A call that is still starting a host when this is called is not interrupted: its turn ends
    /// within the load timeout and its budget.
    pub async fn restart_now(&self) -> Result<HostStatus, StartError> {
        self.interrupt.notify_waiters();
        let mut slot = self.host.lock().await;
        if let Some(mut host) = slot.take() {
            host.kill().await;
        }
        self.backoff().answered();
        let host = self
            .start_new_host("replacing the plugin host, as an operator asked")
            .await?;
        *slot = Some(host);
        Ok(self.status())
    }

    /// Where the host stands now. Never waits, not even for a call in progress.
    pub fn status(&self) -> HostStatus {
        let (phase, since) = self.phase.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let backoff = self.backoff();
        let now = Instant::now();
        HostStatus {
            phase,
            since,
            restart_delay: backoff.remaining(now),
            lost_in_a_row: backoff.lost_in_a_row(),
            restarts: self.restarts(),
            call_since: *self.call_since.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    fn set_phase(&self, phase: HostPhase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = (phase, SystemTime::now());
    }

    /// How long the next call would wait for a new host (a host was lost, and its restart delay has not
    /// passed), if at all. A runner can do other work meanwhile.
    pub fn restart_delay(&self) -> Option<Duration> {
        self.backoff().remaining(Instant::now())
    }

    /// Kills the host, if one runs, and waits for it to end. A later call starts a new one.
    pub async fn shutdown(&self) {
        if let Some(mut host) = self.host.lock().await.take() {
            host.kill().await;
            self.set_phase(HostPhase::Down { start_error: None });
        }
    }

    /// The live host's process id (none after a loss, until the next call).
    pub async fn pid(&self) -> Option<u32> {
        self.host.lock().await.as_ref().and_then(|h| h.child.id())
    }

    /// What the plugin says about itself (from the first host).
    pub fn descriptor(&self) -> &PluginDescriptor {
        &self.descriptor
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.descriptor.name
    }

    /// The counters of this instance's calls (`create` in each host included).
    pub fn stats(&self) -> PluginStats {
        self.counters.snapshot()
    }

    /// Hosts started since the first.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The per-call time budget.
    pub fn budget(&self) -> Duration {
        self.options.budget
    }

    fn backoff(&self) -> std::sync::MutexGuard<'_, Backoff> {
        self.backoff.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Marks a call as in progress, from its start until it returns (or its future is dropped).
struct CallInProgress<'a>(&'a std::sync::Mutex<Option<SystemTime>>);

impl<'a> CallInProgress<'a> {
    fn new(since: &'a std::sync::Mutex<Option<SystemTime>>) -> CallInProgress<'a> {
        *since.lock().unwrap_or_else(|e| e.into_inner()) = Some(SystemTime::now());
        CallInProgress(since)
    }
}

impl Drop for CallInProgress<'_> {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Counts a host's `create` call, if it got that far.
fn record_create<T>(counters: &Counters, started: &Result<T, StartError>) {
    match started {
        Ok(_) => counters.record(Ok(())),
        Err(StartError::Create(error)) => counters.record(Err(error.kind())),
        Err(StartError::Load(_) | StartError::Host(_)) => {}
    }
}

/// Starts a host, waits for it to load the library and creates the instance.
async fn start_host(
    options: &HostOptions,
    create: &[u8],
    name: &Arc<OnceLock<String>>,
) -> Result<(Host, PluginDescriptor), StartError> {
    let mut host = Host::spawn(options, name.clone()).map_err(|e| {
        StartError::Host(format!(
            "{} cannot be started: {e}",
            options.program.display()
        ))
    })?;
    let descriptor = match host.receive(LOAD_TIMEOUT).await {
        Ok(Reply::Ready(descriptor)) => descriptor,
        Ok(Reply::LoadFailed(message)) => {
            host.kill().await;
            return Err(StartError::Load(message));
        }
        Ok(other) => {
            host.kill().await;
            return Err(StartError::Host(format!(
                "answered {other:?} instead of loading the library, and was killed"
            )));
        }
        Err(Lost::Overran) => {
            return Err(StartError::Host(format!(
                "did not load the library within {} s and was killed",
                LOAD_TIMEOUT.as_secs()
            )))
        }
        Err(Lost::Died(cause)) => {
            return Err(StartError::Host(format!(
                "{cause} while loading the library"
            )))
        }
    };
    let plugin = name.get_or_init(|| descriptor.name.clone()).as_str();
    let created = match host.exchange(create, options.budget).await {
        Ok(Reply::Answer { status, .. }) if status == sprig_sdk::abi::STATUS_OK => Ok(()),
        Ok(Reply::Answer { status, bytes }) => Err(failure(plugin, status, Ok(bytes))),
        Ok(Reply::Garbage(detail)) => Err(garbage(plugin, detail)),
        Ok(other) => Err(PluginError::Crashed {
            plugin: plugin.to_owned(),
            cause: format!("answered {other:?} to create"),
        }),
        Err(lost) => Err(lost.error(plugin, options.budget)),
    };
    match created {
        Ok(()) => Ok((host, descriptor)),
        Err(error) => {
            host.kill().await;
            Err(StartError::Create(error))
        }
    }
}

/// How a host was lost during an exchange. It has been killed if need be, and reaped.
#[derive(Debug)]
enum Lost {
    /// It did not answer within the budget.
    Overran,
    /// It died or broke the pipe: how ("was killed by SIGSEGV").
    Died(String),
}

impl Lost {
    fn error(self, plugin: &str, budget: Duration) -> PluginError {
        let plugin = plugin.to_owned();
        match self {
            Lost::Overran => PluginError::HostKilled { plugin, budget },
            Lost::Died(cause) => PluginError::Crashed { plugin, cause },
        }
    }
}

/// One host process and its pipes.
#[derive(Debug)]
struct Host {
    child: Child,
    input: ChildStdin,
    /// The host's replies, from its output pipe's reader ([`read_output`]).
    replies: mpsc::Receiver<Incoming>,
}

/// What the reader of a host's output pipe hands on: a reply (or a frame that is none), or the pipe's end.
#[derive(Debug)]
enum Incoming {
    Frame(Result<Reply, WireError>),
    Ended(io::Error),
}

impl Host {
    /// A live host's phase.
    fn phase(&self) -> HostPhase {
        match self.child.id() {
            Some(pid) => HostPhase::Running { pid },
            None => HostPhase::Down { start_error: None },
        }
    }

    fn spawn(options: &HostOptions, name: Arc<OnceLock<String>>) -> io::Result<Host> {
        let mut command = Command::new(&options.program);
        command
            .arg("plugin-host")
            .arg("--library")
            .arg(&options.library)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        #[cfg(target_os = "linux")]
        {
            let gateway = std::process::id();
            // SAFETY: `die_with_gateway` makes only async-signal-safe system calls and allocates nothing.
            unsafe { command.pre_exec(move || die_with_gateway(gateway)) };
        }
        let mut child = command.spawn()?;
        let (Some(input), Some(output), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            unreachable!("all three are piped");
        };
        let file = options
            .library
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
        let owner = Owner {
            route: options.label.clone(),
            name,
            file,
        };
        // A reply at a time is all a host may send unasked: more waits in its pipe.
        let (replies_tx, replies) = mpsc::channel(1);
        tokio::spawn(forward_stderr(stderr, owner.clone()));
        tokio::spawn(read_output(output, replies_tx, owner));
        Ok(Host {
            child,
            input,
            replies,
        })
    }

    /// Sends one request and reads the reply, within `budget`.
    async fn exchange(&mut self, request: &[u8], budget: Duration) -> Result<Reply, Lost> {
        let (input, replies) = (&mut self.input, &mut self.replies);
        let incoming = tokio::time::timeout(budget, async {
            match input.write_all(request).await {
                Ok(()) => next_reply(replies).await,
                Err(error) => Incoming::Ended(error),
            }
        })
        .await;
        self.judge(incoming).await
    }

    /// Reads one unsolicited reply (the host's first), within `timeout`.
    async fn receive(&mut self, timeout: Duration) -> Result<Reply, Lost> {
        let incoming = tokio::time::timeout(timeout, next_reply(&mut self.replies)).await;
        self.judge(incoming).await
    }

    async fn judge(
        &mut self,
        incoming: Result<Incoming, tokio::time::error::Elapsed>,
    ) -> Result<Reply, Lost> {
        match incoming {
            Ok(Incoming::Frame(Ok(reply))) => Ok(reply),
            Ok(Incoming::Frame(Err(e))) => {
                self.kill().await;
                Err(Lost::Died(format!("sent a {e} and was killed")))
            }
            Ok(Incoming::Ended(error)) if error.kind() == io::ErrorKind::InvalidData => {
                self.kill().await;
                Err(Lost::Died(format!(
                    "sent a malformed frame ({error}) and was killed"
                )))
            }
            Ok(Incoming::Ended(error)) => Err(Lost::Died(self.reap(error).await)),
            Err(_) => {
                self.kill().await;
                Err(Lost::Overran)
            }
        }
    }

    /// `SIGKILL`, and waits until the process is gone.
    async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// The pipe broke: the host died, or closed its end. Waits a moment for its exit status, then kills.
    async fn reap(&mut self, error: io::Error) -> String {
        match tokio::time::timeout(Duration::from_secs(1), self.child.wait()).await {
            Ok(Ok(status)) => describe_exit(status),
            _ => {
                self.kill().await;
                format!("broke the pipe ({error}) and was killed")
            }
        }
    }
}

/// In the host, between `fork` and `exec`: the kernel sends it `SIGKILL` when the gateway's spawning
/// thread ends (with the gateway, also on `kill -9`); and if the gateway is already gone, no host.
#[cfg(target_os = "linux")]
fn die_with_gateway(gateway: u32) -> io::Result<()> {
    // SAFETY: prctl and getppid are system calls, async-signal-safe; nothing is allocated.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() as u32 != gateway {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// "was killed by SIGSEGV", "exited with status 3".
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(signal) = status.signal() {
        let core = if status.core_dumped() {
            " (core dumped)"
        } else {
            ""
        };
        return format!("was killed by {}{core}", signal_name(signal));
    }
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => format!("ended ({status})"),
    }
}

/// The name of a signal that ends processes: `SIGSEGV`, or `signal 42`.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGSYS => "SIGSYS",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGALRM => "SIGALRM",
        other => return format!("signal {other}"),
    };
    name.to_owned()
}

/// Who a host's log lines belong to.
#[derive(Debug, Clone)]
struct Owner {
    /// The route's label.
    route: String,
    /// The plugin's name, once the first host loaded the library.
    name: Arc<OnceLock<String>>,
    /// The library's file name, until then.
    file: String,
}

impl Owner {
    fn plugin(&self) -> &str {
        self.name.get().map_or(self.file.as_str(), String::as_str)
    }
}

/// The next reply the reader handed on; the reader's end (the host's output ended) reads as such.
async fn next_reply(replies: &mut mpsc::Receiver<Incoming>) -> Incoming {
    match replies.recv().await {
        Some(incoming) => incoming,
        None => Incoming::Ended(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the host's output ended",
        )),
    }
}

/// Reads a host's output pipe until it ends: log frames to the gateway's log, replies to `replies`.
async fn read_output(output: ChildStdout, replies: mpsc::Sender<Incoming>, owner: Owner) {
    let mut output = BufReader::new(output);
    let mut body = Vec::new();
    // The host bounds the plugin's lines; a host gone wrong must not flood the gateway's log either.
    let mut limiter = LogLimiter::default();
    loop {
        if let Err(error) = read_frame_async(&mut output, &mut body).await {
            let _ = replies.send(Incoming::Ended(error)).await;
            return;
        }
        let plugin = owner.plugin();
        let route = Some(owner.route.as_str());
        match Reply::decode(&body) {
            Ok(Reply::Log { level, message }) => {
                if limiter.admit(Instant::now()) {
                    report_dropped(&mut limiter, plugin, route);
                    let message = logging::bounded_text(&message);
                    logging::emit(LogLine {
                        plugin,
                        route,
                        level,
                        message: &message,
                    });
                }
            }
            Ok(Reply::LogsDropped(count)) => logging::emit_dropped(plugin, route, count),
            frame => {
                report_dropped(&mut limiter, plugin, route);
                let malformed = frame.is_err();
                if replies.send(Incoming::Frame(frame)).await.is_err() || malformed {
                    return; // No call waits any more (the host is gone), or the host is killed.
                }
            }
        }
    }
}

fn report_dropped(limiter: &mut LogLimiter, plugin: &str, route: Option<&str>) {
    let dropped = limiter.take_dropped();
    if dropped > 0 {
        logging::emit_dropped(plugin, route, dropped);
    }
}

/// The host's stderr into the gateway's log, a line at a time (at most 8 KiB each).
async fn forward_stderr(stderr: ChildStderr, owner: Owner) {
    let mut stderr = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut stderr).take(8192).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        tracing::info!(route = %owner.route, plugin = owner.plugin(), "plugin host: {}", text.trim_end());
    }
}

/// The executable to run hosts from: on Linux `/proc/self/exe`, the very binary the gateway runs even if
/// its file was replaced since (an upgrade), so gateway and host always speak the same protocol.
pub fn host_program() -> io::Result<PathBuf> {
    let own = Path::new("/proc/self/exe");
    if cfg!(target_os = "linux") && own.exists() {
        return Ok(own.to_owned());
    }
    std::env::current_exe()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restart_delay_doubles_up_to_its_cap_and_resets_once_a_host_answers() {
        let first = Duration::from_millis(100);
        let max = Duration::from_secs(30);
        let mut backoff = Backoff::new(first, max);
        let start = Instant::now();
        assert_eq!(
            backoff.remaining(start),
            None,
            "the first host starts at once"
        );
        let delays: Vec<u64> = (0..12)
            .map(|_| backoff.lost(start).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000]
        );
        assert_eq!(backoff.lost_in_a_row(), 12);
        assert_eq!(backoff.remaining(start), Some(max));
        assert_eq!(
            backoff.remaining(start + Duration::from_secs(10)),
            Some(Duration::from_secs(20))
        );
        assert_eq!(backoff.remaining(start + max), None);
        assert_eq!(backoff.remaining(start + max * 2), None);

        backoff.answered();
        assert_eq!(backoff.remaining(start), None);
        assert_eq!(backoff.lost_in_a_row(), 0);
        assert_eq!(backoff.lost(start), first);
        assert_eq!(backoff.remaining(start + first / 2), Some(first / 2));
    }

    #[test]
    fn exits_name_their_signal_or_status() {
        use std::os::unix::process::ExitStatusExt;
        // Wait statuses as the kernel reports them: the signal in the low 7 bits, 0x80 for a core
        // dump; an exit code in the second byte.
        assert_eq!(
            describe_exit(ExitStatus::from_raw(libc::SIGSEGV)),
            "was killed by SIGSEGV"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(libc::SIGABRT | 0x80)),
            "was killed by SIGABRT (core dumped)"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
        assert_eq!(signal_name(libc::SIGKILL), "SIGKILL");
        assert_eq!(signal_name(42), "signal 42");
    }
}
