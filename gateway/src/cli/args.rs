//! The clap side of the control operations: one subcommand per [`OPERATIONS`] entry, built at run time.
//!
//! The rest of the CLI is derive-based; the operations cannot be, because their flags come from the
//! table. [`Invocation`] bridges the two: it implements clap's [`Subcommand`] and [`FromArgMatches`] by
//! hand, so the derived `Command` enum takes every table entry with a single `#[command(flatten)]` variant.
//!
//! Flags follow the AWS CLI: `--job-id VALUE` for strings (or `file://PATH`), `--max-results N` for
//! integers, `--targets A B C` for lists, `--force` / `--no-force` for booleans. None is `required` for
//! clap: a required parameter may also come from `--cli-input-json`, so [`super::input`] checks it after
//! the merge. Each operation also takes `--cli-input-json`, `--generate-cli-skeleton [input|output]` and
//! the [`ConnectionArgs`]; `delete-job` also `--wait` ([`Operation::waits`]), which is no request parameter.

use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches, Subcommand};
use serde_json::Value;

use super::input::{load_param_value, Request};
use super::operations::{Operation, Param, Shape, OPERATIONS};
use super::Failure;

/// Where the gateway is and who we are; every operation takes these.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct ConnectionArgs {
    /// The gateway's MQTT endpoint [default: the first [broker] listen address of the config]
    #[arg(long, env = "SPRIG_ENDPOINT", value_name = "mqtt://HOST:PORT")]
    pub endpoint: Option<String>,
    /// Operator username [default: the local operator credential that `sprig run` writes]
    #[arg(long, env = "SPRIG_USERNAME")]
    pub username: Option<String>,
    /// Operator password
    #[arg(long, env = "SPRIG_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// The gateway's config file: its listen address and data dir [default: the built-in defaults]
    #[arg(long, env = "SPRIG_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// How long to wait for the gateway, in seconds
    #[arg(long, hide = true, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_secs: u64,
}

/// What `--generate-cli-skeleton` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkeletonKind {
    Input,
    Output,
}

/// One parsed control-operation command line.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub operation: &'static Operation,
    pub cli_input_json: Option<String>,
    pub skeleton: Option<SkeletonKind>,
    /// `--wait`: once the request is accepted, wait until the job is gone.
    pub wait: bool,
    pub connection: ConnectionArgs,
    /// The subcommand's matches, read by [`Invocation::flag_values`].
    matches: ArgMatches,
}

const CLI_INPUT_JSON: &str = "cli_input_json";
const GENERATE_CLI_SKELETON: &str = "generate_cli_skeleton";
const WAIT: &str = "wait";

impl Invocation {
    /// The request parameters given as flags (reading `file://` values), keyed by boto3 name.
    pub fn flag_values(&self) -> Result<Request, Failure> {
        let mut request = Request::new();
        for param in self.operation.params {
            if let Some(value) = flag_value(&self.matches, param)? {
                request.insert(param.name.to_owned(), value);
            }
        }
        Ok(request)
    }
}

fn flag_value(matches: &ArgMatches, param: &Param) -> Result<Option<Value>, Failure> {
    let id = param.name;
    let value = match param.shape {
        Shape::Boolean => {
            if matches.get_flag(id) {
                Some(Value::Bool(true))
            } else if matches.get_flag(&negation_id(param)) {
                Some(Value::Bool(false))
            } else {
                None
            }
        }
        Shape::Integer | Shape::Timestamp => matches.get_one::<i64>(id).map(|n| Value::from(*n)),
        Shape::String => match matches.get_one::<String>(id) {
            Some(raw) => Some(Value::String(load_param_value(&param.flag(), raw)?)),
            None => None,
        },
        Shape::List(_) => matches
            .get_many::<String>(id)
            .map(|items| items.cloned().map(Value::String).collect()),
        Shape::Map(_) | Shape::Struct(_) => match matches.get_one::<String>(id) {
            Some(raw) => {
                let text = load_param_value(&param.flag(), raw)?;
                Some(serde_json::from_str(&text).map_err(|e| {
                    Failure::Usage(format!(
                        "Error parsing parameter '--{}': Invalid JSON: {e}",
                        param.flag()
                    ))
                })?)
            }
            None => None,
        },
    };
    Ok(value)
}

fn negation_id(param: &Param) -> String {
    format!("no-{}", param.name)
}

