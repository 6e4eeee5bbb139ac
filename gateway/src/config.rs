//! Configuration: the TOML file an operator writes, parsed into typed settings.
//!
//! `config/gateway.toml` in the repository is compiled into the binary and is, byte for byte, the built-in
//! default: `sprig run` without `--config` parses it exactly as it would parse a file. Every section rejects
//! unknown keys (a typo must not silently fall back to a default), and `Config::validate` checks the rules
//! that serde cannot express, so a bad file is refused at start-up with the file, the key and the reason.
//!
//! The config is plain data at the bottom of the module graph: it names no other module of the gateway.
//! The checks that need one (password hashes and topic rules, which `auth` understands; the TLS keys and
//! files, which `broker::tls` reads) are run by [`crate::daemon::config_checks`] on the loaded config, with
//! the same error shape.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The default configuration, identical to `config/gateway.toml`.
pub const DEFAULT_TOML: &str = include_str!("../../config/gateway.toml");

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("invalid config {origin}: key `{key}`: {reason}")]
    Invalid {
        origin: String,
        key: String,
        reason: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub broker: BrokerConfig,
    pub jobs: JobsConfig,
    pub auth: AuthConfig,
    /// `[[recovery]]`: which plugin recovers which devices.
    #[serde(default)]
    pub recovery: Vec<RecoveryRoute>,
    /// `[uplink]`: the connection out to the fleet's MQTT broker; absent: no uplink.
    pub uplink: Option<UplinkConfig>,
    /// `[api]`: AWS IoT's HTTP API (the `aws iot` CLI, boto3); absent: on 127.0.0.1:8080.
    #[serde(default)]
    pub api: ApiConfig,
    /// `[metrics]`: Prometheus metrics and the health check; absent: on 127.0.0.1:9464.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Where this config was read from: the file's path as given, or "built-in defaults". Errors found
    /// after loading (a plugin refusing its route's config) point the operator there.
    #[serde(skip)]
    pub origin: String,
}

/// `[gateway]`: identity and where data lives.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub id: String,
    pub data_dir: PathBuf,
}

/// `[broker]`: the MQTT listeners and the embedded rumqttd router's sizing.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    pub listen: Vec<SocketAddr>,
    pub max_connections: usize,
    pub max_payload_size: usize,
    pub max_inflight_count: usize,
    pub connection_timeout_ms: u16,
    pub max_segment_size: usize,
    pub max_segment_count: usize,
    pub max_outgoing_packet_count: u64,
    /// A client whose socket takes nothing for this long while the broker writes to it is disconnected.
    #[serde(default = "default_write_stall_timeout_ms")]
    pub write_stall_timeout_ms: u64,
    /// Bytes that may wait to be written to one client; beyond them its QoS 0 messages are dropped.
    #[serde(default = "default_max_queued_bytes")]
    pub max_queued_bytes: usize,
    /// Publishes per second one connection may make (AWS IoT Core: 100); a faster client is slowed down.
    /// 0: no limit.
    #[serde(default = "default_max_publishes_per_second")]
    pub max_publishes_per_second: u32,
    /// Bytes (topics and payloads) per second one connection may publish (AWS IoT Core: 512 KiB); a
    /// faster client is slowed down. 0: no limit.
    #[serde(default = "default_max_publish_bytes_per_second")]
    pub max_publish_bytes_per_second: u32,
    /// Distinct filters the router may be given while the broker runs (it never frees one); new ones
    /// beyond are refused in the SUBACK.
    #[serde(default = "default_max_router_filters")]
    pub max_router_filters: usize,
    /// Subscriptions one connection may hold (AWS IoT Core: 50); more are refused in the SUBACK.
    #[serde(default = "default_max_subscriptions")]
    pub max_subscriptions_per_connection: usize,
    /// Of `max_connections`, how many only operators may take (devices are refused beyond the rest).
    #[serde(default = "default_reserved_operator_connections")]
    pub reserved_operator_connections: usize,
    /// Seconds a persistent session outlives its client's disconnection.
    #[serde(default = "default_session_expiry_s")]
    pub persistent_session_expiry_s: u32,
    /// Messages a disconnected persistent session may hold.
    #[serde(default = "default_session_queued_messages")]
    pub persistent_session_max_queued_messages: usize,
    /// Bytes (payloads and topics) a disconnected persistent session may hold.
    #[serde(default = "default_session_queued_bytes")]
    pub persistent_session_max_queued_bytes: usize,
    /// MQTT over TLS listeners (default: none). Need `tls_cert` and `tls_key`.
    #[serde(default)]
    pub tls_listen: Vec<SocketAddr>,
    /// The server's certificate chain (PEM, leaf first). Relative: to the config file's directory.
    pub tls_cert: Option<PathBuf>,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that sign device certificates. When set, TLS clients are asked for a
    /// certificate; one that verifies authenticates the device whose thing name is its subject CN.
    pub tls_client_ca: Option<PathBuf>,
}

/// `[api]`: the HTTP listeners of AWS IoT's REST API (the jobs operations), for the AWS CLI and SDKs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Plain HTTP listeners (default: loopback port 8080, like the MQTT default); empty: none.
    #[serde(default = "default_api_listen")]
    pub listen: Vec<SocketAddr>,
    /// HTTPS listeners (default: none). Need `tls_cert` and `tls_key`.
    #[serde(default)]
    pub tls_listen: Vec<SocketAddr>,
    /// The server's certificate chain (PEM, leaf first). Relative: to the config file's directory.
    pub tls_cert: Option<PathBuf>,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig {
            listen: default_api_listen(),
            tls_listen: Vec::new(),
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// `[metrics]`: `GET /metrics` (Prometheus' text format) and `GET /healthz` over plain HTTP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Listeners (default: loopback port 9464, Prometheus' usual exporter port); empty: none.
    #[serde(default = "default_metrics_listen")]
    pub listen: Vec<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> MetricsConfig {
        MetricsConfig {
            listen: default_metrics_listen(),
        }
    }
}

