//! Handler instances: [`DirectInstance`] (calls on the caller's thread, no budget) and [`PluginInstance`]
//! (its own thread, a time budget per call, quarantine on overrun).

use std::ffi::c_void;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use sprig_sdk::abi::{self, Bytes};
use sprig_sdk::{Recovery, RecoveryContext};
use tokio::sync::{oneshot, Mutex};

use super::library::Counters;
use super::{PluginLibrary, PluginStats};

/// Why a plugin call did not produce an answer. Every variant names the plugin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// The handler panicked; the sdk's shim caught it. The instance is still usable.
    #[error("plugin {plugin} panicked: {message}")]
    Panicked { plugin: String, message: String },
    /// The handler returned an error (or refused its config, in `create`).
    #[error("plugin {plugin} failed: {message}")]
    Failed { plugin: String, message: String },
    /// The handler answered something unusable: not UTF-8, not JSON, not a `Recovery`, an invalid
    /// `Recovery`, or a status code the ABI does not define.
    #[error("plugin {plugin} answered garbage: {detail}")]
    Garbage { plugin: String, detail: String },
    /// The call overran its time budget. Its thread is abandoned and the instance quarantined.
    #[error(
        "plugin {plugin} did not answer within its {budget:?} budget; the instance is quarantined"
    )]
    TimedOut { plugin: String, budget: Duration },
    /// The call overran its time budget in a plugin host process, which was killed (`SIGKILL`) and
    /// reaped; a new host serves the next call.
    #[error(
        "plugin {plugin} overran its budget of {} ms; host killed",
        budget.as_millis()
    )]
    HostKilled { plugin: String, budget: Duration },
    /// The plugin's host process died during the call (a segfault, an abort, an exit, …); `cause` says
    /// how ("was killed by SIGSEGV", "exited with status 3"). A new host serves the next call.
    #[error("plugin {plugin} crashed: its host process {cause}; the host is restarted")]
    Crashed { plugin: String, cause: String },
    /// The instance is quarantined (an earlier call overran); refused without calling the plugin.
    #[error(
        "plugin {plugin} is quarantined: an earlier call overran its budget; create a new instance"
    )]
    Quarantined { plugin: String },
}

/// The kind of a [`PluginError`], without its details: for counters and records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// [`PluginError::Panicked`].
    Panicked,
    /// [`PluginError::Failed`].
    Failed,
    /// [`PluginError::Garbage`].
    Garbage,
    /// [`PluginError::TimedOut`] or [`PluginError::HostKilled`].
    TimedOut,
    /// [`PluginError::Crashed`].
    Crashed,
    /// [`PluginError::Quarantined`].
    Quarantined,
}

impl FailureKind {
    /// A stable lowercase name: `panicked`, `failed`, `garbage`, `timed_out`, `crashed`, `quarantined`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Panicked => "panicked",
            FailureKind::Failed => "failed",
            FailureKind::Garbage => "garbage",
            FailureKind::TimedOut => "timed_out",
            FailureKind::Crashed => "crashed",
            FailureKind::Quarantined => "quarantined",
        }
    }
}

/// Counts a recovery call of `plugin` in the process's metrics: its outcome and how long it took.
pub(super) fn record_call(
    plugin: &str,
    outcome: Result<(), FailureKind>,
    started: std::time::Instant,
) {
    let outcome = match outcome {
        Ok(()) => "succeeded",
        Err(kind) => kind.as_str(),
    };
    let seconds = started.elapsed().as_secs_f64();
    crate::metrics::get().plugin_call(plugin, outcome, seconds);
}

impl PluginError {
    /// Which kind of failure.
    pub fn kind(&self) -> FailureKind {
        match self {
            PluginError::Panicked { .. } => FailureKind::Panicked,
            PluginError::Failed { .. } => FailureKind::Failed,
            PluginError::Garbage { .. } => FailureKind::Garbage,
            PluginError::TimedOut { .. } | PluginError::HostKilled { .. } => FailureKind::TimedOut,
            PluginError::Crashed { .. } => FailureKind::Crashed,
            PluginError::Quarantined { .. } => FailureKind::Quarantined,
        }
    }

