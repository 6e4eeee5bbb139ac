//! The routes' plugins, loaded: what the runner calls, and what operators inspect and reset.
//!
//! [`Handlers`] is the one handle on them, shared (in an `Arc`) by the runner, which calls them, and the
//! control API, which asks for their state ([`Handlers::list`], [`Handlers::describe`]) and resets them
//! ([`Handlers::reset`]). Their state is runtime state: it lives here, never in the store. Each route
//! remembers its last failure, and an in-process route when and why its instance was quarantined.
//!
//! What a reset does, by isolation:
//! - `process`: the route's host is killed, whatever it is doing (a call in progress fails as a crash),
//!   the restart delay is forgotten, and a new host loads the library and runs `create` at once.
//! - `in-process`: a fresh instance replaces the current one and the route's quota of automatic
//!   replacements is restored. A thread stuck in an overrun call cannot be killed: it is left to finish
//!   (or not), and counted as abandoned until it ends.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use sprig_sdk::{Recovery, RecoveryContext};

use super::status::{
    self, Facts, Failure, InProcessFacts, ListPluginsResponse, PluginView, Where, LOAD_FAILED,
};
use crate::config::{Isolation, RecoveryRoute};
use crate::plugins::{
    HostOptions, HostedInstance, InstanceGroup, PluginDescriptor, PluginError, PluginInstance,
    PluginLibrary, StartError,
};

/// How often a route's quarantined in-process plugin instance is replaced by itself (each stuck
/// instance keeps its thread) before its calls fail until an operator resets it.
pub const MAX_REPLACEMENTS: u32 = 3;

/// Why an operator's request about a route's plugin was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlersError {
    #[error("no [[recovery]] route is named {name}; the routes are: {known}")]
    UnknownRoute { name: String, known: String },
    #[error("{0}")]
    InvalidRequest(String),
}

/// Every route's plugin, in the order of the `[[recovery]]` routes.
pub struct Handlers {
    routes: Vec<RouteHandler>,
}

impl Handlers {
    /// Loads every route's plugin and makes its instance. `origin` is where the config was read from.
    ///
    /// A plugin that cannot be loaded (a missing file, the wrong ABI) refuses the start: nothing of its
    /// route can work, and a gateway that silently lacked a configured handler would be worse than one
    /// that does not start. A plugin that loads but refuses its route's `[recovery.config]` (or fails
    /// making its instance: a panic, a crash) leaves only that route out of service: the gateway says so
    /// at once, naming the config file, the route and the key, and serves devices and the other routes;
    /// each of the route's recoveries fails with that message, per the route's policy, until the config
    /// is fixed and the gateway restarted.
    pub async fn load(routes: &[RecoveryRoute], origin: &str) -> anyhow::Result<Handlers> {
        let mut loaded = Vec::with_capacity(routes.len());
        for (i, route) in routes.iter().enumerate() {
            let handler = RouteHandler::load(i, route, origin).await?;
            match &handler.handler {
                Handler::Refused(refused) => tracing::error!(
                    route = %route.name,
                    plugin = handler.plugin(),
                    "{}: the route is out of service; its recoveries fail until the config is fixed \
                     and the gateway restarted",
                    refused.message
                ),
                _ => tracing::info!(
                    route = %route.name,
                    plugin = handler.plugin(),
                    things = %route.things,
                    namespace = ?route.namespace,
                    isolation = ?route.isolation,
                    "recovery handler loaded"
                ),
            }
            loaded.push(handler);
        }
        Ok(Handlers { routes: loaded })
    }

    /// The handler of the route at `index` (as [`super::Routes::route_for`] finds it).
    pub fn get(&self, index: usize) -> Option<&RouteHandler> {
        self.routes.get(index)
    }

    pub fn iter(&self) -> impl Iterator<Item = &RouteHandler> {
        self.routes.iter()
    }

    /// Every route's plugin, in config order, `max_results` at a time after the route `next_token`
    /// names.
    pub fn list(
        &self,
        max_results: Option<u32>,
        next_token: Option<&str>,
    ) -> Result<ListPluginsResponse, HandlersError> {
        let limit = match max_results {
            None => 50,
            Some(n @ 1..=250) => n as usize,
            Some(n) => {
                return Err(HandlersError::InvalidRequest(format!(
                    "maxResults: must be between 1 and 250; got {n}"
                )))
            }
        };
        let start = match next_token {
            None => 0,
            Some(token) => {
                self.position(token).ok_or_else(|| {
                    HandlersError::InvalidRequest(format!(
                        "nextToken: not a token this gateway issued; got \"{token}\""
                    ))
                })? + 1
            }
        };
        let now = SystemTime::now();
        let page: Vec<PluginView> = self.routes[start.min(self.routes.len())..]
            .iter()
            .take(limit)
            .map(|route| route.view(now))
            .collect();
        let next_token = (start + page.len() < self.routes.len())
            .then(|| page.last().map(|p| p.route_name.clone()))
            .flatten();
        Ok(ListPluginsResponse {
            plugins: page,
            next_token,
        })
    }