fn default_metrics_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([127, 0, 0, 1], 9464))]
}

fn default_api_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([127, 0, 0, 1], 8080))]
}

fn default_write_stall_timeout_ms() -> u64 {
    30_000
}

fn default_max_queued_bytes() -> usize {
    1 << 20
}

fn default_max_publishes_per_second() -> u32 {
    100
}

fn default_max_publish_bytes_per_second() -> u32 {
    512 * 1024
}

fn default_max_router_filters() -> usize {
    10_000
}

fn default_max_subscriptions() -> usize {
    50
}

fn default_reserved_operator_connections() -> usize {
    4
}

fn default_session_expiry_s() -> u32 {
    3600
}

fn default_session_queued_messages() -> usize {
    100
}

fn default_session_queued_bytes() -> usize {
    256 * 1024
}

/// The engine's own default (`jobs::engine::CREATION_BATCH`, which a daemon test holds this to): the
/// config is plain data and names no module of the gateway.
pub const DEFAULT_CREATION_BATCH_SIZE: usize = 500;

fn default_creation_batch_size() -> usize {
    DEFAULT_CREATION_BATCH_SIZE
}

/// The default of `jobs.device_write_window_ms` (configs older than the key have it).
pub const DEFAULT_DEVICE_WRITE_WINDOW_MS: u64 = 50;

fn default_device_write_window_ms() -> u64 {
    DEFAULT_DEVICE_WRITE_WINDOW_MS
}

/// `[jobs]`: limits of the jobs engine.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    pub max_concurrent_deletions: usize,
    pub deletion_batch_size: usize,
    /// Executions CreateJob writes per store transaction (optional: configs older than the key have it).
    #[serde(default = "default_creation_batch_size")]
    pub creation_batch_size: usize,
    /// How long a device's execution write waits for others to share its store transaction with.
    #[serde(default = "default_device_write_window_ms")]
    pub device_write_window_ms: u64,
    pub requests_per_second: u32,
    pub request_burst: u32,
    pub store_cache_mb: u64,
    #[serde(default)]
    pub namespaces: BTreeMap<String, NamespaceLimits>,
}

/// `[jobs.namespaces.NAME]`: limits that apply to one namespace only.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceLimits {
    pub max_concurrent_deletions: Option<usize>,
}

/// `[auth]`: who may connect and what operators may touch.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub anonymous_devices_on_loopback: bool,
    #[serde(default)]
    pub operators: Vec<OperatorConfig>,
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
    /// `[[auth.topic_rules]]`: topics granted beyond the built-in ones (default: none).
    #[serde(default)]
    pub topic_rules: Vec<TopicRuleConfig>,
}

/// `[[auth.topic_rules]]`: publish and subscribe patterns granted to the devices whose thing name matches
/// one of `things` and to the operators named in `operators`. Patterns are MQTT filters whose levels may be
/// `${thing}` or `${client_id}` (see [`crate::auth::rules`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRuleConfig {
    /// Thing-name globs of the devices the rule applies to; absent: every device; `[]`: none.
    #[serde(default = "every_thing")]
    pub things: Vec<String>,
    /// Usernames of the operators the rule also applies to (the local operator is `sprig-local`).
    #[serde(default)]
    pub operators: Vec<String>,
    /// Topics these clients may publish to: a pattern matching the topic allows it.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Filters these clients may subscribe to: a pattern containing the whole filter allows it.
    #[serde(default)]
    pub subscribe: Vec<String>,
}

fn every_thing() -> Vec<String> {
    vec![any_thing()]
}

/// `[[auth.operators]]`: a client allowed to send control requests.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    pub username: String,
    pub password_hash: String,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub standard_jobs: bool,
    /// The operator's AWS-style access key for the HTTP API (SigV4), with `secret_access_key`: both or
    /// neither. `[A-Z0-9]{16,128}`, unique among the operators.
    pub access_key_id: Option<String>,
    /// The secret of `access_key_id`, kept as it is: SigV4 signs with the secret itself (an HMAC key), so
    /// it cannot be stored hashed as a password is. At least 16 characters.
    pub secret_access_key: Option<String>,
}

/// The shortest `secret_access_key` accepted (AWS's are 40 characters).
pub const MIN_SECRET_ACCESS_KEY_LEN: usize = 16;

