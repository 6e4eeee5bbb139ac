//! The commands that run on the gateway's own machine: `run`, `store check|backup|restore`,
//! `hash-password`, `credentials` and `plugin check` (`plugin reset`, beside them, is an operator command:
//! see [`super::plugin_reset`]).
//!
//! They are thin: load the config, set up logging and a runtime, hand over to [`crate::daemon`] or
//! [`crate::auth`], and turn the outcome into an exit code (1 for a refused config or a failed daemon,
//! as a service manager expects; 252 for a usage error).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use tracing_subscriber::EnvFilter;

use super::Failure;
use crate::auth::LocalOperator;
use crate::config::Config;
use crate::daemon::config_checks;

/// `--config FILE`.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// The config file [default: the built-in defaults, identical to config/gateway.toml]
    #[arg(long, env = "SPRIG_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `sprig store …`. Each runs with the gateway stopped (sled allows one process per store).
#[derive(Debug, Clone, Subcommand)]
pub enum StoreCommand {
    /// Check that the jobs store is whole and consistent (prints a report; exit code 1 if it is not)
    Check(ConfigArgs),
    /// Copy the jobs store, consistently and checked, into a new directory
    Backup(BackupArgs),
    /// Replace the jobs store with a backup made by `sprig store backup`
    Restore(RestoreArgs),
}

/// `sprig store backup --to DIR`.
#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// The directory to copy the store into (it must not exist, or be empty)
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `sprig store restore --from DIR [--force]`.
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The directory `sprig store backup --to` made
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// Replace the store that is there (it is moved aside to store.replaced-<time>, not deleted)
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `sprig plugin …`.
#[derive(Debug, Clone, Subcommand)]
pub enum PluginCommand {
    /// Load a recovery-handler plugin and print its descriptor, or why it is refused (exit code 1); with
    /// --config and --context, a dry run of one recovery as the gateway would run it
    #[command(
        after_help = "Dry run: `sprig plugin check lib.so --config gateway.toml --route NAME \
                            --context context.json` makes the plugin's instance from the route's \
                            [recovery.config] in a plugin host process, runs one handler call on the \
                            context and prints the answer (exit 0) or the refusal the gateway would \
                            record (exit 1). `--generate-context` prints a context to start from."
    )]
    Check(PluginCheckArgs),
    /// Write a new recovery-plugin crate (handler, config, unit tests, README, sample [[recovery]] route)
    /// that builds, tests and loads as it is
    New(super::plugin_new::PluginNewArgs),
    /// Reset a route's plugin in the running gateway: quarantine and backoff cleared, a new host now
    ///
    /// A new plugin host (process isolation) or instance (in-process) for the [[recovery]] route, at
    /// once; prints the plugin's new state, as `sprig reset-plugin --route-name ROUTE` does.
    Reset(PluginResetArgs),
}

/// `sprig plugin reset ROUTE`.
#[derive(Debug, Clone, Args)]
pub struct PluginResetArgs {
    /// The [[recovery]] route's name, as `sprig list-plugins` shows it
    #[arg(value_name = "ROUTE")]
    pub route: String,
    #[command(flatten, next_help_heading = "Connection")]
    pub connection: super::args::ConnectionArgs,
}

/// `sprig plugin check PATH [--config FILE [--route NAME]] [--context FILE|-]`, or
/// `sprig plugin check --generate-context`.
#[derive(Debug, Clone, Args)]
pub struct PluginCheckArgs {
    /// The plugin's shared library (lib<name>.so)
    #[arg(value_name = "PATH", required_unless_present = "generate_context")]
    pub path: Option<PathBuf>,
    /// Make the plugin's instance from a [[recovery]] route's [recovery.config] in FILE (a gateway
    /// config, or a file of [[recovery]] entries only; the route's `plugin` is not used: PATH is) [default: an empty config]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The route of --config, by name (needed when FILE has several)
    #[arg(long, value_name = "NAME", requires = "config")]
    pub route: Option<String>,
    /// Run one handler call on this RecoveryContext (JSON; FILE, or - for standard input); fields left
    /// out take the values --generate-context prints
    #[arg(long, value_name = "FILE")]
    pub context: Option<String>,
    /// Print a sample RecoveryContext (JSON), to edit for --context
    #[arg(long, conflicts_with_all = ["config", "route", "context"])]
    pub generate_context: bool,
}

