//! `sprig plugin check PATH --config FILE [--route NAME] [--context FILE|-]`: a dry run of a recovery
//! plugin, as the gateway would run it; and `--generate-context`, a sample context to start from.
//!
//! The plugin runs in a plugin host process (`sprig plugin-host`, through [`HostedInstance`], the very
//! supervisor the gateway uses), whatever the route's `isolation`, so a crash or an overrun in the dry
//! run ends only the host. Its instance is made from the route's `[recovery.config]` within the route's
//! `budget_ms`; one handler call answers the given context, and the answer is judged by the gateway's own
//! rules ([`crate::recovery::runner::check_actions`]). What it prints on a refusal is what the gateway
//! would log and record, word for word.
//!
//! Exit codes: 0 the config (and the answer) accepted; 1 refused, or the plugin not loaded; 252 the
//! command's own input is wrong (no such route, a context that is not one).

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use sprig_sdk::RecoveryContext;

use super::admin::PluginCheckArgs;
use super::Failure;
use crate::config::{Config, RecoveryRoute};
use crate::plugins::{HostOptions, HostedInstance, StartError};

/// The budget of each call when no route gives one (`[[recovery]] budget_ms`'s default).
const DEFAULT_BUDGET: Duration = Duration::from_millis(2000);

/// What the plugin instance is made from: a route's config and budget, or an empty config.
#[derive(Debug, Clone, PartialEq)]
struct Setup {
    /// The `[recovery.config]` table as the plugin receives it (JSON).
    config: Value,
    budget: Duration,
    /// Where the config is written, as refusals name it ([`RecoveryRoute::location`]).
    location: String,
    /// How the log names the host (the route's name).
    label: String,
}

/// Runs `sprig plugin check` with `--config`, `--context` or `--generate-context`.
pub fn run(args: &PluginCheckArgs) -> Result<Option<String>, Failure> {
    if args.generate_context {
        let sample: RecoveryContext =
            serde_json::from_value(sample_context()).expect("the sample is a RecoveryContext");
        return Ok(Some(pretty(&sample)));
    }
    let path = args
        .path
        .as_deref()
        .ok_or_else(|| usage("the plugin's PATH is required"))?;
    let setup = match &args.config {
        Some(file) => {
            let routes = Config::load_routes(file).map_err(|e| Failure::Fatal(e.to_string()))?;
            let origin = file.display().to_string();
            let (index, route) =
                choose_route(&routes, args.route.as_deref(), &origin).map_err(|why| usage(&why))?;
            setup_of(route, &origin, index)
        }
        None => Setup {
            config: Value::Object(Default::default()),
            budget: DEFAULT_BUDGET,
            location: "(no --config, so an empty table)".to_owned(),
            label: "dry-run".to_owned(),
        },
    };
    let context = match args.context.as_deref() {
        Some(source) => Some(read_context(source)?),
        None => None,
    };
    // The host's stderr (what the plugin prints, its panic messages) and the supervisor's warnings reach
    // the log as in the gateway: on stderr, beside the verdict.
    super::admin::init_tracing("warn,sprig_gateway::plugins=info");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Fatal(format!("sprig: cannot start the async runtime: {e}")))?;
    runtime.block_on(dry_run(path, &setup, context.as_ref()))
}

/// Makes the instance in a host and, given a context, runs one call; prints the verdict.
async fn dry_run(
    path: &Path,
    setup: &Setup,
    context: Option<&RecoveryContext>,
) -> Result<Option<String>, Failure> {
    let program = crate::plugins::host_program()
        .map_err(|e| Failure::Fatal(format!("sprig: cannot find its own executable: {e}")))?;
    let options = HostOptions {
        program,
        library: path.to_owned(),
        config: setup.config.clone(),
        budget: setup.budget,
        label: setup.label.clone(),
    };
    let hosted = match HostedInstance::start(options).await {
        Ok(hosted) => hosted,
        Err(StartError::Create(error)) => {
            return Err(refused(&error.refusing_config_at(&setup.location)))
        }
        Err(error) => return Err(Failure::Fatal(format!("sprig: plugin refused: {error}"))),
    };
    let descriptor = hosted.descriptor();
    let mut report = format!(
        "plugin:  {} {} (sprig-sdk {}, ABI {}), {}\nconfig:  {} [recovery.config] accepted; budget {} ms\n",
        descriptor.name,
        descriptor.version,
        descriptor.sdk_version,
        descriptor.abi_version,
        descriptor.path.display(),
        setup.location,
        setup.budget.as_millis(),
    );
    let Some(context) = context else {
        hosted.shutdown().await;
        return Ok(Some(report.trim_end().to_owned()));
    };
    let answer = hosted.recover(context).await;
    hosted.shutdown().await;
    report.push_str(&format!(
        "context: {}\n",
        serde_json::to_string(context).expect("a context serializes")
    ));
    let verdict = answer
        .map_err(|e| e.to_string())
        .and_then(|answer| crate::recovery::runner::check_actions(&context.thing_name, answer));
    match verdict {
        Ok(answer) => {
            report.push_str(&format!("answer:  accepted\n{}", pretty(&answer)));
            Ok(Some(report))
        }
        Err(why) => {
            report.push_str("answer:  refused");
            println!("{report}");
            Err(refused(&why))
        }
    }
}

fn refused(why: &str) -> Failure {
    Failure::Fatal(format!("sprig: refused: {why}"))
}

fn usage(why: &str) -> Failure {
    Failure::Usage(format!("sprig: error: {why}"))
}

/// Indented JSON, fields in the order of the sdk's types (`type` first in actions and outcomes).
fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).expect("JSON serializes")
}

