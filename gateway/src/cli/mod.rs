//! The `sprig` command line.
//!
//! Two families of commands share one binary:
//! - the gateway's own: `sprig run`, `sprig store check|backup|restore`, `sprig hash-password`,
//!   `sprig credentials` (the local operator's access key for the HTTP API), `sprig plugin check` (`admin`; its dry run of a plugin: `dry_run`), `sprig plugin new`
//!   (`plugin_new`); and `sprig plugin-host`, hidden from `--help`, which `sprig run` starts for each
//!   `[[recovery]]` route whose plugin runs in a process of its own;
//! - the operator's, shaped like the AWS CLI's `aws iot …` commands: `delete-job`, `create-job`, … Each
//!   sends one control request to a running gateway over MQTT (`client`) and prints the response as
//!   the AWS CLI would; `delete-job --wait` then waits until the job is gone (`wait`), and
//!   `sprig status` prints sprig's DescribeGateway as a screen for a person (`status`).
//!
//! How an operator command flows through the modules:
//!
//! ```text
//! argv ──clap──▶ args::Invocation ──input──▶ request JSON ──connect──▶ endpoint + credentials
//!                 (flags from the            (--cli-input-json,        (flags, env, config,
//!                  operations table)          merge, validation)        local operator file)
//!      ──client──▶ MQTT request/reply ──json──▶ 4-space JSON on stdout
//! ```
//!
//! `operations` is the single table every step reads, so a new command is one entry there.
//!
//! Exit codes follow the AWS CLI: 0 success; 252 usage or parameter error (clap's too, except `--help`
//! and `--version`); 254 the gateway answered with an error; 255 anything else (unreachable gateway,
//! refused credentials, timeout). `run`, `store …`, `credentials` and `plugin check` exit 1 on failure, as
//! daemons do.

mod admin;
mod args;
mod client;
mod connect;
mod dry_run;
mod input;
mod json;
mod operations;
mod plugin_new;
mod status;
mod wait;

use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};

use args::{Invocation, SkeletonKind};

/// sprig: an edge gateway with an embedded MQTT broker and an AWS IoT Jobs compatible jobs store.
#[derive(Debug, Parser)]
#[command(
    name = "sprig",
    version,
    propagate_version = true,
    arg_required_else_help = true,
    after_help = "Job commands talk to a running gateway; beside `sprig run` they need no flags."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (MQTT broker, jobs store, background deletions) until SIGINT or SIGTERM
    Run(admin::ConfigArgs),
    /// Check, back up or restore the jobs store (with the gateway stopped)
    #[command(subcommand)]
    Store(admin::StoreCommand),
    /// Print an argon2 hash of a password, for `password_hash` in [[auth.operators]] or [[auth.devices]]
    HashPassword(admin::HashPasswordArgs),
    /// Print the local operator's access key for the HTTP API, as AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY lines
    #[command(
        after_help = "The key of the local operator credential `sprig run` writes to \
                      {data_dir}/local-operator.json (all namespaces). For the AWS CLI or boto3 on this \
                      machine: `eval \"$(sprig credentials --export)\"`, or \
                      `env $(sprig credentials) aws iot list-jobs --endpoint-url http://127.0.0.1:8080 \
                      --region local`."
    )]
    Credentials(admin::CredentialsArgs),
    /// Check, dry-run and create recovery-handler plugins, or reset a route's plugin in the running gateway
    #[command(subcommand)]
    Plugin(admin::PluginCommand),
    /// Show the running gateway on one screen: uptime, connections, jobs, deletions, recoveries, store,
    /// uplink
    #[command(
        after_help = "Sends DescribeGateway to the gateway (its JSON: `sprig describe-gateway`). Needs an \
                      operator granted every namespace, as the local operator is."
    )]
    Status(status::StatusArgs),
    /// Serve one recovery-handler plugin to the gateway over stdin/stdout (started by `sprig run`)
    #[command(name = "plugin-host", hide = true)]
    PluginHost(admin::PluginHostArgs),
    #[command(flatten)]
    Operation(Box<Invocation>),
}

/// Why a command failed, and so which exit code it ends with.
#[derive(Debug)]
pub enum Failure {
    /// Bad flags or parameters (252).
    Usage(String),
    /// The gateway answered on `/rejected` (254).
    Service {
        operation: &'static str,
        code: String,
        message: String,
    },
    /// Anything else about reaching the gateway (255).
    Other(String),
    /// `run`, `store …` or `plugin check` failed (1).
    Fatal(String),
    /// The command already said why; exit with this code.
    Silent(u8),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 252,
            Failure::Service { .. } => 254,
            Failure::Other(_) => 255,
            Failure::Fatal(_) => 1,
            Failure::Silent(code) => *code,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Usage(text) | Failure::Other(text) | Failure::Fatal(text) => f.write_str(text),
            Failure::Service {
                operation,
                code,
                message,
            } => write!(
                f,
                "\nAn error occurred ({code}) when calling the {operation} operation: {message}"
            ),
            Failure::Silent(_) => Ok(()),
        }
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    ExitCode::from(run(std::env::args_os()))
}