/// True when `id` has the shape of an AWS access key id: 16 to 128 capital letters and digits.
pub fn is_access_key_id(id: &str) -> bool {
    (16..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// `[[recovery]]`: devices whose IN_PROGRESS execution is force-deleted or force-canceled are recovered by
/// this plugin. The first route whose `things` glob and `namespace` match a device is used.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryRoute {
    /// The route's name, as `sprig list-plugins`, `sprig plugin reset` and `plugin check --route` name it
    /// and logs report it: `[a-zA-Z0-9_-]+`, unique. Default: `recovery-N`, N its position (from 1).
    #[serde(default)]
    pub name: String,
    /// A glob on the thing name (`*` any run of characters, `?` one character, `[a-z]` a class).
    #[serde(default = "any_thing")]
    pub things: String,
    /// Only jobs of this namespace; absent: jobs of any namespace and standard jobs.
    pub namespace: Option<String>,
    /// The plugin's shared library (`.so`). A relative path is relative to the config file's directory.
    pub plugin: PathBuf,
    /// Where the plugin runs: in a host process of its own (the default), or in the gateway's process.
    #[serde(default)]
    pub isolation: Isolation,
    /// Time budget of one handler call, in milliseconds; an overrun kills the plugin's host process
    /// (in-process: quarantines the plugin instance).
    #[serde(default = "default_budget_ms")]
    pub budget_ms: u64,
    /// Handler failures (panic, error, garbage answer, overrun, crash) before the recovery is FAILED.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    /// Wait before retrying after a failure, in milliseconds; doubled at each further failure.
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// Attempts of any kind (retries the handler asked for included) before the recovery is FAILED.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// A topic the device publishes to acknowledge (`{thing}` is replaced), under `$aws/things/{thing}/`.
    /// A message there makes the next attempt run at once, with `acknowledged: true` and the message's
    /// payload as `acknowledgement` (kept in the store until that attempt).
    pub ack_topic: Option<String>,
    /// Handed to the plugin as its config (as JSON).
    #[serde(default)]
    pub config: toml::Table,
}

/// `[[recovery]] isolation`: where a route's plugin runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// `"process"`: a `sprig plugin-host` child process per route; a crash or an overrun ends only the
    /// host, which is restarted.
    #[default]
    Process,
    /// `"in-process"`: the library is loaded into the gateway and called on a thread of its own; cheaper
    /// per call, but a crash in the plugin is the gateway's crash.
    InProcess,
}

/// An operator's `access_key_id` and `secret_access_key`: both or neither, well-formed, the key id not
/// one of the `earlier` operators'. The error names the field at fault.
fn validate_access_key(
    earlier: &[OperatorConfig],
    op: &OperatorConfig,
) -> Result<(), (&'static str, String)> {
    let (id, secret) = match (&op.access_key_id, &op.secret_access_key) {
        (None, None) => return Ok(()),
        (Some(_), None) => {
            return Err((
                "secret_access_key",
                "missing: an access_key_id needs its secret_access_key (or remove both)".into(),
            ))
        }
        (None, Some(_)) => {
            return Err((
                "access_key_id",
                "missing: a secret_access_key needs its access_key_id (or remove both)".into(),
            ))
        }
        (Some(id), Some(secret)) => (id, secret),
    };
    if !is_access_key_id(id) {
        return Err((
            "access_key_id",
            format!("`{id}` is not an access key id: 16 to 128 capital letters and digits ([A-Z0-9]{{16,128}}), as AWS's are"),
        ));
    }
    if let Some(j) = earlier
        .iter()
        .position(|other| other.access_key_id.as_deref() == Some(id))
    {
        return Err((
            "access_key_id",
            format!(
                "`{id}` is the access key of auth.operators[{j}] too: each operator needs its own"
            ),
        ));
    }
    if secret.chars().count() < MIN_SECRET_ACCESS_KEY_LEN {
        return Err((
            "secret_access_key",
            format!("must be at least {MIN_SECRET_ACCESS_KEY_LEN} characters (AWS's are 40)"),
        ));
    }
    Ok(())
}

/// `[[recovery]]`: the rules serde cannot check, route by route (named first: [`name_unnamed_routes`]).
fn validate_routes(routes: &[RecoveryRoute]) -> Result<(), (String, String)> {
    fn fail<T>(key: &str, reason: impl Into<String>) -> Result<T, (String, String)> {
        Err((key.to_owned(), reason.into()))
    }
    for (i, route) in routes.iter().enumerate() {
        let key = |field: &str| format!("recovery[{i}].{field}");
        if !is_namespace_id(&route.name) {
            return fail(&key("name"), "a route name matches [a-zA-Z0-9_-]+");
        }
        if routes[..i].iter().any(|r| r.name == route.name) {
            return fail(
                &key("name"),
                format!("{:?} names an earlier route too", route.name),
            );
        }
        if let Err(e) = glob::Pattern::new(&route.things) {
            return fail(&key("things"), format!("not a glob: {e}"));
        }
        if let Some(ns) = &route.namespace {
            if !is_namespace_id(ns) {
                return fail(&key("namespace"), "a namespace id matches [a-zA-Z0-9_-]+");
            }
        }
        if route.plugin.as_os_str().is_empty() {
            return fail(&key("plugin"), "must name the plugin's shared library");
        }
        if route.budget_ms == 0 || route.max_failures == 0 || route.max_attempts == 0 {
            return fail(
                &key("budget_ms"),
                "budget_ms, max_failures and max_attempts must be at least 1",
            );
        }
        if let Some(topic) = &route.ack_topic {
            if !topic.starts_with("$aws/things/{thing}/") || topic.contains(['+', '#']) {
                return fail(
                    &key("ack_topic"),
                    "must be a topic under $aws/things/{thing}/ without wildcards",
                );
            }
        }
    }
    Ok(())
}

/// Gives each `[[recovery]]` route without a `name` its default, `recovery-N` (N from 1).
fn name_unnamed_routes(routes: &mut [RecoveryRoute]) {
    for (i, route) in routes.iter_mut().enumerate() {
        if route.name.is_empty() {
            route.name = format!("recovery-{}", i + 1);
        }
    }
}