    /// The named route's plugin.
    pub fn describe(&self, name: &str) -> Result<PluginView, HandlersError> {
        Ok(self.named(name)?.view(SystemTime::now()))
    }

    /// Resets the named route's plugin (see the module's doc) and returns its new state.
    pub async fn reset(&self, name: &str) -> Result<PluginView, HandlersError> {
        Ok(self.named(name)?.reset().await)
    }

    /// Ends every route's plugin host, and waits for them.
    pub async fn shutdown(&self) {
        for route in &self.routes {
            if let Handler::Process(hosted) = &route.handler {
                hosted.shutdown().await;
            }
        }
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.route.name == name)
    }

    fn named(&self, name: &str) -> Result<&RouteHandler, HandlersError> {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(HandlersError::InvalidRequest(format!(
                "routeName: must be a route's name, [a-zA-Z0-9_-]+; got \"{name}\""
            )));
        }
        self.position(name)
            .map(|i| &self.routes[i])
            .ok_or_else(|| HandlersError::UnknownRoute {
                name: name.to_owned(),
                known: match self.routes.len() {
                    0 => "none (the config has no [[recovery]] route)".to_owned(),
                    _ => self
                        .routes
                        .iter()
                        .map(|r| r.route.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                },
            })
    }
}

/// One route and its plugin.
pub struct RouteHandler {
    route: RecoveryRoute,
    handler: Handler,
    last_failure: Mutex<Option<Failure>>,
}

/// A route's plugin, where its `isolation` puts it.
enum Handler {
    /// In a supervised host process.
    Process(Box<HostedInstance>),
    /// In the gateway, on a worker thread.
    InProcess(Box<InProcess>),
    /// Out of service: the plugin loaded but refused the route's config at startup.
    Refused(Box<Refused>),
}

/// A route whose plugin refused its config: every call fails with `message`.
struct Refused {
    descriptor: PluginDescriptor,
    /// Names the config file, the route and the key (`PluginError::refusing_config_at`).
    message: String,
    since: SystemTime,
}

impl RouteHandler {
    async fn load(
        index: usize,
        route: &RecoveryRoute,
        origin: &str,
    ) -> anyhow::Result<RouteHandler> {
        let config = crate::plugins::toml_config(&route.config);
        let budget = Duration::from_millis(route.budget_ms);
        let location = route.location(origin, index);
        let label = format!("recovery[{index}]");
        let refused = |descriptor: PluginDescriptor, error: PluginError| {
            Handler::Refused(Box::new(Refused {
                descriptor,
                message: error.refusing_config_at(&location),
                since: SystemTime::now(),
            }))
        };
        let handler = match route.isolation {
            Isolation::Process => {
                let options = HostOptions {
                    program: crate::plugins::host_program()
                        .context("cannot find the sprig executable to run plugin hosts from")?,
                    library: route.plugin.clone(),
                    config,
                    budget,
                    label,
                };
                match HostedInstance::start(options).await {
                    Ok(hosted) => Handler::Process(Box::new(hosted)),
                    Err(StartError::Create(error)) => {
                        // The host loaded the library, then `create` refused: its name is all it said.
                        let descriptor = PluginDescriptor {
                            name: error.plugin().to_owned(),
                            version: String::new(),
                            sdk_version: String::new(),
                            abi_version: sprig_sdk::ABI_VERSION,
                            path: route.plugin.clone(),
                        };
                        refused(descriptor, error)
                    }
                    Err(e) => anyhow::bail!("{location}: cannot load the plugin: {e}"),
                }
            }
            Isolation::InProcess => {
                let path = route.plugin.clone();
                let library = tokio::task::spawn_blocking(move || PluginLibrary::load(path))
                    .await?
                    .with_context(|| format!("{location}: cannot load the plugin"))?;
                let in_process = InProcess::new(library, config, budget, label);
                match in_process.make_instance().await {
                    Ok(_) => Handler::InProcess(Box::new(in_process)),
                    Err(error) => refused(in_process.library.descriptor().clone(), error),
                }
            }
        };
        Ok(RouteHandler {
            route: route.clone(),
            handler,
            last_failure: Mutex::new(None),
        })
    }