/// Runs one command line (`args[0]` is the program name) and returns its exit code.
pub fn run<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => return clap_exit(&error),
    };
    match execute(&cli.command) {
        Ok(output) => {
            if let Some(text) = output {
                // A closed pipe (`sprig list-jobs | head`) is not worth a panic.
                let _ = writeln!(std::io::stdout().lock(), "{text}");
            }
            0
        }
        Err(failure) => {
            if !matches!(failure, Failure::Silent(_)) {
                eprintln!("{failure}");
            }
            failure.exit_code()
        }
    }
}

/// Prints clap's message (help and version on stdout) and maps it to an exit code.
fn clap_exit(error: &clap::Error) -> u8 {
    let _ = error.print();
    clap_exit_code(error.kind())
}

/// `--help` and `--version` succeed; every other clap error is a usage error.
fn clap_exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
        _ => 252,
    }
}

/// Runs a parsed command; `Ok(Some(text))` is what to print on stdout.
fn execute(command: &Command) -> Result<Option<String>, Failure> {
    match command {
        Command::Run(args) => admin::run(args),
        Command::Store(admin::StoreCommand::Check(args)) => admin::store_check(args),
        Command::Store(admin::StoreCommand::Backup(args)) => admin::store_backup(args),
        Command::Store(admin::StoreCommand::Restore(args)) => admin::store_restore(args),
        Command::HashPassword(args) => admin::hash_password(args),
        Command::Credentials(args) => admin::credentials(args),
        Command::Plugin(admin::PluginCommand::Check(args)) => admin::plugin_check(args),
        Command::Plugin(admin::PluginCommand::New(args)) => plugin_new::run(args),
        Command::Plugin(admin::PluginCommand::Reset(args)) => plugin_reset(args),
        Command::PluginHost(args) => admin::plugin_host(args),
        Command::Status(args) => status::run(args),
        Command::Operation(invocation) => operate(invocation),
    }
}

/// An operator command: a skeleton, or one request to the gateway.
fn operate(invocation: &Invocation) -> Result<Option<String>, Failure> {
    let op = invocation.operation;
    if invocation.skeleton == Some(SkeletonKind::Input) {
        return Ok(Some(json::input_skeleton(op)));
    }
    // As the AWS CLI does, `--generate-cli-skeleton output` validates the inputs first.
    let request = request(invocation)?;
    if invocation.skeleton == Some(SkeletonKind::Output) {
        return Ok(Some(json::output_skeleton(op)));
    }
    if invocation.wait {
        return delete_and_wait(op, request, &invocation.connection);
    }
    send(op, request, &invocation.connection)
}

/// `delete-job --wait`: the request, then the wait until the job is gone; prints nothing on stdout.
fn delete_and_wait(
    op: &'static operations::Operation,
    request: input::Request,
    connection: &args::ConnectionArgs,
) -> Result<Option<String>, Failure> {
    with_gateway(connection, |target, timeout| async move {
        wait::delete_and_wait(&target, op, request, timeout).await
    })?;
    Ok(None)
}

/// `sprig plugin reset ROUTE`: `sprig reset-plugin --route-name ROUTE`, said the way `plugin check` is.
fn plugin_reset(args: &admin::PluginResetArgs) -> Result<Option<String>, Failure> {
    let op = operations::Operation::find("reset-plugin").expect("reset-plugin is in the table");
    let mut request = input::Request::new();
    request.insert(
        "routeName".to_owned(),
        serde_json::Value::String(args.route.clone()),
    );
    send(op, request, &args.connection)
}

/// Sends one control request and returns what to print.
fn send(
    op: &'static operations::Operation,
    request: input::Request,
    connection: &args::ConnectionArgs,
) -> Result<Option<String>, Failure> {
    let response = call(op, request, connection)?;
    Ok(op.output.map(|_| json::response(op, &response)))
}

/// Sends one control request and returns the response.
fn call(
    op: &'static operations::Operation,
    request: input::Request,
    connection: &args::ConnectionArgs,
) -> Result<serde_json::Value, Failure> {
    with_gateway(connection, |target, timeout| async move {
        client::call(&target, op, request, timeout).await
    })
}

/// Runs `exchange` with the gateway `connection` names and its `--timeout-secs`, on a runtime of its own.
fn with_gateway<T, F, E>(connection: &args::ConnectionArgs, exchange: E) -> Result<T, Failure>
where
    E: FnOnce(connect::Target, Duration) -> F,
    F: std::future::Future<Output = Result<T, Failure>>,
{
    let target = connect::resolve(connection)?;
    let timeout = Duration::from_secs(connection.timeout_secs);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(format!("cannot start the async runtime: {e}")))?
        .block_on(exchange(target, timeout))
}

/// The request body: `--cli-input-json`, overridden by the flags, with every required parameter.
fn request(invocation: &Invocation) -> Result<input::Request, Failure> {
    let op = invocation.operation;
    let from_json = match &invocation.cli_input_json {
        Some(raw) => input::parse_cli_input_json(op, raw)?,
        None => input::Request::new(),
    };
    let request = input::merge(from_json, invocation.flag_values()?);
    input::check_required(op, &request)?;
    Ok(request)
}

#[cfg(test)]
mod tests;