/// The part of a config file [`Config::load_routes`] reads; other sections are not looked at.
#[derive(Deserialize)]
struct RoutesOnly {
    #[serde(default)]
    recovery: Vec<RecoveryRoute>,
}

impl RecoveryRoute {
    /// Where this route is written, for messages about it: `gateway.toml: [[recovery]] "pumps"
    /// (recovery[1])`, from the config's `origin` and the route's position (from 0, as config errors
    /// count).
    pub fn location(&self, origin: &str, index: usize) -> String {
        format!("{origin}: [[recovery]] {:?} (recovery[{index}])", self.name)
    }
}

fn any_thing() -> String {
    "*".into()
}
fn default_budget_ms() -> u64 {
    2000
}
fn default_max_failures() -> u32 {
    3
}
fn default_retry_backoff_ms() -> u64 {
    1000
}
fn default_max_attempts() -> u32 {
    20
}

/// `[uplink]`: the gateway connects out to the fleet's MQTT broker, takes control requests from it and
/// sends its events there. Keys whose default depends on `[gateway] id` are `None` here; the uplink's
/// settings fill them in ([`UplinkConfig::client_id_or`], [`UplinkConfig::prefix_or`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// `mqtt://host:port` or `mqtts://host:port` (default ports 1883 and 8883).
    pub url: String,
    /// The client id on the fleet broker; default: `gateway.id`.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// CA certificates (PEM) the fleet broker's certificate must chain to (mqtts); default: the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// This gateway's client certificate (PEM), for mutual TLS (AWS IoT Core requires one).
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// ALPN protocols offered in the TLS handshake (`["x-amzn-mqtt-ca"]` for AWS IoT Core on port 443).
    #[serde(default)]
    pub alpn: Vec<String>,
    /// This gateway's topics on the fleet broker start with it; default: `sprig/{gateway.id}`.
    pub prefix: Option<String>,
    /// The namespaces the fleet may act on through the control API, as an operator's (`["*"]`: all).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Whether the fleet may act on jobs without a namespace.
    #[serde(default)]
    pub standard_jobs: bool,
    /// The bound of the on-disk spool of what goes up, in MiB.
    #[serde(default = "default_spool_mb")]
    pub spool_mb: u64,
    /// The longest wait between two connection attempts, in seconds (the wait doubles from 1 s).
    #[serde(default = "default_reconnect_max_s")]
    pub reconnect_max_s: u64,
    /// MQTT keep-alive with the fleet broker, in seconds.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// `[[uplink.topics]]`: topics bridged between the local broker and the fleet's.
    #[serde(default)]
    pub topics: Vec<UplinkTopic>,
}

/// `[[uplink.topics]]`: one bridged topic filter, in the shape of mosquitto's bridge `topic` lines.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkTopic {
    /// An MQTT topic filter, matched after `local_prefix` (out) or `remote_prefix` (in) is taken off.
    pub pattern: String,
    /// `out`: local to fleet; `in`: fleet to local; `both`.
    pub direction: Direction,
    #[serde(default = "default_topic_qos")]
    pub qos: u8,
    #[serde(default)]
    pub local_prefix: String,
    #[serde(default)]
    pub remote_prefix: String,
}

/// `[[uplink.topics]] direction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Out,
    In,
    Both,
}