    pub fn route(&self) -> &RecoveryRoute {
        &self.route
    }

    /// The plugin's name (from its descriptor).
    pub fn plugin(&self) -> &str {
        &self.descriptor().name
    }

    fn descriptor(&self) -> &PluginDescriptor {
        match &self.handler {
            Handler::Process(hosted) => hosted.descriptor(),
            Handler::InProcess(in_process) => in_process.library.descriptor(),
            Handler::Refused(refused) => &refused.descriptor,
        }
    }

    /// How long the route's calls must wait for a new plugin host, if they must.
    pub fn restart_delay(&self) -> Option<Duration> {
        match &self.handler {
            Handler::Process(hosted) => hosted.restart_delay(),
            Handler::InProcess(_) | Handler::Refused(_) => None,
        }
    }

    /// Runs one recovery through the route's plugin; a failure is remembered as the route's last.
    pub async fn recover(&self, ctx: &RecoveryContext) -> Result<Recovery, PluginError> {
        let result = match &self.handler {
            Handler::Process(hosted) => hosted.recover(ctx).await,
            Handler::InProcess(in_process) => in_process.recover(&self.route.name, ctx).await,
            Handler::Refused(refused) => Err(PluginError::Failed {
                plugin: refused.descriptor.name.clone(),
                message: refused.message.clone(),
            }),
        };
        if let Err(error) = &result {
            self.remember(status::failure_kind(error.kind()), error.to_string());
        }
        result
    }

    /// Resets the plugin and returns its state as the reset left it (before the runner's next call).
    async fn reset(&self) -> PluginView {
        tracing::warn!(route = %self.route.name, plugin = self.plugin(), "resetting the route's plugin, as an operator asked");
        let place = match &self.handler {
            Handler::Process(hosted) => match hosted.restart_now().await {
                Ok(status) => Some(Where::Host(status)),
                Err(error) => {
                    let kind = match &error {
                        StartError::Create(error) => status::failure_kind(error.kind()),
                        StartError::Load(_) => LOAD_FAILED,
                        StartError::Host(_) => "CRASHED",
                    };
                    self.remember(kind, error.to_string());
                    None
                }
            },
            Handler::InProcess(in_process) => match in_process.reset().await {
                Ok(facts) => Some(Where::InProcess(facts)),
                Err(error) => {
                    self.remember(status::failure_kind(error.kind()), error.to_string());
                    None
                }
            },
            // The config was refused: only a restart with a fixed one makes an instance.
            Handler::Refused(_) => None,
        };
        self.view_with(place, SystemTime::now())
    }

    fn remember(&self, kind: &'static str, message: String) {
        *lock(&self.last_failure) = Some(Failure {
            at: SystemTime::now(),
            kind,
            message,
        });
    }

    fn view(&self, now: SystemTime) -> PluginView {
        self.view_with(None, now)
    }

    /// The view, with `place` as given (or as it stands now).
    fn view_with(&self, place: Option<Where>, now: SystemTime) -> PluginView {
        let last_failure = lock(&self.last_failure).clone();
        let (stats, place) = match &self.handler {
            Handler::Process(hosted) => (
                hosted.stats(),
                place.unwrap_or_else(|| Where::Host(hosted.status())),
            ),
            Handler::InProcess(in_process) => (
                in_process.group.stats(),
                place.unwrap_or_else(|| Where::InProcess(in_process.facts())),
            ),
            Handler::Refused(refused) => (
                Default::default(),
                Where::Refused {
                    message: refused.message.clone(),
                    since: refused.since,
                },
            ),
        };
        PluginView::of(
            &Facts {
                route: &self.route,
                descriptor: self.descriptor(),
                stats,
                last_failure: last_failure.as_ref(),
                place,
            },
            now,
        )
    }
}

/// An in-process route's plugin: the library, and its current instance on a worker thread.
struct InProcess {
    library: Arc<PluginLibrary>,
    config: serde_json::Value,
    budget: Duration,
    /// How the plugin's log lines name the route.
    label: String,
    /// The route's instances' calls and threads.
    group: Arc<InstanceGroup>,
    /// Held while an instance is made, so that a replacement and a reset do not both make one.
    making: tokio::sync::Mutex<()>,
    /// Held only briefly, never across an await: readable while a call runs.
    slot: Mutex<Slot>,
}

/// The current instance and what is known about it.
struct Slot {
    instance: Option<Arc<PluginInstance>>,
    starting: bool,
    since: SystemTime,
    start_error: Option<String>,
    quarantine: Option<(SystemTime, String)>,
    replacements: u32,
    made: u64,
}