/// clap (without its `string` feature) takes only `&'static str` names. The command is built once per
/// process, from a fixed table, so leaking its few derived names costs a few hundred bytes, once.
fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

/// The clap subcommand of one operation.
pub fn command(op: &'static Operation) -> Command {
    let mut cmd = Command::new(op.command);
    for param in op.params {
        cmd = add_param(cmd, param);
    }
    let cmd = cmd
        .arg(
            Arg::new(CLI_INPUT_JSON)
                .long("cli-input-json")
                .value_name("JSON|file://PATH")
                .help("Request parameters as a JSON object (camelCase names); flags override its values"),
        )
        .arg(
            Arg::new(GENERATE_CLI_SKELETON)
                .long("generate-cli-skeleton")
                .value_name("input|output")
                .num_args(0..=1)
                .default_missing_value("input")
                .value_parser(["input", "output"])
                .help("Print a JSON skeleton of the request (input, the default) or of the response (output), without connecting"),
        );
    let cmd = if op.waits() {
        cmd.arg(
            Arg::new(WAIT)
                .long("wait")
                .action(ArgAction::SetTrue)
                .help("Once the deletion is accepted, wait until the job is gone (DescribeJob says it does not exist), with a progress bar on a terminal"),
        )
    } else {
        cmd
    };
    let prints = match op.output {
        Some(_) => "prints the response as JSON",
        None => "prints nothing on success",
    };
    // The derived `augment_args` sets `about` from `ConnectionArgs`' doc comment: set ours after it.
    ConnectionArgs::augment_args(cmd.next_help_heading("Connection"))
        .about(op.about)
        .long_about(None)
        .after_help(format!(
            "Sends the {} control request to the gateway and {prints}.",
            op.name
        ))
}

fn add_param(cmd: Command, param: &'static Param) -> Command {
    let flag = param.flag();
    let help = if param.required {
        format!("{} [required]", param.help)
    } else {
        param.help.to_owned()
    };
    let value_name = leak(flag.replace('-', "_").to_uppercase());
    let arg = Arg::new(param.name).long(leak(flag.clone())).help(help);
    let arg = match param.alias {
        Some(alias) => arg.visible_alias(alias),
        None => arg,
    };
    match param.shape {
        Shape::Boolean => cmd
            .arg(
                arg.action(ArgAction::SetTrue)
                    .overrides_with(leak(negation_id(param))),
            )
            .arg(
                Arg::new(leak(negation_id(param)))
                    .long(leak(format!("no-{flag}")))
                    .action(ArgAction::SetTrue)
                    .overrides_with(param.name)
                    .help(format!("The opposite of --{flag}")),
            ),
        Shape::Integer | Shape::Timestamp => cmd.arg(
            arg.value_name(value_name)
                .value_parser(clap::value_parser!(i64)),
        ),
        Shape::List(_) => cmd.arg(
            arg.value_name(value_name)
                .num_args(1..)
                .action(ArgAction::Append),
        ),
        Shape::String | Shape::Map(_) | Shape::Struct(_) => cmd.arg(arg.value_name(value_name)),
    }
}

impl FromArgMatches for Invocation {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let missing = || clap::Error::new(clap::error::ErrorKind::MissingSubcommand);
        let (name, sub) = matches.subcommand().ok_or_else(missing)?;
        let operation = Operation::find(name).ok_or_else(|| {
            clap::Error::raw(
                clap::error::ErrorKind::InvalidSubcommand,
                format!("unknown operation {name}\n"),
            )
        })?;
        let skeleton =
            sub.get_one::<String>(GENERATE_CLI_SKELETON)
                .map(|kind| match kind.as_str() {
                    "output" => SkeletonKind::Output,
                    _ => SkeletonKind::Input,
                });
        Ok(Invocation {
            operation,
            cli_input_json: sub.get_one::<String>(CLI_INPUT_JSON).cloned(),
            skeleton,
            wait: operation.waits() && sub.get_flag(WAIT),
            connection: ConnectionArgs::from_arg_matches(sub)?,
            matches: sub.clone(),
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Invocation::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Subcommand for Invocation {
    fn augment_subcommands(cmd: Command) -> Command {
        cmd.subcommands(OPERATIONS.iter().map(command))
    }

    fn augment_subcommands_for_update(cmd: Command) -> Command {
        Invocation::augment_subcommands(cmd)
    }

    fn has_subcommand(name: &str) -> bool {
        Operation::find(name).is_some()
    }
}