/// The uplink's URL, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl UplinkConfig {
    /// The client id on the fleet broker: the configured one, else the gateway's id.
    pub fn client_id_or(&self, gateway_id: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| gateway_id.to_owned())
    }

    /// The topic prefix on the fleet broker: the configured one, else `sprig/{gateway_id}`.
    pub fn prefix_or(&self, gateway_id: &str) -> String {
        self.prefix
            .clone()
            .unwrap_or_else(|| format!("sprig/{gateway_id}"))
    }

    /// `url` taken apart: scheme (`mqtt` or `mqtts`), host and port (default 1883, or 8883 with TLS).
    pub fn parsed_url(&self) -> Result<UplinkUrl, String> {
        let (tls, rest) = if let Some(rest) = self.url.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = self.url.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err(format!(
                "`{}` is not an mqtt://host:port or mqtts://host:port URL",
                self.url
            ));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = match rest.rsplit_once(':') {
            // An IPv6 literal is bracketed: [::1]:8883.
            Some((host, port)) if !port.contains(']') => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("`{port}` in `{}` is not a port", self.url))?;
                (host, port)
            }
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['/', '@', '?', '#']) {
            return Err(format!("`{}` names no host (mqtt://host:port)", self.url));
        }
        Ok(UplinkUrl {
            tls,
            host: host.to_owned(),
            port,
        })
    }

    /// The rules serde cannot check.
    fn validate(&self, gateway_id: &str) -> Result<(), (String, String)> {
        fn fail<T>(key: &str, reason: impl Into<String>) -> Result<T, (String, String)> {
            Err((format!("uplink.{key}"), reason.into()))
        }
        let url = match self.parsed_url() {
            Ok(url) => url,
            Err(reason) => return fail("url", reason),
        };
        let tls_files = [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ];
        if !url.tls {
            if let Some((key, _)) = tls_files.iter().find(|(_, file)| file.is_some()) {
                return fail(key, "is for mqtts:// URLs; this url is mqtt:// (no TLS)");
            }
            if !self.alpn.is_empty() {
                return fail("alpn", "is for mqtts:// URLs; this url is mqtt:// (no TLS)");
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return fail(
                "cert_file",
                "cert_file and key_file go together (a client certificate and its key)",
            );
        }
        if self.password.is_some() && self.username.is_none() {
            return fail("password", "needs a username");
        }
        let client_id = self.client_id_or(gateway_id);
        if client_id.is_empty() || client_id.len() > 128 {
            return fail("client_id", "must be 1 to 128 characters");
        }
        let prefix = self.prefix_or(gateway_id);
        if prefix.is_empty()
            || prefix.starts_with('/')
            || prefix.ends_with('/')
            || prefix.contains(['+', '#', '\0'])
        {
            return fail(
                "prefix",
                format!(
                    "`{prefix}` must be a topic without wildcards, not starting or ending with /"
                ),
            );
        }
        for ns in &self.namespaces {
            if ns != "*" && !is_namespace_id(ns) {
                return fail(
                    "namespaces",
                    format!("`{ns}` is neither \"*\" nor a namespace id"),
                );
            }
        }
        if self.spool_mb == 0 {
            return fail("spool_mb", "must be at least 1");
        }
        if !(1..=3600).contains(&self.reconnect_max_s) {
            return fail("reconnect_max_s", "must be between 1 and 3600 seconds");
        }
        if !(5..=1200).contains(&self.keep_alive_s) {
            return fail("keep_alive_s", "must be between 5 and 1200 seconds");
        }
        for (i, topic) in self.topics.iter().enumerate() {
            let key = |field: &str| format!("topics[{i}].{field}");
            if topic.pattern.is_empty() || topic.pattern.starts_with('$') {
                return fail(
                    &key("pattern"),
                    "must be a topic filter not starting with $ (the $ topics are sprig's own)",
                );
            }
            if crate::topic_filter::check_filter(&topic.pattern).is_err() {
                return fail(&key("pattern"), "must be an MQTT topic filter");
            }
            if topic.qos > 1 {
                return fail(&key("qos"), "must be 0 or 1");
            }
            for (field, prefix) in [
                ("local_prefix", &topic.local_prefix),
                ("remote_prefix", &topic.remote_prefix),
            ] {
                if prefix.contains(['+', '#', '\0']) || prefix.starts_with('$') {
                    return fail(
                        &key(field),
                        "must be the start of a topic: no wildcards, not starting with $",
                    );
                }
            }
        }
        Ok(())
    }
}

fn default_spool_mb() -> u64 {
    64
}
fn default_reconnect_max_s() -> u64 {
    60
}
fn default_keep_alive_s() -> u64 {
    30
}
fn default_topic_qos() -> u8 {
    1
}

/// `[[auth.devices]]`: a device that authenticates with a password.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    pub thing_name: String,
    pub password_hash: String,
}

impl Default for Config {
    fn default() -> Self {
        Config::parse(DEFAULT_TOML, "built-in defaults").expect("config/gateway.toml is valid")
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse_in(&text, &path.display().to_string(), Some(base))
    }