impl InProcess {
    fn new(
        library: Arc<PluginLibrary>,
        config: serde_json::Value,
        budget: Duration,
        label: String,
    ) -> InProcess {
        InProcess {
            library,
            config,
            budget,
            label,
            group: Arc::default(),
            making: tokio::sync::Mutex::new(()),
            slot: Mutex::new(Slot {
                instance: None,
                starting: false,
                since: SystemTime::now(),
                start_error: None,
                quarantine: None,
                replacements: 0,
                made: 0,
            }),
        }
    }

    async fn recover(&self, route: &str, ctx: &RecoveryContext) -> Result<Recovery, PluginError> {
        let instance = self.usable_instance(route).await?;
        let result = instance.recover(ctx).await;
        if let Err(error @ PluginError::TimedOut { .. }) = &result {
            let mut slot = lock(&self.slot);
            // Unless a reset replaced it meanwhile, the overrun quarantined the route's instance.
            if slot
                .instance
                .as_ref()
                .is_some_and(|current| Arc::ptr_eq(current, &instance))
            {
                slot.quarantine = Some((SystemTime::now(), error.to_string()));
            }
        }
        result
    }

    /// The live instance, replacing a quarantined (or missing) one at most [`MAX_REPLACEMENTS`] times
    /// between resets.
    async fn usable_instance(&self, route: &str) -> Result<Arc<PluginInstance>, PluginError> {
        let _making = self.making.lock().await;
        {
            let mut slot = lock(&self.slot);
            if let Some(instance) = slot.instance.as_ref().filter(|i| !i.is_quarantined()) {
                return Ok(instance.clone());
            }
            if slot.replacements >= MAX_REPLACEMENTS {
                self.group.record_refused(&self.library);
                return Err(PluginError::Quarantined {
                    plugin: self.library.name().to_owned(),
                });
            }
            slot.replacements += 1;
        }
        tracing::warn!(
            route,
            plugin = self.library.name(),
            "replacing a quarantined plugin instance"
        );
        self.make_instance().await
    }

    /// A fresh instance replaces the current one, and the replacement quota is restored; returns how
    /// it then stands.
    async fn reset(&self) -> Result<InProcessFacts, PluginError> {
        let _making = self.making.lock().await;
        lock(&self.slot).replacements = 0;
        self.make_instance().await?;
        Ok(self.facts())
    }

    /// Makes an instance and puts it in the slot (or, if that fails, none and why).
    async fn make_instance(&self) -> Result<Arc<PluginInstance>, PluginError> {
        lock(&self.slot).starting = true;
        let made = PluginInstance::new_in_group(
            self.library.clone(),
            self.config.clone(),
            self.budget,
            self.group.clone(),
            Some(self.label.clone()),
        )
        .await;
        let mut slot = lock(&self.slot);
        slot.starting = false;
        slot.since = SystemTime::now();
        slot.quarantine = None;
        slot.made += 1;
        match made {
            Ok(instance) => {
                let instance = Arc::new(instance);
                slot.instance = Some(instance.clone());
                slot.start_error = None;
                Ok(instance)
            }
            Err(error) => {
                slot.instance = None;
                slot.start_error = Some(error.to_string());
                Err(error)
            }
        }
    }

    fn facts(&self) -> InProcessFacts {
        let slot = lock(&self.slot);
        InProcessFacts {
            instance: slot.instance.as_ref().map(|i| i.is_quarantined()),
            starting: slot.starting,
            since: slot.since,
            start_error: slot.start_error.clone(),
            quarantine: slot.quarantine.clone(),
            replacements_left: MAX_REPLACEMENTS.saturating_sub(slot.replacements),
            running_threads: self.group.running_threads(),
            restarts: slot.made.saturating_sub(1),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_about_routes_are_checked_and_unknown_routes_named() {
        let none = Handlers { routes: Vec::new() };
        let listed = none.list(None, None).unwrap();
        assert!(listed.plugins.is_empty() && listed.next_token.is_none());
        let unknown = none.describe("pumps").unwrap_err();
        assert_eq!(
            unknown.to_string(),
            "no [[recovery]] route is named pumps; the routes are: none (the config has no \
             [[recovery]] route)"
        );
        assert!(matches!(
            none.describe("a b"),
            Err(HandlersError::InvalidRequest(_))
        ));
        for bad in [0, 251] {
            let error = none.list(Some(bad), None).unwrap_err();
            assert!(error.to_string().starts_with("maxResults"), "{error}");
        }
        let error = none.list(None, Some("pumps")).unwrap_err();
        assert!(error.to_string().starts_with("nextToken"), "{error}");
    }
}