/// `sprig plugin-host --library PATH` (hidden): one plugin host process.
#[derive(Debug, Clone, Args)]
pub struct PluginHostArgs {
    /// The plugin's shared library
    #[arg(long, value_name = "PATH")]
    pub library: PathBuf,
}

/// `sprig hash-password`.
#[derive(Debug, Clone, Args)]
pub struct HashPasswordArgs {
    /// The password to hash [default: one line read from standard input]
    #[arg(long)]
    pub password: Option<String>,
}

/// `sprig credentials [--config FILE] [--export]`.
#[derive(Debug, Clone, Args)]
pub struct CredentialsArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Start each line with `export `, for `eval "$(sprig credentials --export)"`
    #[arg(long)]
    pub export: bool,
}

/// `sprig run`: the gateway, until SIGINT or SIGTERM.
pub fn run(args: &ConfigArgs) -> Result<Option<String>, Failure> {
    let config = load_config(args.config.as_deref())?;
    config_checks::check_files(&config).map_err(|e| Failure::Fatal(e.to_string()))?;
    // rumqttd logs every connect and subscribe at info: keep its warnings, not its chatter.
    init_tracing("info,rumqttd=warn");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Fatal(format!("sprig: cannot start the async runtime: {e}")))?;
    runtime
        .block_on(crate::daemon::run(config))
        .map_err(|e| Failure::Fatal(format!("sprig: {e:#}")))?;
    Ok(None)
}

/// `sprig store check`: the daemon prints the report; an inconsistent or damaged store exits 1.
pub fn store_check(args: &ConfigArgs) -> Result<Option<String>, Failure> {
    let config = load_config(args.config.as_deref())?;
    init_tracing("warn");
    match crate::daemon::store_check(&config) {
        Ok(true) => Ok(None),
        Ok(false) => Err(Failure::Silent(1)),
        Err(e) => Err(Failure::Fatal(format!("sprig: {e:#}"))),
    }
}

/// `sprig store backup --to DIR`: prints what was copied; a store that is damaged or in use exits 1.
pub fn store_backup(args: &BackupArgs) -> Result<Option<String>, Failure> {
    let config = load_config(args.config.config.as_deref())?;
    init_tracing("warn");
    crate::daemon::store_backup(&config, &args.to)
        .map(Some)
        .map_err(|e| Failure::Fatal(format!("sprig: {e:#}")))
}

/// `sprig store restore --from DIR [--force]`: prints what was restored; a refusal exits 1.
pub fn store_restore(args: &RestoreArgs) -> Result<Option<String>, Failure> {
    let config = load_config(args.config.config.as_deref())?;
    init_tracing("warn");
    crate::daemon::store_restore(&config, &args.from, args.force)
        .map(Some)
        .map_err(|e| Failure::Fatal(format!("sprig: {e:#}")))
}

/// `sprig hash-password`: an argon2id PHC string for `password_hash` in the config.
pub fn hash_password(args: &HashPasswordArgs) -> Result<Option<String>, Failure> {
    let password = match &args.password {
        Some(password) => password.clone(),
        None => read_password_line()?,
    };
    if password.is_empty() {
        return Err(Failure::Usage(
            "sprig: error: the password must not be empty".to_owned(),
        ));
    }
    let hash = crate::auth::hash_password(&password)
        .map_err(|e| Failure::Fatal(format!("sprig: cannot hash the password: {e}")))?;
    Ok(Some(hash))
}

/// `sprig credentials`: the local operator's access key for the HTTP API, as the two environment variables
/// the AWS CLI and boto3 read, one `NAME=VALUE` line each (the values need no quoting: letters and
/// digits). It reads the file `sprig run` writes in the config's data dir, and never writes it: a key
/// added here would not be the running gateway's.
pub fn credentials(args: &CredentialsArgs) -> Result<Option<String>, Failure> {
    let config_path = args.config.config.as_deref();
    let config = load_config(config_path)?;
    let path = LocalOperator::path_in(&config.gateway.data_dir);
    let run = match config_path {
        Some(config) => format!("`sprig run --config {}`", config.display()),
        None => "`sprig run` in this directory".to_owned(),
    };
    let local = LocalOperator::load(&path).map_err(|e| {
        Failure::Fatal(if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "sprig: no local operator credential yet: run {run} first (looked for {})",
                path.display()
            )
        } else {
            format!(
                "sprig: cannot read the local operator credential {}: {e}",
                path.display()
            )
        })
    })?;
    let Some(key) = local.access_key else {
        return Err(Failure::Fatal(format!(
            "sprig: {} has no access key yet (an older sprig wrote it): restart the gateway, {run} \
             adds one",
            path.display()
        )));
    };
    let export = if args.export { "export " } else { "" };
    Ok(Some(format!(
        "{export}AWS_ACCESS_KEY_ID={}\n{export}AWS_SECRET_ACCESS_KEY={}",
        key.access_key_id, key.secret_access_key
    )))
}