    /// A failed `create` as the operator should read it, who wrote the config at `location` (a route's
    /// [`location`](crate::config::RecoveryRoute::location)): a config the sdk could not deserialize names
    /// its key under `[recovery.config]`; a config the handler refused, the handler's reason; anything
    /// else (a panic, a crash, an overrun), what happened.
    pub fn refusing_config_at(&self, location: &str) -> String {
        match self {
            PluginError::Failed { plugin, message } => {
                match message.strip_prefix(sprig_sdk::abi::INVALID_CONFIG) {
                    Some(key_and_reason) => {
                        format!("{location} [recovery.config] {key_and_reason} (plugin {plugin})")
                    }
                    None => format!(
                        "{location} [recovery.config] refused by plugin {plugin}: {message}"
                    ),
                }
            }
            other => format!("{location}: the plugin instance cannot be created: {other}"),
        }
    }

    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        match self {
            PluginError::Panicked { plugin, .. }
            | PluginError::Failed { plugin, .. }
            | PluginError::Garbage { plugin, .. }
            | PluginError::TimedOut { plugin, .. }
            | PluginError::HostKilled { plugin, .. }
            | PluginError::Crashed { plugin, .. }
            | PluginError::Quarantined { plugin } => plugin,
        }
    }
}

/// A handler instance called directly on the caller's thread: no time budget, no counters, no
/// quarantine. It is what a [`PluginInstance`]'s worker thread runs; use it directly only where blocking
/// the current thread for as long as the plugin takes is acceptable (tools, benchmarks). Not `Send`: an
/// instance is called from the thread that made it (the sdk promises plugins that).
#[derive(Debug)]
pub struct DirectInstance {
    library: Arc<PluginLibrary>,
    handle: *mut c_void,
    _not_send: PhantomData<*mut ()>,
}

impl DirectInstance {
    /// Makes an instance from its config (calls the plugin's `create`).
    pub fn new(
        library: &Arc<PluginLibrary>,
        config: &serde_json::Value,
    ) -> Result<DirectInstance, PluginError> {
        let config = serde_json::to_vec(config).expect("a JSON value serializes");
        DirectInstance::from_json(library, &config)
    }

    /// Makes an instance from its config as JSON text.
    pub fn from_json(
        library: &Arc<PluginLibrary>,
        config: &[u8],
    ) -> Result<DirectInstance, PluginError> {
        library.connect_host();
        let mut handle: *mut c_void = std::ptr::null_mut();
        let mut message = Bytes::EMPTY;
        // SAFETY: the ABI's `create`: `config` lives through the call, the out-pointers are valid.
        let status = unsafe {
            (library.functions.create)(Bytes::from_slice(config), &mut handle, &mut message)
        };
        // SAFETY: `message` is the plugin's to free (empty on success).
        let message = unsafe { library.take(message) };
        library.report_dropped_logs();
        match status {
            abi::STATUS_OK if !handle.is_null() => Ok(DirectInstance {
                library: library.clone(),
                handle,
                _not_send: PhantomData,
            }),
            abi::STATUS_OK => Err(garbage(
                library.name(),
                "create returned a null instance".into(),
            )),
            status => Err(failure(library.name(), status, message)),
        }
    }

    /// Runs one recovery (calls the plugin's `recover`) and checks the answer.
    pub fn recover(&mut self, ctx: &RecoveryContext) -> Result<Recovery, PluginError> {
        let context = serde_json::to_vec(ctx).expect("a RecoveryContext serializes");
        self.recover_json(&context)
    }

    /// The same with the context already serialized.
    pub fn recover_json(&mut self, context: &[u8]) -> Result<Recovery, PluginError> {
        let (status, answer) = self.recover_raw(context);
        interpret(self.library.name(), status, answer)
    }