    /// Parses and validates configuration text; `origin` names it in errors (a path, or "built-in defaults").
    /// Relative file paths in it stay relative to the working directory.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Config::parse_in(text, origin, None)
    }

    /// Only the `[[recovery]]` routes of the file at `path`, named, with relative plugin paths resolved and
    /// checked as [`Config::load`] does; the file's other sections are not read. What `sprig plugin check
    /// --config` needs, from a whole gateway config or from a file holding only `[[recovery]]` entries (the
    /// sample that `sprig plugin new` writes).
    pub fn load_routes(path: &Path) -> Result<Vec<RecoveryRoute>, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let RoutesOnly { mut recovery } =
            toml::from_str(&text).map_err(|e| ConfigError::Parse {
                origin: origin.clone(),
                message: e.to_string(),
            })?;
        name_unnamed_routes(&mut recovery);
        let base = path.parent().unwrap_or(Path::new("."));
        for route in &mut recovery {
            if route.plugin.is_relative() {
                route.plugin = base.join(&route.plugin);
            }
        }
        validate_routes(&recovery).map_err(|(key, reason)| ConfigError::Invalid {
            origin,
            key,
            reason,
        })?;
        Ok(recovery)
    }

    /// [`Config::parse`], with relative file paths (plugins, TLS files) taken relative to `base`: files are
    /// resolved before validation, which reads the TLS files.
    fn parse_in(text: &str, origin: &str, base: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        name_unnamed_routes(&mut config.recovery);
        config.origin = origin.to_owned();
        if let Some(base) = base {
            let resolve = |path: &mut PathBuf| {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            };
            for route in &mut config.recovery {
                resolve(&mut route.plugin);
            }
            if let Some(uplink) = &mut config.uplink {
                let files = [
                    &mut uplink.ca_file,
                    &mut uplink.cert_file,
                    &mut uplink.key_file,
                ];
                for path in files.into_iter().flatten() {
                    resolve(path);
                }
            }
            let (broker, api) = (&mut config.broker, &mut config.api);
            let tls_files = [
                &mut broker.tls_cert,
                &mut broker.tls_key,
                &mut broker.tls_client_ca,
                &mut api.tls_cert,
                &mut api.tls_key,
            ];
            for path in tls_files.into_iter().flatten() {
                resolve(path);
            }
        }
        config
            .validate()
            .map_err(|(key, reason)| ConfigError::Invalid {
                origin: origin.to_owned(),
                key,
                reason,
            })?;
        Ok(config)
    }

    /// Checks the rules serde cannot that need no other module: non-empty lists, sane bounds, well-formed
    /// names.
    fn validate(&self) -> Result<(), (String, String)> {
        fn fail<T>(key: &str, reason: impl Into<String>) -> Result<T, (String, String)> {
            Err((key.to_owned(), reason.into()))
        }
        if self.gateway.id.is_empty() {
            return fail("gateway.id", "must not be empty");
        }
        if self.broker.listen.is_empty() {
            return fail("broker.listen", "needs at least one address");
        }
        if self.broker.max_connections == 0 {
            return fail("broker.max_connections", "must be at least 1");
        }
        if self.broker.write_stall_timeout_ms < 100 {
            return fail("broker.write_stall_timeout_ms", "must be at least 100 ms");
        }
        if self.broker.max_queued_bytes < 4096 {
            return fail("broker.max_queued_bytes", "must be at least 4096 bytes");
        }
        if self.broker.max_router_filters == 0 {
            return fail("broker.max_router_filters", "must be at least 1");
        }
        if self.broker.max_subscriptions_per_connection == 0 {
            return fail(
                "broker.max_subscriptions_per_connection",
                "must be at least 1 (devices subscribe to their job notifications)",
            );
        }
        if self.broker.reserved_operator_connections >= self.broker.max_connections {
            return fail(
                "broker.reserved_operator_connections",
                "must be less than broker.max_connections (devices need some)",
            );
        }
        if self.broker.max_payload_size < 1024 {
            return fail("broker.max_payload_size", "must be at least 1024 bytes");
        }
        if self.broker.max_segment_size < self.broker.max_payload_size.min(1 << 16) {
            return fail(
                "broker.max_segment_size",
                "must hold at least one 64 KiB message",
            );
        }
        if self.broker.max_segment_count == 0 {
            return fail("broker.max_segment_count", "must be at least 1");
        }
        if !self.api.tls_listen.is_empty() {
            for (key, file) in [
                ("api.tls_cert", &self.api.tls_cert),
                ("api.tls_key", &self.api.tls_key),
            ] {
                if file.is_none() {
                    return fail(key, "required when api.tls_listen is set");
                }
            }
        }
        if self.jobs.max_concurrent_deletions == 0 {
            return fail("jobs.max_concurrent_deletions", "must be at least 1");
        }
        if !(1..=10_000).contains(&self.jobs.deletion_batch_size) {
            return fail("jobs.deletion_batch_size", "must be between 1 and 10000");
        }
        if !(1..=10_000).contains(&self.jobs.creation_batch_size) {
            return fail("jobs.creation_batch_size", "must be between 1 and 10000");
        }
        if self.jobs.device_write_window_ms > 1000 {
            return fail("jobs.device_write_window_ms", "must be at most 1000");
        }
        if self.jobs.requests_per_second == 0 {
            return fail("jobs.requests_per_second", "must be at least 1");
        }
        if self.jobs.request_burst == 0 {
            return fail("jobs.request_burst", "must be at least 1");
        }
        if self.jobs.store_cache_mb == 0 {
            return fail("jobs.store_cache_mb", "must be at least 1");
        }
        for (name, limits) in &self.jobs.namespaces {
            if !is_namespace_id(name) {
                return fail(
                    &format!("jobs.namespaces.{name}"),
                    "a namespace id matches [a-zA-Z0-9_-]+",
                );
            }
            if limits.max_concurrent_deletions == Some(0) {
                return fail(
                    &format!("jobs.namespaces.{name}.max_concurrent_deletions"),
                    "must be at least 1",
                );
            }
        }
        for (i, op) in self.auth.operators.iter().enumerate() {
            let key = |field: &str| format!("auth.operators[{i}].{field}");
            if op.username.is_empty() {
                return fail(&key("username"), "must not be empty");
            }
            for ns in &op.namespaces {
                if ns != "*" && !is_namespace_id(ns) {
                    return fail(
                        &key("namespaces"),
                        format!("`{ns}` is neither \"*\" nor a namespace id"),
                    );
                }
            }
            validate_access_key(&self.auth.operators[..i], op)
                .map_err(|(field, reason)| (key(field), reason))?;
        }
        for (i, dev) in self.auth.devices.iter().enumerate() {
            if dev.thing_name.is_empty() {
                return fail(
                    &format!("auth.devices[{i}].thing_name"),
                    "must not be empty",
                );
            }
        }
        validate_routes(&self.recovery)?;
        match &self.uplink {
            Some(uplink) => uplink.validate(&self.gateway.id),
            None => Ok(()),
        }
    }
}