/// `sprig plugin check PATH`: loads the plugin as the gateway would (no plugin function is called) and
/// prints its descriptor; a refused file exits 1 with the reason. It loads the library into this short-lived
/// process: the check runs the library's initializers, as a host would, and nothing else of the plugin.
/// With `--config`, `--context` or `--generate-context` it is a dry run ([`super::dry_run`]).
pub fn plugin_check(args: &PluginCheckArgs) -> Result<Option<String>, Failure> {
    let dry_run = args.config.is_some() || args.context.is_some() || args.generate_context;
    let path = match &args.path {
        Some(path) if !dry_run => path,
        _ => return super::dry_run::run(args),
    };
    match crate::plugins::PluginLibrary::load(path) {
        Ok(library) => Ok(Some(library.descriptor().to_string())),
        Err(e) => Err(Failure::Fatal(format!("sprig: plugin refused: {e}"))),
    }
}

/// `sprig plugin-host`: serves one plugin to the gateway that started it, until the gateway closes the
/// pipe ([`crate::plugins::serve_host`]).
pub fn plugin_host(args: &PluginHostArgs) -> Result<Option<String>, Failure> {
    match crate::plugins::serve_host(&args.library) {
        0 => Ok(None),
        code => Err(Failure::Silent(code)),
    }
}

fn read_password_line() -> Result<String, Failure> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Password: ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| Failure::Fatal(format!("sprig: cannot read the password: {e}")))?;
    Ok(strip_line_ending(&line).to_owned())
}

fn strip_line_ending(line: &str) -> &str {
    let line = line.strip_suffix('\n').unwrap_or(line);
    line.strip_suffix('\r').unwrap_or(line)
}

/// The config at `path`, or the built-in defaults; a bad file is refused with its own message.
fn load_config(path: Option<&Path>) -> Result<Config, Failure> {
    config_checks::load(path).map_err(|e| Failure::Fatal(e.to_string()))
}

/// Logs to stderr, filtered by `RUST_LOG` (default: `default_level`); and counts the router's skipped
/// messages whatever the filter ([`crate::broker::skips`]).
///
/// rumqttd's spans are never made: its router opens an ERROR-level span (`incoming_payload{client_id}`)
/// for every batch of publishes it takes, which passes any filter that shows its errors, and making,
/// formatting and closing it cost ~7 % of the gateway's CPU while it forwarded messages. Its events are
/// logged as the filter says, without the span's client id (sprig's own lines name the client).
///
/// Crates that log through `log` (sled) are cut at the filter's most verbose level: the combined
/// filter gives no level hint, so `log` would otherwise hand every one of sled's `trace!` lines (one per
/// page read) to the subscriber to be refused, ~10 % of the gateway's CPU while it created jobs.
pub(super) fn init_tracing(default_level: &str) {
    use tracing_subscriber::filter::FilterExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;

    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let most_verbose = filter.max_level_hint();
    let filter = filter.and(crate::broker::skips::no_router_spans());
    // Colours only on a terminal: in a file or the journal they are escape codes.
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colours)
        .with_filter(filter);
    let _ = tracing_subscriber::registry()
        .with(log)
        .with(crate::broker::skips::layer())
        .try_init();
    log::set_max_level(log_level(most_verbose));
}