    /// The bare ABI call: the status and the answer bytes (or what was wrong with the plugin's buffer),
    /// not yet judged. What a plugin host sends back to the gateway.
    pub(super) fn recover_raw(&mut self, context: &[u8]) -> (i32, Result<Vec<u8>, String>) {
        let library = &self.library;
        let mut out = Bytes::EMPTY;
        // SAFETY: the ABI's `recover`, on a live instance of this library, from the thread that made it.
        let status = unsafe {
            (library.functions.recover)(self.handle, Bytes::from_slice(context), &mut out)
        };
        // SAFETY: `out` is the plugin's to free.
        let answer = unsafe { library.take(out) };
        library.report_dropped_logs();
        (status, answer)
    }

    /// The library this instance belongs to.
    pub fn library(&self) -> &Arc<PluginLibrary> {
        &self.library
    }
}

impl Drop for DirectInstance {
    fn drop(&mut self) {
        // SAFETY: the ABI's `destroy`, once, on a live instance; nothing uses `handle` afterwards.
        unsafe { (self.library.functions.destroy)(self.handle) };
    }
}

/// Judges what a `recover` call returned, wherever it ran: a non-OK status is the plugin's error or
/// panic; an OK answer must be UTF-8 JSON of a valid [`Recovery`].
pub(super) fn interpret(
    plugin: &str,
    status: i32,
    answer: Result<Vec<u8>, String>,
) -> Result<Recovery, PluginError> {
    if status != abi::STATUS_OK {
        return Err(failure(plugin, status, answer));
    }
    let answer = answer.map_err(|problem| garbage(plugin, problem))?;
    let text = std::str::from_utf8(&answer).map_err(|e| {
        garbage(
            plugin,
            format!("the answer is not UTF-8 ({e}): {}", excerpt(&answer)),
        )
    })?;
    let recovery: Recovery = serde_json::from_str(text).map_err(|e| {
        garbage(
            plugin,
            format!("the answer is not a recovery ({e}): {}", excerpt(&answer)),
        )
    })?;
    recovery
        .validate()
        .map_err(|problem| garbage(plugin, problem))?;
    Ok(recovery)
}

pub(super) fn garbage(plugin: &str, detail: String) -> PluginError {
    PluginError::Garbage {
        plugin: plugin.to_owned(),
        detail,
    }
}

/// The error for a non-OK status and its message buffer.
pub(super) fn failure(plugin: &str, status: i32, message: Result<Vec<u8>, String>) -> PluginError {
    let plugin = plugin.to_owned();
    let message = match message {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(problem) => {
            return PluginError::Garbage {
                plugin,
                detail: problem,
            }
        }
    };
    match status {
        abi::STATUS_ERROR => PluginError::Failed { plugin, message },
        abi::STATUS_PANIC => PluginError::Panicked { plugin, message },
        other => PluginError::Garbage {
            plugin,
            detail: format!("unknown status code {other} (message: {message:?})"),
        },
    }
}

/// The first bytes of a bad answer, for the error message.
fn excerpt(bytes: &[u8]) -> String {
    const MAX: usize = 80;
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]).into_owned();
    if bytes.len() > MAX {
        format!("{shown:?}…")
    } else {
        format!("{shown:?}")
    }
}

/// One `recover` call for the worker thread.
struct Job {
    context: Vec<u8>,
    reply: oneshot::Sender<Result<Recovery, PluginError>>,
}

/// A handler instance on its own thread, called asynchronously with a time budget per call.
///
/// `Send + Sync`: share it (in an `Arc`) between tasks; calls queue and run one at a time. Dropping the
/// last reference ends the worker thread, which destroys the plugin instance (after the call in progress,
/// if any; a stuck thread never ends). Dropping a [`recover`](PluginInstance::recover) future does not
/// stop the plugin call it started: the next call waits for it (without that wait counting against the
/// next call's budget).
#[derive(Debug)]
pub struct PluginInstance {
    library: Arc<PluginLibrary>,
    group: Arc<InstanceGroup>,
    budget: Duration,
    jobs: mpsc::Sender<Job>,
    quarantined: AtomicBool,
    /// Held while a call is in flight, so that a call's budget starts when it reaches the worker.
    turn: Mutex<()>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").finish_non_exhaustive()
    }
}