/// The route named `name`, or the only one; an error lists the routes to choose from.
fn choose_route<'a>(
    routes: &'a [RecoveryRoute],
    name: Option<&str>,
    origin: &str,
) -> Result<(usize, &'a RecoveryRoute), String> {
    let names = || {
        routes
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (name, routes) {
        (_, []) => Err(format!("{origin} has no [[recovery]] route")),
        (None, [only]) => Ok((0, only)),
        (None, _) => Err(format!(
            "{origin} has {} [[recovery]] routes ({}): choose one with --route NAME",
            routes.len(),
            names()
        )),
        (Some(name), _) => routes
            .iter()
            .enumerate()
            .find(|(_, route)| route.name == name)
            .ok_or_else(|| {
                format!(
                    "{origin} has no [[recovery]] route named {name:?}; its routes: {}",
                    names()
                )
            }),
    }
}

fn setup_of(route: &RecoveryRoute, origin: &str, index: usize) -> Setup {
    Setup {
        config: crate::plugins::toml_config(&route.config),
        budget: Duration::from_millis(route.budget_ms),
        location: route.location(origin, index),
        label: route.name.clone(),
    }
}

/// A context to start from: every field the gateway sends, with plausible values (a device whose firmware
/// job was force-deleted mid-flash): the sdk's `RecoveryContext::example`, so it lists every field it knows.
pub fn sample_context() -> Value {
    serde_json::to_value(RecoveryContext::example()).expect("a context serializes")
}

/// The context in `source` (a file, or `-` for standard input).
fn read_context(source: &str) -> Result<RecoveryContext, Failure> {
    let (text, origin) = if source == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| usage(&format!("cannot read the context from standard input: {e}")))?;
        (text, "standard input".to_owned())
    } else {
        let text = std::fs::read_to_string(source)
            .map_err(|e| usage(&format!("cannot read the context {source}: {e}")))?;
        (text, source.to_owned())
    };
    let (context, ignored) =
        parse_context(&text).map_err(|why| usage(&format!("{origin}: {why}")))?;
    for field in ignored {
        eprintln!("sprig: note: {origin}: `{field}` is not a RecoveryContext field; ignored");
    }
    Ok(context)
}

/// A context from JSON text: the fields given, over [`sample_context`]'s for those left out. Also
/// returns the fields the context does not have (a typo would otherwise pass unnoticed: the gateway's
/// contexts tolerate unknown fields).
fn parse_context(text: &str) -> Result<(RecoveryContext, Vec<String>), String> {
    let given: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(given) = given else {
        return Err("a context is a JSON object".to_owned());
    };
    let mut context = sample_context();
    let fields = context.as_object_mut().expect("the sample is an object");
    let ignored = given
        .keys()
        .filter(|key| !fields.contains_key(*key))
        .cloned()
        .collect();
    fields.extend(given);
    let context = serde_path_to_error::deserialize(context).map_err(|e| {
        let path = e.path().to_string();
        format!("{path}: {}", e.into_inner())
    })?;
    Ok((context, ignored))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(text: &str) -> Vec<RecoveryRoute> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.toml");
        std::fs::write(&path, text).unwrap();
        Config::load_routes(&path).unwrap()
    }

    #[test]
    fn a_route_is_chosen_by_name_or_as_the_only_one() {
        let two = routes(
            "[[recovery]]\nname = \"pumps\"\nplugin = \"a.so\"\nbudget_ms = 300\n[recovery.config]\nx = 1\n\
             [[recovery]]\nplugin = \"b.so\"\n",
        );
        let (index, route) = choose_route(&two, Some("recovery-2"), "gw.toml").unwrap();
        assert_eq!((index, route.name.as_str()), (1, "recovery-2"));
        let error = choose_route(&two, None, "gw.toml").unwrap_err();
        assert_eq!(
            error,
            "gw.toml has 2 [[recovery]] routes (pumps, recovery-2): choose one with --route NAME"
        );
        let error = choose_route(&two, Some("valves"), "gw.toml").unwrap_err();
        assert_eq!(
            error,
            "gw.toml has no [[recovery]] route named \"valves\"; its routes: pumps, recovery-2"
        );
        let (_, only) = choose_route(&two[..1], None, "gw.toml").unwrap();
        let setup = setup_of(only, "gw.toml", 0);
        assert_eq!(setup.config, serde_json::json!({"x": 1}));
        assert_eq!(setup.budget, Duration::from_millis(300));
        assert_eq!(
            setup.location,
            "gw.toml: [[recovery]] \"pumps\" (recovery[0])"
        );
        assert_eq!(
            choose_route(&[], None, "gw.toml").unwrap_err(),
            "gw.toml has no [[recovery]] route"
        );
    }

    #[test]
    fn a_context_takes_the_samples_values_for_the_fields_left_out() {
        let (context, ignored) =
            parse_context(r#"{"thingName": "pump-1", "attempt": 3, "thingname": "x"}"#).unwrap();
        assert_eq!(context.thing_name, "pump-1");
        assert_eq!(context.attempt, 3);
        assert_eq!(context.job_id, "fw-42");
        assert_eq!(context.execution_status, "IN_PROGRESS");
        assert_eq!(ignored, ["thingname"]);

        let sample: RecoveryContext = serde_json::from_value(sample_context()).unwrap();
        assert_eq!(parse_context("{}").unwrap().0, sample);
        assert_eq!(
            parse_context(r#"{"attempt": "two"}"#).unwrap_err(),
            "attempt: invalid type: string \"two\", expected u32"
        );
        assert_eq!(
            parse_context("[1]").unwrap_err(),
            "a context is a JSON object"
        );
        assert!(parse_context("{").unwrap_err().starts_with("not JSON: "));
    }
}