/// `log`'s level for a filter whose most verbose level is `hint` (`None`: no hint, anything may pass).
fn log_level(hint: Option<tracing::level_filters::LevelFilter>) -> log::LevelFilter {
    use tracing::level_filters::LevelFilter;
    match hint {
        Some(LevelFilter::OFF) => log::LevelFilter::Off,
        Some(LevelFilter::ERROR) => log::LevelFilter::Error,
        Some(LevelFilter::WARN) => log::LevelFilter::Warn,
        Some(LevelFilter::INFO) => log::LevelFilter::Info,
        Some(LevelFilter::DEBUG) => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_records_stop_at_the_filters_most_verbose_level() {
        let level = |filter: &str| log_level(EnvFilter::new(filter).max_level_hint());
        assert_eq!(level("info,rumqttd=warn"), log::LevelFilter::Info);
        assert_eq!(
            level("warn,sprig_gateway::plugins=info"),
            log::LevelFilter::Info
        );
        assert_eq!(level("warn"), log::LevelFilter::Warn);
        assert_eq!(level("sled=trace"), log::LevelFilter::Trace);
        assert_eq!(level("off"), log::LevelFilter::Off);
    }

    #[test]
    fn hash_password_prints_a_hash_the_config_accepts() {
        let args = HashPasswordArgs {
            password: Some("s3cret".into()),
        };
        let hash = hash_password(&args).unwrap().unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        crate::auth::check_hash_format(&hash).unwrap();
        assert!(crate::auth::verify_password(b"s3cret", &hash));
    }

    #[test]
    fn an_empty_password_is_refused() {
        let args = HashPasswordArgs {
            password: Some(String::new()),
        };
        assert_eq!(hash_password(&args).unwrap_err().exit_code(), 252);
    }

    #[test]
    fn line_endings_are_not_part_of_the_password() {
        assert_eq!(strip_line_ending("pw\r\n"), "pw");
        assert_eq!(strip_line_ending("pw\n"), "pw");
        assert_eq!(strip_line_ending("pw"), "pw");
    }

    #[test]
    fn plugin_check_refuses_a_missing_file_with_exit_1() {
        let failure = plugin_check(&PluginCheckArgs {
            path: Some(PathBuf::from("/nonexistent/libnothing.so")),
            config: None,
            route: None,
            context: None,
            generate_context: false,
        })
        .unwrap_err();
        assert_eq!(failure.exit_code(), 1);
        assert!(failure.to_string().contains("libnothing.so"), "{failure}");
    }

    #[test]
    fn credentials_print_the_local_operators_access_key_once_sprig_run_made_it() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let config_path = dir.path().join("gateway.toml");
        let toml =
            crate::config::DEFAULT_TOML.replace("./sprig-data", &data_dir.display().to_string());
        std::fs::write(&config_path, toml).unwrap();
        let args = |export| CredentialsArgs {
            config: ConfigArgs {
                config: Some(config_path.clone()),
            },
            export,
        };

        let failure = credentials(&args(false)).unwrap_err();
        assert_eq!(failure.exit_code(), 1);
        let text = failure.to_string();
        assert!(
            text.contains("sprig run --config") && text.contains("local-operator.json"),
            "{text}"
        );

        let local = LocalOperator::load_or_create(&data_dir).unwrap();
        let key = local.access_key.clone().unwrap();
        assert_eq!(
            credentials(&args(false)).unwrap().unwrap(),
            format!(
                "AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={}",
                key.access_key_id, key.secret_access_key
            )
        );
        let exported = credentials(&args(true)).unwrap().unwrap();
        assert_eq!(
            exported.lines().collect::<Vec<_>>(),
            [
                format!("export AWS_ACCESS_KEY_ID={}", key.access_key_id),
                format!("export AWS_SECRET_ACCESS_KEY={}", key.secret_access_key),
            ]
        );

        let keyless = LocalOperator {
            access_key: None,
            ..local
        };
        let path = LocalOperator::path_in(&data_dir);
        std::fs::write(&path, serde_json::to_string(&keyless).unwrap()).unwrap();
        let text = credentials(&args(false)).unwrap_err().to_string();
        assert!(
            text.contains("no access key yet") && text.contains("restart"),
            "{text}"
        );
        assert_eq!(
            LocalOperator::load(&path).unwrap(),
            keyless,
            "the file is only read"
        );
    }

    #[test]
    fn a_bad_config_exits_1_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[gateway]\nid = 3\n").unwrap();
        let failure = run(&ConfigArgs {
            config: Some(path.clone()),
        })
        .unwrap_err();
        assert_eq!(failure.exit_code(), 1);
        assert!(failure.to_string().contains("bad.toml"), "{failure}");
    }
}