/// What successive instances of one owner (a recovery route's, replaced after each quarantine) share:
/// the counters of their calls, and how many of their worker threads still run. A quarantined
/// instance's thread cannot be killed; this is how an owner can still tell that it is stuck.
#[derive(Debug, Default)]
pub struct InstanceGroup {
    counters: Counters,
    threads: AtomicUsize,
}

impl InstanceGroup {
    /// The counters of the group's calls (`create` of each instance included).
    pub fn stats(&self) -> PluginStats {
        self.counters.snapshot()
    }

    /// Worker threads of the group's instances that have not ended: live instances, and abandoned
    /// ones still inside a plugin call.
    pub fn running_threads(&self) -> usize {
        self.threads.load(Ordering::SeqCst)
    }

    /// Counts a call its owner refused without an instance to make it on: the last one quarantined
    /// and no replacement allowed ([`PluginError::Quarantined`]).
    pub fn record_refused(&self, library: &PluginLibrary) {
        self.record(library, Err(FailureKind::Quarantined));
    }

    fn record(&self, library: &PluginLibrary, outcome: Result<(), FailureKind>) {
        library.counters.record(outcome);
        self.counters.record(outcome);
    }
}

/// Counts a worker thread as running for as long as it lives (dropped when its function returns or
/// unwinds).
struct RunningThread(Arc<InstanceGroup>);

impl RunningThread {
    fn new(group: Arc<InstanceGroup>) -> RunningThread {
        group.threads.fetch_add(1, Ordering::SeqCst);
        RunningThread(group)
    }
}

impl Drop for RunningThread {
    fn drop(&mut self) {
        self.0.threads.fetch_sub(1, Ordering::SeqCst);
    }
}

impl PluginInstance {
    /// Starts the instance's thread and makes the plugin instance there from `config` (the plugin's
    /// `create`), within `budget`. Needs a Tokio runtime with the time driver.
    ///
    /// An overrun here returns [`PluginError::TimedOut`] and abandons the thread (if `create` ever
    /// returns, the thread destroys what it made and ends).
    pub async fn new(
        library: Arc<PluginLibrary>,
        config: serde_json::Value,
        budget: Duration,
    ) -> Result<PluginInstance, PluginError> {
        PluginInstance::new_in_group(library, config, budget, Arc::default(), None).await
    }

    /// [`PluginInstance::new`], counting the instance's calls and its thread in `group`; the plugin's log
    /// lines from the instance's thread name `route`.
    pub async fn new_in_group(
        library: Arc<PluginLibrary>,
        config: serde_json::Value,
        budget: Duration,
        group: Arc<InstanceGroup>,
        route: Option<String>,
    ) -> Result<PluginInstance, PluginError> {
        let result = PluginInstance::start(&library, config, budget, &group, route).await;
        group.record(
            &library,
            result.as_ref().map(|_| ()).map_err(PluginError::kind),
        );
        result
    }