/// True when `s` is a valid namespace id: `[a-zA-Z0-9_-]+` (AWS IoT's pattern).
pub fn is_namespace_id(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_file_parses_and_matches_the_documented_defaults() {
        let config = Config::default();
        assert_eq!(
            config.broker.listen,
            vec!["127.0.0.1:1883".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(config.gateway.data_dir, PathBuf::from("./sprig-data"));
        assert_eq!(config.jobs.max_concurrent_deletions, 10);
        assert!(config.auth.anonymous_devices_on_loopback);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let text = DEFAULT_TOML.replace("[jobs]\n", "[jobs]\nmax_deletions = 3\n");
        let err = Config::parse(&text, "test.toml").unwrap_err().to_string();
        assert!(
            err.contains("test.toml") && err.contains("max_deletions"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_name_the_key_and_the_rule() {
        let text = DEFAULT_TOML.replace(
            "max_concurrent_deletions = 10",
            "max_concurrent_deletions = 0",
        );
        let err = Config::parse(&text, "test.toml").unwrap_err().to_string();
        assert!(
            err.contains("jobs.max_concurrent_deletions") && err.contains("at least 1"),
            "{err}"
        );
    }

    /// The default config with `rules` (TOML) appended.
    fn with_rules(rules: &str) -> Result<Config, String> {
        Config::parse(&format!("{DEFAULT_TOML}\n{rules}"), "test.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn topic_rules_default_to_none_and_to_every_thing() {
        assert!(Config::default().auth.topic_rules.is_empty());
        let config = with_rules(
            "[[auth.topic_rules]]\npublish = [\"dt/${thing}/#\"]\n\
             [[auth.topic_rules]]\nthings = []\noperators = [\"sprig-local\"]\nsubscribe = [\"#\"]\n",
        )
        .unwrap();
        let rules = &config.auth.topic_rules;
        assert_eq!(rules[0].things, ["*"]);
        assert!(rules[0].operators.is_empty() && rules[0].subscribe.is_empty());
        assert!(rules[1].things.is_empty(), "an explicit [] means no device");
        assert_eq!(rules[1].operators, ["sprig-local"]);
    }

    /// An `[[auth.operators]]` entry with `extra` (TOML lines) added.
    fn operator(extra: &str) -> String {
        format!(
            "[[auth.operators]]\nusername = \"ops\"\npassword_hash = \"$argon2id$v=19$m=19456,t=2,p=1$x$y\"\n{extra}\n"
        )
    }

    #[test]
    fn operators_may_have_an_access_key_and_its_secret() {
        let config = with_rules(&operator(
            "access_key_id = \"AKIAIOSFODNN7EXAMPLE\"\n\
             secret_access_key = \"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\"",
        ))
        .unwrap();
        let op = &config.auth.operators[0];
        assert_eq!(op.access_key_id.as_deref(), Some("AKIAIOSFODNN7EXAMPLE"));
        assert_eq!(
            op.secret_access_key.as_deref(),
            Some("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
        );
        let config = with_rules(&operator("")).unwrap();
        assert_eq!(config.auth.operators[0].access_key_id, None);
    }

    #[test]
    fn bad_access_keys_name_the_key_at_fault() {
        let secret = "secret_access_key = \"0123456789abcdef\"";
        let cases = [
            (
                "access_key_id = \"AKIAIOSFODNN7EXAMPLE\"".to_owned(),
                "auth.operators[0].secret_access_key",
                "missing",
            ),
            (
                secret.to_owned(),
                "auth.operators[0].access_key_id",
                "missing",
            ),
            (
                format!("access_key_id = \"akiaiosfodnn7example\"\n{secret}"),
                "auth.operators[0].access_key_id",
                "[A-Z0-9]{16,128}",
            ),
            (
                format!("access_key_id = \"AKIA0123\"\n{secret}"),
                "auth.operators[0].access_key_id",
                "[A-Z0-9]{16,128}",
            ),
            (
                "access_key_id = \"AKIAIOSFODNN7EXAMPLE\"\nsecret_access_key = \"short\""
                    .to_owned(),
                "auth.operators[0].secret_access_key",
                "at least 16",
            ),
        ];
        for (lines, key, reason) in cases {
            let err = with_rules(&operator(&lines)).unwrap_err();
            assert!(
                err.contains(&format!("key `{key}`")) && err.contains(reason),
                "{lines}: {err}"
            );
        }
        let twice = format!(
            "{}{}",
            operator(&format!(
                "access_key_id = \"AKIAIOSFODNN7EXAMPLE\"\n{secret}"
            )),
            operator(&format!(
                "access_key_id = \"AKIAIOSFODNN7EXAMPLE\"\n{secret}"
            )),
        );
        let err = with_rules(&twice).unwrap_err();
        assert!(
            err.contains("key `auth.operators[1].access_key_id`")
                && err.contains("auth.operators[0] too"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_in_a_topic_rule_are_refused() {
        let err = with_rules("[[auth.topic_rules]]\ntopics = [\"a\"]").unwrap_err();
        assert!(err.contains("topics"), "{err}");
    }

    #[test]
    fn recovery_routes_are_named_by_position_unless_named_and_names_are_unique() {
        let config = with_rules(
            "[[recovery]]\nplugin = \"a.so\"\n\
             [[recovery]]\nplugin = \"b.so\"\nname = \"pumps\"\n\
             [[recovery]]\nplugin = \"c.so\"\n",
        )
        .unwrap();
        let names: Vec<&str> = config.recovery.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["recovery-1", "pumps", "recovery-3"]);
        let error = with_rules(
            "[[recovery]]\nplugin = \"a.so\"\nname = \"x\"\n[[recovery]]\nplugin = \"b.so\"\nname = \"x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("recovery[1].name") && error.contains("earlier route"),
            "{error}"
        );
        let error = with_rules("[[recovery]]\nplugin = \"a.so\"\nname = \"a b\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("recovery[0].name"), "{error}");
    }

    #[test]
    fn recovery_routes_run_their_plugin_in_a_host_process_unless_told_otherwise() {
        let config = with_rules(
            "[[recovery]]\nplugin = \"a.so\"\n\
             [[recovery]]\nplugin = \"b.so\"\nisolation = \"process\"\n\
             [[recovery]]\nplugin = \"c.so\"\nisolation = \"in-process\"\n",
        )
        .unwrap();
        let isolation: Vec<Isolation> = config.recovery.iter().map(|r| r.isolation).collect();
        assert_eq!(
            isolation,
            [Isolation::Process, Isolation::Process, Isolation::InProcess]
        );
        let err =
            with_rules("[[recovery]]\nplugin = \"a.so\"\nisolation = \"thread\"\n").unwrap_err();
        assert!(
            err.contains("isolation") && err.contains("in-process") && err.contains("thread"),
            "{err}"
        );
    }

    #[test]
    fn the_http_api_listens_on_loopback_8080_by_default_and_tls_needs_its_files() {
        let config = Config::default();
        assert_eq!(config.api.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert!(config.api.tls_listen.is_empty());
        let api = |lines: &str| {
            let text = DEFAULT_TOML.replace("[api]\n", &format!("[api]\n{lines}\n"));
            Config::parse(&text, "test.toml").map_err(|e| e.to_string())
        };
        let err = api("tls_listen = [\"127.0.0.1:8443\"]").unwrap_err();
        assert!(err.contains("api.tls_cert"), "{err}");
        let off = DEFAULT_TOML.replace("listen = [\"127.0.0.1:8080\"]", "listen = []");
        assert!(Config::parse(&off, "t").unwrap().api.listen.is_empty());
        // Without an [api] section: the default listener.
        let start = DEFAULT_TOML.find("[api]\n").unwrap();
        let end = start + DEFAULT_TOML[start..].find("\n\n").unwrap();
        let without = format!("{}{}", &DEFAULT_TOML[..start], &DEFAULT_TOML[end..]);
        assert_eq!(
            Config::parse(&without, "t").unwrap().api,
            ApiConfig::default()
        );
    }

    #[test]
    fn no_uplink_by_default_and_its_defaults_follow_the_gateway_id() {
        assert_eq!(Config::default().uplink, None);
        let config = with_rules("[uplink]\nurl = \"mqtt://fleet.example.com\"\n").unwrap();
        let uplink = config.uplink.unwrap();
        assert_eq!(uplink.client_id_or("site-7"), "site-7");
        assert_eq!(uplink.prefix_or("site-7"), "sprig/site-7");
        assert_eq!((uplink.spool_mb, uplink.reconnect_max_s), (64, 60));
        assert!(uplink.namespaces.is_empty() && !uplink.standard_jobs);
        let url = uplink.parsed_url().unwrap();
        assert_eq!(
            (url.tls, url.host.as_str(), url.port),
            (false, "fleet.example.com", 1883)
        );
    }

    #[test]
    fn uplink_urls_are_mqtt_or_mqtts_with_a_host_and_port() {
        let url = |text: &str| {
            with_rules(&format!("[uplink]\nurl = \"{text}\"\n"))
                .map(|c| c.uplink.unwrap().parsed_url().unwrap())
        };
        let tls = url("mqtts://a.iot.eu-west-1.amazonaws.com:443").unwrap();
        assert_eq!((tls.tls, tls.port), (true, 443));
        assert_eq!(url("mqtts://h").unwrap().port, 8883);
        assert_eq!(url("mqtt://[::1]:1884").unwrap().host, "::1");
        for bad in ["http://h:80", "mqtt://:1883", "mqtt://h:x", "mqtt://h:0"] {
            let err = url(bad).unwrap_err();
            assert!(err.contains("uplink.url"), "{bad}: {err}");
        }
    }

    #[test]
    fn uplink_tables_parse_and_bad_uplink_values_name_their_key() {
        let config = with_rules(
            "[uplink]\nurl = \"mqtts://fleet:8883\"\nclient_id = \"site-7\"\nprefix = \"sites/7\"\n\
             namespaces = [\"*\"]\nstandard_jobs = true\nca_file = \"ca.pem\"\n\
             cert_file = \"c.pem\"\nkey_file = \"k.pem\"\nalpn = [\"x-amzn-mqtt-ca\"]\n\
             [[uplink.topics]]\npattern = \"dt/#\"\ndirection = \"out\"\nremote_prefix = \"sites/7/\"\n",
        )
        .unwrap();
        let uplink = config.uplink.unwrap();
        assert_eq!(uplink.prefix_or("gw"), "sites/7");
        assert_eq!(uplink.topics[0].direction, Direction::Out);
        assert_eq!(uplink.topics[0].qos, 1);
        let cases = [
            ("url = \"mqtt://h\"\nca_file = \"ca.pem\"", "uplink.ca_file"),
            (
                "url = \"mqtts://h\"\ncert_file = \"c.pem\"",
                "uplink.cert_file",
            ),
            ("url = \"mqtt://h\"\nprefix = \"a/+/b\"", "uplink.prefix"),
            (
                "url = \"mqtt://h\"\nnamespaces = [\"a b\"]",
                "uplink.namespaces",
            ),
            ("url = \"mqtt://h\"\npassword = \"p\"", "uplink.password"),
            ("url = \"mqtt://h\"\nspool_mb = 0", "uplink.spool_mb"),
            (
                "url = \"mqtt://h\"\nreconnect_max_s = 0",
                "uplink.reconnect_max_s",
            ),
            ("url = \"mqtt://h\"\nspool = 3", "spool"),
            (
                "url = \"mqtt://h\"\n[[uplink.topics]]\npattern = \"$aws/#\"\ndirection = \"in\"",
                "uplink.topics[0].pattern",
            ),
        ];
        for (body, key) in cases {
            let err = with_rules(&format!("[uplink]\n{body}\n")).unwrap_err();
            assert!(err.contains(key), "{body}: {err}");
        }
    }
}
