//! Which devices have a recovery handler: the `[[recovery]]` routes, matched by thing-name glob and
//! namespace, first match wins.

use crate::config::RecoveryRoute;

/// The compiled routes. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct Routes {
    routes: Vec<(glob::Pattern, Option<String>)>,
    names: Vec<String>,
    /// Rung by whoever commits new recoveries, so the runner starts them without waiting for its timer.
    created: tokio::sync::Notify,
}

impl Routes {
    /// Compiles the configured routes (the config was validated, so every glob compiles).
    pub fn new(config: &[RecoveryRoute]) -> Routes {
        Routes {
            routes: config
                .iter()
                .filter_map(|r| Some((glob::Pattern::new(&r.things).ok()?, r.namespace.clone())))
                .collect(),
            names: config.iter().map(|r| r.name.clone()).collect(),
            created: tokio::sync::Notify::new(),
        }
    }

    /// Tells the runner that new recoveries were committed.
    pub fn announce(&self) {
        self.created.notify_one();
    }

    /// Resolves when [`Routes::announce`] was called (a call before the wait counts too).
    pub async fn created(&self) {
        self.created.notified().await
    }

    /// The index of the first route for `thing` in `namespace` (`None`: a standard job).
    pub fn route_for(&self, thing: &str, namespace: Option<&str>) -> Option<usize> {
        self.routes.iter().position(|(things, ns)| {
            things.matches(thing) && ns.as_deref().is_none_or(|ns| Some(ns) == namespace)
        })
    }

    /// The name of the route at `index`.
    pub fn name(&self, index: usize) -> Option<&str> {
        self.names.get(index).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(things: &str, namespace: Option<&str>) -> RecoveryRoute {
        RecoveryRoute {
            name: things.into(),
            things: things.into(),
            namespace: namespace.map(str::to_owned),
            plugin: "x.so".into(),
            isolation: Default::default(),
            budget_ms: 1,
            max_failures: 1,
            retry_backoff_ms: 1,
            max_attempts: 1,
            ack_topic: None,
            config: Default::default(),
        }
    }

    #[test]
    fn the_first_matching_route_wins() {
        let routes = Routes::new(&[
            route("pump-*", Some("acme")),
            route("pump-?", None),
            route("*", None),
        ]);
        assert_eq!(routes.route_for("pump-10", Some("acme")), Some(0));
        assert_eq!(routes.route_for("pump-1", None), Some(1));
        assert_eq!(routes.route_for("pump-10", Some("other")), Some(2));
        assert_eq!(routes.name(1), Some("pump-?"));
        assert_eq!(routes.name(3), None);
        assert_eq!(
            Routes::new(&[route("pump-*", None)]).route_for("valve-1", None),
            None
        );
    }
}