    async fn start(
        library: &Arc<PluginLibrary>,
        config: serde_json::Value,
        budget: Duration,
        group: &Arc<InstanceGroup>,
        route: Option<String>,
    ) -> Result<PluginInstance, PluginError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (created_tx, created) = oneshot::channel();
        let worker_library = library.clone();
        let running = RunningThread::new(group.clone());
        std::thread::Builder::new()
            .name(format!("plugin {}", library.name()))
            .spawn(move || {
                let _running = running;
                super::logging::with_route(route);
                worker(worker_library, config, created_tx, queue)
            })
            .map_err(|e| PluginError::Failed {
                plugin: library.name().to_owned(),
                message: format!("cannot start the plugin's thread: {e}"),
            })?;
        match tokio::time::timeout(budget, created).await {
            Ok(Ok(Ok(()))) => Ok(PluginInstance {
                library: library.clone(),
                group: group.clone(),
                budget,
                jobs,
                quarantined: AtomicBool::new(false),
                turn: Mutex::new(()),
            }),
            Ok(Ok(Err(error))) => Err(error),
            Ok(Err(_)) => Err(worker_gone(library)),
            Err(_) => {
                tracing::warn!(
                    plugin = library.name(),
                    ?budget,
                    "plugin overran its budget creating an instance"
                );
                Err(PluginError::TimedOut {
                    plugin: library.name().to_owned(),
                    budget,
                })
            }
        }
    }

    /// Runs one recovery on the instance's thread and waits for the answer, at most the budget.
    ///
    /// Never blocks the async runtime. On overrun the instance is quarantined: this call returns
    /// [`PluginError::TimedOut`] and every later one [`PluginError::Quarantined`], at once.
    pub async fn recover(&self, ctx: &RecoveryContext) -> Result<Recovery, PluginError> {
        let started = std::time::Instant::now();
        let result = self.call(ctx).await;
        let outcome = result.as_ref().map(|_| ()).map_err(PluginError::kind);
        self.group.record(&self.library, outcome);
        record_call(self.library.name(), outcome, started);
        result
    }

    async fn call(&self, ctx: &RecoveryContext) -> Result<Recovery, PluginError> {
        let _turn = self.turn.lock().await;
        if self.is_quarantined() {
            return Err(PluginError::Quarantined {
                plugin: self.library.name().to_owned(),
            });
        }
        let context = serde_json::to_vec(ctx).expect("a RecoveryContext serializes");
        let (reply, answer) = oneshot::channel();
        if self.jobs.send(Job { context, reply }).is_err() {
            return Err(self.lost());
        }
        match tokio::time::timeout(self.budget, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.lost()),
            Err(_) => {
                self.quarantined.store(true, Ordering::SeqCst);
                tracing::warn!(
                    plugin = self.library.name(),
                    budget = ?self.budget,
                    thing = %ctx.thing_name,
                    job = %ctx.job_id,
                    "plugin call overran its budget; instance quarantined, its thread abandoned"
                );
                Err(PluginError::TimedOut {
                    plugin: self.library.name().to_owned(),
                    budget: self.budget,
                })
            }
        }
    }

    /// The worker thread is gone (it cannot be, short of a bug in the host): quarantine.
    fn lost(&self) -> PluginError {
        self.quarantined.store(true, Ordering::SeqCst);
        worker_gone(&self.library)
    }

    /// Whether an overrun quarantined this instance.
    pub fn is_quarantined(&self) -> bool {
        self.quarantined.load(Ordering::SeqCst)
    }

    /// The per-call time budget.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// The library this instance belongs to (its descriptor and counters).
    pub fn library(&self) -> &Arc<PluginLibrary> {
        &self.library
    }
}

fn worker_gone(library: &PluginLibrary) -> PluginError {
    PluginError::Failed {
        plugin: library.name().to_owned(),
        message: "the plugin's worker thread ended unexpectedly".to_owned(),
    }
}

/// The instance's thread: create, then answer jobs until the [`PluginInstance`] is dropped.
fn worker(
    library: Arc<PluginLibrary>,
    config: serde_json::Value,
    created: oneshot::Sender<Result<(), PluginError>>,
    queue: mpsc::Receiver<Job>,
) {
    let mut instance = match DirectInstance::new(&library, &config) {
        Ok(instance) => instance,
        Err(error) => {
            let _ = created.send(Err(error));
            return;
        }
    };
    if created.send(Ok(())).is_err() {
        return; // The caller gave up (overrun): `instance` is destroyed on the way out.
    }
    while let Ok(job) = queue.recv() {
        let result = instance.recover_json(&job.context);
        let _ = job.reply.send(result);
    }
}
