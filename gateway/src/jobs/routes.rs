//! Which devices have a recovery handler: the `[[recovery]]` routes, matched by thing-name glob and
//! namespace, first match wins. The engine asks it which interrupted device gets a recovery; the recovery
//! runner asks it which handler runs one. It lives with the jobs so both can use it, the jobs depending
//! on no part of recovery.

/// One route as the matcher needs it: its name, its thing-name glob and its namespace (`None`: any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    pub things: String,
    pub namespace: Option<String>,
}

/// The compiled routes. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct Routes {
    routes: Vec<(glob::Pattern, Option<String>)>,
    names: Vec<String>,
}

impl Routes {
    /// Compiles the routes (the config was validated, so every glob compiles).
    pub fn new(routes: &[Route]) -> Routes {
        Routes {
            routes: routes
                .iter()
                .filter_map(|r| Some((glob::Pattern::new(&r.things).ok()?, r.namespace.clone())))
                .collect(),
            names: routes.iter().map(|r| r.name.clone()).collect(),
        }
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

    fn route(things: &str, namespace: Option<&str>) -> Route {
        Route {
            name: things.into(),
            things: things.into(),
            namespace: namespace.map(str::to_owned),
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
